"""Little-endian base-128 varints, as LevelDB tables and TensorFlow string tensors encode lengths."""

from __future__ import annotations

__all__ = ["decode_varint", "encode_varint"]


def decode_varint(buf: bytes | memoryview, pos: int, *, max_bits: int = 64) -> tuple[int, int]:
    """The varint at ``buf[pos:]`` and the position after it.

    Raises ``ValueError`` (callers turn it into a FormatError naming their file)
    when the buffer ends mid-varint or the value has more than ``max_bits`` bits.
    """
    result = 0
    shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise ValueError("varint runs past the end of its buffer")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift >= max_bits:
            raise ValueError(f"varint longer than {max_bits} bits")
    if result >> max_bits:
        raise ValueError(f"varint longer than {max_bits} bits")
    return result, pos


def encode_varint(value: int) -> bytes:
    """The varint encoding of a non-negative ``value``."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
