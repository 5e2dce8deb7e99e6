"""Chunk indexes: the table of a chunked dataset's chunks, whatever index
HDF5 chose: v1 B-tree (layout v1-v3) and, for layout v4 (``libver="latest"``),
single chunk, implicit, fixed array, extensible array and v2 B-tree.

Every index returns the same table as h5py's ``chunk_iter``: a list of
``(chunk offset in elements, relative address, stored size, filter mask)``
for allocated chunks, in the index's natural order.
"""

from __future__ import annotations

from math import ceil, prod

from ...errors import FormatError, UnsupportedError
from ._base import Ctx, Cursor, Task, check_sum, log2_floor, read_many
from .btree1 import btree1_chunks
from .btree2 import btree2_records
from .messages import Dataspace, Layout

__all__ = ["ChunkEntry", "chunk_table"]

ChunkEntry = tuple[tuple[int, ...], int, int, int]


def _grid(shape: tuple[int, ...], chunk: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(ceil(s / c) if c else 0 for s, c in zip(shape, chunk, strict=False))


def _unravel(i: int, grid: tuple[int, ...]) -> list[int]:
    out = []
    for g in reversed(grid):
        out.append(i % g if g else 0)
        i = i // g if g else 0
    return out[::-1]


def _max_grid(space: Dataspace, chunk: tuple[int, ...]) -> tuple[int, ...]:
    return _grid(tuple(s if m is None else m for s, m in zip(space.shape, space.maxshape, strict=False)), chunk)


def chunk_table(ctx: Ctx, layout: Layout, space: Dataspace, filtered: bool, what: str) -> Task:
    """The chunk table of a chunked dataset (relative addresses)."""
    chunk = layout.chunk or ()
    if len(chunk) != len(space.shape) or any(c == 0 for c in chunk):
        raise FormatError(f"{what}: chunk rank {len(chunk)} does not match dataspace rank {len(space.shape)}")
    if layout.address is None or ctx.is_undef(layout.address):
        return []
    nbytes = prod(chunk) * layout.params.get("elem", 0)
    kind = layout.index
    if kind == "btree1":
        return (yield from btree1_chunks(ctx, layout.address, len(chunk)))
    if kind == "single":
        size = layout.params.get("filtered_size", nbytes)
        return [((0,) * len(chunk), layout.address, size, layout.params.get("filter_mask", 0))]
    if kind == "implicit":
        return _implicit(ctx, layout, space, nbytes)
    if kind == "farray":
        return (yield from _farray(ctx, layout, space, nbytes, what))
    if kind == "earray":
        return (yield from _earray(ctx, layout, space, nbytes, what))
    if kind == "btree2":
        return (yield from _btree2(ctx, layout, nbytes))
    raise UnsupportedError(f"{what}: chunk index {kind}")


def _implicit(ctx: Ctx, layout: Layout, space: Dataspace, nbytes: int) -> list[ChunkEntry]:
    chunk = layout.chunk or ()
    grid = _grid(space.shape, chunk)
    mgrid = _max_grid(space, chunk)
    n = prod(grid)
    if n > ctx.limits.max_chunks:
        raise FormatError(f"implicit chunk index at 0x{layout.address:x}: {n} chunks")
    ctx.addr(layout.address, prod(mgrid) * nbytes, f"implicit chunk index at 0x{layout.address:x}: chunks")
    out = []
    for i in range(n):
        scaled = _unravel(i, grid)
        lin = 0
        for s, g in zip(scaled, mgrid, strict=False):
            lin = lin * g + s
        offs = tuple(s * c for s, c in zip(scaled, chunk, strict=False))
        out.append((offs, layout.address + lin * nbytes, nbytes, 0))
    return out


def _element(c: Cursor, ctx: Ctx, esize: int, filtered: bool, nbytes: int) -> tuple[int, int, int]:
    addr = c.offset()
    if not filtered:
        return addr, nbytes, 0
    size = c.uint(esize - ctx.so - 4)
    return addr, size, c.u32()


def _entries(ctx: Ctx, elems, chunk, order) -> list[ChunkEntry]:
    """Table rows for the defined elements of ``elems`` (pairs of element index and element)."""
    out = []
    for i, (addr, size, mask) in elems:
        if ctx.is_undef(addr):
            continue
        scaled = order(i)
        out.append((tuple(s * c for s, c in zip(scaled, chunk, strict=False)), addr, size, mask))
    return out


def _farray(ctx: Ctx, layout: Layout, space: Dataspace, nbytes: int, what: str) -> Task:
    hw = f"{what}: fixed array header at 0x{layout.address:x}"
    hsize = 4 + 4 + ctx.sl + ctx.so + 4
    data = (yield from read_many([(ctx.addr(layout.address, hsize, hw), hsize)]))[0]
    c = Cursor(data, ctx, hw)
    c.signature(b"FAHD")
    c.skip(1)
    client, esize, page_bits, n, dblk = c.u8(), c.u8(), c.u8(), c.length(), c.offset()
    check_sum(data, c.pos, hw)
    filtered = client == 1
    if esize < ctx.so or n > ctx.limits.max_chunks or n * esize > ctx.size:
        raise FormatError(f"{hw}: {n} entries of {esize} bytes are implausible")
    if ctx.is_undef(dblk):
        return []
    page = 1 << page_bits
    prefix = 6 + ctx.so
    if n > page:
        npages = ceil(n / page)
        bitmap = (npages + 7) // 8
        size = prefix + bitmap + 4 + n * esize + npages * 4
    else:
        size = prefix + n * esize + 4
    dw = f"{what}: fixed array data block at 0x{dblk:x}"
    data = (yield from read_many([(ctx.addr(dblk, size, dw), size)]))[0]
    c = Cursor(data, ctx, dw)
    c.signature(b"FADB")
    elems = []
    if n > page:
        c.pos = prefix
        bits = c.bytes((npages + 7) // 8)
        check_sum(data, c.pos, dw)
        c.skip(4)
        for p in range(npages):
            cnt = min(page, n - p * page)
            init = bits[p // 8] & (0x80 >> (p % 8))
            start = c.pos
            for _ in range(cnt):
                e = _element(c, ctx, esize, filtered, nbytes)
                elems.append(e if init else (ctx.undef, 0, 0))
            if init:
                check_sum(data[start : c.pos + 4], c.pos - start, f"{dw}: page {p}")
            c.skip(4)
    else:
        c.pos = prefix
        elems = [_element(c, ctx, esize, filtered, nbytes) for _ in range(n)]
        check_sum(data, c.pos, dw)
    chunk = layout.chunk or ()
    mgrid = _max_grid(space, chunk)
    return _entries(ctx, enumerate(elems), chunk, lambda i: _unravel(i, mgrid))


def _btree2(ctx: Ctx, layout: Layout, nbytes: int) -> Task:
    chunk = layout.chunk or ()
    rank = len(chunk)
    btype, recs = yield from btree2_records(ctx, layout.address, (10, 11))
    out = []
    for r in recs:
        c = Cursor(r, ctx, f"v2 B-tree chunk index at 0x{layout.address:x}")
        addr = c.offset()
        if btype == 11:
            size = c.uint(len(r) - ctx.so - 4 - 8 * rank)
            mask = c.u32()
        else:
            size, mask = nbytes, 0
        scaled = [c.u64() for _ in range(rank)]
        if not ctx.is_undef(addr):
            out.append((tuple(s * k for s, k in zip(scaled, chunk, strict=False)), addr, size, mask))
    return out


def _earray(ctx: Ctx, layout: Layout, space: Dataspace, nbytes: int, what: str) -> Task:
    hw = f"{what}: extensible array header at 0x{layout.address:x}"
    hsize = 12 + 6 * ctx.sl + ctx.so + 4
    data = (yield from read_many([(ctx.addr(layout.address, hsize, hw), hsize)]))[0]
    c = Cursor(data, ctx, hw)
    c.signature(b"EAHD")
    c.skip(1)
    client, esize, max_bits, idx_elmts, min_elmts, min_ptrs, page_bits = (c.u8() for _ in range(7))
    for _ in range(4):
        c.length()
    max_idx, _nelmts, iblock = c.length(), c.length(), c.offset()
    check_sum(data, c.pos, hw)
    if esize < ctx.so or max_idx > ctx.limits.max_chunks or not min_elmts or not min_ptrs or max_bits > 64:
        raise FormatError(f"{hw}: implausible parameters")
    if ctx.is_undef(iblock) or max_idx == 0:
        return []
    g = _EAGeometry(ctx, esize, max_bits, idx_elmts, min_elmts, min_ptrs, page_bits, client == 1, nbytes, what)
    elems = yield from g.read(iblock, max_idx)
    chunk = layout.chunk or ()
    unlim = [i for i, m in enumerate(space.maxshape) if m is None]
    if len(unlim) != 1:
        raise FormatError(f"{what}: extensible array index needs exactly one unlimited dimension")
    u = unlim[0]
    mgrid = list(_max_grid(space, chunk))
    swz = [mgrid[u], *mgrid[:u], *mgrid[u + 1 :]]
    swz[0] = 1 << 62  # unbounded

    def order(i: int) -> list[int]:
        s = _unravel(i, tuple(swz))
        return [*s[1 : u + 1], s[0], *s[u + 1 :]]

    return _entries(ctx, ((i, e) for i, e in elems if i < max_idx), chunk, order)


class _EAGeometry:
    """Block geometry of an extensible array (super block table as HDF5 computes it)."""

    def __init__(self, ctx, esize, max_bits, idx_elmts, min_elmts, min_ptrs, page_bits, filtered, nbytes, what):
        self.ctx, self.esize, self.idx_elmts, self.filtered, self.nbytes = ctx, esize, idx_elmts, filtered, nbytes
        self.what = what
        self.off_size = (max_bits + 7) // 8
        self.page = 1 << page_bits
        nsblks = 1 + max_bits - log2_floor(min_elmts)
        self.sblk = [(1 << (u // 2), (1 << ((u + 1) // 2)) * min_elmts) for u in range(nsblks)]
        self.ib_nsblks = 2 * log2_floor(min_ptrs)
        self.ndblk_addrs = 2 * (min_ptrs - 1)
        self.nsblk_addrs = nsblks - self.ib_nsblks

    def _dblock_size(self, nelmts: int) -> int:
        prefix = 6 + self.ctx.so + self.off_size
        if nelmts > self.page:
            return prefix + 4 + nelmts * self.esize + ceil(nelmts / self.page) * 4
        return prefix + nelmts * self.esize + 4

    def read(self, iblock: int, max_idx: int) -> Task:
        ctx, what = self.ctx, self.what
        size = 6 + ctx.so + self.idx_elmts * self.esize + (self.ndblk_addrs + self.nsblk_addrs) * ctx.so + 4
        iw = f"{what}: extensible array index block at 0x{iblock:x}"
        data = (yield from read_many([(ctx.addr(iblock, size, iw), size)]))[0]
        c = Cursor(data, ctx, iw)
        c.signature(b"EAIB")
        c.pos = 6 + ctx.so
        elems = list(enumerate(self._elem(c) for _ in range(self.idx_elmts)))
        dblks = [c.offset() for _ in range(self.ndblk_addrs)]
        sblks = [c.offset() for _ in range(self.nsblk_addrs)]
        check_sum(data, c.pos, iw)
        # (data block address, nelmts, initialized pages or None) in element order;
        # secondary blocks expand in a second level.
        plan: list[tuple[int, int, list[bool] | None]] = []
        k = 0
        for u in range(self.ib_nsblks):
            nd, ne = self.sblk[u]
            for _ in range(nd):
                if k < len(dblks):
                    plan.append((dblks[k], ne, None))
                k += 1
        need = max_idx - self.idx_elmts
        covered = sum(ne for _, ne, _ in plan)
        sb_plan = []
        for j, a in enumerate(sblks):
            if covered >= need:
                break
            nd, ne = self.sblk[self.ib_nsblks + j]
            sb_plan.append((a, nd, ne))
            covered += nd * ne
        if sb_plan:
            sdatas = yield from read_many([self._sblock_range(a, nd, ne) for a, nd, ne in sb_plan])
            for (a, nd, ne), sd in zip(sb_plan, sdatas, strict=False):
                plan.extend(self._sblock(a, nd, ne, sd))
        todo = [(a, ne) for a, ne, _ in plan if not ctx.is_undef(a)]
        ddatas = yield from read_many(
            [(ctx.addr(a, self._dblock_size(ne), f"{what}: EA data block"), self._dblock_size(ne)) for a, ne in todo]
        )
        got = dict(zip([a for a, _ in todo], ddatas, strict=False))
        start = self.idx_elmts
        for a, ne, init in plan:
            if start >= max_idx:
                break
            if a in got:
                elems.extend(enumerate(self._dblock(a, ne, got[a], init), start))
            start += ne
        return elems

    def _elem(self, c: Cursor) -> tuple[int, int, int]:
        addr = c.offset()
        if not self.filtered:
            return addr, self.nbytes, 0
        size = c.uint(self.esize - self.ctx.so - 4)
        return addr, size, c.u32()

    def _sblock_range(self, a: int, nd: int, ne: int) -> tuple[int, int]:
        ctx = self.ctx
        if ctx.is_undef(a):
            return (0, 0)
        bitmap = nd * ((ne // self.page + 7) // 8) if ne > self.page else 0
        size = 6 + ctx.so + self.off_size + bitmap + nd * ctx.so + 4
        return ctx.addr(a, size, f"{self.what}: EA secondary block at 0x{a:x}"), size

    def _sblock(self, a: int, nd: int, ne: int, data: bytes) -> list[tuple[int, int, list[bool] | None]]:
        if self.ctx.is_undef(a):
            return [(a, nd * ne, None)]  # one unallocated span; never expanded per data block
        c = Cursor(data, self.ctx, f"{self.what}: EA secondary block at 0x{a:x}")
        c.signature(b"EASB")
        c.pos = 6 + self.ctx.so + self.off_size
        if ne <= self.page:
            out = [(c.offset(), ne, None) for _ in range(nd)]
            check_sum(data, c.pos, f"{self.what}: EA secondary block at 0x{a:x}")
            return out
        npages = ne // self.page
        # Room for a byte-aligned bitmap per data block, indexed as one bit string.
        bits = _bits(c.bytes(nd * ((npages + 7) // 8)), nd * npages)
        out = [(c.offset(), ne, bits[i * npages : (i + 1) * npages]) for i in range(nd)]
        check_sum(data, c.pos, f"{self.what}: EA secondary block at 0x{a:x}")
        return out

    def _dblock(self, a: int, ne: int, data: bytes, init: list[bool] | None) -> list[tuple[int, int, int]]:
        c = Cursor(data, self.ctx, f"{self.what}: EA data block at 0x{a:x}")
        c.signature(b"EADB")
        c.pos = 6 + self.ctx.so + self.off_size
        dw = f"{self.what}: EA data block at 0x{a:x}"
        if ne <= self.page:
            elems = [self._elem(c) for _ in range(ne)]
            check_sum(data, c.pos, dw)
            return elems
        check_sum(data, c.pos, dw)  # the prefix's checksum; pages follow, each with its own
        c.skip(4)
        out = []
        undef = (self.ctx.undef, 0, 0)
        for p in range(ne // self.page):
            start = c.pos
            page = [self._elem(c) for _ in range(self.page)]
            if init is None or init[p]:
                check_sum(data[start : c.pos + 4], c.pos - start, f"{dw}: page {p}")
            c.skip(4)
            out.extend(page if init is None or init[p] else [undef] * self.page)
        return out


def _bits(buf: bytes, n: int) -> list[bool]:
    """The first ``n`` bits of ``buf``, most significant bit first (HDF5's page-init bitmaps)."""
    return [bool(buf[i // 8] & (0x80 >> (i % 8))) for i in range(n)]
