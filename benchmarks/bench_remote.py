"""Load a ~1 GB Keras checkpoint from a simulated remote object store, every common way, in one run.

    python benchmarks/bench_remote.py [--size-gb 1] [--latency-ms 20] [--bandwidth-mbs 100]
                                      [--concurrency 1,4,16,32] [--only h5py-fsspec,download,lw]

The store is the tests' Range HTTP server (``tests/servers.py``) in its own
process, with a fixed latency added to every request (default 20 ms) and
each connection's body paced to a bandwidth cap (default 100 MB/s), serving
a Keras 3 ``.weights.h5`` of Dense(4096) layers made by Keras itself (the
generator of ``bench_load.py``, cached in ``--dir``).  Each method runs in a
fresh subprocess, so its peak RSS (VmHWM) is its own:

- ``h5py-fsspec``: ``h5py.File(fsspec.open(url))``, every dataset read with
  ``ds[()]`` — the common habit (fsspec's default 5 MiB read-ahead);
- ``download``: ``fs.get_file`` to local disk, then h5py (what Keras does);
- ``lw-cN``: ``lw.load(url, concurrency=N)``, a first open: the metadata walk
  is included (no index, empty local cache);
- ``lw-index-cN``: the same with ``<file>.lwindex.json`` next to the file
  (written by ``lw.write_index``), so opening costs 2 requests.

Requests are counted by the server.  The table gives wall time, throughput,
requests, peak RSS, speed-up over h5py-fsspec and the fraction of
``N x bandwidth`` reached (the target is ≥ 0.8 until the host saturates).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from bench_load import generate, layer_count  # noqa: E402
from memory import peak_rss, reset_peak_rss, rss_now, run_json  # noqa: E402

from tests.servers import RangeHandler, RangeHTTPServer  # noqa: E402

MiB = 1 << 20
CHUNK = 256 << 10  # pacing granularity of the bandwidth cap


# -- the simulated object store (runs in its own process) ---------------------------------------


class SlowHandler(RangeHandler):
    """Adds the per-request latency, paces each body to the per-connection cap, answers /__stats."""

    server: StoreServer

    def do_HEAD(self) -> None:
        time.sleep(self.server.latency)
        super().do_HEAD()

    def do_GET(self) -> None:
        if self.path == "/__stats":
            with self.server.lock:
                requests, self.server.requests = self.server.requests, []
            body = json.dumps({"requests": len(requests), "bytes": sum(n for _, _, n in requests)}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        time.sleep(self.server.latency)
        super().do_GET()

    def _send_body(self, path: Path, start: int, length: int) -> None:
        rate, t0, sent = self.server.bandwidth, time.perf_counter(), 0
        with open(path, "rb") as f:
            while sent < length:
                n = self.connection.sendfile(f, start + sent, min(CHUNK, length - sent))
                if n == 0:
                    break
                sent += n
                wait = t0 + sent / rate - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)


class StoreServer(RangeHTTPServer):
    handler_class = SlowHandler

    def __init__(self, root: Path, latency: float, bandwidth: float):
        self.latency, self.bandwidth = latency, bandwidth
        super().__init__(root)


def serve_forever(root: str, latency: float, bandwidth: float) -> None:
    server = StoreServer(Path(root), latency, bandwidth)
    print(server.url, flush=True)
    server.serve_forever()


def stats(url: str) -> dict[str, int]:
    """The server's request and byte counts since the last call (and resets them)."""
    with urllib.request.urlopen(f"{url}/__stats") as r:
        return json.loads(r.read())


# -- the methods (each in a fresh process) ------------------------------------------------------


def measure(method: str, url: str, tmp: str) -> dict[str, float]:
    import numpy as np

    if method == "h5py-fsspec":
        import fsspec
        import h5py

        def run() -> float:
            total = 0.0
            with fsspec.open(url, "rb") as raw, h5py.File(raw, "r") as f:
                arrays = []
                f.visititems(lambda n, o: arrays.append(o[()]) if isinstance(o, h5py.Dataset) else None)
                total = sum(float(a.ravel()[-1]) for a in arrays if a.size)
            return total

    elif method == "download":
        import fsspec
        import h5py

        def run() -> float:
            local = os.path.join(tmp, "download.h5")
            fs, path = fsspec.core.url_to_fs(url)
            fs.get_file(path, local)
            with h5py.File(local, "r") as f:
                arrays = []
                f.visititems(lambda n, o: arrays.append(o[()]) if isinstance(o, h5py.Dataset) else None)
            os.unlink(local)
            return sum(float(a.ravel()[-1]) for a in arrays if a.size)

    elif method.startswith("lw"):
        import lazyweights as lw

        concurrency = int(method.rsplit("-c", 1)[1])

        def run() -> float:  # a fresh cache: the first open on this machine (an index next to the file, if any)
            loaded = lw.load(url, concurrency=concurrency, cache_dir=tmp)
            return sum(float(np.asarray(a).ravel()[-1]) for a in loaded.values() if a.size)

    else:
        raise SystemExit(f"unknown method {method}")
    before = rss_now()
    reset_peak_rss()
    start = time.perf_counter()
    checksum = run()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak": peak_rss(), "growth": max(0, peak_rss() - before), "checksum": checksum}


