"""One fuzz worker: reads ``mutated<TAB>original`` paths on stdin; prints lazyweights' verdict, then h5py's.

lazyweights runs first and its line is flushed before h5py touches the file,
so a crash or hang inside the oracle is never blamed on lazyweights.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import sys
import zipfile

import numpy as np


def _digest(values: np.ndarray) -> str:
    """A digest of the values that ignores byte order and container dtype (h5py may convert, e.g. to native)."""
    a = np.asarray(values)
    if a.dtype.itemsize == 2 and (a.dtype.kind == "V" or a.dtype.name == "bfloat16"):
        a = a.view(np.uint16)
    kind = a.dtype.kind
    if kind in "iub":
        a = a.astype("u8") if kind == "u" else a.astype("i8")
    elif kind == "f":
        a = a.astype("f8")
    elif kind == "c":
        a = a.astype("c16")
    return hashlib.sha256(np.ascontiguousarray(a).tobytes() + str(a.shape).encode()).hexdigest()[:16]


def judge_lazyweights(path: str) -> tuple[dict, dict[str, str]]:
    """lazyweights' verdict on ``path`` and the HDF5 dataset path of each weight it returned."""
    import lazyweights as lw

    try:
        with lw.open(path, index=False) as ckpt:
            specs = {s.key: s for s in (*ckpt.manifest.weights, *ckpt.manifest.optimizer)}
            arrays = lw.load(ckpt)
            for s in ckpt.manifest.optimizer:
                arrays[s.key] = ckpt[s.key].read()
    except MemoryError:
        return {"memory": True}, {}
    except Exception as exc:  # the point: classify whatever comes out
        mine = isinstance(exc, lw.LazyWeightsError)
        return {"error": f"{type(exc).__name__}: {str(exc)[:200]}", "lazyweights": mine}, {}
    digests = {specs[k].path: _digest(v) for k, v in arrays.items()}
    return {"digests": digests}, {k: specs[k].path for k in arrays}


def judge_h5py(path: str, paths: list[str]) -> dict[str, str]:
    """h5py's digest of each dataset path it can read (the oracle); unreadable ones are left out."""
    import h5py

    target: object = path
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                target = io.BytesIO(z.read("model.weights.h5"))
        except Exception:
            return {}
    out: dict[str, str] = {}
    try:
        with h5py.File(target, "r") as f:
            for p in paths:
                try:
                    out[p] = _digest(f[p][()])
                except Exception:
                    continue
    except Exception:
        return {}
    return out


def main() -> None:
    limit = int(os.environ.get("LW_FUZZ_MEMORY_MB", "2048")) << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for line in sys.stdin:
        path, original = line.rstrip("\n").split("\t")
        verdict, paths = judge_lazyweights(path)
        if verdict.get("memory"):
            print(json.dumps({"lw": "memory"}), flush=True)
        else:
            print(json.dumps({"lw": verdict}), flush=True)
        wanted = sorted(set(paths.values()))
        print(json.dumps({"h5py": judge_h5py(path, wanted), "original": judge_h5py(original, wanted)}), flush=True)


if __name__ == "__main__":
    main()
