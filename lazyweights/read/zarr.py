"""Reading a zarr array's chunks as objects: raw chunks straight into the destination, others decoded once.

Each chunk of a zarr array is an object of its own (``<array>/c/0/0``, named
as :class:`~lazyweights.manifest.ZarrChunks` says).  A **raw** chunk (no
codec, C order) is read like a contiguous extent of a separate object: the
elements a region needs from it are one byte range, read with ``os.preadv``
straight into the destination when they land in one contiguous span of it —
the usual case, since the mirror writer splits leading axes only — or staged
and copied (a column of a chunk, a dtype cast) otherwise.  Remote chunks are
fetched with fsspec's ``cat_file`` on the chunk's key, under the source's
retry policy (transient failures retried, a missing chunk is the fill value).  Other chunks are
fetched whole the same way and decoded in the calling thread by the array's
own codecs (:func:`~lazyweights.chunk_decoder`), with no event loop
per chunk.  Arrays only zarr can read (sharded, F order, codecs without a
synchronous path) are read through zarr, a chunk at a time.

A chunk whose object does not exist holds the fill value (zarr's rule).  A raw
chunk whose object has the wrong size, or an encoded one that does not
decode, is a :class:`~lazyweights.errors.FormatError` naming the weight and
the chunk.

:func:`chunk_reads` plans one :class:`ChunkRead` per chunk meeting a region
(the streaming executor runs them under its byte budget); :func:`read_box`
runs them for one block (``reader.read``).
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FormatError, StorageError
from ..formats.zarr_store import array, from_stored
from ..geometry import Box, box_runs, box_shape, byte_view, grid_pieces
from ..manifest import WeightSpec
from ..storage import Source, pread_into
from .constant import fill_value

__all__ = ["ChunkRead", "chunk_reads", "read_box"]

Index = Box
Decoder = Callable[[Any], np.ndarray]  # an encoded chunk object's bytes -> the chunk's values (chunk shape)

_decoders: weakref.WeakKeyDictionary[Source, dict[str, Decoder | None]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()

# read_box over a remote store: chunk objects fetched at once (zarr's default is 10)
REMOTE_CONCURRENCY = 16


@dataclass(frozen=True)
class ChunkRead:
    """One chunk's share of a destination; ``run()`` fills it.

    ``cost`` is the transient memory it holds while running (0 for a local
    read straight into the destination), ``stored`` the bytes it fetches
    (for encoded chunks, the decoded size: the stored size is known only once
    fetched), ``nbytes`` the destination bytes it fills.
    """

    cost: int
    stored: int
    nbytes: int
    run: Callable[[], None]


@dataclass(frozen=True)
class _Piece:
    """The part of one chunk a region needs: grid index, box in the chunk, box in the destination, box in the array."""

    index: tuple[int, ...]
    src: Index
    dst: Index
    part: Index


def _pieces(spec: WeightSpec, region: Index) -> Iterator[_Piece]:
    """The chunks meeting ``region`` (C order), with where their elements come from and go."""
    if not spec.shape:
        yield _Piece((), (), (), ())
        return
    grid = tuple(max(1, c) for c in (spec.chunk_shape or spec.shape))
    for index, src, dst in grid_pieces(grid, region):
        part = tuple(slice(s.start + i * c, s.stop + i * c) for s, i, c in zip(src, index, grid, strict=True))
        yield _Piece(index, src, dst, part)


def _nbytes(spec: WeightSpec, box: Index) -> int:
    return math.prod(box_shape(box)) * spec.np_dtype.itemsize


def chunk_reads(source: Source, spec: WeightSpec, dest: np.ndarray, region: Index) -> Iterator[ChunkRead]:
    """One :class:`ChunkRead` per chunk of ``spec`` meeting ``region``, filling ``dest`` (the region's shape)."""
    fmt = spec.zarr
    decoder = None
    if fmt is not None and fmt.byteorder is None:
        decoder = chunk_decoder(source, spec)
    for piece in _pieces(spec, region):
        if fmt is not None and fmt.byteorder is not None:
            yield _raw_read(source, spec, dest, piece)
        elif decoder is not None:
            yield _decoded_read(source, spec, dest, piece, decoder)
        else:
            yield _zarr_read(source, spec, dest, piece)


def read_box(source: Source, spec: WeightSpec, box: Index) -> np.ndarray:
    """The values of ``spec`` inside ``box`` (unit-step slices), in the spec's dtype.

    Local chunks are read one after another (each a ``preadv``); remote ones
    concurrently.
    """
    if spec.zarr is None:
        return _zarr_box(source, spec, box)
    out = np.empty(box_shape(box), dtype=spec.np_dtype)
    reads = list(chunk_reads(source, spec, out, box))
    if source.is_local or len(reads) == 1:
        for read in reads:
            read.run()
    else:
        with ThreadPoolExecutor(min(REMOTE_CONCURRENCY, len(reads)), thread_name_prefix="lazyweights-zarr") as pool:
            for _ in pool.map(lambda read: read.run(), reads):
                pass
    return out


# -- raw chunks ---------------------------------------------------------------------


def _raw_dtype(spec: WeightSpec) -> np.dtype:
    """The dtype of a raw chunk's bytes: the spec's, in the chunk's byte order (bfloat16 is stored little-endian)."""
    dtype = spec.np_dtype
    order = spec.zarr.byteorder if spec.zarr is not None else "|"
    if order == "|" or dtype.itemsize == 1 or spec.dtype == "bfloat16":
        return dtype
    return dtype.newbyteorder(order)


def _flat_span(shape: tuple[int, ...], box: Index) -> tuple[int, int, int]:
    """``(first, last, runs)``: the C-order elements ``box`` spans in an array of ``shape``, and its run count."""
    starts, run = box_runs(shape, box)
    return int(starts[0]), int(starts[-1]) + run, len(starts)


def _raw_read(source: Source, spec: WeightSpec, dest: np.ndarray, piece: _Piece) -> ChunkRead:
    """Read the byte range of a raw chunk the piece needs: into ``dest`` directly when it is one span there."""
    chunk_shape = spec.chunk_shape or ()
    dtype = _raw_dtype(spec)
    whole = math.prod(chunk_shape) * dtype.itemsize
    s0, s1, runs = _flat_span(chunk_shape, piece.src)
    start, length = s0 * dtype.itemsize, (s1 - s0) * dtype.itemsize
    d0, d1, dest_runs = _flat_span(dest.shape, piece.dst)
    direct = runs == dest_runs == 1 and d1 - d0 == s1 - s0 and _writable_as(dest, dtype)
    nbytes = _nbytes(spec, piece.dst)
    if direct:

        def run() -> None:
            into = byte_view(dest.reshape(-1)[d0:d1])
            if _fetch(source, spec, piece.index, start, length, whole, into) is None:
                dest[piece.dst] = fill_value(spec)

        return ChunkRead(0 if source.is_local else length, length, nbytes, run)
    strides = _c_strides(chunk_shape, dtype.itemsize)

    def run_staged() -> None:
        data = _fetch(source, spec, piece.index, start, length, whole, None)
        if data is None:
            dest[piece.dst] = fill_value(spec)
            return
        span = np.frombuffer(data, dtype=dtype)  # the piece's elements, at the chunk's strides from the first
        dest[piece.dst] = np.lib.stride_tricks.as_strided(span, box_shape(piece.src), strides, writeable=False)

    return ChunkRead(length, length, nbytes, run_staged)


def _writable_as(dest: np.ndarray, dtype: np.dtype) -> bool:
    return dest.dtype == dtype and dest.flags.c_contiguous and dest.flags.writeable


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    return tuple(math.prod(shape[i + 1 :]) * itemsize for i in range(len(shape)))


# -- encoded chunks and zarr's own reads ------------------------------------------------


def _decoded_read(
    source: Source, spec: WeightSpec, dest: np.ndarray, piece: _Piece, decoder: Decoder
) -> ChunkRead:
    """Fetch an encoded chunk whole, decode it in this thread, copy the piece into place."""
    chunk_nbytes = math.prod(spec.chunk_shape or ()) * spec.np_dtype.itemsize

    def run() -> None:
        data = _fetch(source, spec, piece.index, 0, None, None, None)
        if data is None:
            dest[piece.dst] = fill_value(spec)
            return
        try:
            values = decoder(data)
        except Exception as exc:  # codecs raise RuntimeError, ValueError, zlib.error...: translated here, once
            where = _where(source, spec, piece.index)
            raise FormatError(f"{where}: cannot decode: {type(exc).__name__}: {exc}") from exc
        dest[piece.dst] = from_stored(values, spec.dtype)[piece.src]

    return ChunkRead(2 * chunk_nbytes, chunk_nbytes, _nbytes(spec, piece.dst), run)


def _zarr_read(source: Source, spec: WeightSpec, dest: np.ndarray, piece: _Piece) -> ChunkRead:
    """A chunk of an array only zarr can read: zarr fetches and decodes it, then it is copied into place."""

    def run() -> None:
        dest[piece.dst] = _zarr_box(source, spec, piece.part)

    nbytes = _nbytes(spec, piece.dst)
    return ChunkRead(2 * nbytes, nbytes, nbytes, run)


# -- chunk objects ------------------------------------------------------------------


def _object_path(source: Source, spec: WeightSpec, index: tuple[int, ...]) -> str:
    return f"{source.path.rstrip('/')}/{spec.path}/{spec.zarr.key(index)}"


def _where(source: Source, spec: WeightSpec, index: tuple[int, ...]) -> str:
    return f"{source.url}: weight {spec.key!r}, chunk {spec.zarr.key(index)!r} of array {spec.path!r}"


def _fetch(
    source: Source,
    spec: WeightSpec,
    index: tuple[int, ...],
    start: int,
    length: int | None,
    whole: int | None,
    into: memoryview | None,
) -> Any:
    """Bytes ``[start, start + length)`` of a chunk's object (``length`` None: all of it); None if it does not exist.

    ``whole`` is the size the object must have (raw chunks); a different
    size is a :class:`FormatError`.  With ``into``, the bytes land there
    (locally with no intermediate copy) and ``into`` is returned.
    """
    path = _object_path(source, spec, index)
    if source.is_local:
        try:
            return _pread(path, start, length, whole, into, lambda: _where(source, spec, index))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"{_where(source, spec, index)}: read failed: {exc}") from exc

    def cat() -> bytes | None:
        try:
            if length is not None and (start, length) != (0, whole):
                return source.fs.cat_file(path, start=start, end=start + length)
            return source.fs.cat_file(path)
        except FileNotFoundError:
            return None  # a chunk never written: the fill value

    data = source.with_retries(cat, f"read of chunk {_where(source, spec, index)}")
    if data is None:
        return None
    if whole is not None and (start, length) == (0, whole) and len(data) != whole:
        raise _wrong_size(_where(source, spec, index), len(data), whole)
    if length is not None and len(data) != length:
        raise FormatError(
            f"{_where(source, spec, index)}: asked for {length} bytes at offset {start}, got {len(data)} "
            f"(a raw chunk has {whole})"
        )
    if into is None:
        return data
    into[:] = data
    return into


