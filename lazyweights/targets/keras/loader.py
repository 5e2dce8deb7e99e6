"""Keras 3 models as destinations: match checkpoint layers to model layers, then stream values in.

Two matching schemes, as Keras defines them:

- legacy ``.h5`` (Keras 1/2 and Keras 3's legacy writer): layers paired by
  position (``by_name=False``) or by name (``by_name=True``); implemented here,
  validated in full before a byte is read, then executed one layer per group.
  On the torch backend a CPU variable's own storage is the destination, so
  values go from the file into the model with no intermediate copy.
- Keras 3 ``.weights.h5`` / ``.keras``: object paths (``layers/dense_1/vars/0``),
  matched by Keras's own traversal (``saving_lib._load_state``) over a store
  that reads each object's variables through the streaming executor when
  Keras asks for them, so the rules (and error texts) are Keras's own.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import MismatchError, require
from ...manifest import WeightSpec, resolve_dtype
from ...stream import Group, LoadReport, Target, execute
from .config import optimizer_slot_key

__all__ = ["KerasLoader", "legacy_groups", "load_v3_state", "optimizer_group", "optimizer_pairs", "v3_store"]


def import_keras() -> Any:
    return require("keras", "keras")


@dataclass
class KerasLoader:
    """Runs groups against one checkpoint under one budget and adds up one report."""

    source: Any
    report: LoadReport
    max_memory: int | None = None
    concurrency: int | None = None
    progress: Callable[[int], None] | None = None

    def run(self, groups: Sequence[Group]) -> None:
        part = LoadReport(url=self.report.url, format=self.report.format)
        execute(
            self.source,
            groups,
            max_memory=self.max_memory,
            concurrency=self.concurrency,
            progress=self.progress,
            report=part,
        )
        self.report.loaded += part.loaded
        self.report.add(part)

    def read(self, specs: Sequence[WeightSpec]) -> list[np.ndarray]:
        """The values of ``specs`` (read concurrently, under the budget)."""
        values: list[np.ndarray] = []
        self.run([Group([Target(s) for s in specs], on_ready=values.extend)])
        return values


# -- legacy .h5: matching ---------------------------------------------------------


def legacy_weights(layer: Any) -> list[Any]:
    """A layer's variables in the order legacy .h5 files store them (trainable first)."""
    return list(layer.trainable_weights) + list(layer.non_trainable_weights)


@dataclass
class _Pair:
    """A file layer matched to a model layer, with the name Keras's messages use."""

    file_name: str
    specs: list[WeightSpec]
    layer: Any
    label: str
    variables: list[Any] = field(default_factory=list)


def _pairs_topological(url: str, file_layers: list[tuple[str, list[WeightSpec]]], model: Any) -> list[_Pair]:
    layers = [layer for layer in model.layers if legacy_weights(layer)]
    if len(file_layers) != len(layers):
        raise MismatchError(
            f"{url}: You are trying to load a weight file containing {len(file_layers)} layers into a model with "
            f"{len(layers)} layers (counting layers with weights; Keras: 'Layer count mismatch when loading weights "
            f"from file. Model expected {len(layers)} layers, found {len(file_layers)} saved layers.')"
        )
    pairs = []
    for k, ((name, specs), layer) in enumerate(zip(file_layers, layers, strict=True)):
        pair = _Pair(name, specs, layer, f"layer #{k} (named {layer.name})", legacy_weights(layer))
        if len(specs) != len(pair.variables):
            raise MismatchError(
                f"{url}: Weight count mismatch for layer #{k} (named {layer.name} in the current model, {name} in "
                f"the save file). Layer expects {len(pair.variables)} weight(s). Received {len(specs)} saved weight(s)"
            )
        pairs.append(pair)
    return pairs


def _pairs_by_name(
    url: str, file_layers: list[tuple[str, list[WeightSpec]]], model: Any, skip_mismatch: bool, report: LoadReport
) -> list[_Pair]:
    index: dict[str, list[Any]] = {}
    for layer in model.layers:
        index.setdefault(layer.name, []).append(layer)
    pairs = []
    for k, (name, specs) in enumerate(file_layers):
        if not specs:
            continue
        for layer in index.get(name, []):
            pair = _Pair(name, specs, layer, f"layer #{k} (named {layer.name})", legacy_weights(layer))
            if len(specs) == len(pair.variables):
                pairs.append(pair)
                continue
            message = (
                f"{url}: Weight count mismatch for layer #{k} (named {layer.name}). Layer expects "
                f"{len(pair.variables)} weight(s). Received {len(specs)} saved weight(s)"
            )
            if not skip_mismatch:
                raise MismatchError(message)
            _skip(report, specs, message)
    return pairs


