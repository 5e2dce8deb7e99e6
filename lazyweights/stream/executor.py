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

What to read is planned as plain data by :mod:`lazyweights.stream.plan`
(frozen units: offsets, chunks, boxes, destination slots); this module only
runs units, through the one dispatch function :func:`run_unit`, and owns the
budget, the threads, progress and errors.  Every load ends with
``source.verify()``.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import geometry
from ..errors import BudgetError, FormatError, LazyWeightsError, ObjectChangedError, PartialLoadError, UnsupportedError
from ..formats.tf.crc import crc32c, crc32c_of_parts, mask
from ..read import hdf5, zarr
from ..read.constant import constant_values, fill_value
from ..storage import Source
from . import plan
from .budget import ByteBudget, check_concurrency
from .plan import Group, Target
from .report import LoadReport

__all__ = ["Group", "LoadReport", "Target", "execute", "run_unit"]


def _flat(array: np.ndarray) -> np.ndarray:
    return array.reshape(-1)


def _assign_flat(dest: np.ndarray, e0: int, e1: int, values: np.ndarray) -> None:
    if dest.flags.c_contiguous:
        dest.reshape(-1)[e0:e1] = values
    else:
        dest.flat[e0:e1] = values


def _reader(source: Source, unit: plan.Unit) -> Source:
    """The Source ``unit`` reads: the source itself, or the store member it names."""
    if unit.member is None:
        return source
    member = source.member(unit.member)
    if member is None:
        raise ObjectChangedError(f"{source.url.rstrip('/')}/{unit.member}: the object disappeared since it was opened")
    return member


def _ranges(unit: plan.Unit) -> list[tuple[int, int]] | None:
    """The byte ranges a plain unit reads (None: a unit whose reads are its reader's business)."""
    if isinstance(unit, plan.Batch):
        return unit.ranges
    if isinstance(unit, plan.Direct | plan.Staged | plan.Span):
        return [(unit.offset, unit.stored)]
    if isinstance(unit, plan.PieceRead):
        return [(unit.piece.extent.offset, unit.piece.extent.length)]
    if isinstance(unit, plan.HDF5Chunk):
        return [(unit.chunk.extent.offset, unit.chunk.extent.length)]
    return None


def wire_cost(source: Source, unit: plan.Unit) -> tuple[int, int]:
    """``(bytes, requests)`` ``unit`` costs in storage: ranges the open already fetched (a remote
    object's head or tail, or all of it read ahead) are served from memory and cost none, so the report
    counts the wire."""
    ranges = None if source.is_local else _ranges(unit)
    if ranges is None:
        return unit.stored, unit.requests
    reader = _reader(source, unit)
    rest = [(off, n) for off, n in ranges if not reader.holds(off, n)]
    if len(rest) == len(ranges):
        return unit.stored, unit.requests
    spans = geometry.merge_ranges(rest, max_overhead=unit.max_overhead if isinstance(unit, plan.Batch) else None)
    return sum(end - start for start, end in spans), len(spans)


def run_unit(source: Source, unit: plan.Unit, arrays: Sequence[np.ndarray]) -> list[tuple[plan.Unit, memoryview]]:
    """Make the I/O calls ``unit`` describes, filling its destination among ``arrays`` (the group's).

    Returns the raw bytes each plain part read (:class:`~plan.Direct`,
    :class:`~plan.Staged`, a batch's reads), still hot, for checksums.
    """
    reader = _reader(source, unit)
    if isinstance(unit, plan.Direct):
        view = geometry.byte_view(_flat(arrays[unit.slot])[unit.d0 : unit.d1])
        reader.readinto(unit.offset, view)
        return [(unit, view)]
    if isinstance(unit, plan.Staged):
        stage = np.empty(unit.d1 - unit.d0, dtype=unit.dtype)
        reader.readinto(unit.offset, geometry.byte_view(stage))
        _assign_flat(arrays[unit.slot], unit.d0, unit.d1, stage)
        return [(unit, geometry.byte_view(stage))]
    if isinstance(unit, plan.Batch):
        views = [(r, geometry.byte_view(_flat(arrays[r.slot])[r.d0 : r.d1])) for r in unit.reads]
        reader.readinto_many([(r.offset, view) for r, view in views], max_overhead=unit.max_overhead)
        return views
    if isinstance(unit, plan.Span):
        stage = np.empty(unit.last - unit.first, dtype=unit.dtype)
        reader.readinto(unit.offset, geometry.byte_view(stage))
        dest, run = arrays[unit.slot], unit.run
        for n, o in enumerate(unit.offsets):
            _assign_flat(dest, (unit.index + n) * run, (unit.index + n + 1) * run, stage[o : o + run])
    elif isinstance(unit, plan.PieceRead):
        piece = unit.piece
        stage = np.empty(piece.shape, dtype=unit.dtype)
        reader.readinto(piece.extent.offset, geometry.byte_view(stage))
        if piece.crc32c is not None:
            check_crc32c(reader.url, unit.key, piece.crc32c, crc32c(geometry.byte_view(stage)))
        arrays[unit.slot][unit.dst] = stage[unit.src]
    elif isinstance(unit, plan.HDF5Chunk):
        values = hdf5.read_chunk(reader, unit.spec, unit.chunk)
        for slot, src, dst in unit.placements():
            arrays[slot][dst] = values[src]
    elif isinstance(unit, plan.H5py):
        arrays[unit.slot][...] = hdf5.read_h5py_box(reader, unit.spec, unit.box)
    elif isinstance(unit, plan.Fill):
        arrays[unit.slot][...] = fill_value(unit.spec)
    elif isinstance(unit, plan.Constant):
        arrays[unit.slot][...] = constant_values(unit.spec)[unit.box]
    elif isinstance(unit, plan.ZarrPiece):
        unit.run()
    else:  # pragma: no cover - a unit kind without a runner is a bug
        raise TypeError(f"no runner for {type(unit).__name__}")
    return []


