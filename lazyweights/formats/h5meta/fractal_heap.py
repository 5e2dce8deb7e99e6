"""Fractal heaps: the object store of dense link and attribute storage.

The walk loads the header, then every direct block (indirect blocks level by
level) in batches, so all objects of a heap are available after
``2 + indirect depth`` levels, concurrently with the v2 B-tree index that
names them.  Heap IDs then resolve to bytes: managed objects from the loaded
blocks, tiny objects from the ID itself, huge objects with one more batched
read (through the huge-object v2 B-tree when IDs are indirect).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from ...errors import FormatError, UnsupportedError
from ._base import Ctx, Cursor, Task, check_sum, gather, limit_enc_size, log2_floor, read_many, spec_read
from .btree2 import btree2_records

__all__ = ["FractalHeap", "heap_objects", "read_fractal_heap"]

HEADER_SPECULATIVE = 256  # bytes read at a heap header (its fixed part is ~150 bytes)


@dataclass
class FractalHeap:
    """A loaded fractal heap: geometry plus its direct blocks keyed by heap offset."""

    rel: int
    id_len: int
    flags: int
    max_man: int
    width: int
    start_block: int
    max_direct: int
    max_heap_bits: int
    root: int
    root_rows: int
    huge_btree: int
    off_size: int = 0
    len_size: int = 0
    block_offs: list[int] = field(default_factory=list)
    blocks: list[bytes] = field(default_factory=list)
    huge: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def what(self) -> str:
        """Name used in error messages."""
        return f"fractal heap at 0x{self.rel:x}"

    def row_size(self, row: int) -> int:
        """Size of the blocks in doubling-table row ``row``."""
        return self.start_block if row == 0 else self.start_block << (row - 1)

    @property
    def max_direct_rows(self) -> int:
        """Rows of direct blocks; later rows hold indirect blocks."""
        return log2_floor(self.max_direct) - log2_floor(self.start_block) + 2

    def managed(self, off: int, n: int) -> bytes:
        """Bytes of the managed object at heap offset ``off``."""
        i = bisect.bisect_right(self.block_offs, off) - 1
        if i < 0:
            raise FormatError(f"{self.what}: object offset {off} precedes every block")
        rel = off - self.block_offs[i]
        block = self.blocks[i]
        if rel + n > len(block):
            raise FormatError(f"{self.what}: object at offset {off} (+{n}) is outside its direct block")
        return block[rel : rel + n]


def _parse_header(ctx: Ctx, rel: int, data: bytes) -> FractalHeap:
    what = f"fractal heap at 0x{rel:x}"
    c = Cursor(data, ctx, what)
    c.signature(b"FRHP")
    if c.u8() != 0:
        raise FormatError(f"{what}: unknown version")
    id_len, filter_len, flags, max_man = c.u16(), c.u16(), c.u8(), c.u32()
    c.length()
    huge_bt = c.offset()
    c.length()
    c.offset()
    for _ in range(8):
        c.length()
    width, start, max_direct, max_bits, _start_rows = c.u16(), c.length(), c.length(), c.u16(), c.u16()
    root, rows = c.offset(), c.u16()
    if filter_len:
        raise UnsupportedError(f"{what}: filtered fractal heaps are not supported")
    check_sum(data, c.pos, what)
    ok = width and start and max_direct and not (width & (width - 1)) and not (start & (start - 1))
    if not ok or max_direct & (max_direct - 1) or max_direct < start or not 8 <= max_bits <= 64 or id_len < 2:
        raise FormatError(f"{what}: implausible geometry (width {width}, blocks {start}..{max_direct})")
    if max_direct > 1 << 26 or rows > 64:
        raise FormatError(f"{what}: direct blocks of {max_direct} bytes / {rows} rows are implausible")
    h = FractalHeap(rel, id_len, flags, max_man, width, start, max_direct, max_bits, root, rows, huge_bt)
    h.off_size = (max_bits + 7) // 8
    h.len_size = min((log2_floor(max_direct) + 7) // 8, limit_enc_size(max_man))
    return h


def read_fractal_heap(ctx: Ctx, rel: int) -> Task:
    """Load the fractal heap at ``rel``: header, all direct blocks, and the huge-object index."""
    what = f"fractal heap at 0x{rel:x}"
    start = ctx.addr(rel, 32, what)
    data = yield from spec_read(ctx, start, 32, HEADER_SPECULATIVE, what)
    h = _parse_header(ctx, rel, data)
    jobs = [_load_blocks(ctx, h)]
    if not ctx.is_undef(h.huge_btree):
        jobs.append(_load_huge(ctx, h))
    yield from gather(jobs)
    return h


def _load_huge(ctx: Ctx, h: FractalHeap) -> Task:
    btype, recs = yield from btree2_records(ctx, h.huge_btree)
    for r in recs:
        c = Cursor(r, ctx, f"{h.what}: huge object record")
        if btype == 1:
            addr, n, key = c.offset(), c.length(), c.length()
            h.huge[key] = (addr, n)
        elif btype in (2, 4):
            raise UnsupportedError(f"{h.what}: filtered huge objects are not supported")


def _load_blocks(ctx: Ctx, h: FractalHeap) -> Task:
    if ctx.is_undef(h.root):
        return
    level: list[tuple[str, int, int]] = [
        ("direct", h.root, h.start_block) if h.root_rows == 0 else ("indirect", h.root, h.root_rows)
    ]
    seen: set[int] = set()
    found: list[tuple[int, bytes]] = []
    total = 0
    for _ in range(64):
        if not level:
            break
        ranges = []
        for kind, a, n in level:
            if a in seen:
                raise FormatError(f"{h.what}: block at 0x{a:x} referenced twice (cycle)")
            seen.add(a)
            size = n if kind == "direct" else _iblock_size(ctx, h, n)
            total += size
            if total > ctx.size:
                raise FormatError(f"{h.what}: blocks larger than the file")
            ranges.append((ctx.addr(a, size, f"{h.what}: block at 0x{a:x}"), size))
        datas = yield from read_many(ranges)
        nxt = []
        for (kind, a, n), data in zip(level, datas, strict=False):
            if kind == "direct":
                found.append(_direct(ctx, h, a, data))
            else:
                nxt.extend(_indirect(ctx, h, a, n, data))
        level = nxt
    found.sort()
    h.block_offs = [o for o, _ in found]
    h.blocks = [b for _, b in found]


def _iblock_size(ctx: Ctx, h: FractalHeap, nrows: int) -> int:
    return 5 + ctx.so + h.off_size + nrows * h.width * ctx.so + 4


def _direct(ctx: Ctx, h: FractalHeap, a: int, data: bytes) -> tuple[int, bytes]:
    c = Cursor(data, ctx, f"{h.what}: direct block at 0x{a:x}")
    c.signature(b"FHDB")
    c.skip(1 + ctx.so)
    return c.uint(h.off_size), data


def _indirect(ctx: Ctx, h: FractalHeap, a: int, nrows: int, data: bytes) -> list[tuple[str, int, int]]:
    c = Cursor(data, ctx, f"{h.what}: indirect block at 0x{a:x}")
    c.signature(b"FHIB")
    c.skip(1 + ctx.so + h.off_size)
    first_row_bits = log2_floor(h.start_block) + log2_floor(h.width)
    out = []
    for row in range(nrows):
        for _ in range(h.width):
            child = c.offset()
            if ctx.is_undef(child):
                continue
            size = h.row_size(row)
            if row < h.max_direct_rows:
                out.append(("direct", child, size))
            else:
                out.append(("indirect", child, log2_floor(size) - first_row_bits + 1))
    check_sum(data, c.pos, f"{h.what}: indirect block at 0x{a:x}")
    return out


def heap_objects(ctx: Ctx, h: FractalHeap, ids: list[bytes]) -> Task:
    """Resolve heap IDs to object bytes (one batched read for any huge objects)."""
    out: list[bytes | None] = []
    huge: list[tuple[int, int, int]] = []  # (index, rel address, length)
    for i, hid in enumerate(ids):
        if len(hid) < 1:
            raise FormatError(f"{h.what}: empty heap ID")
        kind = (hid[0] >> 4) & 3
        c = Cursor(hid, ctx, f"{h.what}: heap ID", 1)
        if kind == 0:
            off, n = c.uint(h.off_size), c.uint(h.len_size)
            out.append(h.managed(off, n))
        elif kind == 2:
            n = (hid[0] & 15) + 1 if h.id_len <= 18 else ((hid[0] & 15) << 8 | c.u8()) + 1
            out.append(c.bytes(n))
        elif kind == 1:
            if ctx.so + ctx.sl <= h.id_len - 1:
                addr, n = c.offset(), c.length()
            else:
                key = c.uint(min(h.id_len - 1, 8))
                if key not in h.huge:
                    raise FormatError(f"{h.what}: huge object {key} missing from its index")
                addr, n = h.huge[key]
            if n > ctx.limits.max_attr_bytes:
                raise FormatError(f"{h.what}: huge object of {n} bytes is implausible")
            huge.append((i, addr, n))
            out.append(None)
        else:
            raise FormatError(f"{h.what}: heap ID of unknown type {kind}")
    if huge:
        datas = yield from read_many([(ctx.addr(a, n, f"{h.what}: huge object"), n) for _, a, n in huge])
        for (i, _, _), d in zip(huge, datas, strict=False):
            out[i] = d
    return out
