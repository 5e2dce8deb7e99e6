"""The walk of an HDF5 file's metadata: the per-object logic (a group and its
links, a dataset, a committed datatype) that builds the result tree, driven
level by level by :mod:`.scheduler`.

An object is read by what its parent's link says of it: a group named with a
cached B-tree and heap has the three read together, a likely dataset's header
at the size the file's earlier ones used.  Datasets are made in :mod:`.dataset`,
attributes in :mod:`.attributes`.
"""

from __future__ import annotations

import contextlib
import functools
import gc
from collections.abc import Iterator

from ...errors import FormatError, StorageError
from . import messages as M
from . import neighbours
from ._base import AHEAD_BYTES, AHEAD_SHARE, Ctx, Cursor, Limits, Task, ahead, gather
from .attributes import attributes, ordered
from .btree1 import GROUP_NODE_SPECULATIVE, children_of_held_nodes, group_symbol_nodes, symbol_entries
from .btree2 import btree2_records
from .dataset import dataset
from .fractal_heap import heap_objects, read_fractal_heap
from .local_heap import HEAP_SPECULATIVE, finish_local_heap, read_local_heap_head
from .objheader import HEADER_SPECULATIVE, Message, read_object_header
from .scheduler import FetchMany, run
from .superblock import read_superblock
from .tree import ExternalLink, FetchStats, Group, H5File, HardLink, Node, SoftLink

__all__ = ["FetchMany", "walk"]

# A group named by its parent's symbol table entry (cache type 1) has its B-tree and local heap
# addresses there, so its header, B-tree root and heap are read in one level.  Its symbol nodes
# come in the next level in any case, so whatever of the three lies past these first reads (a long
# header, a B-tree node with many entries, the heap's data segment) is read beside them at no
# extra level: the first reads are small.
HINTED_HEADER = 40  # a v1 group header: its 16-byte prefix and one message (a symbol table or a continuation)
LEAF = "unknown"  # a link that says nothing of its target (see _object)
HINTED_NODE = 64


# -- entry point -------------------------------------------------------------------


