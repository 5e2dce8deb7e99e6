"""Where bytes come from: fsspec resolution, stat, and exact ranged reads.

A :class:`Source` is one object (file) on one filesystem.  It reads byte
ranges and checks that it got exactly what it asked for.  Local files use
``os.preadv`` straight into the caller's buffer (no staging copy, no lock);
everything else goes through fsspec's ``cat_file``, which for HTTP, S3 and GCS
is an async ranged GET, so reads from many threads run concurrently.

Sources are cached per process (:func:`get_source`) and pickle as
``(url, storage_options)``, so dask tasks carry them to workers without
carrying open handles.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .errors import StorageError

__all__ = ["STORE_MARKERS", "Source", "WindowFile", "get_source", "pread_into", "release_source"]

logger = logging.getLogger(__name__)

_CACHE_SIZE = 64

# Object stores have no directories, and HTTP servers rarely list them: a URL with no object
# of its own is a store (a prefix of objects) when one of these root metadata objects exists.
STORE_MARKERS = ("zarr.json", ".zmetadata", ".zgroup")
_cache: OrderedDict[tuple[str, str], Source] = OrderedDict()
_cache_lock = threading.Lock()


def _options_token(storage_options: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(storage_options or {}), sort_keys=True, default=repr)


def get_source(url: str, storage_options: Mapping[str, Any] | None = None) -> Source:
    """The process-wide :class:`Source` for ``url`` (opened on first use, LRU-evicted)."""
    key = (str(url), _options_token(storage_options))
    with _cache_lock:
        source = _cache.get(key)
        if source is not None:
            _cache.move_to_end(key)
            return source
    source = Source(str(url), storage_options)
    with _cache_lock:
        existing = _cache.get(key)
        if existing is not None:  # another thread won the race
            source.close()
            return existing
        _cache[key] = source
        while len(_cache) > _CACHE_SIZE:
            _, old = _cache.popitem(last=False)
            old.close()
    return source


def release_source(source: Source) -> None:
    """Drop ``source`` from the cache and close it."""
    with _cache_lock:
        _cache.pop((source.url, _options_token(source.storage_options)), None)
    source.close()


class Source:
    """One object on one fsspec filesystem, read by byte range.

    A URL naming a directory or a store prefix (a zarr mirror) gives a Source
    with ``is_dir`` true and size 0: formats read it by object key, not by range.
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None):
        self.url = url
        self.storage_options = dict(storage_options or {})
        try:
            self.fs, self.path = fsspec.core.url_to_fs(url, **self.storage_options)
        except (ImportError, ValueError) as exc:
            raise StorageError(f"{url}: cannot resolve a filesystem: {exc}") from exc
        info = self._info()
        self.is_dir = info.get("type") == "directory"
        self.size = 0 if self.is_dir else int(info["size"])
        self.etag = _version_of(info)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self._fd: int | None = None
        self._fd_lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, ...]:
        return (get_source, (self.url, self.storage_options))

    def __repr__(self) -> str:
        return f"Source({self.url!r}, size={self.size})"

    def _info(self) -> dict[str, Any]:
        try:
            return self.fs.info(self.path)
        except FileNotFoundError as exc:
            if self._is_store_prefix():
                return {"type": "directory", "size": 0}
            raise StorageError(f"{self.url}: no such file") from exc
        except OSError as exc:
            raise StorageError(f"{self.url}: cannot stat: {exc}") from exc

    def _is_store_prefix(self) -> bool:
        for marker in STORE_MARKERS:
            try:
                self.fs.info(f"{self.path.rstrip('/')}/{marker}")  # a HEAD over HTTP, not a download
                return True
            except FileNotFoundError:
                continue
            except OSError:
                return False
        return False

    # -- reads -------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset``."""
        if length == 0:
            return b""
        if self.is_local:
            buf = bytearray(length)
            self.readinto(offset, memoryview(buf))
            return bytes(buf)
        try:
            data = self.fs.cat_file(self.path, start=offset, end=offset + length)
        except FileNotFoundError as exc:
            raise StorageError(f"{self.url}: object disappeared while reading") from exc
        except OSError as exc:
            raise StorageError(f"{self.url}: read of bytes [{offset}, {offset + length}) failed: {exc}") from exc
        self._check_length(offset, length, len(data))
        return data

    def readinto(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with the bytes at ``offset`` (local files: no intermediate copy)."""
        length = buf.nbytes
        if not self.is_local:
            buf.cast("B")[:] = self.read(offset, length)
            return
        self._check_length(offset, length, pread_into(self._local_fd(), offset, buf.cast("B")))

    def _check_length(self, offset: int, wanted: int, got: int) -> None:
        if got != wanted:
            raise StorageError(
                f"{self.url}: asked for {wanted} bytes at offset {offset}, got {got} (file size at open: {self.size})"
            )

    def _local_fd(self) -> int:
        if self._fd is None:
            with self._fd_lock:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return self._fd

    def open_file(self) -> Any:
        """A seekable binary file for metadata parsing (h5py, zipfile)."""
        if self.is_local:
            return open(self.path, "rb")
        return self.fs.open(self.path, "rb", block_size=1 << 20, cache_type="readahead")

    def close(self) -> None:
        with self._fd_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def pread_into(fd: int, offset: int, view: memoryview) -> int:
    """Fill the byte view ``view`` from ``fd`` at ``offset`` with ``preadv``; the count read (short only at EOF)."""
    done = 0
    while done < view.nbytes:  # preadv may return short counts; loop until filled or EOF
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            break
        done += n
    return done


def _version_of(info: Mapping[str, Any]) -> str | None:
    """The object version fsspec reports (ETag, generation, version id), if any."""
    for key in ("ETag", "etag", "VersionId", "generation", "md5Hash", "mtime", "created"):
        value = info.get(key)
        if value is not None:
            return str(value)
    return None


class WindowFile(io.RawIOBase):
    """A read-only view of ``[base, base + length)`` of another seekable file.

    Used to parse an HDF5 file stored uncompressed inside a zip archive in
    place, without extracting it (Python's zipfile seeks in a stored member by
    re-reading from its start, which over a remote file is a full re-download).
    """

    def __init__(self, raw: Any, base: int, length: int):
        super().__init__()
        self._raw, self._base, self._length, self._pos = raw, base, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        start = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, start + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(view.nbytes, self._length - self._pos))
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
