"""A fuzz harness: mutate real checkpoints, load each through lazyweights, compare with h5py, classify.

    python -m tests.fuzz --seed 1 --count 10000 [--workers 2] [--timeout 20] [--memory-mb 2048]

Seeds are real files: the committed Keras 2 weights and tf-keras full-model
fixtures, Keras 3 ``.weights.h5``, ``.keras`` and legacy ``.h5`` files written
by Keras itself, generic HDF5 files written by h5py (chunked, filtered,
``libver`` latest, big-endian), zarr mirrors written by ``lw.mirror`` (v3
sharded with CRC32C, v3 unsharded zstd, v3 unchecksummed, v2) and the
committed TensorFlow checkpoints.  Each input is one seed with mutations:
byte-level (bit flips, overwritten ranges, truncation, copied blocks) or
structure-aware: bytes inside the object headers of datasets and groups
(datatype, dataspace, layout, filter, attribute and link messages); a field
of a zarr array's ``zarr.json`` / ``.zarray`` replaced by another plausible
value; bytes inside a block of a TensorFlow ``.index`` with the block's
CRC32C recomputed, so the damage reaches the entry parser.  A store seed (a
zarr mirror, a TensorFlow checkpoint folder) is copied and one of its files
mutated.

Every input runs in a worker process (:mod:`tests.fuzz.worker`) under a time
and an address-space limit.  The worker loads the input with lazyweights,
reports a digest per weight, then reads the same weights with the format's
oracle: h5py for HDF5 and ``.keras``, zarr-python for zarr mirrors, and for
TensorFlow checkpoints the bytes TensorFlow wrote (the fixtures' oracle
arrays; a damaged checkpoint must give exactly those or an error).  Outcomes:

- ``equal``: every weight lazyweights returned equals the oracle's;
- ``DIFFERENT``: a weight differs from the oracle's and from the undamaged original's — a silently wrong value;
- ``LazyWeightsError``: lazyweights refused the input with its own error;
- ``other``: lazyweights raised anything else;
- ``crash``: the worker died (a signal) while lazyweights ran;
- ``hang``: lazyweights exceeded the time limit;
- ``memory``: lazyweights hit the memory limit.

Inputs the oracle cannot read either are still judged by lazyweights' behaviour
(a value read where the oracle fails is counted as ``unverified``).

``--results FILE`` appends one JSON line per input, so a long campaign can run
as seeded chunks and be summed with ``--summarize FILE``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BAD = ("DIFFERENT", "other", "crash", "hang", "memory")
OUTCOMES = ("equal", "unverified", "DIFFERENT", "LazyWeightsError", "other", "crash", "hang", "memory")
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@dataclasses.dataclass
class Result:
    """The outcome of one mutated input."""

    seed_file: str
    mutation: str
    outcome: str
    detail: str = ""
    fmt: str = ""


# -- seeds ---------------------------------------------------------------------------------


def make_seeds(root: Path, keras3: bool = True) -> list[Path]:
    """Real files to mutate: committed Keras 2 / tf-keras fixtures, Keras 3 files from Keras, generic h5py files,
    zarr mirrors and TensorFlow checkpoint folders (a store seed is a directory)."""
    seeds = sorted(p for p in (FIXTURES / "keras2").glob("*.h5") if p.stat().st_size < 1 << 20)
    seeds += _generic_seeds(root)
    seeds += _zarr_seeds(root, seeds[0])
    seeds += _tf_seeds(root)
    if keras3:
        seeds += _keras3_seeds(root)
    return seeds


def seed_format(seed: Path) -> str:
    """The format a seed stands for, for the per-format table."""
    name = seed.name
    if seed.suffix == ".zarr":
        return "zarr mirror"
    if seed.suffix == ".tf":
        return "TensorFlow checkpoint"
    if name.startswith("generic"):
        return "generic HDF5"
    if name.endswith(".weights.h5"):
        return "Keras 3 .weights.h5"
    if name.endswith(".keras"):
        return "Keras 3 .keras"
    if name.startswith("k3_legacy"):
        return "Keras 3 legacy .h5"
    return "tf-keras full model .h5" if "_full" in name else "Keras 2 weights .h5"


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


def _zarr_seeds(root: Path, checkpoint: Path) -> list[Path]:
    """Mirrors of one Keras 2 fixture as ``lw.mirror`` writes them: v3 sharded with CRC32C (the default), v3
    one object per chunk with zstd and small chunks, v3 without checksums (an unverified mirror), and v2."""
    import lazyweights as lw

    kinds = {
        "mirror_v3.zarr": {},
        "mirror_v3_zstd.zarr": {"compressor": "zstd", "chunk_bytes": 4096, "shard_bytes": None},
        "mirror_v3_unverified.zarr": {"checksum": False, "chunk_bytes": 4096},
        "mirror_v2.zarr": {"zarr_format": 2, "chunk_bytes": 4096},
    }
    out = []
    for name, options in kinds.items():
        lw.mirror(str(checkpoint), str(root / name), **options)
        out.append(root / name)
    return out


_TF_FILES = re.compile(r"^(checkpoint|.*\.index|.*\.data-\d{5}-of-\d{5})$")


def _tf_seeds(root: Path) -> list[Path]:
    """The committed TensorFlow checkpoints small enough to copy per input (their oracle files stay beside them)."""
    out = []
    for folder in sorted((FIXTURES / "tf").iterdir()):
        if folder.is_dir() and sum(f.stat().st_size for f in folder.iterdir()) < 1 << 20:
            shutil.copytree(folder, root / f"{folder.name}.tf")
            out.append(root / f"{folder.name}.tf")
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
    """Byte spans of the object headers of every group and dataset (datatype, dataspace, layout, filter,
    attribute and link messages)."""
    import h5py

    if path.is_dir():
        return _tf_block_spans(path) if path.suffix == ".tf" else []
    spans: list[tuple[int, int]] = []
    try:
        with h5py.File(path, "r") as f:

            def visit(_name: str, obj: object) -> None:
                spans.append((h5py.h5o.get_info(obj.id).addr + f.userblock_size, 256))

            visit("/", f)
            f.visititems(visit)
    except Exception:  # a seed h5py cannot walk (a zip): byte-level mutations only
        return []
    return spans


def _tf_block_spans(folder: Path) -> list[tuple[int, int]]:
    """The blocks of the TensorFlow index in ``folder`` as ``(offset, size)``: data blocks, then the index block."""
    from lazyweights.formats.tf.sstable import FOOTER_SIZE, BlockHandle, iter_block

    index = next(folder.glob("*.index")).read_bytes()
    footer = index[-FOOTER_SIZE:]
    _, pos = BlockHandle.decode(footer)
    top, _ = BlockHandle.decode(footer, pos)
    blocks = [BlockHandle.decode(v)[0] for _, v in iter_block(index[top.offset : top.offset + top.size], "index")]
    return [(b.offset, b.size) for b in (*blocks, top)]


def mutate(data: bytes, rng: random.Random, spans: list[tuple[int, int]]) -> tuple[bytes, str]:
    """One to three mutations of ``data``; returns the new bytes and a description."""
    buf = bytearray(data)
    done = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["flip", "overwrite", "copy", "truncate", "header", "header", "header"])
        if kind == "header" and spans:
            start, length = rng.choice(spans)
            at = min(len(buf) - 1, start + rng.randrange(length))
            buf[at] = _new_byte(buf[at], rng)
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


def _new_byte(old: int, rng: random.Random) -> int:
    return rng.choice([0, 0xFF, old ^ (1 << rng.randrange(8)), rng.randrange(256)])


def mutate_store(seed: Path, dest: Path, rng: random.Random, spans: list[tuple[int, int]]) -> str:
    """Copy the store folder ``seed`` to ``dest`` with one of its files damaged; returns a description.

    zarr: half the time one field of an array's metadata is replaced (structure-aware), else any file's bytes.
    TensorFlow: half the time bytes inside an index block with its CRC32C recomputed, else any file's bytes.
    """
    files = sorted(p.relative_to(seed) for p in seed.rglob("*") if p.is_file() and _is_store_file(seed, p))
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(seed / rel, dest / rel)
    structured = rng.random() < 0.5
    if seed.suffix == ".zarr" and structured:
        metas = [r for r in files if r.name in ("zarr.json", ".zarray") and r.parent != Path(".")]
        rel = rng.choice(metas)
        return f"{rel}:" + _mutate_zarr_meta(dest / rel, rng)
    if seed.suffix == ".tf" and structured and spans:
        rel = next(r for r in files if r.suffix == ".index")
        return f"{rel}:" + _mutate_tf_block(dest / rel, rng, spans)
    rel = rng.choice(files)
    data, what = mutate((dest / rel).read_bytes(), rng, [])
    (dest / rel).write_bytes(data)
    return f"{rel}:{what}"


def _is_store_file(seed: Path, path: Path) -> bool:
    return seed.suffix != ".tf" or bool(_TF_FILES.match(path.name))


# plausible replacements for the fields of a zarr array's metadata (v3 zarr.json and v2 .zarray)
_ZARR_VALUES: dict[str, list[object]] = {
    "shape": [[0], [1 << 40], [3, 3, 3, 3], [-1], [2]],
    "chunk_shape": [[1], [1 << 30], [0], [7, 7]],
    "chunks": [[1], [1 << 30], [0], [7, 7]],
    "data_type": ["float64", "int8", "uint16", "bool", "complex64", "float16", "bogus"],
    "dtype": ["<f8", ">f4", "|i1", "<u2", "|b1", "<c8", "<f2", "bogus"],
    "fill_value": [None, "NaN", 1e300, -7, "x"],
    "order": ["F", "Q"],
    "codecs": [[], [{"name": "bytes", "configuration": {"endian": "big"}}], [{"name": "gzip"}], "nope"],
    "compressor": [None, {"id": "zlib", "level": 1}, {"id": "nope"}],
    "filters": [[{"id": "delta", "dtype": "<f4"}], "x"],
    "zarr_format": [2, 3, 4],
    "node_type": ["group"],
}


def _mutate_zarr_meta(path: Path, rng: random.Random) -> str:
    """Replace one field (at any depth) of the JSON document at ``path``, or damage the text when it is not JSON."""
    try:
        doc = json.loads(path.read_text())
    except ValueError:
        data, what = mutate(path.read_bytes(), rng, [])
        path.write_bytes(data)
        return what
    slots = list(_json_slots(doc))
    parent, key = rng.choice(slots)
    name = key if isinstance(key, str) else ""
    choices = _ZARR_VALUES.get(name) or [None, 0, -1, 1 << 62, "x", [], {}]
    parent[key] = rng.choice(choices)
    path.write_text(json.dumps(doc))
    return f"{name or key}={json.dumps(parent[key])[:40]}"


def _json_slots(node: object) -> Iterator[tuple[Any, Any]]:
    """Every ``(container, key)`` of a JSON document, depth first."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield node, key
        yield from _json_slots(value)


