"""`make demo`: what lazyweights does, at a glance, on a real Keras 3 checkpoint of ~400 MiB.

1. Builds the checkpoint with Keras 3 itself (once, into ``build/demo/``).
2. Opens it (metadata only) and reads two rows of one weight through dask.
3. Loads it from the local disk into preallocated arrays: local reads go
   straight from the file into the arrays (``preadv``), so nothing is
   staged and the budget is not even touched.
4. Serves the same file over HTTP (a local Range server) and loads it from
   there under a 64 MiB budget, a sixth of the model: every byte now passes
   through a staging buffer, and the peak of those buffers is measured
   beside the budget, with the requests and bytes the load fetched against
   the file's size.

Every figure is in binary units (MiB, MiB/s) and every throughput is the
load report's: bytes loaded over the load's own time.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

from pathlib import Path

import numpy as np

import lazyweights as lw
from lazyweights.tools.serve import serve

OUT = Path(__file__).resolve().parent.parent / "build" / "demo"
BUDGET = 64 << 20
MiB = 1 << 20


def build_checkpoint(path: Path, width: int = 2048, depth: int = 24) -> None:
    """Save an MLP of ``depth`` Dense layers of ``width`` x ``width`` (by default ~384 MiB of float32) with Keras 3."""
    import keras

    keras.utils.set_random_seed(0)
    layers = [keras.layers.Dense(width, name=f"dense_{i}") for i in range(depth)]
    model = keras.Sequential([keras.Input((width,)), *layers], name="demo_mlp")
    model.save(path)


def rss_mib() -> float:
    """This process's resident memory now, in MiB (Linux ``/proc``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MiB


def peak_rss_mib() -> float:
    """The resident-memory high-water mark since the last :func:`reset_peak_rss`, in MiB (``VmHWM``)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def reset_peak_rss() -> None:
    """Restart the high-water mark at the current resident memory (Linux ``clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def describe(ckpt: lw.Checkpoint) -> int:
    """Print what opening read: format, layers that hold weights, weights and bytes; one weight's first rows.

    Returns the number of layers with weights (the model object itself, listed too, holds none).
    """
    layers = [layer for layer in ckpt.layers if layer.weights]
    print(f"{ckpt.format}: {len(layers)} layers with weights, {len(ckpt)} weights, {ckpt.nbytes / MiB:.0f} MiB")
    kernel = ckpt["dense_0/kernel"]  # found by the layer's own name; the file's key is an object path
    print(f"dense_0/kernel is {kernel.key} {kernel.shape} {kernel.dtype}; rows 0-1, columns 0-3 through dask:")
    print(kernel.to_dask()[:2, :4].compute())
    return len(layers)


def local_load(ckpt: lw.Checkpoint, budget: int = BUDGET) -> lw.LoadReport:
    """Fill preallocated arrays from the local file and say what memory the load itself took."""
    out = {w.key: np.ones(w.shape, w.dtype) for w in ckpt.weights}  # e.g. a model's own parameters
    before = rss_mib()
    reset_peak_rss()
    report = ckpt.load(out=out, max_memory=budget, progress=True)
    above = peak_rss_mib() - before
    print(f"local: {report.bytes_loaded / MiB:.0f} MiB in {report.seconds:.2f} s, {report.throughput / MiB:.0f} MiB/s")
    print(
        f"local: reads go from the file straight into the arrays: peak RSS {above:.0f} MiB above them, "
        f"{report.peak_in_flight / MiB:.1f} MiB staged of the {budget / MiB:.0f} MiB budget"
    )
    return report


def remote_load(path: Path, budget: int = BUDGET) -> tuple[lw.LoadReport, int, int]:
    """Serve ``path`` over HTTP on loopback, open and load it under the budget, and count what crossed the wire.

    Returns the load's report, and the requests and bytes the server answered for the load (the open excluded).
    """
    size = path.stat().st_size
    with serve(path.parent) as server:
        url = f"{server.url}/{path.name}"
        with lw.open(url, index=False) as ckpt:
            opened = (server.count("GET") + server.count("HEAD"), server.bytes_sent)
            server.reset()
            loaded = ckpt.load(max_memory=budget, progress=True)  # new arrays, allocated as each weight lands
            report = loaded.report
        requests, fetched = server.count("GET") + server.count("HEAD"), server.bytes_sent
    print(f"http: opening took {opened[0]} requests and {opened[1] / 1024:.0f} KiB of the {size / MiB:.0f} MiB file")
    print(
        f"http: {report.bytes_loaded / MiB:.0f} MiB in {report.seconds:.2f} s, {report.throughput / MiB:.0f} MiB/s; "
        f"{requests} requests fetched {fetched / MiB:.1f} MiB of the {size / MiB:.1f} MiB file "
        f"({fetched / size:.0%})"
    )
    print(
        f"http: peak in flight {report.peak_in_flight / MiB:.1f} MiB of the {budget / MiB:.0f} MiB budget "
        f"for a {report.bytes_loaded / MiB:.0f} MiB model (arrays are allocated under the budget as bytes arrive)"
    )
    return report, requests, fetched


def main() -> None:
    """Build the checkpoint if needed, then describe it and load it from disk and over HTTP."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "demo_mlp.keras"
    if not path.exists():
        print(f"building {path} with Keras 3 ...")
        build_checkpoint(path)
    with lw.open(path) as ckpt:
        describe(ckpt)
        local_load(ckpt)
        del ckpt
    remote_load(path)


if __name__ == "__main__":
    main()