def check_crc32c(url: str, key: str, expected_masked: int, crc: int) -> None:
    """Refuse a weight whose bytes' CRC32C (``crc``, unmasked) differs from the masked one the file recorded."""
    if mask(crc) != expected_masked:
        raise FormatError(
            f"{url}: tensor {key!r} fails its CRC32C check (stored {expected_masked:#010x}, computed "
            f"{mask(crc):#010x}); the data file is corrupt"
        )


class _Checksums:
    """Per-weight CRC32C of whole-weight reads, built from parts that finish in any order.

    Each part's CRC is taken from its bytes right after they land (no second
    pass over the weight); when a weight's parts cover its extent, the part
    CRCs are folded in file order with ``crc32c_combine`` and compared.
    Parts run concurrently, so folding beats reading a weight's parts in order.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.expected: dict[tuple[int, str], tuple[str, int, int]] = {}  # (slot, key) -> (url, crc, length)
        self.parts: dict[tuple[int, str], list[tuple[int, int, int]]] = {}

    def expect(self, source: Source, slot: int, target: Target) -> None:
        spec = target.spec
        whole = target.box is None or target.box == geometry.full_box(spec.shape)
        if spec.crc32c is None or spec.extent is None or not whole:
            return  # a region's bytes are not the whole stored tensor: no checksum covers them
        url = f"{source.url.rstrip('/')}/{spec.member}" if spec.member else source.url
        self.expected[(slot, spec.key)] = (url, spec.crc32c, spec.extent.length)
        self.parts[(slot, spec.key)] = []

    def add(self, read: list[tuple[plan.Unit, memoryview]]) -> None:
        for part, view in read:
            ident = (getattr(part, "slot", -1), part.key)
            if ident not in self.expected:
                continue
            done = self._add(ident, part, view)
            if done is not None:
                url, expected, _ = self.expected[ident]
                check_crc32c(url, part.key, expected, done)

    def _add(self, ident: tuple[int, str], part: plan.Unit, view: memoryview) -> int | None:
        value = crc32c(view)
        with self.lock:
            parts = self.parts[ident]
            parts.append((part.offset, value, view.nbytes))
            if sum(n for _, _, n in parts) < self.expected[ident][2]:
                return None
        return crc32c_of_parts((c, n) for _, c, n in sorted(parts))


def _zarr_units(source: Source, target: Target, dest: np.ndarray, merge_bytes: int) -> list[plan.Unit]:
    """One piece per zarr chunk meeting the region (raw chunks read straight into ``dest`` when they can be).

    Remote raw chunks end to end in a shard merge into reads of up to ``merge_bytes`` (a staged part).
    """
    spec = target.spec
    return [
        plan.ZarrPiece(key=spec.key, cost=r.cost, stored=r.stored, nbytes=r.nbytes, run=r.run)
        for r in zarr.chunk_reads(source, spec, dest, target.region, merge_bytes)
    ]


def _inline(unit: plan.Unit) -> bool:
    """Units run by the submitting thread, before the group's reads: they must precede them (fills)."""
    return isinstance(unit, (plan.Fill, plan.Constant))


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

    def finish(self, unit: plan.Unit, wire: tuple[int, int]) -> None:
        with self.lock:
            self.stored += wire[0]
            self.loaded += unit.nbytes
            self.requests += wire[1]
            for part in unit.members:
                self.started.add(part.key)
                self.pending[part.key] -= 1
                if self.pending[part.key] == 0:
                    self.done.append(part.key)
        if self.callback is not None and unit.nbytes:
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
    concurrency = check_concurrency(concurrency) or (max(4, 2 * (os.cpu_count() or 1)) if source.is_local else 16)
    remote_total = None if source.is_local else sum(t.nbytes for g in groups for t in g.targets)
    budget = ByteBudget(max_memory, held=_held_ahead(source, max_memory))
    report.read_ahead = budget.held
    parts = plan.PartSizes.choose(part_bytes, budget.room(), concurrency, remote_total)  # under what is left
    state = _Progress(progress)
    slots = threading.BoundedSemaphore(2 * concurrency)
    start = time.perf_counter()
    batches = groups if source.is_local else plan.coalesce_groups(groups, parts.staged)
    pool = ThreadPoolExecutor(concurrency, thread_name_prefix="lazyweights")
    try:
        for group in batches:
            if state.error is not None:
                break
            _submit_group(source, group, budget, slots, pool, state, parts)
    except BaseException as exc:  # KeyboardInterrupt included: stop the units still queued, then report
        state.fail("", exc)
    finally:
        _drain(pool, state)
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


