"""The members of a ``.keras`` archive that an open needs, fetched in one round of concurrent reads.

``zipfile`` reads a member through a file object: for a remote archive that is
one block-cached request after another (a 2 MB ``config.json`` costs eight
round trips), and the HDF5 member's own first bytes, past the archive's head
when the config is large, cost the metadata walk some more.  Here every member
wanted (its local header, its data, and for the HDF5 member its first
:data:`MEMBER_HEAD` bytes) is one range of one
``readinto_many`` call.  Stored and deflated members are decoded and checked
against the directory's size and CRC-32.

:func:`refuse_bomb` applies Keras's decompression-bomb rule to a member
before it is inflated or extracted, with Keras's limits of the moment.
"""

from __future__ import annotations

import struct
import sys
import zipfile
import zlib

from ..attrs import DEFER_BYTES, Deferred
from ..errors import FormatError, UnsafeCheckpointError
from ..storage import Source

__all__ = ["ARCHIVE_HEAD", "MemberBytes", "keras_limit", "read_members", "refuse_bomb"]

# Keras's limits on archive members (``keras.src.saving.saving_lib``: ``_reject_zip_bomb`` for a member read
# into memory, ``_reject_zip_extract_bomb`` for one extracted to disk), by the names Keras gives them
_KERAS_SAVING = "keras.src.saving.saving_lib"
_KERAS_LIMITS = {
    "_ZIP_MEMBER_BOMB_FLOOR_BYTES": 1 << 32,
    "_ZIP_MEMBER_MAX_EXPANSION": 100,
    "_ZIP_EXTRACT_BOMB_FLOOR_BYTES": 1 << 28,
}


