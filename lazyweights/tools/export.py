"""Raw exports for C and C++: one little-endian C-order file per weight, or one packed file, plus manifest.json.

What people do by hand with ``ndarray.tofile`` / ``np.savetxt``, streamed
under the byte budget (large weights in row blocks) and described by a
``manifest.json`` that a C program can follow without any other parser:
for every weight its key, layer, name, dtype (``float32``, ``bfloat16``,
``int64``, ...), shape, file, byte offset and length of its data in that
file, and the SHA-256 of its little-endian C-order bytes (the same digest a
zarr mirror records).  ``manifest.json`` is written last: a directory without
it is an interrupted export.

Formats: ``bin`` (raw bytes; ``packed=True`` puts every weight in one
``weights.bin`` at 64-byte aligned offsets), ``npy`` (NumPy files; the
manifest's offset skips the header; bfloat16 is stored as its uint16 bits),
``txt`` (a line per index of the first axis, or per value for 0-d and 1-d
weights; ``%.9g``/``%.17g``/``%d``).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..checkpoint import Checkpoint, Url, opened
from ..errors import DestinationExistsError, LazyWeightsError, UnsupportedError
from ..manifest import WeightSpec
from ..stream import LoadReport
from ..stream.blocks import Block, Digests, for_each_block, le_bytes
from ..stream.budget import parse_bytes
from ..stream.progress import ProgressArg, progress_callback

__all__ = ["FORMATS", "export"]

FORMATS = ("bin", "npy", "txt")
MANIFEST = "manifest.json"
PACKED = "weights.bin"
ALIGN = 64


def export(
    src: Url | Checkpoint,
    out_dir: str | os.PathLike[str],
    format: str = "bin",
    *,
    packed: bool = False,
    optimizer: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    max_memory: int | str | None = None,
    concurrency: int | None = None,
    overwrite: bool = False,
    progress: ProgressArg = False,
) -> dict[str, Any]:
    """Export ``src``'s weights (and optimizer weights with ``optimizer=True``) into the local ``out_dir``.

    Returns the manifest written to ``out_dir/manifest.json``.  An ``out_dir``
    that already holds files is refused unless ``overwrite=True``.
    """
    if format not in FORMATS:
        raise LazyWeightsError(f"unknown export format {format!r}; expected one of {FORMATS}")
    if packed and format != "bin":
        raise LazyWeightsError(f"packed=True needs format='bin' (one raw file with offsets), not {format!r}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DestinationExistsError(f"{out}: the export directory is not empty; pass overwrite=True to write into it")
    out.mkdir(parents=True, exist_ok=True)
    with opened(src, storage_options) as ckpt:
        return _export(ckpt, out, format, packed, optimizer, parse_bytes(max_memory), concurrency, progress)


def _export(
    ckpt: Checkpoint,
    out: Path,
    fmt: str,
    packed: bool,
    optimizer: bool,
    max_memory: int | None,
    concurrency: int | None,
    progress: ProgressArg,
) -> dict[str, Any]:
    start = time.perf_counter()
    specs = [*ckpt.manifest.weights, *(ckpt.manifest.optimizer if optimizer else ())]
    if fmt == "txt":
        complex_ = [s.key for s in specs if s.np_dtype.kind == "c"]
        if complex_:
            raise UnsupportedError(f"{ckpt.url}: weights {complex_[:3]} are complex; export them as bin or npy")
    entries = {s.key: _entry(s, i, fmt, packed) for i, s in enumerate(specs)}
    if packed:
        offset = 0
        for spec in specs:
            offset = -(-offset // ALIGN) * ALIGN
            entries[spec.key]["offset"] = offset
            offset += spec.nbytes
    writer = _Writer(out, fmt, packed, entries)
    digests = Digests()

    def consume(block: Block) -> None:
        writer.write(block)
        digest = digests.update(block)
        if digest is not None:
            entries[block.spec.key]["sha256"] = digest
            writer.close(block.spec)

    report = LoadReport(url=ckpt.url, format=ckpt.format)
    with progress_callback(progress, sum(s.nbytes for s in specs), f"exporting {ckpt.url}") as tick:
        try:
            for_each_block(ckpt.source, specs, consume, max_memory=max_memory, concurrency=concurrency,
                           progress=tick, report=report)  # fmt: skip
        finally:
            writer.close_all()
    manifest = {
        "format": "lazyweights-export",
        "version": 1,
        "source": ckpt.url,
        "source_format": ckpt.format,
        "file_format": fmt,
        "packed": packed,
        "byte_order": "little",
        "order": "C",
        "attrs": {k: ckpt.attrs[k] for k in ("keras_version", "backend") if k in ckpt.attrs},
        "weights": [entries[s.key] for s in specs],
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    report.seconds = time.perf_counter() - start
    return manifest


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_.")[:100] or "weight"


def _entry(spec: WeightSpec, index: int, fmt: str, packed: bool) -> dict[str, Any]:
    return {
        "key": spec.key,
        "layer": spec.layer,
        "name": spec.name,
        "dtype": spec.np_dtype.name if spec.dtype != "bfloat16" else "bfloat16",
        "shape": list(spec.shape),
        "file": PACKED if packed else f"{index:04d}_{_safe(spec.key)}.{fmt}",
        "offset": 0,
        "nbytes": spec.nbytes,
        "sha256": None,
    }


class _Writer:
    """Open files per weight and write blocks in order (packed: at each weight's offset)."""

    def __init__(self, out: Path, fmt: str, packed: bool, entries: dict[str, dict[str, Any]]):
        self.out, self.fmt, self.entries = out, fmt, entries
        self.files: dict[str, IO[bytes]] = {}
        self.packed_fd = os.open(out / PACKED, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if packed else None
        self.written: dict[str, int] = {}

    def write(self, block: Block) -> None:
        entry = self.entries[block.spec.key]
        if self.packed_fd is not None:
            at = entry["offset"] + self.written.get(block.spec.key, 0)
            data = le_bytes(block.values)
            done = 0
            while done < data.nbytes:
                done += os.pwrite(self.packed_fd, data[done:], at + done)
            self.written[block.spec.key] = self.written.get(block.spec.key, 0) + data.nbytes
            return
        f = self.files.get(block.spec.key)
        if f is None:
            f = self.files[block.spec.key] = open(self.out / entry["file"], "wb")  # noqa: SIM115 - closed at last block
            if self.fmt == "npy":
                entry["offset"] = _npy_header(f, block.spec)
        if self.fmt == "txt":
            _write_text(f, block.values)
        else:
            f.write(le_bytes(block.values))

    def close(self, spec: WeightSpec) -> None:
        f = self.files.pop(spec.key, None)
        if f is not None:
            if self.fmt == "txt":
                self.entries[spec.key]["nbytes"] = f.tell()
            f.close()

    def close_all(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()
        if self.packed_fd is not None:
            os.close(self.packed_fd)
            self.packed_fd = None


def _npy_header(f: IO[bytes], spec: WeightSpec) -> int:
    """Write a .npy header for ``spec`` (little-endian; bfloat16 as uint16 bits); return its length."""
    dtype = np.dtype("<u2") if spec.dtype == "bfloat16" else spec.np_dtype.newbyteorder("<")
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(spec.shape)}
    np.lib.format.write_array_header_2_0(f, header)
    return f.tell()


def _write_text(f: IO[bytes], values: np.ndarray) -> None:
    """Rows of the first axis as text; floats with enough digits to round-trip their dtype."""
    if values.dtype.kind == "f" or values.dtype.name == "bfloat16":
        fmt = "%.17g" if values.dtype.itemsize == 8 else "%.9g"
        values = values.astype(np.float64)
    else:
        fmt = "%d"
    rows = values.reshape(-1, 1) if values.ndim < 2 else values.reshape(values.shape[0], -1)
    np.savetxt(f, rows, fmt=fmt)
