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
get s3fs's own retry loop and botocore's turned off, and every store gets
connect and read timeouts (:mod:`~lazyweights.storage.options`), so a
transient failure costs at most :attr:`RetryPolicy.attempts` tries, not
attempts x s3fs retries x botocore retries.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import io
import json
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import fsspec
import fsspec.asyn
import fsspec.utils
from fsspec.implementations.cached import WholeFileCacheFileSystem
from fsspec.implementations.local import LocalFileSystem

from ..errors import MissingDependencyError, ObjectChangedError, StorageError
from ..geometry import merge_ranges
from .files import MetadataFile
from .local import pread_into
from .options import SINGLE_ATTEMPT, fs_options, target_protocol
from .pinning import First, Pin, checks_responses, first_read, local_stamp, pin_of, pinned_fetch, pinned_readinto
from .retry import DEFAULT_RETRY, RetryPolicy, ShortReadError, chain_status, classify, describe, retry_after

__all__ = ["HEAD_BYTES", "STORE_MARKERS", "TAIL_BYTES", "Prefetch", "Source", "get_source", "release_source"]

logger = logging.getLogger(__name__)

# Fetched in one request at open (the stat's ranged GET): the superblock, the root group and the top
# groups' headers, B-tree roots and heaps, which HDF5 puts in a file's first KiBs.  64 KiB, not 512: a
# Keras model config behind them is not read at open, and the groups past it come in the walk's levels
# anyway (benchmarks/bench_open.py, 512 KiB -> 64 KiB: a 2,000-layer .h5's open 1.16x -> 0.91x of
# max(1 MiB, 2%), DenseNet121's 0.93x -> 0.52x; rounds unchanged).  A caller may ask for more
# (``Prefetch.head``, ``fetch_ends``): a .keras archive's member lies behind its config.
HEAD_BYTES = 64 << 10
WHOLE_MIN_PART = 1 << 20  # read_whole: no ranged GET smaller than this (latency, not bandwidth, would dominate)
# An archive's end: a zip's end record and its directory (a .keras's three members take ~200 bytes, and
# 16 KiB hold ~200 members); a longer comment or directory costs one more read, not a wrong answer
TAIL_BYTES = 16 << 10

_CACHE_SIZE = 64

# Object stores have no directories, and HTTP servers rarely list them: a URL with no object
# of its own is a store (a prefix of objects) when one of these root metadata objects exists.
STORE_MARKERS = ("zarr.json", ".zmetadata", ".zgroup")
_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "http": "http", "https": "http"}  # protocol -> extra
_LISTS_PINS = {"s3", "s3a", "gs", "gcs"}  # listings with sizes and ETags/generations: pins without a stat each
_cache: OrderedDict[tuple[str, str], Source] = OrderedDict()
_cache_lock = threading.Lock()


_borrowed: weakref.WeakValueDictionary[tuple[str, str], Source] = weakref.WeakValueDictionary()


def _unpickle_source(
    url: str, storage_options: Mapping[str, Any] | None, pin: Pin | None = None, store: bool = False
) -> Source:
    """Unpickle a Source: borrowed, not held.

    An unpickled source (in a dask task, a checkpoint sent to a worker) has
    no holder that would ever give back a use of it, so unpickling counts
    none.  It shares the source this process already has open (the cache, or
    another unpickled copy still referenced), else opens one that lives as
    long as some unpickled object refers to it.  Its descriptor is closed
    when it is released or evicted (the next read reopens it, re-checked
    against the pin) and, at the latest, when it is garbage-collected.
    """
    key = _cache_key(url, storage_options, store)
    with _cache_lock:
        source = _cache.get(key) or _borrowed.get(key)
    if source is None:
        fresh = Source(url, storage_options, store=store)
        with _cache_lock:
            source = _borrowed.setdefault(key, fresh)
        if source is not fresh:  # another thread unpickled it first
            fresh.close()
    if pin is not None and not pin.same_object(source.pin):
        raise _changed_since(url, pin, source.pin)
    return source


def _changed_since(url: str, then: Pin, now: Pin) -> ObjectChangedError:
    return ObjectChangedError(
        f"{url}: the object changed since it was opened (then: {then.describe()}; now: {now.describe()})"
    )