def _pread(
    path: str, start: int, length: int | None, whole: int | None, into: memoryview | None, where: Callable[[], str]
) -> Any:
    """A local chunk object's bytes, with ``preadv`` (into ``into`` when given); checks its size first."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        size = os.fstat(fd).st_size
        if whole is not None and size != whole:
            raise _wrong_size(where(), size, whole)
        if length is None:
            length = size - start
        buf = into if into is not None else memoryview(np.empty(length, dtype=np.uint8))
        got = pread_into(fd, start, buf)
    finally:
        os.close(fd)
    if got != length:
        raise StorageError(f"{where()}: asked for {length} bytes at offset {start}, got {got} (the file changed?)")
    return buf


def _wrong_size(where: str, got: int, wanted: int) -> FormatError:
    return FormatError(f"{where}: the chunk object holds {got} bytes; an uncompressed chunk holds {wanted}")


def _zarr_box(source: Source, spec: WeightSpec, box: Index) -> np.ndarray:
    """The values of ``spec`` inside ``box`` (unit-step slices), in the spec's dtype, read by zarr."""
    values = np.asarray(array(source, spec.path)[box] if box else array(source, spec.path)[...])
    return from_stored(values, spec.dtype)


def chunk_decoder(source: Source, spec: WeightSpec) -> Decoder | None:
    """A synchronous decoder for ``spec``'s encoded chunks, built from the array's own codecs (cached).

    Runs in the calling thread: no event loop per chunk.  Zarr v2 arrays
    decode with their numcodecs compressor and filters; v3 arrays with their
    codec chain when every codec has a synchronous path.  None otherwise
    (then zarr reads the chunks).
    """
    with _lock:
        cache = _decoders.setdefault(source, {})
        if spec.path in cache:
            return cache[spec.path]
    arr = array(source, spec.path)
    decoder = _v2_decoder(arr) if arr.metadata.zarr_format == 2 else _v3_decoder(arr)
    with _lock:
        cache[spec.path] = decoder
    return decoder


