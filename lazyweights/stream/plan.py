"""Load plans as plain data: targets, groups, and the frozen units that describe each read.

Planning is pure: no I/O and no closures.  A :class:`Group` of
:class:`Target` s becomes a list of units, each saying what to read (byte
offsets, chunks, boxes), where it lands (the index of its destination in the
group's arrays, a ``slot``, and an element range or box there), and what it
costs: ``cost`` transient bytes held while it runs, ``stored`` bytes fetched,
``nbytes`` destination bytes filled, ``requests`` storage reads.  The
executor (:mod:`lazyweights.stream.executor`) runs units with one dispatch
function and owns the budget, the threads and the errors.

Zarr pieces are the one exception: :mod:`lazyweights.read.zarr` plans its
chunk reads as closures over the destination (raw, decoded or zarr's own
reads), so the executor wraps each in a :class:`ZarrPiece` holding its ``run``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .. import geometry
from ..errors import UnsupportedError
from ..manifest import Chunk, Piece, WeightSpec
from ..read.hdf5 import chunk_overlaps
from .budget import allocate

__all__ = [
    "Batch",
    "Constant",
    "Direct",
    "Fill",
    "Group",
    "H5py",
    "HDF5Chunk",
    "PartSizes",
    "PieceRead",
    "Span",
    "Staged",
    "Target",
    "Unit",
    "ZarrPiece",
    "batch_units",
    "share_chunk_reads",
    "coalesce_groups",
    "destination",
    "target_units",
]

# Parts read with preadv straight into their destination hold no memory, so they can be
# large (fewer syscalls, measured fastest at 16-64 MiB); parts that stage bytes (remote
# reads, dtype casts) are sized to the budget.
DIRECT_PART_BYTES = 32 << 20
STAGED_PART_BYTES = 8 << 20
# Remote parts: large enough to amortise a request's round trip (20 ms is 2 MB at 100 MB/s), small
# enough that each connection gets about four, within these bounds.
REMOTE_PART_BYTES = (1 << 20, 32 << 20)
# Remote reads this small are batched (merged where near, else fetched concurrently) so that
# the many tiny weights of a layer (biases, norms) do not each cost a round trip.
BATCH_READ_BYTES = 256 << 10


@dataclass
class Target:
    """One weight, or the region ``box`` of it, and its destination (None: allocate one under the budget).

    ``box`` is a tuple of unit-step slices in the weight's own coordinates
    (``None``: the whole weight); only the bytes it covers are read, so a
    leading-axis slice of a contiguous weight is one byte range.  The
    destination has the box's shape.
    """

    spec: WeightSpec
    dest: np.ndarray | None = None
    box: tuple[slice, ...] | None = None

    @property
    def region(self) -> tuple[slice, ...]:
        return self.box if self.box is not None else geometry.full_box(self.spec.shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return geometry.box_shape(self.box) if self.box is not None else self.spec.shape

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.spec.np_dtype.itemsize


@dataclass
class Group:
    """Targets loaded together; ``on_ready`` gets their arrays once all are read."""

    targets: list[Target]
    on_ready: Callable[[list[np.ndarray]], None] | None = None


def destination(target: Target) -> np.ndarray:
    """The target's destination, or a new array of its shape in the spec's dtype (native byte order)."""
    if target.dest is not None:
        return target.dest
    return allocate(target.shape, target.spec.np_dtype.newbyteorder("="), f"weight {target.spec.key!r}")


# -- units -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Unit:
    """What every unit says about itself: its weight, its cost, what it fetches and fills."""

    key: str
    cost: int  # transient bytes held while the unit runs
    stored: int  # bytes fetched from storage
    nbytes: int  # destination bytes the unit fills
    requests: int = 1  # storage reads the unit makes
    member: str | None = None  # the store member the bytes are in (None: the source itself)

    @property
    def members(self) -> tuple[Unit, ...]:
        """The units this one stands for (itself, but for a batch)."""
        return (self,)


@dataclass(frozen=True, kw_only=True)
class Direct(Unit):
    """Bytes ``[offset, offset + length)`` read straight into elements ``[d0, d1)`` of destination ``slot`` (flat)."""

    slot: int
    offset: int
    length: int
    d0: int
    d1: int
    region: bool = False  # part of a region read (a shard): batched reads bound the gaps they bridge


@dataclass(frozen=True, kw_only=True)
class Staged(Unit):
    """Bytes ``[offset, offset + length)`` read into a buffer of ``dtype``, then assigned to elements ``[d0, d1)``."""

    slot: int
    offset: int
    length: int
    d0: int
    d1: int
    dtype: np.dtype


@dataclass(frozen=True, kw_only=True)
class Span(Unit):
    """Elements ``[first, last)`` read as one range; the runs at ``offsets`` (relative to ``first``) of ``run``
    elements each land as destination runs ``index, index + 1, ...``."""

    slot: int
    offset: int
    first: int
    last: int
    run: int
    index: int
    offsets: tuple[int, ...]
    dtype: np.dtype


@dataclass(frozen=True, kw_only=True)
class HDF5Chunk(Unit):
    """One stored HDF5 chunk, fetched and decoded; ``src`` of it lands at ``dst`` of destination ``slot``,
    and each ``(slot, src, dst)`` of ``more`` likewise (other targets the same chunk serves)."""

    slot: int
    spec: WeightSpec
    chunk: Chunk
    src: geometry.Box
    dst: geometry.Box
    more: tuple[tuple[int, geometry.Box, geometry.Box], ...] = ()

    def placements(self) -> list[tuple[int, geometry.Box, geometry.Box]]:
        """Every ``(slot, src, dst)`` the decoded chunk fills."""
        return [(self.slot, self.src, self.dst), *self.more]


@dataclass(frozen=True, kw_only=True)
class PieceRead(Unit):
    """One stored block of a ``pieces`` weight, read whole (its CRC32C checked) and ``src`` of it put at ``dst``."""

    slot: int
    piece: Piece
    dtype: np.dtype
    src: geometry.Box
    dst: geometry.Box


@dataclass(frozen=True, kw_only=True)
class H5py(Unit):
    """The ``box`` of a weight only h5py can decode, read through h5py into destination ``slot``."""

    slot: int
    spec: WeightSpec
    box: geometry.Box


@dataclass(frozen=True, kw_only=True)
class _InMemory(Unit):
    """A unit that writes values known without storage into destination ``slot``: no bytes, no requests."""

    slot: int
    spec: WeightSpec
    cost: int = 0
    stored: int = 0
    nbytes: int = 0
    requests: int = 0


@dataclass(frozen=True, kw_only=True)
class Constant(_InMemory):
    """A weight with no stored values (a fill value or a constant): ``box`` of it written into ``slot``."""

    box: geometry.Box


@dataclass(frozen=True, kw_only=True)
class Fill(_InMemory):
    """Destination ``slot`` set to the weight's fill value first (chunked data with unwritten chunks)."""