def _mutate_tf_block(path: Path, rng: random.Random, spans: list[tuple[int, int]]) -> str:
    """Damage one to three bytes of one block of a TensorFlow index and rewrite the block's masked CRC32C."""
    import google_crc32c

    buf = bytearray(path.read_bytes())
    offset, size = rng.choice(spans)
    done = []
    for _ in range(rng.randint(1, 3)):
        at = offset + rng.randrange(size)
        buf[at] = _new_byte(buf[at], rng)
        done.append(at)
    crc = google_crc32c.value(bytes(buf[offset : offset + size + 1]))
    masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF  # LevelDB's CRC mask
    buf[offset + size + 1 : offset + size + 5] = masked.to_bytes(4, "little")
    path.write_bytes(bytes(buf))
    return "block@" + ",".join(map(str, done))


# -- workers --------------------------------------------------------------------------------


class Worker:
    """A persistent worker process, restarted after a crash, a hang or a memory kill.

    A thread per process moves its output lines to a queue: waiting on the
    pipe itself would miss a second line already read into the pipe's buffer.
    """

    def __init__(self, memory_mb: int):
        self.memory_mb = memory_mb
        self.proc: subprocess.Popen | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()

    def _start(self) -> subprocess.Popen:
        env = {**os.environ, "LW_FUZZ_MEMORY_MB": str(self.memory_mb), "PYTHONFAULTHANDLER": ""}
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fuzz.worker"],
            cwd=str(FIXTURES.parent.parent),
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.lines = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, self.lines), daemon=True).start()
        return proc

    def run(self, path: Path, original: Path, timeout: float) -> dict:
        """Judge one input file (mutated from ``original``); the worker's JSON answer, or a crash/hang verdict."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        self.proc.stdin.write(f"{path}\t{original}\n")
        self.proc.stdin.flush()
        answer = self._read_line(timeout)
        if answer is None:
            return {"lw": self._verdict_after_death()}
        result = json.loads(answer)
        oracle = self._read_line(timeout)
        if oracle is None:  # the oracle crashed or hung on this input: no oracle, lazyweights' verdict stands
            self._verdict_after_death()
            return {**result, "h5py": {}}
        return {**result, **json.loads(oracle)}

    def _read_line(self, timeout: float) -> str | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def _verdict_after_death(self) -> str:
        hung = self.proc.poll() is None
        if hung:
            self.proc.kill()
        self.proc.wait()
        self.proc = None
        return "hang" if hung else "crash"

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)


def _pump(stream: Any, lines: queue.Queue[str | None]) -> None:
    """Move ``stream``'s lines to ``lines`` until it ends (then a None: the process is gone)."""
    for line in stream:
        lines.put(line)
    lines.put(None)


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
    seed: int,
    count: int,
    *,
    workers: int = 2,
    timeout: float = 20.0,
    memory_mb: int = 2048,
    keras3: bool = True,
    results_file: Path | None = None,
    progress: bool = False,
    keep: Path | None = None,
) -> list[Result]:
    """Fuzz ``count`` inputs from ``seed``; every input judged in a worker process.

    ``keras3=False`` leaves out the Keras 3 seeds, whose bytes change from run
    to run (random initial values, a save date): the remaining seeds are
    byte-identical every time, so a given ``seed`` replays the same inputs.
    ``results_file`` gets one JSON line per judged input as it is judged;
    ``keep`` gets a copy of every input with a bad outcome, to reproduce it.
    """
    from concurrent.futures import ThreadPoolExecutor

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="lw-fuzz-") as tmp:
        root = Path(tmp)
        seeds = make_seeds(root, keras3=keras3)
        spans = {p: _header_spans(p) for p in seeds}
        originals = {p: p.read_bytes() for p in seeds if p.is_file()}
        by_format: dict[str, list[Path]] = {}
        for p in seeds:
            by_format.setdefault(seed_format(p), []).append(p)
        inputs = []
        for i in range(count):  # each format equally often, whatever its number of seeds
            seed_file = rng.choice(by_format[rng.choice(sorted(by_format))])
            path = root / f"in{i}{''.join(seed_file.suffixes[-1:])}"
            if seed_file.is_dir():
                what = mutate_store(seed_file, path, rng, spans[seed_file])
            else:
                data, what = mutate(originals[seed_file], rng, spans[seed_file])
                path.write_bytes(data)
            inputs.append((seed_file, what, path))
        pool = [Worker(memory_mb) for _ in range(workers)]
        free = list(pool)
        out = results_file.open("a") if results_file else None
        done = Counter()
        start = time.monotonic()

        def judge(item: tuple[Path, str, Path]) -> Result:
            worker = free.pop()
            try:
                outcome, detail = classify(worker.run(item[2], item[0], timeout))
            finally:
                free.append(worker)
            if keep and outcome in BAD:
                keep.mkdir(parents=True, exist_ok=True)
                _copy(item[2], keep / f"{outcome}_{seed}_{item[2].name}")
            _remove(item[2])
            result = Result(item[0].name, item[1], outcome, detail, seed_format(item[0]))
            if out:
                out.write(json.dumps({"seed": seed, "metadata": _metadata_mode(), **dataclasses.asdict(result)}) + "\n")
                out.flush()
            done[outcome] += 1
            if progress and done.total() % 250 == 0:
                print(f"  {done.total()}/{count} in {time.monotonic() - start:.0f} s: {dict(done)}", file=sys.stderr)
            return result

        with ThreadPoolExecutor(workers) as threads:
            results = list(threads.map(judge, inputs))
        for worker in pool:
            worker.close()
        if out:
            out.close()
    return results


