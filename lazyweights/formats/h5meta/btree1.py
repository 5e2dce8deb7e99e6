"""Version 1 B-trees: the index of symbol-table groups (type 0, leaves are
symbol table nodes) and of chunked datasets with layout v1-v3 (type 1).

Each level of the tree is fetched in one batch; node sizes are computed from
the K values (superblock) so a node arrives in one read.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import FormatError
from ._base import Ctx, Cursor, Task, read_many

__all__ = [
    "GROUP_NODE_SPECULATIVE",
    "group_node_size",
    "symbol_node_size",
    "SymbolEntry",
    "btree1_chunks",
    "children_of_held_nodes",
    "group_symbol_nodes",
    "symbol_entries",
]


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


def group_node_size(ctx: Ctx) -> int:
    """A whole node of a group's B-tree, as allocated (2K entries)."""
    return _node_size(ctx, ctx.group_internal_k, ctx.sl)


def symbol_node_size(ctx: Ctx) -> int:
    """A whole symbol table node, as allocated (2K entries)."""
    return 8 + 2 * ctx.group_leaf_k * _entry_size(ctx)


def _walk(ctx: Ctx, root: int, ntype: int, key_size: int, k: int, what: str, want: int = 0) -> Task:
    """Breadth-first over the tree; return [(key_bytes_left, child_address, key_bytes_right)] of leaves.

    The root is read with ``want`` bytes (0: a whole node); the nodes below it, which are at
    least half full, whole.  A level's nodes longer than their first read are completed
    together, in one more batch.
    """
    level_nodes = [root]
    seen: set[int] = set()
    leaves: list[tuple[bytes, int, bytes]] = []
    expected_level = None
    full = _node_size(ctx, k, key_size)
    header = 8 + 2 * ctx.so
    size = max(want, header + key_size) if want else full
    for _ in range(ctx.limits.max_btree_depth):
        if not level_nodes:
            return leaves
        ranges = []
        for a in level_nodes:
            if a in seen:
                raise FormatError(f"{what}: B-tree node at 0x{a:x} visited twice (cycle)")
            seen.add(a)
            start = ctx.addr(a, header, f"{what}: B-tree node at 0x{a:x}")
            ranges.append((start, min(size, ctx.size - start)))
        datas = yield from read_many(ranges)
        datas = yield from _complete(ctx, level_nodes, datas, ntype, key_size, what)
        nxt = []
        for a, data in zip(level_nodes, datas, strict=False):
            level, entries = _node(ctx, a, data, ntype, key_size, what)
            if expected_level is not None and level != expected_level:
                raise FormatError(f"{what}: B-tree node at 0x{a:x} has level {level}, expected {expected_level}")
            if level == 0:
                leaves.extend(entries)
            else:
                nxt.extend(child for _, child, _ in entries)
        expected_level = None if not nxt else level - 1
        level_nodes = nxt
        size = full
    raise FormatError(f"{what}: B-tree deeper than {ctx.limits.max_btree_depth} levels")


def _used_size(ctx: Ctx, rel: int, data: bytes, ntype: int, key_size: int, what: str) -> int:
    """The bytes a node's used entries take, from its header."""
    c = Cursor(data, ctx, f"{what}: B-tree node at 0x{rel:x}")
    c.signature(b"TREE")
    t, _level, used = c.u8(), c.u8(), c.u16()
    if t != ntype:
        raise FormatError(f"{what}: B-tree node at 0x{rel:x}: node type {t}, expected {ntype}")
    return 8 + 2 * ctx.so + (used + 1) * key_size + used * ctx.so


def _complete(ctx: Ctx, nodes: list[int], datas: list[bytes], ntype: int, key_size: int, what: str) -> Task:
    """``datas`` with every node that is longer than its first read read whole (one batch)."""
    short = []
    for i, (a, data) in enumerate(zip(nodes, datas, strict=False)):
        need = _used_size(ctx, a, data, ntype, key_size, what)
        if need > len(data):
            short.append((i, (ctx.addr(a, need, f"{what}: B-tree node at 0x{a:x}"), need)))
    if not short:
        return datas
    more = yield from read_many([r for _, r in short])
    datas = list(datas)
    for (i, _), data in zip(short, more, strict=False):
        datas[i] = data
    return datas