def _skip(report: LoadReport, specs: list[WeightSpec], message: str) -> None:
    keys = [s.key for s in specs]
    warnings.warn(f"Skipping loading of weights {keys}: {message}", UserWarning, stacklevel=4)
    report.skipped.extend((key, message) for key in keys)


def _check_pair(url: str, pair: _Pair, reshape: bool) -> str | None:
    """None if every weight of the pair fits its variable, else the mismatch message."""
    for spec, var in zip(pair.specs, pair.variables, strict=True):
        expected, received = tuple(var.shape), tuple(spec.shape)
        if expected != received and not (reshape and int(np.prod(expected)) == spec.size):
            return (
                f"{url}: Shape mismatch in {pair.label} for weight {var.path} (saved as {spec.key!r}). "
                f"Weight expects shape {expected}. Received saved weight with shape {received}"
            )
        target = resolve_dtype(var.dtype)
        if not np.can_cast(spec.np_dtype, target, casting="same_kind"):
            return (
                f"{url}: dtype mismatch in {pair.label} for weight {var.path} (saved as {spec.key!r}): the variable "
                f"is {target}, the saved weight is {spec.np_dtype}, which does not cast to it"
            )
    return None


# -- legacy .h5: execution ----------------------------------------------------------


def direct_buffer(variable: Any) -> np.ndarray | None:
    """The variable's own memory as a writable ndarray, where the backend allows it (torch, CPU)."""
    keras = import_keras()
    if keras.backend.backend() != "torch":
        return None
    value = variable.value
    if value.device.type != "cpu" or not value.is_contiguous():
        return None
    try:
        return value.detach().numpy()
    except (TypeError, RuntimeError):  # dtypes numpy lacks (bfloat16)
        return None


def assign(variable: Any, value: np.ndarray) -> None:
    """``variable.assign`` with Keras's casting; bfloat16 goes through float32 (backends disagree on it)."""
    if value.dtype.kind == "V" or value.dtype.name == "bfloat16":
        value = value.astype(np.float32)
    variable.assign(value.reshape(tuple(variable.shape)))


def _group(pair: _Pair) -> Group:
    targets: list[Target] = []
    staged: list[Any] = []  # variables whose values arrive through on_ready
    for spec, var in zip(pair.specs, pair.variables, strict=True):
        buffer = direct_buffer(var)
        if buffer is not None:
            targets.append(Target(spec, buffer.reshape(spec.shape)))
        else:
            targets.append(Target(spec))
            staged.append(var)

    def on_ready(arrays: list[np.ndarray]) -> None:
        staged_values = [a for t, a in zip(targets, arrays, strict=True) if t.dest is None]
        for var, value in zip(staged, staged_values, strict=True):
            assign(var, value)
        if hasattr(pair.layer, "finalize_state"):
            pair.layer.finalize_state()

    return Group(targets, on_ready=on_ready)


def legacy_groups(
    url: str,
    file_layers: list[tuple[str, list[WeightSpec]]],
    model: Any,
    *,
    by_name: bool,
    skip_mismatch: bool,
    reshape: bool,
    report: LoadReport,
    matched: dict[str, Any] | None = None,
) -> list[Group]:
    """Match, validate everything, and return one group per matched layer (in file order).

    ``matched``, when given, receives saved weight name → model variable for
    every weight that will be loaded (optimizer slots are named after them).
    """
    if by_name:  # Keras numbers layers by their place in the file's layer_names, weightless ones included
        pairs = _pairs_by_name(url, file_layers, model, skip_mismatch, report)
    else:  # ... and here among the layers that have weights
        pairs = _pairs_topological(url, [(name, specs) for name, specs in file_layers if specs], model)
    groups = []
    for pair in pairs:
        problem = _check_pair(url, pair, reshape)
        if problem is None:
            groups.append(_group(pair))
            if matched is not None:
                matched.update((s.name, v) for s, v in zip(pair.specs, pair.variables, strict=True))
        elif skip_mismatch:
            _skip(report, pair.specs, problem)
        else:
            raise MismatchError(problem)
    return groups


