"""Local heaps: the name strings of symbol-table (old-style) groups.

The header is read with a speculative tail because HDF5 normally puts the
data segment right after it, which saves a level.
"""

from __future__ import annotations

from ...errors import FormatError
from ._base import Ctx, Cursor, Task, spec_read

__all__ = ["LocalHeap", "read_local_heap"]


class LocalHeap:
    """The data segment of a local heap; ``string(offset)`` returns a NUL-terminated name."""

    def __init__(self, data: bytes, what: str):
        self.data = data
        self.what = what

    def string(self, offset: int) -> str:
        """The NUL-terminated string at ``offset`` in the data segment."""
        if not 0 <= offset < len(self.data):
            raise FormatError(f"{self.what}: name offset {offset} outside the {len(self.data)}-byte heap")
        end = self.data.find(b"\0", offset)
        if end < 0:
            raise FormatError(f"{self.what}: unterminated name at offset {offset}")
        return self.data[offset:end].decode("utf-8", "surrogateescape")


def read_local_heap(ctx: Ctx, rel: int) -> Task:
    """Read the local heap at relative address ``rel`` (header and data segment)."""
    what = f"local heap at 0x{rel:x}"
    hsize = 8 + 2 * ctx.sl + ctx.so
    start = ctx.addr(rel, hsize, what)
    head = yield from spec_read(ctx, start, hsize, 1024, what)
    c = Cursor(head, ctx, what)
    c.signature(b"HEAP")
    if c.u8() != 0:
        raise FormatError(f"{what}: unknown version")
    c.skip(3)
    size, _free, data_rel = c.length(), c.length(), c.offset()
    if size > ctx.limits.max_heap_bytes:
        raise FormatError(f"{what}: data segment of {size} bytes is implausible")
    data_abs = ctx.addr(data_rel, size, f"{what}: data segment")
    if start <= data_abs and data_abs + size <= start + len(head):
        return LocalHeap(head[data_abs - start : data_abs - start + size], what)
    data = yield from spec_read(ctx, data_abs, size, size, what)
    return LocalHeap(data, what)
