"""TensorFlow-format checkpoints into Keras 3 models: match by the checkpoint's object graph, as tf-keras did.

A TensorFlow checkpoint names each variable by the attribute path that
reached it from the saved root (plain data from the manifest: each weight's
``path`` and every alias of it).  Two schemes, tf-keras's own:

- Functional and Sequential models save layer ``N`` with weights as
  ``layer_with_weights-N`` (tf-keras counts ``model.layers`` that have
  weights); here ``N`` picks the ``N``-th layer with weights of the Keras 3
  model, and the rest of the path is walked as attributes of that layer.
- Subclassed models (and everything else) are walked attribute by attribute
  from the model: ``encoder/dense1/kernel`` is ``model.encoder.dense1.kernel``;
  a number indexes a list (``blocks/0``), other names a dict or an attribute
  (``heads/alpha``).  Attributes Keras 3 renamed (``depthwise_kernel`` →
  ``kernel``) are tried under both names.

Optimizer state goes into the model's built optimizer: tf-keras optimizers'
own variables by the same walk from ``model.optimizer``
(``optimizer/_momentums/0``), legacy optimizers' slot variables (``m``/``v``
of a model variable) through the variable they belong to.  Every model
variable must be found, every checkpoint weight must land: otherwise a
:class:`~lazyweights.errors.MismatchError` names both sides (with
``skip_mismatch``, the weight is skipped and reported).  Nothing here imports
storage or formats.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from ...errors import MismatchError
from ...manifest import WeightSpec
from ...stream import Group, LoadReport
from .loader import _check_pair, _group, _Pair, optimizer_group

__all__ = ["object_graph_groups", "object_graph_optimizer_pairs", "optimizer_groups"]

_LAYER = re.compile(r"^layer_with_weights-(\d+)$")
# tf-keras attribute → Keras 3 attribute, where Keras 3 renamed a variable
RENAMED = {"depthwise_kernel": "kernel", "embeddings": "embeddings", "_iterations": "iterations", "iter": "iterations"}
# slot names of tf-keras legacy optimizers → the Keras 3 optimizer's list of that slot
SLOT_LISTS = {"m": "_momentums", "v": "_velocities", "vhat": "_velocity_hats", "momentum": "_momentums"}


def _is_variable(obj: Any) -> bool:
    return hasattr(obj, "assign") and hasattr(obj, "shape") and hasattr(obj, "path")


def _step(obj: Any, name: str) -> Any:
    """``obj``'s child ``name``: a list item, a dict entry, or an attribute (under its Keras 3 name too)."""
    if name.isdigit() and isinstance(obj, Sequence) and not isinstance(obj, str):
        index = int(name)
        return obj[index] if index < len(obj) else None
    if isinstance(obj, Mapping):
        return obj.get(name)
    for attr in (name, RENAMED.get(name)):
        if attr is not None:
            found = getattr(obj, attr, None)
            if found is not None:
                return found
    return None


def _walk(root: Any, parts: Sequence[str], root_label: str) -> tuple[Any, str]:
    """The object ``parts`` reach from ``root``, or None and where the walk stopped."""
    obj, label = root, root_label
    for part in parts:
        child = _step(obj, part)
        if child is None:
            return None, f"{type(obj).__name__} {label!r} has no attribute, item or key {part!r}"
        obj, label = child, f"{label}.{part}"
    return obj, label


def _resolve(model: Any, path: str, layers: list[Any] | None) -> tuple[Any, str]:
    """The model variable a checkpoint path names (``layers``: the model's layers with weights, or None)."""
    parts = path.split("/")
    match = _LAYER.match(parts[0]) if layers is not None else None
    if match:
        n = int(match[1])
        if n >= len(layers):
            return None, f"the model has {len(layers)} layers with weights, not {n + 1}"
        layer = layers[n]
        return _walk(layer, parts[1:], f"layer #{n} ({layer.name})")
    return _walk(model, parts, "model")


def _candidates(spec: WeightSpec, aliases: Mapping[str, Sequence[str]]) -> list[str]:
    """The paths to try for ``spec``: its own, then its aliases; positional ``_variables/N`` lists last."""
    paths = [spec.path, *(p for p in aliases.get(spec.key, ()) if p != spec.path)]
    return sorted(paths, key=lambda p: "/_variables/" in f"/{p}")


def _find(
    model: Any, spec: WeightSpec, aliases: Mapping[str, Sequence[str]], layers: list[Any] | None, root: Any = None
) -> tuple[Any, str]:
    """The variable that the first of ``spec``'s paths reaching a variable of its shape names."""
    first: tuple[Any, str] | None = None
    for path in _candidates(spec, aliases):
        if root is not None:
            var, label = _walk(root, path.split("/")[1:], root.name)
        else:
            var, label = _resolve(model, path, layers)
        if var is not None and not _is_variable(var):
            var, label = None, f"{label} is a {type(var).__name__}, not a variable"
        if var is not None and tuple(var.shape) == tuple(spec.shape):
            return var, label
        first = first or (var, label)
    return first


def _uses_layer_numbers(specs: Sequence[WeightSpec]) -> bool:
    return any(_LAYER.match(s.path.split("/")[0]) for s in specs)


