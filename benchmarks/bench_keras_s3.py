"""Keras 3 models from S3 under a 64 MiB budget: the predictions of Keras's own load, RSS bounded.

    python benchmarks/bench_keras_s3.py [--model sharded|subclassed] [--size-gb 1] [--shard-gb 0.1]
                                        [--width 4096] [--budget 64MiB] [--concurrency N] [--dir DIR] [--json]

Two models, each written once by Keras itself:

- ``sharded``: an MLP of Dense(4096) layers whose weights total ``--size-gb``,
  saved as sharded weights (``save_weights("….weights.json",
  max_shard_size=--shard-gb)``: an index and shards of about that many GB);
  loaded into a freshly built model (``load_weights``);
- ``subclassed``: a subclassed model holding Dense(``--width``) layers in
  plain, list, tuple and dict attributes (nested in a sub-layer), and a layer
  whose state is an asset file; saved as a ``.keras`` archive and rebuilt
  from it (``load_model``).

The files go to a bucket of a moto S3 server on loopback (``tests/stores.py``).
Then, each in a fresh process:

- ``keras``: Keras's own load of the local copy;
- ``lwk``: ``lazyweights.keras`` of the ``s3://`` copy with
  ``max_memory=--budget`` (and ``concurrency=--concurrency``; default, the
  library's 16 connections, which suit real S3).  moto reads and copies
  the whole object for every ranged GET, so a request costs the object's
  size: the sharded model's 64 MiB shards are cheap, but a single 0.5 GB
  ``.keras`` wants ``--concurrency 4`` (fewer, larger requests), and at
  1 GB moto, not the load, takes minutes.

Each reports its wall time, "peak RSS" (VmHWM, reset just before the load,
after a warm-up that imports the S3 client and builds a tiny model of the
same layer classes, so one-off first-use costs are not counted),
"growth" (that minus the RSS just before the load) and the predictions on a
fixed input.  For ``load_model``, "model" is the growth of Keras building the
model from its config alone (``build``: no weights read; its variables, and
what the allocator keeps of their initialisation), and "over" is growth
minus model: what loading the weights cost beyond the model itself.  The run
fails unless lwk's predictions equal Keras's exactly.  ``--json`` prints one
JSON object (what ``tests/test_keras_large.py`` reads) instead of the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from bench_load import WIDTH, build_model, layer_count  # noqa: E402
from memory import peak_rss, reset_peak_rss, rss_now  # noqa: E402

MiB = 1 << 20
BUCKET = "lw-bench"


class Table(keras.layers.Layer):
    """A layer whose only state is an asset file (as vocabularies are): fresh, it multiplies by zeros."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.table = np.zeros(4, "f4")

    def call(self, x: Any) -> Any:
        return x[:, :4] * keras.ops.convert_to_tensor(self.table)

    def save_assets(self, dir_path: str) -> None:
        np.save(Path(dir_path) / "table.npy", self.table)

    def load_assets(self, dir_path: str) -> None:
        self.table = np.load(Path(dir_path) / "table.npy", allow_pickle=False)


