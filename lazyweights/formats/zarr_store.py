"""Zarr stores as a data source: a read-only zarr store over a :class:`~lazyweights.storage.Source`.

Zarr chunks are separate objects, not byte ranges of one file.  Reading, zarr
sees lazyweights' storage through :class:`SourceStore`, a read-only
``zarr.abc.store.Store`` (zarr's public store API) whose every object read is
a :meth:`Source.member <lazyweights.storage.Source.member>` read: pinned,
retried, length-checked, and re-checked by ``Source.verify``.  Metadata
(:func:`root_group`, :func:`array`) and the chunks of arrays that are not raw
are read by zarr through it, decoded by zarr's own codecs.  This module also
says how an array's chunk objects are named and whether they are raw
(:func:`chunk_format`, recorded in the manifest); ``lazyweights.read.zarr``
reads raw chunks itself.

:func:`open_store` builds zarr's own stores, for the mirror *writer* only.

Opened groups are cached per :class:`~lazyweights.storage.Source` (weakly, so
closing a checkpoint drops them): a consolidated store is opened with one
request, and every array is then resolved from that metadata without more.
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import warnings
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FormatError, require
from ..manifest import ZarrChunks, resolve_dtype
from ..storage import Source

__all__ = [
    "EMPTY_CHUNK",
    "Decoder",
    "array",
    "checksummed",
    "chunk_format",
    "crc32c",
    "decoder",
    "fill_bytes",
    "from_stored",
    "open_store",
    "root_group",
    "shard_index",
    "source_store",
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
    """A zarr store for ``url`` to *write* a mirror: a LocalStore for local paths, an FsspecStore otherwise.

    Reads go through :func:`source_store` instead.
    """
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
        group = zarr.open_group(source_store(source), mode="r")
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


EMPTY_CHUNK = 2**64 - 1  # zarr's shard index entry of a chunk never written
_indexes: weakref.WeakKeyDictionary[Source, dict[str, Any]] = weakref.WeakKeyDictionary()
_index_lock = threading.Lock()


def shard_index(source: Source, key: str, shard: tuple[int, ...], where: str) -> tuple[Source, np.ndarray] | None:
    """The shard object ``key`` and its index (``shard + (2,)`` offsets and sizes), read once per source.

    None when the shard object does not exist (all its chunks hold the fill
    value).  The index's own CRC32C is checked.
    """
    with _index_lock:
        cache = _indexes.setdefault(source, {})
        slot = cache.setdefault(key, [threading.Lock(), None, False])
    with slot[0]:
        if not slot[2]:
            slot[1], slot[2] = _read_shard_index(source, key, shard, where), True
        return slot[1]


def _read_shard_index(source: Source, key: str, shard: tuple[int, ...], where: str) -> tuple[Source, np.ndarray] | None:
    member = source.member(key)
    if member is None:
        return None
    size = math.prod(shard) * 16
    if member.size < size + 4:
        raise FormatError(f"{where}: the shard object holds {member.size} bytes, less than its index ({size + 4})")
    raw = member.read(member.size - size - 4, size + 4)
    if crc32c(raw[:size]) != int.from_bytes(raw[size:], "little"):
        raise FormatError(f"{where}: the shard index fails its CRC32C check (the shard is corrupt)")
    return member, np.frombuffer(raw, dtype="<u8", count=size // 8).reshape(*shard, 2)


def crc32c(data: Any) -> int:
    """CRC32C with google-crc32c (hardware-accelerated; zarr's own ``crc32c`` codec uses it too)."""
    import google_crc32c

    return int(google_crc32c.value(np.frombuffer(data, dtype=np.uint8)))  # no copy; it takes no memoryview


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
    """How ``arr``'s chunk objects are named, and their byte order when they are raw (C order, no compression).

    Raw means each chunk is its elements' bytes, optionally followed by their
    CRC32C (zarr v3's ``crc32c`` codec), either as an object of its own or
    inside a shard object (zarr v3's sharding codec with such inner codecs
    and its default index: little-endian, CRC32C-checked, at the end).  None
    for arrays in another key encoding; zarr reads those.
    """
    meta = arr.metadata
    if meta.zarr_format == 2:
        if meta.order != "C":
            return None
        raw = not meta.compressor and not meta.filters
        return ZarrChunks(meta.dimension_separator or ".", "", _byteorder(arr.dtype) if raw else None)
    encoding = meta.chunk_key_encoding.to_dict()  # the metadata document's form: {"name", "configuration"}
    name, separator = encoding.get("name"), (encoding.get("configuration") or {}).get("separator")
    if name not in ("default", "v2") or separator not in ("/", "."):
        return None
    prefix = "c" if name == "default" else ""
    codecs, shard = tuple(meta.codecs), None
    if arr.shards is not None:
        sharding = codecs[0] if len(codecs) == 1 else None
        if not _standard_index(sharding):
            return None
        codecs = tuple(sharding.codecs)
        shard = tuple(s // c for s, c in zip(arr.shards, arr.chunks, strict=True))
    order, checksum = _raw_codecs(codecs, arr.dtype)
    return ZarrChunks(separator, prefix, order, checksum, shard)


def _standard_index(codec: Any) -> bool:
    """Whether ``codec`` is a sharding codec with zarr's default index (little-endian offsets, CRC32C, at the end)."""
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec

    if not isinstance(codec, ShardingCodec) or codec.index_location.value != "end":
        return False
    index = tuple(codec.index_codecs)
    return (
        len(index) == 2
        and isinstance(index[0], BytesCodec)
        and (index[0].endian is None or index[0].endian.value == "little")
        and isinstance(index[1], Crc32cCodec)
    )


def _raw_codecs(codecs: tuple[Any, ...], dtype: np.dtype) -> tuple[str | None, bool]:
    """``(byte order or None, checksummed)`` of a v3 codec chain: raw when it is ``bytes`` [+ ``crc32c``]."""
    from zarr.codecs import BytesCodec, Crc32cCodec

    checksum = bool(codecs) and isinstance(codecs[-1], Crc32cCodec)
    body = codecs[:-1] if checksum else codecs
    if len(body) != 1 or not isinstance(body[0], BytesCodec):
        return None, checksum
    endian = body[0].endian
    return ("|" if endian is None or dtype.itemsize == 1 else {"little": "<", "big": ">"}[endian.value]), checksum


@dataclass(frozen=True)
class Decoder:
    """How to decode one encoded chunk without zarr: strip and check its CRC32C, then ``codec.decode`` (numcodecs).

    The decoded bytes are the chunk's elements in C order, of ``dtype``
    (its byte order as the ``bytes`` codec or the v2 dtype says).
    """

    codec: Any  # a numcodecs codec: Zstd, Blosc or GZip
    checksum: bool
    dtype: np.dtype


_V3_DECODERS = {"zstd": "Zstd", "blosc": "Blosc", "gzip": "GZip"}


def decoder(arr: Any) -> Decoder | None:
    """A :class:`Decoder` for ``arr``'s chunks when its codec chain is one numcodecs compressor, else None.

    zarr v3: ``bytes`` + one of ``zstd``/``blosc``/``gzip`` (+ ``crc32c``),
    inside a standard sharding codec or not; zarr v2: C order, no filters,
    a ``Zstd``/``Blosc``/``GZip``/``Zlib`` compressor.  Read from zarr's
    public array metadata; anything else (filters, transposes) zarr decodes.
    """
    import numcodecs

    meta = arr.metadata
    if meta.zarr_format == 2:
        known = (numcodecs.Zstd, numcodecs.Blosc, numcodecs.GZip, numcodecs.Zlib)
        if meta.order != "C" or meta.filters or not isinstance(meta.compressor, known):
            return None
        return Decoder(meta.compressor, False, arr.dtype)
    from zarr.codecs import BytesCodec, Crc32cCodec

    codecs = tuple(meta.codecs)
    if arr.shards is not None:
        if len(codecs) != 1 or not _standard_index(codecs[0]):
            return None
        codecs = tuple(codecs[0].codecs)
    checksum = bool(codecs) and isinstance(codecs[-1], Crc32cCodec)
    body = codecs[:-1] if checksum else codecs
    if len(body) != 2 or not isinstance(body[0], BytesCodec):
        return None
    name = body[1].to_dict().get("name")
    if name not in _V3_DECODERS:
        return None
    endian = body[0].endian
    order = "<" if endian is None or endian.value == "little" else ">"
    dtype = arr.dtype if arr.dtype.itemsize == 1 else arr.dtype.newbyteorder(order)
    return Decoder(getattr(numcodecs, _V3_DECODERS[name])(), checksum, dtype)


def checksummed(arr: Any) -> bool:
    """Whether every chunk of ``arr`` carries a CRC32C that zarr or lazyweights checks on reading."""
    from zarr.codecs import Crc32cCodec, ShardingCodec

    if arr.metadata.zarr_format == 2:
        return False
    codecs = tuple(arr.metadata.codecs)
    if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
        codecs = tuple(codecs[0].codecs)
    return any(isinstance(c, Crc32cCodec) for c in codecs)


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


# -- zarr's view of a Source --------------------------------------------------------


def source_store(source: Source) -> Any:
    """A read-only zarr store whose objects are ``source``'s members (see :class:`SourceStore`)."""
    zarr_module()
    return _store_class()(source)


_store_cls: Any = None


def _store_class() -> Any:
    """:class:`SourceStore`, defined on first use (zarr is an optional dependency)."""
    global _store_cls
    if _store_cls is None:
        from zarr.abc.store import OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest

        class SourceStore(Store):
            """A read-only ``zarr.abc.store.Store`` over a store-prefix :class:`Source`: every read is a member read.

            Object reads run in worker threads (``asyncio.to_thread``): a
            member's stat and read are blocking calls on the source's
            filesystem (its own event loop for async filesystems), and zarr's
            event loop keeps serving other chunks meanwhile.  Writes raise.
            """

            supports_writes = False
            supports_deletes = False
            supports_partial_writes = False
            supports_listing = True

            def __init__(self, source: Source):
                super().__init__(read_only=True)
                self.source = source

            def __eq__(self, other: object) -> bool:
                return isinstance(other, SourceStore) and other.source is self.source

            def __hash__(self) -> int:
                return id(self.source)

            def __repr__(self) -> str:
                return f"SourceStore({self.source.url!r})"

            def with_read_only(self, read_only: bool = False) -> Any:
                if not read_only:
                    raise ValueError(f"{self.source.url}: lazyweights reads zarr stores read-only")
                return SourceStore(self.source)

            def _read(self, key: str, byte_range: Any) -> bytearray | None:
                member = self.source.member(key)
                if member is None:
                    return None
                size = member.size
                if byte_range is None:
                    start, stop = 0, size
                elif isinstance(byte_range, RangeByteRequest):
                    start, stop = byte_range.start, min(byte_range.end, size)
                elif isinstance(byte_range, OffsetByteRequest):
                    start, stop = byte_range.offset, size
                elif isinstance(byte_range, SuffixByteRequest):
                    start, stop = max(0, size - byte_range.suffix), size
                else:  # pragma: no cover - zarr's ByteRequest union is the three above
                    raise TypeError(f"unknown byte request {byte_range!r}")
                # filled in place (locally one preadv, remotely streamed): no bytes object copied once more
                buf = bytearray(max(0, stop - start))
                member.readinto(start, memoryview(buf))
                return buf

            async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
                data = await asyncio.to_thread(self._read, key, byte_range)
                return None if data is None else prototype.buffer.from_bytes(data)

            async def get_partial_values(self, prototype: Any, key_ranges: Iterable[tuple[str, Any]]) -> list[Any]:
                return list(await asyncio.gather(*(self.get(key, prototype, rng) for key, rng in key_ranges)))

            async def exists(self, key: str) -> bool:
                return await asyncio.to_thread(self.source.member, key) is not None

            async def set(self, key: str, value: Any) -> None:
                raise ValueError(f"{self.source.url}: lazyweights reads zarr stores read-only (set {key!r})")

            async def delete(self, key: str) -> None:
                raise ValueError(f"{self.source.url}: lazyweights reads zarr stores read-only (delete {key!r})")

            def _keys(self, prefix: str, recursive: bool) -> list[str]:
                src = self.source
                root = src.path.rstrip("/")
                base = f"{root}/{prefix}".rstrip("/") if prefix else root

                def listing() -> list[str]:
                    try:
                        found = src.fs.find(base) if recursive else src.fs.ls(base, detail=False)
                    except FileNotFoundError:
                        return []
                    return [str(p) for p in found]

                paths = src.with_retries(listing, f"listing of {prefix or '/'}")
                keys = []
                for path in paths:
                    path = path.rstrip("/")
                    rel = path[len(root) + 1 :] if path.startswith(root + "/") else path.rsplit("/", 1)[-1]
                    if recursive:
                        keys.append(rel)
                    else:
                        keys.append(rel.rsplit("/", 1)[-1])
                return keys

            async def list(self) -> AsyncIterator[str]:
                for key in await asyncio.to_thread(self._keys, "", True):
                    yield key

            async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
                for key in await asyncio.to_thread(self._keys, "", True):
                    if key.startswith(prefix):
                        yield key

            async def list_dir(self, prefix: str) -> AsyncIterator[str]:
                for key in await asyncio.to_thread(self._keys, prefix.rstrip("/"), False):
                    yield key

        _store_cls = SourceStore
    return _store_cls
