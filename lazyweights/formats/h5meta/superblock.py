"""HDF5 superblock (versions 0-3): where the file starts and where its root group is.

The signature may sit at 0, 512, 1024, 2048, ... after a user block; the
superblock's base address (normally the signature's position) is what every
other address in the file is relative to.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import FormatError, TruncatedFileError
from ._base import Ctx, Cursor, Task, check_sum, read_many

__all__ = ["SIGNATURE", "Superblock", "read_superblock"]

SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MAX_PROBES = 40


@dataclass
class Superblock:
    """The parsed superblock."""

    version: int
    at: int  # absolute offset of the signature
    base_address: int  # absolute offset of relative address 0
    eof_address: int  # relative end-of-file address
    root_address: int  # relative address of the root object header
    root_btree: int | None = None  # v0/v1: cached symbol table of the root group
    root_heap: int | None = None


def _probe_offsets(size: int, base: int) -> list[int]:
    offs, pos = [], 0
    while base + pos + 8 <= size and len(offs) < _MAX_PROBES:
        offs.append(base + pos)
        pos = 512 if pos == 0 else pos * 2
    return offs


def read_superblock(ctx: Ctx, base: int) -> Task:
    """Find and parse the superblock; fills ``ctx`` sizes/base and returns a :class:`Superblock`."""
    probes = _probe_offsets(ctx.size, base)
    if not probes:
        raise FormatError(f"not an HDF5 file: {ctx.size - base} bytes is too short for a signature")
    # Offset 0 first (with room for the root group's header), then every other candidate at once.
    first = yield from read_many([(probes[0], min(2048, ctx.size - probes[0]))])
    found = (probes[0], first[0]) if first[0][:8] == SIGNATURE else None
    if found is None and len(probes) > 1:
        blocks = yield from read_many([(p, min(256, ctx.size - p)) for p in probes[1:]])
        found = next(((p, d) for p, d in zip(probes[1:], blocks, strict=False) if d[:8] == SIGNATURE), None)
    if found is None:
        raise FormatError("not an HDF5 file: no superblock signature at 0, 512, 1024, ...")
    at, data = found
    if len(data) < 24:
        raise TruncatedFileError(f"superblock at 0x{at:x}: file ends inside the superblock")
    version = data[8]
    if version in (0, 1):
        sb = _parse_v01(ctx, data, at, version)
    elif version in (2, 3):
        sb = _parse_v23(ctx, data, at, version)
    else:
        raise FormatError(f"superblock at 0x{at:x}: unsupported version {version}")
    ctx.base = base + sb.base_address
    sb.base_address = ctx.base
    # The stored end-of-file address counts from the start of the HDF5 file (user block included).
    if base + sb.eof_address > ctx.size and not ctx.is_undef(sb.eof_address):
        raise TruncatedFileError(
            f"superblock at 0x{at:x}: end-of-file address 0x{sb.eof_address:x} is beyond the "
            f"file's {ctx.size - base} bytes (truncated file)"
        )
    return sb


def _sizes(ctx: Ctx, so: int, sl: int, at: int) -> None:
    if so not in (2, 4, 8) or sl not in (2, 4, 8):
        raise FormatError(f"superblock at 0x{at:x}: unsupported address/length sizes {so}/{sl}")
    ctx.so, ctx.sl = so, sl


def _parse_v01(ctx: Ctx, data: bytes, at: int, version: int) -> Superblock:
    what = f"superblock at 0x{at:x}"
    c = Cursor(data, ctx, what, 13)
    _sizes(ctx, c.u8(), c.u8(), at)
    c.skip(1)
    ctx.group_leaf_k, ctx.group_internal_k = c.u16(), c.u16()
    if not ctx.group_leaf_k or not ctx.group_internal_k:
        raise FormatError(f"{what}: zero B-tree K")
    c.skip(4)
    if version == 1:
        ctx.chunk_k = c.u16() or 32
        c.skip(2)
    base, _free, eof, _drv = c.offset(), c.offset(), c.offset(), c.offset()
    _name_off, root = c.length(), c.offset()
    cache_type = c.u32()
    c.skip(4)
    scratch = c.bytes(16)
    sb = Superblock(version, at, base, eof, root)
    if cache_type == 1:
        sc = Cursor(scratch, ctx, what)
        sb.root_btree, sb.root_heap = sc.offset(), sc.offset()
    return sb


def _parse_v23(ctx: Ctx, data: bytes, at: int, version: int) -> Superblock:
    c = Cursor(data, ctx, f"superblock at 0x{at:x}", 9)
    _sizes(ctx, c.u8(), c.u8(), at)
    c.skip(1)
    base, _ext, eof, root = c.offset(), c.offset(), c.offset(), c.offset()
    check_sum(data, c.pos, f"superblock at 0x{at:x}")
    return Superblock(version, at, base, eof, root)
