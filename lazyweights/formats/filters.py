"""Decoding HDF5 filter pipelines with numcodecs.

HDF5 applies a dataset's filters in order when writing and in reverse when
reading; a chunk's ``filter_mask`` has bit *i* set when filter *i* was skipped
for that chunk.  Each HDF5 filter id maps to a numcodecs codec here; a filter
with no codec makes :func:`has_codecs` false and the format falls back to h5py
for that one dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..errors import FormatError, LazyWeightsError, UnsupportedError
from ..manifest import Filter

__all__ = ["decode_chunk", "has_codecs"]

Decoder = Callable[[bytes, Filter, int, int], bytes]

DEFLATE, SHUFFLE, FLETCHER32, LZF = 1, 2, 3, 32000


def _zlib(data: bytes, f: Filter, itemsize: int, chunk_nbytes: int) -> bytes:
    from numcodecs import Zlib

    return bytes(Zlib().decode(data))


def _shuffle(data: bytes, f: Filter, itemsize: int, chunk_nbytes: int) -> bytes:
    from numcodecs import Shuffle

    elementsize = f.values[0] if f.values else itemsize
    return bytes(Shuffle(elementsize=elementsize).decode(data))


def _fletcher32(data: bytes, f: Filter, itemsize: int, chunk_nbytes: int) -> bytes:
    from numcodecs import Fletcher32

    try:
        return bytes(Fletcher32().decode(data))
    except RuntimeError as exc:
        raise FormatError(f"fletcher32 checksum mismatch: {exc}") from exc


def _lzf(data: bytes, f: Filter, itemsize: int, chunk_nbytes: int) -> bytes:
    import lzf  # python-lzf; absent -> has_codecs() is false and h5py decodes instead

    out = lzf.decompress(data, chunk_nbytes)
    if out is None:
        raise FormatError("LZF stream does not decompress to the chunk size")
    return out


def _lzf_available() -> bool:
    try:
        import lzf  # noqa: F401
    except ImportError:
        return False
    return True


_DECODERS: dict[int, tuple[Decoder, Callable[[], bool]]] = {
    DEFLATE: (_zlib, lambda: True),
    SHUFFLE: (_shuffle, lambda: True),
    FLETCHER32: (_fletcher32, lambda: True),
    LZF: (_lzf, _lzf_available),
}


def has_codecs(filters: Sequence[Filter]) -> bool:
    """True when every filter of the pipeline has a decoder in this process."""
    return all(f.id in _DECODERS and _DECODERS[f.id][1]() for f in filters)


def decode_chunk(raw: bytes, filters: Sequence[Filter], mask: int, itemsize: int, chunk_nbytes: int) -> bytes:
    """Undo ``filters`` (last applied first), skipping those masked out for this chunk."""
    data = raw
    for i in reversed(range(len(filters))):
        if mask & (1 << i):
            continue
        f = filters[i]
        entry = _DECODERS.get(f.id)
        if entry is None:
            raise UnsupportedError(f"HDF5 filter {f.name!r} (id {f.id}) has no decoder")
        try:
            data = entry[0](data, f, itemsize, chunk_nbytes)
        except LazyWeightsError:
            raise
        except Exception as exc:  # codecs raise zlib.error, RuntimeError, ValueError...: one translation, here
            raise FormatError(f"HDF5 filter {f.name!r} (id {f.id}) cannot decode the chunk: {exc}") from exc
    if len(data) != chunk_nbytes:
        raise FormatError(f"a decoded chunk has {len(data)} bytes, expected {chunk_nbytes}")
    return data


def chunk_array(data: bytes, dtype: np.dtype, chunk_shape: Sequence[int]) -> np.ndarray:
    """A decoded chunk's bytes as an array of the dataset's chunk shape."""
    return np.frombuffer(data, dtype=dtype).reshape(tuple(chunk_shape))
