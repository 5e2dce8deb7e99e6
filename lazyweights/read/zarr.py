"""Reading a zarr array's chunks as objects: raw chunks straight into the destination, compressed ones decoded here.

Each chunk of a zarr array is an object of its own (``<array>/c/0/0``, named
as :class:`~lazyweights.manifest.ZarrChunks` says), read as a member of the
store's :class:`~lazyweights.storage.Source` (:meth:`Source.member
<lazyweights.storage.Source.member>`): pinned at first use, retried, length
checked, and re-checked by ``Source.verify`` after the load, like any file.

A **raw** chunk (no codec, C order) is read like a contiguous extent of a
separate object: the elements a region needs from it are one byte range, read
straight into the destination (locally with ``os.preadv``, no staging copy)
when they land in one contiguous span of it — the usual case, since the
mirror writer splits leading axes only — or staged and copied (a column of a
chunk, a dtype cast) otherwise.  Remotely, raw chunks lying end to end in a
shard object (as zarr writes whole shards) are read together by one ranged
GET of up to a staged part (:func:`_merged_raw_reads`).

A **compressed** chunk whose codec chain is one numcodecs compressor
(``bytes`` + ``zstd``/``blosc``/``gzip`` [+ ``crc32c``], sharded or not;
zarr v2 ``Zstd``/``Blosc``/``GZip``/``Zlib``; the chain read from zarr's
public array metadata by :func:`~lazyweights.formats.zarr_store.decoder`) is
fetched through the Source — its own object, or its byte range of a shard
located through the shard index — its CRC32C stripped and checked, and
decoded by numcodecs in the calling thread (numcodecs releases the GIL while
it decompresses), with no ``out=``: numcodecs' zstd, blosc and gzip fill a
larger ``out`` without saying the chunk was short.  Measured against zarr's
own read path (``get_basic_selection`` through ``SourceStore``, its event loop
and a thread per object read), interleaved on ``bench_mirror.py``'s 1 GB zstd
mirror (2 shared cores, load ~6; 4 runs each): into pre-touched arrays 2.00-2.23 s
(median 2.19) against 1.60-2.72 s (median 2.34), with 98-122 MiB of RSS growth
against 131-210 MiB; allocating loads 2.76-3.43 s against 2.56-4.28 s.  No
faster on these cores (the decompression itself dominates), less memory, and
every byte read by the Source (pinned, length-checked) with its CRC32C checked
here.
Every other chunk (filters, transposes, F order) is read and decoded by zarr
itself, through its public array API over
:func:`~lazyweights.formats.zarr_store.source_store`, a chunk at a time.

Why raw chunks are not simply left to zarr: ``benchmarks/bench_mirror.py
--size-gb 0.3 --only into,load-mirror --repeat 3`` (warm page cache, 2 shared
cores, noisy), reading a raw mirror into pre-touched arrays: these byte ranges
took 0.06-0.09 s, zarr's own ``arr.get_basic_selection(..., out=NDBuffer)`` per
array 0.16-0.18 s with 64-88 MiB of RSS growth (against 0): 2-2.5x slower,
since zarr reads each chunk object whole into a buffer of its own and copies
it into ``out``.

**Checksums and shards** (zarr v3 mirrors by default).  A raw chunk written
with zarr's ``crc32c`` codec is followed by its CRC32C: lazyweights reads the
chunk whole and checks it before its values are used — locally straight into
the destination and checked there (one pass of google-crc32c over memory just
written), remotely into a staging buffer (the chunk plus its 4 bytes in one
ranged GET) — so a corrupt chunk is a :class:`~lazyweights.errors.FormatError`
naming the weight and the chunk, never wrong values.  A region needing part
of a checksummed chunk reads the whole chunk.  Chunks inside shard objects
(zarr's sharding codec) are located through the shard's index, read once per
shard and source (:func:`shard_index`; its own CRC32C checked), then read by
byte range from the one shard object, which is stat-ed (pinned) once.
The checksum's cost, measured (1 GB mirror of ``bench_mirror.py``'s source,
warm cache, into pre-touched arrays, best of 3 on 2 shared cores, load ~8):
0.154 s without CRC32C, 0.226-0.228 s with it (sharded or not), the h5 source
0.123 s: ~0.07 s per GB, google-crc32c's pass over the destination.  Reading
and checking 1 MiB slices while still in the CPU cache measured no better
(0.22-0.26 s), so the chunk is read whole, then checked.

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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FormatError, StorageError
from ..formats.zarr_store import EMPTY_CHUNK, Decoder, array, crc32c, decoder, from_stored, shard_index
from ..geometry import Box, box_runs, box_shape, byte_view, grid_pieces
from ..manifest import WeightSpec
from ..storage import Source
from .constant import fill_value

__all__ = ["ChunkRead", "chunk_reads", "read_box"]

Index = Box

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


def chunk_reads(
    source: Source, spec: WeightSpec, dest: np.ndarray, region: Index, merge_bytes: int = 0
) -> Iterator[ChunkRead]:
    """One :class:`ChunkRead` per chunk of ``spec`` meeting ``region``, filling ``dest`` (the region's shape).

    ``merge_bytes``: remote raw chunks lying end to end in one shard object
    are read together by one ranged GET of up to that many bytes (0: none).
    """
    raw = spec.zarr is not None and spec.zarr.byteorder is not None
    if raw and spec.zarr.shard is not None and not source.is_local and merge_bytes:
        yield from _merged_raw_reads(source, spec, dest, list(_pieces(spec, region)), merge_bytes)
        return
    dec = None if raw or spec.zarr is None else decoder(array(source, spec.path))
    for piece in _pieces(spec, region):
        if raw:
            yield _raw_read(source, spec, dest, piece)
        elif dec is not None:
            yield _decoded_read(source, spec, dest, piece, dec)
        else:
            yield _zarr_read(source, spec, dest, piece)


def read_box(source: Source, spec: WeightSpec, box: Index) -> np.ndarray:
    """The values of ``spec`` inside ``box`` (unit-step slices), in the spec's dtype.

    Local chunks are read one after another (each a ``preadv``); remote ones
    concurrently.
    """
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
    """Read the byte range of a raw chunk the piece needs: into ``dest`` directly when it is one span there.

    A checksummed chunk is read whole (its CRC32C covers all of it): straight
    into ``dest`` when the piece is the whole chunk and the store is local,
    else into a staging buffer, and verified before any of it is used.
    """
    chunk_shape = spec.chunk_shape or ()
    dtype = _raw_dtype(spec)
    whole = math.prod(chunk_shape) * dtype.itemsize
    s0, s1, runs = _flat_span(chunk_shape, piece.src)
    start, length = s0 * dtype.itemsize, (s1 - s0) * dtype.itemsize
    d0, d1, dest_runs = _flat_span(dest.shape, piece.dst)
    one_span = runs == dest_runs == 1 and d1 - d0 == s1 - s0 and _writable_as(dest, dtype)
    checksum = spec.zarr is not None and spec.zarr.checksum
    direct = one_span and (not checksum or (length == whole and source.is_local))
    nbytes = _nbytes(spec, piece.dst)
    if direct:

        def run() -> None:
            into = byte_view(dest.reshape(-1)[d0:d1])
            if _fetch(source, spec, piece.index, start, length, whole, into) is None:
                dest[piece.dst] = fill_value(spec)

        return ChunkRead(0 if source.is_local else length, length, nbytes, run)
    first, fetched = (0, whole) if checksum else (start, length)

    def run_staged() -> None:
        data = _fetch(source, spec, piece.index, first, fetched, whole, None)
        if data is None:
            dest[piece.dst] = fill_value(spec)
            return
        _place(spec, dest, piece, data, first)

    return ChunkRead(fetched + 4 * checksum, fetched, nbytes, run_staged)


def _place(spec: WeightSpec, dest: np.ndarray, piece: _Piece, data: Any, data_start: int) -> None:
    """Copy the piece's elements out of ``data``, a raw chunk's bytes from byte ``data_start`` on."""
    chunk_shape = spec.chunk_shape or ()
    dtype = _raw_dtype(spec)
    s0, s1, _ = _flat_span(chunk_shape, piece.src)
    # the piece's elements, at the chunk's strides from the first
    span = np.frombuffer(data, dtype=dtype, offset=s0 * dtype.itemsize - data_start, count=s1 - s0)
    strides = _c_strides(chunk_shape, dtype.itemsize)
    dest[piece.dst] = np.lib.stride_tricks.as_strided(span, box_shape(piece.src), strides, writeable=False)


def _merged_raw_reads(
    source: Source, spec: WeightSpec, dest: np.ndarray, pieces: list[_Piece], merge_bytes: int
) -> list[ChunkRead]:
    """Remote raw chunks of a shard: neighbours in the shard object (as zarr writes a whole shard) read by one GET.

    Each chunk's place comes from the shard's index (read once, cached);
    chunks end to end there, up to ``merge_bytes`` together, become one
    ranged read of the shard object, each chunk's CRC32C checked before its
    values are used.  Chunks never written, or alone, read as before.
    """
    whole = math.prod(spec.chunk_shape or ()) * _raw_dtype(spec).itemsize
    stored = whole + 4 * spec.zarr.checksum
    reads: list[ChunkRead] = []
    run: list[tuple[_Piece, int]] = []
    member: Source | None = None

    def flush() -> None:
        if len(run) == 1:
            reads.append(_raw_read(source, spec, dest, run[0][0]))
        elif run:
            reads.append(_merged_read(source, spec, dest, member, list(run), stored, whole))
        run.clear()

    for piece in pieces:
        found = _locate(source, spec, piece.index, whole)
        if found is None:
            flush()
            reads.append(_raw_read(source, spec, dest, piece))  # the fill value
            continue
        if run and (found[0] is not member or found[1] != run[-1][1] + stored or (len(run) + 1) * stored > merge_bytes):
            flush()
        member = found[0]
        run.append((piece, found[1]))
    flush()
    return reads


def _merged_read(
    source: Source, spec: WeightSpec, dest: np.ndarray, member: Source, run: list[tuple[_Piece, int]], stored: int,
    whole: int,
) -> ChunkRead:  # fmt: skip
    """One ranged read of chunks lying end to end in ``member``; each checked, then copied out."""
    first, total = run[0][1], len(run) * stored

    def go() -> None:
        blob = memoryview(member.read(first, total))
        for i, (piece, _) in enumerate(run):
            data = blob[i * stored : i * stored + whole]
            if spec.zarr.checksum:
                _check_crc(source, spec, piece.index, data, bytes(blob[i * stored + whole : (i + 1) * stored]))
            _place(spec, dest, piece, data, 0)

    return ChunkRead(total, total, sum(_nbytes(spec, p.dst) for p, _ in run), go)


def _writable_as(dest: np.ndarray, dtype: np.dtype) -> bool:
    return dest.dtype == dtype and dest.flags.c_contiguous and dest.flags.writeable


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    return tuple(math.prod(shape[i + 1 :]) * itemsize for i in range(len(shape)))


# -- compressed chunks, decoded here -------------------------------------------------


def _decoded_read(source: Source, spec: WeightSpec, dest: np.ndarray, piece: _Piece, dec: Decoder) -> ChunkRead:
    """A compressed chunk: fetched through the Source, its CRC32C checked, decoded by numcodecs in this thread.

    The decoded chunk must be exactly the chunk's size (a short one is an
    error, not stale bytes); a whole chunk landing in one contiguous span of
    the destination is copied there as bytes, any other piece element-wise.
    """
    chunk_shape = spec.chunk_shape or ()
    chunk_nbytes = math.prod(chunk_shape) * dec.dtype.itemsize
    nbytes = _nbytes(spec, piece.dst)
    s0, s1, runs = _flat_span(chunk_shape, piece.src)
    d0, d1, dest_runs = _flat_span(dest.shape, piece.dst)
    whole = s0 == 0 and s1 * dec.dtype.itemsize == chunk_nbytes
    direct = whole and runs == dest_runs == 1 and d1 - d0 == s1 and _writable_as(dest, dec.dtype)

    def run() -> None:
        encoded = _encoded(source, spec, piece.index)
        if encoded is None:
            dest[piece.dst] = fill_value(spec)
            return
        body = memoryview(encoded)
        where = _where(source, spec, piece.index)
        if dec.checksum:
            if body.nbytes < 4:
                raise FormatError(f"{where}: {body.nbytes} bytes, too short for a CRC32C")
            _check_crc(source, spec, piece.index, body[:-4], bytes(body[-4:]))
            body = body[:-4]
        try:  # no ``out=``: numcodecs' zstd, blosc and gzip fill a larger ``out`` silently, hiding a short chunk
            decoded = np.frombuffer(dec.codec.decode(body), np.uint8)
        except Exception as exc:  # codecs raise RuntimeError, ValueError, zlib.error...: translated here, once
            raise FormatError(f"{where}: cannot decode: {type(exc).__name__}: {exc}") from exc
        if decoded.nbytes != chunk_nbytes:
            raise FormatError(f"{where}: decodes to {decoded.nbytes} bytes, not {chunk_nbytes}")
        if direct:
            byte_view(dest.reshape(-1)[d0:d1])[:] = decoded.data
        else:
            values = decoded.view(dec.dtype).reshape(chunk_shape)[piece.src]
            dest[piece.dst] = values.view(spec.np_dtype) if spec.dtype == "bfloat16" else values

    # the encoded object (at most about the chunk) and the decoded chunk, while it is copied into place
    return ChunkRead(2 * chunk_nbytes, chunk_nbytes, nbytes, run)


def _encoded(source: Source, spec: WeightSpec, index: tuple[int, ...]) -> bytearray | None:
    """The stored bytes of the encoded chunk at ``index``: its object, or its range of a shard (None: unwritten)."""
    if spec.zarr.shard is None:
        member = source.member(f"{spec.path}/{spec.zarr.key(index)}")
        return None if member is None else _read_whole(member, 0, member.size)
    found = _shard_entry(source, spec, index)
    if found is None:
        return None
    member, offset, nbytes = found
    if offset + nbytes > member.size:
        raise FormatError(
            f"{_where(source, spec, index)}: the shard index gives {nbytes} bytes at offset {offset} of a "
            f"{member.size}-byte shard object"
        )
    return _read_whole(member, offset, nbytes)


def _read_whole(member: Source, offset: int, nbytes: int) -> bytearray:
    """``nbytes`` at ``offset`` of ``member`` into a buffer of their own (locally one ``preadv``, no second copy)."""
    buf = bytearray(nbytes)
    member.readinto(offset, memoryview(buf))
    return buf


# -- chunks zarr decodes ------------------------------------------------------------


def _zarr_read(source: Source, spec: WeightSpec, dest: np.ndarray, piece: _Piece) -> ChunkRead:
    """A chunk lazyweights does not read raw: zarr fetches it (through the Source) and decodes it into place."""
    nbytes = _nbytes(spec, piece.dst)
    chunk_nbytes = math.prod(spec.chunk_shape or ()) * spec.np_dtype.itemsize or nbytes

    def run() -> None:
        try:
            _zarr_into(source, spec, piece.part, dest[piece.dst] if piece.dst else dest[...])
        except StorageError:
            raise
        except Exception as exc:  # codecs raise RuntimeError, ValueError, zlib.error...: translated here, once
            where = _where(source, spec, piece.index) if spec.zarr is not None else _where_box(source, spec, piece)
            raise FormatError(f"{where}: cannot decode: {type(exc).__name__}: {exc}") from exc

    # zarr holds the encoded object and the decoded chunk while it copies the piece out
    return ChunkRead(2 * chunk_nbytes, chunk_nbytes, nbytes, run)


def _zarr_into(source: Source, spec: WeightSpec, box: Index, into: np.ndarray) -> None:
    """Have zarr read ``box`` of ``spec``'s array into ``into`` (a view of the destination, the box's shape).

    With zarr's public ``get_basic_selection(out=...)`` when the stored dtype
    is the destination's (bfloat16 as its uint16 bits); else through a copy.
    """
    from zarr.buffer.cpu import NDBuffer

    arr = array(source, spec.path)
    target = into.view(np.uint16) if spec.dtype == "bfloat16" else into
    if box and target.dtype == arr.dtype:
        arr.get_basic_selection(box, out=NDBuffer.from_numpy_array(target))
        return
    into[...] = from_stored(np.asarray(arr[box] if box else arr[...]), spec.dtype)


# -- chunk objects ------------------------------------------------------------------


def _where(source: Source, spec: WeightSpec, index: tuple[int, ...]) -> str:
    fmt = spec.zarr
    if fmt.shard is None:
        return f"{source.url}: weight {spec.key!r}, chunk {fmt.key(index)!r} of array {spec.path!r}"
    shard = fmt.key(tuple(i // n for i, n in zip(index, fmt.shard, strict=True)))
    return f"{source.url}: weight {spec.key!r}, chunk {index} in shard {shard!r} of array {spec.path!r}"


def _where_box(source: Source, spec: WeightSpec, piece: _Piece) -> str:
    return f"{source.url}: weight {spec.key!r}, chunk {piece.index} of array {spec.path!r}"


def _fetch(
    source: Source,
    spec: WeightSpec,
    index: tuple[int, ...],
    start: int,
    length: int,
    whole: int,
    into: memoryview | None,
) -> Any:
    """Bytes ``[start, start + length)`` of a raw chunk; None if the chunk was never written.

    The chunk holds ``whole`` bytes (plus its CRC32C when checksummed; else a
    :class:`FormatError`).  With ``into``, the bytes land there (locally with
    no intermediate copy) and ``into`` is returned.  A checksummed chunk is
    fetched whole (``start == 0``, ``length == whole``) and verified.
    """
    found = _locate(source, spec, index, whole)
    if found is None:
        return None  # a chunk never written: the fill value
    member, base = found
    if not spec.zarr.checksum:
        if into is None:
            return member.read(base + start, length)
        member.readinto(base + start, into)
        return into
    if into is not None:  # local: the chunk straight into its place, its checksum beside it
        crc = bytearray(4)
        member.readinto_many([(base, into), (base + whole, memoryview(crc))])
        _check_crc(source, spec, index, into, bytes(crc))
        return into
    buf = bytearray(whole + 4)
    member.readinto(base, memoryview(buf))
    data = memoryview(buf)[:whole]
    _check_crc(source, spec, index, data, bytes(buf[whole:]))
    return data


def _check_crc(source: Source, spec: WeightSpec, index: tuple[int, ...], data: memoryview, stored: bytes) -> None:
    """Raise :class:`FormatError` naming the weight and chunk unless ``stored`` is the CRC32C of ``data``."""
    computed = crc32c(data)
    if computed != int.from_bytes(stored, "little"):
        raise FormatError(
            f"{_where(source, spec, index)}: checksum mismatch: the chunk's stored CRC32C is "
            f"{int.from_bytes(stored, 'little'):08x}, its bytes give {computed:08x} (the chunk is corrupt)"
        )


def _shard_entry(source: Source, spec: WeightSpec, index: tuple[int, ...]) -> tuple[Source, int, int] | None:
    """``(shard object, offset, nbytes)`` of the chunk at grid ``index`` from its shard's index; None: never written."""
    fmt = spec.zarr
    shard = tuple(i // n for i, n in zip(index, fmt.shard, strict=True))
    key = f"{spec.path}/{fmt.key(shard)}"
    table = shard_index(source, key, fmt.shard, f"{source.url}: weight {spec.key!r}, shard {fmt.key(shard)!r}")
    if table is None:
        return None
    member, entries = table
    offset, nbytes = (int(v) for v in entries[tuple(i % n for i, n in zip(index, fmt.shard, strict=True))])
    if offset == EMPTY_CHUNK and nbytes == EMPTY_CHUNK:
        return None
    return member, offset, nbytes


def _locate(source: Source, spec: WeightSpec, index: tuple[int, ...], whole: int) -> tuple[Source, int] | None:
    """``(object, offset)`` of the raw chunk at grid ``index``: its own object, or its place in a shard."""
    fmt = spec.zarr
    stored = whole + 4 * fmt.checksum
    if fmt.shard is None:
        member = source.member(f"{spec.path}/{fmt.key(index)}")
        if member is None:
            return None
        if member.size != stored:
            raise _wrong_size(_where(source, spec, index), member.size, stored)
        return member, 0
    found = _shard_entry(source, spec, index)
    if found is None:
        return None
    member, offset, nbytes = found
    if nbytes != stored or offset + nbytes > member.size:
        raise FormatError(
            f"{_where(source, spec, index)}: the shard index gives {nbytes} bytes at offset {offset} of a "
            f"{member.size}-byte shard object; an uncompressed chunk holds {stored}"
        )
    return member, offset


def _wrong_size(where: str, got: int, wanted: int) -> FormatError:
    return FormatError(f"{where}: the chunk object holds {got} bytes; an uncompressed chunk holds {wanted}")
