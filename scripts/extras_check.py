"""`make extras-check`: each extra alone does what the README says, exercised once against real servers.

For every extra, a fresh interpreter runs one use of it (a load over HTTP,
from moto's S3, from a GCS emulator, a zarr mirror, a Keras and a torch load,
a dask.distributed load, a TensorFlow-format read, an LZF chunk) with the
modules of every *other* extra made unimportable (``sys.modules[name] =
None``), except those the extra itself depends on.  A feature that quietly
needs a second extra fails here.  A last run hides every extra and loads a
local file: the bare install.  Servers run in this process on loopback.

Installing nothing keeps this fast enough for CI (a fresh virtualenv per
extra, torch and Keras included, takes many minutes on two cores); what it
does not catch is a dependency missing from ``pyproject.toml`` that another
extra happens to install.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import h5py
import numpy as np
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lazyweights.tools.serve import serve  # noqa: E402
from tests.stores import gcs_server, s3_server  # noqa: E402

# extra -> (modules it provides, extras it needs beside it, the use to exercise)
EXTRAS: dict[str, tuple[list[str], list[str], str]] = {
    "http": (["aiohttp"], [], "check(lw.load(HTTP))"),
    "s3": (["s3fs"], [], "check(lw.load('s3://lw-extras/model.h5', storage_options=S3))"),
    "gcs": (["gcsfs"], [], "check(lw.load('gs://lw-gcs/model.h5', storage_options=GCS))"),
    "zarr": (["zarr"], [], "lw.mirror(H5, TMP + '/m.zarr', compressor='zstd')\ncheck(lw.load(TMP + '/m.zarr'))"),
    "keras": (["keras"], ["torch"], """
import keras
from lazyweights import keras as lwk
def build():
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="fc"), keras.layers.Dense(2)])
saved = build()
saved.save_weights(TMP + "/k.weights.h5")
model = build()
lwk.load_weights(model, TMP + "/k.weights.h5")
assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), saved.get_weights(), strict=True))
"""),
    "torch": (["torch"], [], """
import torch
from lazyweights import torch as lwt
module = torch.nn.Linear(3, 4)
missing, unexpected = lwt.load_state_dict(module, TORCH_H5)
assert (missing, unexpected) == ([], [])
check({"dense/kernel:0": module.weight.detach().numpy(), "dense/bias:0": module.bias.detach().numpy()})
"""),
    "distributed": (["distributed"], [], """
from distributed import Client, LocalCluster
from lazyweights.tools import distributed as lwd
with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
    check(lwd.load(H5, client))
"""),
    "lzf": (["lzf"], [], """
from lazyweights.formats import filters
assert filters._lzf_available()
check(lw.load(LZF))
"""),
}

# A TensorFlow checkpoint read with the core alone, every tensor against TensorFlow's own reading of it.
TF_CHECK = """
meta = json.loads(open(TF + "/oracle.json").read())
with lw.open(TF) as ckpt, np.load(TF + "/oracle.npz") as npz:
    for t in meta["tensors"]:
        if t["key"] in ckpt:
            assert np.array_equal(ckpt[t["key"]].read(), npz[t["npz"]]), t["key"]
"""

SNIPPET = """
import json, sys
for name in {hidden!r}:
    sys.modules[name] = None
