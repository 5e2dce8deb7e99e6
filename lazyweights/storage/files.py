"""Read-only file objects over byte sources, for parsers that want a seekable file (h5py, zipfile).

:class:`MetadataFile` serves a remote :class:`~lazyweights.storage.Source`'s
small reads from its head and a block cache; :class:`WindowFile` shows a byte
window of another file (an HDF5 file stored inside a zip) as a whole file.
"""

from __future__ import annotations

import io
from typing import Any, Protocol

import fsspec.caching

from ..errors import StorageError

__all__ = ["METADATA_BLOCK_BYTES", "MetadataFile", "WindowFile", "storage_failure"]

METADATA_BLOCK_BYTES = 256 << 10  # block size of the cache metadata parsing reads through


class _ReadOnlyFile(io.RawIOBase):
    """Position bookkeeping for a read-only file of ``_size`` bytes; subclasses implement ``readinto``."""

    _pos = 0
    _size = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        start = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, start + offset)
        return self._pos


class _Ranged(Protocol):
    """What :class:`MetadataFile` needs of a :class:`~lazyweights.storage.Source` (no import back to it)."""

    size: int

    def read(self, offset: int, length: int) -> bytes: ...

    def head(self) -> bytes: ...

    def cached(self, offset: int, length: int) -> bytes | None: ...


class MetadataFile(_ReadOnlyFile):
    """A read-only file over a remote :class:`Source` for parsers that issue many small reads.

    Reads inside the source's head (its first ``head_bytes``, one request)
    or its tail when fetched (:meth:`Source.fetch_ends`) cost nothing more; others go through fsspec's ``BlockCache`` of
    :data:`METADATA_BLOCK_BYTES` blocks, so nearby reads share a request.
    Every fetch is the source's own pinned, retried, length-checked read.
    """

    def __init__(self, source: _Ranged):
        super().__init__()
        self._source, self._pos, self._size = source, 0, source.size

        def fetch(start: int, end: int) -> bytes:
            return source.read(start, min(end, source.size) - start)

        self._blocks = fsspec.caching.BlockCache(METADATA_BLOCK_BYTES, fetch, source.size, maxblocks=256)

    failure: StorageError | None = None  # the last storage error a read raised (see storage_failure)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self._pos + view.nbytes, self._size)
        if end <= self._pos:
            return 0
        try:
            self._source.head()  # fetched once; most small files' metadata lives there
            data = self._source.cached(self._pos, end - self._pos)  # the head, or an archive's tail
            if data is None:
                data = self._blocks._fetch(self._pos, end)
        except StorageError as exc:  # libhdf5 turns it into "file signature not found": keep it for the caller
            self.failure = exc
            raise
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


class WindowFile(_ReadOnlyFile):
    """A read-only view of ``[base, base + length)`` of another seekable file.

    Used to parse an HDF5 file stored uncompressed inside a zip archive in
    place, without extracting it (Python's zipfile seeks in a stored member by
    re-reading from its start, which over a remote file is a full re-download).
    """

    def __init__(self, raw: Any, base: int, length: int):
        super().__init__()
        self._raw, self._base, self._size, self._pos = raw, base, length, 0

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(view.nbytes, self._size - self._pos))
        if n == 0:
            return 0
        self._raw.seek(self._base + self._pos)
        data = self._raw.read(n)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()


def storage_failure(fileobj: Any) -> StorageError | None:
    """The storage error a read of ``fileobj`` (or a file it wraps) raised, if any.

    A parser in C (libhdf5 through h5py) reports a failed read of a Python
    file object as a format problem ("file signature not found") and drops
    the exception; the file keeps it, so the caller can raise what really
    happened (:class:`~lazyweights.errors.ObjectChangedError`, an access
    denied, a storage failure) instead of a :class:`FormatError`.
    """
    seen: set[int] = set()
    while fileobj is not None and id(fileobj) not in seen:
        seen.add(id(fileobj))
        failure = getattr(fileobj, "failure", None)
        if isinstance(failure, StorageError):
            return failure
        fileobj = getattr(fileobj, "raw", None) or getattr(fileobj, "_raw", None)
    return None
