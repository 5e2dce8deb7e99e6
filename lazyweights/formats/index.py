"""The metadata index: a checkpoint's manifest as JSON, so later opens skip the HDF5 walk.

Walking HDF5 metadata over a network costs several round trips per weight.
The manifest that walk produces is plain data, so it is saved as an *index*:

- in a local cache directory, keyed by the URL and the object's size, ETag
  and version (automatic for remote checkpoints);
- next to the checkpoint as ``<file>.lwindex.json``, by :func:`write_index`.

An index records the pin (size, ETag, version) of the object it describes
and is used only when the object opened now has the same pin; a stale index
is ignored, never trusted.  Opening with an index costs one stat and at most
one GET (the index next to the file), and nothing for a local cache hit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import fsspec
import platformdirs

from ..errors import FormatError, LazyWeightsError, StorageError
from ..manifest import Manifest
from ..storage import Pin, Source, get_source, release_source
from .detect import parse

__all__ = ["DEFAULT_CACHE_DIR", "INDEX_SUFFIX", "has_cached", "load_manifest", "write_index"]

logger = logging.getLogger(__name__)

INDEX_SUFFIX = ".lwindex.json"
DEFAULT_CACHE_DIR = Path(platformdirs.user_cache_dir("lazyweights")) / "index"  # ~/.cache/lazyweights/index
_KIND = "lazyweights-index"
_VERSION = 2  # 2: large attributes are references (deferred_attrs), which a version-1 reader would drop


def index_document(manifest: Manifest, pin: Pin) -> str:
    """The JSON text of an index: the manifest plus the pin of the object it describes."""
    return json.dumps(
        {
            "kind": _KIND,
            "version": _VERSION,
            "pin": dataclasses.asdict(pin),
            "manifest": json.loads(manifest.to_json()),
        },
        separators=(",", ":"),
    )


def parse_index(text: str | bytes, source: Source, where: str) -> Manifest | None:
    """The manifest in an index document if it describes ``source``'s object as opened; else None."""
    try:
        doc = json.loads(text)
        if doc.get("kind") != _KIND or doc.get("version") != _VERSION:
            logger.info("%s: ignoring %s: not a version-%d lazyweights index", source.url, where, _VERSION)
            return None
        pin = Pin(**doc["pin"])
        if source.pin.etag is None or not pin.same_object(source.pin):
            logger.info(
                "%s: ignoring stale index %s (index: %s; object: %s)",
                source.url,
                where,
                pin.describe(),
                source.pin.describe(),
            )
            return None
        manifest = Manifest.from_json(json.dumps(doc["manifest"]))
    except (ValueError, KeyError, TypeError, LazyWeightsError) as exc:
        logger.warning("%s: ignoring unreadable index %s: %s", source.url, where, exc)
        return None
    return dataclasses.replace(manifest, url=source.url)


def _url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def _cache_path(cache_dir: Path, source: Source) -> Path:
    """``<url key>-<version key>.json``: found by URL before the object is stat-ed (:func:`has_cached`)."""
    pin = source.pin
    key = json.dumps([source.url, pin.size, pin.etag, pin.version])
    return cache_dir / f"{_url_key(source.url)}-{hashlib.sha256(key.encode()).hexdigest()}.json"


def has_cached(url: str, cache_dir: str | os.PathLike[str] | None = None) -> bool:
    """Whether the local cache holds a manifest of some version of ``url`` (then a plain stat may be all an
    open needs: no head is fetched for nothing)."""
    directory = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    try:
        return any(directory.glob(f"{_url_key(url)}-*.json"))
    except OSError:
        return False


def _read_cached(cache_dir: Path, source: Source) -> Manifest | None:
    path = _cache_path(cache_dir, source)
    try:
        text = path.read_text()
    except OSError:
        return None
    return parse_index(text, source, str(path))


def _write_cached(cache_dir: Path, source: Source, manifest: Manifest) -> None:
    """Store atomically (write then rename); a cache that cannot be written is only logged."""
    path = _cache_path(cache_dir, source)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=cache_dir, suffix=".tmp", delete=False) as f:
            f.write(index_document(manifest, source.pin))
        os.replace(f.name, path)
    except OSError as exc:
        logger.warning("%s: cannot write the metadata cache %s: %s", source.url, path, exc)


def _read_sibling(source: Source) -> Manifest | None:
    text = source.read_sibling(INDEX_SUFFIX)
    return None if text is None else parse_index(text, source, source.url + INDEX_SUFFIX)


def load_manifest(
    source: Source,
    parse: Any,
    *,
    use_index: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    agree: Callable[[bool], bool] | None = None,
) -> Manifest:
    """``source``'s manifest: from the local cache, the index next to it, or ``parse(source)``.

    Local files are always parsed (that is fast and needs no network); remote
    objects without an ETag or version are parsed too, since no index could
    be checked against them.  ``agree(found)``: whether every process of a job
    that parses together found an index (else all of them parse, in lockstep).
    """
    if not use_index or source.is_local or source.pin.etag is None:
        return parse(source)
    directory = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    manifest = _read_cached(directory, source)
    if manifest is None:
        manifest = _read_sibling(source)
    if agree is not None and not agree(manifest is not None):
        manifest = None
    if manifest is not None:
        return manifest.bound(source.read)
    manifest = parse(source)
    if not any(s.member for s in (*manifest.weights, *manifest.optimizer)):  # the pin covers one object only
        _write_cached(directory, source, manifest)
    return manifest


def write_index(
    url: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
    path_options: Mapping[str, Any] | None = None,
) -> str:
    """Write the metadata index of the checkpoint at ``url``; return where it went.

    By default the index goes next to the checkpoint as ``<url>.lwindex.json``
    (through the same filesystem and ``storage_options``), where every later
    :func:`lazyweights.open` finds it.  Pass ``path`` (any fsspec URL) to write
    it elsewhere (with ``path_options`` for its filesystem), e.g. into the
    local directory an HTTP server publishes.

    The index is tied to the object's size and ETag/version as seen now:
    write it from the URL it will be read from, since another store reports
    other ETags for the same bytes and the index would then be ignored.
    """
    source = get_source(os.fspath(url), storage_options, refresh=True)
    try:
        manifest = parse(source)
    finally:
        release_source(source)
    text = index_document(manifest, source.pin)
    if path is None:
        target = source.sibling_url(INDEX_SUFFIX)
        if target is None:
            raise FormatError(f"{source.url}: cannot place an index next to this URL; pass path=")
        fs, fspath = source.fs, source.sibling_path(INDEX_SUFFIX)
    else:
        target = os.fspath(path)
        fs, fspath = fsspec.core.url_to_fs(target, **dict(path_options or {}))
    try:
        fs.pipe_file(fspath, text.encode())
    except Exception as exc:  # a read-only store (HTTP answers PUT with 405/501), no permission, no bucket
        why = (str(exc).splitlines() or [""])[0]
        raise StorageError(
            f"{source.url}: cannot write the index to {target} ({type(exc).__name__}: {why}); "
            "write it where you can with path= (CLI: --output), e.g. a local file or another bucket"
        ) from exc
    return target
