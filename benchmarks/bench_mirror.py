"""Mirror, export, verify and load-from-mirror on one large HDF5 checkpoint, against the by-hand ways, in one run.

    python benchmarks/bench_mirror.py [--size-gb 2] [--dir /tmp/lazyweights-bench-mirror] [--repeat 1] [--only load]

Builds (once) an HDF5 file of ``--size-gb`` in the Keras 2 layout: many
medium kernels plus one embedding holding a quarter of the bytes (so a single
weight is far larger than the budget).  With the page cache warm, each method
runs in a fresh subprocess; "growth" is the peak RSS over the call minus the
RSS before it (VmHWM, reset just before the call).

Pairs (ratio = lazyweights time / by-hand time):

- ``mirror``: ``lw.mirror(max_memory=256MiB)`` vs ``h5py ds[()]`` + ``zarr create_array(data=...)`` per weight;
- ``export``: ``lw.export(format="bin", max_memory=256MiB)`` vs ``h5py ds[()].tofile()`` per weight;
- ``verify``: ``lw.verify(h5, mirror)`` (hashes both, 2x the bytes) vs ``sha256sum`` of the h5 file twice;
- ``load``: ``lw.load(mirror)`` vs ``lw.load(h5)`` (both allocate every array), for a raw (uncompressed)
  mirror and a zstd one;
- ``into``: the same into ``out`` arrays allocated and touched before the clock starts (reads only:
  first-touch page faults, which vary a lot on some VMs, are left out);
- ``into-mirror`` vs ``zarr-into``: the same raw mirror read by lazyweights (raw chunks' byte ranges
  straight into the destination) vs zarr's own ``arr.get_basic_selection(out=...)`` per array into
  the same kind of pre-touched arrays (``zarr-into-zstd``: the zstd mirror).

The default mirror is packed (small weights concatenated per dtype, mirror
version 2); rows with ``-old`` read a mirror in the layout mirrors had before
(an array per weight, one object per chunk, no checksum), ``-nocrc`` a sharded
one without CRC32C (the checksum's cost).  zstd mirrors keep an array per
weight; their chunks are decoded with numcodecs in lazyweights' reader threads.

``--remote`` instead measures object stores: mirroring Keras's MobileNetV2
(``weights=None``) to the moto S3 server (``tests/stores.py``) and loading it
back (open included), counted per S3 API call, for each layout of
``REMOTE_VARIANTS`` (packed, an array per weight, the old unchecksummed chunk
objects, zstd); and loading the ``--size-gb`` source and those mirrors from
``bench_remote.py``'s latency- and bandwidth-capped HTTP server (requests
counted by the server), each load in a fresh process.  Targets (issue 11):
mirroring in at most 50 requests, a mirror load within 1.1x the requests and
1.2x the time of the source's.

``--only load,into`` runs only the pairs whose first method starts with one of those prefixes
(mirrors missing from ``--dir`` are written first, untimed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from memory import peak_rss, reset_peak_rss, rss_now, run_json

MiB = 1 << 20
BUDGET = "256MiB"


def generate(path: Path, size_gb: float) -> Path:
    if path.exists():
        return path
    import h5py
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    total = int(size_gb * 1e9)
    embedding_rows = total // 4 // (1024 * 4)
    layers = max(1, (total - embedding_rows * 1024 * 4) // (2048 * 2048 * 4))
    rng = np.random.default_rng(0)
    print(f"generating {path} ({layers} 2048x2048 kernels + a {embedding_rows}x1024 embedding) ...", file=sys.stderr)
    names = ["embedding", *[f"dense_{i}" for i in range(layers)]]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in names]
        f.attrs["keras_version"] = b"2.21.0"
        g = f.create_group("embedding")
        g.attrs["weight_names"] = [b"embedding/embeddings:0"]
        ds = g.create_dataset("embedding/embeddings:0", (embedding_rows, 1024), "f4")
        for r in range(0, embedding_rows, 16384):
            ds[r : r + 16384] = rng.standard_normal((min(16384, embedding_rows - r), 1024), dtype="f4")
        for name in names[1:]:
            g = f.create_group(name)
            g.attrs["weight_names"] = [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
            g[f"{name}/kernel:0"] = rng.standard_normal((2048, 2048), dtype="f4")
            g[f"{name}/bias:0"] = rng.standard_normal(2048, dtype="f4")
    return path


def measure(method: str, h5: str, work: Path) -> dict[str, float]:
    # imported before the measurement, for every method alike
    import h5py
    import numpy as np
    import zarr

    import lazyweights as lw

    mirror, out = work / MIRRORS["load-mirror"][0], work / f"out-{method}"
    shutil.rmtree(out, ignore_errors=True)
    if method == "lw-mirror":
        shutil.rmtree(mirror, ignore_errors=True)

        def run() -> None:
            lw.mirror(h5, mirror, max_memory=BUDGET)

    elif method == "hand-mirror":

        def run() -> None:
            group = zarr.open_group(out, mode="w")
            with h5py.File(h5, "r") as f:

                def copy(name: str, obj: object) -> None:
                    if isinstance(obj, h5py.Dataset):
                        group.create_array(name.replace(":", "_"), data=obj[()], chunks=_chunks(obj), compressors=None)

                f.visititems(copy)

    elif method == "lw-export":

        def run() -> None:
            lw.export(h5, out, max_memory=BUDGET)

    elif method == "hand-export":

        def run() -> None:
            out.mkdir()
            with h5py.File(h5, "r") as f:
                found: list[str] = []
                f.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) else None)
                for i, name in enumerate(found):
                    f[name][()].tofile(out / f"{i:04d}.bin")

    elif method == "lw-verify":

        def run() -> None:
            assert lw.verify(h5, mirror, max_memory=BUDGET).ok

    elif method == "sha256sum-x2":

        def run() -> None:
            subprocess.run(["sha256sum", h5, h5], stdout=subprocess.DEVNULL, check=True)

    elif method == "http-load":  # h5 is a URL here

        def run() -> None:
            lw.load(h5)

    elif method in (*MIRRORS, "load-h5"):
        src = work / MIRRORS[method][0] if method in MIRRORS else h5

        def run() -> None:
            lw.load(src)

    elif method.startswith("into-"):  # into arrays allocated and touched before the clock starts
        name = method.replace("into-", "load-")
        src = work / MIRRORS[name][0] if name in MIRRORS else h5
        with lw.open(src) as ckpt:
            out = {w.key: np.ones(w.shape, w.dtype.newbyteorder("=")) for w in ckpt.weights}

        def run() -> None:
            lw.load(src, out=out)

    elif method.startswith("zarr-into"):  # zarr's own reads into pre-touched arrays, no lazyweights involved
        from zarr.buffer.cpu import NDBuffer

        src = work / MIRRORS["load-mirror-zstd" if method.endswith("-zstd") else "load-mirror"][0]
        group = zarr.open_group(src, mode="r")
        todo = [group]
        arrays = []
        while todo:  # nested groups: every array of the tree
            g = todo.pop()
            arrays.extend(a for _, a in g.arrays())
            todo.extend(sub for _, sub in g.groups())
        outs = [np.ones(a.shape, a.dtype) for a in arrays]

        def run() -> None:
            for arr, dest in zip(arrays, outs, strict=True):
                arr.get_basic_selection(..., out=NDBuffer.from_numpy_array(dest))

    else:
        raise SystemExit(f"unknown method {method}")
    before = rss_now()
    reset_peak_rss()
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "growth": max(0, peak_rss() - before)}


def _chunks(ds: object) -> tuple[int, ...]:
    from lazyweights.tools.mirror import DEFAULT_CHUNK_BYTES, chunk_shape

    return chunk_shape(ds.shape, ds.dtype.itemsize, DEFAULT_CHUNK_BYTES)


PAIRS = [("lw-mirror", "hand-mirror"), ("lw-export", "hand-export"), ("lw-verify", "sha256sum-x2"),
         ("load-mirror", "load-h5"), ("load-mirror-zstd", "load-h5"),
         ("into-mirror", "into-h5"), ("into-mirror-zstd", "into-h5"),
         ("into-mirror", "zarr-into"), ("into-mirror-zstd", "zarr-into-zstd"),
         ("load-mirror", "load-mirror-old"), ("into-mirror", "into-mirror-old"),
         ("into-mirror", "into-mirror-nocrc"), ("into-mirror-zstd", "into-mirror-zstd-nocrc")]  # fmt: skip
# method -> (directory, compressor, other mirror settings).  The default mirror is sharded with a CRC32C per chunk;
# "old" is the layout mirrors had before (one object per chunk, no checksum); "nocrc" isolates the checksum's cost.
_OLD = {"checksum": False, "shard_bytes": None, "packed": False}
MIRRORS = {
    "load-mirror": ("mirror-crc.zarr", None, {}),
    "load-mirror-zstd": ("mirror-zstd-crc.zarr", "zstd", {}),
    "load-mirror-old": ("mirror-old.zarr", None, _OLD),
    "load-mirror-nocrc": ("mirror-nocrc.zarr", None, {"checksum": False}),
    "load-mirror-zstd-nocrc": ("mirror-zstd-nocrc.zarr", "zstd", {"checksum": False}),
}


def warm(path: Path) -> None:
    """Read every file under ``path`` once, so timings compare warm page caches."""
    for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
        with open(file, "rb") as f:
            while f.read(16 * MiB):
                pass


def ensure_mirrors(h5: Path, work: Path, pairs: list[tuple[str, str]]) -> None:
    """Write the mirrors the chosen load pairs read, when an earlier run has not (untimed)."""
    import lazyweights as lw

    for ours, theirs in pairs:
        for method in (ours.replace("into-", "load-"), theirs.replace("into-", "load-")):
            if method in MIRRORS and not (work / MIRRORS[method][0] / "zarr.json").exists():
                name, compressor, settings = MIRRORS[method]
                print(f"writing {work / name} ...", file=sys.stderr)
                lw.mirror(h5, work / name, compressor=compressor, max_memory=BUDGET, overwrite=True, **settings)


# -- object stores (--remote) ------------------------------------------------------------

REMOTE_VARIANTS = {
    "packed+sharded+crc32c": {},
    "per-weight sharded+crc32c": {"packed": False},
    "old: chunk objects, no crc": _OLD,
    "zstd (per-weight)": {"compressor": "zstd"},
}


class S3Calls:
    """Counts S3 API calls made by any aiobotocore client in this process (s3fs's, zarr's FsspecStore's)."""

    def __init__(self) -> None:
        self.count = 0

    def __enter__(self) -> S3Calls:
        from aiobotocore.client import AioBaseClient

        self._original = original = AioBaseClient._make_api_call
        counter = self

        async def counted(client: object, operation: str, params: dict) -> object:
            counter.count += 1
            return await original(client, operation, params)

        AioBaseClient._make_api_call = counted
        return self

    def __exit__(self, *exc: object) -> None:
        from aiobotocore.client import AioBaseClient

        AioBaseClient._make_api_call = self._original


def mobilenet(work: Path) -> Path:
    """Keras 3's MobileNetV2 (weights=None) as a ``.weights.h5``, written once."""
    path = work / "mobilenetv2.weights.h5"
    if not path.exists():
        os.environ.setdefault("KERAS_BACKEND", "torch")
        import keras

        keras.applications.MobileNetV2(weights=None).save_weights(path)
    return path


def s3_rows(work: Path) -> None:
    """Mirror MobileNetV2 to moto S3 and load it back: requests and seconds per mirror layout."""
    import fsspec

    import lazyweights as lw

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.stores import s3_server

    h5 = mobilenet(work)
    with s3_server() as s3:
        s3.bucket("bench", versioned=False)
        fsspec.filesystem("s3", **s3.options).put_file(str(h5), "bench/mobilenetv2.weights.h5")
        rows = []
        with S3Calls() as calls:
            start = time.perf_counter()
            lw.load("s3://bench/mobilenetv2.weights.h5", storage_options=s3.options)
            rows.append(("source .weights.h5", "-", "-", calls.count, time.perf_counter() - start))
        for label, settings in REMOTE_VARIANTS.items():
            url = f"s3://bench/{len(rows)}.zarr"
            with S3Calls() as calls:
                start = time.perf_counter()
                lw.mirror(h5, url, dst_storage_options=s3.options, **settings)
                wrote, took = calls.count, time.perf_counter() - start
            with S3Calls() as calls:
                start = time.perf_counter()
                lw.load(url, storage_options=s3.options)
                rows.append((label, wrote, f"{took:.2f}", calls.count, time.perf_counter() - start))
    print(f"\nMobileNetV2 (weights=None, {h5.stat().st_size / MiB:.1f} MiB .weights.h5) on moto S3 (loopback)")
    header = f"{'layout':<28}{'mirror reqs':>12}{'mirror s':>10}{'load reqs':>11}{'load s':>8}"
    print(header + "\n" + "-" * len(header))
    for label, wrote, took, reqs, secs in rows:
        print(f"{label:<28}{wrote!s:>12}{took:>10}{reqs:>11}{secs:>8.2f}")


def http_rows(h5: Path, work: Path, latency_ms: float, bandwidth_mbs: float) -> None:
    """The source and its mirrors loaded from the latency-capped HTTP server: requests and seconds."""
    from bench_remote import stats

    import lazyweights as lw

    mirrors = {}
    for label, settings in REMOTE_VARIANTS.items():
        name = f"http-{len(mirrors)}.zarr"
        if not (work / name / "zarr.json").exists():
            print(f"writing {work / name} ...", file=sys.stderr)
            lw.mirror(h5, work / name, max_memory=BUDGET, overwrite=True, **settings)
        mirrors[label] = name
    cmd = [sys.executable, str(Path(__file__).with_name("bench_remote.py")), "--serve", str(work)]
    cmd += ["--latency-ms", str(latency_ms), "--bandwidth-mbs", str(bandwidth_mbs)]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        base = server.stdout.readline().strip()
        rows = []
        for label, name in {"source .h5": h5.name, **mirrors}.items():
            for path in (work / name,):
                warm(path)
            stats(base)
            result = run_json([sys.executable, __file__, "--child", "http-load", "--h5", f"{base}/{name}",
                               "--dir", str(work)])  # fmt: skip
            rows.append((label, stats(base)["requests"], result["seconds"]))
    finally:
        server.terminate()
        server.wait()
    print(f"\n{h5.stat().st_size / 1e9:.2f} GB over HTTP on loopback, {latency_ms:.0f} ms per request, "
          f"{bandwidth_mbs:.0f} MB/s per connection (ratios against the source .h5)")  # fmt: skip
    header = f"{'layout':<28}{'requests':>9}{'x reqs':>8}{'seconds':>9}{'x time':>8}"
    print(header + "\n" + "-" * len(header))
    for label, reqs, secs in rows:
        print(f"{label:<28}{reqs:>9}{reqs / rows[0][1]:>8.2f}{secs:>9.2f}{secs / rows[0][2]:>8.2f}")


def run_child(method: str, h5: Path, work: Path) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", method, "--h5", str(h5), "--dir", str(work)]
    return run_json(cmd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/lazyweights-bench-mirror"))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--only", default="", help="comma-separated prefixes: run only the pairs whose first method has one"
    )
    parser.add_argument("--remote", action="store_true", help="object stores: S3 (moto) and capped HTTP")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--bandwidth-mbs", type=float, default=100.0)
    parser.add_argument("--child")
    parser.add_argument("--h5")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.h5, args.dir)))
        return
    h5 = generate(args.dir / f"source_{args.size_gb:g}gb.h5", args.size_gb)
    size = h5.stat().st_size
    if args.remote:
        s3_rows(args.dir)
        http_rows(h5, args.dir, args.latency_ms, args.bandwidth_mbs)
        return
    pairs = [p for p in PAIRS if p[0].startswith(tuple(args.only.split(",")))]
    ensure_mirrors(h5, args.dir, pairs)
    results = {}
    for pair in pairs:
        os.sync()  # earlier pairs' writes (a new mirror, exports) are flushed, not competing with this pair
        for path in (h5, *(args.dir / name for name, *_ in MIRRORS.values())):  # warm the page cache
            warm(path)
        for method in pair:
            if method in results:
                continue
            runs = [run_child(method, h5, args.dir) for _ in range(args.repeat)]
            results[method] = {
                **min(runs, key=lambda r: r["seconds"]),
                "median": statistics.median(r["seconds"] for r in runs),
            }
            print(f"  {method}: {[round(r['seconds'], 2) for r in runs]}", file=sys.stderr)
    print(f"\nsource: {size / 1e9:.2f} GB HDF5 (largest weight {size / 4 / MiB:.0f} MiB), warm cache, budget {BUDGET}")
    print(f"s: best of {args.repeat} runs (median in parentheses, for noisy machines)")
    header = (
        f"{'lazyweights':<17}{'s':>13}{'MiB growth':>12}  {'by hand':<14}{'s':>13}{'MiB growth':>12}"
        f"{'time x':>8}{'(median)':>10}"
    )
    print(header)
    print("-" * len(header))
    for ours, theirs in pairs:
        a, b = results[ours], results[theirs]
        print(
            f"{ours:<17}{_secs(a):>13}{a['growth'] / MiB:>12.0f}  {theirs:<14}{_secs(b):>13}"
            f"{b['growth'] / MiB:>12.0f}{a['seconds'] / b['seconds']:>8.2f}{a['median'] / b['median']:>10.2f}"
        )


def _secs(result: dict[str, float]) -> str:
    return f"{result['seconds']:.2f} ({result['median']:.2f})"


if __name__ == "__main__":
    main()
