"""Generic HDF5: superblock checks, a safe tree walk, and dataset → WeightSpec.

Only metadata goes through h5py here: the byte extents of each dataset
(``get_offset``/``get_storage_size`` for contiguous data, ``chunk_iter`` plus
the filter pipeline for chunked data).  The Keras layouts reuse these helpers.

Safety: a checkpoint must not make the loader read other files.  External
links, external raw storage and virtual datasets are refused, and links are
inspected (``getlink=True``) before a name is followed.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from ..errors import FormatError, TruncatedFileError, UnsafeCheckpointError
from ..manifest import Chunk, Extent, Filter, Layer, Manifest, WeightSpec
from .filters import has_codecs

__all__ = [
    "SIGNATURE",
    "ParseContext",
    "attr_list",
    "check_superblock",
    "child",
    "dataset_spec",
    "find_superblock",
    "group_layers",
    "json_attrs",
    "parse_generic",
    "walk_datasets",
]

SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class ParseContext:
    """Where the HDF5 bytes are: the container's URL/size and the HDF5 file's base offset in it."""

    url: str
    size: int
    etag: str | None = None
    base: int = 0  # offset of the HDF5 file inside the container (a zip member), else 0


# -- superblock ---------------------------------------------------------------


def find_superblock(head: bytes) -> int | None:
    """Offset of the HDF5 signature: 0, or 512, 1024, ... when a user block precedes it."""
    pos = 0
    while pos + len(SIGNATURE) <= len(head):
        if head[pos : pos + len(SIGNATURE)] == SIGNATURE:
            return pos
        pos = 512 if pos == 0 else pos * 2
    return None


def check_superblock(head: bytes, at: int, size: int, url: str) -> None:
    """Refuse a file shorter than the end-of-file address its superblock records.

    Checked before h5py parses anything, so a truncated download gets a clear
    error instead of whatever the HDF5 library makes of missing bytes.
    """
    sb = head[at:]
    if len(sb) < 16:
        raise TruncatedFileError(f"{url}: file ends inside the HDF5 superblock ({size} bytes)")
    version = sb[8]
    if version in (0, 1):
        osize = sb[13]
        start = 24 if version == 0 else 28
    elif version in (2, 3):
        osize = sb[9]
        start = 12
    else:
        raise FormatError(f"{url}: unknown HDF5 superblock version {version}")
    if osize not in (2, 4, 8):
        raise FormatError(f"{url}: HDF5 superblock declares {osize}-byte offsets; expected 2, 4 or 8")
    fmt = {2: "<H", 4: "<I", 8: "<Q"}[osize]
    need = start + 3 * osize
    if len(sb) < need:
        raise TruncatedFileError(f"{url}: file ends inside the HDF5 superblock ({size} bytes)")
    # libhdf5 compares the stored end-of-file address with the whole file's size
    # (user block included), whatever the base address: do the same.
    expected = struct.unpack_from(fmt, sb, start + 2 * osize)[0]
    if expected > size:
        raise TruncatedFileError(
            f"{url}: truncated HDF5 file: its superblock says it ends at byte {expected}, "
            f"but it has {size} bytes ({expected - size} missing)"
        )


# -- safe navigation -----------------------------------------------------------


def child(group: h5py.Group, name: str, url: str) -> Any:
    """``group[name]``, refusing external links (which would open another file)."""
    link = group.get(name, getlink=True)
    if link is None:
        raise FormatError(f"{url}: {group.name.rstrip('/')}/{name} does not exist")
    if isinstance(link, h5py.ExternalLink):
        raise UnsafeCheckpointError(
            f"{url}: {group.name.rstrip('/')}/{name} is an ExternalLink (HDF5 external link) to "
            f"{link.filename}:{link.path}; lazyweights never follows links out of a checkpoint"
        )
    try:
        return group[name]
    except (OSError, KeyError, ValueError) as exc:  # libhdf5's own consistency checks
        raise FormatError(f"{url}: cannot open {group.name.rstrip('/')}/{name}: {exc}") from exc


def walk_datasets(group: h5py.Group, url: str, prefix: str = "") -> Iterator[tuple[str, h5py.Dataset]]:
    """Every dataset under ``group`` as ``(relative path, dataset)``, in name order, depth first."""
    for name in group:
        obj = child(group, name, url)
        path = f"{prefix}{name}"
        if isinstance(obj, h5py.Dataset):
            yield path, obj
        elif isinstance(obj, h5py.Group):
            yield from walk_datasets(obj, url, path + "/")


# -- attributes ----------------------------------------------------------------


def _plain(value: Any) -> Any:
    """An h5py attribute value as JSON-able Python (bytes decoded as UTF-8)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.dtype.kind in "OSU" else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def attr_list(obj: h5py.HLObject, name: str) -> list[str] | None:
    """A list-of-strings attribute, joining Keras's split form (``name0``, ``name1``, ...).

    Keras splits an attribute that would exceed HDF5's 64 KiB header limit.
    Returns None when neither form is present.
    """
    attrs = obj.attrs
    if name in attrs:
        parts = [attrs[name]]
    elif f"{name}0" in attrs:
        parts, i = [], 0
        while f"{name}{i}" in attrs:
            parts.append(attrs[f"{name}{i}"])
            i += 1
    else:
        return None
    out: list[str] = []
    for part in parts:
        values = _plain(np.asarray(part).reshape(-1))
        out.extend(str(v) for v in values)
    return out