class Block(keras.layers.Layer):
    """Dense layers in a dict and a tuple attribute."""

    def __init__(self, width: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.width = width
        self.pair = (keras.layers.Dense(width, activation="tanh"), keras.layers.LayerNormalization())
        self.heads = {"first": keras.layers.Dense(width), "second": keras.layers.Dense(width)}

    def call(self, x: Any) -> Any:
        x = self.pair[1](self.pair[0](x))
        return self.heads["first"](x) + self.heads["second"](x)

    def get_config(self) -> dict:
        return {**super().get_config(), "width": self.width}


class Nested(keras.Model):
    """A subclassed model: a Dense attribute, a list of Blocks, an asset layer; attributes not in name order."""

    def __init__(self, width: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.width = width
        self.stem = keras.layers.Dense(width)
        self.blocks = [Block(width), Block(width)]
        self.lookup = Table()

    def call(self, x: Any) -> Any:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.lookup(x)

    def get_config(self) -> dict:
        return {"width": self.width, "name": self.name}


CUSTOM = {"Nested": Nested, "Block": Block, "Table": Table}


def generate(directory: Path, model: str, size_gb: float, shard_gb: float, width: int) -> list[Path]:
    """The files of the model (written once), the one to open first."""
    if model == "sharded":
        layers = layer_count(size_gb)
        index = directory / f"sharded_{layers}_{shard_gb:g}" / "model.weights.json"
        if not index.exists():
            print(f"generating {layers} Dense({WIDTH}) layers, shards of {shard_gb:g} GB ...", file=sys.stderr)
            index.parent.mkdir(parents=True, exist_ok=True)
            build_model(layers).save_weights(index, max_shard_size=shard_gb)
        return [index, *sorted(index.parent.glob("model_*.weights.h5"))]
    path = directory / f"nested_{width}" / "nested.keras"
    if not path.exists():
        print(f"generating a subclassed model of Dense({width}) layers ...", file=sys.stderr)
        path.parent.mkdir(parents=True, exist_ok=True)
        keras.utils.set_random_seed(0)
        nested = Nested(width)
        nested(np.zeros((1, width), "f4"))
        nested.lookup.table = np.array([1.5, -2.0, 3.25, 9.0], "f4")
        nested.save(path)
    return [path]


def child(args: argparse.Namespace) -> dict:
    """One load in this fresh process; the predictions go to ``args.predictions`` (.npy)."""
    from lazyweights import keras as lwk

    keras.utils.set_random_seed(1)  # not the saved model's seed: the load must change every weight
    options = {"storage_options": json.loads(args.options), "max_memory": args.budget, "concurrency": args.concurrency}
    model = build_model(args.layers) if args.model == "sharded" else None
    config = zipfile.ZipFile(args.url).read("config.json") if args.child == "build" else None
    _warm_up(args)
    before = rss_now()
    reset_peak_rss()
    start = time.perf_counter()
    report = None
    if args.model == "sharded" and args.child == "keras":
        model.load_weights(args.url)
    elif args.model == "sharded":
        report = lwk.load_weights(model, args.url, **options)
    elif args.child == "build":
        from keras.src.saving import saving_lib

        model = saving_lib._model_from_config(config, CUSTOM, True, True)
    elif args.child == "keras":
        model = keras.saving.load_model(args.url, custom_objects=CUSTOM)
    else:
        model = lwk.load_model(args.url, custom_objects=CUSTOM, **options)
    seconds = time.perf_counter() - start
    peak = peak_rss()
    x = np.random.default_rng(0).standard_normal((2, WIDTH if args.model == "sharded" else args.width))
    np.save(args.predictions, np.asarray(model.predict(x.astype("float32"), verbose=0)))
    out = {"seconds": seconds, "peak": peak, "growth": max(0, peak - before), "model": 0}
    if report is not None:
        out.update(peak_in_flight=report.peak_in_flight, loaded=len(report.loaded), requests=report.requests)
    return out


def _warm_up(args: argparse.Namespace) -> None:
    """What any load pays once per process, paid before measuring, for both loads alike.

    The S3 client's modules, and Keras's first build of each layer class
    (a tiny model of the same classes, built and run).
    """
    import s3fs  # noqa: F401

    if args.model == "subclassed":
        tiny = Nested(8)
        tiny.predict(np.zeros((1, 8), "f4"), verbose=0)


def run_child(args: argparse.Namespace, mode: str, url: str, predictions: Path, options: dict, layers: int) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--model", args.model, "--url", url, "--layers", str(layers)]
    cmd += ["--width", str(args.width), "--budget", args.budget, "--predictions", str(predictions)]
    cmd += ["--options", json.dumps(options)] + (["--concurrency", str(args.concurrency)] if args.concurrency else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    if out.returncode:
        raise SystemExit(f"{mode} load failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace) -> dict:
    """Generate, upload, load both ways; the results and whether the predictions are equal."""
    from tests.stores import s3_server

    files = generate(args.dir, args.model, args.size_gb, args.shard_gb, args.width)
    layers = layer_count(args.size_gb)
    size = sum(p.stat().st_size for p in files)
    with s3_server() as s3:
        s3.bucket(BUCKET, versioned=True)
        fs = s3.fs()
        start = time.perf_counter()
        for path in files:
            fs.put(str(path), f"{BUCKET}/{path.parent.name}/{path.name}")
        upload = time.perf_counter() - start
        url = f"s3://{BUCKET}/{files[0].parent.name}/{files[0].name}"
        keras_out, lwk_out = args.dir / "keras_predictions.npy", args.dir / "lwk_predictions.npy"
        results = {
            "keras": run_child(args, "keras", str(files[0]), keras_out, {}, layers),
            "lwk": run_child(args, "lwk", url, lwk_out, s3.options, layers),
        }
    if args.model == "subclassed":
        results["build"] = run_child(args, "build", str(files[0]), args.dir / "build.npy", {}, layers)
        for method in ("keras", "lwk", "build"):
            results[method]["model"] = results["build"]["growth"]
    theirs, ours = np.load(keras_out), np.load(lwk_out)
    return {"model": args.model, "size": size, "files": len(files), "upload_seconds": upload, "budget": args.budget,
            "concurrency": args.concurrency, "equal_predictions": bool(np.array_equal(theirs, ours)),
            "nonzero_predictions": bool(np.abs(theirs).sum() > 0), **results}  # fmt: skip


def print_table(result: dict) -> None:
    size, lwk = result["size"], result["lwk"]
    print(
        f"\n{result['model']}: {size / 1e9:.2f} GB in {result['files']} file(s); lwk from s3:// (moto on loopback, "
        f"uploaded in {result['upload_seconds']:.1f} s) with max_memory={result['budget']}, "
        f"concurrency={result['concurrency'] or 'default'} ({lwk.get('requests', '?')} requests); "
        "Keras from local disk (warm page cache)"
    )
    header = (
        f"{'method':<8}{'seconds':>9}{'GB/s':>8}{'peak RSS MiB':>14}{'growth MiB':>12}{'model MiB':>11}{'over MiB':>10}"
    )
    print(header)
    print("-" * len(header))
    for method in ("keras", "lwk", "build"):
        if method not in result:
            continue
        r = result[method]
        print(
            f"{method:<8}{r['seconds']:>9.2f}{size / r['seconds'] / 1e9:>8.2f}{r['peak'] / MiB:>14.0f}"
            f"{r['growth'] / MiB:>12.0f}{r['model'] / MiB:>11.0f}{(r['growth'] - r['model']) / MiB:>10.0f}"
        )
    print(
        f"lwk / keras time: {lwk['seconds'] / result['keras']['seconds']:.2f}; lwk over / (budget + 64 MiB): "
        f"{(lwk['growth'] - lwk['model']) / MiB:.0f} / {_bytes(result['budget']) / MiB + 64:.0f} MiB; "
        f"predictions equal: {result['equal_predictions']}"
    )


def _bytes(budget: str) -> int:
    from lazyweights.stream.budget import parse_bytes

    return int(parse_bytes(budget) or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["sharded", "subclassed"], default="sharded")
    parser.add_argument("--size-gb", type=float, default=1.0, help="sharded: the weights' total")
    parser.add_argument("--shard-gb", type=float, default=0.1)
    parser.add_argument("--width", type=int, default=4096, help="subclassed: the Dense width (4096: 0.47 GB)")
    parser.add_argument("--budget", default="64MiB")
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/lazyweights-bench"))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child")
    parser.add_argument("--url")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--predictions")
    parser.add_argument("--options", default="{}")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    result = measure(args)
    print(json.dumps(result) if args.json else "", end="\n" if args.json else "")
    if not args.json:
        print_table(result)
    if not result["equal_predictions"]:
        raise SystemExit("lwk's predictions differ from Keras's")


if __name__ == "__main__":
    main()
