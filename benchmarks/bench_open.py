"""First look at a remote checkpoint: the HDF5 metadata walk, old and new, on a simulated object store.

    python benchmarks/bench_open.py [--models resnet50,densenet121,efficientnetb3,synthetic]
                                    [--formats h5,weights.h5,keras] [--latency-ms 20] [--bandwidth-mbs 25]
                                    [--synthetic-layers 2000] [--synthetic-units 128] [--fsspec-timeout 60]

Keras 3 ``keras.applications`` models (``weights=None``) and a wide synthetic
model of ``--synthetic-layers`` Dense layers, each saved by Keras as legacy
``.h5``, ``.weights.h5`` and ``.keras`` (cached in ``--dir``), are served by the
tests' Range HTTP server in its own process with a latency added to every
request and each connection's body paced to a bandwidth cap
(``bench_remote.py --serve``).  Per file:

- ``open``: requests, sequential round trips, bytes and seconds of
  ``h5py`` over an fsspec file (every dataset's metadata, no values), the old
  block-cache walk (``LAZYWEIGHTS_HDF5_METADATA=h5py``) and the new
  level-by-level walk (``walk``).  Round trips: every request the open makes
  one after another; a batch of concurrent requests counts once.
- ``lw.load``: URL to arrays at concurrency 16 (default metadata mode, no
  index, cold caches); a single-stream download of the whole file; the ideal:
  concurrent ranged GETs (16 at a time) of exactly the weight extents, the
  metadata already known.
- sharding: bytes each of 2 and 4 ranks fetches, open included, each rank
  with cold caches: before, ``lw.load(shard=Shard(rank, W))`` (dim 0), each
  rank opening alone; now, ``Shard(rank, W, dim=None)`` (flat) in W real gloo
  ranks (one process each, each through its own server) opening together
  (``collective=lwt.process_group()``).
- local open: ``lw.open`` of the local file, h5py and the walk (the default), best of 3.

Ratios are printed against the targets of issue 9.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
os.environ.setdefault("KERAS_BACKEND", "torch")

from bench_remote import stats  # noqa: E402

MiB = 1 << 20
ENV = "LAZYWEIGHTS_HDF5_METADATA"
FORMATS = ("h5", "weights.h5", "keras")


# -- files ---------------------------------------------------------------------------------------


def build_model(name: str, layers: int, units: int):
    import keras

    keras.utils.set_random_seed(0)
    if name == "synthetic":  # wide, not deep: Keras's graph walk recurses once per layer of depth
        inp = keras.Input((units,))
        outs = [keras.layers.Dense(units, name=f"dense_{i}")(inp) for i in range(layers)]
        return keras.Model(inp, keras.layers.Add(name="sum")(outs), name="synthetic")
    builders = {
        "resnet50": keras.applications.ResNet50,
        "densenet121": keras.applications.DenseNet121,
        "efficientnetb3": keras.applications.EfficientNetB3,
    }
    return builders[name](weights=None)


def generate(directory: Path, name: str, layers: int, units: int) -> dict[str, Path]:
    """The model saved by Keras in each format (kept in ``directory`` for the next run)."""
    stem = f"{name}_{layers}x{units}" if name == "synthetic" else name
    paths = {fmt: directory / f"{stem}.{fmt}" for fmt in FORMATS}
    if all(p.exists() for p in paths.values()):
        return paths
    directory.mkdir(parents=True, exist_ok=True)
    print(f"generating {stem} with Keras 3 ...", file=sys.stderr)
    model = build_model(name, layers, units)
    model.save_weights(paths["weights.h5"])
    model.save(paths["keras"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(paths["h5"])
    return paths


# -- counting round trips ------------------------------------------------------------------------


class Rounds:
    """Counts sequential request rounds made through ``Source`` (a concurrent batch counts once)."""

    def __init__(self) -> None:
        from lazyweights.storage.source import Source

        self.n, self._source = 0, Source
        self._fetch, self._many = Source._fetch, Source._fetch_many
        rounds = self

        def fetch(src, start, end):
            rounds.n += 1
            return rounds._fetch(src, start, end)

        def many(src, spans):
            if len(spans) > 1 and src._afetch is not None:  # one concurrent batch (else _fetch counts each)
                rounds.n += 1
            return rounds._many(src, spans)

        Source._fetch, Source._fetch_many = fetch, many

    def close(self) -> None:
        self._source._fetch, self._source._fetch_many = self._fetch, self._many


def cold() -> None:
    """Forget every open source (their heads and handles): the next open starts from nothing."""
    from lazyweights.storage import source as mod

    for src in list(mod._cache.values()):
        mod.release_source(src)


def server_stats(base: str) -> dict[str, int]:
    return stats(base)


# -- measurements --------------------------------------------------------------------------------


def open_lw(url: str, base: str, mode: str) -> dict[str, float]:
    """``lw.open`` with the metadata walk ``mode``: requests, round trips, bytes, seconds."""
    import lazyweights as lw

    os.environ[ENV] = mode
    cold()
    server_stats(base)
    rounds = Rounds()
    try:
        start = time.perf_counter()
        with lw.open(url, index=False):
            seconds = time.perf_counter() - start
    finally:
        rounds.close()
        os.environ.pop(ENV, None)
    s = server_stats(base)
    return {"requests": s["requests"], "rounds": rounds.n + 1, "bytes": s["bytes"], "seconds": seconds}  # +1: HEAD


def open_fsspec(url: str, base: str, timeout: float) -> dict[str, float] | None:
    """h5py over an fsspec file, every dataset's metadata (offset, chunks), in a child process with a time limit."""
    server_stats(base)
    code = (
        "import sys, fsspec, h5py\n"
        "with fsspec.open(sys.argv[1], 'rb') as raw, h5py.File(raw, 'r') as f:\n"
        "    def visit(n, o):\n"
        "        if isinstance(o, h5py.Dataset):\n"
        "            o.shape, o.dtype, o.id.get_offset(), o.chunks\n"
        "    f.visititems(visit)\n"
    )
    if url.endswith(".keras"):  # the HDF5 member of the archive, through fsspec's zip filesystem
        url = f"zip://model.weights.h5::{url}"
    start = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-c", code, url], check=True, timeout=timeout)
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError):
        server_stats(base)
        return None
    seconds = time.perf_counter() - start
    s = server_stats(base)
    return {"requests": s["requests"], "rounds": s["requests"], "bytes": s["bytes"], "seconds": seconds}


