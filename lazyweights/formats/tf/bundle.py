"""TensorFlow's tensor bundle: the index's entries, and the decoding of one tensor's stored bytes.

The index table (see :mod:`.sstable`) maps each checkpoint key to a
``BundleEntryProto``: dtype, shape, the data shard holding it, byte offset and
size there, and the masked CRC32C of those bytes.  The empty key holds the
``BundleHeaderProto`` (number of shards, endianness, format version).  Data
shards are named ``<prefix>.data-%05d-of-%05d``.

Numeric tensors are raw little-endian (or, per the header, big-endian) C-order
arrays.  String tensors (``DT_STRING``) are varint64 lengths, a 4-byte masked
CRC32C of the lengths (each hashed as a little-endian uint32, or uint64 when it
does not fit 32 bits: what TensorFlow's writer does), then the bytes;
the entry's CRC covers the uint64 lengths, that checksum and the bytes.  They
are decoded with :func:`decode_strings` (the object graph is one) and listed
as unsupported for array reads, as are resource, variant, quantized and packed
4-bit tensors.  Numeric tensors are read by the executor as raw byte ranges;
this module never reads them.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
from google.protobuf.message import DecodeError

from ...errors import FormatError, UnsupportedError
from . import protos
from .crc import crc32c, crc32c_extend, mask
from .slices import TensorSlice, encode_slice_key, is_slice_key
from .sstable import ReadFn, read_table
from .varint import decode_varint

__all__ = [
    "NUMPY_DTYPES",
    "BundleHeader",
    "BundleIndex",
    "TensorEntry",
    "decode_strings",
    "parse_index",
    "read_index",
    "shard_name",
]

DT = protos.DATA_TYPES
DTYPE_NAMES = {code: name for name, code in DT.items()}
NUMPY_DTYPES: dict[int, np.dtype] = {
    DT["DT_FLOAT"]: np.dtype("float32"),
    DT["DT_DOUBLE"]: np.dtype("float64"),
    DT["DT_HALF"]: np.dtype("float16"),
    DT["DT_BFLOAT16"]: np.dtype(ml_dtypes.bfloat16),
    DT["DT_FLOAT8_E5M2"]: np.dtype(ml_dtypes.float8_e5m2),
    DT["DT_FLOAT8_E4M3FN"]: np.dtype(ml_dtypes.float8_e4m3fn),
    DT["DT_INT8"]: np.dtype("int8"),
    DT["DT_INT16"]: np.dtype("int16"),
    DT["DT_INT32"]: np.dtype("int32"),
    DT["DT_INT64"]: np.dtype("int64"),
    DT["DT_UINT8"]: np.dtype("uint8"),
    DT["DT_UINT16"]: np.dtype("uint16"),
    DT["DT_UINT32"]: np.dtype("uint32"),
    DT["DT_UINT64"]: np.dtype("uint64"),
    DT["DT_BOOL"]: np.dtype("bool"),
    DT["DT_COMPLEX64"]: np.dtype("complex64"),
    DT["DT_COMPLEX128"]: np.dtype("complex128"),
}
_UNSUPPORTED_REASONS = {
    DT["DT_STRING"]: "string tensor (bytes, not a numeric array)",
    DT["DT_RESOURCE"]: "resource handle, not data",
    DT["DT_VARIANT"]: "variant tensor (serialized TensorFlow objects)",
    DT["DT_INT4"]: "packed 4-bit integers",
    DT["DT_UINT4"]: "packed 4-bit integers",
}
TENSOR_BUNDLE_VERSION = 1  # TensorFlow's kTensorBundleVersion: the newest format this reader understands


def shard_name(prefix: str, shard_id: int, num_shards: int) -> str:
    """The data file of shard ``shard_id``: ``<prefix>.data-00000-of-00002``."""
    return f"{prefix}.data-{shard_id:05d}-of-{num_shards:05d}"


@dataclass(frozen=True)
class BundleHeader:
    """The bundle's header: shard count, byte order of the data, and writer version."""

    num_shards: int
    endianness: str  # "little" or "big"
    producer: int
    min_consumer: int


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the bundle as the index describes it."""

    key: str
    dtype_code: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int  # masked, as stored
    slices: tuple[TensorSlice, ...] = ()
    unsupported: str | None = None

    @property
    def dtype_name(self) -> str:
        """The numpy name of the dtype (``"float32"``), or TensorFlow's (``"string"``) where numpy has none."""
        dtype = NUMPY_DTYPES.get(self.dtype_code)
        if dtype is not None:
            return dtype.name
        return DTYPE_NAMES.get(self.dtype_code, f"DT_<{self.dtype_code}>").removeprefix("DT_").lower()

    @property
    def dtype(self) -> np.dtype | None:
        """The numpy dtype, or None for strings and other non-array dtypes."""
        return NUMPY_DTYPES.get(self.dtype_code)

    @property
    def is_string(self) -> bool:
        return self.dtype_code == DT["DT_STRING"]

    @property
    def nbytes(self) -> int:
        """The decoded array's size in bytes (the stored size for strings)."""
        dtype = self.dtype
        return math.prod(self.shape) * dtype.itemsize if dtype is not None else self.size


