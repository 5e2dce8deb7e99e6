"""A fuzz harness: mutate real checkpoints, load each through lazyweights, compare with h5py, classify.

    python -m tests.fuzz --seed 1 --count 10000 [--workers 2] [--timeout 20] [--memory-mb 2048]

Seeds are real files: the committed Keras 2 / tf-keras fixtures, Keras 3
``.weights.h5``, ``.keras`` and legacy ``.h5`` files written by Keras itself,
and generic HDF5 files written by h5py (chunked, filtered, ``libver`` latest,
big-endian).  Each input is one seed with mutations: byte-level (bit flips,
overwritten ranges, truncation, copied blocks) or structure-aware (bytes
inside the object headers of datasets, where datatype, dataspace, layout and
filter messages live).

Every input runs in a worker process (:mod:`tests.fuzz.worker`) under a time
and an address-space limit.  The worker loads the input with lazyweights,
reports a digest per weight, then reads the same datasets with h5py (the
oracle).  Outcomes:

- ``equal``: every weight lazyweights returned equals h5py's;
- ``DIFFERENT``: a weight differs from h5py's and from the undamaged original's — a silently wrong value;
- ``LazyWeightsError``: lazyweights refused the input with its own error;
- ``other``: lazyweights raised anything else;
- ``crash``: the worker died (a signal) while lazyweights ran;
- ``hang``: lazyweights exceeded the time limit;
- ``memory``: lazyweights hit the memory limit.

Inputs h5py cannot read either are still judged by lazyweights' behaviour
(a value read where h5py fails is counted as ``unverified``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

OUTCOMES = ("equal", "unverified", "DIFFERENT", "LazyWeightsError", "other", "crash", "hang", "memory")
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@dataclasses.dataclass
class Result:
    """The outcome of one mutated input."""

    seed_file: str
    mutation: str
    outcome: str
    detail: str = ""


# -- seeds ---------------------------------------------------------------------------------


def make_seeds(root: Path, keras3: bool = True) -> list[Path]:
    """Real files to mutate: committed Keras 2 fixtures, Keras 3 files from Keras, generic h5py files."""
    seeds = sorted(p for p in (FIXTURES / "keras2").glob("*.h5") if p.stat().st_size < 1 << 20)
    seeds += _generic_seeds(root)
    if keras3:
        seeds += _keras3_seeds(root)
    return seeds


def _generic_seeds(root: Path) -> list[Path]:
    import h5py
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for name, libver in (("generic_earliest.h5", "earliest"), ("generic_latest.h5", "latest")):
        path = root / name
        with h5py.File(path, "w", libver=libver) as f:
            g = f.create_group("layer/inner")
            g.attrs["note"] = "vlen text"
            g["w"] = rng.standard_normal((16, 8)).astype("f4")
            g.create_dataset("c", data=rng.standard_normal((32, 6)).astype(">f8"), chunks=(8, 6), compression="gzip")
            g.create_dataset("s", data=np.arange(40, dtype="i2").reshape(8, 5), chunks=(4, 5), shuffle=True)
            f["scalar"] = np.float32(3.5)
            f.attrs["names"] = np.array([b"a", b"bb"])
        out.append(path)
    return out


def _keras3_seeds(root: Path) -> list[Path]:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import warnings

    import keras

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5), keras.layers.LayerNormalization()])
    paths = [root / "k3.weights.h5", root / "k3.keras", root / "k3_legacy.h5"]
    model.save_weights(paths[0])
    model.save(paths[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(paths[2])
    return paths


# -- mutations -------------------------------------------------------------------------------


def _header_spans(path: Path) -> list[tuple[int, int]]:
    """Byte spans of the datasets' object headers (where their datatype/layout/filter messages are)."""
    import h5py

    spans: list[tuple[int, int]] = []
    try:
        with h5py.File(path, "r") as f:

            def visit(_name: str, obj: object) -> None:
                if isinstance(obj, h5py.Dataset):
                    spans.append((h5py.h5o.get_info(obj.id).addr + f.userblock_size, 256))

            f.visititems(visit)
    except Exception:  # a seed h5py cannot walk (a zip): byte-level mutations only
        return []
    return spans


