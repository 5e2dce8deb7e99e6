"""Generic HDF5: superblock checks, a safe tree walk, and dataset → WeightSpec.

Only metadata is read here, through either tree: h5py's, or the pure-Python
level-by-level walk of :mod:`.h5meta` (remote files); each dataset becomes a
:class:`~.hdf5_dataset.DatasetInfo` first, so one logic makes its spec.  The
Keras layouts reuse these helpers.

Safety: a checkpoint must not make the loader read other files.  External
links, external raw storage and virtual datasets are refused, and links are
inspected (``getlink=True``) before a name is followed.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..attrs import Deferred
from ..errors import FormatError, TruncatedFileError, UnsafeCheckpointError, UnsupportedError
from ..manifest import Chunk, Extent, Filter, Layer, Manifest, WeightSpec
from .filters import has_codecs
from .hdf5_dataset import DatasetInfo, dataset_info, is_dataset, is_external, is_group

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
# Groups are h5py groups or nodes of the pure-Python walk (:mod:`.h5meta`): both answer
# ``get(name, getlink=True)``, iteration, ``[name]``, ``.name`` and ``.attrs``.


def child(group: Any, name: str, url: str) -> Any:
    """``group[name]``, refusing external links (which would open another file)."""
    link = group.get(name, getlink=True)
    if link is None:
        raise FormatError(f"{url}: {group.name.rstrip('/')}/{name} does not exist")
    if is_external(link):
        raise UnsafeCheckpointError(
            f"{url}: {group.name.rstrip('/')}/{name} is an ExternalLink (HDF5 external link) to "
            f"{link.filename}:{link.path}; lazyweights never follows links out of a checkpoint"
        )
    try:
        return group[name]
    except (OSError, KeyError, ValueError) as exc:  # libhdf5's own consistency checks, dangling soft links
        raise FormatError(f"{url}: cannot open {group.name.rstrip('/')}/{name}: {exc}") from exc


def walk_datasets(group: Any, url: str, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every dataset under ``group`` as ``(relative path, dataset)``, in name order, depth first."""
    for name in group:
        obj = child(group, name, url)
        path = f"{prefix}{name}"
        if is_dataset(obj):
            yield path, obj
        elif is_group(obj):
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


def attr_list(obj: Any, name: str) -> list[str] | None:
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


def json_attrs(obj: Any, url: str) -> dict[str, Any]:
    """All attributes of ``obj`` as JSON-able values; ``*_config`` strings parsed as JSON (large ones when read)."""
    result: dict[str, Any] = {}
    raw = getattr(obj.attrs, "raw", None)  # the walk's attributes hold a large string as a reference
    for key in obj.attrs:
        ref = raw(key) if raw is not None else None
        if isinstance(ref, Deferred):  # kept a reference: read when asked for (lazyweights.attrs)
            result[key] = dataclasses.replace(ref, json=key.endswith("_config"), what=f"{url}: attribute {key!r}")
            continue
        try:
            value = _plain(obj.attrs[key])
        except (OSError, TypeError, UnsupportedError) as exc:  # unreadable attribute types: record, do not fail
            value = f"<unreadable attribute: {exc}>"
        if key.endswith("_config") and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise FormatError(f"{url}: attribute {key!r} is not valid JSON: {exc}") from exc
        result[key] = value
    return result


# -- datasets --------------------------------------------------------------------


def _dtype_name(info: DatasetInfo, keras: bool) -> str | None:
    """The manifest dtype of a dataset, or None when it holds no numeric data.

    Keras 3 writes bfloat16 as 2-byte opaque data, with a ``dtype`` attribute
    in ``.weights.h5`` files and without one in legacy ``.h5`` files, where a
    2-byte opaque type can only be bfloat16 (``keras=True``).
    """
    dt = info.dtype
    if dt is None:
        return None
    opaque2 = dt.kind == "V" and dt.itemsize == 2 and dt.fields is None
    if opaque2 and (keras or info.dtype_attr in ("bfloat16", b"bfloat16")):
        return "bfloat16"
    if dt.kind in "biufc" and not dt.hasobject and dt.fields is None:
        return dt.str
    return None


def _refusal(info: DatasetInfo) -> str | None:
    """Why no reader here can give this dataset's values (None when one can)."""
    if info.refused:
        return info.refused
    dt = info.dtype
    if dt is not None and ((dt.kind == "f" and dt.itemsize > 8) or (dt.kind == "c" and dt.itemsize > 16)):
        return f"{dt.itemsize}-byte extended-precision float: no portable numpy dtype"
    return None