# -- optimizer state (legacy full-model files) ----------------------------------------------


def optimizer_pairs(
    optimizer: Any, specs: Sequence[WeightSpec], matched: dict[str, Any]
) -> tuple[list[tuple[WeightSpec, Any]], str | None]:
    """Saved optimizer weights paired with the built optimizer's variables by name: all, or none and why.

    Slots are matched through the model variable they belong to (``matched``:
    saved weight name → model variable), whatever it was called in Keras 2.
    """
    by_path = {v.path: v for v in optimizer.variables}
    prefix = f"{optimizer.name}/"
    by_slot = {v.path[len(prefix) :]: v for v in optimizer.variables if v.path.startswith(prefix)}
    model_var_path = {name.split(":")[0]: var.path for name, var in matched.items()}
    pairs = []
    for weight in specs:
        name = weight.name
        var = by_path.get(name)
        if var is None and name.split(":")[0].rsplit("/", 1)[-1] in ("iteration", "iterations"):
            var = optimizer.iterations
        if var is None and (key := optimizer_slot_key(name)) is not None:
            saved_var, slot = key
            path = model_var_path.get(saved_var, saved_var)  # the Keras 3 variable the slot belongs to
            var = by_slot.get(f"{path.replace('/', '_')}_{slot}")
        if var is None:
            return [], f"no variable of optimizer {optimizer.name!r} matches saved weight {name!r}"
        if tuple(var.shape) != tuple(weight.shape):
            return [], f"saved {name!r} has shape {weight.shape}, variable {var.path} has {tuple(var.shape)}"
        pairs.append((weight, var))
    return pairs, None


def optimizer_group(pairs: Sequence[tuple[WeightSpec, Any]]) -> Group:
    """One group reading the paired optimizer weights and assigning them to their variables."""
    variables = [v for _, v in pairs]

    def on_ready(values: list[Any]) -> None:
        for var, value in zip(variables, values, strict=True):
            assign(var, value)

    return Group([Target(spec) for spec, _ in pairs], on_ready=on_ready)


# -- Keras 3 object-path files ---------------------------------------------------------------


def record_variables(model: Any, skip: Sequence[Any] = ()) -> dict[str, dict[str, Any]]:
    """Object path → {"0": variable, ...} exactly as Keras would save this model.

    Runs Keras's own save traversal (``saving_lib._save_state``) into a store
    that keeps the variables instead of writing them: the paths are Keras's by
    construction, and load uses the same traversal and names.
    """
    from keras.src.saving.saving_lib import H5IOStore, _save_state

    recorded: dict[str, dict[str, Any]] = {}

    class RecordingStore(H5IOStore):
        def __init__(self) -> None:  # the parent would open a file
            self.mode = "w"
            self._path = ""

        def __bool__(self) -> bool:
            return True

        def make(self, path: str, metadata: Any = None) -> RecordingStore:
            self._path = path
            recorded.setdefault(path, {})
            return self

        def __setitem__(self, key: str, value: Any) -> None:
            recorded[self._path][key] = value

    visited = {id(o) for o in skip}  # objects the load will not visit (``objects_to_skip``)
    _save_state(model, weights_store=RecordingStore(), assets_store=None, inner_path="", visited_saveables=visited)
    return recorded


def model_order_keys(model: Any, keys: Sequence[str]) -> list[str | None]:
    """The file key of each of ``model.weights`` (``model.get_weights()``'s order); None where ``keys`` has none.

    A Keras 3 file is written in Keras's save traversal order (a subclassed
    model's attributes sorted by name), while ``model.weights`` follows the
    order sub-layers were assigned, which the file does not record: only the
    model can say.  Each variable's file key comes from the save traversal
    itself (:func:`record_variables`), as a load pairs them.
    """
    present = set(keys)
    key_of: dict[int, str] = {}
    for path, variables in record_variables(model).items():
        for index, variable in variables.items():
            key = f"{path}/vars/{index}" if path else f"vars/{index}"
            if key not in present:  # the file may name ``layers`` as Keras 2.x/3.0 did
                key = key.replace("layers/", "_layer_checkpoint_dependencies/", 1)
            key_of.setdefault(id(variable), key)
    return [key if (key := key_of.get(id(w))) in present else None for w in model.weights]


