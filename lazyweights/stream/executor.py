"""The budgeted executor: read many weights into destinations, concurrently, within a memory bound.

A load is a list of :class:`Group` s (typically one per layer), each a list of
:class:`Target` s (a weight and where it goes).  Every target becomes work
units: parts of a few MiB for contiguous data, one unit per stored chunk for
chunked data.  The submitting thread reserves each unit's transient bytes
from a :class:`~lazyweights.budget.ByteBudget` before handing it to a thread
pool, so memory held in flight never exceeds ``max_memory`` beyond the
destinations themselves.

When a destination is the caller's array of the file's dtype, local parts are
read with ``preadv`` straight into it: no staging buffer at all.  A target
without a destination gets one allocated under the budget; the group's
``on_ready`` callback receives the arrays when all its units are done, and the
reservation is released after it returns — so a Keras model is filled layer by
layer and a layer's values are gone before the next needs the memory.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .. import geometry
from ..errors import LazyWeightsError, ObjectChangedError, PartialLoadError
from ..manifest import WeightSpec
from ..read import hdf5, zarr
from ..read.constant import constant_values, fill_value
from ..storage import Source
from .budget import ByteBudget
from .report import LoadReport

__all__ = ["Group", "LoadReport", "Target", "execute"]

# Parts read with preadv straight into their destination hold no memory, so they can be
# large (fewer syscalls, measured fastest at 16-64 MiB); parts that stage bytes (remote
# reads, dtype casts) are sized to the budget.
DIRECT_PART_BYTES = 32 << 20
STAGED_PART_BYTES = 8 << 20
# Runs of a region (e.g. a column shard) closer than this are read as one span, gap included,
# rather than as separate requests: zarr's default coalescing gap.
MAX_GAP_BYTES = 1 << 20
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


@dataclass
class _Unit:
    key: str
    cost: int  # transient bytes held while the unit runs
    stored: int  # bytes fetched from storage
    nbytes: int  # destination bytes the unit fills
    run: Callable[[], None]
    reads: tuple[tuple[int, memoryview], ...] = ()  # (offset, destination) of a plain remote read, batchable
    members: tuple[_Unit, ...] = ()  # the units a batch stands for
    requests: int = 1  # storage reads the unit makes


def _destination(target: Target) -> np.ndarray:
    if target.dest is not None:
        return target.dest
    return np.empty(target.shape, dtype=target.spec.np_dtype.newbyteorder("="))


def _assign_flat(dest: np.ndarray, e0: int, e1: int, values: np.ndarray) -> None:
    if dest.flags.c_contiguous:
        dest.reshape(-1)[e0:e1] = values
    else:
        dest.flat[e0:e1] = values


def _contiguous_units(
    source: Source, spec: WeightSpec, dest: np.ndarray, parts: _PartSizes, box: tuple[slice, ...]
) -> Iterator[_Unit]:
    """Units for the runs ``box`` covers: long runs split into parts, short ones coalesced into spans."""
    direct = dest.dtype == spec.np_dtype and dest.flags.c_contiguous and dest.flags.writeable
    flat = dest.reshape(-1) if direct else None
    part_bytes = parts.direct if direct and source.is_local else parts.staged
    itemsize = spec.np_dtype.itemsize
    starts, run = geometry.box_runs(spec.shape, box)
    if len(starts) > 1 and 2 * run * itemsize <= part_bytes:
        yield from _span_units(source, spec, dest, starts, run, parts.staged)
        return
    for i, s in enumerate(starts.tolist()):
        for e0, e1 in geometry.contiguous_parts(spec, part_bytes, s, s + run):
            ext = geometry.element_extent(spec, e0, e1)
            d0, d1 = i * run + e0 - s, i * run + e1 - s  # where the part lands in the destination, flat
            if direct:
                view = geometry.byte_view(flat[d0:d1])

                def run_unit(ext=ext, view=view) -> None:
                    source.readinto(ext.offset, view)

                if not source.is_local:  # a plain remote read: batchable with its neighbours
                    yield _Unit(spec.key, ext.length, ext.length, ext.length, run_unit, reads=((ext.offset, view),))
                    continue
                cost = 0
            else:

                def run_unit(ext=ext, d0=d0, d1=d1) -> None:
                    stage = np.empty(d1 - d0, dtype=spec.np_dtype)
                    source.readinto(ext.offset, geometry.byte_view(stage))
                    _assign_flat(dest, d0, d1, stage)

                cost = ext.length * (1 if source.is_local else 2)
            yield _Unit(spec.key, cost, ext.length, ext.length, run_unit)


def _span_units(
    source: Source, spec: WeightSpec, dest: np.ndarray, starts: np.ndarray, run: int, part_bytes: int
) -> Iterator[_Unit]:
    """Short runs (a slice along a trailing axis): read neighbouring runs as one span, then pick them out."""
    itemsize = spec.np_dtype.itemsize
    max_span, max_gap = max(run, part_bytes // itemsize), MAX_GAP_BYTES // itemsize
    for i, j in geometry.coalesce_runs(starts, run, max_span, max_gap):
        first, last = int(starts[i]), int(starts[j - 1]) + run
        ext = geometry.element_extent(spec, first, last)
        offsets = (starts[i:j] - first).tolist()

        def run_unit(ext=ext, i=i, offsets=offsets, first=first, last=last) -> None:
            stage = np.empty(last - first, dtype=spec.np_dtype)
            source.readinto(ext.offset, geometry.byte_view(stage))
            for n, o in enumerate(offsets):
                _assign_flat(dest, (i + n) * run, (i + n + 1) * run, stage[o : o + run])

        yield _Unit(
            spec.key, ext.length * (1 if source.is_local else 2), ext.length, (j - i) * run * itemsize, run_unit
        )


def _chunk_units(source: Source, spec: WeightSpec, dest: np.ndarray, box: tuple[slice, ...]) -> Iterator[_Unit]:
    """One unit per stored chunk that meets ``box``; chunks outside it are never fetched."""
    chunk_nbytes = int(np.prod(spec.chunk_shape)) * spec.np_dtype.itemsize
    if len(spec.chunks) < _chunk_count(spec):
        dest[...] = fill_value(spec)  # unwritten chunks hold the fill value
    for chunk, src, dst in hdf5.chunk_overlaps(spec, box):

        def run(chunk=chunk, src=src, dst=dst) -> None:
            dest[dst] = hdf5.read_chunk(source, spec, chunk)[src]

        nbytes = int(np.prod([s.stop - s.start for s in dst])) * spec.np_dtype.itemsize
        yield _Unit(spec.key, chunk.extent.length + chunk_nbytes, chunk.extent.length, nbytes, run)


def _zarr_units(source: Source, spec: WeightSpec, dest: np.ndarray, region: tuple[slice, ...]) -> Iterator[_Unit]:
    """One unit per zarr chunk meeting ``region`` (raw chunks read straight into ``dest`` when they can be)."""
    for read in zarr.chunk_reads(source, spec, dest, region):
        yield _Unit(spec.key, read.cost, read.stored, read.nbytes, read.run)


def _chunk_count(spec: WeightSpec) -> int:
    return int(np.prod([-(-n // c) for n, c in zip(spec.shape, spec.chunk_shape, strict=True)]))


@dataclass(frozen=True)
class _PartSizes:
    direct: int  # local reads straight into the destination (no memory held)
    staged: int  # reads that hold their bytes until copied (remote, casts)

    @classmethod
    def choose(
        cls, part_bytes: int | None, max_memory: int | None, concurrency: int, remote_total: int | None = None
    ) -> _PartSizes:
        """Part sizes; ``remote_total`` (the bytes a remote load will fetch) sizes remote parts to the load."""
        staged = part_bytes or STAGED_PART_BYTES
        if part_bytes is None and remote_total is not None:
            low, high = REMOTE_PART_BYTES
            staged = max(low, min(high, remote_total // (4 * concurrency)))
        if max_memory is not None:  # keep `concurrency` staged parts in flight, twice over, under the budget
            staged = max(64 << 10, min(staged, max_memory // (2 * concurrency)))
        return cls(direct=part_bytes or DIRECT_PART_BYTES, staged=staged)


def _units(source: Source, target: Target, dest: np.ndarray, parts: _PartSizes) -> list[_Unit]:
    """The work units that fill ``dest`` with the target's region; constants are written at once."""
    spec, box = target.spec, target.region
    if spec.layout == "contiguous":
        return list(_contiguous_units(source, spec, dest, parts, box))
    if spec.layout == "chunked":
        return list(_chunk_units(source, spec, dest, box))
    if spec.layout == "zarr":
        return list(_zarr_units(source, spec, dest, box))
    if spec.layout == "h5py":
        nbytes = target.nbytes

        def run() -> None:
            dest[...] = hdf5.read_h5py_box(source, spec, box)

        return [_Unit(spec.key, 2 * nbytes, nbytes, nbytes, run)]
    dest[...] = constant_values(spec)[box]
    return []