def _mismatch(url: str, spec: WeightSpec, why: str) -> str:
    return f"{url}: checkpoint weight {spec.path!r} (key {spec.key!r}) has no match in the model: {why}"


def _pairs(
    url: str,
    model: Any,
    specs: Sequence[WeightSpec],
    aliases: Mapping[str, Sequence[str]],
    layers: list[Any] | None,
    skip: bool,
    report: LoadReport,
) -> list[tuple[WeightSpec, Any, str]]:
    out = []
    for spec in specs:
        var, label = _find(model, spec, aliases, layers)
        problem = None if var is not None else _mismatch(url, spec, label)
        if problem is None:
            out.append((spec, var, label))
        elif skip:
            warnings.warn(problem, UserWarning, stacklevel=4)
            report.skipped.append((spec.key, problem))
        else:
            raise MismatchError(problem)
    return out


def object_graph_groups(
    url: str,
    model: Any,
    specs: Sequence[WeightSpec],
    aliases: Mapping[str, Sequence[str]],
    *,
    skip_mismatch: bool,
    report: LoadReport,
) -> tuple[list[Group], dict[str, Any]]:
    """One group per model layer filling its variables from ``specs``; and checkpoint key → model variable.

    Every variable of the model must be named by the checkpoint (else a
    :class:`MismatchError` listing what is missing, and the checkpoint's
    paths), unless ``skip_mismatch``.  ``aliases``: checkpoint key → every
    object-graph path of it (plain data from the manifest).
    """
    layers = [layer for layer in model.layers if layer.weights] if _uses_layer_numbers(specs) else None
    pairs = _pairs(url, model, specs, aliases, layers, skip_mismatch, report)
    _check_all_filled(url, model, pairs, specs, skip_mismatch)
    by_layer: dict[str, _Pair] = {}
    for spec, var, label in pairs:
        owner = label.rpartition(".")[0] or label
        pair = by_layer.setdefault(owner, _Pair(spec.layer, [], None, owner))
        pair.specs.append(spec)
        pair.variables.append(var)
    groups = []
    for pair in by_layer.values():
        problem = _check_pair(url, pair, reshape=False)
        if problem is None:
            groups.append(_group(pair))
        elif skip_mismatch:
            report.skipped.extend((s.key, problem) for s in pair.specs)
        else:
            raise MismatchError(problem)
    return groups, {spec.key: var for spec, var, _ in pairs}


def _check_all_filled(
    url: str, model: Any, pairs: list[tuple[WeightSpec, Any, str]], specs: Sequence[WeightSpec], skip: bool
) -> None:
    filled = {id(var) for _, var, _ in pairs}
    missing = [v.path for v in model.weights if id(v) not in filled]
    if missing and not skip:
        raise MismatchError(
            f"{url}: the checkpoint has no value for model variables {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}; its paths are {[s.path for s in specs][:12]}"
        )


def object_graph_optimizer_pairs(
    url: str,
    model: Any,
    specs: Sequence[WeightSpec],
    graph: Mapping[str, Any],
    matched: Mapping[str, Any],
) -> tuple[list[tuple[WeightSpec, Any]], list[tuple[str, str]]]:
    """Optimizer weights paired with the built optimizer's variables, and those that have none (key, why).

    ``graph`` (plain data from the manifest) holds every path of each key
    (``paths``) and each slot variable's keys, slot name and the keys of the
    variable it belongs to (``slots``); ``matched`` maps model weight keys to
    the variables they filled.
    """
    optimizer = model.optimizer
    slot_of = {key: slot for slot in graph["slots"] for key in slot["keys"]}
    pairs, unmatched = [], []
    for spec in specs:
        var, why = _optimizer_variable(optimizer, spec, slot_of.get(spec.key), matched, graph["paths"])
        if var is not None and tuple(var.shape) != tuple(spec.shape):
            var, why = None, f"shape {spec.shape} saved, {tuple(var.shape)} in {var.path}"
        if var is None:
            unmatched.append((spec.key, f"{url}: optimizer weight {spec.path!r}: {why}"))
        else:
            pairs.append((spec, var))
    return pairs, unmatched


def _optimizer_variable(
    optimizer: Any,
    spec: WeightSpec,
    slot: Mapping[str, Any] | None,
    matched: Mapping[str, Any],
    aliases: Mapping[str, Sequence[str]],
) -> tuple[Any, str]:
    if slot is not None:
        owner = next((matched[k] for k in slot["original"] if k in matched), None)
        if owner is None:
            return None, f"slot {slot['slot']!r} of a variable the model did not load"
        slot_list = getattr(optimizer, SLOT_LISTS.get(slot["slot"], f"_{slot['slot']}"), None)
        if slot_list is None:
            return None, f"optimizer {optimizer.name!r} has no {slot['slot']!r} slots"
        return slot_list[optimizer._get_variable_index(owner)], ""
    found, label = _find(None, spec, aliases, None, root=optimizer)  # paths below "optimizer"
    if found is None:
        return None, f"no variable of optimizer {optimizer.name!r} ({label})"
    return found, ""


def optimizer_groups(pairs: Sequence[tuple[WeightSpec, Any]]) -> list[Group]:
    """The group that restores the paired optimizer variables (none when nothing is paired)."""
    return [optimizer_group(pairs)] if pairs else []
