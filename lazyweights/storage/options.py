"""The options lazyweights builds filesystems with: one retry layer, default timeouts, chained URLs' options.

Three things the caller's ``storage_options`` do not say but a loader needs:

- **One retry layer.**  s3fs retries retryable errors itself (its
  ``retries`` attribute, 5 attempts), and under it botocore retries again (5
  attempts in legacy mode): with our :class:`~lazyweights.storage.retry.RetryPolicy`
  on top, one flaky request could be tried 125 times.  S3 filesystems get
  botocore ``retries={"total_max_attempts": 1}`` (a constructor option, so a
  filesystem instance of its own in fsspec's cache, not the caller's) and
  :class:`~lazyweights.storage.Source` sets the instance's s3fs ``retries`` to 1.
  gcsfs and HTTP filesystems have no retry layer under our reads.
- **Timeouts.**  aiohttp's default is 300 s for a whole request and botocore
  waits 60 s per read: a stalled server was given up only after 5 x 300 s.
  Filesystems get :data:`CONNECT_TIMEOUT` and :data:`READ_TIMEOUT` (seconds
  without a byte arriving, not a bound on a whole large read) unless the
  caller set their own.
- **Chained URLs** (``simplecache::s3://...``): fsspec hands flat options to
  the outermost layer (the cache), so credentials and endpoints never reach
  the store and botocore fails with ``NoCredentialsError``.  Flat options the
  cache layer does not take are passed to the innermost filesystem, the one
  that talks to the store; options nested under a protocol name stay as given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import fsspec.utils

__all__ = ["CONNECT_TIMEOUT", "READ_TIMEOUT", "SINGLE_ATTEMPT", "fs_options", "target_protocol"]

CONNECT_TIMEOUT = 10.0  # seconds to open a connection
READ_TIMEOUT = 60.0  # seconds without a byte of a response

SINGLE_ATTEMPT = {"total_max_attempts": 1}

# options of fsspec's caching layers (simplecache, filecache, blockcache): these stay with the outer layer
_CACHE_OPTIONS = frozenset(
    {"cache_storage", "cache_check", "check_files", "expiry_time", "same_names", "compression", "cache_mapper"}
    | {"target_protocol", "target_options", "fs"}
)


def target_protocol(url: str) -> str:
    """The protocol of the filesystem that talks to the store (the innermost of a chained URL)."""
    return fsspec.utils.get_protocol(url.split("::")[-1])


def fs_options(url: str, storage_options: Mapping[str, Any]) -> dict[str, Any]:
    """The options the filesystem for ``url`` is built with (see the module docstring)."""
    options = dict(storage_options)
    protocol = target_protocol(url)
    if "::" not in url:
        return _with_defaults(protocol, options)
    names = _protocol_names(url)
    moved = {k: v for k, v in options.items() if k not in _CACHE_OPTIONS and k not in names}
    for k in moved:
        del options[k]
    options[protocol] = _with_defaults(protocol, {**moved, **dict(options.get(protocol) or {})})
    return options


def _protocol_names(url: str) -> set[str]:
    return {fsspec.utils.get_protocol(bit) if "://" in bit else bit for bit in url.split("::")}


def _with_defaults(protocol: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with one retry layer and default timeouts for the store ``protocol``, the caller's kept."""
    options = dict(options)
    if protocol in ("s3", "s3a"):
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("retries", dict(SINGLE_ATTEMPT))
        config.setdefault("connect_timeout", CONNECT_TIMEOUT)
        config.setdefault("read_timeout", READ_TIMEOUT)
        options["config_kwargs"] = config
    elif protocol in ("http", "https"):
        client = dict(options.get("client_kwargs") or {})
        if "timeout" not in client:
            client["timeout"] = _aiohttp_timeout()
        options["client_kwargs"] = client
    elif protocol in ("gs", "gcs") and options.get("requests_timeout") is None:
        options["requests_timeout"] = _aiohttp_timeout()
    return options


def _aiohttp_timeout() -> Any:
    import aiohttp  # present wherever an HTTP or GCS filesystem is

    return aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)
