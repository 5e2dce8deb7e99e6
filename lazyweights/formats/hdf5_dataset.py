"""What the parsers need from one HDF5 dataset, as a plain record, from either metadata tree.

Two small adapters build the same :class:`DatasetInfo`: :func:`from_h5py`
(an ``h5py.Dataset``: local files, and the old block-cache walk of remote
ones) and :func:`from_h5meta` (a node of the pure-Python level-by-level walk
of :mod:`.h5meta`, used for remote files).  :func:`.hdf5.dataset_spec` turns
either into a :class:`~lazyweights.manifest.WeightSpec` with one logic.

Offsets in the record are absolute in the container (a ``.keras`` archive's
HDF5 member starts at ``base``).  A datatype that is not exactly a numpy
layout (partial-precision or offset integers, non-IEEE floats) is recorded
in ``converted`` with the dtype h5py converts it to; a datatype neither
numpy nor h5py maps is recorded in ``refused``.  No weight values are read:
compact data lives in the object header.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from . import h5meta

__all__ = [
    "DatasetInfo",
    "dataset_info",
    "from_h5meta",
    "from_h5py",
    "is_dataset",
    "is_external",
    "is_group",
    "is_hard",
    "is_soft",
]


@dataclass
class DatasetInfo:
    """One dataset's metadata and storage, whichever library walked the file.

    ``layout`` is ``contiguous``, ``compact``, ``chunked`` or ``virtual``;
    ``contiguous`` is ``(absolute offset or None if never written, size)``;
    ``chunks()`` lists ``(origin, absolute offset, size, filter mask)``;
    ``fill`` is None when the file leaves the fill value undefined.
    """

    path: str
    dtype: np.dtype | None
    shape: tuple[int, ...] | None  # None: a null dataspace
    layout: str
    dtype_attr: Any = None  # the ``dtype`` attribute (Keras 3 marks bfloat16 with it)
    contiguous: tuple[int | None, int] | None = None
    compact: bytes | None = None
    chunk_shape: tuple[int, ...] | None = None
    chunks: Callable[[], list[tuple[tuple[int, ...], int, int, int]]] = field(default=list, repr=False)
    filters: tuple[tuple[int, str, tuple[int, ...]], ...] = ()
    fill: bytes | None = b""
    external: bool = False
    converted: str | None = None  # why h5py must convert the values (the stored type is not a numpy layout)
    refused: str | None = None  # why no reader can read it here
    fallback: str | None = None  # why only h5py can read it (the pure-Python walk could not follow it)


def is_dataset(obj: Any) -> bool:
    return isinstance(obj, (h5py.Dataset, h5meta.Dataset))


def is_group(obj: Any) -> bool:
    return isinstance(obj, (h5py.Group, h5meta.Group))


def is_external(link: Any) -> bool:
    return isinstance(link, (h5py.ExternalLink, h5meta.ExternalLink))


def is_hard(link: Any) -> bool:
    return isinstance(link, (h5py.HardLink, h5meta.HardLink))


def is_soft(link: Any) -> bool:
    return isinstance(link, (h5py.SoftLink, h5meta.SoftLink))


def dataset_info(ds: Any, base: int) -> DatasetInfo:
    """The record of ``ds`` (an h5py dataset, whose offsets are shifted by ``base``, or an h5meta one)."""
    return from_h5meta(ds) if isinstance(ds, h5meta.Dataset) else from_h5py(ds, base)


# -- h5meta ----------------------------------------------------------------------------


def from_h5meta(ds: h5meta.Dataset) -> DatasetInfo:
    """The record of a node of the pure-Python walk (its offsets are already absolute)."""
    table = ds.chunk_table or []
    return DatasetInfo(
        path=ds.name,
        dtype=ds.dtype,
        shape=None if ds.null else ds.shape,
        layout=ds.layout,
        dtype_attr=_attr(ds, "dtype"),
        contiguous=ds.contiguous,
        compact=ds.compact,
        chunk_shape=ds.chunks,
        chunks=lambda: list(table),
        filters=tuple((fid, name, tuple(values)) for fid, name, values in ds.filters),
        fill=ds.fillvalue,
        external=ds.external,
        converted=ds.converted,
        refused=None if ds.dtype is not None else (ds.unsupported or "datatype without a numpy equivalent"),
        fallback=ds.unsupported if ds.dtype is not None and not ds.external and ds.layout != "virtual" else None,
    )


def _attr(node: Any, name: str) -> Any:
    try:
        return node.attrs.get(name)
    except Exception:  # an attribute of a type neither library decodes: not a bfloat16 marker
        return None


# -- h5py ------------------------------------------------------------------------------


_CLASSES = {h5py.h5t.TIME: "time", h5py.h5t.BITFIELD: "bitfield", h5py.h5t.REFERENCE: "reference"}
_LAYOUTS = {h5py.h5d.COMPACT: "compact", h5py.h5d.CONTIGUOUS: "contiguous", h5py.h5d.CHUNKED: "chunked"}


def from_h5py(ds: h5py.Dataset, base: int) -> DatasetInfo:
    """The record of an h5py dataset; chunk and contiguous offsets shifted by ``base``."""
    dcpl = ds.id.get_create_plist()
    layout = _LAYOUTS.get(dcpl.get_layout(), "virtual")
    try:
        dt = ds.dtype  # each access builds a new numpy dtype from the HDF5 type: read once
    except (TypeError, ValueError):  # e.g. time types: no numpy equivalent
        cls = ds.id.get_type().get_class()
        dt, refused = None, f"{_CLASSES.get(cls, f'class {cls}')} datatype"  # as the walker names it
    else:
        refused = None
    info = DatasetInfo(
        path=ds.name,
        dtype=dt,
        shape=None if ds.id.get_space().get_simple_extent_type() == h5py.h5s.NULL else tuple(ds.shape),
        layout=layout,
        dtype_attr=_attr(ds, "dtype"),
        external=dcpl.get_external_count() > 0,
        refused=refused,
        converted=_not_native(ds.id.get_type(), dt) if dt is not None else None,
    )
    if dt is None or layout == "virtual":
        return info
    info.fill = _fill_bytes(dcpl, dt)
    if layout == "compact":
        info.compact = np.ascontiguousarray(ds[()]).tobytes() if info.converted is None else None
    elif layout == "contiguous":
        offset, stored = ds.id.get_offset(), int(ds.id.get_storage_size())
        if stored == 0:  # never written (with a user block HDF5 reports "undefined + its size" as the offset)
            offset = None
        info.contiguous = (None if offset is None else base + offset, stored)
    else:
        info.chunk_shape = tuple(int(n) for n in ds.chunks)
        info.filters = _filters(dcpl)
        info.chunks = lambda: _chunks(ds, base)
    return info


def _fill_bytes(dcpl: Any, dt: np.dtype) -> bytes | None:
    """The fill value as raw bytes of ``dt`` (HDF5 default: zeros); None when the file leaves it undefined."""
    if dcpl.fill_value_defined() == h5py.h5d.FILL_VALUE_UNDEFINED:
        return None
    value = np.zeros((1,), dtype=dt)
    dcpl.get_fill_value(value)
    return value.tobytes()


def _filters(dcpl: Any) -> tuple[tuple[int, str, tuple[int, ...]], ...]:
    out = []
    for i in range(dcpl.get_nfilters()):
        code, _flags, values, name = dcpl.get_filter(i)
        out.append((int(code), name.decode(errors="replace"), tuple(int(v) for v in values)))
    return tuple(out)


def _chunks(ds: h5py.Dataset, base: int) -> list[tuple[tuple[int, ...], int, int, int]]:
    found: list[tuple[tuple[int, ...], int, int, int]] = []

    def visit(info: Any) -> None:
        found.append((tuple(info.chunk_offset), base + info.byte_offset, info.size, info.filter_mask))

    if hasattr(ds.id, "chunk_iter"):
        ds.id.chunk_iter(visit)
    else:  # older HDF5: one call per chunk
        for i in range(ds.id.get_num_chunks()):
            visit(ds.id.get_chunk_info(i))
    return found


def _not_native(tid: Any, dt: np.dtype) -> str | None:
    """Why the stored type differs from the numpy layout h5py gives it (None when it is exactly that layout).

    Compared field by field with h5py's own type for ``dt``: byte order, size,
    bit offset and precision, sign; for floats also the sign, exponent and
    mantissa positions and sizes, the exponent bias and the normalisation.
    """
    if dt.kind not in "iuf" or dt.fields is not None or dt.subdtype is not None:
        return None
    if isinstance(tid, h5py.h5t.TypeEnumID):
        return None
    native = h5py.h5t.py_create(dt)
    checks = [("size", "get_size"), ("bit offset", "get_offset"), ("precision", "get_precision")]
    if isinstance(tid, h5py.h5t.TypeIntegerID):
        checks += [("sign", "get_sign")]
    elif isinstance(tid, h5py.h5t.TypeFloatID):
        checks += [("bit fields", "get_fields"), ("exponent bias", "get_ebias"), ("normalisation", "get_norm")]
    else:
        return None
    if dt.itemsize > 1:
        checks.append(("byte order", "get_order"))
    for what, getter in checks:
        got, want = getattr(tid, getter)(), getattr(native, getter)()
        if got != want:
            kind = "integer" if isinstance(tid, h5py.h5t.TypeIntegerID) else "float"
            return f"{kind} stored with {what} {got} where {dt} has {want}; values are converted as h5py does"
    return None
