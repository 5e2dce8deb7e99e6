"""Which storage failures are worth retrying, and how long to wait between attempts.

Object stores fail in two ways.  *Transient* failures (HTTP 5xx, 408, 429,
S3 ``SlowDown``, a reset connection, a body shorter than its headers
promised) usually succeed when asked again a moment later.  *Permanent* ones
(403, 404, 401, a malformed request) never will, so they fail at once.  A
third kind, a failed precondition (HTTP 412, a vanished version), means the
object changed since it was opened.

:func:`classify` sorts an exception from any fsspec backend (aiohttp,
s3fs/botocore, gcsfs) into those kinds; :class:`RetryPolicy` is the bounded
exponential backoff the storage layer applies to the transient ones.
"""

from __future__ import annotations

import asyncio
import errno
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from .pinning import RangeMismatchError, VersionMismatchError

__all__ = [
    "DEFAULT_RETRY",
    "RetryPolicy",
    "ShortReadError",
    "chain_status",
    "classify",
    "describe",
    "retry_after",
    "status_of",
]

Kind = Literal["transient", "permanent", "changed"]

_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_CHANGED_STATUS = frozenset({412})
_TRANSIENT_ERRNO = frozenset(
    {errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE}
    | {getattr(errno, "EREMOTEIO", errno.EIO)}
)
_TRANSIENT_WORDS = ("SlowDown", "reduce your request rate", "ServiceUnavailable", "InternalError", "RequestTimeout")
_CHANGED_WORDS = ("PreconditionFailed", "precondition", "NoSuchVersion")


class ShortReadError(Exception):
    """A response carried fewer bytes than were asked for (a cut connection, a truncated body)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter: at most ``attempts`` tries in all."""

    attempts: int = 5
    backoff: float = 0.05  # seconds before the first retry
    max_backoff: float = 2.0
    max_retry_after: float = 10.0  # a server's Retry-After is honoured up to this many seconds

    def delays(self) -> Iterator[float]:
        """The waits before retries 1, 2, ... (``attempts - 1`` of them)."""
        for n in range(self.attempts - 1):
            base = min(self.max_backoff, self.backoff * 2**n)
            yield base * (0.5 + random.random() / 2)


DEFAULT_RETRY = RetryPolicy()


def retry_after(exc: BaseException) -> float | None:
    """The seconds a ``Retry-After`` header in ``exc``'s chain asks to wait (aiohttp, botocore); None if none.

    Only the delay-seconds form is read; an HTTP-date form counts as absent
    (the backoff applies).
    """
    for link in _chain(exc):
        headers = getattr(link, "headers", None)
        response = getattr(link, "response", None)
        if headers is None and isinstance(response, dict):
            headers = response.get("ResponseMetadata", {}).get("HTTPHeaders")
        if not headers:
            continue
        value = headers.get("Retry-After") or headers.get("retry-after")
        try:
            return max(0.0, float(value)) if value is not None else None
        except ValueError:
            return None
    return None


def describe(exc: BaseException) -> str:
    """What went wrong, never empty: a timeout's message is often blank (``asyncio.TimeoutError()``)."""
    text = str(exc)
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return f"a timeout: no answer within the connect or read timeout{f' ({text})' if text else ''}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries, if any (aiohttp, gcsfs, botocore)."""
    for attr in ("status", "code", "status_code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    response = getattr(exc, "response", None)  # botocore ClientError
    if isinstance(response, dict):
        value = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(value, int):
            return value
    return None


def classify(exc: BaseException) -> Kind:
    """Whether retrying ``exc`` can help (``transient``), cannot (``permanent``), or the object changed.

    An HTTP status anywhere in the exception's chain decides (the innermost
    wins: fsspec wraps a failed HEAD's 503 or 403 in a FileNotFoundError);
    otherwise the exception types and messages do.
    """
    if any(_is_transport_error(link) for link in _chain(exc)):
        return "transient"  # checked first: aiohttp's parser errors inside them carry a misleading code 400
    status = chain_status(exc)
    if status is not None:
        if status in _CHANGED_STATUS:
            return "changed"
        return "transient" if status in _TRANSIENT_STATUS else "permanent"
    for link in _chain(exc):
        kind = _classify_one(link)
        if kind is not None:
            return kind
    return "permanent"


def chain_status(exc: BaseException) -> int | None:
    """The innermost HTTP status in ``exc``'s cause/context chain."""
    found = None
    for link in _chain(exc):
        status = status_of(link)
        if status is not None:
            found = status
    return found


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _classify_one(exc: BaseException) -> Kind | None:
    if isinstance(exc, VersionMismatchError):
        return "changed"
    if isinstance(exc, RangeMismatchError):
        return "permanent"
    text = str(exc)
    if any(w in text for w in _CHANGED_WORDS):
        return "changed"
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return "permanent"
    if any(w in text for w in _TRANSIENT_WORDS):
        return "transient"
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNO:
        return "transient"
    return None


def _is_transport_error(exc: BaseException) -> bool:
    """A cut connection, a timeout or a body shorter than announced."""
    if isinstance(exc, (ShortReadError, ConnectionError, TimeoutError, asyncio.TimeoutError)):
        return True
    try:
        import aiohttp
    except ImportError:
        return False
    return isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError))
