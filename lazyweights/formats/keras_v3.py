"""Keras 3 ``.weights.h5`` (also the weights member of a ``.keras`` archive).

Layout (shared/FORMATS.md §3): object paths, not layer names.  Each object
with state has a ``vars`` group whose datasets are named ``0``, ``1``, ...
(ordered numerically: HDF5 lists ``10`` before ``2``) and whose ``name``
attribute is the object's own name.  ``optimizer/...`` holds optimizer state.

Subclassed models save each attribute holding state as a top-level group
(``dense1/vars/0``, ``encoder/layers/dense/vars/0``), containers (lists,
tuples, dicts of layers) as ``<attr>/<class_name>[_n]``: the file is
recognised by that structure (:func:`keras_v3_layout`), not by names.

The file records no layer order.  Keras writes objects depth-first in its
saving walk's order, and HDF5 allocates contiguous datasets as they are
written, so ordering objects by the file offset of their first variable gives
the order they were written in.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from typing import Any

import h5py

from ..errors import UnsafeCheckpointError
from ..manifest import Layer, Manifest, WeightSpec
from ..storage import Source
from .hdf5 import ParseContext, child, json_attrs
from .hdf5_dataset import is_dataset, is_group, is_soft
from .keras_h5 import _weight, keras_child, refuse_soft_link
from .keras_zip import refuse_bomb

__all__ = ["ASSETS_DIR", "extract_assets", "is_keras_v3", "keras_v3_layout", "parse_keras_v3"]


def keras_v3_layout(root: h5py.Group, ctx: ParseContext, *, known: bool = False) -> list[tuple[str, h5py.Group]] | None:
    """Every ``vars`` group as ``(object path, group)``, depth first; None if the file is not laid out as Keras 3's.

    Decided by structure, the way Keras's ``H5IOStore`` reads: object paths
    are groups named after attributes (``layers/dense``, a subclassed model's
    ``dense1``, ``encoder/layers/...``, containers' ``list/dense_1``), every
    object's variables are the datasets of its ``vars`` group, and there is
    no dataset anywhere else.  At least one ``vars`` group must exist.  A
    soft link in a file laid out so is refused, as Keras refuses it
    (:func:`.keras_h5.refuse_soft_link`).  ``known``: the file is Keras's by other evidence (a ``.keras`` archive's
    ``config.json``); then other datasets are ignored, as Keras ignores them,
    and a file without variables is an empty Keras 3 file.
    """
    found: list[tuple[str, h5py.Group]] = []
    soft: list[tuple[h5py.Group, str, Any]] = []  # refused once the file is known to be Keras's, as Keras does

    def walk(group: h5py.Group, prefix: str) -> bool:
        for name in group:
            link = group.get(name, getlink=True)
            if is_soft(link):
                soft.append((group, name, link))
                continue
            obj = child(group, name, ctx.url)
            if not is_group(obj):
                if known:
                    continue
                return False  # a dataset outside a vars group: not Keras 3's writer
            if name == "vars":
                found.append((prefix.rstrip("/"), obj))
            elif not walk(obj, f"{prefix}{name}/"):
                return False
        return True

    if not (walk(root, "") and (found or known)):
        return None
    for group, name, link in soft[:1]:
        refuse_soft_link(group, name, link, ctx.url)
    return found


def is_keras_v3(root: h5py.File, ctx: ParseContext | None = None) -> bool:
    """Whether ``root`` is laid out as a Keras 3 ``.weights.h5`` (see :func:`keras_v3_layout`)."""
    return keras_v3_layout(root, ctx or ParseContext(url=root.filename, size=0)) is not None


def _specs(path: str, vars_group: Any, ctx: ParseContext) -> list[WeightSpec]:
    names = sorted(vars_group, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))
    specs = []
    for name in names:
        ds = keras_child(vars_group, name, ctx.url)
        if is_dataset(ds):
            key = f"{path}/vars/{name}" if path else f"vars/{name}"
            specs.append(_weight(ds, ctx, key, path, name))
    return specs


def _first_offset(specs: list[WeightSpec]) -> float:
    offsets = [e.offset for s in specs for e in s.extents()]
    return min(offsets) if offsets else float("inf")


def parse_keras_v3(
    root: h5py.File, ctx: ParseContext, fmt: str = "keras-v3", *, known: bool = False
) -> Manifest | None:
    """The manifest of a Keras 3 weights file, or None when ``root`` is not laid out as one.

    Weights are ordered by the file offset of each object's first variable:
    the order Keras wrote them in, that of ``_save_state``'s walk (a
    functional model's ``layers`` first, then attributes by name), which is
    ``model.get_weights()``'s for Sequential and functional models and for
    subclassed models whose attributes sort in the order they were assigned.
    Other subclassed models list their weights in the order sub-layers were
    assigned, which the file does not record: ``lazyweights.keras.weight_keys``
    gives that order from the model.
    """
    layout = keras_v3_layout(root, ctx, known=known)
    if layout is None:
        return None
    model: list[tuple[float, Layer, list[WeightSpec]]] = []
    optimizer: list[WeightSpec] = []
    for path, group in layout:
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


ASSETS_DIR = "assets"


def extract_assets(source: Source, directory: str) -> bool:
    """Write a ``.keras`` archive's ``assets/`` members under ``directory``; whether there were any.

    Keras hands each layer's ``load_assets`` a directory path, so assets
    (vocabularies, lookup tables) must be files; only those members are
    extracted, read from the archive through ``source`` (CRC-checked by
    :mod:`zipfile`).  As Keras does, a member that declares more than Keras's
    extraction floor (256 MiB) and over 100 times what it stores is refused
    before it is read (:func:`.keras_zip.refuse_bomb`), and so is a name that
    would land outside ``directory``.
    """
    with source.open_file() as raw, zipfile.ZipFile(raw) as archive:
        members = [i for i in archive.infolist() if i.filename.startswith(f"{ASSETS_DIR}/") and not i.is_dir()]
        root = os.path.realpath(directory)
        for info in members:
            refuse_bomb(source.url, info, extract=True)
            target = os.path.realpath(os.path.join(root, info.filename))
            if os.path.commonpath([root, target]) != root or os.path.isabs(info.filename):
                raise UnsafeCheckpointError(f"{source.url}: archive member {info.filename!r} escapes the asset folder")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with archive.open(info) as member, open(target, "wb") as out:
                shutil.copyfileobj(member, out)
    return bool(members)
