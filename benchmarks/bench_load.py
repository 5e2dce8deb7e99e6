"""Load one ~2 GB Keras-format checkpoint every common way and compare, in one run.

    python benchmarks/bench_load.py [--size-gb 2] [--dir /tmp/lazyweights-bench] [--repeat 3] [--only lw,cat]

Builds (once) a Keras 3 MLP whose weights total ``--size-gb``, saved by Keras
itself as ``.weights.h5``, and the same tensors as safetensors.  Then, with
the page cache warm, each method runs in a fresh subprocess (so peak RSS is
its own) and the best of ``--repeat`` wall times is reported:

- ``cat``: ``cat file > /dev/null``, the floor for moving the bytes;
- ``h5py``: ``ds[()]`` for every dataset (what most loaders do);
- ``keras``: Keras 3 ``model.load_weights`` into the same (already built) model;
- ``lwk``: ``lazyweights.keras.load_weights`` into that model (64 MiB budget);
- ``keras-h5`` / ``lwk-h5``: the same two on the legacy ``.h5`` layout of the same model;
- ``keras-sharded`` / ``lwk-sharded``: the same two on Keras 3 sharded weights of the same model
  (``save_weights("….weights.json", max_shard_size=0.1)``: an index and ~100 MB shards);
- ``safetensors``: ``safetensors.numpy.load_file`` of the same tensors;
- ``lw``: ``lw.load(file, out=preallocated, max_memory="64MiB")``;
- ``lw-new``: ``lw.load(file)`` allocating its arrays;
- ``tf`` / ``lw-tf``: a TensorFlow-format checkpoint of the same layer shapes
  (``tf.train.Checkpoint.write``), every tensor read by
  ``tf.train.load_checkpoint(prefix).get_tensor(key)`` against
  ``lw.load(prefix, max_memory="64MiB")``.  Only with a Python that has
  TensorFlow (``--tf-python``, default: this one if it imports tensorflow, or
  the fixture virtualenv ``/tmp/tfvenv``); TensorFlow is never a dependency.

"peak RSS" is the process's high-water mark over the timed call (VmHWM,
reset just before it); "growth" is that minus the RSS just before the call
(the destinations, when preallocated, are already resident then): what the
load itself cost in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource  # cat's RSS only: RUSAGE_CHILDREN
import subprocess
import sys
import time
from pathlib import Path

from memory import peak_rss, reset_peak_rss, rss_now, run_json

MiB = 1 << 20
WIDTH = 4096


def layer_count(size_gb: float) -> int:
    return max(1, round(size_gb * 1e9 / ((WIDTH * WIDTH + WIDTH) * 4)))


def build_model(layers: int):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((WIDTH,))] + [keras.layers.Dense(WIDTH, name=f"dense_{i}") for i in range(layers)], name="bench"
    )


def generate_plain(directory: Path, layers: int) -> dict[str, Path]:
    """Keras 2 layout written with h5py, one layer at a time: for sizes Keras cannot build in memory here.

    Only ``cat``, ``h5py`` and ``lw`` apply to it (no Keras model, no safetensors copy).
    """
    import h5py
    import numpy as np

    path = directory / f"plain_{layers}.h5"
    paths = {"h5": path, "st": path, "legacy": path, "sharded": path}
    if path.exists():
        return paths
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"dense_{i}" for i in range(layers)]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in names]
        for name in names:
            g = f.create_group(name)
            g.attrs["weight_names"] = [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
            g[f"{name}/kernel:0"] = rng.standard_normal((WIDTH, WIDTH), dtype=np.float32)
            g[f"{name}/bias:0"] = np.zeros(WIDTH, np.float32)
    return paths


def generate(directory: Path, layers: int) -> dict[str, Path]:
    paths = {
        "h5": directory / f"bench_{layers}.weights.h5",
        "st": directory / f"bench_{layers}.safetensors",
        "legacy": directory / f"bench_{layers}.h5",
        "sharded": directory / f"bench_{layers}.weights.json",
    }
    if all(p.exists() for p in paths.values()):
        return paths
    directory.mkdir(parents=True, exist_ok=True)
    print(f"generating {layers} Dense({WIDTH}) layers with Keras 3 ...", file=sys.stderr)
    model = build_model(layers)
    model.save_weights(paths["h5"])
    model.save(paths["legacy"])
    model.save_weights(paths["sharded"], max_shard_size=0.1)
    from safetensors.numpy import save_file

    import lazyweights as lw

    with lw.open(paths["h5"]) as ckpt:
        tensors = {w.key.replace("/", "."): w.read() for w in ckpt.weights}
    save_file(tensors, paths["st"])
    return paths


TF_VENV_PYTHON = Path("/tmp/tfvenv/bin/python")  # scripts/make_tf_fixtures.sh's virtualenv


def tf_python(explicit: str | None) -> str | None:
    """A Python that imports tensorflow (None: skip the TensorFlow rows)."""
    import importlib.util

    if explicit:
        return explicit
    if importlib.util.find_spec("tensorflow") is not None:
        return sys.executable
    return str(TF_VENV_PYTHON) if TF_VENV_PYTHON.exists() else None


def make_tf_checkpoint(prefix: str, layers: int) -> None:
    """Write a TensorFlow checkpoint of ``layers`` Dense(WIDTH) kernels and biases (runs under TensorFlow)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    variables = {}
    for i in range(layers):
        variables[f"dense_{i}_kernel"] = tf.Variable(rng.standard_normal((WIDTH, WIDTH), dtype=np.float32))
        variables[f"dense_{i}_bias"] = tf.Variable(np.zeros(WIDTH, np.float32))
    tf.train.Checkpoint(**variables).write(prefix)


