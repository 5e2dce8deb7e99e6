"""Version 2 B-trees: the name / creation-order indexes of dense links and
attributes, huge fractal-heap objects, and chunk indexes (layout v4).

The walk returns the raw records of every node, level by level (one fetch per
tree level); record decoding is left to the owner of the tree.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import FormatError
from ._base import Ctx, Cursor, Task, check_sum, limit_enc_size, read_many, spec_read

__all__ = ["btree2_records"]

_PREFIX = 10  # signature, version, type, checksum
HEADER_SPECULATIVE = 64  # bytes read at a header (a root node allocated next to it then comes along)


@dataclass
class _Header:
    type: int
    node_size: int
    rec_size: int
    depth: int
    root: int
    root_nrec: int
    total: int


def _header(ctx: Ctx, rel: int, data: bytes, what: str) -> _Header:
    c = Cursor(data, ctx, what)
    c.signature(b"BTHD")
    if c.u8() != 0:
        raise FormatError(f"{what}: unknown version")
    t, node_size, rec_size, depth = c.u8(), c.u32(), c.u16(), c.u16()
    c.skip(2)
    root, root_nrec, total = c.offset(), c.u16(), c.length()
    check_sum(data, c.pos, what)
    if not 64 <= node_size <= 1 << 20 or rec_size == 0 or rec_size > node_size:
        raise FormatError(f"{what}: node size {node_size} / record size {rec_size} implausible")
    if depth > ctx.limits.max_btree_depth:
        raise FormatError(f"{what}: depth {depth}")
    return _Header(t, node_size, rec_size, depth, root, root_nrec, total)


def _pointer_sizes(ctx: Ctx, h: _Header) -> tuple[int, list[int]]:
    """(bytes of a child's record count, bytes of a child's total count per depth) as HDF5 computes them."""
    leaf_max = (h.node_size - _PREFIX) // h.rec_size
    nrec_size = limit_enc_size(leaf_max)
    cum = [leaf_max]
    cum_size = [0]
    for d in range(1, h.depth + 1):
        ptr = ctx.so + nrec_size + (cum_size[d - 1] if d > 1 else 0)
        max_nrec = (h.node_size - _PREFIX - ptr) // (h.rec_size + ptr)
        if max_nrec <= 0:
            raise FormatError("v2 B-tree: node too small for its records")
        cum.append((max_nrec + 1) * cum[d - 1] + max_nrec)
        cum_size.append(limit_enc_size(cum[d]))
    return nrec_size, cum_size


def btree2_records(ctx: Ctx, rel: int, want_type: int | tuple[int, ...] | None = None) -> Task:
    """All records of the v2 B-tree whose header is at ``rel``: (tree type, [record bytes])."""
    what = f"v2 B-tree at 0x{rel:x}"
    hsize = 16 + ctx.so + 2 + ctx.sl + 4
    data = yield from spec_read(ctx, ctx.addr(rel, hsize, what), hsize, HEADER_SPECULATIVE, what)
    h = _header(ctx, rel, data, what)
    if want_type is not None and h.type not in (want_type if isinstance(want_type, tuple) else (want_type,)):
        raise FormatError(f"{what}: type {h.type}, expected {want_type}")
    if ctx.is_undef(h.root) or h.total == 0:
        return h.type, []
    if h.total * h.rec_size > ctx.size:
        raise FormatError(f"{what}: {h.total} records cannot fit in the file")
    nrec_size, cum_size = _pointer_sizes(ctx, h)
    level = [(h.root, h.root_nrec, h.depth)]
    seen: set[int] = set()
    records: list[bytes] = []
    while level:
        ranges = []
        for a, _, _ in level:
            if a in seen:
                raise FormatError(f"{what}: node at 0x{a:x} visited twice (cycle)")
            seen.add(a)
            ranges.append((ctx.addr(a, h.node_size, f"{what}: node at 0x{a:x}"), h.node_size))
        datas = yield from read_many(ranges)
        nxt = []
        for (a, nrec, depth), node in zip(level, datas, strict=False):
            recs, kids = _node(ctx, h, node, a, nrec, depth, nrec_size, cum_size, what)
            records.extend(recs)
            nxt.extend(kids)
        if len(records) > h.total:
            raise FormatError(f"{what}: more records than the header's {h.total}")
        level = nxt
    return h.type, records


def _node(ctx, h: _Header, data: bytes, rel: int, nrec: int, depth: int, nrec_size: int, cum_size, what: str):
    nw = f"{what}: node at 0x{rel:x}"
    c = Cursor(data, ctx, nw)
    c.signature(b"BTIN" if depth else b"BTLF")
    pointer = ctx.so + nrec_size + (cum_size[depth - 1] if depth > 1 else 0)
    check_sum(data, 6 + nrec * h.rec_size + ((nrec + 1) * pointer if depth else 0), nw)  # before trusting a field
    c.skip(1)
    if c.u8() != h.type:
        raise FormatError(f"{nw}: record type differs from the header")
    if nrec * h.rec_size > h.node_size:
        raise FormatError(f"{nw}: {nrec} records overflow the node")
    recs = [c.bytes(h.rec_size) for _ in range(nrec)]
    kids = []
    if depth:
        for _ in range(nrec + 1):
            child, cn = c.offset(), c.uint(nrec_size)
            if depth > 1:
                c.skip(cum_size[depth - 1])
            kids.append((child, cn, depth - 1))
    return recs, kids
