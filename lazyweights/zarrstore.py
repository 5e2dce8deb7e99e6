"""Zarr stores as a data source: opening a store for a URL, and reading blocks of its arrays.

Zarr chunks are separate objects, not byte ranges of one file, so weights of
layout ``zarr`` are read by zarr itself (which fetches and decodes chunks
concurrently, and knows every codec the writer may have used).  This module
is the one place that touches zarr's store and array objects for reading;
``reader`` and ``stream`` call :func:`read_box` and :func:`grid_boxes`.

Opened groups are cached per :class:`~lazyweights.storage.Source` (weakly, so
closing a checkpoint drops them): a consolidated store is opened with one
request, and every array is then resolved from that metadata without more.
"""

from __future__ import annotations

import itertools
import threading
import warnings
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from .manifest import WeightSpec
from .storage import Source

__all__ = ["array", "grid_boxes", "open_store", "read_box", "root_group", "stored_dtype", "to_stored", "zarr_module"]

Index = tuple[slice, ...]

_groups: weakref.WeakKeyDictionary[Source, Any] = weakref.WeakKeyDictionary()
_arrays: weakref.WeakKeyDictionary[Source, dict[str, Any]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def zarr_module() -> Any:
    """Import zarr (an optional dependency) with an error naming the extra to install."""
    try:
        import zarr
    except ImportError as exc:  # pragma: no cover - zarr is in the test extra
        from .errors import UnsupportedError

        raise UnsupportedError("reading or writing zarr mirrors needs zarr: pip install 'lazyweights[zarr]'") from exc
    return zarr


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


def read_box(source: Source, spec: WeightSpec, box: Index) -> np.ndarray:
    """The values of ``spec`` inside ``box`` (unit-step slices), in the spec's dtype."""
    values = np.asarray(array(source, spec.path)[box] if box else array(source, spec.path)[...])
    dtype = spec.np_dtype
    if spec.dtype == "bfloat16":
        return values.view(dtype)
    return values if values.dtype == dtype else values.astype(dtype)


def grid_boxes(shape: tuple[int, ...], chunk_shape: tuple[int, ...] | None) -> Iterator[Index]:
    """The boxes of a regular chunk grid over ``shape``, in C order (one empty box for 0-d arrays)."""
    if not shape:
        yield ()
        return
    if 0 in shape:
        return
    chunk_shape = chunk_shape or shape
    axes = [[slice(i, min(i + c, n)) for i in range(0, n, c)] for n, c in zip(shape, chunk_shape, strict=True)]
    yield from itertools.product(*axes)
