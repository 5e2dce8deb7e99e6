"""Load plans are plain data: inspect them with no storage at all."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lazyweights.manifest import Chunk, Extent, WeightSpec
from lazyweights.stream import plan
from lazyweights.stream.plan import Group, PartSizes, Target

MiB = 1 << 20
PARTS = PartSizes(direct=32 * MiB, staged=8 * MiB)


def contiguous(key: str, shape: tuple[int, ...], offset: int = 4096, dtype: str = "<f4") -> WeightSpec:
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return WeightSpec(key, "layer", key, key, shape, dtype, "contiguous", extent=Extent(offset, nbytes))


def units_of(target: Target, *, is_local: bool = True, parts: PartSizes = PARTS) -> list[plan.Unit]:
    return plan.target_units(target, 0, plan.destination(target), parts, is_local)


def test_row_slice_of_a_contiguous_weight_is_one_unit() -> None:
    spec = contiguous("w", (100, 64), offset=1000)
    target = Target(spec, np.empty((10, 64), dtype="<f4"), box=(slice(20, 30), slice(0, 64)))
    units = units_of(target)
    assert len(units) == 1
    (unit,) = units
    assert isinstance(unit, plan.Direct)
    row = 64 * 4
    assert (unit.offset, unit.length) == (1000 + 20 * row, 10 * row)
    assert (unit.slot, unit.d0, unit.d1) == (0, 0, 640)
    assert unit.cost == 0 and unit.stored == unit.nbytes == 10 * row and unit.requests == 1


def test_whole_weight_splits_into_parts_covering_it() -> None:
    spec = contiguous("w", (1024, 1024))  # 4 MiB
    units = units_of(Target(spec, np.empty(spec.shape, "<f4")), parts=PartSizes(direct=1 * MiB, staged=MiB))
    assert [type(u) for u in units] == [plan.Direct] * 4
    assert [u.offset for u in units] == [4096 + i * MiB for i in range(4)]
    assert units[-1].d1 == spec.size and sum(u.length for u in units) == spec.nbytes


def test_cast_destination_is_staged() -> None:
    spec = contiguous("w", (16, 16))
    units = units_of(Target(spec, np.empty(spec.shape, "<f8")))
    assert [type(u) for u in units] == [plan.Staged]
    assert units[0].cost == spec.nbytes and units[0].dtype == np.dtype("<f4")


def test_column_slice_coalesces_into_spans() -> None:
    spec = contiguous("w", (64, 1024), offset=0)  # rows of 4 KiB: the 64 runs are near, one span
    box = (slice(0, 64), slice(100, 200))
    units = units_of(Target(spec, np.empty((64, 100), "<f4"), box=box))
    assert len(units) == 1
    (span,) = units
    assert isinstance(span, plan.Span)
    assert (span.first, span.last, span.run) == (100, 63 * 1024 + 200, 100)
    assert span.offsets == tuple(i * 1024 for i in range(64))
    assert span.offset == 100 * 4 and span.nbytes == 64 * 100 * 4
    assert span.stored == (span.last - span.first) * 4  # gaps included


def test_far_apart_runs_make_several_spans() -> None:
    spec = contiguous("w", (8, 1 << 20), offset=0)  # rows of 4 MiB: runs 4 MiB apart, beyond the gap
    units = units_of(Target(spec, np.empty((8, 4), "<f4"), box=(slice(0, 8), slice(0, 4))))
    assert len(units) == 8 and all(isinstance(u, plan.Span) and len(u.offsets) == 1 for u in units)


def test_chunked_plan_has_a_unit_per_meeting_chunk_and_a_fill_for_holes() -> None:
    chunks = tuple(Chunk((r, 0), Extent(1000 + r * 100, 100)) for r in (0, 16, 48))  # chunk at row 32 never written
    spec = WeightSpec("c", "l", "c", "c", (64, 8), "<f4", "chunked", chunk_shape=(16, 8), chunks=chunks)
    units = units_of(Target(spec, box=(slice(10, 40), slice(0, 8))))
    assert isinstance(units[0], plan.Fill)  # first: the chunks then overwrite it
    reads = units[1:]
    assert [u.chunk.origin for u in reads] == [(0, 0), (16, 0)]
    assert reads[0].src == (slice(10, 16), slice(0, 8)) and reads[0].dst == (slice(0, 6), slice(0, 8))
    assert reads[1].stored == 100 and reads[1].cost == 100 + 16 * 8 * 4


def test_remote_plan_batches_small_weights() -> None:
    biases = [contiguous(f"b{i}", (256,), offset=10_000 + i * 1024) for i in range(6)]
    targets = [Target(s, np.empty(s.shape, "<f4")) for s in biases]
    units = [u for slot, t in enumerate(targets) for u in plan.target_units(t, slot, t.dest, PARTS, False)]
    assert all(isinstance(u, plan.Direct) and u.cost == u.length for u in units)  # remote: bytes in flight
    batched = plan.batch_units(units, PARTS.staged)
    assert len(batched) == 1
    (batch,) = batched
    assert isinstance(batch, plan.Batch) and [r.slot for r in batch.reads] == list(range(6))
    assert batch.requests == 1  # 1 KiB apart: merged into one ranged read
    assert batch.stored == 5 * 1024 + 1024 and batch.nbytes == 6 * 1024
    assert {m.key for m in batch.members} == {s.key for s in biases}


def test_local_plan_is_not_batched_by_the_planner_and_large_reads_stay_alone() -> None:
    big = contiguous("big", (1 << 20,), offset=0)  # 4 MiB: above the batch threshold
    small = contiguous("small", (16,), offset=8 * MiB)
    units = [
        *plan.target_units(Target(big, np.empty(big.shape, "<f4")), 0, np.empty(big.shape, "<f4"), PARTS, False),
        *plan.target_units(Target(small, np.empty(16, "<f4")), 1, np.empty(16, "<f4"), PARTS, False),
    ]
    assert plan.batch_units(units, PARTS.staged) == units


def test_small_groups_coalesce_and_keep_their_callbacks() -> None:
    seen: list[tuple[str, int]] = []
    groups = [
        Group([Target(contiguous(f"g{i}", (8,)))], on_ready=lambda a, i=i: seen.append((f"g{i}", len(a))))
        for i in range(3)
    ]
    big = Group([Target(contiguous("big", (1 << 20,)))])
    merged = plan.coalesce_groups([*groups, big], PARTS.staged)
    assert len(merged) == 2 and merged[1] is big
    merged[0].on_ready([np.zeros(8)] * 3)
    assert seen == [("g0", 1), ("g1", 1), ("g2", 1)]


@pytest.mark.parametrize(
    ("max_memory", "staged"),
    [(None, plan.STAGED_PART_BYTES), (64 * MiB, 2 * MiB), (1 * MiB, 64 << 10)],
)
def test_part_sizes_under_a_budget(max_memory: int | None, staged: int) -> None:
    parts = PartSizes.choose(None, max_memory, concurrency=16)
    assert parts.staged == staged and parts.direct == plan.DIRECT_PART_BYTES
    if max_memory is not None:
        assert 2 * 16 * parts.staged <= max(max_memory, 2 * 16 * (64 << 10))


def test_remote_part_sizes_follow_the_load() -> None:
    assert PartSizes.choose(None, None, 16, remote_total=10 * MiB).staged == 1 * MiB  # floor
    assert PartSizes.choose(None, None, 16, remote_total=640 * MiB).staged == 10 * MiB
    assert PartSizes.choose(None, None, 16, remote_total=64 << 30).staged == 32 * MiB  # ceiling
    assert PartSizes.choose(4 * MiB, None, 16, remote_total=64 << 30) == PartSizes(4 * MiB, 4 * MiB)


def test_units_are_frozen_data() -> None:
    (unit,) = units_of(Target(contiguous("w", (4,)), np.empty(4, "<f4")))
    with pytest.raises(dataclasses.FrozenInstanceError):
        unit.offset = 0  # type: ignore[misc]
    assert unit == dataclasses.replace(unit)
