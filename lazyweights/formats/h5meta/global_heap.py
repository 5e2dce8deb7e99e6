"""Global heap collections: where variable-length strings (Keras 3 ``name``
attributes, vlen string arrays) keep their bytes.

A collection is read whole (normally 4 KiB) and parsed once per walk; several
attributes that point into the same collection share one read.
"""

from __future__ import annotations

from ...errors import FormatError
from ._base import Ctx, Cursor, Task, gather, spec_read

__all__ = ["read_collections"]

_MIN_COLLECTION = 4096


def _parse_collection(ctx: Ctx, data: bytes, rel: int) -> dict[int, bytes]:
    what = f"global heap collection at 0x{rel:x}"
    c = Cursor(data, ctx, what)
    c.signature(b"GCOL")
    if c.u8() != 1:
        raise FormatError(f"{what}: unknown version")
    c.skip(3)
    size = c.length()
    objs: dict[int, bytes] = {}
    hdr = 8 + ctx.sl
    c.align(8)  # the collection header is padded to a multiple of 8
    while c.pos + hdr <= min(size, len(data)):
        idx, _refs = c.u16(), c.u16()
        c.skip(4)
        n = c.length()
        if idx == 0:
            break
        if n > size:
            raise FormatError(f"{what}: object {idx} of {n} bytes exceeds the collection")
        c.align(8)  # so is each object's header
        objs[idx] = c.bytes(n)
        c.skip(min((-n) % 8, c.remaining))  # object data is padded to a multiple of 8
    return objs


def _collection(ctx: Ctx, rel: int) -> Task:
    what = f"global heap collection at 0x{rel:x}"
    start = ctx.addr(rel, 8 + ctx.sl, what)
    data = yield from spec_read(ctx, start, 8 + ctx.sl, _MIN_COLLECTION, what)
    size = Cursor(data, ctx, what, 8).length()
    if size > ctx.limits.max_heap_bytes or size < 8 + ctx.sl:
        raise FormatError(f"{what}: collection size {size} is implausible")
    ctx.check_abs(start, size, what)
    if len(data) < size:
        data = yield from spec_read(ctx, start, size, size, what)
    return data[:size]


def read_collections(ctx: Ctx, addrs: set[int]) -> Task:
    """Fetch and parse the collections at ``addrs`` (relative); return {address: {index: bytes}}."""
    todo = sorted(a for a in addrs if a not in ctx.gcol_cache)
    if todo:
        datas = yield from gather(_collection(ctx, a) for a in todo)
        for a, d in zip(todo, datas, strict=False):
            if a not in ctx.gcol_cache:  # a sibling in the same level may have parsed it meanwhile
                ctx.gcol_cache[a] = _parse_collection(ctx, d, a)
    return {a: ctx.gcol_cache[a] for a in addrs}