def _node(ctx: Ctx, rel: int, data: bytes, ntype: int, key_size: int, what: str) -> tuple[int, list]:
    """A node's level and its (left key, child, right key) entries."""
    c = Cursor(data, ctx, f"{what}: B-tree node at 0x{rel:x}", 5)
    level, used = c.u8(), c.u16()
    c.skip(2 * ctx.so)
    entries = []
    left = c.bytes(key_size)
    for _ in range(used):
        child = c.offset()
        right = c.bytes(key_size)
        entries.append((left, child, right))
        left = right
    return level, entries


def children_of_held_nodes(ctx: Ctx, block: bytes, at: int) -> list[tuple[int, int]]:
    """Whole-node ranges of the children of every internal group B-tree node lying whole in ``block``.

    ``block`` holds the file's bytes from absolute offset ``at`` (the head).  A guess for
    :class:`~._base.Ahead`: the nodes are found by their signature, not reached through the
    tree, so a group's B-tree root held in the head (a Keras ``.h5``'s ``model_weights``,
    which lies before its megabytes of model config) has its leaves fetched with the walk's
    first level instead of a level after the group is reached.  Children of internal nodes
    are B-tree nodes, which the walk reads whole: a right guess costs no extra byte.
    """
    full = group_node_size(ctx)
    out: list[tuple[int, int]] = []
    pos = block.find(b"TREE")
    while 0 <= pos <= len(block) - full:
        if block[pos + 4] == 0 and block[pos + 5] > 0:  # a group node above the leaves
            try:
                _, entries = _node(ctx, at - ctx.base + pos, block[pos : pos + full], 0, ctx.sl, "held B-tree node")
            except FormatError:
                entries = []
            out.extend((ctx.base + child, full) for _, child, _ in entries if not ctx.is_undef(child))
        pos = block.find(b"TREE", pos + 4)
    return out


def group_symbol_nodes(ctx: Ctx, root: int, want: int = GROUP_NODE_SPECULATIVE) -> Task:
    """The addresses of the symbol table nodes of an old-style group whose B-tree is at ``root``.

    ``want`` bytes are read at the root node before its entry count is known.
    """
    what = f"group B-tree at 0x{root:x}"
    leaves = yield from _walk(ctx, root, 0, ctx.sl, ctx.group_internal_k, what, want)
    return [child for _, child, _ in leaves]


def symbol_entries(ctx: Ctx, snods: list[int], expect: int | None = None) -> Task:
    """The entries of the symbol table nodes at ``snods``, in order.

    ``expect`` (an estimate of a node's entry count) sizes the first read; nodes holding
    more are completed together in one more batch.  ``None`` reads whole nodes.
    """
    esize = _entry_size(ctx)
    full = symbol_node_size(ctx)
    size = full if expect is None else min(full, 8 + max(expect, 1) * esize)
    starts = [ctx.addr(a, 8, f"symbol table node at 0x{a:x}") for a in snods]
    datas = yield from read_many([(start, min(size, ctx.size - start)) for start in starts])
    counts = [_symbol_count(ctx, a, d) for a, d in zip(snods, datas, strict=False)]
    short = [i for i, (d, n) in enumerate(zip(datas, counts, strict=False)) if 8 + n * esize > len(d)]
    if short:
        more = yield from read_many([_snod_range(ctx, snods[i], counts[i]) for i in short])
        datas = list(datas)
        for i, d in zip(short, more, strict=False):
            datas[i] = d
    out: list[SymbolEntry] = []
    for a, data, n in zip(snods, datas, counts, strict=False):
        c = Cursor(data, ctx, f"symbol table node at 0x{a:x}", 8)
        for _ in range(n):
            name_off, addr, ctype = c.length(), c.offset(), c.u32()
            c.skip(4)
            out.append(SymbolEntry(name_off, addr, ctype, c.bytes(16)))
        if len(out) > ctx.limits.max_links:
            raise FormatError(f"symbol table nodes at 0x{snods[0]:x}...: more than {ctx.limits.max_links} links")
    return out


def _entry_size(ctx: Ctx) -> int:
    return ctx.sl + ctx.so + 24  # name offset (a length), header address, cache type, reserved, scratch


def _symbol_count(ctx: Ctx, rel: int, data: bytes) -> int:
    c = Cursor(data, ctx, f"symbol table node at 0x{rel:x}")
    c.signature(b"SNOD")
    c.skip(2)
    return c.u16()


def _snod_range(ctx: Ctx, rel: int, n: int) -> tuple[int, int]:
    need = 8 + n * _entry_size(ctx)
    return ctx.addr(rel, need, f"symbol table node at 0x{rel:x}"), need


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