def mutate(data: bytes, rng: random.Random, spans: list[tuple[int, int]]) -> tuple[bytes, str]:
    """One to three mutations of ``data``; returns the new bytes and a description."""
    buf = bytearray(data)
    done = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["flip", "overwrite", "copy", "truncate", "header", "header", "header"])
        if kind == "header" and spans:
            start, length = rng.choice(spans)
            at = min(len(buf) - 1, start + rng.randrange(length))
            buf[at] = rng.choice([0, 0xFF, buf[at] ^ (1 << rng.randrange(8)), rng.randrange(256)])
            done.append(f"header@{at}")
        elif kind == "truncate" and len(buf) > 64:
            cut = rng.randrange(len(buf) // 2, len(buf))
            del buf[cut:]
            done.append(f"truncate@{cut}")
        elif kind == "copy" and len(buf) > 128:
            n = rng.randint(8, 64)
            src, dst = rng.randrange(len(buf) - n), rng.randrange(len(buf) - n)
            buf[dst : dst + n] = buf[src : src + n]
            done.append(f"copy{src}->{dst}x{n}")
        elif kind == "overwrite":
            n = rng.randint(1, 16)
            at = rng.randrange(max(1, len(buf) - n))
            buf[at : at + n] = bytes(rng.randrange(256) for _ in range(n))
            done.append(f"overwrite@{at}x{n}")
        else:
            at = rng.randrange(len(buf))
            buf[at] ^= 1 << rng.randrange(8)
            done.append(f"flip@{at}")
    return bytes(buf), ",".join(done)


# -- workers --------------------------------------------------------------------------------


class Worker:
    """A persistent worker process, restarted after a crash, a hang or a memory kill."""

    def __init__(self, memory_mb: int):
        self.memory_mb = memory_mb
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        env = {**os.environ, "LW_FUZZ_MEMORY_MB": str(self.memory_mb), "PYTHONFAULTHANDLER": ""}
        return subprocess.Popen(
            [sys.executable, "-m", "tests.fuzz.worker"],
            cwd=str(FIXTURES.parent.parent),
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def run(self, path: Path, original: Path, timeout: float) -> dict:
        """Judge one input file (mutated from ``original``); the worker's JSON answer, or a crash/hang verdict."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        self.proc.stdin.write(f"{path}\t{original}\n")
        self.proc.stdin.flush()
        answer = _read_line(self.proc, timeout)
        if answer is None:
            return {"lw": self._verdict_after_death()}
        result = json.loads(answer)
        oracle = _read_line(self.proc, timeout)
        if oracle is None:  # h5py crashed or hung on this input: no oracle, lazyweights' verdict stands
            self._verdict_after_death()
            return {**result, "h5py": {}}
        return {**result, **json.loads(oracle)}

    def _verdict_after_death(self) -> str:
        if self.proc.poll() is None:  # still running: it hung
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            return "hang"
        self.proc = None
        return "crash"

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)


def _read_line(proc: subprocess.Popen, timeout: float) -> str | None:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(timeout=max(0.0, deadline - time.monotonic())):
            line = proc.stdout.readline()
            return line if line else None
    return None


def classify(answer: dict) -> tuple[str, str]:
    """The outcome of one worker answer: ``(outcome, detail)``."""
    lw = answer["lw"]
    if isinstance(lw, str):
        return lw, ""
    if "error" in lw:
        kind = "LazyWeightsError" if lw["lazyweights"] else "other"
        return kind, lw["error"]
    oracle = answer.get("h5py") or {}
    original = answer.get("original") or {}
    # wrong = neither what h5py reads from the damaged file nor the undamaged original's value (h5py can misread a
    # damaged index where lazyweights still finds the original bytes: that is not a wrong value)
    different = [k for k, d in lw["digests"].items() if k in oracle and d not in (oracle[k], original.get(k))]
    if different:
        return "DIFFERENT", ", ".join(different[:5])
    unverified = [k for k in lw["digests"] if k not in oracle]
    return ("unverified", ", ".join(unverified[:5])) if unverified else ("equal", "")


def run(
    seed: int, count: int, *, workers: int = 2, timeout: float = 20.0, memory_mb: int = 2048, keras3: bool = True
) -> list[Result]:
    """Fuzz ``count`` inputs from ``seed``; every input judged in a worker process.

    ``keras3=False`` leaves out the Keras 3 seeds, whose bytes change from run
    to run (random initial values, a save date): the remaining seeds are
    byte-identical every time, so a given ``seed`` replays the same inputs.
    """
    from concurrent.futures import ThreadPoolExecutor

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="lw-fuzz-") as tmp:
        root = Path(tmp)
        seeds = make_seeds(root, keras3=keras3)
        spans = {p: _header_spans(p) for p in seeds}
        originals = {p: p.read_bytes() for p in seeds}
        inputs = []
        for i in range(count):
            seed_file = rng.choice(seeds)
            data, what = mutate(originals[seed_file], rng, spans[seed_file])
            path = root / f"in{i}{''.join(seed_file.suffixes[-1:])}"
            path.write_bytes(data)
            inputs.append((seed_file, what, path))
        pool = [Worker(memory_mb) for _ in range(workers)]
        free = list(pool)

        def judge(item: tuple[Path, str, Path]) -> Result:
            worker = free.pop()
            try:
                outcome, detail = classify(worker.run(item[2], item[0], timeout))
            finally:
                free.append(worker)
            item[2].unlink(missing_ok=True)
            return Result(item[0].name, item[1], outcome, detail)

        with ThreadPoolExecutor(workers) as threads:
            results = list(threads.map(judge, inputs))
        for worker in pool:
            worker.close()
    return results


def table(results: list[Result]) -> str:
    """The outcome counts as a small text table."""
    counts = Counter(r.outcome for r in results)
    lines = [f"{'outcome':<18}{'inputs':>8}", "-" * 26]
    lines += [f"{o:<18}{counts.get(o, 0):>8}" for o in OUTCOMES]
    lines.append(f"{'total':<18}{len(results):>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--memory-mb", type=int, default=2048)
    parser.add_argument("--show", default="DIFFERENT,other,crash,hang,memory", help="outcomes to list one by one")
    args = parser.parse_args(argv)
    start = time.monotonic()
    results = run(args.seed, args.count, workers=args.workers, timeout=args.timeout, memory_mb=args.memory_mb)
    show = set(args.show.split(","))
    for r in results:
        if r.outcome in show:
            print(f"{r.outcome:<10} {r.seed_file:<28} {r.mutation:<40} {r.detail[:120]}")
    print(f"\nseed {args.seed}, {len(results)} inputs, {time.monotonic() - start:.0f} s")
    print(table(results))
    return 0
