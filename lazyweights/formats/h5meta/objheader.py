"""Object headers, versions 1 and 2, with their continuation blocks.

An object header is a list of messages spread over a first chunk and any
number of continuation blocks.  The first chunk is read speculatively (its
length is only known from its prefix); all continuation blocks named by one
chunk are fetched together, so a header costs 1 + (continuation depth) levels.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ...errors import FormatError
from . import neighbours
from ._base import Ctx, Cursor, Task, ahead, check_sum, read_many, spec_read

__all__ = ["HEADER_SPECULATIVE", "MSG_CONTINUATION", "Message", "Messages", "read_object_header"]

HEADER_SPECULATIVE = 320  # bytes read at an object header before its size is known
MSG_CONTINUATION = 0x10
MSG_NIL = 0x0


class Messages(list):
    """An object header's messages; ``used``: bytes of its first chunk up to its last message that is not
    padding (a version-1 header is often allocated larger than what it holds: the rest is a NIL message)."""

    used: int = 0


@dataclass
class Message:
    """One header message: its type, flags, raw body and (v2, optional) creation order."""

    type: int
    flags: int
    data: bytes
    crt_order: int | None = None


def read_object_header(ctx: Ctx, rel: int, want: int = HEADER_SPECULATIVE) -> Task:
    """Parse the object header at relative address ``rel``; return its messages.

    ``want`` bytes are read before the header's size is known (the rest, if any, in the next level).
    """
    what = f"object header at 0x{rel:x}"
    start = ctx.addr(rel, 16, what)
    head = yield from spec_read(ctx, start, 16, want, what)
    out = Messages()
    if head[:4] == b"OHDR":
        msgs, conts, hflags = yield from _v2_first(ctx, start, head, what)
        version = 2  # used stays 0: a v2 chunk is read whole (its checksum covers it)
    elif head[0] == 1:
        msgs, conts, out.used = yield from _v1_first(ctx, start, head, what)
        version, hflags = 1, 0
    else:
        raise FormatError(f"{what}: unknown object header version {head[0]}")
    seen: set[int] = set()
    blocks = 0
    while conts:
        for off, _ in conts:
            if off in seen:
                raise FormatError(f"{what}: continuation block at 0x{off:x} visited twice (cycle)")
            seen.add(off)
        blocks += len(conts)
        if blocks > ctx.limits.max_header_chunks:
            raise FormatError(f"{what}: more than {ctx.limits.max_header_chunks} continuation blocks")
        if neighbours.sequential(ctx):  # the object made next (a layer's first weight) may follow
            yield from ahead(ctx, neighbours.after_blocks(ctx, conts, ctx.dataset_header_read(HEADER_SPECULATIVE)))
        datas = yield from read_many([(ctx.base + off, n) for off, n in conts])
        nxt: list[tuple[int, int]] = []
        for (off, _), data in zip(conts, datas, strict=False):
            cw = f"{what}: continuation block at 0x{off:x}"
            m = _messages_v1(data, 0, len(data), cw) if version == 1 else _messages_v2_block(data, cw, hflags)
            msgs.extend(m)
            nxt.extend(_continuations(ctx, m, what))
        conts = nxt
    out.extend(msgs)
    return out


def _continuations(ctx: Ctx, msgs: list[Message], what: str) -> list[tuple[int, int]]:
    out = []
    for m in msgs:
        if m.type != MSG_CONTINUATION:
            continue
        c = Cursor(m.data, ctx, f"{what}: continuation message")
        off, n = c.offset(), c.length()
        if ctx.is_undef(off) or ctx.base + off + n > ctx.size or n < 0:
            raise FormatError(f"{what}: continuation block 0x{off:x}+{n} beyond end of file")
        if n > 1 << 26:
            raise FormatError(f"{what}: continuation block of {n} bytes is implausibly large")
        out.append((off, n))
    return out


def _v1_first(ctx: Ctx, start: int, head: bytes, what: str) -> Task:
    c = Cursor(head, ctx, what, 2)
    _nmsgs, _refcount, hsize = c.u16(), c.u32(), c.u32()
    total = 16 + hsize
    ctx.check_abs(start, total, f"{what}: header of {hsize} bytes")
    used = _v1_used(head, total)
    if used is None:
        head = yield from spec_read(ctx, start, total, total, what)
        used = _v1_used(head, total)
    msgs = _messages_v1(head, 16, total, what)
    return msgs, _continuations(ctx, msgs, what), used


def _v1_used(buf: bytes, total: int) -> int | None:
    """Where the last message of a v1 first chunk that is not padding ends, if ``buf`` holds it; else None.

    A NIL (padding) message needs only its own 8-byte header: a chunk whose tail is one is complete
    without the tail's bytes.
    """
    pos = last = 16
    while pos + 8 <= total:
        if pos + 8 > len(buf):
            return None
        mtype, msize = struct.unpack_from("<HH", buf, pos)
        end = pos + 8 + msize
        if mtype != MSG_NIL:
            if end > len(buf):
                return None
            last = end
        pos = end + ((-end) % 8 if msize % 8 else 0)
    return last


def _messages_v1(buf: bytes, pos: int, end: int, what: str) -> list[Message]:
    """The messages of a v1 block; ``buf`` may stop inside a trailing NIL message (see :func:`_v1_used`)."""
    out = []
    while pos + 8 <= end:
        c = Cursor(buf, None, what, pos)
        mtype, msize, flags = c.u16(), c.u16(), c.u8()
        body = pos + 8
        if body + msize > end:
            raise FormatError(f"{what}: message of type 0x{mtype:x} runs past the header's end")
        out.append(Message(mtype, flags, bytes(buf[body : body + msize])))
        pos = body + msize
        pos += (-pos) % 8 if msize % 8 else 0
    return out


def _v2_first(ctx: Ctx, start: int, head: bytes, what: str) -> Task:
    c = Cursor(head, ctx, what, 4)
    version, flags = c.u8(), c.u8()
    if version != 2:
        raise FormatError(f"{what}: unknown OHDR version {version}")
    if flags & 0x20:
        c.skip(16)
    if flags & 0x10:
        c.skip(4)
    size0 = c.uint(1 << (flags & 3))
    total = c.pos + size0 + 4
    ctx.check_abs(start, total, f"{what}: first chunk of {size0} bytes")
    if len(head) < total:
        head = yield from spec_read(ctx, start, total, total, what)
    check_sum(head, total - 4, what)
    msgs = _messages_v2(head, c.pos, c.pos + size0, flags, what)
    return msgs, _continuations(ctx, msgs, what), flags


def _messages_v2_block(data: bytes, what: str, hflags: int) -> list[Message]:
    if data[:4] != b"OCHK":
        raise FormatError(f"{what}: bad signature {bytes(data[:4])!r}")
    check_sum(data, len(data) - 4, what)
    return _messages_v2(data, 4, len(data) - 4, hflags, what)


def _messages_v2(buf: bytes, pos: int, end: int, hflags: int, what: str) -> list[Message]:
    out = []
    hdr = 6 if hflags & 0x04 else 4
    while pos + hdr <= end:
        c = Cursor(buf, None, what, pos)
        mtype, msize, flags = c.u8(), c.u16(), c.u8()
        crt = c.u16() if hflags & 0x04 else None
        body = c.pos
        if body + msize > end:
            raise FormatError(f"{what}: message of type 0x{mtype:x} runs past the chunk's end")
        out.append(Message(mtype, flags, bytes(buf[body : body + msize]), crt))
        pos = body + msize
    return out
