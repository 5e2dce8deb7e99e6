"""Keras 3 ``.weights.h5`` (also the weights member of a ``.keras`` archive).

Layout (shared/FORMATS.md §3): object paths, not layer names.  Each object
with state has a ``vars`` group whose datasets are named ``0``, ``1``, ...
(ordered numerically: HDF5 lists ``10`` before ``2``) and whose ``name``
attribute is the object's own name.  ``optimizer/...`` holds optimizer state.

The file records no layer order.  Keras writes objects depth-first in the
model's own order, and HDF5 allocates contiguous datasets as they are
written, so ordering objects by the file offset of their first variable gives
the order of ``model.get_weights()``.
"""

from __future__ import annotations

from typing import Any

from ..manifest import Layer, Manifest, WeightSpec
from .hdf5 import ParseContext, child, json_attrs
from .hdf5_dataset import is_dataset, is_group
from .keras_h5 import _weight

__all__ = ["is_keras_v3", "parse_keras_v3"]

_TOP = ("layers", "vars", "optimizer", "_layer_checkpoint_dependencies")


def is_keras_v3(root: Any) -> bool:
    names = set(root)
    return bool(names) and names <= {*_TOP, "assets"} and bool(names & set(_TOP))


def _vars_groups(group: Any, ctx: ParseContext, prefix: str = "") -> list[tuple[str, Any]]:
    """Every ``vars`` group under ``group`` as ``(object path, group)``, depth first."""
    found = []
    for name in group:
        obj = child(group, name, ctx.url)
        if not is_group(obj):
            continue
        if name == "vars":
            found.append((prefix.rstrip("/"), obj))
        else:
            found.extend(_vars_groups(obj, ctx, f"{prefix}{name}/"))
    return found


def _specs(path: str, vars_group: Any, ctx: ParseContext) -> list[WeightSpec]:
    names = sorted(vars_group, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))
    specs = []
    for name in names:
        ds = child(vars_group, name, ctx.url)
        if is_dataset(ds):
            key = f"{path}/vars/{name}" if path else f"vars/{name}"
            specs.append(_weight(ds, ctx, key, path, name))
    return specs


def _first_offset(specs: list[WeightSpec]) -> float:
    offsets = [e.offset for s in specs for e in s.extents()]
    return min(offsets) if offsets else float("inf")


def parse_keras_v3(root: Any, ctx: ParseContext, fmt: str = "keras-v3") -> Manifest:
    model: list[tuple[float, Layer, list[WeightSpec]]] = []
    optimizer: list[WeightSpec] = []
    for path, group in _vars_groups(root, ctx):
        specs = _specs(path, group, ctx)
        if path == "optimizer" or path.startswith("optimizer/"):
            optimizer.extend(specs)
            continue
        alias = group.attrs.get("name")
        alias = alias.decode() if isinstance(alias, bytes) else alias
        layer = Layer(name=path, keys=tuple(s.key for s in specs), alias=alias)
        model.append((_first_offset(specs), layer, specs))
    model.sort(key=lambda item: item[0])  # stable: weightless layers keep walk order at the end
    return Manifest(
        url=ctx.url,
        format=fmt,
        size=ctx.size,
        etag=ctx.etag,
        weights=tuple(s for _, _, specs in model for s in specs),
        layers=tuple(layer for _, layer, _ in model),
        optimizer=tuple(optimizer),
        attrs=json_attrs(root, ctx.url),
    )
