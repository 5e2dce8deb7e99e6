"""Local heaps: the name strings of symbol-table (old-style) groups.

The header is read with a speculative tail because HDF5 normally puts the
data segment right after it, which saves a level.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import FormatError
from ._base import Ctx, Cursor, Task, spec_read

__all__ = [
    "HEAP_SPECULATIVE",
    "HeapHead",
    "LocalHeap",
    "heap_header_size",
    "finish_local_heap",
    "read_local_heap_head",
]


class LocalHeap:
    """The data segment of a local heap; ``string(offset)`` returns a NUL-terminated name."""

    def __init__(self, data: bytes, what: str, free: int | None = None):
        self.data = data
        self.what = what
        self.free = free  # offset of the first free block, None when the heap has none

    def string(self, offset: int) -> str:
        """The NUL-terminated string at ``offset`` in the data segment."""
        if not 0 <= offset < len(self.data):
            raise FormatError(f"{self.what}: name offset {offset} outside the {len(self.data)}-byte heap")
        end = self.data.find(b"\0", offset)
        if end < 0:
            raise FormatError(f"{self.what}: unterminated name at offset {offset}")
        return self.data[offset:end].decode("utf-8", "surrogateescape")

    def name_count(self, size: int | None = None) -> int:
        """How many names the heap holds before its first free block (the empty name at 0 not counted).

        An estimate of a group's link count, used only to size a read: soft-link targets and
        names in a free block left inside the used part make it larger, never smaller.  ``data``
        may be the first bytes of a segment of ``size``: the rest counts as names of 8 bytes (the
        shortest a name takes), so the estimate stays an upper bound.
        """
        size = len(self.data) if size is None else size
        end = size if self.free is None else min(self.free, size)
        count, pos = 0, 0
        while pos < min(end, len(self.data)):
            nul = self.data.find(b"\0", pos, min(end, len(self.data)))
            if nul < 0:
                break
            count += nul > pos
            pos = nul + 1 + (-(nul + 1)) % 8  # objects are 8-byte aligned
        return count + -(-max(0, end - pos) // 8)


_FREE_NULL = 1  # the "next free block" offset of the last one (H5HL_FREE_NULL)
HEAP_SPECULATIVE = 120  # bytes read at a local heap header: 32 of header, then the data segment that normally follows


@dataclass
class HeapHead:
    """A local heap's header: the heap itself when its data segment came with the header, else
    the first bytes of the segment that came (``prefix``, a heap of its own to count names)."""

    heap: LocalHeap | None
    data_at: int
    size: int
    free: int | None
    what: str
    prefix: LocalHeap | None = None

    def name_count(self) -> int:
        """At least the number of names the heap holds (see :meth:`LocalHeap.name_count`)."""
        return (self.heap or self.prefix or LocalHeap(b"", self.what, self.free)).name_count(self.size)


def heap_header_size(ctx: Ctx) -> int:
    """A local heap's header: signature, version, reserved, data size, free-list offset, data address."""
    return 8 + 2 * ctx.sl + ctx.so


def read_local_heap_head(ctx: Ctx, rel: int, want: int = HEAP_SPECULATIVE) -> Task:
    """Read the header of the local heap at relative address ``rel`` (``want`` bytes at it)."""
    what = f"local heap at 0x{rel:x}"
    hsize = heap_header_size(ctx)
    start = ctx.addr(rel, hsize, what)
    head = yield from spec_read(ctx, start, hsize, want, what)
    c = Cursor(head, ctx, what)
    c.signature(b"HEAP")
    if c.u8() != 0:
        raise FormatError(f"{what}: unknown version")
    c.skip(3)
    size, free, data_rel = c.length(), c.length(), c.offset()
    if size > ctx.limits.max_heap_bytes:
        raise FormatError(f"{what}: data segment of {size} bytes is implausible")
    data_abs = ctx.addr(data_rel, size, f"{what}: data segment")
    free_at = None if ctx.is_undef(free) else free
    got = head[data_abs - start : data_abs - start + size] if start <= data_abs <= start + len(head) else b""
    hh = HeapHead(None, data_abs, size, free_at, what, LocalHeap(got, what, free_at))
    if len(got) == size:
        hh.heap, hh.prefix = hh.prefix, None
    elif _free_tail(ctx, got, free_at, size):  # every name lies before the one free block, at the end
        hh.heap, hh.prefix = LocalHeap(got[:free_at], what, free_at), None
    if free_at is not None and start + hsize == data_abs:
        ctx.learn_heap_read(hsize + min(free_at + 2 * ctx.sl, size))
    return hh


def _free_tail(ctx: Ctx, got: bytes, free: int | None, size: int) -> bool:
    """Whether ``got`` (a data segment's first bytes) shows the heap's only free block at ``free`` ending it."""
    if free is None or free + 2 * ctx.sl > len(got):
        return False
    c = Cursor(got, ctx, "local heap free block", free)
    nxt, length = c.length(), c.length()
    return nxt == _FREE_NULL and free + length == size


def finish_local_heap(ctx: Ctx, hh: HeapHead) -> Task:
    """The heap of ``hh``, the rest of its data segment read if the header's read did not hold it all."""
    if hh.heap is not None:
        return hh.heap
    have = b"" if hh.prefix is None else hh.prefix.data
    rest = yield from spec_read(ctx, hh.data_at + len(have), hh.size - len(have), 0, hh.what)
    return LocalHeap(have + rest, hh.what, hh.free)
