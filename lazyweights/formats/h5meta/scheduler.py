"""The level-by-level scheduler of the HDF5 metadata walk.

Every structure parser is a generator (see :mod:`._base`).  :func:`run` steps
all of them until each waits for bytes, serves what it can from the head and
earlier fetches, then issues ONE ``fetch_many`` with every missing range
(sorted and merged, with the guesses of :class:`~._base.Ahead`) and resumes
them all.  The number of ``fetch_many`` calls is thus the length of the
longest dependency chain — about the depth of the HDF5 tree — whatever the
number of objects.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ...errors import StorageError
from ._base import Ahead, Par, Task
from .tree import FetchStats

__all__ = ["MERGE_GAP", "FetchMany", "run"]

FetchMany = Callable[[list[tuple[int, int]]], Sequence[bytes]]
MERGE_GAP = 256  # ranges closer than this are fetched as one


class _Cache:
    """Bytes already fetched (and ``head``) as disjoint, sorted blocks, looked up by absolute range."""

    def __init__(self, head: bytes, at: int = 0):
        self.starts: list[int] = []
        self.blocks: list[bytes] = []
        if head:
            self.add(at, head)

    def add(self, start: int, data: bytes) -> None:
        """Insert the parts of a block not already held (blocks stay disjoint; nothing is re-copied)."""
        for off, n in self.uncovered(start, len(data)):
            i = bisect.bisect_left(self.starts, off)
            self.starts.insert(i, off)
            self.blocks.insert(i, data[off - start : off - start + n])

    def uncovered(self, off: int, n: int) -> list[tuple[int, int]]:
        """The parts of ``[off, off + n)`` no block holds."""
        out, pos, end = [], off, off + n
        i = max(bisect.bisect_right(self.starts, off) - 1, 0)
        while pos < end and i < len(self.starts):
            s, e = self.starts[i], self.starts[i] + len(self.blocks[i])
            if s >= end:
                break
            if e > pos:
                if s > pos:
                    out.append((pos, s - pos))
                pos = max(pos, e)
            i += 1
        if pos < end:
            out.append((pos, end - pos))
        return out

    def get(self, off: int, n: int) -> bytes | None:
        """The bytes of ``[off, off + n)`` if held (in one block or adjacent ones), else None."""
        i = bisect.bisect_right(self.starts, off) - 1
        if i < 0:
            return None
        start, data = self.starts[i], self.blocks[i]
        if off + n <= start + len(data):
            return data[off - start : off - start + n]
        if off >= start + len(data):
            return None
        parts, pos = [data[off - start :]], start + len(data)
        for j in range(i + 1, len(self.starts)):  # a range spanning adjacent blocks
            if pos >= off + n or self.starts[j] != pos:
                break
            parts.append(self.blocks[j][: off + n - pos])
            pos += len(parts[-1])
        return b"".join(parts) if pos >= off + n else None


class _Task:
    __slots__ = ("errors", "gen", "index", "parent", "remaining", "results")

    def __init__(self, gen: Task, parent: _Task | None, index: int):
        self.gen, self.parent, self.index = gen, parent, index
        self.results: list[Any] = []
        self.remaining = 0
        self.errors: list[BaseException] = []


def _unheld(cache: _Cache, start: int, end: int) -> bool:
    return cache.uncovered(start, end - start) == [(start, end - start)]


def _merge(
    ranges: list[tuple[int, int]], cache: _Cache, guessed: Iterable[tuple[int, int]] = ()
) -> list[tuple[int, int]]:
    """Sort and merge ranges; bridge gaps up to MERGE_GAP bytes between wanted ranges unless the gap is held.

    A gap after or before a guess (``guessed``) is not bridged: a right guess then costs no
    byte more than the reads it saves.
    """
    tagged = sorted({(off, n, False) for off, n in ranges} | {(off, n, True) for off, n in guessed})
    out: list[list] = []  # [start, end, whether the end is a guess's]
    for off, n, guess in tagged:
        if out and off <= out[-1][1]:
            if off + n > out[-1][1]:
                out[-1][1:] = [off + n, guess]
        elif out and not (guess or out[-1][2]) and off - out[-1][1] <= MERGE_GAP and _unheld(cache, out[-1][1], off):
            out[-1][1] = off + n
        else:
            out.append([off, off + n, guess])
    return [(a, b - a) for a, b, _ in out]


def run(gen: Task, fetch_many: FetchMany, head: bytes, stats: FetchStats, head_at: int = 0) -> Any:
    """Drive ``gen`` (and every sub-parser it spawns) to completion; return its result."""
    cache = _Cache(head, head_at)
    root = _Task(gen, None, 0)
    ready: deque[tuple[_Task, Any, BaseException | None]] = deque([(root, None, None)])
    waiting: list[tuple[_Task, list[tuple[int, int]]]] = []
    guesses: list[tuple[int, int]] = []  # Ahead ranges: fetched with the next level, waited for by no one
    outcome: dict[str, Any] = {}

    def finish(task: _Task, value: Any, exc: BaseException | None) -> None:
        parent = task.parent
        if parent is None:
            outcome["value"], outcome["exc"] = value, exc
            return
        if exc is not None:
            parent.errors.append(exc)
        else:
            parent.results[task.index] = value
        parent.remaining -= 1
        if parent.remaining == 0:
            err = parent.errors[0] if parent.errors else None
            ready.append((parent, None if err else parent.results, err))

    while True:
        while ready:
            task, value, exc = ready.popleft()
            try:
                req = task.gen.throw(exc) if exc is not None else task.gen.send(value)
            except StopIteration as stop:
                finish(task, stop.value, None)
                continue
            except Exception as e:
                finish(task, None, e)
                continue
            if isinstance(req, Ahead):
                guesses.extend(req.ranges)
                ready.append((task, None, None))
                continue
            if isinstance(req, Par):
                task.results = [None] * len(req.gens)
                task.errors = []
                task.remaining = len(req.gens)
                if not req.gens:
                    ready.append((task, [], None))
                for i, g in enumerate(req.gens):
                    ready.append((_Task(g, task, i), None, None))
                continue
            stats.requested += len(req)
            got = [cache.get(o, n) if n else b"" for o, n in req]
            if all(g is not None for g in got):
                ready.append((task, got, None))
            else:
                waiting.append((task, req))
        if not waiting:
            break
        _fetch_level(waiting, guesses, cache, fetch_many, stats, ready)
        waiting, guesses = [], []
    if outcome.get("exc") is not None:
        raise outcome["exc"]
    return outcome.get("value")


def _fetch_level(waiting, guesses, cache: _Cache, fetch_many: FetchMany, stats: FetchStats, ready) -> None:
    missing = [r for _, req in waiting for o, n in req if n for r in cache.uncovered(o, n)]
    guessed = [r for o, n in guesses for r in cache.uncovered(o, n)]
    stats.ahead += sum(n for _, n in _merge([], cache, guessed))
    merged = _merge(missing, cache, guessed)
    datas = fetch_many(merged)
    if len(datas) != len(merged):
        raise StorageError(f"fetch_many returned {len(datas)} blocks for {len(merged)} ranges")
    stats.calls += 1
    stats.ranges += len(merged)
    stats.per_call.append(len(merged))
    for (o, n), d in zip(merged, datas, strict=False):
        if len(d) != n:
            raise StorageError(f"fetch_many returned {len(d)} bytes for range 0x{o:x}+{n}")
        stats.bytes += n
        cache.add(o, bytes(d))
    for task, req in waiting:
        got = [cache.get(o, n) if n else b"" for o, n in req]
        if any(g is None for g in got):  # only if the cache lookup window missed: fetch again next level
            raise StorageError("internal: fetched range not found in cache")
        ready.append((task, got, None))
