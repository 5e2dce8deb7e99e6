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

Asking is not enough: many HTTP servers and CDNs ignore ``If-Match``, and
emulators ignore ``?generation=``.  So every response is also checked on our
side (:func:`check_response`): the ``ETag``/``Last-Modified`` (S3: ETag and
VersionId) it carries must be the pinned ones, and its ``Content-Range`` must
be the range asked for.  GCS reads return no headers through gcsfs, so a GCS
source re-checks the generation after the load instead (it is not ``pinned``).

Other filesystems (local, memory, chained caches) get plain reads; the
storage layer re-checks their size and modification stamp after a load.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "First",
    "FirstRead",
    "Pin",
    "RangeMismatchError",
    "VersionMismatchError",
    "check_response",
    "checks_responses",
    "first_read",
    "local_stamp",
    "pin_of",
    "pinned_fetch",
    "pinned_readinto",
]


class VersionMismatchError(Exception):
    """A response came from another object version than the one pinned (the server ignored the condition)."""


class RangeMismatchError(Exception):
    """A response's ``Content-Range`` is not the range that was asked for."""


Fetch = Callable[[int, int], Awaitable[bytes]]
ReadInto = Callable[[int, memoryview], Awaitable[int]]


@dataclass(frozen=True)
class Pin:
    """The identity of the object version a :class:`~lazyweights.storage.Source` opened."""

    size: int
    etag: str | None = None  # ETag, GCS md5/etag, or a local modification stamp
    version: str | None = None  # S3 VersionId or GCS generation
    modified: str | None = None  # HTTP Last-Modified, checked on every response (not part of identity)

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
    if info.get("ino") is not None and info.get("mtime") is not None:  # a local file: replaced means a new inode
        return Pin(size=int(info["size"]), etag=local_stamp(info["mtime"], info["ino"]))
    etag = None
    for key in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "Last-Modified", "created"):
        if info.get(key) is not None:
            etag = str(info[key])
            break
    modified = info.get("Last-Modified")
    return Pin(
        size=int(info["size"]),
        etag=etag,
        version=None if version is None else str(version),
        modified=None if modified is None else str(modified),
    )


def local_stamp(mtime: float, inode: int) -> str:
    """A local file's version stamp: its modification time and inode (a file replaced by rename has a new one)."""
    return f"{mtime}@{inode}"


