"""Guesses at where libhdf5 put the structures the walk will need next, from where it put
those already read (fetched with the next level as :class:`~._base.Ahead`, never parsed).

libhdf5 gives out file space in the order objects are made, from the end of the file, when
the writer does not aggregate small metadata into blocks (h5py's file-object driver does not:
Keras 3 writes a ``.keras`` archive's weights member through it when they fit in memory, else
through a temporary file, laid out like a ``.weights.h5``).  There:

- a group's first symbol node is allocated when its first link goes in, so when that link's
  target was made just before it (Keras makes ``layers/<name>``, then its ``vars``), the
  target's header, B-tree root and local heap end where the node starts;
- the object made next after a symbol node or a header's continuation block (a dataset's
  header, typically: a layer's first weight) starts where they end.

Each right guess takes one level off the chain below the group: the 2,000-layer ``.keras``
of ``benchmarks/bench_open.py`` opens in 8 rounds, not 9, and fetches 1 KiB more for it
(0.05%).  A wrong guess costs only its bytes, so the walk guesses only in a file whose groups
so far each lie in one block, header then B-tree root then heap (the mark of such a writer):
a file written through libhdf5's own drivers (h5py to a path) scatters them as it grows, and
there most guesses would miss (measured without that check: 6-19% more bytes on the bench's
2,000-layer ``.h5`` and ``.weights.h5``, no level fewer).
"""

from __future__ import annotations

from typing import NamedTuple

from ._base import Ctx
from .btree1 import group_node_size, symbol_node_size
from .local_heap import HeapHead, heap_header_size

__all__ = ["Reads", "after_blocks", "around_symbol_node", "note_group", "sequential"]

EVIDENCE = 8  # groups seen before guessing
IN_ONE_BLOCK = 0.9  # the share of them that must lie in one block
NEAR = 4096  # a group's first symbol node this close past its own heap: a child made right after it


class Reads(NamedTuple):
    """The sizes the walk first reads at each structure (a guess must ask for the same bytes)."""

    header: int  # a group's header, when its parent's entry names its B-tree and heap
    node: int  # that group's B-tree root
    heap: int  # its local heap
    dataset: int  # a likely dataset's header


def fresh_header_size(ctx: Ctx) -> int:
    """A new group's version-1 header: its 16-byte prefix and one symbol-table message."""
    return 16 + 8 + 2 * ctx.so


def note_group(ctx: Ctx, rel: int, btree: int, heap: int) -> None:
    """Count a group whose parent named its B-tree and heap: is it one block (header, root, heap)?"""
    ctx.groups_seen += 1
    ctx.groups_in_one_block += btree == rel + fresh_header_size(ctx) and heap == btree + group_node_size(ctx)


def sequential(ctx: Ctx) -> bool:
    """Whether the groups seen so far show a writer that lays objects out in the order it makes them."""
    return ctx.groups_seen >= EVIDENCE and ctx.groups_in_one_block >= IN_ONE_BLOCK * ctx.groups_seen


def around_symbol_node(
    ctx: Ctx, btree: int, heap: int, hh: HeapHead, snod: int, links: int | None, reads: Reads
) -> list[tuple[int, int]]:
    """Absolute ranges around a group's only symbol node (relative ``snod``): its first child before
    it (when the group, itself in one block, has one link) and the next object after it.  Notes
    where the node ends, for :func:`after_blocks`."""
    start = ctx.base + snod
    node, hsize = group_node_size(ctx), heap_header_size(ctx)
    end = start + symbol_node_size(ctx)
    ctx.node_ends.add(end)
    out = [(end, reads.dataset)]
    own_end = hh.data_at + hh.size
    if links == 1 and heap == btree + node and hh.data_at == ctx.base + heap + hsize:
        hdr = fresh_header_size(ctx)
        child = start - (hdr + node + hsize + hh.size)  # its heap is new, so the size this one had
        apart = own_end <= child or start <= ctx.base + btree  # past this group's own block, or in a hole before it
        if apart and child >= ctx.base and start - own_end <= NEAR:
            out += [(child, reads.header), (child + hdr, reads.node), (child + hdr + node, reads.heap)]
    return out


def after_blocks(ctx: Ctx, blocks: list[tuple[int, int]], want: int) -> list[tuple[int, int]]:
    """Absolute ranges just past those of a header's continuation blocks (relative offset, length)
    that start where a symbol node guessed around ends: attributes given to a group just after it
    was linked (Keras names each ``vars``), before the next object was made."""
    return [(ctx.base + off + n, want) for off, n in blocks if ctx.base + off in ctx.node_ends]