def generate_tf(directory: Path, layers: int, python: str) -> Path:
    prefix = directory / f"tf_{layers}" / "ckpt"
    if not prefix.with_suffix(".index").exists():
        print(f"generating a TensorFlow checkpoint of {layers} Dense({WIDTH}) layers ...", file=sys.stderr)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        cmd = [python, __file__, "--make-tf", str(prefix), "--layers", str(layers)]
        subprocess.run(cmd, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return prefix


def measure(method: str, paths: dict[str, str], layers: int) -> dict[str, float]:
    """Run one method in this (fresh) process; return seconds, bytes, peak and growth."""
    import numpy as np

    h5 = paths["h5"]
    if method == "cat":
        start = time.perf_counter()
        subprocess.run(["cat", h5], stdout=subprocess.DEVNULL, check=True)
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "peak": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, "growth": 0}
    if method == "h5py":
        import h5py

        def run() -> None:
            with h5py.File(h5, "r") as f:
                arrays = []
                f.visititems(lambda n, o: arrays.append(o[()]) if isinstance(o, h5py.Dataset) else None)

    elif method in ("keras", "keras-h5", "keras-sharded"):
        model = build_model(layers)
        target = {"keras": h5, "keras-h5": paths["legacy"], "keras-sharded": paths["sharded"]}[method]

        def run() -> None:
            model.load_weights(target)

    elif method in ("lwk", "lwk-h5", "lwk-sharded"):
        from lazyweights import keras as lwk

        model = build_model(layers)
        target = {"lwk": h5, "lwk-h5": paths["legacy"], "lwk-sharded": paths["sharded"]}[method]

        def run() -> None:
            lwk.load_weights(model, target, max_memory="64MiB")

    elif method == "safetensors":
        from safetensors.numpy import load_file

        def run() -> None:
            load_file(paths["st"])

    elif method in ("lw", "lw-new"):
        import lazyweights as lw

        with lw.open(h5) as ckpt:
            out = {w.key: np.ones(w.shape, w.dtype) for w in ckpt.weights} if method == "lw" else None

        def run() -> None:
            lw.load(h5, out=out, max_memory="64MiB")

    elif method == "tf":
        import tensorflow as tf

        def run() -> None:
            reader = tf.train.load_checkpoint(paths["tf"])
            arrays = [reader.get_tensor(key) for key in reader.get_variable_to_shape_map()]
            assert arrays

    elif method == "lw-tf":
        import lazyweights as lw

        def run() -> None:
            lw.load(paths["tf"], max_memory="64MiB")

    else:
        raise SystemExit(f"unknown method {method}")
    before = rss_now()
    reset_peak_rss()
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    peak = peak_rss()
    return {"seconds": seconds, "peak": peak, "growth": max(0, peak - before)}