def load_lw(url: str, base: str, tmp: str, shard=None) -> dict[str, float]:
    import lazyweights as lw

    cold()
    server_stats(base)
    start = time.perf_counter()
    lw.load(url, concurrency=16, index=False, cache_dir=tmp, shard=shard)
    seconds = time.perf_counter() - start
    s = server_stats(base)
    return {"requests": s["requests"], "bytes": s["bytes"], "seconds": seconds}


def shared_shards(name: str, bases: list[str], world: int, tmp: str) -> list[int]:
    """Bytes each of ``world`` real ranks (gloo, one process each, each through its own server) fetched for
    ``lw.load(shard=Shard(rank, world, dim=None), collective=process_group())``: flat shards, shared open."""
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, world + 1, is_master=True, wait_for_workers=False)
    for base in bases[:world]:
        server_stats(base)
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--rank", str(store.port), str(r), str(world), f"{bases[r]}/{name}", tmp],
            env=env,
        )
        for r in range(world)
    ]
    for proc in procs:
        if proc.wait(timeout=600) != 0:
            raise RuntimeError(f"a rank of the sharded load of {name} failed")
    return [server_stats(base)["bytes"] for base in bases[:world]]


def rank_main(port: str, rank: str, world: str, url: str, tmp: str) -> None:
    """One rank of :func:`shared_shards`."""
    import torch.distributed as dist

    import lazyweights as lw
    from lazyweights import torch as lwt

    store = dist.TCPStore("127.0.0.1", int(port), int(world), is_master=False)
    dist.init_process_group("gloo", store=store, rank=int(rank), world_size=int(world))
    try:
        shard = lw.Shard(int(rank), int(world), dim=None)
        lw.load(url, concurrency=16, index=False, cache_dir=f"{tmp}/rank{rank}", shard=shard,
                collective=lwt.process_group())  # fmt: skip
    finally:
        dist.destroy_process_group()