@dataclass
class BundleIndex:
    """The parsed ``<prefix>.index``: header, whole-tensor entries, and the entries of tensor slices."""

    index_name: str
    prefix: str
    header: BundleHeader
    entries: dict[str, TensorEntry]
    slice_entries: dict[bytes, TensorEntry] = field(default_factory=dict)

    def shard_name(self, shard_id: int) -> str:
        return shard_name(self.prefix, shard_id, self.header.num_shards)

    def shard_names(self) -> list[str]:
        return [self.shard_name(i) for i in range(self.header.num_shards)]

    @property
    def unsupported(self) -> dict[str, str]:
        """Keys that cannot be read as numpy arrays, with the reason."""
        return {k: e.unsupported for k, e in self.entries.items() if e.unsupported}

    def slice_entry(self, entry: TensorEntry, piece: TensorSlice) -> TensorEntry:
        """The stored entry of one slice of a partitioned tensor."""
        found = self.slice_entries.get(encode_slice_key(entry.key, piece))
        if found is None:
            raise FormatError(f"{self.index_name}: slice {piece} of {entry.key!r} is not in the index")
        return found

    def stored_entries(self) -> Iterable[TensorEntry]:
        """Every entry that owns bytes in a data shard (whole tensors and slices)."""
        yield from (e for e in self.entries.values() if not e.slices)
        yield from self.slice_entries.values()

    def check_shards(self, shard_sizes: Mapping[int, int]) -> None:
        """Refuse entries whose bytes run past the end of their shard (``shard_sizes``: id → file size)."""
        for entry in self.stored_entries():
            size = shard_sizes.get(entry.shard_id)
            if size is None:
                continue
            if entry.offset + entry.size > size:
                raise FormatError(
                    f"{self.shard_name(entry.shard_id)}: tensor {entry.key!r} at bytes {entry.offset}.."
                    f"{entry.offset + entry.size} runs past the end of the {size}-byte shard"
                )


def _header(value: bytes, name: str) -> BundleHeader:
    try:
        proto = protos.BundleHeaderProto.FromString(value)
    except DecodeError as exc:
        raise FormatError(f"{name}: malformed bundle header: {exc}") from None
    if proto.num_shards <= 0:
        raise FormatError(f"{name}: bundle header declares {proto.num_shards} data shards")
    if proto.version.min_consumer > TENSOR_BUNDLE_VERSION:
        raise UnsupportedError(
            f"{name}: bundle format needs a reader of version {proto.version.min_consumer} "
            f"(this one reads version {TENSOR_BUNDLE_VERSION})"
        )
    if proto.endianness not in (0, 1):
        raise UnsupportedError(f"{name}: unknown bundle endianness {proto.endianness}")
    endianness = "little" if proto.endianness == 0 else "big"
    return BundleHeader(proto.num_shards, endianness, proto.version.producer, proto.version.min_consumer)


def _shape(proto, where: str) -> tuple[int, ...]:
    if proto.unknown_rank or any(d.size < 0 for d in proto.dim):
        raise FormatError(f"{where}: shape is not fully defined")
    return tuple(d.size for d in proto.dim)


def _slice(proto, rank: int, where: str) -> TensorSlice:
    if len(proto.extent) != rank:
        raise FormatError(f"{where}: slice of rank {len(proto.extent)} in a tensor of rank {rank}")
    starts = tuple(e.start for e in proto.extent)
    lengths = tuple(e.length if e.HasField("length") else -1 for e in proto.extent)
    return TensorSlice(starts, lengths)


def _unsupported(code: int) -> str | None:
    if code in NUMPY_DTYPES:
        return None
    if code >= 100:
        return f"reference dtype {DTYPE_NAMES.get(code - 100, code - 100)}_REF"
    return _UNSUPPORTED_REASONS.get(code, f"dtype {DTYPE_NAMES.get(code, code)} has no numpy equivalent")


