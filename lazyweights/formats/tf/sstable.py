"""TensorFlow's checkpoint index: a LevelDB-format sorted string table, read over a byte-fetch callback.

Layout (``tensorflow/core/lib/io/table*``, LevelDB's ``table_format.md``)::

    [data block 0][trailer] ... [data block n][trailer] [metaindex block][trailer] [index block][trailer] [footer]

* footer, the last 48 bytes: metaindex and index ``BlockHandle``s (two varint64
  each: offset, size), zero padding to 40 bytes, then the magic
  ``0xdb4775248b80fb57`` as a little-endian uint64;
* every block is followed by a 5-byte trailer: a compression type byte
  (0 none, 1 snappy) and the masked CRC32C of the block's stored bytes plus that
  type byte; every CRC is verified here;
* a block holds prefix-compressed entries (varint32 shared, non-shared and
  value lengths, the key suffix, the value) followed by uint32 restart offsets
  and their count;
* the index block maps each data block's last key (or a separator) to its handle.

The reader works on ``read(offset, length) -> bytes`` plus the file size so the
same code serves local files and object stores.  A TensorFlow index holds one
small protobuf per tensor, so it is tiny in practice: files up to
``whole_file_limit`` bytes are fetched in a single read, larger ones with one
read for the footer, one for the index block and one per data block.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ...errors import FormatError, TruncatedFileError, UnsupportedError
from .crc import crc32c, mask
from .varint import decode_varint

__all__ = [
    "FOOTER_SIZE",
    "MAGIC",
    "BlockHandle",
    "ReadFn",
    "iter_block",
    "read_table",
]

ReadFn = Callable[[int, int], bytes]

MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
TRAILER_SIZE = 5
NO_COMPRESSION = 0
SNAPPY_COMPRESSION = 1
WHOLE_FILE_LIMIT = 16 << 20


@dataclass(frozen=True)
class BlockHandle:
    """Where a block lies in the table file (its stored size, trailer excluded)."""

    offset: int
    size: int

    @classmethod
    def decode(cls, buf: bytes | memoryview, pos: int = 0) -> tuple[BlockHandle, int]:
        offset, pos = decode_varint(buf, pos)
        size, pos = decode_varint(buf, pos)
        return cls(offset, size), pos


class _Table:
    """One table file: a read callback, its size, its name for messages, and a whole-file cache."""

    def __init__(self, read: ReadFn, size: int, name: str, whole_file_limit: int):
        self.read_fn = read
        self.size = size
        self.name = name
        self.data: bytes | None = None
        if size <= whole_file_limit:
            self.data = self._fetch(0, size)

    def _fetch(self, offset: int, length: int) -> bytes:
        data = self.read_fn(offset, length)
        if len(data) != length:
            raise TruncatedFileError(f"{self.name}: asked for {length} bytes at {offset}, got {len(data)}")
        return data

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise TruncatedFileError(
                f"{self.name}: bytes {offset}..{offset + length} lie past the end of the {self.size}-byte file"
            )
        if self.data is not None:
            return self.data[offset : offset + length]
        return self._fetch(offset, length)

    def footer(self) -> tuple[BlockHandle, BlockHandle]:
        if self.size < FOOTER_SIZE:
            raise TruncatedFileError(f"{self.name}: {self.size} bytes, shorter than a table footer ({FOOTER_SIZE})")
        raw = self.read(self.size - FOOTER_SIZE, FOOTER_SIZE)
        (magic,) = struct.unpack_from("<Q", raw, FOOTER_SIZE - 8)
        if magic != MAGIC:
            raise FormatError(
                f"{self.name}: footer magic {magic:#018x} is not a TensorFlow checkpoint index's "
                f"({MAGIC:#018x}); the file is truncated or not an index"
            )
        try:
            metaindex, pos = BlockHandle.decode(raw, 0)
            index, _ = BlockHandle.decode(raw, pos)
        except ValueError as exc:
            raise FormatError(f"{self.name}: malformed footer block handles: {exc}") from None
        return metaindex, index

    def block(self, handle: BlockHandle, what: str) -> bytes:
        """The block's contents, CRC-checked and decompressed."""
        end = self.size - FOOTER_SIZE
        if handle.offset + handle.size + TRAILER_SIZE > end:
            raise TruncatedFileError(
                f"{self.name}: {what} at {handle.offset} (+{handle.size}) runs past the table's end ({end})"
            )
        raw = self.read(handle.offset, handle.size + TRAILER_SIZE)
        body, kind = raw[: handle.size], raw[handle.size]
        (stored,) = struct.unpack_from("<I", raw, handle.size + 1)
        actual = mask(crc32c(raw[: handle.size + 1]))
        if stored != actual:
            raise FormatError(
                f"{self.name}: {what} at offset {handle.offset} fails its CRC32C check "
                f"(stored {stored:#010x}, computed {actual:#010x})"
            )
        return _decompress(body, kind, f"{self.name}: {what} at offset {handle.offset}")


def _decompress(body: bytes, kind: int, where: str) -> bytes:
    if kind == NO_COMPRESSION:
        return body
    if kind == SNAPPY_COMPRESSION:
        import cramjam

        try:
            return bytes(cramjam.snappy.decompress_raw(body))
        except Exception as exc:  # cramjam raises its own DecompressionError
            raise FormatError(f"{where}: snappy data does not decompress: {exc}") from None
    raise UnsupportedError(f"{where}: unknown block compression type {kind}")


def iter_block(block: bytes, where: str) -> Iterator[tuple[bytes, bytes]]:
    """The ``(key, value)`` entries of one decoded block, in stored order."""
    if len(block) < 4:
        raise FormatError(f"{where}: block of {len(block)} bytes has no restart count")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 * (num_restarts + 1)
    if limit < 0:
        raise FormatError(f"{where}: {num_restarts} restart points do not fit in a {len(block)}-byte block")
    view = memoryview(block)
    pos, key = 0, b""
    try:
        while pos < limit:
            shared, pos = decode_varint(view, pos, max_bits=32)
            unshared, pos = decode_varint(view, pos, max_bits=32)
            value_len, pos = decode_varint(view, pos, max_bits=32)
            if shared > len(key) or pos + unshared + value_len > limit:
                raise ValueError(f"entry at {pos} overruns its block or shares more than its predecessor's key")
            key = key[:shared] + bytes(view[pos : pos + unshared])
            pos += unshared
            yield key, bytes(view[pos : pos + value_len])
            pos += value_len
    except ValueError as exc:
        raise FormatError(f"{where}: malformed block entry: {exc}") from None


def read_table(
    read: ReadFn, size: int, name: str, *, whole_file_limit: int = WHOLE_FILE_LIMIT
) -> list[tuple[bytes, bytes]]:
    """Every ``(key, value)`` of the table, in key order; raises FormatError naming ``name`` on damage."""
    table = _Table(read, size, name, whole_file_limit)
    _, index_handle = table.footer()
    entries: list[tuple[bytes, bytes]] = []
    for last_key, handle_bytes in iter_block(table.block(index_handle, "index block"), f"{name}: index block"):
        try:
            handle, _ = BlockHandle.decode(handle_bytes)
        except ValueError as exc:
            raise FormatError(f"{name}: index entry {last_key!r} holds a malformed block handle: {exc}") from None
        where = f"data block at offset {handle.offset}"
        for key, value in iter_block(table.block(handle, where), f"{name}: {where}"):
            if entries and key <= entries[-1][0]:
                raise FormatError(f"{name}: key {key!r} is out of order after {entries[-1][0]!r}")
            entries.append((key, value))
    return entries