def walk(
    fetch_many: FetchMany,
    size: int,
    head: bytes = b"",
    base: int = 0,
    limits: Limits | None = None,
    head_at: int = 0,
) -> H5File:
    """Walk the HDF5 metadata of a file of ``size`` bytes; return its tree.

    ``fetch_many(ranges)`` returns the bytes of each ``(offset, length)``;
    ``head`` is an optional block already fetched, at offset ``head_at`` (the file's prefix, or an
    embedded HDF5 file's own first bytes);
    ``base`` is the offset of the HDF5 file inside the fetched object.
    """
    stats = FetchStats()
    ctx = Ctx(size=size, limits=limits or Limits(), reader=functools.partial(_read_one, fetch_many))
    ctx.ahead_left = max(AHEAD_BYTES, size // AHEAD_SHARE)
    try:
        with _gc_paused():
            held = head[: max(0, size - head_at)]
            f = run(_walk_file(ctx, base, held, head_at), fetch_many, held, stats, head_at)
    except RecursionError as e:
        raise FormatError("HDF5 metadata nested too deeply") from e
    f.stats = stats
    return f


def _read_one(fetch_many: FetchMany, offset: int, length: int) -> bytes:
    """One range through ``fetch_many``, length-checked (a large attribute read after the walk)."""
    data = bytes(fetch_many([(offset, length)])[0])
    if len(data) != length:
        raise StorageError(f"fetch_many returned {len(data)} bytes for range 0x{offset:x}+{length}")
    return data


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Hold the cyclic garbage collector off for the walk (restored after, whatever it was).

    The walk allocates a few objects per byte of metadata (parsers are generators, results small
    objects) and keeps nearly all of them, so the collector's generation-2 passes re-scan a growing
    heap for nothing: measured on a 2,000-layer ``.weights.h5``, 1.6 s of CPU with it, 1.0 s without.
    Nothing the walk builds depends on cycle collection; a pending collection simply runs after.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _walk_file(ctx: Ctx, base: int, head: bytes, head_at: int) -> Task:
    sb = yield from read_superblock(ctx, base)
    yield from ahead(ctx, children_of_held_nodes(ctx, head, head_at))
    f = H5File(name="/", address=ctx.base + sb.root_address, superblock_version=sb.version, base_address=ctx.base)
    hint = LEAF if sb.root_btree is None else (sb.root_btree, sb.root_heap)
    yield from _object(ctx, sb.root_address, "/", (), f, f, hint)
    return f


# -- objects -------------------------------------------------------------------------


def _join(path: str, name: str) -> str:
    return f"/{name}" if path == "/" else f"{path}/{name}"


def _object(
    ctx: Ctx, rel: int, path: str, ancestors: tuple[int, ...], f: H5File, node: H5File | None = None, hint=LEAF
) -> Task:
    """Parse the object at ``rel``; return a Group, Dataset or plain Node (committed datatype).

    ``hint`` is the (B-tree, local heap) pair cached in the parent's symbol table entry: the
    group's links are then read in the same level as its header, and used if the header agrees.
    None: the entry has no cache, so the object is likely a dataset (its header is read at the
    size the file's datasets so far needed); :data:`LEAF`: nothing is known.
    """
    ctx.count_object(rel, path)
    if len(ancestors) > ctx.limits.max_depth:
        raise FormatError(f"group {path}: nested deeper than {ctx.limits.max_depth} levels")
    pre = None
    if isinstance(hint, tuple) and _hint_ok(ctx, hint):
        neighbours.note_group(ctx, rel, *hint)
        links = _speculative(_symtab_links(ctx, *hint, path, HINTED_NODE))
        msgs, pre = yield from gather([read_object_header(ctx, rel, HINTED_HEADER), links])
    else:
        want = ctx.dataset_header_read(HEADER_SPECULATIVE) if hint is None else HEADER_SPECULATIVE
        msgs = yield from read_object_header(ctx, rel, want)
    types = {m.type for m in msgs}
    addr = ctx.base + rel
    if M.LAYOUT in types or (M.DATASPACE in types and M.DATATYPE in types):
        return (yield from dataset(ctx, rel, msgs, path, f))
    if M.DATATYPE in types and not types & {M.SYMBOL_TABLE, M.LINK, M.LINK_INFO}:
        return Node(name=path, address=addr, attrs=(yield from attributes(ctx, msgs, path)), file=f)
    return (yield from _group(ctx, rel, msgs, path, ancestors, f, node, (hint, pre)))


def _group(ctx: Ctx, rel: int, msgs: list[Message], path: str, ancestors, f: H5File, node, pre) -> Task:
    """A group: its links and children, and (beside them, not before them) its attributes.

    Attributes may need levels of their own (vlen strings in global heap collections, dense
    storage); the children's walk does not wait for them, so they stay off the critical path.
    """
    what = f"group {path} (object header at 0x{rel:x})"
    g = node if node is not None else Group(name=path, address=ctx.base + rel, file=f)
    members = _members(ctx, msgs, path, (*ancestors, rel), f, g, pre)
    _, g.attrs = yield from gather([members, attributes(ctx, msgs, what)])
    return g


def _members(ctx: Ctx, msgs: list[Message], path: str, chain: tuple[int, ...], f: H5File, g: Group, pre) -> Task:
    """Read the group's links into ``g.links``, then walk its hard-linked children into ``g.children``."""
    what = f"group {path} (object header at 0x{chain[-1]:x})"
    links = yield from _links(ctx, msgs, what, pre)
    hard = []
    for link in links:
        if link.kind == "hard":
            if link.address in chain:
                raise FormatError(f"{what}: link {link.name!r} points back to an ancestor group (cycle)")
            ctx.addr(link.address, 1, f"{what}: link {link.name!r}")
            hard.append(link)
            g.links[link.name] = HardLink()
        elif link.kind == "soft":
            g.links[link.name] = SoftLink(link.target or "")
        else:
            g.links[link.name] = ExternalLink(link.filename or "", link.target or "")
    kids = yield from gather(
        _object(ctx, link.address, _join(path, link.name), chain, f, hint=getattr(link, "cache", LEAF)) for link in hard
    )
    for link, kid in zip(hard, kids, strict=False):
        g.children[link.name] = kid


def _hint_ok(ctx: Ctx, hint: tuple[int, int]) -> bool:
    return all(not ctx.is_undef(a) and a > 0 and ctx.base + a < ctx.size for a in hint)


def _speculative(gen: Task) -> Task:
    """Run a parser on hinted addresses; a failure only means the hint is not used."""
    try:
        return (yield from gen)
    except Exception:
        return None


def _links(ctx: Ctx, msgs: list[Message], what: str, pre=(None, None)) -> Task:
    """All links of a group, in h5py's iteration order (``pre``: links read from a cached hint)."""
    links: list[M.Link] = [M.parse_link(m.data, ctx, what) for m in msgs if m.type == M.LINK]
    info = next((M.parse_link_info(m.data, ctx, what) for m in msgs if m.type == M.LINK_INFO), None)
    stab = next((M.parse_symbol_table(m.data, ctx, what) for m in msgs if m.type == M.SYMBOL_TABLE), None)
    if stab is not None:
        hinted = pre[1] if pre[0] == stab else None
        links.extend(hinted if hinted is not None else (yield from _symtab_links(ctx, *stab, what)))
    if info is not None and not ctx.is_undef(info.heap):
        links.extend((yield from _dense_links(ctx, info, what)))
    if len(links) > ctx.limits.max_links:
        raise FormatError(f"{what}: more than {ctx.limits.max_links} links")
    names = [lk.name for lk in links]
    if len(set(names)) != len(names):
        raise FormatError(f"{what}: duplicate link names")
    return ordered(links, bool(info and info.tracked))


def _symtab_links(ctx: Ctx, btree: int, heap_rel: int, what: str, node: int = GROUP_NODE_SPECULATIVE) -> Task:
    """The links of a symbol-table group (``node``: the first-read size of its B-tree root)."""
    first = [read_local_heap_head(ctx, heap_rel, ctx.heap_read(HEAP_SPECULATIVE)), group_symbol_nodes(ctx, btree, node)]
    hh, snods = yield from gather(first)
    expect = hh.name_count() if len(snods) == 1 else None  # sizes the node's read
    if len(snods) == 1 and neighbours.sequential(ctx):
        reads = neighbours.Reads(
            HINTED_HEADER, HINTED_NODE, ctx.heap_read(HEAP_SPECULATIVE), ctx.dataset_header_read(HEADER_SPECULATIVE)
        )
        yield from ahead(ctx, neighbours.around_symbol_node(ctx, btree, heap_rel, hh, snods[0], expect, reads))
    heap, entries = yield from gather([finish_local_heap(ctx, hh), symbol_entries(ctx, snods, expect)])
    out = []
    for e in entries:
        name = heap.string(e.name_offset)
        if e.cache_type == 2:
            target = heap.string(Cursor(e.scratch, ctx, what).u32())
            out.append(M.Link(name, "soft", target=target))
        else:
            link = M.Link(name, "hard", address=e.address)
            link.cache = None  # type: ignore[attr-defined]  # no cache: not a symbol-table group, likely a dataset
            if e.cache_type == 1:
                sc = Cursor(e.scratch, ctx, what)
                link.cache = (sc.offset(), sc.offset())  # type: ignore[attr-defined]
            out.append(link)
    return out


def _dense_links(ctx: Ctx, info: M.LinkInfo, what: str) -> Task:
    heap, (_, recs) = yield from gather([read_fractal_heap(ctx, info.heap), btree2_records(ctx, info.name_index, 5)])
    ids = [r[4:] for r in recs]
    objs = yield from heap_objects(ctx, heap, ids)
    return [M.parse_link(o, ctx, f"{what}: dense link") for o in objs]