def _refuse_unsafe(info: DatasetInfo, url: str) -> None:
    if info.layout == "virtual":
        raise UnsafeCheckpointError(f"{url}: dataset {info.path} is virtual (maps data from other files)")
    if info.external:
        raise UnsafeCheckpointError(
            f"{url}: dataset {info.path} keeps its data in external files; "
            "lazyweights never reads outside the checkpoint"
        )


def dataset_spec(
    ds: Any, ctx: ParseContext, *, key: str, layer: str, name: str, keras: bool = False
) -> tuple[WeightSpec | None, str]:
    """A :class:`WeightSpec` for ``ds`` (or None and the reason it holds no weight).

    ``ds`` is an h5py dataset or an :mod:`.h5meta` node; either way one
    :class:`~.hdf5_dataset.DatasetInfo` decides.  A dataset whose values no
    reader here can give becomes an ``unsupported`` weight (reading it raises
    :class:`UnsupportedError`); one whose stored type is not a numpy layout, or
    that the pure-Python walk could not follow, is read by h5py alone.
    """
    info = dataset_info(ds, ctx.base)
    _refuse_unsafe(info, ctx.url)
    shape = info.shape or ()
    fields: dict[str, Any] = {"key": key, "layer": layer, "name": name, "path": info.path, "shape": shape}
    refused = _refusal(info)
    if refused is not None:
        size = info.dtype.itemsize if info.dtype is not None else 1
        return WeightSpec(layout="unsupported", dtype=f"|V{size}", reason=refused, **fields), ""
    dtype = _dtype_name(info, keras)
    if dtype is None:
        return None, f"dtype {info.dtype} is not numeric"
    fields["dtype"] = dtype
    fields["fill"] = None if dtype == "bfloat16" else info.fill
    if info.shape is None or 0 in shape:
        return WeightSpec(layout="empty", **fields), ""
    unwritten = info.layout == "contiguous" and (info.contiguous or (None,))[0] is None
    if unwritten and info.fill is None and dtype != "bfloat16":
        reason = "never written, and its fill value is undefined: it has no values"
        return WeightSpec(layout="unsupported", reason=reason, **fields), ""
    converted = info.converted and f"its stored type is not exactly the {dtype} layout; h5py converts the values"
    via_h5py = converted or info.fallback
    if info.layout == "compact" and not via_h5py:
        return WeightSpec(layout="compact", inline=info.compact, **fields), ""
    if info.layout == "contiguous":
        offset, length = info.contiguous or (None, 0)
        extent = None if offset is None else Extent(offset, length)
        if via_h5py:
            return WeightSpec(layout="h5py", extent=extent, reason=via_h5py, **fields), ""
        if extent is None:
            return WeightSpec(layout="empty", **fields), ""
        return WeightSpec(layout="contiguous", extent=extent, **fields), ""
    if info.layout != "chunked" or info.chunk_shape is None:
        return WeightSpec(layout="h5py", reason=via_h5py, **fields), ""
    filters = tuple(Filter(id=fid, name=fname, values=values) for fid, fname, values in info.filters)
    chunks = tuple(Chunk(origin, Extent(off, n), mask) for origin, off, n, mask in sorted(info.chunks()))
    off_grid = _off_grid(chunks, shape, info.chunk_shape)
    if off_grid is not None:
        return WeightSpec(layout="unsupported", reason=off_grid, **fields), ""
    if via_h5py or not has_codecs(filters):
        reason = via_h5py or f"filters {[f.name or f.id for f in filters]} have no codec here"
        mode = "h5py"
    else:
        reason, mode = None, "chunked"
    return WeightSpec(
        layout=mode, chunk_shape=info.chunk_shape, chunks=chunks, filters=filters, reason=reason, **fields
    ), ""


def _off_grid(chunks: tuple[Chunk, ...], shape: tuple[int, ...], chunk_shape: tuple[int, ...]) -> str | None:
    """Why the chunk index does not describe this dataset's chunk grid (a damaged index), or None.

    Every chunk must start on the grid, inside the shape, once: a stray entry
    would be read into no place at all, or hide a chunk that needs the fill value.
    """
    seen: set[tuple[int, ...]] = set()
    for chunk in chunks:
        o = chunk.origin
        if len(o) != len(shape) or any(a % c or not 0 <= a < n for a, c, n in zip(o, chunk_shape, shape, strict=False)):
            return f"its chunk index lists a chunk at {o}, off the {chunk_shape} grid of shape {shape}"
        if o in seen:
            return f"its chunk index lists the chunk at {o} twice"
        seen.add(o)
    return None


def parse_generic(root: Any, ctx: ParseContext) -> Manifest:
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