# Keras's guard against HDF5 shape bombs (``saving_lib.safe_get_h5_dataset``): a dataset declaring more than
# 4 GiB must store at least a thousandth of it.
_BOMB_FLOOR_BYTES = 1 << 32
_BOMB_MAX_EXPANSION = 1000


def declared_problem(url: str, spec: WeightSpec, variable: Any) -> str | None:
    """Why ``spec`` must not be read for ``variable`` (None: it may), decided from metadata alone.

    Keras's own shape-bomb rule, then the variable's shape where the model
    is known to store ``variable`` under this key: a value Keras's
    ``assign`` would refuse is refused before a byte is read or allocated.
    """
    if spec.nbytes > _BOMB_FLOOR_BYTES and spec.nbytes > _BOMB_MAX_EXPANSION * spec.stored_bytes:
        return (
            f"{url}: Not allowed: H5 dataset {spec.key!r} declares shape {spec.shape} ({spec.nbytes} bytes) but only "
            f"{spec.stored_bytes} bytes are stored; refusing to load a potential decompression/shape bomb"
        )
    if hasattr(variable, "assign") and tuple(variable.shape) != spec.shape:
        return (
            f"{url}: The shape of the target variable and the shape of the target value in `variable.assign(value)` "
            f"must match. variable.shape={tuple(variable.shape)}, Received: value.shape={spec.shape} "
            f"(saved weight {spec.key!r}). Target variable: {variable.path}"
        )
    return None


def v3_store(
    url: str,
    specs: Sequence[WeightSpec],
    paths: Sequence[str],
    loader: KerasLoader,
    model: Any,
    skip: Sequence[Any] = (),
) -> Any:
    """A Keras weights store over a manifest: Keras walks the model, the store streams each object's values.

    ``paths`` are the file's object paths (every group holding a ``vars``
    group); ``has_path`` answers for them and their parents as ``H5IOStore``
    does.  When Keras asks for an object whose saved weights all fit the
    variables the model stores there (``record_variables``: count, shape) and
    pass Keras's shape-bomb rule, they are read at once, concurrently; where
    the backend exposes a variable's memory, straight into it, and Keras is
    handed the variable itself, so its ``assign`` is a no-op copy.  Otherwise
    nothing is read until Keras asks for a key, and a key whose declared shape
    the variable cannot take (or a shape bomb) raises :class:`MismatchError`
    (a ``ValueError``, as Keras raises) before a byte is read: with
    ``skip_mismatch`` such weights are neither read nor reported loaded.
    ``store.unread(path)`` lists an object's weights that were not read.

    Objects whose every weight can go straight into its variable are read
    first, all in one executor run (concurrently across objects and shards,
    under the one budget, nothing held); Keras's walk then finds them filled.
    ``skip``: objects the load must not touch (``objects_to_skip``).
    """
    from keras.src.saving.saving_lib import H5IOStore

    groups: dict[str, dict[str, WeightSpec]] = {}
    for spec in specs:
        groups.setdefault(spec.layer, {})[spec.name] = spec
    known_paths = {p.rsplit("/", i)[0] for p in (*paths, *groups) for i in range(p.count("/") + 1)} - {""}
    recorded = record_variables(model, skip)

    def wanted_at(path: str) -> dict[str, WeightSpec]:
        return groups.get(path) or groups.get(path.replace("layers", "_layer_checkpoint_dependencies"), {})

    def fits(path: str, wanted: dict[str, WeightSpec]) -> bool:
        known = recorded.get(path, {})
        return len(known) == len(wanted) and not any(declared_problem(url, s, known.get(n)) for n, s in wanted.items())

    def direct_targets(path: str) -> list[Target] | None:
        """Targets filling ``path``'s variables in place, or None where one of them cannot be."""
        wanted, known = wanted_at(path), recorded.get(path, {})
        if not wanted or not fits(path, wanted):
            return None
        targets = []
        for name, spec in wanted.items():
            buffer = direct_buffer(known[name]) if hasattr(known[name], "assign") else None
            if buffer is None or buffer.dtype != spec.np_dtype:
                return None
            targets.append(Target(spec, buffer))
        return targets

    prefilled = {path: targets for path in recorded if (targets := direct_targets(path))}
    if prefilled:
        loader.run([Group(targets) for targets in prefilled.values()])

    def read(path: str, wanted: dict[str, WeightSpec]) -> dict[str, Any]:
        known = recorded.get(path, {})
        targets, direct = [], {}
        for name, spec in wanted.items():
            var = known.get(name)
            buffer = direct_buffer(var) if hasattr(var, "assign") and tuple(var.shape) == spec.shape else None
            if buffer is not None and buffer.dtype == spec.np_dtype:
                direct[name] = var
                targets.append(Target(spec, buffer))
            else:
                targets.append(Target(spec))
        arrays: list[np.ndarray] = []
        loader.run([Group(targets, on_ready=arrays.extend)])
        return {name: direct.get(name, array) for name, array in zip(wanted, arrays, strict=True)}

    class LazyStore(H5IOStore):
        """Keras's H5IOStore interface (``get``, ``keys``, ``[]``, ``has_path``) without h5py.

        Subclassed only so ``_load_state``'s isinstance check accepts it; no
        parent state is used.  Values of one object are read when Keras asks
        for that object (or, if they may not fit, for each key) and dropped
        when it asks for the next.
        """

        def __init__(self) -> None:  # the parent would open a file
            self.mode = "r"
            self.path = ""
            self._wanted: dict[str, WeightSpec] = {}
            self._values: dict[str, Any] = {}
            self._read: set[str] = set()

        def get(self, path: str) -> LazyStore:
            wanted = wanted_at(path)
            self.path, self._wanted, self._values = path, wanted, {}
            if path in prefilled:
                self._values = {name: recorded[path][name] for name in wanted}
                self._read.update(s.key for s in wanted.values())
            elif wanted and fits(path, wanted):
                self._values = read(path, wanted)
                self._read.update(s.key for s in wanted.values())
            return self

        def __bool__(self) -> bool:  # the parent delegates to its h5 file; an open store is truthy
            return True

        def keys(self) -> Any:
            return self._wanted.keys()

        def __len__(self) -> int:
            return len(self._wanted)

        def __getitem__(self, key: str) -> Any:
            if key not in self._values:
                spec = self._wanted.get(key)
                if spec is None:
                    raise KeyError(key)
                problem = declared_problem(url, spec, recorded.get(self.path, {}).get(key))
                if problem:
                    raise MismatchError(problem)
                self._values[key] = read(self.path, {key: spec})[key]
                self._read.add(spec.key)
            return self._values[key]

        def __contains__(self, key: object) -> bool:
            return key in self._wanted

        def has_path(self, path: str) -> bool:
            return path in known_paths

        def unread(self, path: str) -> list[str]:
            """The keys of ``path``'s saved weights that were not read."""
            return [s.key for s in groups.get(path, {}).values() if s.key not in self._read]

        def close(self) -> None:
            self._values = {}

    return LazyStore()