def _v2_decoder(arr: Any) -> Decoder | None:
    from numcodecs.compat import ensure_ndarray

    meta = arr.metadata
    if meta.order != "C":
        return None
    dtype, shape = np.dtype(meta.dtype.to_native_dtype()), tuple(arr.chunks)
    if dtype.hasobject:
        return None
    steps = [f.decode for f in reversed(meta.filters or ())]
    if meta.compressor:
        steps.insert(0, meta.compressor.decode)

    def decode(data: Any) -> np.ndarray:
        for step in steps:
            data = step(data)
        return ensure_ndarray(data).view(dtype).reshape(shape)

    return decode


def _v3_decoder(arr: Any) -> Decoder | None:
    from zarr.abc.codec import SupportsSyncCodec
    from zarr.core.array_spec import ArrayConfig
    from zarr.core.buffer import default_buffer_prototype

    meta = arr.metadata
    if not all(isinstance(codec, SupportsSyncCodec) for codec in meta.codecs):
        return None
    prototype = default_buffer_prototype()
    chunk_spec = meta.get_chunk_spec((0,) * arr.ndim, ArrayConfig.from_dict({}), prototype)
    stages = []  # each codec with the spec of what it decodes into, last codec first
    for codec in meta.codecs:
        stages.insert(0, (codec, chunk_spec))
        chunk_spec = codec.resolve_metadata(chunk_spec)

    def decode(data: Any) -> np.ndarray:
        value = prototype.buffer.from_bytes(data)
        for codec, spec in stages:
            value = codec._decode_sync(value, spec)  # zarr's SupportsSyncCodec protocol
        return value.as_numpy_array()

    return decode