def _bare_etag(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def check_response(
    pin: Pin, start: int, end: int, headers: Mapping[str, Any], *, etag_key: str = "ETag", whole_ok: bool = False
) -> None:
    """Refuse a response for bytes ``[start, end)`` that is not of the pinned version or not of that range.

    ``headers`` are the response's (HTTP headers, or an S3 GetObject response
    dict).  Raises :class:`VersionMismatchError` when its ETag, Last-Modified
    or S3 VersionId differs from the pin (compared only where both sides have
    one), :class:`RangeMismatchError` when its ``Content-Range`` is not
    ``bytes start-(end-1)/size``.  ``whole_ok``: a 200 with the whole object
    answers a request for all of it, and carries no Content-Range.
    """
    tag = headers.get(etag_key)
    if tag and pin.etag and pin.etag != pin.modified and _bare_etag(str(tag)) != _bare_etag(pin.etag):
        raise VersionMismatchError(f"the response is of ETag {tag}, not the pinned {pin.etag}")
    modified = headers.get("Last-Modified")
    if modified and pin.modified and str(modified) != pin.modified:
        raise VersionMismatchError(f"the response is of Last-Modified {modified}, not the pinned {pin.modified}")
    version = headers.get("VersionId")
    if version and version != "null" and pin.version and str(version) != pin.version:
        raise VersionMismatchError(f"the response is of version {version}, not the pinned {pin.version}")
    span = headers.get("Content-Range") or headers.get("ContentRange")
    if span is None:
        if not whole_ok:
            raise RangeMismatchError(f"no Content-Range in the answer to a request for bytes {start}-{end - 1}")
        return
    found = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", str(span).strip())
    if found is not None and found[3] not in ("*", str(pin.size)):
        raise VersionMismatchError(f"the response is of an object of {found[3]} bytes, not the pinned {pin.size}")
    if found is None or (int(found[1]), int(found[2])) != (start, end - 1):
        raise RangeMismatchError(f"the server answered Content-Range {span!r} to a request for bytes {start}-{end - 1}")


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
    if protocols & {"http", "https"}:
        readinto = pinned_readinto(fs, path, pin)
        assert readinto is not None

        async def http(start: int, end: int) -> bytes:
            buf = bytearray(end - start)
            got = await readinto(start, memoryview(buf))
            return buf if got == len(buf) else buf[:got]  # type: ignore[return-value]

        return http, bool(pin.etag and not pin.etag.startswith("W/"))

    async def plain(start: int, end: int) -> bytes:
        return await fs._cat_file(path, start=start, end=end)

    return plain, False


def _s3_fetch(fs: Any, path: str, pin: Pin) -> tuple[Fetch, bool]:
    """GetObject of the pinned VersionId (versioned buckets) or with IfMatch, each response checked."""
    bucket, key, _ = fs.split_path(path)
    condition = {"VersionId": pin.version} if pin.version else {"IfMatch": pin.etag} if pin.etag else {}

    async def get(start: int, end: int) -> bytes:
        # s3fs's _cat_file has no IfMatch and hides the response; this is its body with both
        resp = await fs._call_s3(
            "get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}", **condition, **fs.req_kw
        )
        try:
            check_response(pin, start, end, resp, whole_ok=start == 0 and end == pin.size)
            return await resp["Body"].read()
        finally:
            resp["Body"].close()

    return get, bool(condition)


def _http_headers(fs: Any, pin: Pin) -> dict[str, str]:
    """The caller's own headers (``storage_options``) plus the version condition."""
    headers = dict(getattr(fs, "kwargs", {}).get("headers") or {})
    if pin.etag and not pin.etag.startswith("W/"):
        headers["If-Match"] = pin.etag
    return headers


def checks_responses(fs: Any) -> bool:
    """Whether each response of ``fs`` is checked against the pin here (S3, HTTP), so no re-check is needed.

    gcsfs shows no response headers: a GCS source re-states its generation
    after a load, as the emulator (and a misconfigured proxy) ignore
    ``?generation=``.
    """
    return bool(getattr(fs, "async_impl", False) and _protocols(fs) & {"s3", "s3a", "http", "https"})


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
                raise RangeMismatchError(f"the server ignored the Range header (HTTP {response.status})")
            check_response(pin, start, start + n, response.headers, whole_ok=response.status == 200)
            pos = 0
            async for chunk in response.content.iter_any():
                end = pos + len(chunk)
                if end > n:
                    raise ValueError(f"the server sent more than the {n} bytes asked for")
                view[pos:end] = chunk
                pos = end
            return pos

    return readinto


FirstRead = Callable[[int, int], Awaitable["First | None"]]


@dataclass(frozen=True)
class First:
    """What the first ranged GETs of an object told: its ``info()``, its first bytes, its last bytes (or None)."""

    info: dict[str, Any]
    head: bytes
    tail: bytes | None = None
    siblings: dict[str, bytes | None] = field(default_factory=dict)  # filled by the Source


def first_read(fs: Any, path: str) -> FirstRead | None:
    """For HTTP(S) and S3: a coroutine ``read(n, tail)``: the object's stat, its first ``n`` bytes and, when
    ``tail``, its last ``tail`` bytes (a suffix range, in a concurrent request), in one round trip.

    A ranged GET of ``[0, n)`` answers what a HEAD would (size from ``Content-Range``, ETag,
    Last-Modified, S3 VersionId) and brings the head with it.  Returns None where the answer
    cannot pin (no ``Content-Range``, an empty object, a server ignoring ``Range`` on an object
    larger than asked for): the caller then stats as before.  None for other stores.  Two answers
    of different object versions raise ``ConnectionError`` (transient: the caller retries).
    """
    if not getattr(fs, "async_impl", False):
        return None
    protocols = _protocols(fs)
    if protocols & {"http", "https"}:
        part = functools.partial(_http_part, fs, path)
    elif protocols & {"s3", "s3a"}:
        part = functools.partial(_s3_part, fs, path)
    else:
        return None

    async def read(n: int, tail: int) -> First | None:
        ranges = [f"bytes=0-{n - 1}"] + ([f"bytes=-{tail}"] if tail else [])
        parts = await asyncio.gather(*(part(r, max(n, tail)) for r in ranges))
        if any(p is None for p in parts):
            return None
        (info, head), *rest = parts
        if rest and (rest[0][0]["size"] != info["size"] or rest[0][0].get("ETag") != info.get("ETag")):
            raise ConnectionError("the object changed between its first two answers")
        return First(info, head, rest[0][1] if rest else None)

    return read


def _answered(span: Any, asked: str) -> tuple[int, int, int] | None:
    """``(start, end, object size)`` a ``Content-Range`` gives, if it answers the range ``asked``."""
    found = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", str(span or "").strip())
    if found is None:
        return None
    start, end, size = int(found[1]), int(found[2]) + 1, int(found[3])
    if asked.startswith("bytes=0-"):
        ok = start == 0 and end == min(size, int(asked[8:]) + 1)
    else:  # a suffix range: the last N bytes
        ok = end == size and start == max(0, size - int(asked[7:]))
    return (start, end, size) if ok else None


async def _http_part(fs: Any, path: str, asked: str, limit: int) -> tuple[dict[str, Any], bytes] | None:
    kw = dict(getattr(fs, "kwargs", {}))
    kw["headers"] = {**dict(kw.get("headers") or {}), "Range": asked}
    session = await fs.set_session()
    async with session.get(fs.encode_url(path), **kw) as response:
        if response.status == 416:  # an empty object
            return None
        try:
            response.raise_for_status()
        except Exception as exc:
            if response.status == 404:  # as fsspec says it, the status kept in the chain
                raise FileNotFoundError(path) from exc
            raise
        if response.status == 206:
            got = _answered(response.headers.get("Content-Range"), asked)
        else:  # 200: the whole object, acceptable only when it is no longer than asked for
            size = response.content_length
            got = None if response.status != 200 or size is None or size > limit else (0, size, size)
        if got is None:
            return None  # closing the response drops the rest of the body unread
        try:
            data = await response.content.readexactly(got[1] - got[0]) if got[1] > got[0] else b""
        except asyncio.IncompleteReadError as exc:  # cut short: transient, retried
            raise ConnectionError(f"short body: got {len(exc.partial)} of {got[1] - got[0]} bytes") from exc
        info = {"name": path, "type": "file", "size": got[2]}
        info.update({k: response.headers[k] for k in ("ETag", "Last-Modified") if response.headers.get(k)})
        return info, data


async def _s3_part(fs: Any, path: str, asked: str, limit: int) -> tuple[dict[str, Any], bytes] | None:
    bucket, key, version = fs.split_path(path)
    extra = {"VersionId": version} if version else {}
    try:
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, Range=asked, **extra, **fs.req_kw)
    except Exception as exc:  # an empty object answers InvalidRange (416): stat it instead
        if any(word in str(exc) for word in ("InvalidRange", "416", "not satisfiable")):
            return None
        raise
    try:
        got = _answered(resp.get("ContentRange"), asked)
        if got is None:
            return None
        data = await resp["Body"].read()
    finally:
        resp["Body"].close()
    if len(data) != got[1] - got[0]:
        raise ConnectionError(f"short body: got {len(data)} of {got[1] - got[0]} bytes")  # transient: retried
    info = {"name": path, "type": "file", "size": got[2], "ETag": resp.get("ETag")}
    if resp.get("VersionId"):
        info["VersionId"] = resp["VersionId"]
    return info, data