def download(url: str, base: str) -> float:
    import urllib.request

    server_stats(base)
    start = time.perf_counter()
    with urllib.request.urlopen(url) as r:
        while r.read(8 * MiB):
            pass
    return time.perf_counter() - start


def ideal(url: str, base: str, path: Path) -> dict[str, float]:
    """Concurrent ranged GETs (16 at a time) of exactly the weight extents, the manifest known beforehand."""
    import fsspec

    import lazyweights as lw

    with lw.open(path, index=False) as ckpt:
        extents = [e for s in (*ckpt.manifest.weights, *ckpt.manifest.optimizer) for e in s.extents()]
    fs = fsspec.filesystem("http")
    fs.info(url)  # the connection pool is warm, as after an open
    server_stats(base)
    start = time.perf_counter()
    fs.cat_ranges([url] * len(extents), [e.offset for e in extents], [e.end for e in extents], batch_size=16)
    seconds = time.perf_counter() - start
    s = server_stats(base)
    return {"requests": s["requests"], "bytes": s["bytes"], "seconds": seconds}


def local_open(path: Path, mode: str, repeat: int = 3) -> float:
    import lazyweights as lw

    os.environ[ENV] = mode
    best = float("inf")
    try:
        for _ in range(repeat):
            cold()
            start = time.perf_counter()
            with lw.open(path, index=False):
                best = min(best, time.perf_counter() - start)
    finally:
        os.environ.pop(ENV, None)
    return best


def measure_file(path: Path, bases: list[str], args: argparse.Namespace) -> dict:
    import lazyweights as lw

    base = bases[0]
    url = f"{base}/{path.name}"
    row: dict = {"file": path.name, "size": path.stat().st_size}
    row["fsspec"] = open_fsspec(url, base, args.fsspec_timeout) if args.fsspec_timeout > 0 else None
    row["old"] = open_lw(url, base, "h5py")
    row["new"] = open_lw(url, base, "walk")
    with tempfile.TemporaryDirectory() as tmp:
        row["load"] = load_lw(url, base, tmp)
        row["download"] = download(url, base)
        row["ideal"] = ideal(url, base, path)
        for world in (2, 4):
            row[f"shard{world}"] = [
                load_lw(url, base, tmp, shard=lw.Shard(rank, world))["bytes"] for rank in range(world)
            ]
            row[f"shared{world}"] = shared_shards(path.name, bases, world, tmp)
    row["local_old"] = local_open(path, "h5py")
    row["local_new"] = local_open(path, "walk")
    return row


# -- report ---------------------------------------------------------------------------------------


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISS"


