"""Partitioned (sliced) tensors: TensorFlow's slice keys and the reassembly of a tensor from its slices.

A variable saved in parts (``tf.train.experimental.MaxShardSizePolicy``, or a
partitioned variable) appears in the index twice over: the full name maps to an
entry with dtype, shape and a list of ``TensorSliceProto`` extents but no data,
and each slice is stored under ``EncodeTensorNameSlice(name, slice)``, an
OrderedCode string::

    NumIncreasing(0) String(name) NumIncreasing(rank) {SignedNumIncreasing(start) SignedNumIncreasing(length)}*

where a dimension taken whole is written as start 0, length -1.  Slice keys
start with ``b"\\x00"``, so they sort before every ordinary key.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TensorSlice", "encode_slice_key", "is_slice_key"]


@dataclass(frozen=True)
class TensorSlice:
    """One slice's extent per dimension: ``start`` and ``length`` (``-1`` means the whole dimension)."""

    starts: tuple[int, ...]
    lengths: tuple[int, ...]

    def bounds(self, shape: tuple[int, ...]) -> tuple[slice, ...]:
        """The numpy index of this slice inside a tensor of ``shape``."""
        return tuple(
            slice(0, dim) if length == -1 else slice(start, start + length)
            for start, length, dim in zip(self.starts, self.lengths, shape, strict=True)
        )

    def shape_in(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The slice's own shape inside a tensor of ``shape``."""
        return tuple(dim if length == -1 else length for length, dim in zip(self.lengths, shape, strict=True))


def is_slice_key(key: bytes) -> bool:
    """Whether an index key names a slice rather than a whole tensor."""
    return key.startswith(b"\x00")


def _num_increasing(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return bytes([len(raw)]) + raw


def _signed_num_increasing(value: int) -> bytes:
    magnitude = ~value if value < 0 else value
    length = magnitude.bit_length() // 7 + 1  # TensorFlow's kBitsToLength table
    raw = bytearray((value & ((1 << (8 * length)) - 1)).to_bytes(length, "big"))
    header = (0xFF << (8 - min(length, 8))) & 0xFF  # 0x80, 0xc0, ... 0xff: `length` leading ones
    raw[0] ^= header
    if length > 8:
        raw[1] ^= (0xFF << (16 - length)) & 0xFF
    return bytes(raw)


def _string(value: bytes) -> bytes:
    return value.replace(b"\xff", b"\xff\x00").replace(b"\x00", b"\x00\xff") + b"\x00\x01"


def encode_slice_key(name: str, piece: TensorSlice) -> bytes:
    """The index key under which TensorFlow stores ``piece`` of tensor ``name``."""
    out = [_num_increasing(0), _string(name.encode()), _num_increasing(len(piece.starts))]
    for start, length in zip(piece.starts, piece.lengths, strict=True):
        out += [_signed_num_increasing(start), _signed_num_increasing(length)]
    return b"".join(out)
