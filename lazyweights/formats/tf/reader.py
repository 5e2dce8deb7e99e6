"""One TensorFlow checkpoint opened for reading: index, shards, tensors and object graph over byte access.

:class:`TFCheckpoint` ties the pieces together.  Opening it reads only the
index (one request when it is small) and the size of each data shard, and
refuses entries that run past their shard.  Tensors are fetched on demand, in
``part_size`` pieces whose CRC32C is extended in file order and compared with
the index's at the end (for concurrent part reads, combine per-part CRCs with
:func:`~lazyweights.formats.tf.crc.crc32c_combine`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np

from ...errors import FormatError, MissingKeyError, UnsupportedError
from .bundle import BundleIndex, TensorEntry, check_crc, decode_strings, decode_tensor, read_index
from .checkpoint_dir import resolve_prefix
from .crc import crc32c_extend
from .files import CheckpointFiles, FsspecFiles, LocalFiles
from .graph import OBJECT_GRAPH_KEY, ObjectGraph, parse_object_graph

__all__ = ["TFCheckpoint"]

PART_SIZE = 64 << 20


class TFCheckpoint:
    """A TensorFlow-format checkpoint: ``<prefix>.index`` plus its ``<prefix>.data-*`` shards."""

    def __init__(self, files: CheckpointFiles, prefix: str):
        self.files = files
        self.prefix = prefix
        index_name = prefix + ".index"
        self.index_size = size = self._size(index_name, "index")
        self.index: BundleIndex = read_index(partial(files.read, index_name), size, index_name, prefix)
        self.shard_sizes = {i: self._size(n, "data shard") for i, n in enumerate(self.index.shard_names())}
        self.index.check_shards(self.shard_sizes)
        self._graph: ObjectGraph | None = None

    @classmethod
    def open(cls, path: str, files: CheckpointFiles | None = None) -> TFCheckpoint:
        """Open the checkpoint that ``path`` names (prefix, ``ckpt-N`` prefix, or directory with a pointer)."""
        files = files if files is not None else LocalFiles()
        return cls(files, resolve_prefix(files, path))

    @classmethod
    def from_url(cls, url: str, **storage_options: Any) -> TFCheckpoint:
        """Open a checkpoint at any fsspec URL (``s3://bucket/run/ckpt``, ``gs://…/train_dir``)."""
        import fsspec

        fs, path = fsspec.core.url_to_fs(url, **storage_options)
        return cls.open(path, FsspecFiles(fs))

    def _size(self, name: str, what: str) -> int:
        try:
            return self.files.size(name)
        except FileNotFoundError:
            raise FormatError(f"{name}: the checkpoint's {what} is missing") from None

    # -- listing ---------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Every tensor key, in index order (strings and the object graph included)."""
        return list(self.index.entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.index.entries)

    def __len__(self) -> int:
        return len(self.index.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.index.entries

    def entry(self, key: str) -> TensorEntry:
        try:
            return self.index.entries[key]
        except KeyError:
            raise MissingKeyError(f"{self.index.index_name}: no tensor {key!r}") from None

    @property
    def unsupported(self) -> dict[str, str]:
        """Keys that :meth:`read` cannot return as arrays, with the reason."""
        return self.index.unsupported

    def data_files(self) -> list[str]:
        """The shards that hold at least one tensor's bytes."""
        used = sorted({e.shard_id for e in self.index.stored_entries() if e.size})
        return [self.index.shard_name(i) for i in used]

    # -- reading ---------------------------------------------------------------------------------
    def _bytes(self, entry: TensorEntry, *, verify: bool, part_size: int) -> bytes:
        name = self.index.shard_name(entry.shard_id)
        out = bytearray()
        crc = 0
        for start in range(entry.offset, entry.offset + entry.size, max(part_size, 1)):
            length = min(part_size, entry.offset + entry.size - start)
            part = self.files.read(name, start, length)
            if len(part) != length:
                raise FormatError(f"{name}: tensor {entry.key!r}: short read at {start} ({len(part)} of {length})")
            if verify:
                crc = crc32c_extend(crc, part)
            out += part
        if verify:
            check_crc(entry, crc, name)
        return bytes(out)

    def read(self, key: str, *, verify: bool = True, part_size: int = PART_SIZE) -> np.ndarray:
        """The tensor ``key`` as a numpy array, its CRC32C checked unless ``verify=False``."""
        entry = self.entry(key)
        if entry.dtype is None:
            raise UnsupportedError(f"{self.index.index_name}: tensor {key!r} is not an array: {entry.unsupported}")
        if entry.slices:
            return self._read_sliced(entry, verify=verify, part_size=part_size)
        data = self._bytes(entry, verify=verify, part_size=part_size)
        return decode_tensor(entry, data, self.index.header, self.index.shard_name(entry.shard_id), verify=False)

    def _read_sliced(self, entry: TensorEntry, *, verify: bool, part_size: int) -> np.ndarray:
        where = f"{self.index.index_name}: tensor {entry.key!r}"
        out = np.empty(entry.shape, dtype=entry.dtype)
        covered = 0
        for piece in entry.slices:
            stored = self.index.slice_entry(entry, piece)
            expected = piece.shape_in(entry.shape)
            if stored.shape != expected or stored.dtype_code != entry.dtype_code:
                raise FormatError(f"{where}: slice {piece} stored as {stored.shape}, expected {expected}")
            try:
                bounds = piece.bounds(entry.shape)
                target = out[bounds]
            except (ValueError, IndexError) as exc:
                raise FormatError(f"{where}: slice {piece} does not fit shape {entry.shape}: {exc}") from None
            if target.shape != expected:
                raise FormatError(f"{where}: slice {piece} lies outside shape {entry.shape}")
            data = self._bytes(stored, verify=verify, part_size=part_size)
            shard = self.index.shard_name(stored.shard_id)
            target[...] = decode_tensor(stored, data, self.index.header, shard, verify=False)
            covered += math.prod(expected)
        if covered != math.prod(entry.shape):
            raise FormatError(f"{where}: slices cover {covered} of {math.prod(entry.shape)} elements")
        return out

    def read_strings(self, key: str, *, verify: bool = True) -> list[bytes]:
        """The elements of the string tensor ``key``, in C order."""
        entry = self.entry(key)
        if not entry.is_string or entry.slices:
            raise FormatError(f"{self.index.index_name}: tensor {key!r} is not a whole string tensor")
        data = self._bytes(entry, verify=False, part_size=PART_SIZE)
        return decode_strings(entry, data, self.index.shard_name(entry.shard_id), verify=verify)

    def object_graph(self) -> ObjectGraph | None:
        """The decoded object graph, or None for a name-based (TF1 ``Saver``) checkpoint without one."""
        if self._graph is None and OBJECT_GRAPH_KEY in self.index.entries:
            entry = self.entry(OBJECT_GRAPH_KEY)
            (data,) = self.read_strings(OBJECT_GRAPH_KEY) if entry.shape == () else [b""]
            self._graph = parse_object_graph(data, self.index.shard_name(entry.shard_id))
        return self._graph