def _entry(key: str, value: bytes, header: BundleHeader, name: str) -> TensorEntry:
    where = f"{name}: tensor {key!r}"
    try:
        proto = protos.BundleEntryProto.FromString(value)
    except DecodeError as exc:
        raise FormatError(f"{where}: malformed entry: {exc}") from None
    shape = _shape(proto.shape, where)
    entry = TensorEntry(
        key=key,
        dtype_code=proto.dtype,
        shape=shape,
        shard_id=proto.shard_id,
        offset=proto.offset,
        size=proto.size,
        crc32c=proto.crc32c,
        slices=tuple(_slice(s, len(shape), where) for s in proto.slices),
        unsupported=_unsupported(proto.dtype),
    )
    _check_entry(entry, header, where)
    return entry


def _check_entry(entry: TensorEntry, header: BundleHeader, where: str) -> None:
    if entry.slices:
        return  # the data lies in the slice entries
    if not 0 <= entry.shard_id < header.num_shards:
        raise FormatError(f"{where}: shard {entry.shard_id} outside the bundle's {header.num_shards} shards")
    if entry.offset < 0 or entry.size < 0:
        raise FormatError(f"{where}: negative offset or size ({entry.offset}, {entry.size})")
    dtype = entry.dtype
    if dtype is not None and entry.size != math.prod(entry.shape) * dtype.itemsize:
        raise FormatError(
            f"{where}: {entry.size} stored bytes, but shape {entry.shape} of {dtype.name} "
            f"needs {math.prod(entry.shape) * dtype.itemsize}"
        )


def parse_index(pairs: Iterable[tuple[bytes, bytes]], index_name: str, prefix: str) -> BundleIndex:
    """The bundle described by the index table's ``(key, value)`` pairs."""
    table = dict(pairs)
    if b"" not in table:
        raise FormatError(f"{index_name}: no bundle header (empty key) in the index")
    header = _header(table.pop(b""), index_name)
    entries: dict[str, TensorEntry] = {}
    slice_entries: dict[bytes, TensorEntry] = {}
    for raw_key, value in table.items():
        if is_slice_key(raw_key):
            slice_entries[raw_key] = _entry(repr(raw_key), value, header, index_name)
            continue
        try:
            key = raw_key.decode()
        except UnicodeDecodeError:
            raise FormatError(f"{index_name}: key {raw_key!r} is not UTF-8") from None
        entries[key] = _entry(key, value, header, index_name)
    return BundleIndex(index_name, prefix, header, entries, slice_entries)


def read_index(read: ReadFn, size: int, index_name: str, prefix: str) -> BundleIndex:
    """Read and parse ``<prefix>.index`` through ``read(offset, length)``."""
    return parse_index(read_table(read, size, index_name), index_name, prefix)


def check_crc(entry: TensorEntry, crc: int, where: str) -> None:
    """Compare an unmasked CRC32C computed over the stored bytes with the entry's."""
    if mask(crc) != entry.crc32c:
        raise FormatError(
            f"{where}: tensor {entry.key!r} fails its CRC32C check "
            f"(stored {entry.crc32c:#010x}, computed {mask(crc):#010x}); the data file is corrupt"
        )


def decode_strings(entry: TensorEntry, data: bytes, where: str, *, verify: bool = True) -> list[bytes]:
    """The elements (C order) of a ``DT_STRING`` tensor from its stored bytes."""
    count = math.prod(entry.shape)
    try:
        lengths, pos = _string_lengths(data, count)
    except ValueError as exc:
        raise FormatError(f"{where}: string tensor {entry.key!r}: {exc}") from None
    raw_lengths = b"".join(struct.pack("<I" if n <= 0xFFFFFFFF else "<Q", n) for n in lengths)
    crc = crc32c(raw_lengths)
    if pos + 4 > len(data):
        raise FormatError(f"{where}: string tensor {entry.key!r} ends before its length checksum")
    (stored,) = struct.unpack_from("<I", data, pos)
    if verify and stored != mask(crc):
        raise FormatError(f"{where}: string tensor {entry.key!r}: the lengths fail their CRC32C check")
    crc = crc32c_extend(crc, data[pos : pos + 4])
    pos += 4
    if pos + sum(lengths) != len(data):
        raise FormatError(f"{where}: string tensor {entry.key!r}: lengths disagree with the stored size")
    out = []
    for n in lengths:
        out.append(bytes(data[pos : pos + n]))
        pos += n
    if verify:
        check_crc(entry, crc32c_extend(crc, data[pos - sum(lengths) : pos]), where)
    return out


def _string_lengths(data: bytes, count: int) -> tuple[list[int], int]:
    lengths, pos = [], 0
    for _ in range(count):
        n, pos = decode_varint(data, pos)
        lengths.append(n)
    return lengths, pos
