"""Pure index and box maths: which elements a read covers, and how they map onto chunks and rows.

No I/O and no format knowledge: every stage above reads these rules from here,
so a box, a chunk intersection or a row block means the same thing
everywhere.  A **box** is a tuple of unit-step slices with explicit bounds,
one per axis; it is what a read fetches (steps, integers and fancy indices
are applied afterwards, in memory).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import fsspec.utils
import numpy as np

from .manifest import Extent, WeightSpec

__all__ = [
    "MAX_MERGED_BYTES",
    "MERGE_GAP_BYTES",
    "MERGE_OVERHEAD",
    "ROW_BLOCK_BYTES",
    "Box",
    "box_runs",
    "box_shape",
    "byte_view",
    "coalesce_runs",
    "contiguous_parts",
    "element_extent",
    "flat_boxes",
    "full_box",
    "grid_pieces",
    "intersect",
    "merge_ranges",
    "normalize_index",
    "row_blocks",
    "rows_per_block",
]

Box = tuple[slice, ...]

# The one range-merging policy: byte ranges (batched remote reads, runs of a region) closer than
# MERGE_GAP_BYTES are read as one, gap included, while the merged range stays within MAX_MERGED_BYTES.
# 64 KiB costs ~3 ms at 25 MB/s, well under one round trip, and keeps fetched bytes near what is needed.
MERGE_GAP_BYTES = 64 << 10
MAX_MERGED_BYTES = 16 << 20
# Reads of regions (a rank's part of each weight) bridge gaps, smallest first, only while the gaps add at most
# MERGE_OVERHEAD of the bytes asked for: the gaps there are other ranks' parts (measured: each of 2 ranks read
# 1.07x a 2,000-layer file with the plain policy).  Every gap counts, however small: with gaps under 4 KiB
# bridged free, each of 4 ranks' flat shards of DenseNet121 read 1.035x its share (the gaps are the other
# ranks' quarters of small vectors), 1.003x when counted (requests per rank 208 -> 388 at 2%).
# Whole weights keep the plain policy: their gaps are object headers.
MERGE_OVERHEAD = 0.01

# The one row-block size: dask blocks of contiguous weights, streamed blocks of export/mirror/verify,
# staged parts of torch tensors numpy cannot share.  Large enough that a block's parts keep a load's
# connections busy, small enough that a few blocks in flight fit any sensible budget.
ROW_BLOCK_BYTES = 64 << 20


def normalize_index(index: Any, shape: tuple[int, ...]) -> tuple[Box, tuple[Any, ...]]:
    """Split a numpy index into a covering box of unit-step slices and the rest.

    Returns ``(box, rest)``: reading the box and then indexing it with ``rest``
    equals indexing the whole array with ``index``.  Integers, steps and
    arrays are applied to the box in memory; the box bounds what is read.
    """
    if not isinstance(index, tuple):
        index = (index,)
    if any(i is Ellipsis for i in index):
        at = next(n for n, i in enumerate(index) if i is Ellipsis)
        fill = (slice(None),) * (len(shape) - (len(index) - 1))
        index = index[:at] + fill + index[at + 1 :]
    index = index + (slice(None),) * (len(shape) - len(index))
    box: list[slice] = []
    rest: list[Any] = []
    for idx, n in zip(index, shape, strict=True):
        if isinstance(idx, slice):
            start, stop, step = idx.indices(n)
            if step == 1:
                box.append(slice(start, max(start, stop)))
                rest.append(slice(None))
            else:
                box.append(slice(0, n))
                rest.append(idx)
        elif isinstance(idx, (int, np.integer)):
            i = int(idx) + (n if idx < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"index {idx} is out of bounds for axis of size {n}")
            box.append(slice(i, i + 1))
            rest.append(0)
        else:
            box.append(slice(0, n))
            rest.append(idx)
    return tuple(box), tuple(rest)


def full_box(shape: tuple[int, ...]) -> Box:
    """The box covering a whole array of ``shape``."""
    return tuple(slice(0, n) for n in shape)


def box_shape(box: Box) -> tuple[int, ...]:
    """The shape of the block a box of unit-step slices selects."""
    return tuple(max(0, s.stop - s.start) for s in box)


def flat_boxes(shape: tuple[int, ...], start: int, stop: int) -> list[Box]:
    """Boxes covering elements ``[start, stop)`` of a C-order array of ``shape``, in order.

    Each box is contiguous in C order and follows the previous one, so box
    ``i`` fills the next ``prod(box_shape(box))`` elements of a 1-D
    destination: a flat element range (a ZeRO/FSDP-style partition) becomes at
    most ``2 * ndim - 1`` boxes, each read like any other region.
    """
    if start >= stop:
        return []
    if not shape:
        return [()]
    inner = math.prod(shape[1:])
    (i0, r0), (i1, r1) = divmod(start, inner), divmod(stop, inner)
    if i0 == i1:
        return [(slice(i0, i0 + 1), *sub) for sub in flat_boxes(shape[1:], r0, r1)]
    out: list[Box] = []
    if r0:
        out += [(slice(i0, i0 + 1), *sub) for sub in flat_boxes(shape[1:], r0, inner)]
        i0 += 1
    if i1 > i0:
        out.append((slice(i0, i1), *full_box(shape[1:])))
    if r1:
        out += [(slice(i1, i1 + 1), *sub) for sub in flat_boxes(shape[1:], 0, r1)]
    return out


def box_runs(shape: tuple[int, ...], box: Box) -> tuple[np.ndarray, int]:
    """The C-order runs a box covers: element offsets of each run (ascending) and the run length.

    Trailing axes the box spans fully merge into its runs, so a leading-axis
    slice (a row shard) is one run, i.e. one byte range of a contiguous
    weight; a slice along axis ``k`` is one run per index of the axes before it.
    """
    if not shape:
        return np.zeros(1, dtype=np.int64), 1
    lens = box_shape(box)
    if 0 in lens:
        return np.zeros(0, dtype=np.int64), 0
    partial = [i for i, (s, n) in enumerate(zip(box, shape, strict=True)) if (s.start, s.stop) != (0, n)]
    d = partial[-1] if partial else 0
    strides = [math.prod(shape[i + 1 :]) for i in range(len(shape))]
    starts = np.array([box[d].start * strides[d]], dtype=np.int64)
    for i in range(d - 1, -1, -1):  # outer axes, innermost first, so the result is ascending
        starts = (np.arange(box[i].start, box[i].stop, dtype=np.int64)[:, None] * strides[i] + starts).reshape(-1)
    return starts, lens[d] * strides[d]


def coalesce_runs(starts: np.ndarray, run: int, max_span: int, max_gap: int) -> Iterator[tuple[int, int]]:
    """Group ascending runs of ``run`` elements into index ranges ``[i, j)`` read as one span.

    A group grows while the next run starts at most ``max_gap`` elements after
    the previous one ends and the whole span stays within ``max_span``
    elements (one run always fits, however long).
    """
    i, n = 0, len(starts)
    while i < n:
        j = i + 1
        while j < n and starts[j] - starts[j - 1] - run <= max_gap and starts[j] + run - starts[i] <= max_span:
            j += 1
        yield i, j
        i = j


def contiguous_parts(
    spec: WeightSpec, part_bytes: int, start: int = 0, stop: int | None = None
) -> Iterator[tuple[int, int]]:
    """Element ranges ``[e0, e1)`` of at most ``part_bytes`` each, covering ``[start, stop)`` (default: the weight)."""
    itemsize = spec.np_dtype.itemsize
    stop = spec.size if stop is None else stop
    step = max(1, part_bytes // itemsize)
    for e0 in range(start, stop, step):
        yield e0, min(stop, e0 + step)


def element_extent(spec: WeightSpec, e0: int, e1: int) -> Extent:
    """The byte range of elements ``[e0, e1)`` of a contiguous weight."""
    itemsize = spec.np_dtype.itemsize
    return Extent(spec.extent.offset + e0 * itemsize, (e1 - e0) * itemsize)


def byte_view(array: np.ndarray) -> memoryview:
    """A writable byte view of a C-contiguous array (any dtype, bfloat16 included)."""
    return memoryview(array.reshape(-1).view(np.uint8))


def merge_ranges(
    ranges: Sequence[tuple[int, int]], max_gap: int = MERGE_GAP_BYTES, max_overhead: float | None = None
) -> list[tuple[int, int]]:
    """``(offset, length)`` ranges as the ``[start, end)`` spans to fetch: sorted, near ones merged, empty dropped.

    fsspec's own merge (what its ``cat_ranges`` and parquet readers use), with this module's policy;
    ``max_gap`` is for callers that already merged by their own measure (the HDF5 metadata walk).
    With ``max_overhead`` (region reads), gaps are bridged, smallest first, only while the bridged
    bytes stay within that fraction of the bytes asked for: fsspec's merge has no such bound, so this
    one case is written here.
    """
    live = [(off, n) for off, n in ranges if n]
    if not live:
        return []
    if max_overhead is not None:
        return _bounded_merge(live, max_gap, max_overhead)
    _, starts, ends = fsspec.utils.merge_offset_ranges(
        [""] * len(live),
        [off for off, _ in live],
        [off + n for off, n in live],
        max_gap=max_gap,
        max_block=MAX_MERGED_BYTES,
        sort=True,
    )
    return list(zip(starts, ends, strict=True))


def _bounded_merge(ranges: list[tuple[int, int]], max_gap: int, max_overhead: float) -> list[tuple[int, int]]:
    spans: list[list[int]] = []
    for off, n in sorted(ranges):  # overlapping and touching ranges always join
        if spans and off <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], off + n)
        else:
            spans.append([off, off + n])
    allowance, spent, bridged = max_overhead * sum(e - s for s, e in spans), 0, set()
    for gap, i in sorted((spans[i + 1][0] - spans[i][1], i) for i in range(len(spans) - 1)):
        if gap > max_gap or spent + gap > allowance:
            break
        bridged.add(i)
        spent += gap
    out = [spans[0]]
    for i, (start, end) in enumerate(spans[1:]):
        if i in bridged and end - out[-1][0] <= MAX_MERGED_BYTES:
            out[-1][1] = end
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


# -- chunks -------------------------------------------------------------------------------


def intersect(origin: tuple[int, ...], chunk_shape: tuple[int, ...], box: Box) -> tuple[Box, Box] | None:
    """Where a chunk at ``origin`` meets ``box``: ``(slices in the chunk, slices in the box)``, or None.

    The one chunk/box intersection: HDF5 chunk tables (stored chunks with
    origins) and zarr grids (every grid index) both use it.
    """
    src, dst = [], []
    for o, c, sl in zip(origin, chunk_shape, box, strict=True):
        lo, hi = max(o, sl.start), min(o + c, sl.stop)
        if lo >= hi:
            return None
        src.append(slice(lo - o, hi - o))
        dst.append(slice(lo - sl.start, hi - sl.start))
    return tuple(src), tuple(dst)


def grid_pieces(chunk_shape: tuple[int, ...], box: Box) -> Iterator[tuple[tuple[int, ...], Box, Box]]:
    """The grid indices of a regular chunk grid that meet ``box`` (C order), with :func:`intersect`'s slices."""
    grid = tuple(max(1, c) for c in chunk_shape)
    ranges = [range(r.start // c, -(-r.stop // c)) for r, c in zip(box, grid, strict=True)]
    for index in itertools.product(*ranges):
        hit = intersect(tuple(i * c for i, c in zip(index, grid, strict=True)), grid, box)
        if hit is not None:
            yield index, hit[0], hit[1]


# -- row blocks ---------------------------------------------------------------------------


def rows_per_block(row_bytes: int, block_bytes: int = ROW_BLOCK_BYTES, align: int = 1) -> int:
    """Rows in a block of at most ``block_bytes`` (one ``align`` at least, a multiple of ``align``)."""
    return max(align, (block_bytes // max(1, row_bytes)) // align * align)


def row_blocks(
    shape: tuple[int, ...], itemsize: int, block_bytes: int = ROW_BLOCK_BYTES, align: int = 1, box: Box | None = None
) -> list[tuple[int, int]]:
    """``[r0, r1)`` row ranges of ``box`` (default: the whole array) along the first axis, one block each.

    The one row-block rule: each block holds at most ``block_bytes`` of the
    box (at least ``align`` rows, in multiples of ``align``), so a weight
    streamed block by block holds one block in memory at a time.
    """
    if not shape:
        return [(0, 0)]
    box = box if box is not None else full_box(shape)
    row_bytes = itemsize * math.prod(box_shape(box[1:]))
    step = rows_per_block(row_bytes, block_bytes, align)
    first, last = box[0].start, box[0].stop
    return [(r, min(r + step, last)) for r in range(first, last, step)]
