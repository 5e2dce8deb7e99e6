"""Ranged GETs pinned to the object version seen at open, one recipe per object store.

A load reads thousands of byte ranges over seconds or minutes; if the object
is replaced meanwhile, unpinned reads would mix old and new bytes.  Each store
offers a way to ask for *exactly* the version that was opened:

- S3, versioned bucket: ``GetObject(VersionId=...)`` — later reads still get
  the opened version, even after an overwrite;
- S3, unversioned: ``GetObject(IfMatch=<ETag>)`` — a changed object answers
  412 Precondition Failed;
- GCS: ``?generation=...`` — the opened generation, or 404 once it is gone;
- HTTP(S): ``If-Match: <ETag>`` (strong ETags only) — 412 once it changed.

Other filesystems (local, memory, chained caches) get plain reads; the
storage layer re-checks their size and modification stamp after a load.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Pin", "pin_of", "pinned_fetch", "pinned_readinto"]

Fetch = Callable[[int, int], Awaitable[bytes]]
ReadInto = Callable[[int, memoryview], Awaitable[int]]


@dataclass(frozen=True)
class Pin:
    """The identity of the object version a :class:`~lazyweights.storage.Source` opened."""

    size: int
    etag: str | None = None  # ETag, GCS md5/etag, or a local modification stamp
    version: str | None = None  # S3 VersionId or GCS generation

    def describe(self) -> str:
        parts = [f"size {self.size}"]
        if self.etag is not None:
            parts.append(f"ETag {self.etag}")
        if self.version is not None:
            parts.append(f"version {self.version}")
        return ", ".join(parts)

    def same_object(self, other: Pin) -> bool:
        """Whether ``other`` describes the same bytes (compared on what both know)."""
        if self.size != other.size:
            return False
        if self.version and other.version:
            return self.version == other.version
        return self.etag == other.etag


def pin_of(info: Mapping[str, Any]) -> Pin:
    """The pin an fsspec ``info()`` dict describes."""
    version = info.get("VersionId") or info.get("generation")
    if version in ("null", ""):  # S3 objects written before versioning was enabled
        version = None
    etag = None
    for key in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "Last-Modified", "created"):
        if info.get(key) is not None:
            etag = str(info[key])
            break
    return Pin(size=int(info["size"]), etag=etag, version=None if version is None else str(version))


def _protocols(fs: Any) -> set[str]:
    proto = fs.protocol
    return set(proto) if isinstance(proto, (tuple, list)) else {proto}


def pinned_fetch(fs: Any, path: str, pin: Pin) -> tuple[Fetch | None, bool]:
    """A coroutine function ``fetch(start, end)`` for ``fs`` (None: not async) and whether it is pinned."""
    if not getattr(fs, "async_impl", False):
        return None, False
    protocols = _protocols(fs)
    if protocols & {"s3", "s3a"}:
        return _s3_fetch(fs, path, pin)
    if protocols & {"gs", "gcs"} and pin.version:

        async def gcs(start: int, end: int) -> bytes:
            return await fs._cat_file(path, start=start, end=end, generation=pin.version)

        return gcs, True
    if protocols & {"http", "https"} and pin.etag and not pin.etag.startswith("W/"):
        headers = _http_headers(fs, pin)

        async def http(start: int, end: int) -> bytes:
            return await fs._cat_file(path, start=start, end=end, headers=headers)

        return http, True

    async def plain(start: int, end: int) -> bytes:
        return await fs._cat_file(path, start=start, end=end)

    return plain, False


def _s3_fetch(fs: Any, path: str, pin: Pin) -> tuple[Fetch, bool]:
    if pin.version:

        async def by_version(start: int, end: int) -> bytes:
            return await fs._cat_file(path, start=start, end=end, version_id=pin.version)

        return by_version, True
    bucket, key, _ = fs.split_path(path)
    condition = {"IfMatch": pin.etag} if pin.etag else {}

    async def if_match(start: int, end: int) -> bytes:
        # s3fs's _cat_file has no IfMatch; this is its body with the condition added
        resp = await fs._call_s3(
            "get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}", **condition, **fs.req_kw
        )
        try:
            return await resp["Body"].read()
        finally:
            resp["Body"].close()

    return if_match, bool(condition)


def _http_headers(fs: Any, pin: Pin) -> dict[str, str]:
    """The caller's own headers (``storage_options``) plus the version condition."""
    headers = dict(getattr(fs, "kwargs", {}).get("headers") or {})
    if pin.etag and not pin.etag.startswith("W/"):
        headers["If-Match"] = pin.etag
    return headers


def pinned_readinto(fs: Any, path: str, pin: Pin) -> ReadInto | None:
    """For HTTP(S): a coroutine ``readinto(start, view)`` streaming a pinned ranged GET into ``view``.

    fsspec's ``cat_file`` returns one ``bytes`` object, which the caller then
    copies into its array: two full copies, each holding the GIL for
    milliseconds while other responses wait.  This streams the body into the
    destination chunk by chunk on fsspec's own session and event loop, with
    the same request options.  Returns the bytes received (at most
    ``len(view)``; fewer means the body was cut short).  None for other stores.
    """
    if not (getattr(fs, "async_impl", False) and _protocols(fs) & {"http", "https"}):
        return None
    headers = _http_headers(fs, pin)

    async def readinto(start: int, view: memoryview) -> int:
        n = view.nbytes
        kw = dict(getattr(fs, "kwargs", {}))
        kw["headers"] = {**headers, "Range": f"bytes={start}-{start + n - 1}"}
        session = await fs.set_session()
        async with session.get(fs.encode_url(path), **kw) as response:
            if response.status == 404:
                raise FileNotFoundError(path)
            response.raise_for_status()
            if response.status != 206 and not (start == 0 and n == pin.size):
                raise ValueError(f"the server ignored the Range header (HTTP {response.status})")
            pos = 0
            async for chunk in response.content.iter_any():
                end = pos + len(chunk)
                if end > n:
                    raise ValueError(f"the server sent more than the {n} bytes asked for")
                view[pos:end] = chunk
                pos = end
            return pos

    return readinto
