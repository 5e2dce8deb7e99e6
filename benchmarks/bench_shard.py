"""Sharded warm-start: W = 1, 2, 4 ranks each load their shard of a ~1 GB checkpoint over HTTP, in one run.

    python benchmarks/bench_shard.py [--size-gb 1] [--dir /tmp/lazyweights-bench] [--ranks 1,2,4] [--repeat 2]

Builds (once) a stack of ``Linear(4096, 4096)`` layers totalling ``--size-gb``
as an HDF5 file in PyTorch layout (``layers/0/weight``, ...) and the same
tensors with ``torch.save``.  The HDF5 file is served by the test suite's
Range HTTP server (tests/servers.py, a separate process) on 127.0.0.1.

Each rank is its own process: it builds its tensor-parallel shard of the
model on the ``meta`` device (so the load includes materialising it), waits for a common start signal, then runs
``lazyweights.torch.load_state_dict(model, url, shard=...)``.  Rows:

- ``lwt dim0``: every weight split by rows (column parallel): one byte range per rank and weight;
- ``lwt dim0 bc``: the same in a gloo process group with ``replicated="broadcast"``: rank 0 alone
  parses the metadata and broadcasts the manifest;
- ``lwt dim1``: weights split by columns (row parallel), biases replicated: coalesced spans;
- ``lwt local``: one rank, the local file, no sharding, into a preallocated CPU model (as the anchor);
- ``torch.load``: ``torch.load(mmap=True)`` + ``load_state_dict`` of the ``.pt`` file into a
  preallocated model, local, warm page cache: the anchor.

"wall" runs from the common start to the last rank's end; "MiB/rank" is the
payload bytes each rank fetched (report.bytes_read); "amplif." is all bytes
the server sent (metadata included) over the file's size; "peak RSS" the
largest rank's high-water mark (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from memory import peak_rss

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.servers: the same Range HTTP server the tests use

MiB = 1 << 20
WIDTH = 4096


def layer_count(size_gb: float) -> int:
    return max(1, round(size_gb * 1e9 / ((WIDTH * WIDTH + WIDTH) * 4)))


def stack(layers: int, rows: int = WIDTH, cols: int = WIDTH):
    """``layers`` Linear layers with ``rows`` outputs and ``cols`` inputs each (a shard when smaller)."""
    import torch

    return torch.nn.Sequential(*(torch.nn.Linear(cols, rows) for _ in range(layers)))


def generate(directory: Path, layers: int) -> dict[str, Path]:
    paths = {"h5": directory / f"shard_{layers}.h5", "pt": directory / f"shard_{layers}.pt"}
    if all(p.exists() for p in paths.values()):
        return paths
    import h5py
    import numpy as np
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    print(f"generating {layers} Linear({WIDTH}, {WIDTH}) layers ...", file=sys.stderr)
    rng = np.random.default_rng(0)
    state = {}
    with h5py.File(paths["h5"], "w") as f:
        for i in range(layers):
            for name, shape in (("weight", (WIDTH, WIDTH)), ("bias", (WIDTH,))):
                values = rng.random(shape, dtype=np.float32)
                f[f"{i}/{name}"] = values
                state[f"{i}.{name}"] = torch.from_numpy(values)
    torch.save(state, paths["pt"])
    return paths


def rank_main(args: argparse.Namespace) -> None:
    """One rank: build the shard on meta, wait for 'go' on stdin, load, print a JSON line."""
    import torch

    import lazyweights as lw
    from lazyweights import torch as lwt

    rank, world, dim = args.rank, args.world, args.dim
    start, stop = lw.Shard(rank, world).bounds(WIDTH)
    if args.method in ("torch.load", "lwt-cpu"):  # preallocated, like the anchor
        model = stack(args.layers)
    elif dim is None:
        with torch.device("meta"):
            model = stack(args.layers)
    else:
        with torch.device("meta"):
            model = stack(args.layers, **({"rows": stop - start} if dim == 0 else {"cols": stop - start}))
    shard = None if dim is None else lw.Shard(rank, world, dim=dim)
    replicated = "read"
    if args.store_port:
        import torch.distributed as dist

        store = dist.TCPStore("127.0.0.1", args.store_port, world, is_master=False)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
        replicated = "broadcast"
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.time()
    if args.method == "torch.load":
        model.load_state_dict(torch.load(args.url, mmap=True))
        bytes_read, replicated = os.path.getsize(args.url), 0
    else:
        report = lwt.load_state_dict(model, args.url, shard=shard, max_memory="256MiB", replicated=replicated)
        bytes_read, replicated = report.bytes_read, len(report.replicated)
    t1 = time.time()
    print(json.dumps({"t0": t0, "t1": t1, "bytes": bytes_read, "replicated": replicated, "peak": peak_rss()}))


def run_ranks(method: str, url: str, world: int, dim: int | None, layers: int, group: bool) -> dict[str, float]:
    store = None
    if group:  # a gloo process group through a store this process hosts on an OS-chosen port
        import torch.distributed as dist

        store = dist.TCPStore("127.0.0.1", 0, world + 1, is_master=True, wait_for_workers=False)
    procs = []
    for rank in range(world):
        cmd = [sys.executable, __file__, "--child", method, "--url", url, "--rank", str(rank), "--world", str(world)]
        cmd += ["--layers", str(layers)] + ([] if dim is None else ["--dim", str(dim)])
        cmd += ["--store-port", str(store.port)] if store is not None else []
        procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:  # start together
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"{method} rank failed with {p.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return {
        "wall": max(r["t1"] for r in results) - min(r["t0"] for r in results),
        "bytes_per_rank": [r["bytes"] for r in results],
        "replicated": results[0]["replicated"],
        "peak": max(r["peak"] for r in results),
    }


def serve_process(directory: Path) -> tuple[subprocess.Popen, str]:
    """The Range HTTP server in its own process (so it does not share a GIL with anything measured)."""
    code = (
        "import sys, json; from tests.servers import serve\n"
        "s = serve(sys.argv[1]); s.__enter__(); print(s.url, flush=True)\n"
        "for line in sys.stdin:\n"
        "    print(s.bytes_sent, flush=True); s.reset()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(directory)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    return proc, proc.stdout.readline().strip()


def server_bytes(proc: subprocess.Popen) -> int:
    """Bytes the server sent since the last call (and reset its counter)."""
    proc.stdin.write("count\n")
    proc.stdin.flush()
    return int(proc.stdout.readline())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/lazyweights-bench"))
    parser.add_argument("--ranks", default="1,2,4")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--child")
    parser.add_argument("--url")
    parser.add_argument("--rank", type=int)
    parser.add_argument("--world", type=int)
    parser.add_argument("--dim", type=int)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--store-port", type=int)
    args = parser.parse_args()
    if args.child:
        args.method = args.child
        rank_main(args)
        return
    layers = layer_count(args.size_gb)
    paths = generate(args.dir, layers)
    size = paths["h5"].stat().st_size
    subprocess.run(["cat", str(paths["h5"]), str(paths["pt"])], stdout=subprocess.DEVNULL, check=True)  # warm
    server, base = serve_process(paths["h5"].parent)
    url = f"{base}/{paths['h5'].name}"
    cases = [("torch.load", str(paths["pt"]), 1, None), ("lwt local", str(paths["h5"]), 1, None)]
    for world in map(int, args.ranks.split(",")):
        cases.append(("lwt dim0", url, world, 0))
        if world > 1:
            cases.append(("lwt dim0 bc", url, world, 0))
            cases.append(("lwt dim1", url, world, 1))
    rows = []
    try:
        for method, target, world, dim in cases:
            runs = []
            for _ in range(args.repeat):
                server_bytes(server)
                kind = {"lwt local": "lwt-cpu", "torch.load": "torch.load"}.get(method, "lwt")
                result = run_ranks(kind, target, world, dim, layers, group=method.endswith(" bc"))
                result["served"] = server_bytes(server) if target.startswith("http") else 0
                runs.append(result)
            best = min(runs, key=lambda r: r["wall"])
            print(f"  {method} W={world}: {[round(r['wall'], 2) for r in runs]}", file=sys.stderr)
            rows.append((method, world, best))
    finally:
        server.stdin.close()
        server.terminate()
        server.wait()
    print_table(rows, size)


def print_table(rows: list, size: int) -> None:
    anchor = rows[0][2]["wall"]
    print(f"\ncheckpoint: {size / 1e9:.2f} GB, HTTP Range server on 127.0.0.1 (own process), 256 MiB budget per rank")
    header = (
        f"{'method':<12}{'W':>3}{'wall s':>8}{'GB/s':>7}{'x torch':>9}{'MiB/rank (min-max)':>22}"
        f"{'amplif.':>9}{'repl.':>7}{'peak RSS MiB':>14}"
    )
    print(header)
    print("-" * len(header))
    for method, world, r in rows:
        per = r["bytes_per_rank"]
        amp = f"{r['served'] / size:.3f}" if r["served"] else "-"
        print(
            f"{method:<12}{world:>3}{r['wall']:>8.2f}{size / r['wall'] / 1e9:>7.2f}{r['wall'] / anchor:>9.2f}"
            f"{f'{min(per) / MiB:.0f}-{max(per) / MiB:.0f}':>22}{amp:>9}{r['replicated']:>7}{r['peak'] / MiB:>14.0f}"
        )


if __name__ == "__main__":
    main()
