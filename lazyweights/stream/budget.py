"""A byte budget: the bound on memory held in flight by concurrent reads.

A small reusable primitive in the spirit of orbax's ``LimitInFlightBytes``:
``with budget.reserved(n):`` blocks until ``n`` more bytes fit under the
limit.  One reservation larger than the whole limit is admitted only when
nothing else is in flight, so a weight bigger than the budget still loads,
alone.  ``peak`` records the most bytes ever reserved at once, so tests and
benchmarks can assert the bound rather than assume it.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
from collections.abc import Iterator

import numpy as np

from ..errors import BudgetError, InvalidArgumentError

__all__ = ["DEFAULT_MAX_MEMORY", "ByteBudget", "allocate", "check_concurrency", "parse_bytes"]

# The one default budget of ``lw.load``, ``lwk.load_weights``/``load_model`` and ``lwt.load_state_dict``:
# large enough for full-speed remote reads (16 parts of 16 MiB), small beside any model worth streaming.
DEFAULT_MAX_MEMORY = "256MiB"

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}  # fmt: skip


def parse_bytes(value: int | str | None) -> int | None:
    """``"256MiB"`` → 268435456; ints pass through; None means unlimited."""
    if value is None or isinstance(value, int):
        if isinstance(value, int) and value <= 0:
            raise InvalidArgumentError(f"a byte budget must be positive, got {value}")
        return value
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise InvalidArgumentError(f"cannot read {value!r} as a size; expected e.g. 64MiB, 1.5GB or 1048576")
    return parse_bytes(int(float(match.group(1)) * _UNITS[match.group(2).lower()]))


def check_concurrency(concurrency: int | None) -> int | None:
    """``concurrency`` if valid: None (the default) or at least 1 read in flight."""
    if concurrency is not None and (isinstance(concurrency, bool) or int(concurrency) != concurrency
                                    or concurrency < 1):  # fmt: skip
        raise InvalidArgumentError(f"concurrency must be a whole number of reads >= 1 (or None), got {concurrency!r}")
    return concurrency


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def allocate(shape: tuple[int, ...], dtype: np.dtype, what: str) -> np.ndarray:
    """A new array for ``what`` (a weight), refused with :class:`BudgetError` before allocating when it cannot fit.

    A file may declare any shape: a never-written dataset of 10**12 elements
    is a 1 KiB file.  An array larger than the machine's physical memory is
    refused outright (numpy would otherwise reserve it lazily and the fill
    would exhaust memory), and a failed allocation becomes the same error.
    """
    nbytes = math.prod(shape) * dtype.itemsize
    memory = _physical_memory()
    if memory is not None and nbytes > memory:
        raise BudgetError(f"{what}: declared shape {shape} needs {nbytes} bytes, more than this machine's {memory}")
    try:
        return np.empty(shape, dtype=dtype)
    except MemoryError as exc:
        raise BudgetError(f"{what}: cannot allocate {nbytes} bytes for declared shape {shape}") from exc


class ByteBudget:
    """Admit reservations while the bytes reserved stay under ``limit`` (None: unlimited)."""

    def __init__(self, limit: int | None = None, held: int = 0):
        self.limit = limit
        self.held = held  # bytes held outside the reservations (a read-ahead copy of the object): counted too
        self.in_flight = 0
        self.peak = held
        self._pinned: dict[object, int] = {}
        self._cond = threading.Condition()

    def room(self) -> int | None:
        """The most one reservation can ever get (None: unlimited)."""
        return None if self.limit is None else self.limit - self.held

    def drop_held(self) -> None:
        """The held bytes are gone: their room goes to reservations."""
        with self._cond:
            self.held = 0
            self._cond.notify_all()

    def _fits(self, nbytes: int, owner: object) -> bool:
        if self.limit is None or self.held + self.in_flight + nbytes <= self.limit:
            return True
        return self.in_flight == self._pinned.get(owner, 0)  # nothing in flight but the owner's pinned bytes

    def acquire(self, nbytes: int, owner: object = None, pin: bool = False) -> None:
        """Block until ``nbytes`` fit.  ``pin=True`` marks them as ``owner``'s long-lived reservation."""
        with self._cond:
            self._cond.wait_for(lambda: self._fits(nbytes, owner))
            self.in_flight += nbytes
            if pin:
                self._pinned[owner] = self._pinned.get(owner, 0) + nbytes
            self.peak = max(self.peak, self.held + self.in_flight)

    def release(self, nbytes: int, owner: object = None, pin: bool = False) -> None:
        with self._cond:
            self.in_flight -= nbytes
            if pin:
                left = self._pinned.pop(owner, 0) - nbytes
                if left:
                    self._pinned[owner] = left
            self._cond.notify_all()

    @contextlib.contextmanager
    def reserved(self, nbytes: int) -> Iterator[None]:
        self.acquire(nbytes)
        try:
            yield
        finally:
            self.release(nbytes)
