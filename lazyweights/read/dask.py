"""Weights as lazy dask arrays.

Each array is ``da.from_array`` over the checkpoint's own weight object
(:class:`lazyweights.Weight`), which pickles as its source (URL + options +
pin) and spec: graphs carry no open handles and run on any scheduler,
``dask.distributed`` workers included.  Blocks follow storage: HDF5 or zarr
chunks for chunked data, row blocks (:func:`~lazyweights.geometry.row_blocks`'s
rule) for contiguous data.  Indexing the weight reads only the rows a slice
covers, and dask pushes slices into its getter, so
``w.to_dask()[10:20].compute()`` reads ten rows.  Graph names come from
metadata (URL, version, key), never from data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..geometry import ROW_BLOCK_BYTES, rows_per_block
from ..manifest import WeightSpec

__all__ = ["block_chunks", "to_dask"]


def block_chunks(spec: WeightSpec, block_bytes: int = ROW_BLOCK_BYTES) -> tuple[int, ...]:
    """The dask chunk shape for ``spec``: its storage chunks, or row blocks of at most ``block_bytes``."""
    if spec.layout in ("chunked", "h5py", "zarr") and spec.chunk_shape:
        return spec.chunk_shape
    if not spec.shape:
        return ()
    row_bytes = spec.nbytes // spec.shape[0] if spec.shape[0] else spec.np_dtype.itemsize
    return (max(1, min(spec.shape[0], rows_per_block(row_bytes, block_bytes))), *spec.shape[1:])


def to_dask(weight: Any, token: tuple[Any, ...], chunks: Any = None, block_bytes: int = ROW_BLOCK_BYTES) -> Any:
    """A dask array over ``weight`` (numpy-indexable, with ``spec``), one task per storage-aligned block.

    ``token`` identifies the object version and weight (never the data).
    """
    import dask.array as da
    from dask.base import tokenize

    spec: WeightSpec = weight.spec
    name = "lazyweights-" + tokenize(*token, chunks, block_bytes)
    meta = np.empty((0,) * len(spec.shape), dtype=spec.np_dtype)
    return da.from_array(
        weight,
        chunks=chunks if chunks is not None else block_chunks(spec, block_bytes),
        name=name,
        asarray=False,
        fancy=True,  # dask fuses user slices into the getter only for the fancy getter
        inline_array=True,
        meta=meta,
    )