def open_requests(url: str, tmp: str) -> dict[str, int]:
    """Requests to open the checkpoint: first time (no index), and with the index next to the file."""
    import lazyweights as lw

    counts = {}
    stats(url.rsplit("/", 1)[0])
    with lw.open(url, cache_dir=os.path.join(tmp, "first")):
        counts["open"] = stats(url.rsplit("/", 1)[0])["requests"]
    with lw.open(url, cache_dir=os.path.join(tmp, "second")):
        counts["open-index"] = stats(url.rsplit("/", 1)[0])["requests"]
    return counts


def run_child(method: str, url: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--child", method, "--url", url, "--tmp", tmp]
        return run_json(cmd)


# -- driver ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/lazyweights-bench-remote"))
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--bandwidth-mbs", type=float, default=100.0, help="per-connection cap, MB/s")
    parser.add_argument("--concurrency", default="1,4,16,32")
    parser.add_argument("--only", default="h5py-fsspec,download,lw,lw-index")
    parser.add_argument("--child")
    parser.add_argument("--url")
    parser.add_argument("--tmp")
    parser.add_argument("--serve")
    args = parser.parse_args()
    if args.serve:
        serve_forever(args.serve, args.latency_ms / 1000, args.bandwidth_mbs * 1e6)
        return
    if args.child:
        result = open_requests(args.url, args.tmp) if args.child == "open" else measure(args.child, args.url, args.tmp)
        print(json.dumps(result))
        return

    layers = layer_count(args.size_gb)
    checkpoint = generate(args.dir, layers)["h5"]
    served = args.dir / "served"
    served.mkdir(exist_ok=True)
    target = served / checkpoint.name
    if not target.exists():
        os.link(checkpoint, target) if checkpoint.stat().st_dev == served.stat().st_dev else shutil.copy(
            checkpoint, target
        )
    subprocess.run(["cat", str(target)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    cmd = [sys.executable, __file__, "--serve", str(served)]
    cmd += ["--latency-ms", str(args.latency_ms), "--bandwidth-mbs", str(args.bandwidth_mbs)]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        base = server.stdout.readline().strip()
        url = f"{base}/{target.name}"
        threading.Thread(target=server.stdout.read, daemon=True).start()
        report(args, url, target)
    finally:
        server.terminate()
        server.wait()


def report(args: argparse.Namespace, url: str, target: Path) -> None:
    import lazyweights as lw

    size = target.stat().st_size
    only = args.only.split(",")
    methods = [m for m in ("h5py-fsspec", "download") if m in only]
    levels = args.concurrency.split(",")
    indexed = [f"lw-index-c{c}" for c in levels] if "lw-index" in only else []
    methods += [f"lw-c{c}" for c in levels] if "lw" in only else []
    from lazyweights.formats.index import INDEX_SUFFIX

    index = target.parent / (target.name + INDEX_SUFFIX)
    index.unlink(missing_ok=True)
    results: dict[str, dict[str, float]] = {}
    server = url.rsplit("/", 1)[0]
    with tempfile.TemporaryDirectory() as tmp:
        opens = {"open": open_requests(url, tmp)["open"]}
        stats(server)
        for method in methods + indexed:
            if method == (indexed or [None])[0]:
                lw.write_index(url, path=index)
                opens["open-index"] = open_requests(url, tmp + "/2")["open-index"]
                stats(server)
            results[method] = run_child(method, url)
            results[method].update(stats(server))
            print(f"  {method}: {results[method]['seconds']:.2f} s", file=sys.stderr)
    index.unlink(missing_ok=True)
    print_table(args, results, size, opens)


def print_table(args, results, size, opens) -> None:
    base = results.get("h5py-fsspec", {}).get("seconds")
    cap = args.bandwidth_mbs * 1e6
    print(
        f"\nfile: {size / 1e9:.2f} GB over HTTP on loopback, {args.latency_ms:.0f} ms per request, "
        f"{args.bandwidth_mbs:.0f} MB/s per connection, {os.cpu_count()} cores"
    )
    header = f"{'method':<13}{'seconds':>9}{'MB/s':>8}{'requests':>10}{'peak RSS MiB':>14}"
    header += f"{'x h5py-fs':>11}{'of N*cap':>10}"
    print(header)
    print("-" * len(header))
    checksums = {round(r["checksum"], 3) for r in results.values()}
    for method, r in results.items():
        s = r["seconds"]
        n = int(method.rsplit("-c", 1)[1]) if method.startswith("lw") else 1
        print(
            f"{method:<13}{s:>9.2f}{size / s / 1e6:>8.0f}{r['requests']:>10d}{r['peak'] / MiB:>14.0f}"
            f"{(base / s if base else float('nan')):>11.1f}{size / s / (n * cap):>10.2f}"
        )
    with_index = opens.get("open-index", "-")
    print(f"requests to open: {opens['open']} without an index, {with_index} with <file>.lwindex.json")
    print(f"all methods read the same values: {len(checksums) == 1}")


if __name__ == "__main__":
    main()