def json_attrs(obj: h5py.HLObject, url: str) -> dict[str, Any]:
    """All attributes of ``obj`` as JSON-able values; ``*_config`` strings parsed as JSON."""
    result: dict[str, Any] = {}
    for key in obj.attrs:
        try:
            value = _plain(obj.attrs[key])
        except (OSError, TypeError) as exc:  # unreadable attribute types: record, do not fail
            value = f"<unreadable attribute: {exc}>"
        if key.endswith("_config") and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise FormatError(f"{url}: attribute {key!r} is not valid JSON: {exc}") from exc
        result[key] = value
    return result


# -- datasets --------------------------------------------------------------------


def _dtype_name(ds: h5py.Dataset, dt: np.dtype, keras: bool) -> str | None:
    """The manifest dtype of a dataset, or None when it holds no numeric data.

    Keras 3 writes bfloat16 as 2-byte opaque data, with a ``dtype`` attribute
    in ``.weights.h5`` files and without one in legacy ``.h5`` files, where a
    2-byte opaque type can only be bfloat16 (``keras=True``).
    """
    opaque2 = dt.kind == "V" and dt.itemsize == 2 and dt.fields is None
    if opaque2 and (keras or ds.attrs.get("dtype") in ("bfloat16", b"bfloat16")):
        return "bfloat16"
    if dt.kind in "biufc" and not dt.hasobject and dt.fields is None:
        return dt.str
    return None


def _fill_bytes(dcpl: Any, dt: np.dtype) -> bytes:
    """The dataset's fill value as raw bytes of its dtype (HDF5 default: zeros)."""
    value = np.zeros((1,), dtype=dt)
    dcpl.get_fill_value(value)
    return value.tobytes()


def _filters(dcpl: Any) -> tuple[Filter, ...]:
    out = []
    for i in range(dcpl.get_nfilters()):
        code, _flags, values, name = dcpl.get_filter(i)
        out.append(Filter(id=int(code), name=name.decode(errors="replace"), values=tuple(int(v) for v in values)))
    return tuple(out)


def _chunks(ds: h5py.Dataset, base: int) -> tuple[Chunk, ...]:
    found: list[Chunk] = []

    def visit(info: Any) -> None:
        found.append(Chunk(tuple(info.chunk_offset), Extent(base + info.byte_offset, info.size), info.filter_mask))

    if hasattr(ds.id, "chunk_iter"):
        ds.id.chunk_iter(visit)
    else:  # older HDF5: one call per chunk
        for i in range(ds.id.get_num_chunks()):
            visit(ds.id.get_chunk_info(i))
    return tuple(found)


def dataset_spec(
    ds: h5py.Dataset, ctx: ParseContext, *, key: str, layer: str, name: str, keras: bool = False
) -> tuple[WeightSpec | None, str]:
    """A :class:`WeightSpec` for ``ds`` (or None and the reason it holds no weight)."""
    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        raise UnsafeCheckpointError(f"{ctx.url}: dataset {ds.name} is virtual (maps data from other files)")
    if dcpl.get_external_count() > 0:
        raise UnsafeCheckpointError(
            f"{ctx.url}: dataset {ds.name} keeps its data in external files; "
            "lazyweights never reads outside the checkpoint"
        )
    dt = ds.dtype  # each access builds a new numpy dtype from the HDF5 type: read once
    dtype = _dtype_name(ds, dt, keras)
    if dtype is None:
        return None, f"dtype {dt} is not numeric"
    raw_shape = ds.shape
    shape = tuple(int(n) for n in raw_shape) if raw_shape is not None else ()
    fields: dict[str, Any] = {"key": key, "layer": layer, "name": name, "path": ds.name, "shape": shape, "dtype": dtype}
    fields["fill"] = _fill_bytes(dcpl, dt) if dtype != "bfloat16" else None
    if raw_shape is None or 0 in shape:
        return WeightSpec(layout="empty", **fields), ""
    if layout == h5py.h5d.COMPACT:
        return WeightSpec(layout="compact", inline=np.ascontiguousarray(ds[()]).tobytes(), **fields), ""
    if layout == h5py.h5d.CONTIGUOUS:
        offset = ds.id.get_offset()
        if offset is None:
            return WeightSpec(layout="empty", **fields), ""
        extent = Extent(ctx.base + offset, int(ds.id.get_storage_size()))
        return WeightSpec(layout="contiguous", extent=extent, **fields), ""
    filters = _filters(dcpl)
    chunk_shape = tuple(int(n) for n in ds.chunks)
    mode = "chunked" if has_codecs(filters) else "h5py"
    return WeightSpec(layout=mode, chunk_shape=chunk_shape, chunks=_chunks(ds, ctx.base), filters=filters, **fields), ""


def parse_generic(root: h5py.File, ctx: ParseContext) -> Manifest:
    """Any HDF5 file: every numeric dataset is a weight keyed by its path; its group is its layer."""
    weights: list[WeightSpec] = []
    skipped: list[tuple[str, str]] = []
    for path, ds in walk_datasets(root, ctx.url):
        layer, _, name = path.rpartition("/")
        spec, reason = dataset_spec(ds, ctx, key=path, layer=layer, name=name)
        if spec is None:
            skipped.append((path, reason))
        else:
            weights.append(spec)
    layers = group_layers(weights)
    return Manifest(
        url=ctx.url,
        format="hdf5",
        size=ctx.size,
        etag=ctx.etag,
        weights=tuple(weights),
        layers=layers,
        attrs=json_attrs(root, ctx.url),
        skipped=tuple(skipped),
    )


def group_layers(weights: list[WeightSpec]) -> tuple[Layer, ...]:
    """Layers in order of first appearance, each with its weights' keys (formats without a layer list)."""
    order: dict[str, list[str]] = {}
    for w in weights:
        order.setdefault(w.layer, []).append(w.key)
    return tuple(Layer(name=k, keys=tuple(v)) for k, v in order.items())
