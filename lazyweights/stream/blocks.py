"""A checkpoint's values as a stream of blocks, in order within each weight, under the byte budget.

Writers (``mirror``, ``export``) and checkers (``verify``) consume weights as
:class:`Block` s: a weight no larger than ``block_bytes`` arrives whole, a
larger one as consecutive row blocks (along its first axis), first to last,
so a consumer can write it piecewise and hash it in order with bounded memory.

Whole weights are read by one budgeted :func:`~lazyweights.stream.execute`
(concurrently, in any order across weights); the blocks of a large weight are
read one after the other, each by its own budgeted execute (concurrent parts
within the block).  ``consume`` is called from one thread at a time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .. import geometry
from ..manifest import WeightSpec
from ..storage import Source
from .executor import execute
from .plan import Group, Target
from .report import LoadReport

__all__ = ["DEFAULT_BLOCK_BYTES", "Block", "Digests", "for_each_block", "le_bytes"]

DEFAULT_BLOCK_BYTES = geometry.ROW_BLOCK_BYTES


@dataclass(frozen=True)
class Block:
    """Rows ``[start, start + len(values))`` of ``spec`` (the whole weight when ``start == 0 and last``)."""

    spec: WeightSpec
    start: int
    values: np.ndarray  # C-contiguous, native byte order, the spec's dtype
    last: bool


Consume = Callable[[Block], None]


def block_rows(spec: WeightSpec, block_bytes: int, align: int = 1) -> list[tuple[int, int]] | None:
    """The ``[r0, r1)`` row blocks of ``spec`` (:func:`~lazyweights.geometry.row_blocks`), or None when read whole."""
    if spec.nbytes <= block_bytes or len(spec.shape) == 0 or spec.shape[0] <= 1:
        return None
    blocks = geometry.row_blocks(spec.shape, spec.np_dtype.itemsize, block_bytes, align)
    return blocks if len(blocks) > 1 else None


def for_each_block(
    source: Source,
    specs: Sequence[WeightSpec],
    consume: Consume,
    *,
    max_memory: int | None,
    concurrency: int | None = None,
    part_bytes: int | None = None,
    block_bytes: int | None = None,
    align: Callable[[WeightSpec], int] | None = None,
    progress: Callable[[int], None] | None = None,
    report: LoadReport,
) -> LoadReport:
    """Call ``consume`` with every block of every weight of ``specs``; fill and return ``report``.

    ``block_bytes`` (default: a quarter of ``max_memory``, at most 64 MiB)
    bounds a block; ``align(spec)`` makes row blocks a multiple of that many
    rows (a destination's chunk rows, so no chunk is written twice).
    """
    if block_bytes is None:
        block_bytes = DEFAULT_BLOCK_BYTES
        if max_memory is not None:
            block_bytes = max(1 << 20, min(DEFAULT_BLOCK_BYTES, max_memory // 4))
    opts = dict(max_memory=max_memory, concurrency=concurrency, part_bytes=part_bytes, progress=progress)
    whole, split = [], []
    for spec in specs:
        blocks = block_rows(spec, block_bytes, align(spec) if align else 1)
        (whole if blocks is None else split).append((spec, blocks))

    def whole_ready(spec: WeightSpec) -> Callable[[list[np.ndarray]], None]:
        return lambda arrays: consume(Block(spec, 0, arrays[0], True))

    groups = [Group([Target(spec)], on_ready=whole_ready(spec)) for spec, _ in whole]
    report.add(execute(source, groups, **opts, report=_part(report)))
    for spec, blocks in split:
        for r0, r1 in blocks:
            report.add(_read_rows(source, spec, r0, r1, consume, opts, _part(report)))
    report.loaded[:] = [s.key for s in specs]
    return report


def _read_rows(
    source: Source, spec: WeightSpec, r0: int, r1: int, consume: Consume, opts: dict, report: LoadReport
) -> LoadReport:
    """Read rows ``[r0, r1)`` of ``spec`` and consume them as one block."""
    last = r1 == spec.shape[0]
    if spec.layout == "contiguous":  # a row range is one byte range: read its parts concurrently
        row = math.prod(spec.shape[1:])
        sub = dataclasses.replace(
            spec, key=f"{spec.key}[{r0}:{r1}]", shape=(r1 - r0, *spec.shape[1:]),
            extent=geometry.element_extent(spec, r0 * row, r1 * row),
        )  # fmt: skip
        ready = lambda arrays: consume(Block(spec, r0, arrays[0], last))  # noqa: E731
        return execute(source, [Group([Target(sub)], on_ready=ready)], **opts, report=report)
    box = (slice(r0, r1), *geometry.full_box(spec.shape[1:]))  # chunked/zarr: only the chunks it covers
    ready = lambda arrays: consume(Block(spec, r0, arrays[0], last))  # noqa: E731
    return execute(source, [Group([Target(spec, box=box)], on_ready=ready)], **opts, report=report)


def _part(report: LoadReport) -> LoadReport:
    return LoadReport(url=report.url, format=report.format)


def le_bytes(values: np.ndarray) -> memoryview:
    """The little-endian, C-order bytes of ``values`` (what the SHA-256 of a weight is computed over)."""
    a = np.ascontiguousarray(values)
    big = a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and sys.byteorder == "big")
    if big and a.dtype.itemsize > 1:
        a = a.astype(a.dtype.newbyteorder("<"))
    return memoryview(a.reshape(-1).view(np.uint8))


class Digests:
    """A running SHA-256 per weight over :func:`le_bytes`, fed its blocks in order."""

    def __init__(self) -> None:
        self._running: dict[str, hashlib._Hash] = {}
        self.done: dict[str, str] = {}

    def update(self, block: Block) -> str | None:
        """Add ``block``; return the weight's hex digest when it was the last block."""
        key = block.spec.key
        h = self._running.setdefault(key, hashlib.sha256())
        h.update(le_bytes(block.values))
        if not block.last:
            return None
        del self._running[key]
        self.done[key] = h.hexdigest()
        return self.done[key]

    def discard(self, key: str) -> None:
        """Forget a weight's partial digest (its read failed part way)."""
        self._running.pop(key, None)
