"""One fuzz worker: reads ``mutated<TAB>original`` paths on stdin; prints lazyweights' verdict, then the oracle's.

lazyweights runs first and its line is flushed before the oracle touches the
input, so a crash or hang inside the oracle is never blamed on lazyweights.
Oracles: h5py for HDF5 files and ``.keras`` archives, zarr-python for zarr
mirrors (folders ending ``.zarr``), and for TensorFlow checkpoints (folders
ending ``.tf``) the values TensorFlow wrote, kept beside the original
(``oracle.json`` / ``oracle.npz``): nothing but TensorFlow reads a damaged
bundle, so a damaged TensorFlow checkpoint must give those values or an error.
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

_BLOCK = 1 << 20  # elements hashed at a time: a digest never copies a whole (possibly huge) array


def _digest(values: np.ndarray) -> str:
    """A digest of the values that ignores byte order and container dtype (h5py may convert, e.g. to native)."""
    a = np.asarray(values)
    if a.dtype.itemsize == 2 and (a.dtype.kind == "V" or a.dtype.name == "bfloat16"):
        a = a.view(np.uint16)
    kind = a.dtype.kind
    wide = {"u": "u8", "i": "i8", "b": "i8", "f": "f8", "c": "c16"}.get(kind)
    h = hashlib.sha256()
    flat = a.reshape(-1)
    for i in range(0, max(flat.size, 1), _BLOCK):
        block = flat[i : i + _BLOCK]
        h.update(np.ascontiguousarray(block.astype(wide) if wide else block).tobytes())
    h.update(str(a.shape).encode())
    return h.hexdigest()[:16]


def _bytes_digest(values: np.ndarray) -> str:
    """A digest of the stored bytes alone (TensorFlow's are little-endian): a damaged index may honestly
    declare another dtype or shape for the same bytes, as TensorFlow would then read them."""
    a = np.asarray(values)
    if a.dtype.itemsize == 2 and (a.dtype.kind == "V" or a.dtype.name == "bfloat16"):
        a = a.view(np.uint16)
    if a.dtype.kind in "OUSV":
        return _digest(a)
    return hashlib.sha256(np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"))).tobytes()).hexdigest()[:16]


def judge_lazyweights(path: str) -> tuple[dict, dict[str, str]]:
    """lazyweights' verdict on ``path`` and the HDF5 dataset path of each weight it returned."""
    import lazyweights as lw

    try:
        with lw.open(path, index=False) as ckpt:
            specs = {s.key: s for s in (*ckpt.manifest.weights, *ckpt.manifest.optimizer)}
            arrays = lw.load(ckpt)
            for s in ckpt.manifest.optimizer:
                arrays[s.key] = ckpt[s.key].read()
    except Exception as exc:  # the point: classify whatever comes out
        mine = isinstance(exc, lw.LazyWeightsError)  # BudgetError is a MemoryError too: a refusal, not a blow-up
        if isinstance(exc, MemoryError) and not mine:
            return {"memory": True}, {}
        return {"error": f"{type(exc).__name__}: {str(exc)[:200]}", "lazyweights": mine}, {}
    names = {k: _oracle_name(path, specs[k]) for k in arrays}
    digest = _bytes_digest if path.endswith(".tf") else _digest
    return {"digests": {names[k]: digest(v) for k, v in arrays.items()}}, names


def _oracle_name(path: str, spec: object) -> str:
    """What the oracle calls a weight: its HDF5 or zarr path, or its TensorFlow key."""
    return spec.key if path.endswith(".tf") else spec.path


def judge_oracle(path: str, names: list[str]) -> dict[str, str]:
    """The oracle's digest of each named weight it can read from ``path``; unreadable ones are left out."""
    if path.endswith(".zarr"):
        return judge_zarr(path, names)
    if path.endswith(".tf"):
        return judge_tf(path, names)
    return judge_h5py(path, names)


def judge_zarr(path: str, names: list[str]) -> dict[str, str]:
    """zarr-python's digest of each array path of the store at ``path``."""
    import zarr

    try:  # zarr's default: the root's consolidated metadata when there is some, as lazyweights reads it
        group = zarr.open_group(path, mode="r")
    except Exception:
        group = None
    out: dict[str, str] = {}
    for name in names:
        for reader in (lambda n=name: group[n], lambda n=name: zarr.open_array(path, path=n, mode="r")):
            try:
                out[name] = _digest(reader()[...])
                break
            except Exception:
                continue
    return out


def judge_tf(path: str, names: list[str]) -> dict[str, str]:
    """The values TensorFlow wrote for each key (the original checkpoint's oracle arrays; ``path`` is not read)."""
    try:
        with open(os.path.join(path, "oracle.json")) as f:
            files = {t["key"]: t["npz"] for t in json.load(f)["tensors"]}
        arrays = np.load(os.path.join(path, "oracle.npz"))
        return {k: _bytes_digest(arrays[files[k]]) for k in names if k in files}
    except Exception:
        return {}


def judge_h5py(path: str, paths: list[str]) -> dict[str, str]:
    """h5py's digest of each dataset path it can read (the oracle); unreadable ones are left out."""
    import h5py

    target: object = path
    if zipfile.is_zipfile(path):
        try:
            target = io.BytesIO(_stored_member(path, "model.weights.h5"))
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


def _stored_member(path: str, name: str) -> bytes:
    """The bytes of an uncompressed zip member as they lie in the archive (as lazyweights reads them in place),
    without zipfile's CRC check: damage inside the HDF5 bytes is then for h5py to see, not for the zip layer."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
        if info.compress_type != zipfile.ZIP_STORED:
            return z.read(name)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        if header[:4] != b"PK\x03\x04":
            raise ValueError("no local file header")
        skip = int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
        f.seek(info.header_offset + 30 + skip)
        return f.read(info.compress_size)


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
        oracle = judge_oracle(original if path.endswith(".tf") else path, wanted)  # nothing reads a damaged TF bundle
        print(json.dumps({"h5py": oracle, "original": judge_oracle(original, wanted)}), flush=True)


if __name__ == "__main__":
    main()