def _reopen_member(
    url: str, storage_options: Mapping[str, Any] | None, key: str, pin: Pin, store: bool = False
) -> Source:
    """Unpickle a store member: the member ``key`` of the store at ``url``, refused if it changed."""
    member = _unpickle_source(url, storage_options, store=store).member(key)
    if member is None:
        raise ObjectChangedError(f"{url}/{key}: the object disappeared since it was opened")
    if not pin.same_object(member.pin):
        raise _changed_since(member.url, pin, member.pin)
    return member


_download_locks: dict[tuple[str, str], threading.Lock] = {}


def _cache_download_lock(fs: Any, path: str) -> threading.Lock:
    """One lock per cached object of one whole-file cache, so its copy is downloaded by one reader."""
    key = (str(getattr(fs, "storage", "")), path)
    with _cache_lock:
        return _download_locks.setdefault(key, threading.Lock())


def _options_token(storage_options: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(storage_options or {}), sort_keys=True, default=repr)


def _cache_key(url: str, storage_options: Mapping[str, Any] | None, store: bool) -> tuple[str, str]:
    """A source's key in the process cache: URL, options, and whether it was opened as a store prefix."""
    return url, _options_token(storage_options) + ("|store" if store else "")


def get_source(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    pin: Pin | None = None,
    *,
    refresh: bool = False,
    store: bool = False,
    prefetch: Prefetch | None = None,
) -> Source:
    """The process-wide :class:`Source` for ``url`` (opened on first use, LRU-evicted), held by the caller.

    Every call counts one user of the source; :func:`release_source` gives it
    back, and the source closes when its last user released it, so concurrent
    opens of one path never close each other's descriptor.  With ``pin``, the
    source must be that very object version: else
    :class:`~lazyweights.errors.ObjectChangedError`.  With ``refresh``, a
    cached source is re-stated and replaced if the object changed (what a new
    :func:`lazyweights.open` wants: the object as it is now); a store prefix,
    if a root metadata document it read changed (a store rewritten since).
    With ``store``, ``url`` is taken as a prefix of objects without a stat
    (a folder of checkpoint files over HTTP, which has no directories).
    With ``prefetch``, a new remote source's stat is the ranged GET of its
    head (:meth:`Source.head`) where the store's answer pins, with what else
    :class:`Prefetch` names fetched in concurrent requests of that one round.
    The replaced source leaves the cache and closes when its users are done.
    """
    key = _cache_key(str(url), storage_options, store)
    source = _hold_cached(key)
    if source is not None and refresh and source.changed():
        _forget(key, source)
        release_source(source)
        source = None
    if source is None:
        source = _cached_new(key, str(url), storage_options, store, prefetch)
    if pin is not None and not pin.same_object(source.pin):
        release_source(source)
        raise _changed_since(url, pin, source.pin)
    return source


def _hold_cached(key: tuple[str, str]) -> Source | None:
    with _cache_lock:
        source = _cache.get(key)
        if source is not None:
            _cache.move_to_end(key)
            source._users += 1
        return source


def _forget(key: tuple[str, str], source: Source) -> None:
    """Drop ``source`` from the cache (its users keep it open until they release it)."""
    with _cache_lock:
        if _cache.get(key) is source:
            del _cache[key]


def _cached_new(
    key: tuple[str, str], url: str, storage_options: Mapping[str, Any] | None, store: bool, prefetch: Prefetch | None
) -> Source:
    source = Source(url, storage_options, store=store, prefetch=prefetch)
    evicted = []
    with _cache_lock:
        existing = _cache.get(key)
        if existing is not None:  # another thread won the race
            existing._users += 1
            evicted.append(source)
            source = existing
        else:
            source._users = 1
            _cache[key] = source
            while len(_cache) > _CACHE_SIZE:
                _, old = _cache.popitem(last=False)
                if old._users == 0:
                    evicted.append(old)
    for old in evicted:
        old.close()
    return source


def release_source(source: Source) -> None:
    """Give back one use of ``source``; the last user's release drops it from the cache and closes it."""
    with _cache_lock:
        source._users = max(0, source._users - 1)
        last = source._users == 0
        key = _cache_key(source.url, source.storage_options, source.store)
        if last and _cache.get(key) is source:
            del _cache[key]
    if last:
        source.close()


