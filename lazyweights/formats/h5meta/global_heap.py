"""Global heap collections: where variable-length strings (Keras 3 ``name``
attributes, vlen string arrays) keep their bytes.

A collection is read whole (normally 4 KiB) and parsed once per walk; several
attributes that point into the same collection share one read.  A large value
(a Keras ``model_config`` of megabytes, alone in its collection) is only
located, from the collection's first bytes, and read when asked for.
"""

from __future__ import annotations

from collections.abc import Iterator

from ...errors import FormatError
from ._base import Ctx, Cursor, Task, gather, spec_read

__all__ = ["locate_object", "read_collections"]

_MIN_COLLECTION = 4096


def _spans(ctx: Ctx, data: bytes, rel: int) -> Iterator[tuple[int, int, int]]:
    """``(index, offset of its data in the collection, length)`` of each object whose header ``data`` holds.

    ``data`` is the collection's first bytes, or all of them: objects are found by walking their
    headers, each placed after the previous object's (8-byte padded) data.
    """
    what = f"global heap collection at 0x{rel:x}"
    c = Cursor(data, ctx, what)
    c.signature(b"GCOL")
    if c.u8() != 1:
        raise FormatError(f"{what}: unknown version")
    c.skip(3)
    size = c.length()
    hdr = 8 + ctx.sl
    c.align(8)  # the collection header is padded to a multiple of 8
    while c.pos + hdr <= min(size, len(data)):
        idx, _refs = c.u16(), c.u16()
        c.skip(4)
        n = c.length()
        if idx == 0:
            break
        c.align(8)  # so is each object's header
        if c.pos + n > size:
            raise FormatError(f"{what}: object {idx} of {n} bytes exceeds the collection")
        yield idx, c.pos, n
        c.pos += n + (-n) % 8  # object data is padded to a multiple of 8


def _parse_collection(ctx: Ctx, data: bytes, rel: int) -> dict[int, bytes]:
    return {idx: data[pos : pos + n] for idx, pos, n in _spans(ctx, data, rel) if pos + n <= len(data)}


def locate_object(ctx: Ctx, rel: int, index: int) -> Task:
    """``(absolute offset, length)`` of object ``index`` of the collection at ``rel``, from its first bytes.

    For a value read later rather than now (a large attribute): only the collection's first
    :data:`_MIN_COLLECTION` bytes are read.  None when the object's header lies past them.
    """
    what = f"global heap collection at 0x{rel:x}"
    start = ctx.addr(rel, 8 + ctx.sl, what)
    data = yield from spec_read(ctx, start, 8 + ctx.sl, _MIN_COLLECTION, what)
    for idx, pos, n in _spans(ctx, data, rel):
        if idx == index:
            return ctx.check_abs(start + pos, n, f"{what}: object {idx}"), n
    return None


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