@dataclass(frozen=True, kw_only=True)
class ZarrPiece(Unit):
    """One zarr chunk's share of a destination: the one closure-based unit (see the module docstring)."""

    run: Callable[[], None] = field(compare=False)


@dataclass(frozen=True, kw_only=True)
class Batch(Unit):
    """Plain remote reads (:class:`Direct` units) fetched together: near ranges merged, the rest concurrently."""

    reads: tuple[Direct, ...]
    max_overhead: float | None = None  # the merge bound of region reads (geometry.merge_ranges)

    @property
    def members(self) -> tuple[Unit, ...]:
        return self.reads

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """The byte ranges of its reads."""
        return [(r.offset, r.length) for r in self.reads]


# -- planning ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PartSizes:
    direct: int  # local reads straight into the destination (no memory held)
    staged: int  # reads that hold their bytes until copied (remote, casts)

    @classmethod
    def choose(
        cls, part_bytes: int | None, max_memory: int | None, concurrency: int, remote_total: int | None = None
    ) -> PartSizes:
        """Part sizes; ``remote_total`` (the bytes a remote load will fetch) sizes remote parts to the load."""
        staged = part_bytes or STAGED_PART_BYTES
        if part_bytes is None and remote_total is not None:
            low, high = REMOTE_PART_BYTES
            staged = max(low, min(high, remote_total // (4 * concurrency)))
        if max_memory is not None:  # keep `concurrency` staged parts in flight, twice over, under the budget
            staged = max(64 << 10, min(staged, max_memory // (2 * concurrency)))
        return cls(direct=part_bytes or DIRECT_PART_BYTES, staged=staged)


def target_units(target: Target, slot: int, dest: np.ndarray, parts: PartSizes, is_local: bool) -> list[Unit]:
    """The units that fill ``dest`` (destination ``slot``: only its dtype, flags and shape are looked at).

    Zarr targets are planned by :mod:`lazyweights.read.zarr` (see the module docstring).
    """
    spec, box = target.spec, target.region
    if spec.layout == "contiguous":
        return list(_contiguous_units(spec, slot, dest, parts, box, is_local))
    if spec.layout == "chunked":
        return list(_chunk_units(spec, slot, box))
    if spec.layout == "h5py":
        nbytes = target.nbytes
        return [
            H5py(
                key=spec.key, cost=2 * nbytes, stored=nbytes, nbytes=nbytes, slot=slot, spec=spec, box=box,
                member=spec.member,
            )
        ]
    if spec.layout == "pieces":
        return list(_piece_units(spec, slot, box))
    if spec.layout == "zarr":
        raise ValueError(f"{spec.key!r}: zarr targets are planned by lazyweights.read.zarr")
    if spec.layout == "unsupported":
        raise UnsupportedError(f"weight {spec.key!r} (dataset {spec.path}) cannot be read: {spec.reason}")
    return [Constant(key=spec.key, slot=slot, spec=spec, box=box)]


def _contiguous_units(
    spec: WeightSpec, slot: int, dest: np.ndarray, parts: PartSizes, box: geometry.Box, is_local: bool
) -> Iterator[Unit]:
    """Units for the runs ``box`` covers: long runs split into parts, short ones coalesced into spans."""
    direct = dest.dtype == spec.np_dtype and dest.flags.c_contiguous and dest.flags.writeable
    part_bytes = parts.direct if direct and is_local else parts.staged
    itemsize = spec.np_dtype.itemsize
    starts, run = geometry.box_runs(spec.shape, box)
    if len(starts) > 1 and 2 * run * itemsize <= part_bytes:
        yield from _span_units(spec, slot, starts, run, parts.staged, is_local)
        return
    staged_factor = 1 if is_local else 2
    region = box != geometry.full_box(spec.shape)
    for i, s in enumerate(starts.tolist()):
        for e0, e1 in geometry.contiguous_parts(spec, part_bytes, s, s + run):
            ext = geometry.element_extent(spec, e0, e1)
            d0, d1 = i * run + e0 - s, i * run + e1 - s  # where the part lands in the destination, flat
            n = ext.length
            if direct:  # remote: the bytes are in flight until they land (and batchable)
                yield Direct(
                    key=spec.key, cost=0 if is_local else n, stored=n, nbytes=n, member=spec.member,
                    slot=slot, offset=ext.offset, length=n, d0=d0, d1=d1, region=region,
                )  # fmt: skip
            else:
                yield Staged(
                    key=spec.key, cost=n * staged_factor, stored=n, nbytes=n, member=spec.member,
                    slot=slot, offset=ext.offset, length=n, d0=d0, d1=d1, dtype=spec.np_dtype,
                )  # fmt: skip


def _span_units(
    spec: WeightSpec, slot: int, starts: np.ndarray, run: int, part_bytes: int, is_local: bool
) -> Iterator[Span]:
    """Short runs (a slice along a trailing axis): read neighbouring runs as one span, then pick them out."""
    itemsize = spec.np_dtype.itemsize
    max_span, max_gap = max(run, part_bytes // itemsize), geometry.MERGE_GAP_BYTES // itemsize
    for i, j in geometry.coalesce_runs(starts, run, max_span, max_gap):
        first, last = int(starts[i]), int(starts[j - 1]) + run
        ext = geometry.element_extent(spec, first, last)
        yield Span(
            key=spec.key, cost=ext.length * (1 if is_local else 2), stored=ext.length, nbytes=(j - i) * run * itemsize,
            member=spec.member, slot=slot, offset=ext.offset, first=first, last=last, run=run, index=i,
            offsets=tuple((starts[i:j] - first).tolist()), dtype=spec.np_dtype,
        )  # fmt: skip


def _chunk_units(spec: WeightSpec, slot: int, box: geometry.Box) -> Iterator[Unit]:
    """One unit per stored chunk that meets ``box`` (after a fill when some chunks were never written)."""
    chunk_nbytes = math.prod(spec.chunk_shape) * spec.np_dtype.itemsize
    if len(spec.chunks) < _chunk_count(spec):
        yield Fill(key=spec.key, slot=slot, spec=spec)
    for chunk, src, dst in chunk_overlaps(spec, box):
        nbytes = math.prod(geometry.box_shape(dst)) * spec.np_dtype.itemsize
        yield HDF5Chunk(
            key=spec.key, cost=chunk.extent.length + chunk_nbytes, stored=chunk.extent.length, nbytes=nbytes,
            slot=slot, spec=spec, chunk=chunk, src=src, dst=dst, member=spec.member,
        )  # fmt: skip


def _piece_units(spec: WeightSpec, slot: int, box: geometry.Box) -> Iterator[Unit]:
    """One unit per stored block that meets ``box``: the block is read whole, so its CRC32C can be checked."""
    itemsize = spec.np_dtype.itemsize
    for piece in spec.pieces:
        overlap = geometry.intersect(piece.origin, piece.shape, box)
        if overlap is None:
            continue
        src, dst = overlap
        n = piece.extent.length
        yield PieceRead(
            key=spec.key, cost=2 * n, stored=n, nbytes=math.prod(geometry.box_shape(dst)) * itemsize,
            member=piece.member, slot=slot, piece=piece, dtype=spec.np_dtype, src=src, dst=dst,
        )  # fmt: skip


def _chunk_count(spec: WeightSpec) -> int:
    return math.prod(-(-n // c) for n, c in zip(spec.shape, spec.chunk_shape, strict=True))


def share_chunk_reads(units: Sequence[Unit]) -> list[Unit]:
    """``units`` with the reads of one stored chunk by several targets made one (read and decoded once).

    A flat shard's part of a weight is several boxes (:func:`geometry.flat_boxes`), each a target: a
    compressed chunk two of them meet was fetched and inflated once per box (a rank of a 3-way flat
    shard of a gzip-chunked weight read its chunks twice, tests/test_shard.py).
    """
    out: list[Unit] = []
    first: dict[tuple[str, str | None, int], int] = {}
    for unit in units:
        if not isinstance(unit, HDF5Chunk):
            out.append(unit)
            continue
        ident = (unit.key, unit.member, unit.chunk.extent.offset)
        if ident not in first:
            first[ident] = len(out)
            out.append(unit)
            continue
        held = out[first[ident]]
        assert isinstance(held, HDF5Chunk)
        out[first[ident]] = dataclasses.replace(
            held, nbytes=held.nbytes + unit.nbytes, more=(*held.more, (unit.slot, unit.src, unit.dst))
        )
    return out


def batch_units(units: Sequence[Unit], limit: int) -> list[Unit]:
    """Fold small plain remote reads into :class:`Batch` units of at most ``limit`` stored bytes, one per object.

    Reads of several objects may interleave (a packed mirror's weights of
    several dtypes, in layer order): each object's reads batch on their own.
    """
    out: list[Unit] = []
    runs: dict[str | None, list[Direct]] = {}

    def flush(run: list[Direct]) -> None:
        if len(run) == 1:
            out.append(run[0])
        elif run:
            bound = geometry.MERGE_OVERHEAD if any(u.region for u in run) else None
            spans = geometry.merge_ranges([(u.offset, u.length) for u in run], max_overhead=bound)
            fetched = sum(e - s for s, e in spans)
            nbytes = sum(u.nbytes for u in run)
            batch = Batch(
                key=run[0].key, cost=fetched, stored=fetched, nbytes=nbytes, requests=len(spans), reads=(*run,),
                member=run[0].member, max_overhead=bound,
            )  # fmt: skip
            out.append(batch)
        run.clear()

    for unit in units:
        if not isinstance(unit, Direct) or unit.stored > BATCH_READ_BYTES:
            out.append(unit)
            continue
        run = runs.setdefault(unit.member, [])
        if run and sum(u.stored for u in run) + unit.stored > limit:
            flush(run)  # a batch reads one object
        run.append(unit)
    for run in runs.values():
        flush(run)
    return out


def coalesce_groups(groups: Sequence[Group], limit: int) -> list[Group]:
    """Merge runs of consecutive small groups (each under ``BATCH_READ_BYTES``) up to ``limit`` bytes.

    Remote loads only: a model's many small layers then share batched reads.
    Each original group's ``on_ready`` still receives exactly its own arrays,
    in order, once the merged group is read.
    """
    out: list[Group] = []
    run: list[Group] = []
    size = 0

    def flush() -> None:
        if len(run) == 1:
            out.append(run[0])
        elif run:
            out.append(_merged(list(run)))
        run.clear()

    for group in groups:
        nbytes = sum(t.nbytes for t in group.targets)
        if nbytes > BATCH_READ_BYTES:
            flush()
            out.append(group)
            continue
        if run and size + nbytes > limit:
            flush()
        size = nbytes if not run else size + nbytes
        run.append(group)
    flush()
    return out


def _merged(groups: list[Group]) -> Group:
    bounds = [0]
    for g in groups:
        bounds.append(bounds[-1] + len(g.targets))

    def on_ready(arrays: list[np.ndarray]) -> None:
        for g, lo, hi in zip(groups, bounds, bounds[1:], strict=False):  # bounds has one entry more
            if g.on_ready is not None:
                g.on_ready(arrays[lo:hi])

    return Group([t for g in groups for t in g.targets], on_ready)
