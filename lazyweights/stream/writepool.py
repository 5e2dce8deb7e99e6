"""Budgeted background writes: on local threads or on a ``dask.distributed`` Client.

A writer hands each block of values to :meth:`WritePool.submit`, which
reserves the block's bytes from a :class:`~lazyweights.budget.ByteBudget` and
releases them when the write is done — so values waiting to be written never
exceed the budget, whoever runs the writes.  With a Client, blocks are
scattered to workers and written there; the function submitted must be
importable on the workers (a module-level function).

:meth:`WritePool.after` runs a callback (in the submitting thread) once every
write submitted so far for a key has succeeded: how a mirror marks a weight
done only when all its chunks are stored.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .budget import ByteBudget

__all__ = ["WritePool"]


class WritePool:
    """Run ``fn(*args, values)`` writes in the background with at most ``max_bytes`` of values pending."""

    def __init__(self, *, max_bytes: int | None, threads: int, client: Any = None, copies: int = 2):
        self.budget = ByteBudget(max_bytes)
        self.copies = copies  # bytes held per value byte while a write runs (the values + the writer's encoded copy)
        self.client = client
        self._pool = None if client is not None else ThreadPoolExecutor(threads, thread_name_prefix="lazyweights-w")
        self._futures: dict[str, list[Any]] = {}
        self._callbacks: list[tuple[str, Callable[[], None]]] = []
        self.bytes_written = 0

    def submit(self, key: str, fn: Callable[..., Any], *args: Any, values: Any) -> None:
        """Write ``values`` with ``fn(*args, values)``; blocks while the pending bytes are over budget."""
        nbytes = int(values.nbytes) * self.copies
        self.budget.acquire(nbytes)
        try:
            if self.client is not None:
                data = self.client.scatter(values, hash=False)
                future = self.client.submit(fn, *args, data, pure=False)
            else:
                future = self._pool.submit(fn, *args, values)
        except BaseException:
            self.budget.release(nbytes)
            raise
        future.add_done_callback(lambda _f: self.budget.release(nbytes))
        self._futures.setdefault(key, []).append(future)
        self.bytes_written += int(values.nbytes)
        self._run_ready(block=False)

    def after(self, key: str, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once all writes submitted for ``key`` have succeeded."""
        self._callbacks.append((key, callback))
        self._run_ready(block=False)

    def close(self) -> None:
        """Wait for every write, run the remaining callbacks, raise the first write error."""
        try:
            self._run_ready(block=True)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)

    def cancel(self) -> None:
        """Drop pending writes after a failure elsewhere."""
        for futures in self._futures.values():
            for future in futures:
                future.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _run_ready(self, *, block: bool) -> None:
        ready = [(k, cb) for k, cb in self._callbacks if block or all(f.done() for f in self._futures.get(k, []))]
        self._callbacks = [item for item in self._callbacks if item not in ready]
        for key, callback in ready:
            for future in self._futures.pop(key, []):
                future.result()  # raises the write's error in the submitting thread
            callback()
        if block:
            for futures in self._futures.values():
                for future in futures:
                    future.result()