import numpy as np
import lazyweights as lw
H5, LZF, TORCH_H5, HTTP, TMP, TF = {h5!r}, {lzf!r}, {torch_h5!r}, {http!r}, {tmp!r}, {tf!r}
S3, GCS, EXPECTED = {s3!r}, {gcs!r}, {expected!r}
def check(arrays):
    with np.load(EXPECTED) as npz:
        assert sorted(arrays) == sorted(npz.files), (sorted(arrays), npz.files)
        for key in npz.files:
            assert np.array_equal(np.asarray(arrays[key]), npz[key]), key
{body}
print("ok")
"""


def closure(extra: str) -> set[str]:
    """Distributions (normalised names) that ``pip install lazyweights[extra]`` would bring, recursively."""
    todo = [Requirement(r) for r in metadata.requires("lazyweights") or []]
    todo = [r for r in todo if r.marker is not None and r.marker.evaluate({"extra": extra})]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = req.name.lower().replace("_", "-")
        if name in seen or name == "lazyweights":
            continue
        seen.add(name)
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            sub = Requirement(text)
            if sub.marker is None or sub.marker.evaluate({"extra": ""}):
                todo.append(sub)
    return seen


# The distribution each module above comes from, to tell whether an extra brings it itself.
DISTRIBUTIONS = {"aiohttp": "aiohttp", "s3fs": "s3fs", "gcsfs": "gcsfs", "zarr": "zarr", "keras": "keras",
                 "torch": "torch", "distributed": "distributed",
                 "lzf": "python-lzf"}  # fmt: skip


def hidden_for(extra: str | None) -> list[str]:
    """The other extras' modules, less those this extra (and the extras it needs) install themselves."""
    keep = [] if extra is None else [extra, *EXTRAS[extra][1]]
    allowed = set().union(*(closure(e) for e in keep))
    return sorted(
        m for e, (mods, _, _) in EXTRAS.items() if e not in keep for m in mods if DISTRIBUTIONS[m] not in allowed
    )


def fixtures(tmp: Path) -> dict[str, str]:
    """A generic HDF5 checkpoint (plain and LZF-compressed), a torch-named one, and the values to expect."""
    rng = np.random.default_rng(0)
    arrays = {"dense/kernel:0": rng.standard_normal((4, 3)).astype("<f4"),
              "dense/bias:0": rng.standard_normal(4).astype("<f4")}  # fmt: skip
    with h5py.File(tmp / "model.h5", "w") as f, h5py.File(tmp / "lzf.h5", "w") as g:
        for key, value in arrays.items():
            f[key] = value
            g.create_dataset(key, data=value, chunks=value.shape, compression="lzf")
    with h5py.File(tmp / "torch.h5", "w") as f:
        f["weight"], f["bias"] = arrays["dense/kernel:0"], arrays["dense/bias:0"]
    np.savez(tmp / "expected.npz", **arrays)
    return {"h5": str(tmp / "model.h5"), "lzf": str(tmp / "lzf.h5"), "torch_h5": str(tmp / "torch.h5"),
            "expected": str(tmp / "expected.npz"), "tmp": str(tmp),
            "tf": str(ROOT / "tests" / "fixtures" / "tf" / "sequential_adam")}  # fmt: skip


def run(extra: str | None, body: str, paths: dict[str, str]) -> tuple[bool, str, float]:
    hidden = hidden_for(extra)
    code = SNIPPET.format(hidden=hidden, body=body, **paths)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KERAS_BACKEND": "torch",
           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}  # the README's advice for GCS emulators  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    ok = done.returncode == 0 and done.stdout.strip().endswith("ok")
    why = "" if ok else (done.stderr.strip().splitlines() or ["no output"])[-1]
    return ok, why, time.perf_counter() - start


def main() -> int:
    only = set(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp, serve(tmp) as http, s3_server() as s3, gcs_server() as gcs:
        paths = fixtures(Path(tmp))
        s3.bucket("lw-extras", versioned=False)
        s3.fs().put_file(paths["h5"], "lw-extras/model.h5")
        gcs.fs().put_file(paths["h5"], f"{gcs.bucket}/model.h5")
        paths.update(http=f"{http.url}/model.h5", s3=s3.options, gcs=gcs.options)
        cases = [(e, body) for e, (_, _, body) in EXTRAS.items() if not only or e in only]
        cases.append((None, "check(lw.load(H5))\n" + TF_CHECK))  # the core alone: HDF5 and TensorFlow checkpoints
        failed = 0
        for extra, body in cases:
            ok, why, seconds = run(extra, body, paths)
            failed += not ok
            label = f"[{extra}]" if extra else "bare"
            print(f"{label:15} {'ok' if ok else 'FAILED'} ({seconds:.1f} s){'' if ok else ': ' + why}", flush=True)
    print(f"{len(cases) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
