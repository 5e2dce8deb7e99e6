"""Values of HDF5 weights that are not plain byte ranges: decoded chunks and the h5py fallback.

Contiguous data needs no reader: the executor reads its byte ranges straight
into destinations.  Chunked data is fetched a chunk at a time and decoded with
the codecs of :mod:`lazyweights.formats.filters`.  Filter pipelines without a
codec here (szip, scale-offset, plugins) go through h5py, on a handle that
belongs to the checkpoint's :class:`~lazyweights.storage.Source`: opened for
that object version, closed with it, never shared with another open.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import FormatError, LazyWeightsError, UnsupportedError
from ..formats.filters import chunk_array, decode_chunk
from ..geometry import Box, intersect
from ..manifest import Chunk, WeightSpec
from ..storage import Source, storage_failure

__all__ = ["chunk_overlaps", "read_chunk", "read_h5py_box"]


def chunk_overlaps(spec: WeightSpec, box: Box) -> Iterator[tuple[Chunk, Box, Box]]:
    """Stored chunks meeting ``box``, with the slices to copy: ``(chunk, in-chunk, in-box)``."""
    for chunk in spec.chunks:
        hit = intersect(chunk.origin, spec.chunk_shape, box)
        if hit is not None:
            yield chunk, hit[0], hit[1]


def read_chunk(source: Source, spec: WeightSpec, chunk: Chunk) -> np.ndarray:
    """One stored chunk, fetched and decoded, as an array of the chunk shape."""
    dtype = spec.np_dtype
    nbytes = math.prod(spec.chunk_shape) * dtype.itemsize
    raw = source.read(chunk.extent.offset, chunk.extent.length)
    try:
        data = decode_chunk(raw, spec.filters, chunk.filter_mask, dtype.itemsize, nbytes)
    except FormatError as exc:
        raise FormatError(f"{source.url}: weight {spec.key!r}, chunk at {chunk.origin}: {exc}") from exc
    return chunk_array(data, dtype, spec.chunk_shape)


def _open_h5py(source: Source) -> Any:
    import h5py

    target = source.path if source.is_local else source.open_file()
    try:
        return h5py.File(target, "r", locking=False)
    except OSError as exc:  # libhdf5 refuses the file's own metadata, or a read under it failed in storage
        failure = None if source.is_local else storage_failure(target)
        if failure is not None:
            raise failure from exc
        raise FormatError(f"{source.url}: h5py cannot open the file for the weights only it decodes: {exc}") from exc


def read_h5py_box(source: Source, spec: WeightSpec, box: Box) -> np.ndarray:
    """Fallback for filter pipelines without a codec here (e.g. szip, scale-offset).

    The only data path through h5py, serialised by the source's handle lock
    (h5py holds a global lock anyway).
    """
    what = f"{source.url}: weight {spec.key!r} (dataset {spec.path})"
    try:
        with source.handle("h5py", _open_h5py) as f:
            values = f[spec.path][box]
    except LazyWeightsError:
        raise
    except OSError as exc:
        if spec.filters:  # libhdf5 cannot load the filter (plugin missing)
            names = ", ".join(f"{flt.name or '?'} (id {flt.id})" for flt in spec.filters)
            raise UnsupportedError(f"{what}: cannot decode its filter pipeline [{names}]: {exc}") from exc
        raise FormatError(f"{what}: libhdf5 cannot read it: {exc}") from exc
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:  # libhdf5 refusing damaged metadata
        raise FormatError(f"{what}: libhdf5 cannot read it: {exc}") from exc
    if spec.dtype == "bfloat16":
        values = values.view(spec.np_dtype)
    return _exactly(np.asarray(values), spec, source.url)


def _exactly(values: np.ndarray, spec: WeightSpec, url: str) -> np.ndarray:
    """``values`` as the weight's dtype, refused when that changes any value (h5py may convert a damaged or
    exotic stored type to a wider type than the one the manifest declares: never narrow it silently)."""
    want = spec.np_dtype
    if values.dtype == want:
        return values
    with np.errstate(all="ignore"):
        out = values.astype(want)
        same = np.array_equal(out.astype(values.dtype), values, equal_nan=values.dtype.kind in "fc")
    if not same:
        raise UnsupportedError(
            f"{url}: weight {spec.key!r} (dataset {spec.path}): h5py converts its stored type to {values.dtype}, "
            f"whose values do not all fit the declared {want}"
        )
    return out