def _batched(source: Source, units: list[_Unit], limit: int) -> list[_Unit]:
    """Fold runs of small plain remote reads into batch units of at most ``limit`` stored bytes."""
    out: list[_Unit] = []
    run: list[_Unit] = []

    def flush() -> None:
        if len(run) == 1:
            out.append(run[0])
        elif run:
            reads = tuple(r for u in run for r in u.reads)
            spans = source.merged_spans(reads)  # what goes over the wire: near ranges merged, gaps included
            out.append(
                _Unit(
                    run[0].key,
                    sum(e - s for s, e in spans),
                    sum(e - s for s, e in spans),
                    sum(u.nbytes for u in run),
                    lambda reads=reads: source.readinto_many(reads),
                    members=tuple(run),
                    requests=len(spans),
                )
            )
        run.clear()

    for unit in units:
        if not unit.reads or unit.stored > BATCH_READ_BYTES:
            flush()
            out.append(unit)
            continue
        if run and sum(u.stored for u in run) + unit.stored > limit:
            flush()
        run.append(unit)
    flush()
    return out


def _coalesced(groups: Sequence[Group], limit: int) -> list[Group]:
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


class _Progress:
    """Per-key and per-group completion, bytes and the first error, shared by worker threads."""

    def __init__(self, callback: Callable[[int], None] | None):
        self.lock = threading.Lock()
        self.callback_lock = threading.Lock()
        self.callback = callback
        self.pending: dict[str, int] = {}
        self.started: set[str] = set()
        self.done: list[str] = []
        self.error: BaseException | None = None
        self.failed_key: str | None = None
        self.stored = self.loaded = self.requests = 0

    def expect(self, key: str, n: int) -> None:
        with self.lock:
            self.pending[key] = self.pending.get(key, 0) + n
            if self.pending[key] == 0:
                self.done.append(key)

    def finish(self, unit: _Unit) -> None:
        with self.lock:
            self.stored += unit.stored
            self.loaded += unit.nbytes
            self.requests += unit.requests
            for part in unit.members or (unit,):
                self.started.add(part.key)
                self.pending[part.key] -= 1
                if self.pending[part.key] == 0:
                    self.done.append(part.key)
        if self.callback is not None:
            self.callback(unit.nbytes)

    def fail(self, key: str, exc: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error, self.failed_key = exc, key


def execute(
    source: Source,
    groups: Sequence[Group],
    *,
    max_memory: int | None,
    concurrency: int | None = None,
    part_bytes: int | None = None,
    progress: Callable[[int], None] | None = None,
    report: LoadReport,
) -> LoadReport:
    """Run ``groups`` against ``source``; fill ``report`` and return it.

    Raises the first error a unit raised; if caller-owned destinations were
    already written, as :class:`PartialLoadError` naming them.
    """
    concurrency = concurrency or (max(4, 2 * (os.cpu_count() or 1)) if source.is_local else 16)
    remote_total = None if source.is_local else sum(t.nbytes for g in groups for t in g.targets)
    parts = _PartSizes.choose(part_bytes, max_memory, concurrency, remote_total)
    budget = ByteBudget(max_memory)
    state = _Progress(progress)
    slots = threading.BoundedSemaphore(2 * concurrency)
    start = time.perf_counter()
    batches = groups if source.is_local else _coalesced(groups, parts.staged)
    with ThreadPoolExecutor(concurrency, thread_name_prefix="lazyweights") as pool:
        for group in batches:
            if state.error is not None:
                break
            _submit_group(source, group, budget, slots, pool, state, parts)
    report.seconds = time.perf_counter() - start
    report.bytes_read, report.bytes_loaded, report.requests = state.stored, state.loaded, state.requests
    report.peak_in_flight, report.max_memory, report.concurrency = budget.peak, max_memory, concurrency
    done = set(state.done)
    report.loaded.extend(t.spec.key for g in groups for t in g.targets if t.spec.key in done)  # plan order
    if state.error is not None:
        _explain_change(source, state)
        _raise(source, groups, state)
    source.verify()  # every path ends here: refuse bytes read from an object that changed meanwhile
    return report


def _submit_group(
    source: Source,
    group: Group,
    budget: ByteBudget,
    slots: threading.BoundedSemaphore,
    pool: ThreadPoolExecutor,
    state: _Progress,
    parts: _PartSizes,
) -> None:
    owner = object()
    held = sum(t.nbytes for t in group.targets if t.dest is None)
    budget.acquire(held, owner, pin=True)
    arrays = [_destination(t) for t in group.targets]
    units: list[_Unit] = []
    for target, dest in zip(group.targets, arrays, strict=True):
        mine = _units(source, target, dest, parts)
        state.expect(target.spec.key, len(mine))
        units.extend(mine)
    if not source.is_local:
        units = _batched(source, units, parts.staged)
    remaining = [len(units)]
    lock = threading.Lock()

    def complete() -> None:
        try:
            if group.on_ready is not None and state.error is None:
                with state.callback_lock:
                    group.on_ready(arrays)
        finally:
            budget.release(held, owner, pin=True)

    def run(unit: _Unit) -> None:
        try:
            if state.error is None:
                unit.run()
                state.finish(unit)
        except BaseException as exc:  # recorded and re-raised by execute()
            state.fail(unit.key, exc)
        finally:
            budget.release(unit.cost, owner)
            slots.release()
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            _guard(state, unit.key, complete)

    if not units:
        _guard(state, group.targets[0].spec.key if group.targets else "", complete)
    for unit in units:
        budget.acquire(unit.cost, owner)
        slots.acquire()
        if state.error is not None:
            budget.release(unit.cost, owner)
            slots.release()
            break
        pool.submit(run, unit)


def _guard(state: _Progress, key: str, fn: Callable[[], None]) -> None:
    try:
        fn()
    except BaseException as exc:
        state.fail(key, exc)


def _explain_change(source: Source, state: _Progress) -> None:
    """When the object changed, that is the load's error: it explains whatever failed (a short read...)."""
    try:
        source.verify()
    except ObjectChangedError as changed:
        changed.__cause__ = state.error
        state.error = changed


def _raise(source: Source, groups: Sequence[Group], state: _Progress) -> None:
    exc = state.error
    owned = {t.spec.key for g in groups for t in g.targets if t.dest is not None}
    written = [k for k in state.done if k in owned]
    partial = sorted((state.started & owned) - set(written))
    if not written and not partial:
        raise exc
    detail = exc if isinstance(exc, LazyWeightsError) else f"{type(exc).__name__}: {exc}"
    raise PartialLoadError(
        f"{source.url}: load failed at weight {state.failed_key!r} ({detail}); the destination now holds "
        f"{len(written)} fully written weights {written[:10]}{'...' if len(written) > 10 else ''} and "
        f"{len(partial)} partly written {partial[:10]}",
        written,
        partial,
    ) from exc
