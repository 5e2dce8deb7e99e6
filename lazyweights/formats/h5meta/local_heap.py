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

    def name_count(self) -> int:
        """How many names the heap holds before its first free block (the empty name at 0 not counted).

        An estimate of a group's link count, used only to size a read: soft-link targets and
        names in a free block left inside the used part make it larger, never smaller.
        """
        end = len(self.data) if self.free is None else min(self.free, len(self.data))
        count, pos = 0, 0
        while pos < end:
            nul = self.data.find(b"\0", pos, end)
            if nul < 0:
                break
            count += nul > pos
            pos = nul + 1 + (-(nul + 1)) % 8  # objects are 8-byte aligned
        return count


HEAP_SPECULATIVE = 120  # bytes read at a local heap header: 32 of header, then the data segment that normally follows


@dataclass
class HeapHead:
    """A local heap's header: the heap itself when its data segment came with the header."""

    heap: LocalHeap | None
    data_at: int
    size: int
    free: int | None
    what: str


def read_local_heap_head(ctx: Ctx, rel: int, want: int = HEAP_SPECULATIVE) -> Task:
    """Read the header of the local heap at relative address ``rel`` (``want`` bytes at it)."""
    what = f"local heap at 0x{rel:x}"
    hsize = 8 + 2 * ctx.sl + ctx.so
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
    heap = None
    if start <= data_abs and data_abs + size <= start + len(head):
        heap = LocalHeap(head[data_abs - start : data_abs - start + size], what, free_at)
    return HeapHead(heap, data_abs, size, free_at, what)


def finish_local_heap(ctx: Ctx, hh: HeapHead) -> Task:
    """The heap of ``hh``, its data segment read if the header's read did not hold it."""
    if hh.heap is not None:
        return hh.heap
    data = yield from spec_read(ctx, hh.data_at, hh.size, hh.size, hh.what)
    return LocalHeap(data, hh.what, hh.free)
