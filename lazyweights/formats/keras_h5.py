"""Keras legacy HDF5: ``save_weights("x.h5")`` and full-model ``model.save("x.h5")``.

Layout (see shared/FORMATS.md §1-2): the weights root (the file root, or
``model_weights`` in a full-model file) lists ``layer_names``; each layer group
lists ``weight_names``, each a dataset path inside the group (names may hold
``/``).  Both lists may be split into ``name0``, ``name1``, ... attributes.
Written by Keras 1, tf-keras 2.x, and Keras 3's legacy saver.

Keys are ``<layer name>/<weight name>``: the dataset's path under the weights
root, so unique by construction.
"""

from __future__ import annotations

from typing import Any

from ..errors import FormatError
from ..manifest import Layer, Manifest, WeightSpec
from .hdf5 import ParseContext, attr_list, child, dataset_spec, json_attrs
from .hdf5_dataset import is_dataset, is_group, is_hard

__all__ = ["is_keras_h5", "parse_keras_h5"]


def weights_root(root: Any) -> Any:
    """The group that holds ``layer_names``: the root, else ``model_weights`` (as Keras does)."""
    if attr_list(root, "layer_names") is not None:
        return root
    link = root.get("model_weights", getlink=True)
    if is_hard(link):
        group = root["model_weights"]
        if is_group(group) and attr_list(group, "layer_names") is not None:
            return group
    return None


def is_keras_h5(root: Any) -> bool:
    return weights_root(root) is not None


def _dataset(group: Any, path: str, ctx: ParseContext) -> Any:
    """Follow a weight name that may contain ``/`` one safe step at a time."""
    obj = group
    for part in path.split("/"):
        obj = child(obj, part, ctx.url)
    if not is_dataset(obj):
        raise FormatError(f"{ctx.url}: weight {obj.name} listed in weight_names is a group, not a dataset")
    return obj


def _weight(ds: Any, ctx: ParseContext, key: str, layer: str, name: str) -> WeightSpec:
    spec, reason = dataset_spec(ds, ctx, key=key, layer=layer, name=name, keras=True)
    if spec is None:
        raise FormatError(f"{ctx.url}: weight {key!r} cannot be loaded: {reason}")
    return spec


def _layers(wroot: Any, ctx: ParseContext) -> tuple[list[Layer], list[WeightSpec]]:
    layers: list[Layer] = []
    weights: list[WeightSpec] = []
    seen: set[str] = set()
    for lname in attr_list(wroot, "layer_names") or []:
        if lname in seen:  # Keras layer names are unique: a repeat is damage (or a million-entry bomb), refused now
            raise FormatError(f"{ctx.url}: layer_names lists the layer {lname!r} twice")
        seen.add(lname)
        group = child(wroot, lname, ctx.url)
        keys = []
        for wname in attr_list(group, "weight_names") or []:
            key = f"{lname}/{wname}"
            weights.append(_weight(_dataset(group, wname, ctx), ctx, key, lname, wname))
            keys.append(key)
        layers.append(Layer(name=lname, keys=tuple(keys)))
    return layers, weights


def _optimizer(root: Any, ctx: ParseContext) -> list[WeightSpec]:
    if "optimizer_weights" not in root:
        return []
    group = child(root, "optimizer_weights", ctx.url)
    return [
        _weight(_dataset(group, name, ctx), ctx, f"optimizer_weights/{name}", "optimizer_weights", name)
        for name in attr_list(group, "weight_names") or []
    ]


def parse_keras_h5(root: Any, ctx: ParseContext) -> Manifest:
    wroot = weights_root(root)
    if wroot is None:
        raise FormatError(f"{ctx.url}: no layer_names attribute at the root or in model_weights")
    layers, weights = _layers(wroot, ctx)
    attrs = json_attrs(wroot, ctx.url)
    attrs.update(json_attrs(root, ctx.url) if wroot is not root else {})
    return Manifest(
        url=ctx.url,
        format="keras-h5",
        size=ctx.size,
        etag=ctx.etag,
        weights=tuple(weights),
        layers=tuple(layers),
        optimizer=tuple(_optimizer(root, ctx)),
        attrs=attrs,
    )
