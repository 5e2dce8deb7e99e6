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

from ..errors import FormatError, UnsafeCheckpointError
from ..manifest import Layer, Manifest, WeightSpec
from .hdf5 import ParseContext, attr_list, child, dataset_spec, json_attrs
from .hdf5_dataset import is_dataset, is_group, is_hard, is_soft

__all__ = ["is_keras_h5", "keras_child", "parse_keras_h5", "refuse_soft_link"]


def refuse_soft_link(group: Any, name: str, link: Any, url: str) -> None:
    """Refuse ``link`` (``group``'s member ``name``) if it is a soft link, as Keras refuses one in a weights file.

    A soft link cannot leave the file, but Keras (``saving_lib.safe_get_h5_group``
    and ``safe_get_h5_dataset``) refuses it anywhere it looks for weights, with
    ``ValueError("Not allowed: H5 file with SoftLink")``; a file Keras refuses
    is refused here too, with the same words.
    """
    if is_soft(link):
        raise UnsafeCheckpointError(
            f"{url}: Not allowed: H5 file with SoftLink: {group.name.rstrip('/')}/{name} -> {link.path} "
            "(Keras refuses soft links in weights files)"
        )


def keras_child(group: Any, name: str, url: str) -> Any:
    """``group[name]`` in a Keras weights file: :func:`.hdf5.child`, refusing soft links as Keras does."""
    refuse_soft_link(group, name, group.get(name, getlink=True), url)
    return child(group, name, url)


def weights_root(root: Any, url: str) -> Any:
    """The group that holds ``layer_names``: the root, else ``model_weights`` (as Keras does, no soft link)."""
    if attr_list(root, "layer_names") is not None:
        return root
    link = root.get("model_weights", getlink=True)
    refuse_soft_link(root, "model_weights", link, url)
    if is_hard(link):
        group = root["model_weights"]
        if is_group(group) and attr_list(group, "layer_names") is not None:
            return group
    return None


def is_keras_h5(root: Any, url: str) -> bool:
    return weights_root(root, url) is not None


def _dataset(group: Any, path: str, ctx: ParseContext, root: Any) -> Any:
    """Follow a weight name that may contain ``/`` one safe step at a time.

    A name starting with ``/`` is absolute: h5py wrote it from the file's
    root, and Keras reads it back from there (Keras 2.0's Theano optimizers
    list ``/iterations`` among their ``optimizer_weights``).
    """
    obj = root if path.startswith("/") else group
    for part in path.lstrip("/").split("/"):
        obj = keras_child(obj, part, ctx.url)
    if not is_dataset(obj):
        raise FormatError(f"{ctx.url}: weight {obj.name} listed in weight_names is a group, not a dataset")
    return obj


def _weight(ds: Any, ctx: ParseContext, key: str, layer: str, name: str) -> WeightSpec:
    spec, reason = dataset_spec(ds, ctx, key=key, layer=layer, name=name, keras=True)
    if spec is None:
        raise FormatError(f"{ctx.url}: weight {key!r} cannot be loaded: {reason}")
    return spec


def _layers(wroot: Any, ctx: ParseContext, root: Any) -> tuple[list[Layer], list[WeightSpec]]:
    layers: list[Layer] = []
    weights: list[WeightSpec] = []
    seen: set[str] = set()
    for lname in attr_list(wroot, "layer_names") or []:
        if lname in seen:  # Keras layer names are unique: a repeat is damage (or a million-entry bomb), refused now
            raise FormatError(f"{ctx.url}: layer_names lists the layer {lname!r} twice")
        seen.add(lname)
        group = keras_child(wroot, lname, ctx.url)
        keys = []
        for wname in attr_list(group, "weight_names") or []:
            key = f"{lname}/{wname}"
            weights.append(_weight(_dataset(group, wname, ctx, root), ctx, key, lname, wname))
            keys.append(key)
        layers.append(Layer(name=lname, keys=tuple(keys)))
    return layers, weights


def _optimizer(root: Any, ctx: ParseContext) -> list[WeightSpec]:
    if "optimizer_weights" not in root:
        return []
    group = keras_child(root, "optimizer_weights", ctx.url)
    return [
        _weight(_dataset(group, name, ctx, root), ctx, f"optimizer_weights/{name}", "optimizer_weights", name)
        for name in attr_list(group, "weight_names") or []
    ]


def parse_keras_h5(root: Any, ctx: ParseContext) -> Manifest:
    wroot = weights_root(root, ctx.url)
    if wroot is None:
        raise FormatError(f"{ctx.url}: no layer_names attribute at the root or in model_weights")
    layers, weights = _layers(wroot, ctx, root)
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