def _metadata_mode() -> str:
    """How HDF5 metadata is parsed in this run (the workers inherit the environment)."""
    return os.environ.get("LAZYWEIGHTS_HDF5_METADATA", "auto")


def _copy(path: Path, dest: Path) -> None:
    if path.is_dir():
        shutil.copytree(path, dest, dirs_exist_ok=True)
    else:
        shutil.copyfile(path, dest)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def table(results: list[Result]) -> str:
    """The outcome counts as a small text table."""
    counts = Counter(r.outcome for r in results)
    lines = [f"{'outcome':<18}{'inputs':>8}", "-" * 26]
    lines += [f"{o:<18}{counts.get(o, 0):>8}" for o in OUTCOMES]
    lines.append(f"{'total':<18}{len(results):>8}")
    return "\n".join(lines)


def format_table(results: list[Result]) -> str:
    """Outcome counts per seed format, as a Markdown table (the README's)."""
    formats = sorted({r.fmt for r in results})
    counts = Counter((r.fmt, r.outcome) for r in results)
    lines = ["| format | " + " | ".join(OUTCOMES) + " | total |", "|---|" + "---:|" * (len(OUTCOMES) + 1)]
    for fmt in [*formats, None]:
        row = [counts[(fmt, o)] if fmt else sum(counts[(f, o)] for f in formats) for o in OUTCOMES]
        lines.append(f"| {fmt or '**all**'} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
    return "\n".join(lines)


def load_results(path: Path) -> list[Result]:
    """The results a ``--results`` file holds (its lines' ``seed`` field dropped)."""
    fields = {f.name for f in dataclasses.fields(Result)}
    rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return [Result(**{k: v for k, v in row.items() if k in fields}) for row in rows]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--memory-mb", type=int, default=2048)
    parser.add_argument("--show", default=",".join(BAD), help="outcomes to list one by one")
    parser.add_argument("--results", type=Path, help="append one JSON line per input to this file")
    parser.add_argument("--keep", type=Path, help="copy every input with a bad outcome into this folder")
    parser.add_argument("--summarize", type=Path, help="only print the tables of a --results file")
    args = parser.parse_args(argv)
    start = time.monotonic()
    if args.summarize:
        results = load_results(args.summarize)
    else:
        results = run(
            args.seed,
            args.count,
            workers=args.workers,
            timeout=args.timeout,
            memory_mb=args.memory_mb,
            results_file=args.results,
            progress=True,
            keep=args.keep,
        )
    show = set(args.show.split(","))
    for r in results:
        if r.outcome in show:
            print(f"{r.outcome:<10} {r.seed_file:<28} {r.mutation:<40} {r.detail[:120]}")
    seeds, metadata = str(args.seed), _metadata_mode()
    if args.summarize:
        rows = [json.loads(x) for x in args.summarize.read_text().splitlines() if x.strip()]
        seeds = ",".join(sorted({str(r.get("seed")) for r in rows}))
        metadata = ",".join(sorted({r.get("metadata", "?") for r in rows}))
    print(f"\nseed {seeds}, {len(results)} inputs, {time.monotonic() - start:.0f} s, HDF5 metadata: {metadata}")
    print(table(results))
    print()
    print(format_table(results))
    return 0
