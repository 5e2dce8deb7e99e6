"""A dataset's header messages made into a :class:`~.tree.Dataset`: shape,
dtype (or why it is unsupported, per dataset), fill value, layout
(contiguous, compact, chunked with its chunk table), filters and attributes.
"""

from __future__ import annotations

import numpy as np

from ...errors import FormatError, LazyWeightsError, UnsupportedError
from . import messages as M
from ._base import Ctx, Cursor, Task, gather
from .attributes import attributes
from .chunk_index import chunk_table
from .objheader import Message, Messages, read_object_header
from .tree import Dataset, H5File

__all__ = ["dataset"]


def dataset(ctx: Ctx, rel: int, msgs: list[Message], path: str, f: H5File) -> Task:
    what = f"dataset {path} (object header at 0x{rel:x})"
    if isinstance(msgs, Messages) and msgs.used:
        ctx.learn_dataset_header(msgs.used)
    ds = Dataset(name=path, address=ctx.base + rel, file=f)
    reasons: list[str] = []
    msgs = yield from _unshare_datatype(ctx, msgs, what)
    layout = _dataset_messages(ctx, msgs, ds, reasons, what)
    jobs = [attributes(ctx, msgs, what)]
    if layout is not None and layout.kind == "chunked" and not reasons:
        space = M.Dataspace(ds.shape, ds.maxshape)
        jobs.append(_safe(chunk_table(ctx, layout, space, bool(ds.filters), what)))
    results = yield from gather(jobs)
    ds.attrs = results[0]
    if len(results) > 1:
        if isinstance(results[1], LazyWeightsError):
            reasons.append(str(results[1]))
        else:
            ds.chunk_table = [_chunk_abs(ctx, e, what) for e in results[1]]
    ds.unsupported = "; ".join(reasons) or None
    return ds


def _unshare_datatype(ctx: Ctx, msgs: list[Message], what: str) -> Task:
    """Replace a shared (committed) datatype message by the committed type's own message."""
    out = []
    for m in msgs:
        addr = M.parse_shared(m.data, ctx, what) if m.type == M.DATATYPE and m.flags & 2 else None
        if addr is not None:
            committed = yield from read_object_header(ctx, addr)
            m = next((x for x in committed if x.type == M.DATATYPE and not x.flags & 2), m)
        out.append(m)
    return out


def _safe(gen: Task) -> Task:
    try:
        return (yield from gen)
    except UnsupportedError as e:
        return e


def _chunk_abs(ctx: Ctx, e: tuple, what: str) -> tuple:
    offs, rel, size, mask = e
    return offs, ctx.addr(rel, size, f"{what}: chunk {offs}"), size, mask


def _dataset_messages(ctx: Ctx, msgs: list[Message], ds: Dataset, reasons: list[str], what: str):
    layout = fill = old_fill = None
    dtype_size = 0
    for m in msgs:
        t = m.type
        if m.flags & 2 and t in (M.DATATYPE, M.DATASPACE, M.FILL, M.FILTERS, M.LAYOUT):
            reasons.append(f"shared (committed) message of type 0x{t:x}")
            continue
        if t == M.DATASPACE:
            space = M.parse_dataspace(m.data, ctx, what)
            ds.shape, ds.maxshape, ds.null = space.shape, space.maxshape, space.null
        elif t == M.DATATYPE:
            dt = M.parse_datatype(Cursor(m.data, ctx, f"{what}: datatype"))
            ds.dtype, dtype_size = dt.dtype, dt.size
            if dt.unsupported and dt.converted is not None:
                ds.dtype, ds.converted = dt.converted, dt.unsupported
            elif dt.unsupported:
                reasons.append(dt.unsupported)
        elif t == M.LAYOUT:
            layout = M.parse_layout(m.data, ctx, what)
        elif t == M.FILTERS:
            fl = M.parse_filters(m.data, what)
            ds.filters = [(x.id, x.name, x.values) for x in fl]
            ds.filter_flags = [x.flags for x in fl]
        elif t == M.FILL:
            fill = M.parse_fill_new(m.data, what)
        elif t == M.FILL_OLD:
            old_fill = M.parse_fill_old(m.data, what)
        elif t == M.EXTERNAL:
            ds.external = True
            reasons.append("external raw data storage")
        elif t not in M.IGNORED and t != M.ATTRIBUTE and t != M.ATTR_INFO:
            reasons.append(f"unknown header message type 0x{t:x}")
    fv = fill or old_fill
    if fv is not None and fv.undefined:
        ds.fillvalue = None  # readable where written; never-written elements have no value
    else:
        ds.fillvalue = fv.value if fv is not None and fv.value is not None else bytes(dtype_size)
    if layout is None:
        reasons.append("no data layout message")
        return None
    _apply_layout(ctx, ds, layout, dtype_size, reasons, what)
    return layout


def _apply_layout(ctx: Ctx, ds: Dataset, layout: M.Layout, dtype_size: int, reasons: list[str], what: str) -> None:
    ds.layout = layout.kind
    nbytes = int(np.prod(ds.shape, dtype=object)) * dtype_size if ds.shape else dtype_size
    if layout.kind == "contiguous":
        size = layout.size * (dtype_size if layout.params.get("size_in_elements") else 1)
        if layout.address is None or ctx.is_undef(layout.address):
            ds.contiguous = (None, size)
        else:
            ds.contiguous = (ctx.addr(layout.address, size, f"{what}: contiguous data"), size)
        if dtype_size and size != nbytes:
            raise FormatError(f"{what}: contiguous storage of {size} bytes for {nbytes} bytes of data")
    elif layout.kind == "compact":
        ds.compact = layout.compact
        if dtype_size and len(layout.compact or b"") != nbytes:
            raise FormatError(f"{what}: compact storage of {len(layout.compact or b'')} bytes for {nbytes}")
    elif layout.kind == "chunked":
        ds.chunks = layout.chunk
        ds.chunk_index = layout.index
        if layout.chunk is not None and len(layout.chunk) != len(ds.shape):
            raise FormatError(f"{what}: chunk rank {len(layout.chunk)} for a rank-{len(ds.shape)} dataspace")
    else:
        reasons.append("virtual dataset")
