"""Reading a weight, or a region of it, from its :class:`WeightSpec`.

The one place that knows how each storage layout turns into array values:
contiguous byte ranges, decoded chunks, inline (compact) bytes, fill values,
the h5py fallback for filters without a codec, and zarr arrays (read by zarr).  Used by ``Weight.read``,
the dask getters (``lazy.py``) and the streaming executor (``stream.py``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from .codecs import chunk_array, decode_chunk
from .errors import FormatError
from .manifest import Chunk, Extent, WeightSpec
from .storage import Source

__all__ = [
    "box_runs",
    "box_shape",
    "chunk_overlaps",
    "coalesce_runs",
    "contiguous_parts",
    "full_box",
    "normalize_index",
    "read",
    "read_chunk",
]

Index = tuple[slice, ...]


def normalize_index(index: Any, shape: tuple[int, ...]) -> tuple[Index, tuple[Any, ...]]:
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


def contiguous_parts(
    spec: WeightSpec, part_bytes: int, start: int = 0, stop: int | None = None
) -> Iterator[tuple[int, int]]:
    """Element ranges ``[e0, e1)`` of at most ``part_bytes`` each, covering ``[start, stop)`` (default: the weight)."""
    itemsize = spec.np_dtype.itemsize
    stop = spec.size if stop is None else stop
    step = max(1, part_bytes // itemsize)
    for e0 in range(start, stop, step):
        yield e0, min(stop, e0 + step)


def coalesce_runs(starts: np.ndarray, run: int, max_span: int, max_gap: int) -> Iterator[tuple[int, int]]:
    """Group ascending runs of ``run`` elements into index ranges ``[i, j)`` read as one span.

    Pure planning, no I/O: a group grows while the next run starts at most
    ``max_gap`` elements after the previous one ends and the whole span stays
    within ``max_span`` elements (one run always fits, however long).
    """
    i, n = 0, len(starts)
    while i < n:
        j = i + 1
        while j < n and starts[j] - starts[j - 1] - run <= max_gap and starts[j] + run - starts[i] <= max_span:
            j += 1
        yield i, j
        i = j


def full_box(shape: tuple[int, ...]) -> Index:
    """The box covering a whole array of ``shape``."""
    return tuple(slice(0, n) for n in shape)


def box_shape(box: Index) -> tuple[int, ...]:
    """The shape of the block a box of unit-step slices selects."""
    return tuple(max(0, s.stop - s.start) for s in box)


def box_runs(shape: tuple[int, ...], box: Index) -> tuple[np.ndarray, int]:
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


def byte_view(array: np.ndarray) -> memoryview:
    """A writable byte view of a C-contiguous array (any dtype, bfloat16 included)."""
    return memoryview(array.reshape(-1).view(np.uint8))


def element_extent(spec: WeightSpec, e0: int, e1: int) -> Extent:
    """The byte range of elements ``[e0, e1)`` of a contiguous weight."""
    itemsize = spec.np_dtype.itemsize
    return Extent(spec.extent.offset + e0 * itemsize, (e1 - e0) * itemsize)


def read(source: Source, spec: WeightSpec, index: Any = ()) -> np.ndarray:
    """``spec``'s values at ``index`` (numpy semantics), in the file's dtype."""
    box, rest = normalize_index(index, spec.shape)
    if spec.layout == "contiguous":
        block = _read_contiguous_box(source, spec, box)
    elif spec.layout == "chunked":
        block = _read_chunked_box(source, spec, box)
    elif spec.layout == "h5py":
        block = _read_h5py_box(source, spec, box)
    elif spec.layout == "zarr":
        from . import zarrstore

        block = zarrstore.read_box(source, spec, box)
    else:
        block = constant_values(spec)[box]
    return block[rest]


def constant_values(spec: WeightSpec) -> np.ndarray:
    """The values of a weight whose bytes live in the manifest (compact) or nowhere (fill)."""
    dtype = spec.np_dtype
    if spec.layout == "compact":
        return np.frombuffer(spec.inline, dtype=dtype).reshape(spec.shape)
    return np.full(spec.shape, fill_value(spec), dtype=dtype)


def _read_contiguous_box(source: Source, spec: WeightSpec, box: Index) -> np.ndarray:
    """Read the leading-axis rows the box spans (one byte range), then cut the box."""
    if not spec.shape:
        out = np.empty((), dtype=spec.np_dtype)
        source.readinto(spec.extent.offset, byte_view(out))
        return out
    row = math.prod(spec.shape[1:])
    r0, r1 = box[0].start, box[0].stop
    out = np.empty((r1 - r0, *spec.shape[1:]), dtype=spec.np_dtype)
    if out.size:
        ext = element_extent(spec, r0 * row, r1 * row)
        source.readinto(ext.offset, byte_view(out))
    return out[(slice(None), *box[1:])]


def chunk_overlaps(spec: WeightSpec, box: Index) -> Iterator[tuple[Chunk, Index, Index]]:
    """Stored chunks meeting ``box``, with the slices to copy: ``(chunk, in-chunk, in-box)``."""
    for chunk in spec.chunks:
        src, dst = [], []
        for origin, csize, sl in zip(chunk.origin, spec.chunk_shape, box, strict=True):
            lo, hi = max(origin, sl.start), min(origin + csize, sl.stop)
            if lo >= hi:
                break
            src.append(slice(lo - origin, hi - origin))
            dst.append(slice(lo - sl.start, hi - sl.start))
        else:
            yield chunk, tuple(src), tuple(dst)


def read_chunk(source: Source, spec: WeightSpec, chunk: Chunk) -> np.ndarray:
    """One stored chunk, fetched and decoded, as an array of the chunk shape."""
    dtype = spec.np_dtype
    nbytes = math.prod(spec.chunk_shape) * dtype.itemsize
    raw = source.read(chunk.extent.offset, chunk.extent.length)
    try:
        data = decode_chunk(raw, spec.filters, chunk.filter_mask, dtype.itemsize, nbytes)
    except FormatError as exc:
        raise FormatError(f"{source.url}: weight {spec.key!r}, chunk at {chunk.origin}: {exc}") from exc
    return chunk_array(data, dtype, spec.chunk_shape)


def _read_chunked_box(source: Source, spec: WeightSpec, box: Index) -> np.ndarray:
    out = np.empty(tuple(s.stop - s.start for s in box), dtype=spec.np_dtype)
    out[...] = fill_value(spec)  # chunks never written hold the fill value
    for chunk, src, dst in chunk_overlaps(spec, box):
        out[dst] = read_chunk(source, spec, chunk)[src]
    return out


def fill_value(spec: WeightSpec) -> Any:
    """The value of elements never written (HDF5 fill value, default zero)."""
    dtype = spec.np_dtype
    return np.frombuffer(spec.fill, dtype=dtype)[0] if spec.fill else dtype.type(0)


_h5_files: dict[str, Any] = {}
_h5_lock = threading.Lock()


def _read_h5py_box(source: Source, spec: WeightSpec, box: Index) -> np.ndarray:
    """Fallback for filter pipelines without a codec here (e.g. szip, scale-offset).

    The only data path through h5py; it is serialised by h5py's global lock.
    """
    import h5py

    with _h5_lock:
        f = _h5_files.get(source.url)
        if f is None:
            target = source.path if source.is_local else source.open_file()
            f = _h5_files[source.url] = h5py.File(target, "r", locking=False)
        values = f[spec.path][box]
    if spec.dtype == "bfloat16":
        values = values.view(spec.np_dtype)
    return np.asarray(values)