@dataclasses.dataclass(frozen=True)
class Prefetch:
    """What a new Source fetches with its stat, in one round of concurrent requests (HTTP, S3).

    The head always (the stat is its ranged GET), of ``head`` bytes; ``tail``: the object's last
    :data:`TAIL_BYTES` (an archive's end); ``siblings``: small objects named
    ``<file><suffix>`` (a metadata index), found or found absent; ``whole``: a
    caller that will read nearly all of the object (a full load) has it read
    whole, in a second round, when its size is at most ``whole`` bytes.
    """

    head: int = HEAD_BYTES
    tail: bool = False
    siblings: tuple[str, ...] = ()
    whole: int = 0  # read the whole object when it is at most this many bytes (see Source.read_whole)
    parts: int = 16  # ... in this many concurrent ranged GETs


_UNREAD = object()  # a prefetched sibling that could not be read: read_sibling tries again


class Source:
    """One object on one fsspec filesystem, read by byte range, pinned to the version seen at open.

    A URL naming a directory or a store prefix (a zarr mirror) gives a Source
    with ``is_dir`` true and size 0: formats read its objects by key, each a
    member Source (:meth:`member`).

    ``requests`` counts the storage requests this source issued (stat, reads,
    retries included); local ``preadv`` calls are not requests.
    """

    def __init__(
        self,
        url: str,
        storage_options: Mapping[str, Any] | None = None,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        store: bool = False,
        prefetch: Prefetch | None = None,
    ):
        self.url = url
        self.store = store
        self.storage_options = dict(storage_options or {})
        self.retry = retry
        self.requests = 0
        self.head_bytes = prefetch.head if prefetch is not None else HEAD_BYTES  # the head's length (see head)
        self._users = 0  # holders of this source from get_source (see release_source)
        self._count_lock = threading.Lock()
        self._parent: Source | None = None
        self._key: str | None = None
        try:
            options = fs_options(url, self.storage_options)
            self.fs, self.path = fsspec.core.url_to_fs(url, **options)
        except ImportError as exc:  # fsspec knows the protocol but its package (s3fs, gcsfs, aiohttp) is missing
            extra = _EXTRAS.get(fsspec.utils.get_protocol(url.split("::")[-1]))
            hint = f"; install it with: pip install 'lazyweights[{extra}]'" if extra else ""
            raise MissingDependencyError(f"{url}: cannot resolve a filesystem ({exc}){hint}") from exc
        except Exception as exc:  # a backend's own error (bad options, no credentials): ours, naming the URL
            raise StorageError(f"{url}: cannot resolve a filesystem: {type(exc).__name__}: {exc}") from exc
        store_fs, store_options = (self.fs, options)
        if "::" in url:  # a chained URL: the store's filesystem is the innermost layer
            store_fs, store_options = getattr(self.fs, "fs", self.fs), options[target_protocol(url)]
        if (store_options.get("config_kwargs") or {}).get("retries") == SINGLE_ATTEMPT and hasattr(store_fs, "retries"):
            store_fs.retries = 1  # s3fs: one attempt per call; our RetryPolicy is the retry layer (see options)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        if store:
            self._init_object({"type": "directory", "size": 0})
            return
        info, first = self._stat_with_head(prefetch) if prefetch is not None else (self.stat(), None)
        self._init_object(info)
        if first is not None and not self.is_dir:
            self._head = first.head if len(first.head) == min(self.size, self.head_bytes) else None
            tail = first.tail
            self._tail = tail if tail is not None and len(tail) == min(self.size, TAIL_BYTES) else None
            self._siblings = dict(first.siblings)
        if prefetch is not None and prefetch.whole and not self.is_dir and self.size <= prefetch.whole:
            self.read_whole(prefetch.parts)

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
        self._fd_readers = 0  # reads in progress through ``_fd``: close() waits for the last (see _with_fd)
        self._fd_closing = False
        self._whole_file = remote_file and isinstance(self.fs, WholeFileCacheFileSystem)
        # verify() may skip re-stating only where every response was checked against the pin
        self._responses_checked = self.pinned and not self._whole_file and checks_responses(self.fs)
        self._cache_path: str | None = None  # simplecache::/filecache::: the local copy, fetched once
        self._head: bytes | None = None
        self._tail: bytes | None = None
        self._whole: memoryview | None = None  # the object read whole ahead of a full load (read_whole)
        self._siblings: dict[str, bytes | None] = {}
        self._head_lock = threading.Lock()
        self._handles: dict[str, Any] = {}
        self._handle_lock = threading.Lock()
        self._members: dict[str, Source | None] = {}
        self._members_lock = threading.Lock()
        self._listed = False  # members pinned from one listing: a key it did not show is absent (no stat)

    def __reduce__(self) -> tuple[Any, ...]:
        if self._parent is not None:
            parent = self._parent
            return (_reopen_member, (parent.url, parent.storage_options, self._key, self.pin, parent.store))
        if self.store:  # its members re-check their own pins
            return (_unpickle_source, (self.url, self.storage_options, None, True))
        return (_unpickle_source, (self.url, self.storage_options, self.pin))

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

        For a source that is one object, members are the objects beside it
        (``key`` relative to its folder): the shards a sharded checkpoint's
        index names.  Keys that climb out (``..``, absolute) are refused.
        """
        if key.startswith("/") or ".." in key.split("/") or not key:
            raise StorageError(f"{self.url}: member key {key!r} leaves the checkpoint")
        with self._members_lock:
            if key in self._members or self._listed:
                return self._members.get(key)
        child = self._new_member(key)
        with self._members_lock:
            return self._members.setdefault(key, child)

    def changed(self) -> bool:
        """Whether the object is no longer the one opened (fresh stat; never raises ObjectChangedError).

        For a store prefix: whether a root metadata document it read
        (:data:`STORE_MARKERS`) changed, appeared or disappeared — every
        rewrite of a store rewrites its root metadata; for a prefix opened
        with ``store=True`` (a few named files), whether any member it read did.
        """
        if not self.is_dir:
            beside = [m for m in self.members_read().values() if m is not None]  # shards: a new open re-pins them
            return not self.pin.same_object(pin_of(self.stat())) or any(m.changed() for m in beside)
        for key, member in self.members_read().items():
            if key not in STORE_MARKERS and not self.store:  # a store opened by name: a few objects, check each
                continue
            now = self._new_member(key)
            if (member is None) != (now is None) or (member is not None and not member.pin.same_object(now.pin)):
                return True
        return False

    def pin_listed(self) -> bool:
        """Pin every object under this store prefix from one recursive listing, instead of a stat per object.

        For object stores whose listings carry what a pin needs (S3: size and
        ETag; GCS: size and generation): one LIST request per thousand
        objects replaces a HEAD per object read, and a key the listing did not
        show is absent without a request (zarr's probes for the other
        format's documents).  Members stay pinned, every response checked
        against the pin, as after a stat.  Returns False (nothing done) for
        other filesystems or a source that is no store prefix.
        """
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        if not self.is_dir or self.is_local or self._parent is not None or not set(protocols) & _LISTS_PINS:
            return False
        root = self.path.rstrip("/")

        def listing() -> dict[str, Any]:
            self._count()
            return self.fs.find(root, detail=True)

        found = self.with_retries(listing, "listing of the store")
        children = {}
        for path, info in found.items():
            path = str(path).rstrip("/")
            if info.get("type") == "file" and path.startswith(root + "/"):
                children[path[len(root) + 1 :]] = self._new_member(path[len(root) + 1 :], info)
        with self._members_lock:
            for key, child in children.items():
                self._members.setdefault(key, child)
            self._listed = True
        return True

    def members_read(self) -> dict[str, Source | None]:
        """The members handed out so far (None: found absent), by key."""
        with self._members_lock:
            return dict(self._members)

    def _new_member(self, key: str, info: Mapping[str, Any] | None = None) -> Source | None:
        child = object.__new__(Source)
        url, path = (self.url, self.path) if self.is_dir else (self.url.rsplit("/", 1)[0], self.path.rsplit("/", 1)[0])
        child.url = f"{url.rstrip('/')}/{key}"
        child.storage_options = self.storage_options
        child.retry = self.retry
        child.requests = 0
        child.head_bytes = HEAD_BYTES
        child._users = 0
        child._count_lock = threading.Lock()
        child._parent, child._key = self, key
        child.store = False
        child.fs, child.path = self.fs, f"{path.rstrip('/')}/{key}"
        child.is_local = self.is_local
        if info is not None:  # from a listing (pin_listed)
            child._init_object(info)
            return child
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

    def _stat_with_head(self, prefetch: Prefetch) -> tuple[dict[str, Any], First | None]:
        """:meth:`stat` and the head, with what ``prefetch`` adds (the tail, small objects beside this one), in
        one round of concurrent requests where the store's answer pins (HTTP, S3): a round trip saved.
        Elsewhere (local, memory, GCS, chained caches), or when the answer cannot pin, a plain stat.
        """
        read = None if self.is_local or self._names_a_store() else first_read(self.fs, self.path)
        if read is None:
            return self.stat(), None

        async def together() -> First | None:
            siblings = [self._fetch_sibling(suffix) for suffix in prefetch.siblings]
            first, *found = await asyncio.gather(read(prefetch.head, TAIL_BYTES if prefetch.tail else 0), *siblings)
            if first is None:
                return None
            held = {sfx: data for sfx, data in zip(prefetch.siblings, found, strict=True) if data is not _UNREAD}
            return dataclasses.replace(first, siblings=held)

        def attempt() -> First | None:
            self._count()
            try:
                return fsspec.asyn.sync(self.fs.loop, together)
            except FileNotFoundError:
                if self._names_an_object():
                    raise
                return None  # maybe a store prefix: the store's own stat decides (s3fs lists, HTTP probes markers)

        got = self._retrying_sync(attempt, "cannot stat")
        return (got.info, got) if got is not None else (self.stat(), None)

    async def _fetch_sibling(self, suffix: str) -> Any:
        """The small object ``<file><suffix>`` (None: absent; :data:`_UNREAD` on any failure, read later)."""
        path = self.sibling_path(suffix)
        if path is None:
            return None
        self._count()
        try:
            return await self.fs._cat_file(path)
        except FileNotFoundError:
            return None
        except Exception:  # a sidecar is optional: a failure here is retried by read_sibling, never fatal
            return _UNREAD

    def verify(self) -> None:
        """Raise :class:`ObjectChangedError` if the object is no longer the one opened.

        Needed only where responses are not checked against the pin as they
        arrive (local files, memory, chained filesystems, GCS); S3 and HTTP
        sources return at once.  A store
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
        for member in self.members_read().values():  # objects beside this one (shards)
            if member is not None:
                member.verify()
        if self._responses_checked:
            return
        if self.is_local and self._fd is not None:
            self._check_pin(self._with_fd(lambda fd: self._local_pin(os.fstat(fd))))
            return
        self._check_pin(pin_of(self.stat()))

    def _local_pin(self, st: os.stat_result) -> Pin:
        return Pin(size=st.st_size, etag=local_stamp(st.st_mtime, st.st_ino) if self.pin.etag is not None else None)

    def _check_pin(self, now: Pin) -> None:
        if not self.pin.same_object(now):
            raise ObjectChangedError(
                f"{self.url}: the object changed while it was being read "
                f"(at open: {self.pin.describe()}; now: {now.describe()})"
            )

    def _names_an_object(self) -> bool:
        """Whether the URL's last segment has an extension other than ``.zarr`` (``model.h5``): an object, never
        a store prefix, so a missing one costs its stat alone, not a probe per marker."""
        name = self.path.rstrip("/").rsplit("/", 1)[-1]
        return not self.path.endswith("/") and "." in name.lstrip(".") and not name.endswith(".zarr")

    def _names_a_store(self) -> bool:
        """Whether the URL names a store prefix outright (``x.zarr``, a trailing slash): no head to fetch."""
        return self.path.endswith("/") or self.path.rstrip("/").endswith(".zarr")

    def _is_store_prefix(self) -> bool:
        """Whether a zarr root metadata object lives under this URL (object stores have no directories).

        Decided by the URL first (:meth:`_names_an_object`).
        """
        if self._names_an_object():
            return False
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
        if offset < 0 or offset + length > self.size:  # a size declared by the file itself: refused before allocating
            raise StorageError(
                f"{self.url}: asked for {length} bytes at offset {offset}, past the end of the object "
                f"(file size at open: {self.size})"
            )
        if self.is_local or self._whole_file:
            buf = bytearray(length)
            self.readinto(offset, memoryview(buf))
            return bytes(buf)
        held = self.cached(offset, length)
        return held if held is not None else self._fetch(offset, offset + length)

    def readinto(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with the bytes at ``offset`` (local files: no intermediate copy)."""
        length = buf.nbytes
        view = buf.cast("B")
        if self._whole_file:  # a chained whole-file cache: fetched once, then read like a local file
            self._check_length(offset, length, self._with_fd(lambda fd: pread_into(fd, offset, view)))
        elif not self.is_local:
            held = self._held(offset, length)
            if held is not None:  # inside the head (or an archive's tail) fetched at open: no request
                view[:] = held
            elif self._areadinto is None:
                view[:] = self.read(offset, length)
            elif length:  # streamed into ``buf`` as the body arrives: no whole-body bytes object, no second copy
                fsspec.asyn.sync(self.fs.loop, self._areadinto_checked, offset, view)
        elif self._parent is not None:  # a store member: no descriptor kept (a store has thousands of objects)
            self._check_length(offset, length, self._pread_once(offset, view))
        else:
            self._check_length(offset, length, self._with_fd(lambda fd: pread_into(fd, offset, view)))

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
        self, items: Sequence[tuple[int, memoryview]], max_gap: int | None = None, max_overhead: float | None = None
    ) -> list[tuple[int, int]]:
        """The byte spans :meth:`readinto_many` fetches for ``items`` (:func:`~lazyweights.geometry.merge_ranges`)."""
        ranges = [(off, buf.nbytes) for off, buf in items]
        if max_gap is None:
            return merge_ranges(ranges, max_overhead=max_overhead)
        return merge_ranges(ranges, max_gap, max_overhead)

    def readinto_many(
        self, items: Sequence[tuple[int, memoryview]], max_gap: int | None = None, max_overhead: float | None = None
    ) -> int:
        """Fill each ``(offset, buffer)``; nearby ranges merge into one request, requests run concurrently.

        ``max_gap`` overrides the merge policy's gap (0: only touching ranges merge); ``max_overhead``
        bounds the bytes bridged (region reads).
        Returns the number of requests made (0 for local files, which are read
        one ``preadv`` per item).
        """
        if self.is_local or self._whole_file:
            for offset, buf in items:
                self.readinto(offset, buf)
            return 0
        items = self._copy_held(items)
        if not items:
            return 0
        spans = self.merged_spans(items, max_gap, max_overhead)
        blocks = self._fetch_many(spans)
        starts = [s for s, _ in spans]
        for offset, buf in items:
            if buf.nbytes:
                i = bisect.bisect_right(starts, offset) - 1
                rel = offset - starts[i]
                buf.cast("B")[:] = memoryview(blocks[i])[rel : rel + buf.nbytes]
        return len(spans)

    def _copy_held(self, items: Sequence[tuple[int, memoryview]]) -> list[tuple[int, memoryview]]:
        """Fill the items the head or tail already holds; return the others."""
        rest = []
        for offset, buf in items:
            held = self._held(offset, buf.nbytes)
            if held is None:
                rest.append((offset, buf))
            elif buf.nbytes:
                buf.cast("B")[:] = held
        return rest

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
                asked = retry_after(exc)  # the server said when to come back: honoured, up to a cap
                if asked is not None:
                    delay = max(delay, min(asked, self.retry.max_retry_after))
                logger.debug("%s: %s: transient %r, retrying in %.2f s", self.url, what, exc, delay)
                return delay
            tries = self.retry.attempts
            raise StorageError(
                f"{self.url}: {what}: still failing after {tries} attempts; the last failed with {describe(exc)}"
            ) from exc
        raise self._error(exc, what, kind) from exc

    def _error(self, exc: BaseException, what: str, kind: str = "permanent") -> StorageError:
        if kind == "changed":
            return ObjectChangedError(
                f"{self.url}: the object changed since it was opened ({self.pin.describe()} at open); {what}: {exc}"
            )
        status = chain_status(exc)
        if getattr(self, "pin", None) is not None and (status == 416 or "range is not satisfiable" in str(exc)):
            # every read lies within the size pinned at open: the object is shorter now (a server that ignored
            # If-Match/IfMatch answers for the new object)
            return ObjectChangedError(
                f"{self.url}: the object changed since it was opened ({self.pin.describe()} at open); {what}: "
                f"the server no longer has that range (HTTP 416): {exc}"
            )
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
        """The object's first :attr:`head_bytes`, fetched once in one request and kept (metadata lives there)."""
        if self._head is None:
            with self._head_lock:
                if self._head is None:
                    self._head = self.read(0, min(self.size, self.head_bytes))
        return self._head

    def tail(self) -> bytes:
        """The object's last :data:`TAIL_BYTES` (all of it when smaller), fetched once and kept: an archive's end."""
        if self._tail is None:
            with self._head_lock:
                if self._tail is None:
                    n = min(self.size, TAIL_BYTES)
                    head = self._head
                    whole = head is not None and len(head) == self.size  # a small object: the head is all of it
                    self._tail = head[self.size - n :] if whole else self.read(self.size - n, n)
        return self._tail

    def fetch_ends(self, head_bytes: int | None = None) -> None:
        """Fetch the head (of ``head_bytes``, when not held yet) and the tail in one round of concurrent
        requests (an archive needs both at once)."""
        if self._head is not None:  # the head came with the stat: the tail alone
            self.tail()
            return
        with self._head_lock:
            if self._head is not None or self._tail is not None or self.is_local or self.is_dir:
                return
            self.head_bytes = head_bytes or self.head_bytes
            head, tail = bytearray(min(self.size, self.head_bytes)), bytearray(min(self.size, TAIL_BYTES))
            self.readinto_many([(0, memoryview(head)), (self.size - len(tail), memoryview(tail))], max_gap=0)
            self._head, self._tail = bytes(head), bytes(tail)

    def hold_ends(self, head: bytes | None, tail: bytes | None) -> None:
        """Keep a head and tail of this very object version fetched by others (the ranks of a shared open),
        so reads inside them cost no request, as if this source had fetched them itself."""
        with self._head_lock:
            if head is not None and self._head is None:  # a prefix of this version, whatever its length
                self._head, self.head_bytes = bytes(head), len(head)
            if tail is not None and self._tail is None and len(tail) == min(self.size, TAIL_BYTES):
                self._tail = bytes(tail)

    def read_whole(self, parts: int = 16) -> None:
        """Read the whole remote object now, in ``parts`` concurrent ranged GETs (the head reused), and hold it.

        For a caller that will read nearly every byte (a full load): its metadata walk and its weight reads
        are then served from memory.  Measured on a simulated object store (20 ms a request, 25 MB/s a
        connection): a 2,000-layer Keras ``.h5`` file's walk makes ~7,000 small requests (one per object
        header cluster: Keras interleaves headers with weight data), which cost more than reading the
        140 MB in 16 streams.  Held until :meth:`release_whole` (or :meth:`close`); each range is
        pinned and length-checked like any read.  Only objects on async filesystems (HTTP, S3, GCS) are
        read ahead: local ones, ``memory://`` and whole-file caches are in memory or on disk already.
        """
        if self._afetch is None or self.is_dir or self._whole_file or self._whole is not None:
            return
        buf = bytearray(self.size)
        view = memoryview(buf)
        head, tail = self._head or b"", self._tail or b""  # what the first round fetched is not fetched again
        start, end = len(head), max(len(head), self.size - len(tail))
        view[:start] = head
        view[end:] = tail[len(tail) - (self.size - end) :]
        if end > start:
            count = max(1, min(parts, -(-(end - start) // WHOLE_MIN_PART)))
            step = -(-(end - start) // count)
            self._fill([(off, view[off : min(off + step, end)]) for off in range(start, end, step)])
        self._whole = view.toreadonly()

    def _fill(self, items: list[tuple[int, memoryview]]) -> None:
        """Fill each ``(offset, buffer)`` with its own ranged GET, all concurrently (touching ranges stay apart)."""
        if self._areadinto is not None:

            async def every() -> None:
                await asyncio.gather(*(self._areadinto_checked(off, buf) for off, buf in items))

            fsspec.asyn.sync(self.fs.loop, every)
            return
        blocks = self._fetch_many([(off, off + buf.nbytes) for off, buf in items])
        for (_, buf), block in zip(items, blocks, strict=True):
            buf[:] = block

    @property
    def held_bytes(self) -> int:
        """Bytes of this object held in memory by :meth:`read_whole` (0 when none)."""
        whole = self._whole
        return 0 if whole is None else whole.nbytes

    def release_whole(self) -> None:
        """Drop the copy :meth:`read_whole` holds (reads in progress keep their views; later ones fetch)."""
        self._whole = None

    def holds(self, offset: int, length: int) -> bool:
        """Whether ``[offset, offset + length)`` is held in memory (a read of it costs no request)."""
        return self._held(offset, length) is not None

    def _held(self, offset: int, length: int) -> memoryview | None:
        """A view of ``[offset, offset + length)`` in the whole object, head or tail held, else None (no copy)."""
        whole, head, tail = self._whole, self._head, self._tail
        if whole is not None and offset >= 0 and offset + length <= whole.nbytes:
            return whole[offset : offset + length]
        if head is not None and offset >= 0 and offset + length <= len(head):
            return memoryview(head)[offset : offset + length]
        if tail is not None and offset >= self.size - len(tail):
            at = offset - (self.size - len(tail))
            return memoryview(tail)[at : at + length] if at + length <= len(tail) else None
        return None

    def cached(self, offset: int, length: int) -> bytes | None:
        """``[offset, offset + length)`` if the head, tail or whole object already fetched holds it, else None
        (nothing is read)."""
        held = self._held(offset, length)
        return None if held is None else bytes(held)

    def sibling_path(self, suffix: str) -> str | None:
        """The filesystem path of the object named like this one plus ``suffix`` (None for URLs with a query)."""
        return None if "?" in self.path else self.path + suffix

    def sibling_url(self, suffix: str) -> str | None:
        """The URL of the object named like this one plus ``suffix`` (None for URLs with a query)."""
        return None if "?" in self.url else self.url + suffix

    def read_sibling(self, suffix: str) -> bytes | None:
        """The whole small object next to this one (``<file><suffix>``), or None if it is absent or unreadable.

        Fetched with the open's first round when :class:`Prefetch` named it
        (that answer serves the first call only: a later open reads afresh).
        """
        if suffix in self._siblings:
            return self._siblings.pop(suffix)
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

    def _with_fd(self, use: Callable[[int], Any]) -> Any:
        """``use(fd)`` on this source's own descriptor, held open for the call even if :meth:`close` runs meanwhile.

        The descriptor belongs to this source: it is opened here (checked
        against the pin, so a file replaced since the open is refused), counted
        while in use, and closed only when no read uses it — never closed under
        a reader, so its number cannot be reused by another open mid-read.
        """
        with self._fd_lock:
            if self._fd is None:
                self._fd = self._open_fd()
            fd, self._fd_readers = self._fd, self._fd_readers + 1
        try:
            return use(fd)
        except StorageError:
            raise
        except OSError as exc:
            raise self._error(exc, "read failed") from exc
        finally:
            with self._fd_lock:
                self._fd_readers -= 1
                if self._fd_closing and self._fd_readers == 0:
                    self._close_fd()

    def _open_fd(self) -> int:
        path = self._cache_file() if self._whole_file else self.path
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise self._error(exc, "cannot open") from exc
        self._fd_final = weakref.finalize(self, os.close, fd)  # closed with the source at the latest
        try:
            st = os.fstat(fd)
            if self._whole_file:
                self._check_pin(Pin(size=st.st_size, etag=self.pin.etag, version=self.pin.version))
            else:
                self._check_pin(self._local_pin(st))
        except BaseException:
            self._fd_final()
            raise
        return fd

    def _close_fd(self) -> None:
        if self._fd is not None:
            self._fd_final()  # os.close, once
        self._fd, self._fd_closing = None, False

    def _cache_file(self) -> str:
        """The local copy a whole-file caching filesystem (``simplecache::``, ``filecache::``) keeps of the object.

        fsspec's whole-file caches write the copy in place while other threads
        may already read it as if complete (zeros where the download has not
        reached); and every concurrent first reader downloads it again.  The
        copy is fetched here once per path under a lock, by one reader, then
        read through a descriptor like a local file.  A copy of another size
        than the object opened is refused (:class:`ObjectChangedError`).
        """
        if self._cache_path is None:
            with _cache_download_lock(self.fs, self.path):
                if self._cache_path is None:

                    def fetch() -> str:
                        self._count()
                        with self.fs.open(self.path, "rb") as f:
                            return str(f.name)

                    self._cache_path = self._retrying_sync(fetch, "fetch into the local cache")
        return self._cache_path

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
        """Close the local descriptor and every handle opened through :meth:`handle`; drop what is held."""
        self._whole = None
        with self._fd_lock:
            if self._fd_readers:
                self._fd_closing = True  # the last read in progress closes it
            else:
                self._close_fd()
        with self._handle_lock:
            handles, self._handles = list(self._handles.values()), {}
        for found in handles:
            with contextlib.suppress(Exception):
                found.close()
        for member in self.members_read().values():
            if member is not None:
                member.close()
