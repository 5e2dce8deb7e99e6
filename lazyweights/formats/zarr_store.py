"""Zarr stores as a data source: opening a store for a URL, and reading blocks of its arrays.

Zarr chunks are separate objects, not byte ranges of one file.  This module
is the one place that touches zarr's store, array and codec objects for
reading: it says how an array's chunk objects are named and whether they are
raw (:func:`chunk_format`, recorded in the manifest), gives a synchronous
decoder built from the array's own codecs (:func:`chunk_decoder`), and reads
blocks through zarr itself (:func:`read_box`) for arrays only zarr can read.
``lazyweights.zarrchunks`` does the chunk I/O.

Opened groups are cached per :class:`~lazyweights.storage.Source` (weakly, so
closing a checkpoint drops them): a consolidated store is opened with one
request, and every array is then resolved from that metadata without more.
"""

from __future__ import annotations

import sys
import threading
import warnings
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import require
from ..manifest import ZarrChunks, resolve_dtype
from ..storage import Source

__all__ = [
    "array",
    "chunk_format",
    "fill_bytes",
    "from_stored",
    "open_store",
    "root_group",
    "stored_dtype",
    "to_stored",
    "zarr_module",
]

_groups: weakref.WeakKeyDictionary[Source, Any] = weakref.WeakKeyDictionary()
_arrays: weakref.WeakKeyDictionary[Source, dict[str, Any]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def zarr_module() -> Any:
    """Import zarr (an optional dependency) with an error naming the extra to install."""
    return require("zarr", "zarr")


def open_store(url: str, storage_options: Mapping[str, Any] | None = None, *, read_only: bool) -> Any:
    """A zarr store for ``url``: a LocalStore for local paths, an FsspecStore for any other fsspec URL."""
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    zarr_module()
    from zarr.storage import FsspecStore, LocalStore

    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    if isinstance(fs, LocalFileSystem):
        return LocalStore(path, read_only=read_only)
    with warnings.catch_warnings():  # zarr warns when it wraps a synchronous filesystem (memory://)
        warnings.simplefilter("ignore", UserWarning)
        return FsspecStore.from_url(url, storage_options=dict(storage_options or {}), read_only=read_only)


def root_group(source: Source) -> Any:
    """The store's root group, read-only, opened once per source (consolidated metadata when present)."""
    with _lock:
        group = _groups.get(source)
    if group is None:
        zarr = zarr_module()
        store = open_store(source.url, source.storage_options, read_only=True)
        group = zarr.open_group(store, mode="r")
        with _lock:
            group = _groups.setdefault(source, group)
    return group


def array(source: Source, path: str) -> Any:
    """The zarr array at ``path`` of ``source``'s store (cached)."""
    with _lock:
        found = _arrays.get(source, {}).get(path)
    if found is None:
        found = root_group(source)[path]
        with _lock:
            found = _arrays.setdefault(source, {}).setdefault(path, found)
    return found


def stored_dtype(dtype: str) -> np.dtype:
    """The dtype a weight is stored with in zarr: little-endian; bfloat16 (no zarr data type) as its uint16 bits."""
    return np.dtype("<u2") if dtype == "bfloat16" else np.dtype(dtype).newbyteorder("<")


def to_stored(values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` viewed as :func:`stored_dtype` (no copy)."""
    return values.view(np.uint16) if dtype == "bfloat16" else values


def from_stored(values: np.ndarray, dtype: str) -> np.ndarray:
    """Values as zarr stores them, in the manifest ``dtype`` (bfloat16: a view of the uint16 bits)."""
    if dtype == "bfloat16":
        return values.view(resolve_dtype(dtype))
    target = np.dtype(dtype)
    return values if values.dtype == target else values.astype(target)


def chunk_format(arr: Any) -> ZarrChunks | None:
    """How ``arr``'s chunk objects are named, and their byte order when they are raw (no codec, C order).

    None for arrays whose chunk objects are not one chunk each in a known
    naming (sharded arrays, custom key encodings) or not C order: zarr reads those.
    """
    meta = arr.metadata
    if meta.zarr_format == 2:
        if meta.order != "C":
            return None
        raw = not meta.compressor and not meta.filters
        return ZarrChunks(meta.dimension_separator or ".", "", _byteorder(arr.dtype) if raw else None)
    from zarr.codecs import BytesCodec
    from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding, V2ChunkKeyEncoding

    encoding = meta.chunk_key_encoding
    if arr.shards is not None or not isinstance(encoding, DefaultChunkKeyEncoding | V2ChunkKeyEncoding):
        return None
    prefix = "c" if isinstance(encoding, DefaultChunkKeyEncoding) else ""
    codecs = tuple(meta.codecs)
    order = None
    if len(codecs) == 1 and isinstance(codecs[0], BytesCodec):
        endian = codecs[0].endian
        order = "|" if endian is None or arr.dtype.itemsize == 1 else {"little": "<", "big": ">"}[endian.value]
    return ZarrChunks(encoding.separator, prefix, order)


def _byteorder(dtype: np.dtype) -> str:
    if dtype.itemsize == 1 or dtype.byteorder == "|":
        return "|"
    if dtype.byteorder == "=":
        return "<" if sys.byteorder == "little" else ">"
    return dtype.byteorder


def fill_bytes(arr: Any, dtype: str) -> bytes | None:
    """``arr``'s fill value as one element of the manifest ``dtype`` (None when it is zero, the manifest's default)."""
    if arr.fill_value is None:
        return None
    data = from_stored(np.asarray(arr.fill_value, dtype=arr.dtype), dtype).tobytes()
    return data if any(data) else None