class _FailedSaveables(set):
    """Keras's ``failed_saveables`` set, noting the object path the store was at when each failure was added.

    ``_load_state`` adds a saveable right after its ``load_own_variables`` /
    ``load_assets`` raised, while the store still points at that object.
    """

    def __init__(self, store: Any) -> None:
        super().__init__()
        self.store = store
        self.paths: dict[int, str] = {}

    def add(self, item: int) -> None:
        self.paths.setdefault(item, self.store.path)
        super().add(item)


def _short(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= 240 else text[:237] + "..."


def load_v3_state(
    model: Any,
    store: Any,
    report: LoadReport,
    *,
    assets_store: Any = None,
    skip_mismatch: bool = False,
    objects_to_skip: Sequence[Any] = (),
) -> dict[int, Any]:
    """Run Keras's ``_load_state`` over ``store``; return Keras's ``error_msgs`` (empty when all loaded).

    Every object that failed puts its saved weights that were not read in
    ``report.skipped`` as ``(key, short reason)`` (the object path when no
    weight of it was left unread, e.g. an asset failure).
    """
    from keras.src.saving import saving_lib

    failed = _FailedSaveables(store)
    errors: dict[int, Any] = {}
    saving_lib._load_state(
        model,
        weights_store=store,
        assets_store=assets_store,
        inner_path="",
        skip_mismatch=skip_mismatch,
        visited_saveables={id(o) for o in objects_to_skip},
        failed_saveables=failed,
        error_msgs=errors,
    )
    for ident, (saveable, exc) in errors.items():
        path = failed.paths.get(ident, getattr(saveable, "path", None) or str(saveable))
        reason = _short(exc)
        report.skipped.extend((key, reason) for key in store.unread(path) or [path])
    return errors
