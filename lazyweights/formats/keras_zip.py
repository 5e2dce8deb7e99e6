"""The members of a ``.keras`` archive that an open needs, fetched in one round of concurrent reads.

``zipfile`` reads a member through a file object: for a remote archive that is
one block-cached request after another (a 2 MB ``config.json`` costs eight
round trips), and the HDF5 member's own first bytes, past the archive's head
when the config is large, cost the metadata walk some more.  Here every member
wanted (its local header, its data, and for the HDF5 member its first
:data:`~lazyweights.storage.source.HEAD_BYTES`) is one range of one
``readinto_many`` call.  Stored and deflated members are decoded and checked
against the directory's size and CRC-32.
"""

from __future__ import annotations

import struct
import zipfile
import zlib

from ..errors import FormatError
from ..storage import Source

__all__ = ["MemberBytes", "read_members"]

_LOCAL = 30  # fixed part of a local file header
_SLACK = 4096  # room for a local extra field longer than the directory's
_HEAD = 1 << 20  # the HDF5 member's first bytes fetched with the rest (the walk's head)

MemberBytes = tuple[dict[str, bytes], int, bytes]


def read_members(source: Source, infos: list[zipfile.ZipInfo], hdf5: zipfile.ZipInfo) -> MemberBytes:
    """``(small members' bytes by name, HDF5 member's data offset, its first bytes)``, in one round.

    Everything is served from the source's head where it lies there.
    """
    wanted = [*infos, hdf5]
    spans = [(i.header_offset, _LOCAL + len(i.filename.encode()) + len(i.extra) + _SLACK) for i in wanted]
    spans[-1] = (spans[-1][0], spans[-1][1] + min(hdf5.file_size, _HEAD))
    spans[:-1] = [(off, n + i.compress_size) for (off, n), i in zip(spans[:-1], infos, strict=True)]
    spans = [(off, max(0, min(n, source.size - off))) for off, n in spans]
    blobs = _fetch(source, spans)
    pairs = zip(infos, blobs[:-1], strict=True)
    out = {i.filename: _decode(source, i, _data(source, i, b, i.compress_size)) for i, b in pairs}
    start = _data_start(source, hdf5, blobs[-1])
    return out, hdf5.header_offset + start, blobs[-1][start : start + min(hdf5.file_size, _HEAD)]


def _fetch(source: Source, spans: list[tuple[int, int]]) -> list[bytes]:
    head = source.head()
    bufs = [bytearray(n) for _, n in spans]
    missing = []
    for (off, n), buf in zip(spans, bufs, strict=True):
        if off + n <= len(head):
            buf[:] = head[off : off + n]
        else:
            missing.append((off, memoryview(buf)))
    if missing:
        source.readinto_many(missing, max_gap=0)
    return [bytes(b) for b in bufs]


def _data_start(source: Source, info: zipfile.ZipInfo, blob: bytes) -> int:
    """Where the member's data starts in ``blob`` (which begins at its local header)."""
    if len(blob) < _LOCAL or blob[:4] != b"PK\x03\x04":
        raise FormatError(f"{source.url}: bad local zip header for member {info.filename}")
    name_len, extra_len = struct.unpack("<HH", blob[26:30])
    return _LOCAL + name_len + extra_len


def _data(source: Source, info: zipfile.ZipInfo, blob: bytes, length: int) -> bytes:
    start = _data_start(source, info, blob)
    if info.header_offset + start + length > source.size:
        raise FormatError(
            f"{source.url}: zip member {info.filename} declares {length} bytes at offset "
            f"{info.header_offset + start}, past the end of the {source.size}-byte archive"
        )
    if start + length > len(blob):  # a local extra field longer than allowed for: one more read
        return source.read(info.header_offset + start, length)
    return blob[start : start + length]


def _decode(source: Source, info: zipfile.ZipInfo, data: bytes) -> bytes:
    if info.compress_type == zipfile.ZIP_DEFLATED:
        try:
            data = zlib.decompressobj(-15).decompress(data, info.file_size + 1)
        except zlib.error as exc:
            raise FormatError(f"{source.url}: member {info.filename} is not valid deflate data: {exc}") from exc
    elif info.compress_type != zipfile.ZIP_STORED:
        raise FormatError(f"{source.url}: member {info.filename} uses zip compression {info.compress_type}")
    if len(data) != info.file_size or zlib.crc32(data) != info.CRC:
        raise FormatError(f"{source.url}: member {info.filename} does not match its size and CRC-32 in the archive")
    return data
