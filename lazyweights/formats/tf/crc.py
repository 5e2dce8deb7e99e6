"""CRC32C as TensorFlow's checkpoints use it: plain, masked, extended in order, or combined out of order.

TensorFlow stores ``mask(crc32c(bytes))`` for each tensor in its index entry and
for each table block in the block trailer.  Masking (rotate right by 15, add a
constant) keeps a CRC that is itself stored in CRC'd data from being trivially
self-consistent.

A tensor read in parts can be checked two ways:

* in order: ``crc = crc32c_extend(crc, part)`` for each part, starting at ``0``;
* concurrently: compute ``crc32c(part)`` per part in any order, then fold them
  left to right with ``crc32c_combine(crc_a, crc_b, len_b)``, which equals the CRC
  of ``a + b`` (zlib's GF(2) matrix method, ``O(log len_b)`` 32x32 products).
"""

from __future__ import annotations

from collections.abc import Iterable

import google_crc32c
import numpy as np

__all__ = [
    "crc32c",
    "crc32c_combine",
    "crc32c_extend",
    "crc32c_of_parts",
    "mask",
    "unmask",
]

_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
_POLY = 0x82F63B78  # CRC32C (Castagnoli), reflected


def _readonly(data: bytes | memoryview) -> bytes | np.ndarray:
    """``data`` as google-crc32c's C extension takes it (a read-only buffer), without copying.

    ``bytes(view)`` would copy: on a 64 MiB part that costs 90 ms against
    8 ms for hashing the buffer in place (measured here).
    """
    if isinstance(data, bytes):
        return data
    array = np.frombuffer(data, dtype=np.uint8)
    array.flags.writeable = False  # this view only; the buffer's owner is untouched
    return array


def crc32c(data: bytes | memoryview) -> int:
    """The CRC32C of ``data`` (unmasked); buffers are hashed in place, not copied."""
    return google_crc32c.value(_readonly(data))


def crc32c_extend(crc: int, data: bytes | memoryview) -> int:
    """The CRC32C of ``previous + data`` given ``crc``, the CRC32C of ``previous`` (``0`` for nothing)."""
    return google_crc32c.extend(crc, _readonly(data))


def mask(crc: int) -> int:
    """TensorFlow's / LevelDB's masked form of ``crc``, as stored on disk."""
    return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


def unmask(masked: int) -> int:
    """The inverse of :func:`mask`."""
    rot = (masked - _MASK_DELTA) & _U32
    return ((rot >> 17) | (rot << 15)) & _U32


def _gf2_times(matrix: list[int], vec: int) -> int:
    out = 0
    i = 0
    while vec:
        if vec & 1:
            out ^= matrix[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, row) for row in matrix]


def crc32c_combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """The CRC32C of ``a + b`` from ``crc32c(a)``, ``crc32c(b)`` and ``len(b)``."""
    if len_b <= 0:
        return crc_a
    odd = [_POLY] + [1 << i for i in range(31)]  # operator for one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four zero bits
    while True:  # apply len_b zero bytes to crc_a, one bit of len_b at a time
        even = _gf2_square(odd)
        if len_b & 1:
            crc_a = _gf2_times(even, crc_a)
        len_b >>= 1
        if not len_b:
            break
        odd = _gf2_square(even)
        if len_b & 1:
            crc_a = _gf2_times(odd, crc_a)
        len_b >>= 1
        if not len_b:
            break
    return crc_a ^ crc_b


def crc32c_of_parts(parts: Iterable[tuple[int, int]]) -> int:
    """Fold ``(crc32c(part), len(part))`` pairs, in file order, into the CRC32C of their concatenation."""
    crc = None
    for part_crc, length in parts:
        crc = part_crc if crc is None else crc32c_combine(crc, part_crc, length)
    return crc or 0