def run_child(method: str, paths: dict[str, Path], layers: int, python: str | None = None) -> dict[str, float]:
    cmd = [python or sys.executable, __file__, "--child", method, "--layers", str(layers)]
    cmd += ["--h5", str(paths["h5"]), "--st", str(paths["st"]), "--legacy", str(paths["legacy"])]
    cmd += ["--tf", str(paths.get("tf", ""))]
    cmd += ["--sharded", str(paths.get("sharded", ""))]
    return run_json(cmd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/lazyweights-bench"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--only",
        default="cat,h5py,keras,lwk,keras-h5,lwk-h5,keras-sharded,lwk-sharded,safetensors,lw,lw-new,tf,lw-tf",
    )
    parser.add_argument("--plain", action="store_true", help="h5py-written file; only cat,h5py,lw,lw-new apply")
    parser.add_argument("--child")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--h5")
    parser.add_argument("--st")
    parser.add_argument("--legacy")
    parser.add_argument("--tf")
    parser.add_argument("--tf-python", help="a Python with TensorFlow, for the tf / lw-tf rows")
    parser.add_argument("--make-tf")
    parser.add_argument("--sharded")
    args = parser.parse_args()
    if args.make_tf:
        make_tf_checkpoint(args.make_tf, args.layers)
        return
    if args.child:
        paths = {"h5": args.h5, "st": args.st, "legacy": args.legacy, "tf": args.tf, "sharded": args.sharded}
        print(json.dumps(measure(args.child, paths, args.layers)))
        return
    layers = layer_count(args.size_gb)
    paths = generate_plain(args.dir, layers) if args.plain else generate(args.dir, layers)
    size = paths["h5"].stat().st_size
    shards = sorted(paths["sharded"].parent.glob(f"bench_{layers}_*.weights.h5"))
    subprocess.run(["cat", *map(str, [*paths.values(), *shards])], stdout=subprocess.DEVNULL, check=True)  # warm
    methods = args.only.split(",")
    python = tf_python(args.tf_python)
    if python is None:
        methods = [m for m in methods if m not in ("tf", "lw-tf")]
        print("no Python with TensorFlow: skipping the tf / lw-tf rows", file=sys.stderr)
    elif {"tf", "lw-tf"} & set(methods):
        paths["tf"] = generate_tf(args.dir, layers, python)
        subprocess.run(["cat", *map(str, paths["tf"].parent.iterdir())], stdout=subprocess.DEVNULL, check=True)
    results = {}
    for method in methods:
        interpreter = python if method == "tf" else None
        runs = [run_child(method, paths, layers, interpreter) for _ in range(args.repeat)]
        results[method] = min(runs, key=lambda r: r["seconds"])
        print(f"  {method}: {[round(r['seconds'], 3) for r in runs]}", file=sys.stderr)
    print_table(results, size)


def print_table(results: dict[str, dict[str, float]], size: int) -> None:
    cat = results.get("cat", {}).get("seconds")
    h5 = results.get("h5py", {}).get("seconds")
    for ours, theirs in (("lwk", "keras"), ("lwk-h5", "keras-h5"), ("lwk-sharded", "keras-sharded"), ("lw-tf", "tf")):
        if ours in results and theirs in results:
            ratio = results[ours]["seconds"] / results[theirs]["seconds"]
            print(f"{ours} / {theirs} time: {ratio:.2f}")
    print(f"\nfile: {size / 1e9:.2f} GB ({size / MiB:.0f} MiB), warm page cache, best of runs, 64 MiB budget for lw")
    header = f"{'method':<14}{'seconds':>9}{'GB/s':>8}{'x cat':>8}{'x h5py':>8}{'peak RSS MiB':>14}{'growth MiB':>12}"
    print(header)
    print("-" * len(header))
    for method, r in results.items():
        s = r["seconds"]
        print(
            f"{method:<14}{s:>9.3f}{size / s / 1e9:>8.2f}"
            f"{(s / cat if cat else float('nan')):>8.2f}{(s / h5 if h5 else float('nan')):>8.2f}"
            f"{r['peak'] / MiB:>14.0f}{r['growth'] / MiB:>12.0f}"
        )


if __name__ == "__main__":
    main()