def print_tables(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"\nRange HTTP server, {args.latency_ms:g} ms per request, {args.bandwidth_mbs:g} MB/s per connection\n")
    print("open (requests / sequential round trips / fetched / seconds)")
    head = f"{'file':<34}{'MB':>7}  {'h5py+fsspec':<28}{'old block-cache walk':<28}{'new walk':<28}"
    print(head + "target: rounds <= 8, bytes <= max(1 MiB, 2%)")
    for r in rows:
        cells = []
        for k in ("fsspec", "old", "new"):
            m = r[k]
            if m is None:
                cells.append(f"{'(skipped or > limit)':<28}")
            else:
                cells.append(
                    f"{m['requests']:>5} /{m['rounds']:>4} /{m['bytes'] / r['size']:>6.1%} /{m['seconds']:>5.2f}s "
                )
        new = r["new"]
        limit = max(MiB, 0.02 * r["size"])
        over = new["bytes"] / limit
        verdict = f"rounds {_mark(new['rounds'] <= 8)}, bytes {over:.2f}x limit {_mark(over <= 1)}"
        print(f"{r['file']:<34}{r['size'] / 1e6:>7.1f}  " + "".join(cells) + verdict)
    print("\nwhole remote load (lw.load c16, default mode) vs single-stream download and ideal")
    print(
        f"{'file':<34}{'load s':>8}{'fetched':>9}{'download s':>12}{'ideal s':>9}"
        f"{'load/dl':>9}{'load/ideal':>11}  targets: <=0.4x dl, <=1.3x ideal, <=1.05x bytes"
    )
    for r in rows:
        load, size = r["load"], r["size"]
        to_dl, to_ideal, amp = (
            load["seconds"] / r["download"],
            load["seconds"] / r["ideal"]["seconds"],
            load["bytes"] / size,
        )
        print(
            f"{r['file']:<34}{load['seconds']:>8.2f}{amp:>8.2f}x{r['download']:>12.2f}{r['ideal']['seconds']:>9.2f}"
            f"{to_dl:>9.2f}{to_ideal:>11.2f}  {_mark(to_dl <= 0.4)} {_mark(to_ideal <= 1.3)} {_mark(amp <= 1.05)}"
        )
    print("\nsharding: bytes per rank (open included, cold caches) as a fraction of the file; target <= 1.02/W")
    print("  before: Shard(rank, W) on dim 0, each rank opening alone;")
    print("  now: Shard(rank, W, dim=None) (flat), W gloo ranks opening together (collective=process_group())")
    print(f"{'file':<34}{'':<8}{'W=2 ranks':>22}{'W=4 ranks':>34}")
    for r in rows:
        for label, key in (("before", "shard"), ("now", "shared")):
            cells = []
            for world in (2, 4):
                fr = [b / r["size"] for b in r[f"{key}{world}"]]
                ok = max(fr) <= 1.02 / world
                cells.append(" ".join(f"{f:.3f}" for f in fr) + f" {_mark(ok)}")
            print(f"{r['file'] if label == 'before' else '':<34}{label:<8}{cells[0]:>22}{cells[1]:>34}")
    print("\nlocal open (best of 3): h5py vs the walk; the walk is the default, local and remote")
    for r in rows:
        ratio = r["local_new"] / r["local_old"]
        print(f"{r['file']:<34}{r['local_old']:>8.3f}s {r['local_new']:>8.3f}s  new/old {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/lazyweights-bench-open"))
    parser.add_argument("--models", default="resnet50,densenet121,efficientnetb3,synthetic")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--bandwidth-mbs", type=float, default=25.0, help="per-connection cap, MB/s")
    parser.add_argument("--synthetic-layers", type=int, default=2000)
    parser.add_argument("--synthetic-units", type=int, default=128)
    parser.add_argument("--fsspec-timeout", type=float, default=60.0, help="0 skips h5py over fsspec")
    args = parser.parse_args()
    files = []
    for name in args.models.split(","):
        paths = generate(args.dir, name, args.synthetic_layers, args.synthetic_units)
        files.extend(paths[fmt] for fmt in args.formats.split(","))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_remote.py"), "--serve", str(args.dir)]
    cmd += ["--latency-ms", str(args.latency_ms), "--bandwidth-mbs", str(args.bandwidth_mbs)]
    servers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(4)]  # one per rank
    try:
        bases = [server.stdout.readline().strip() for server in servers]
        rows = []
        for path in files:
            print(f"measuring {path.name} ...", file=sys.stderr)
            rows.append(measure_file(path, bases, args))
        print_tables(rows, args)
    finally:
        for server in servers:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--rank"]:
        rank_main(*sys.argv[2:7])
    else:
        main()
