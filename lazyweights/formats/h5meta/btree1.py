"""Version 1 B-trees: the index of symbol-table groups (type 0, leaves are
symbol table nodes) and of chunked datasets with layout v1-v3 (type 1).

Each level of the tree is fetched in one batch; node sizes are computed from
the K values (superblock) so a node arrives in one read.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import FormatError
from ._base import Ctx, Cursor, Task, read_many

__all__ = ["SymbolEntry", "btree1_chunks", "btree1_group_entries"]


@dataclass
class SymbolEntry:
    """One entry of a symbol table node."""

    name_offset: int
    address: int
    cache_type: int
    scratch: bytes


GROUP_NODE_SPECULATIVE = 2048  # bytes read at a group B-tree node (544 with K=16): the symbol node (1288) often follows


def _node_size(ctx: Ctx, k: int, key_size: int) -> int:
    return 8 + 2 * ctx.so + (2 * k + 1) * key_size + 2 * k * ctx.so


def _walk(ctx: Ctx, root: int, ntype: int, key_size: int, k: int, what: str, want: int = 0) -> Task:
    """Breadth-first over the tree; return [(key_bytes_left, child_address, key_bytes_right)] of leaves."""
    level_nodes = [root]
    seen: set[int] = set()
    leaves: list[tuple[bytes, int, bytes]] = []
    expected_level = None
    for _ in range(ctx.limits.max_btree_depth):
        if not level_nodes:
            return leaves
        size = max(_node_size(ctx, k, key_size), want)
        ranges = []
        for a in level_nodes:
            if a in seen:
                raise FormatError(f"{what}: B-tree node at 0x{a:x} visited twice (cycle)")
            seen.add(a)
            start = ctx.addr(a, 8 + 2 * ctx.so, f"{what}: B-tree node at 0x{a:x}")
            ranges.append((start, min(size, ctx.size - start)))
        datas = yield from read_many(ranges)
        nxt = []
        for a, data in zip(level_nodes, datas, strict=False):
            level, entries = yield from _node(ctx, a, data, ntype, key_size, what)
            if expected_level is not None and level != expected_level:
                raise FormatError(f"{what}: B-tree node at 0x{a:x} has level {level}, expected {expected_level}")
            if level == 0:
                leaves.extend(entries)
            else:
                nxt.extend(child for _, child, _ in entries)
        expected_level = None if not nxt else level - 1
        level_nodes = nxt
    raise FormatError(f"{what}: B-tree deeper than {ctx.limits.max_btree_depth} levels")


def _node(ctx: Ctx, rel: int, data: bytes, ntype: int, key_size: int, what: str) -> Task:
    nw = f"{what}: B-tree node at 0x{rel:x}"
    c = Cursor(data, ctx, nw)
    c.signature(b"TREE")
    t, level, used = c.u8(), c.u8(), c.u16()
    if t != ntype:
        raise FormatError(f"{nw}: node type {t}, expected {ntype}")
    c.skip(2 * ctx.so)
    need = 8 + 2 * ctx.so + (used + 1) * key_size + used * ctx.so
    if need > len(data):
        data = (yield from read_many([(ctx.addr(rel, need, nw), need)]))[0]
        c = Cursor(data, ctx, nw, c.pos)
    entries = []
    left = c.bytes(key_size)
    for _ in range(used):
        child = c.offset()
        right = c.bytes(key_size)
        entries.append((left, child, right))
        left = right
    return level, entries


def btree1_group_entries(ctx: Ctx, root: int) -> Task:
    """All symbol table entries of an old-style group whose B-tree is at ``root``."""
    what = f"group B-tree at 0x{root:x}"
    leaves = yield from _walk(ctx, root, 0, ctx.sl, ctx.group_internal_k, what, GROUP_NODE_SPECULATIVE)
    snods = [child for _, child, _ in leaves]
    esize = ctx.sl + ctx.so + 24  # name offset (a length), header address, cache type, reserved, scratch
    size = 8 + 2 * ctx.group_leaf_k * esize
    ranges = []
    for a in snods:
        start = ctx.addr(a, 8, f"symbol table node at 0x{a:x}")
        ranges.append((start, min(size, ctx.size - start)))
    datas = yield from read_many(ranges)
    out: list[SymbolEntry] = []
    for a, data in zip(snods, datas, strict=False):
        nw = f"symbol table node at 0x{a:x}"
        c = Cursor(data, ctx, nw)
        c.signature(b"SNOD")
        c.skip(2)
        n = c.u16()
        if 8 + n * esize > len(data):
            data = (yield from read_many([(ctx.addr(a, 8 + n * esize, nw), 8 + n * esize)]))[0]
            c = Cursor(data, ctx, nw, 8)
        for _ in range(n):
            name_off, addr, ctype = c.length(), c.offset(), c.u32()
            c.skip(4)
            out.append(SymbolEntry(name_off, addr, ctype, c.bytes(16)))
        if len(out) > ctx.limits.max_links:
            raise FormatError(f"{what}: more than {ctx.limits.max_links} links")
    return out


def btree1_chunks(ctx: Ctx, root: int, rank: int) -> Task:
    """All chunks of a layout-v1..v3 chunked dataset: [(offset tuple, rel address, size, filter mask)]."""
    what = f"chunk B-tree at 0x{root:x}"
    key_size = 8 + 8 * (rank + 1)
    leaves = yield from _walk(ctx, root, 1, key_size, ctx.chunk_k, what)
    out = []
    for key, child, _ in leaves:
        c = Cursor(key, ctx, what)
        size, mask = c.u32(), c.u32()
        offs = tuple(c.u64() for _ in range(rank))
        out.append((offs, child, size, mask))
        if len(out) > ctx.limits.max_chunks:
            raise FormatError(f"{what}: more than {ctx.limits.max_chunks} chunks")
    return out
