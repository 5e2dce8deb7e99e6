"""Weights as lazy dask arrays.

Each array is ``da.from_array`` over a small picklable array-like that holds a
:class:`~lazyweights.storage.Source` (which pickles as URL + options) and the
weight's spec: graphs carry no open handles and run on any scheduler,
``dask.distributed`` workers included.  Blocks follow storage: HDF5 or zarr
chunks for chunked data, row blocks of ~``block_bytes`` for contiguous data.
Indexing the array-like reads only the rows a slice covers, and dask pushes
slices into these getters, so ``w.to_dask()[10:20].compute()`` reads ten rows.
Graph names come from metadata (URL, version, key), never from data.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import reader
from .manifest import WeightSpec
from .storage import Source

__all__ = ["LazyWeight", "to_dask"]

DEFAULT_BLOCK_BYTES = 32 << 20


class LazyWeight:
    """A numpy-indexable view of one weight that reads on ``__getitem__``."""

    def __init__(self, source: Source, spec: WeightSpec):
        self.source = source
        self.spec = spec
        self.shape = spec.shape
        self.dtype = spec.np_dtype
        self.ndim = len(spec.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        return reader.read(self.source, self.spec, index)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        values = self[()]
        return values if dtype is None else values.astype(dtype)

    def __repr__(self) -> str:
        return f"LazyWeight({self.source.url!r}, {self.spec.key!r}, shape={self.shape}, dtype={self.dtype})"


def _chunks(spec: WeightSpec, block_bytes: int) -> tuple[int, ...] | str:
    if spec.layout in ("chunked", "h5py", "zarr") and spec.chunk_shape:
        return spec.chunk_shape
    if not spec.shape:
        return ()
    row_bytes = max(1, math.prod(spec.shape[1:]) * spec.np_dtype.itemsize)
    rows = max(1, min(spec.shape[0], block_bytes // row_bytes))
    return (rows, *spec.shape[1:])


def to_dask(source: Source, spec: WeightSpec, chunks: Any = None, block_bytes: int = DEFAULT_BLOCK_BYTES) -> Any:
    """A dask array of ``spec``'s values, one task per storage-aligned block."""
    import dask.array as da
    from dask.base import tokenize

    name = "lazyweights-" + tokenize(source.url, source.size, source.etag, spec.key, chunks, block_bytes)
    meta = np.empty((0,) * len(spec.shape), dtype=spec.np_dtype)
    return da.from_array(
        LazyWeight(source, spec),
        chunks=chunks if chunks is not None else _chunks(spec, block_bytes),
        name=name,
        asarray=False,
        fancy=True,  # dask fuses user slices into the getter only for the fancy getter
        inline_array=True,
        meta=meta,
    )