def keras_limit(name: str) -> int:
    """Keras's bomb limit ``name`` as Keras holds it now, else its default.

    Read at call time from Keras's module when Keras is loaded, so that a
    limit a user (or Keras's own tests) changes there applies here too; never
    imports Keras (formats do not depend on it).  lazyweights' own fixed
    limits (a JSON member over 64 MiB, a compressed weights member) apply
    whatever Keras's are; ``assets/`` extraction follows Keras's rule as Keras
    applies it to the same extraction.
    """
    value = getattr(sys.modules.get(_KERAS_SAVING), name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else _KERAS_LIMITS[name]


def refuse_bomb(url: str, info: zipfile.ZipInfo, *, extract: bool = False) -> None:
    """Refuse a member declaring over Keras's floor and over its expansion ratio times the bytes it stores.

    Keras writes members stored (ratio 1) and deflate cannot exceed about
    1032:1, so such a member is a decompression bomb; it is refused from the
    archive's directory, before a byte of it is inflated.  ``extract``: the
    member would be written to disk (Keras's lower floor for extraction).
    """
    floor = keras_limit("_ZIP_EXTRACT_BOMB_FLOOR_BYTES" if extract else "_ZIP_MEMBER_BOMB_FLOOR_BYTES")
    if info.file_size > floor and info.file_size > keras_limit("_ZIP_MEMBER_MAX_EXPANSION") * info.compress_size:
        raise UnsafeCheckpointError(
            f"{url}: Not allowed: ZIP member '{info.filename}' declares {info.file_size} bytes but only "
            f"{info.compress_size} are stored on disk; refusing to {'extract' if extract else 'load'} a potential "
            "decompression bomb"
        )


# An archive's head: Keras writes the HDF5 member third, behind metadata.json and config.json (hundreds
# of KiB for real models: 175-420 KiB for ResNet50, EfficientNetB3, DenseNet121), so a head of 512 KiB,
# fetched with the stat, holds the member's first bytes too and saves the round that would read them.
ARCHIVE_HEAD = 512 << 10
_LOCAL = 30  # fixed part of a local file header
_SLACK = 4096  # room for a local extra field longer than the directory's
# The HDF5 member's first bytes fetched with the rest when it starts past the archive's head (a large
# config before it): its superblock, root group and top groups' headers, B-tree roots and heaps lie in
# its first KiBs, and the first layers' dataset headers, which size the walk's reads of the others.  Not
# ARCHIVE_HEAD: on a 2,000-layer model those 512 KiB were 1/6 of the open's bytes, mostly the first
# layers' weights (benchmarks/bench_open.py).
MEMBER_HEAD = 32 << 10

MemberBytes = tuple[dict[str, bytes | Deferred], int, bytes]
DEFERRABLE = ("config.json",)  # members that may be read when asked for, not at open, when large


def read_members(source: Source, infos: list[zipfile.ZipInfo], hdf5: zipfile.ZipInfo) -> MemberBytes:
    """``(small members' bytes by name, HDF5 member's data offset, its first bytes)``, in one round.

    A large ``config.json`` is not read: it comes back as a :class:`~lazyweights.attrs.Deferred`
    reference to its bytes (a model's config is not needed to find its weights).

    Everything is served from the source's head where it lies there: the HDF5
    member's first bytes are then the rest of the head (Keras writes it third,
    after a config of a few KiB), and only members or parts past the head are fetched.
    """
    later = {i.filename for i in infos if i.filename in DEFERRABLE and i.compress_size > DEFER_BYTES}
    spans = [(i.header_offset, _LOCAL + len(i.filename.encode()) + len(i.extra) + _SLACK) for i in [*infos, hdf5]]
    spans[:-1] = [(off, n + _now(i, later)) for (off, n), i in zip(spans[:-1], infos, strict=True)]
    past_head = spans[-1][0] + spans[-1][1] > len(source.head())
    if past_head:  # the member starts past the head: fetch its first bytes with its local header
        spans[-1] = (spans[-1][0], spans[-1][1] + min(hdf5.file_size, MEMBER_HEAD))
    spans = [(off, max(0, min(n, source.size - off))) for off, n in spans]
    blobs = _fetch(source, spans)
    pairs = zip(infos, blobs[:-1], strict=True)
    out = {i.filename: _member(source, i, b, i.filename in later) for i, b in pairs}
    start = _data_start(source, hdf5, blobs[-1])
    first = blobs[-1] if past_head else source.head()[hdf5.header_offset :]
    return out, hdf5.header_offset + start, first[start : start + min(hdf5.file_size, MEMBER_HEAD)]


def _now(info: zipfile.ZipInfo, later: set[str]) -> int:
    """The bytes of ``info``'s data read in this round: none for a member read when asked for."""
    return 0 if info.filename in later else info.compress_size


def _member(source: Source, info: zipfile.ZipInfo, blob: bytes, later: bool) -> bytes | Deferred:
    """A small member's decoded bytes, from ``blob`` (its local header on): or a reference, read ``later``."""
    if later:
        return _reference(source, info, blob)
    return _decode(source, info, _data(source, info, blob, info.compress_size))


def _reference(source: Source, info: zipfile.ZipInfo, blob: bytes) -> Deferred:
    """A large JSON member (``config.json``) as a reference to its bytes, read when asked for."""
    start = info.header_offset + _data_start(source, info, blob)
    if start + info.compress_size > source.size:
        raise FormatError(
            f"{source.url}: zip member {info.filename} declares {info.compress_size} bytes at offset {start}, "
            f"past the end of the {source.size}-byte archive"
        )
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise FormatError(f"{source.url}: member {info.filename} uses zip compression {info.compress_type}")
    codec = "deflate" if info.compress_type == zipfile.ZIP_DEFLATED else "raw"
    what = f"{source.url}: {info.filename} in the archive"
    return Deferred(start, info.compress_size, info.file_size, what, codec, info.CRC, json=True, strict=True)


def _fetch(source: Source, spans: list[tuple[int, int]]) -> list[bytes]:
    """The bytes of each span: what the head (or tail) holds is copied, only the rest is read, in one round."""
    head = source.head()
    bufs = [bytearray(n) for _, n in spans]
    missing = []
    for (off, n), buf in zip(spans, bufs, strict=True):
        held = source.cached(off, n)
        if held is not None:
            buf[:] = held
            continue
        k = max(0, min(n, len(head) - off))  # a prefix inside the head
        buf[:k] = head[off : off + k]
        missing.append((off + k, memoryview(buf)[k:]))
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
