"""`make demo`: build a real Keras 3 checkpoint, then stream it into memory under a 64 MiB budget.

Writes into ``build/demo/`` (created if missing) and prints what lazyweights
sees, a progress bar, throughput and peak memory.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import time
from pathlib import Path

import numpy as np

import lazyweights as lw

OUT = Path(__file__).resolve().parent.parent / "build" / "demo"


def build_checkpoint(path: Path) -> None:
    """An MLP of ~400 MiB saved by Keras 3 itself, in the classic .h5 layout and as .keras."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((2048,))] + [keras.layers.Dense(2048, name=f"dense_{i}") for i in range(24)], name="demo_mlp"
    )
    model.save(path)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """The RSS high-water mark since the last reset (VmHWM; Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "demo_mlp.keras"
    if not path.exists():
        print(f"building {path} with Keras 3 ...")
        build_checkpoint(path)
    with lw.open(path) as ckpt:
        print(f"{ckpt.format}: {len(ckpt.layers)} layers, {len(ckpt)} weights, {ckpt.nbytes / 2**20:.0f} MiB")
        first = ckpt.weights[0]
        print(f"first weight {first.key} {first.shape} {first.dtype}; rows 0-2 via dask:")
        print(first.to_dask()[:2, :4].compute())
        out = {w.key: np.ones(w.shape, w.dtype) for w in ckpt.weights}  # e.g. a model's own parameters
        before = rss_mib()
        reset_peak_rss()
        start = time.perf_counter()
        report = ckpt.load(out=out, max_memory="64MiB", progress=True)
        elapsed = time.perf_counter() - start
    print(report)
    peak = peak_rss_mib()
    print(
        f"throughput {report.bytes_loaded / elapsed / 2**20:.0f} MiB/s; peak RSS during the load {peak:.0f} MiB, "
        f"{peak - before:.0f} MiB above the {before:.0f} MiB before it (destinations already allocated); "
        f"peak bytes in flight {report.peak_in_flight / 2**20:.1f} MiB of a 64 MiB budget"
    )


if __name__ == "__main__":
    main()