def _held_ahead(source: Source, max_memory: int | None) -> int:
    """Bytes the source holds read ahead (:meth:`Source.read_whole`), counted in the budget as in flight;
    dropped instead (the load then reads by range) when they leave less than an eighth of the budget."""
    held = source.held_bytes
    if held and max_memory is not None and 8 * held > 7 * max_memory:
        source.release_whole()
        return 0
    return held


def _submit_group(
    source: Source,
    group: Group,
    budget: ByteBudget,
    slots: threading.BoundedSemaphore,
    pool: ThreadPoolExecutor,
    state: _Progress,
    parts: plan.PartSizes,
) -> None:
    owner = object()
    held = sum(t.nbytes for t in group.targets if t.dest is None)
    budget.acquire(held, owner, pin=True)
    arrays = [plan.destination(t) for t in group.targets]
    units: list[plan.Unit] = []
    keys: dict[str, None] = {}
    checksums = _Checksums()
    for slot, (target, dest) in enumerate(zip(group.targets, arrays, strict=True)):
        checksums.expect(source, slot, target)
        if target.spec.layout == "zarr":
            merge = parts.staged if budget.limit is None else min(parts.staged, budget.limit // 2)
            mine = _zarr_units(source, target, dest, merge)
        else:
            try:
                mine = plan.target_units(target, slot, dest, parts, source.is_local)
            except UnsupportedError as exc:  # plans know no URL: name the file here
                raise UnsupportedError(f"{source.url}: {exc}") from exc
        keys[target.spec.key] = None
        units.extend(mine)
    units = plan.share_chunk_reads(units)
    counts = Counter(unit.key for unit in units)
    for key in keys:  # a weight is done when its units are (none: at once)
        state.expect(key, counts[key])
    if not source.is_local:
        units = plan.batch_units(units, parts.staged)
    remaining = [len(units)]
    lock = threading.Lock()

    def complete() -> None:
        try:
            if group.on_ready is not None and state.error is None:
                with state.callback_lock:
                    group.on_ready(arrays)
        finally:
            budget.release(held, owner, pin=True)

    def run(unit: plan.Unit) -> None:
        try:
            if state.error is None:
                wire = wire_cost(source, unit)
                read = run_unit(source, unit, arrays)
                if checksums.expected:
                    checksums.add(read)
                state.finish(unit, wire)
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
        _make_room(source, unit, budget)
        if isinstance(unit, plan.HDF5Chunk | plan.ZarrPiece | plan.H5py):
            _check_cost(source, unit, budget)
        budget.acquire(unit.cost, owner)
        slots.acquire()
        if state.error is not None:
            budget.release(unit.cost, owner)
            slots.release()
            break
        if _inline(unit):
            run(unit)
        else:
            pool.submit(run, unit)


def _drain(pool: ThreadPoolExecutor, state: _Progress) -> None:
    """Wait for the pool's threads to end; an interrupt while waiting stops the queued units and waits again.

    Nothing is left behind: no worker thread outlives the load, so no read
    still holds a descriptor or a connection when the caller gets the error.
    """
    while True:
        try:
            pool.shutdown(wait=True, cancel_futures=state.error is not None)
            return
        except BaseException as exc:
            state.fail("", exc)


def _make_room(source: Source, unit: plan.Unit, budget: ByteBudget) -> None:
    """A unit that needs more than the budget leaves beside the read-ahead copy drops the copy (the rest
    of the load reads by range): never a refusal or a stall the plain load would not have."""
    room = budget.room()
    if budget.held and room is not None and unit.cost > room:
        source.release_whole()
        budget.drop_held()


def _check_cost(source: Source, unit: plan.Unit, budget: ByteBudget) -> None:
    """Refuse a unit that alone needs more than the whole budget (a chunk that decodes to more than it)."""
    if budget.limit is not None and unit.cost > budget.limit:
        raise BudgetError(
            f"{source.url}: weight {unit.key!r}: one stored chunk needs {unit.cost} bytes to fetch and decode, "
            f"more than max_memory={budget.limit}; raise max_memory to at least that, or pass max_memory=None"
        )


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
    detail = exc if isinstance(exc, LazyWeightsError) else f"{type(exc).__name__}: {exc}".rstrip(": ")
    where = f"at weight {state.failed_key!r}" if state.failed_key else "(interrupted)"
    raise PartialLoadError(
        f"{source.url}: load failed {where} ({detail}); the destination now holds "
        f"{len(written)} fully written weights {written[:10]}{'...' if len(written) > 10 else ''} and "
        f"{len(partial)} partly written {partial[:10]}",
        written,
        partial,
    ) from exc
