"""An object's attributes, decoded as h5py returns them: compact and dense
storage, committed (shared) datatypes, vlen strings read from their global
heap collections, and a string over :data:`~lazyweights.attrs.DEFER_BYTES`
left as a :class:`~lazyweights.attrs.Deferred` reference to its bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...attrs import DEFER_BYTES, Deferred
from ...errors import FormatError, UnsupportedError
from . import messages as M
from ._base import Ctx, Cursor, Task, gather
from .btree2 import btree2_records
from .fractal_heap import heap_objects, read_fractal_heap
from .global_heap import locate_object, read_collections
from .objheader import Message, read_object_header
from .tree import Attrs, Empty, UnsupportedValue

__all__ = ["attributes", "committed_dtype", "ordered"]


def ordered(items: list, tracked: bool) -> list:
    if tracked and all(x.crt_order is not None for x in items):
        return sorted(items, key=lambda x: x.crt_order)
    return sorted(items, key=lambda x: x.name.encode("utf-8", "surrogateescape"))


def attributes(ctx: Ctx, msgs: list[Message], what: str) -> Task:
    """The object's attributes (compact and dense), decoded as h5py returns them."""
    attrs: list[M.Attribute] = []
    problems: list[str] = []
    for m in msgs:
        if m.type == M.ATTRIBUTE:
            if m.flags & 2:
                problems.append("attribute stored in the shared-message heap")
                continue
            a = M.parse_attribute(m.data, ctx, what)
            a.crt_order = m.crt_order
            attrs.append(a)
    info = next((M.parse_attr_info(m.data, ctx, what) for m in msgs if m.type == M.ATTR_INFO), None)
    tracked = bool(attrs) and all(a.crt_order is not None for a in attrs)
    if info is not None and not ctx.is_undef(info.heap):
        try:
            attrs.extend((yield from _dense_attrs(ctx, info, what)))
        except UnsupportedError as e:
            problems.append(str(e))
        tracked = info.tracked
    attrs = ordered(attrs, tracked)
    shared = [a for a in attrs if a.shared_dtype is not None]
    dts = yield from gather(committed_dtype(ctx, a.shared_dtype, what) for a in shared)
    for a, dt in zip(shared, dts, strict=True):
        a.datatype, a.raw = dt, M.attribute_value(a.raw, dt, a.space, ctx, f"{what}: attribute {a.name!r}")
    located, gcols = yield from _vlen_strings(ctx, [a for a in attrs if a.datatype.vlen_str])
    values = [
        (a.name, _deferred(a, located[id(a)], what) if id(a) in located else _attr_value(ctx, a, gcols, what))
        for a in attrs
    ]
    out = Attrs(values, reader=ctx.reader)
    out.problems = problems
    return out


def committed_dtype(ctx: Ctx, rel: int, what: str) -> Task:
    """The datatype of the committed (named) datatype object at ``rel``."""
    msgs = yield from read_object_header(ctx, rel)
    m = next((m for m in msgs if m.type == M.DATATYPE), None)
    if m is None or m.flags & 2:
        raise FormatError(f"{what}: committed datatype at 0x{rel:x} has no datatype message")
    return M.parse_datatype(Cursor(m.data, ctx, f"{what}: committed datatype at 0x{rel:x}"))


def _dense_attrs(ctx: Ctx, info: M.AttrInfo, what: str) -> Task:
    heap, (_, recs) = yield from gather([read_fractal_heap(ctx, info.heap), btree2_records(ctx, info.name_index, 8)])
    ids, orders, hashes = [], [], []
    for r in recs:
        c = Cursor(r, ctx, what)
        ids.append(c.bytes(len(r) - 9))
        if c.u8() & 1:
            raise UnsupportedError(f"{what}: shared dense attribute")
        orders.append(c.u32())
        hashes.append(c.u32())
    objs = yield from heap_objects(ctx, heap, ids)
    out = []
    for o, crt, _h in sorted(zip(objs, orders, hashes, strict=False), key=lambda t: t[2]):
        a = M.parse_attribute(o, ctx, f"{what}: dense attribute")
        a.crt_order = crt
        out.append(a)
    return out


def _vlen_refs(ctx: Ctx, a: M.Attribute) -> tuple[list[tuple[int, int, int]], set[int]]:
    n = 0 if a.space.null else int(np.prod(a.space.shape, dtype=np.int64))
    c = Cursor(a.raw, ctx, f"attribute {a.name!r}")
    refs = []
    for _ in range(n):
        length, addr, idx = c.u32(), c.offset(), c.u32()
        refs.append((length, addr, idx))
    return refs, {addr for length, addr, _ in refs if length and not ctx.is_undef(addr) and addr}


def _vlen_strings(ctx: Ctx, vlen: list[M.Attribute]) -> Task:
    """``(located, collections)``: where each large string's bytes are (by ``id`` of its attribute), and
    the global heap collections that hold the others' values, read now."""
    large = [(a, ref) for a in vlen if (ref := _large_ref(ctx, a)) is not None]
    rest = {addr for a in vlen if not any(a is b for b, _ in large) for addr in _vlen_refs(ctx, a)[1]}
    locate = gather(locate_object(ctx, addr, idx) for _, (_, addr, idx) in large)
    found, gcols = yield from gather([locate, read_collections(ctx, rest)])
    located: dict[int, tuple[int, int]] = {}
    for (a, (length, _, _)), loc in zip(large, found, strict=True):
        if loc is not None and loc[1] >= length:
            located[id(a)] = (loc[0], length)
    late = {addr for a, (_, addr, _) in large if id(a) not in located}
    if late:  # past the collection's first bytes (or too short: an error, as when read now): read now
        gcols = {**gcols, **(yield from read_collections(ctx, late))}
    return located, gcols


def _large_ref(ctx: Ctx, a: M.Attribute) -> tuple[int, int, int] | None:
    """The global heap reference of a scalar vlen string of more than :data:`DEFER_BYTES`, else None."""
    if a.space.null or a.space.shape or a.datatype.unsupported:
        return None
    refs, addrs = _vlen_refs(ctx, a)
    return refs[0] if addrs and refs[0][0] > DEFER_BYTES else None


def _deferred(a: M.Attribute, where: tuple[int, int], what: str) -> Deferred:
    """A large string attribute as a reference to its bytes (read when asked for, see :mod:`lazyweights.attrs`)."""
    offset, length = where
    return Deferred(offset=offset, length=length, size=length, what=f"{what}: attribute {a.name!r}")


def _attr_value(ctx: Ctx, a: M.Attribute, gcols: dict[int, dict[int, bytes]], what: str) -> Any:
    dt = a.datatype
    if dt.unsupported or dt.dtype is None:
        return UnsupportedValue(dt.unsupported or "unknown datatype")
    if a.space.null:
        return Empty(dt.dtype)
    if dt.vlen_str:
        refs, _ = _vlen_refs(ctx, a)
        strs = []
        for length, addr, idx in refs:
            if not length:
                strs.append("")
                continue
            obj = gcols.get(addr, {}).get(idx)
            if obj is None or len(obj) < length:
                raise FormatError(f"{what}: attribute {a.name!r}: vlen string missing from global heap 0x{addr:x}")
            strs.append(obj[:length].decode("utf-8", "surrogateescape"))
        if not a.space.shape:
            return strs[0]
        return np.array(strs, dtype=object).reshape(a.space.shape)
    arr = np.frombuffer(a.raw, dtype=dt.dtype).reshape(a.space.shape).copy()
    return arr[()] if not a.space.shape else arr
