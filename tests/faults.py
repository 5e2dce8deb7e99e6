"""The fault table: one HTTP load per storage fault, each with the outcome it must have.

Shared by ``tests/test_faults.py`` (every row must hold) and
``benchmarks/fault_table.py`` (prints the table for the README).  Each
scenario opens a checkpoint on the fault-injecting Range server
(:mod:`tests.servers`), injects its faults into the GETs of the load (after
the open), loads every weight, and compares with h5py's values: the outcome
is *correct values*, a named :class:`~lazyweights.LazyWeightsError`, or —
what must never happen — *WRONG VALUES* or a foreign exception.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import lazyweights as lw
import lazyweights.storage.options

from .servers import RangeHTTPServer

WEIGHTS = 48
ELEMENTS = 16 << 10  # 64 KiB per weight: 3 MiB in all
LOAD = {"concurrency": 4, "part_size": "256KiB"}
STALL_TIMEOUT = 0.5  # the read timeout the stall rows run under (the default is 60 s)


def write_checkpoint(path: Path, seed: int) -> dict[str, np.ndarray]:
    """A plain HDF5 checkpoint of :data:`WEIGHTS` float32 weights; returns the values h5py reads back."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        for i in range(WEIGHTS):
            f.create_dataset(f"layer{i:02d}/kernel", data=rng.standard_normal(ELEMENTS).astype("f4"))
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in sorted(_datasets(f))}


def _datasets(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


@dataclass(frozen=True)
class Scenario:
    """One row: faults for the load's GETs (built from the scenario's files), and the outcome it must have."""

    name: str
    faults: Callable[[Path, Path], list[tuple[Any, ...]]]  # (served file, other version) -> faults
    expected: str  # "correct values" or an error class name
    honour_if_match: bool = True
    read_timeout: float | None = None


def _ok(n: int) -> list[tuple[Any, ...]]:
    return [("ok", 0)] * n


def _replace(target: Path, other: Path) -> Callable[[], None]:
    def swap() -> None:
        tmp = target.with_suffix(".swap")
        shutil.copy(other, tmp)
        os.replace(tmp, target)  # same size, other values, a new ETag and Last-Modified

    return swap


SCENARIOS = [
    Scenario("HTTP 500 once", lambda f, o: [("status", 500)], "correct values"),
    Scenario("HTTP 503 twice", lambda f, o: [("status", 503)] * 2, "correct values"),
    Scenario("HTTP 429 with Retry-After: 1", lambda f, o: [("status", 429, 1)], "correct values"),
    Scenario("HTTP 503 on every attempt", lambda f, o: [("status", 503)] * 100, "StorageError"),
    Scenario("connection reset", lambda f, o: [("reset", 0)] * 2, "correct values"),
    Scenario("short body (last 1000 bytes cut)", lambda f, o: [("short", 1000)] * 2, "correct values"),
    Scenario("stall once (3 s)", lambda f, o: [("stall", 3)], "correct values", read_timeout=STALL_TIMEOUT),
    Scenario("stall on every attempt", lambda f, o: [("stall", 3)] * 100, "StorageError", read_timeout=STALL_TIMEOUT),
    Scenario(
        "object replaced mid-load, If-Match honoured",
        lambda f, o: [*_ok(2), ("before", _replace(f, o))],
        "ObjectChangedError",
    ),
    Scenario(
        "object replaced mid-load, If-Match ignored",
        lambda f, o: [*_ok(2), ("before", _replace(f, o))],
        "ObjectChangedError",
        honour_if_match=False,
    ),
    Scenario("Content-Range shifted by 4 bytes", lambda f, o: [*_ok(1), ("shift", 4)], "StorageError"),
    Scenario("200 with the whole file, Range ignored", lambda f, o: [*_ok(1), ("ignore_range", 0)], "StorageError"),
    Scenario("HTTP 403 mid-load", lambda f, o: [*_ok(2), ("status", 403)], "StorageError"),
    Scenario("object deleted mid-load", lambda f, o: [*_ok(2), ("before", f.unlink)], "ObjectChangedError"),
]


@dataclass
class Outcome:
    scenario: Scenario
    outcome: str  # "correct values", "WRONG VALUES", or the exception's class name
    message: str
    seconds: float
    gets: int

    @property
    def ok(self) -> bool:
        return self.outcome == self.scenario.expected


@contextlib.contextmanager
def _read_timeout(seconds: float | None) -> Iterator[None]:
    previous = lazyweights.storage.options.READ_TIMEOUT
    if seconds is not None:
        lazyweights.storage.options.READ_TIMEOUT = seconds
    try:
        yield
    finally:
        lazyweights.storage.options.READ_TIMEOUT = previous


def run(scenario: Scenario, server: RangeHTTPServer, root: Path) -> Outcome:
    """Load a fresh checkpoint through ``scenario``'s faults; classify what came out."""
    name = f"fault-{abs(hash(scenario.name)):x}.h5"
    served, other = root / name, root / f"{name}.other"
    expected = write_checkpoint(served, seed=1)
    write_checkpoint(other, seed=2)
    start = time.perf_counter()
    with _read_timeout(scenario.read_timeout), lw.open(f"{server.url}/{name}", index=False) as ckpt:
        server.reset()
        server.honour_if_match = scenario.honour_if_match
        server.inject(*scenario.faults(served, other))
        start = time.perf_counter()
        try:
            got = ckpt.load(**LOAD)
        except lw.LazyWeightsError as exc:
            outcome, message = type(exc).__name__, str(exc)
        except Exception as exc:  # a foreign exception: a row that fails
            outcome, message = f"foreign {type(exc).__module__}.{type(exc).__name__}", str(exc)
        else:
            wrong = [k for k in expected if not np.array_equal(got[k], expected[k])]
            outcome = "WRONG VALUES" if wrong else "correct values"
            message = f"{len(wrong)} of {len(expected)} weights differ from h5py's" if wrong else ""
        seconds = time.perf_counter() - start
        gets = server.count("GET")
        server.reset()
    return Outcome(scenario, outcome, message, seconds, gets)


def table(outcomes: list[Outcome]) -> str:
    """The outcomes as a Markdown table."""
    lines = [
        "| fault | expected | outcome | GETs | seconds |",
        "|---|---|---|---:|---:|",
    ]
    for o in outcomes:
        mark = "" if o.ok else " **(unexpected)**"
        lines.append(f"| {o.scenario.name} | {o.scenario.expected} | {o.outcome}{mark} | {o.gets} | {o.seconds:.2f} |")
    return "\n".join(lines)
