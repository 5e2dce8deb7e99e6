"""Where bytes come from: fsspec resolution, stat and version pinning, exact ranged reads, retries.

A :class:`Source` is one object (file) on one filesystem, and the one place
lazyweights does I/O.  It reads byte ranges and checks that it got exactly
what it asked for.  Local files use ``os.preadv`` straight into the caller's
buffer (no staging copy, no lock).  Remote reads are ranged GETs on the
filesystem's event loop, pinned to the version seen at open
(:mod:`~lazyweights.pinning`), retried with backoff on transient failures
(:mod:`~lazyweights.retry`), and batched: :meth:`Source.readinto_many` merges
nearby ranges and fetches them concurrently.

Metadata parsing reads through :meth:`Source.open_file`: the first
:data:`HEAD_BYTES` come in one request, the rest through fsspec's block cache,
so walking an HDF5 tree costs a handful of round trips, not one per read.

Sources are cached per process (:func:`get_source`) and pickle as their URL,
storage options and pin, so dask tasks carry them to workers without open
handles, and a worker that sees a different object refuses to read it.

A store prefix (a zarr mirror: a directory, or a prefix of objects) is a
Source with ``is_dir`` true; its objects are read through
:meth:`Source.member`, a child Source per object key on the parent's very
filesystem instance, pinned at first use and read by the same pinned,
retried, length-checked code as a file.  :meth:`Source.verify` of the store
re-checks every member it read.

Retries happen once per request, here: filesystems lazyweights builds for S3
get s3fs's own retry loop and botocore's turned off (:func:`_fs_options`),
so a transient failure costs at most :attr:`RetryPolicy.attempts` tries, not
attempts x s3fs retries x botocore retries.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import io
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import fsspec
import fsspec.asyn
import fsspec.utils
from fsspec.implementations.local import LocalFileSystem

from ..errors import MissingDependencyError, ObjectChangedError, StorageError
from ..geometry import merge_ranges
from .files import MetadataFile
from .local import pread_into
from .pinning import Pin, pin_of, pinned_fetch, pinned_readinto
from .retry import DEFAULT_RETRY, RetryPolicy, ShortReadError, chain_status, classify

__all__ = ["HEAD_BYTES", "STORE_MARKERS", "Source", "get_source", "release_source"]

logger = logging.getLogger(__name__)

HEAD_BYTES = 1 << 20  # fetched in one request at open: the superblock and, for most files, much of the metadata

_CACHE_SIZE = 64

# Object stores have no directories, and HTTP servers rarely list them: a URL with no object
# of its own is a store (a prefix of objects) when one of these root metadata objects exists.
STORE_MARKERS = ("zarr.json", ".zmetadata", ".zgroup")
_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "http": "http", "https": "http"}  # protocol -> extra
_cache: OrderedDict[tuple[str, str], Source] = OrderedDict()
_cache_lock = threading.Lock()


_SINGLE_ATTEMPT = {"total_max_attempts": 1}


def _fs_options(url: str, storage_options: Mapping[str, Any]) -> dict[str, Any]:
    """The options the filesystem for ``url`` is built with: the caller's, with one retry layer only.

    Retry once per request, in one place.  s3fs retries retryable errors
    itself (its ``retries`` attribute, 5 attempts), and under it botocore
    retries again (its retry config, 5 attempts in legacy mode): with our
    :class:`RetryPolicy` on top, one flaky request could be tried 125 times.
    We keep our policy (it classifies failures, a changed object included,
    and counts requests) and turn the other two off for S3 filesystems
    lazyweights builds: botocore gets ``retries={"total_max_attempts": 1}``
    (a constructor option, so this is a filesystem instance of its own in
    fsspec's cache, not the caller's) and :meth:`Source.__init__` sets that
    instance's s3fs ``retries`` to 1 (one attempt).  A caller who passes a
    botocore ``retries`` config keeps both their own layers as configured.
    gcsfs and HTTP filesystems have no retry layer under our reads.
    """
    options = dict(storage_options)
    if fsspec.utils.get_protocol(url) in ("s3", "s3a"):
        config = dict(options.get("config_kwargs") or {})
        if "retries" not in config:
            config["retries"] = dict(_SINGLE_ATTEMPT)
            options["config_kwargs"] = config
    return options


def _reopen_member(url: str, storage_options: Mapping[str, Any] | None, key: str, pin: Pin) -> Source:
    """Unpickle a store member: the member ``key`` of the store at ``url``, refused if it changed."""
    member = get_source(url, storage_options).member(key)
    if member is None:
        raise ObjectChangedError(f"{url}/{key}: the object disappeared since it was opened")
    if not pin.same_object(member.pin):
        raise ObjectChangedError(
            f"{member.url}: the object changed since it was opened "
            f"(then: {pin.describe()}; now: {member.pin.describe()})"
        )
    return member


def _options_token(storage_options: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(storage_options or {}), sort_keys=True, default=repr)


def get_source(
    url: str, storage_options: Mapping[str, Any] | None = None, pin: Pin | None = None, *, refresh: bool = False
) -> Source:
    """The process-wide :class:`Source` for ``url`` (opened on first use, LRU-evicted).

    With ``pin``, the source must be that very object version: else
    :class:`~lazyweights.errors.ObjectChangedError`.  With ``refresh``, a
    cached source is re-stated and replaced if the object changed (what a new
    :func:`lazyweights.open` wants: the object as it is now); a store prefix,
    if a root metadata document it read changed (a store rewritten since).
    """
    key = (str(url), _options_token(storage_options))
    with _cache_lock:
        source = _cache.get(key)
        if source is not None:
            _cache.move_to_end(key)
    if source is not None and refresh and source.changed():
        release_source(source)
        source = None
    if source is None:
        source = _cached_new(key, str(url), storage_options)
    if pin is not None and not pin.same_object(source.pin):
        raise ObjectChangedError(
            f"{url}: the object changed since it was opened (then: {pin.describe()}; now: {source.pin.describe()})"
        )
    return source


def _cached_new(key: tuple[str, str], url: str, storage_options: Mapping[str, Any] | None) -> Source:
    source = Source(url, storage_options)
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
        key = (source.url, _options_token(source.storage_options))
        if _cache.get(key) is source:
            del _cache[key]
    source.close()


class Source:
    """One object on one fsspec filesystem, read by byte range, pinned to the version seen at open.

    A URL naming a directory or a store prefix (a zarr mirror) gives a Source
    with ``is_dir`` true and size 0: formats read its objects by key, each a
    member Source (:meth:`member`).

    ``requests`` counts the storage requests this source issued (stat, reads,
    retries included); local ``preadv`` calls are not requests.
    """

    def __init__(
        self, url: str, storage_options: Mapping[str, Any] | None = None, *, retry: RetryPolicy = DEFAULT_RETRY
    ):
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.retry = retry
        self.requests = 0
        self._count_lock = threading.Lock()
        self._parent: Source | None = None
        self._key: str | None = None
        try:
            options = _fs_options(url, self.storage_options)
            self.fs, self.path = fsspec.core.url_to_fs(url, **options)
        except ImportError as exc:  # fsspec knows the protocol but its package (s3fs, gcsfs, aiohttp) is missing
            extra = _EXTRAS.get(fsspec.utils.get_protocol(url.split("::")[-1]))
            hint = f"; install it with: pip install 'lazyweights[{extra}]'" if extra else ""
            raise MissingDependencyError(f"{url}: cannot resolve a filesystem ({exc}){hint}") from exc
        except ValueError as exc:
            raise StorageError(f"{url}: cannot resolve a filesystem: {exc}") from exc
        if (options.get("config_kwargs") or {}).get("retries") == _SINGLE_ATTEMPT and hasattr(self.fs, "retries"):
            self.fs.retries = 1  # s3fs: one attempt per call; our RetryPolicy is the retry layer (see _fs_options)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self._init_object(self.stat())

    def _init_object(self, info: Mapping[str, Any]) -> None:
        """Everything that follows from the object's ``info()``: kind, pin, pinned readers, empty caches."""
        self.is_dir = info.get("type") == "directory"
        self.pin = Pin(size=0) if self.is_dir else pin_of(info)
        self.size = self.pin.size
        self.etag = self.pin.etag
        remote_file = not (self.is_local or self.is_dir)
        self._afetch, self.pinned = pinned_fetch(self.fs, self.path, self.pin) if remote_file else (None, False)
        self._areadinto = pinned_readinto(self.fs, self.path, self.pin) if remote_file else None
        self._fd: int | None = None
        self._fd_lock = threading.Lock()
        self._head: bytes | None = None
        self._head_lock = threading.Lock()
        self._handles: dict[str, Any] = {}
        self._handle_lock = threading.Lock()
        self._members: dict[str, Source | None] = {}
        self._members_lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, ...]:
        if self._parent is not None:
            return (_reopen_member, (self._parent.url, self._parent.storage_options, self._key, self.pin))
        return (get_source, (self.url, self.storage_options, self.pin))

    # -- store members -----------------------------------------------------------

    def member(self, key: str) -> Source | None:
        """The object ``key`` under this store prefix as a Source of its own; None if there is no such object.

        The child reuses this source's filesystem instance, storage options and
        retry policy (no filesystem is resolved per object).  It is pinned to
        the version stat-ed at its first use (one ``info()``, retried) and
        cached here, absent objects included, so every read of one key sees one
        object version.  Local members hold no descriptor: each read opens,
        checks ``fstat`` against the pin, ``preadv``-s and closes.
        :meth:`verify` of this source re-checks every member handed out.
        """
        if not self.is_dir:
            raise StorageError(f"{self.url}: not a store prefix; it has no member objects")
        with self._members_lock:
            if key in self._members:
                return self._members[key]
        child = self._new_member(key)
        with self._members_lock:
            return self._members.setdefault(key, child)

    def changed(self) -> bool:
        """Whether the object is no longer the one opened (fresh stat; never raises ObjectChangedError).

        For a store prefix: whether a root metadata document it read
        (:data:`STORE_MARKERS`) changed, appeared or disappeared — every
        rewrite of a store rewrites its root metadata.
        """
        if not self.is_dir:
            return not self.pin.same_object(pin_of(self.stat()))
        for key, member in self.members_read().items():
            if key not in STORE_MARKERS:
                continue
            now = self._new_member(key)
            if (member is None) != (now is None) or (member is not None and not member.pin.same_object(now.pin)):
                return True
        return False

    def members_read(self) -> dict[str, Source | None]:
        """The members handed out so far (None: found absent), by key."""
        with self._members_lock:
            return dict(self._members)

    def _new_member(self, key: str) -> Source | None:
        child = object.__new__(Source)
        child.url = f"{self.url.rstrip('/')}/{key}"
        child.storage_options = self.storage_options
        child.retry = self.retry
        child.requests = 0
        child._count_lock = threading.Lock()
        child._parent, child._key = self, key
        child.fs, child.path = self.fs, f"{self.path.rstrip('/')}/{key}"
        child.is_local = self.is_local
        try:
            info = child.stat()
        except StorageError as exc:  # no such object: a never-written chunk, a metadata document zarr probes for
            if isinstance(exc.__cause__, FileNotFoundError) or chain_status(exc) == 404:
                return None
            raise
        if info.get("type") == "directory":
            return None  # a "directory" key is no object
        child._init_object(info)
        return child

    def __repr__(self) -> str:
        return f"Source({self.url!r}, size={self.size})"

    # -- stat ----------------------------------------------------------------

    def stat(self) -> dict[str, Any]:
        """A fresh ``info()`` of the object (retried when transient; never from a listing cache).

        A URL with no object of its own but a zarr root marker under it is a
        store prefix: ``{"type": "directory", "size": 0}``.
        """

        def info() -> dict[str, Any]:
            if not self.is_local:
                self.fs.invalidate_cache(self.path)
                self._count()
            try:
                return self.fs.info(self.path)
            except FileNotFoundError as exc:
                if self._parent is None and chain_status(exc) in (None, 404) and self._is_store_prefix():
                    return {"type": "directory", "size": 0}
                raise

        if self.is_local:
            try:
                return info()
            except OSError as exc:
                raise self._error(exc, "cannot stat") from exc
        return self._retrying_sync(info, "cannot stat")

    def verify(self) -> None:
        """Raise :class:`ObjectChangedError` if the object is no longer the one opened.

        Needed only where reads are not pinned by the store itself (local files,
        memory, chained filesystems); pinned sources return at once.  A store
        prefix verifies every member it handed out (locally one ``os.stat``
        each, and an object found absent must still be absent).
        """
        if self.is_dir:
            for key, member in self.members_read().items():
                if member is not None:
                    member.verify()
                elif self.is_local and os.path.lexists(f"{self.path.rstrip('/')}/{key}"):
                    raise ObjectChangedError(f"{self.url}/{key}: the object appeared while the store was being read")
            return
        if self.pinned:
            return
        local_fd = self._fd if self.is_local else None
        self._check_pin(self._local_pin(os.fstat(local_fd)) if local_fd is not None else pin_of(self.stat()))

    def _local_pin(self, st: os.stat_result) -> Pin:
        return Pin(size=st.st_size, etag=str(st.st_mtime) if self.pin.etag is not None else None)

    def _check_pin(self, now: Pin) -> None:
        if not self.pin.same_object(now):
            raise ObjectChangedError(
                f"{self.url}: the object changed while it was being read "
                f"(at open: {self.pin.describe()}; now: {now.describe()})"
            )

    def _is_store_prefix(self) -> bool:
        """Whether a zarr root metadata object lives under this URL (object stores have no directories)."""
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
        return self._fetch(offset, offset + length)

    def readinto(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with the bytes at ``offset`` (local files: no intermediate copy)."""
        length = buf.nbytes
        if not self.is_local:
            if self._areadinto is None:
                buf.cast("B")[:] = self.read(offset, length)
            elif length:  # streamed into ``buf`` as the body arrives: no whole-body bytes object, no second copy
                fsspec.asyn.sync(self.fs.loop, self._areadinto_checked, offset, buf.cast("B"))
            return
        if self._parent is not None:  # a store member: no descriptor kept (a store has thousands of objects)
            self._check_length(offset, length, self._pread_once(offset, buf.cast("B")))
            return
        self._check_length(offset, length, pread_into(self._local_fd(), offset, buf.cast("B")))

    def _pread_once(self, offset: int, view: memoryview) -> int:
        """Open, check ``fstat`` against the pin, ``preadv`` into ``view``, close."""
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise self._error(exc, "cannot open") from exc
        try:
            self._check_pin(self._local_pin(os.fstat(fd)))
            return pread_into(fd, offset, view)
        finally:
            os.close(fd)

    def merged_spans(
        self, items: Sequence[tuple[int, memoryview]], max_gap: int | None = None
    ) -> list[tuple[int, int]]:
        """The byte spans :meth:`readinto_many` fetches for ``items`` (:func:`~lazyweights.geometry.merge_ranges`)."""
        ranges = [(off, buf.nbytes) for off, buf in items]
        return merge_ranges(ranges) if max_gap is None else merge_ranges(ranges, max_gap)

    def readinto_many(self, items: Sequence[tuple[int, memoryview]], max_gap: int | None = None) -> int:
        """Fill each ``(offset, buffer)``; nearby ranges merge into one request, requests run concurrently.

        ``max_gap`` overrides the merge policy's gap (0: only touching ranges merge).
        Returns the number of requests made (0 for local files, which are read
        one ``preadv`` per item).
        """
        if self.is_local:
            for offset, buf in items:
                self.readinto(offset, buf)
            return 0
        spans = self.merged_spans(items, max_gap)
        blocks = self._fetch_many(spans)
        starts = [s for s, _ in spans]
        for offset, buf in items:
            if buf.nbytes:
                i = bisect.bisect_right(starts, offset) - 1
                rel = offset - starts[i]
                buf.cast("B")[:] = memoryview(blocks[i])[rel : rel + buf.nbytes]
        return len(spans)

    def _fetch(self, start: int, end: int) -> bytes:
        """One pinned, retried, length-checked ranged GET."""
        if self._afetch is not None:
            return fsspec.asyn.sync(self.fs.loop, self._afetch_checked, start, end)
        return self._retrying_sync(lambda: self._cat_sync(start, end), f"read of bytes [{start}, {end}) failed")

    def _fetch_many(self, spans: list[tuple[int, int]]) -> list[bytes]:
        if self._afetch is None or len(spans) == 1:
            return [self._fetch(s, e) for s, e in spans]
        coros = [self._afetch_checked(s, e) for s, e in spans]
        return fsspec.asyn.sync(self.fs.loop, fsspec.asyn._run_coros_in_chunks, coros, batch_size=len(coros))

    def _cat_sync(self, start: int, end: int) -> bytes:
        self._count()
        data = self.fs.cat_file(self.path, start=start, end=end)
        if len(data) < end - start:
            raise ShortReadError(f"got {len(data)} of {end - start} bytes")
        self._check_length(start, end - start, len(data))
        return data

    async def _afetch_checked(self, start: int, end: int) -> bytes:
        assert self._afetch is not None
        fetch = self._afetch

        async def attempt() -> bytes:
            data = await fetch(start, end)
            if len(data) < end - start:
                raise ShortReadError(f"got {len(data)} of {end - start} bytes")
            self._check_length(start, end - start, len(data))
            return data

        return await self._aretrying(attempt, f"read of bytes [{start}, {end})")

    async def _areadinto_checked(self, offset: int, view: memoryview) -> None:
        assert self._areadinto is not None
        readinto = self._areadinto

        async def attempt() -> None:
            got = await readinto(offset, view)
            if got < view.nbytes:
                raise ShortReadError(f"got {got} of {view.nbytes} bytes")

        await self._aretrying(attempt, f"read of bytes [{offset}, {offset + view.nbytes})")

    async def _aretrying(self, attempt: Callable[[], Any], what: str) -> Any:
        """Run ``attempt()`` until it succeeds, retrying transient failures with backoff."""
        delays = self.retry.delays()
        while True:
            try:
                self._count()
                return await attempt()
            except StorageError:
                raise
            except Exception as exc:
                await asyncio.sleep(self._next_delay(exc, delays, what))

    def with_retries(self, fn: Callable[[], Any], what: str) -> Any:
        """Call ``fn`` (an operation on this source's filesystem) under this source's retry policy.

        Transient failures are retried with backoff; permanent ones raise a
        :class:`StorageError` naming the URL and ``what`` was being done.
        """
        return self._retrying_sync(fn, what)

    def _retrying_sync(self, fn: Callable[[], Any], what: str) -> Any:
        delays = self.retry.delays()
        while True:
            try:
                return fn()
            except StorageError:
                raise
            except Exception as exc:
                time.sleep(self._next_delay(exc, delays, what))

    def _next_delay(self, exc: Exception, delays: Any, what: str) -> float:
        """How long to wait before retrying ``exc``; raises the translated error when not to retry."""
        kind = classify(exc)
        if kind == "transient":
            delay = next(delays, None)
            if delay is not None:
                logger.debug("%s: %s: transient %r, retrying in %.2f s", self.url, what, exc, delay)
                return delay
            tries = self.retry.attempts
            raise StorageError(f"{self.url}: {what}: still failing after {tries} attempts: {exc}") from exc
        raise self._error(exc, what, kind) from exc

    def _error(self, exc: BaseException, what: str, kind: str = "permanent") -> StorageError:
        if kind == "changed":
            return ObjectChangedError(
                f"{self.url}: the object changed since it was opened ({self.pin.describe()} at open); {what}: {exc}"
            )
        status = chain_status(exc)
        if isinstance(exc, PermissionError) or status in (401, 403):
            return StorageError(f"{self.url}: access denied{f' (HTTP {status})' if status else ''}: {exc}")
        if isinstance(exc, FileNotFoundError) or status == 404:
            if getattr(self, "pin", None) is not None:
                return ObjectChangedError(f"{self.url}: the object (or the version opened) disappeared; {what}")
            return StorageError(f"{self.url}: no such file (HTTP 404)" if status else f"{self.url}: no such file")
        return StorageError(f"{self.url}: {what}: {exc}")

    def _count(self) -> None:
        with self._count_lock:
            self.requests += 1
        if self._parent is not None:  # a store counts its members' requests
            self._parent._count()

    def _check_length(self, offset: int, wanted: int, got: int) -> None:
        if got != wanted:
            raise StorageError(
                f"{self.url}: asked for {wanted} bytes at offset {offset}, got {got} (file size at open: {self.size})"
            )

    def head(self) -> bytes:
        """The object's first :data:`HEAD_BYTES`, fetched once in one request and kept (metadata lives there)."""
        if self._head is None:
            with self._head_lock:
                if self._head is None:
                    self._head = self.read(0, min(self.size, HEAD_BYTES))
        return self._head

    def sibling_path(self, suffix: str) -> str | None:
        """The filesystem path of the object named like this one plus ``suffix`` (None for URLs with a query)."""
        return None if "?" in self.path else self.path + suffix

    def sibling_url(self, suffix: str) -> str | None:
        """The URL of the object named like this one plus ``suffix`` (None for URLs with a query)."""
        return None if "?" in self.url else self.url + suffix

    def read_sibling(self, suffix: str) -> bytes | None:
        """The whole small object next to this one (``<file><suffix>``), or None if it is absent or unreadable."""
        path = self.sibling_path(suffix)
        if path is None:
            return None

        def get() -> bytes | None:
            self._count()
            try:
                return self.fs.cat_file(path)
            except FileNotFoundError:
                return None

        try:
            return self._retrying_sync(get, f"read of {path}")
        except StorageError as exc:
            logger.info("%s: cannot read %s: %s", self.url, path, exc)
            return None

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
        return io.BufferedReader(MetadataFile(self), buffer_size=8 << 10)

    @contextlib.contextmanager
    def handle(self, name: str, opener: Callable[[Source], Any]) -> Iterator[Any]:
        """A library handle on this very object version (``opener(self)`` on first use), used under a lock.

        For readers that need a file handle of their own (the h5py fallback):
        the handle belongs to this source, so a new open of a replaced object
        gets a new source and a new handle, and :meth:`close` closes it.
        """
        with self._handle_lock:
            found = self._handles.get(name)
            if found is None:
                found = self._handles[name] = opener(self)
            yield found

    def close(self) -> None:
        """Close the local descriptor and every handle opened through :meth:`handle`."""
        with self._fd_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        with self._handle_lock:
            handles, self._handles = list(self._handles.values()), {}
        for found in handles:
            with contextlib.suppress(Exception):
                found.close()
        for member in self.members_read().values():
            if member is not None:
                member.close()
