"""The TF checkpoint core's building blocks: protobuf field numbers, CRC32C helpers, varints and slice keys."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from lazyweights.formats.tf import protos
from lazyweights.formats.tf.crc import crc32c, crc32c_combine, crc32c_extend, crc32c_of_parts, mask, unmask
from lazyweights.formats.tf.slices import TensorSlice, _signed_num_increasing, encode_slice_key
from lazyweights.formats.tf.varint import decode_varint, encode_varint

TF_FIXTURES = Path(__file__).parent / "fixtures" / "tf"
PROTO_DIR = Path(protos.__file__).parent


def runtime_fields() -> dict[str, dict[str, int]]:
    tables = {**protos.BUNDLE_MESSAGES, **protos.GRAPH_MESSAGES, **protos.STATE_MESSAGES}
    return {name: {f[0]: f[1] for f in fields} for name, fields in tables.items()}


def test_field_numbers_match_tensorflow():
    """``proto_fields.json`` was dumped from TensorFlow's own generated classes by the fixture script."""
    tf_fields = json.loads((TF_FIXTURES / "proto_fields.json").read_text())
    ours = runtime_fields()
    for message, fields in ours.items():
        if message in ("BoolValue", "RegisteredSaver") or message not in tf_fields:
            continue
        assert fields.items() <= tf_fields[message].items(), message
    for message in ("BundleEntryProto", "BundleHeaderProto", "TrackableObjectGraph.TrackableObject"):
        assert ours[message] == tf_fields[message]
    assert protos.DATA_TYPES.items() <= tf_fields["DataType"].items()


def test_field_numbers_match_proto_files():
    text = "\n".join(p.read_text() for p in PROTO_DIR.glob("*.proto"))
    declared = {(m[1], int(m[2])) for m in re.finditer(r"^\s*(?:repeated\s+)?[\w.]+\s+(\w+)\s*=\s*(\d+);", text, re.M)}
    enums = {(m[1], int(m[2])) for m in re.finditer(r"^\s*([A-Z][A-Z0-9_]*)\s*=\s*(\d+);", text, re.M)}
    for fields in runtime_fields().values():
        assert set(fields.items()) <= declared
    assert set(protos.DATA_TYPES.items()) <= enums


def test_messages_round_trip():
    bf16 = protos.DATA_TYPES["DT_BFLOAT16"]
    entry = protos.BundleEntryProto(dtype=bf16, shard_id=3, offset=1 << 40, crc32c=0xFFFFFFFF)
    entry.shape.dim.add(size=7)
    extent = entry.slices.add().extent.add(start=2)
    assert not extent.HasField("length")
    again = protos.BundleEntryProto.FromString(entry.SerializeToString())
    assert again == entry and again.offset == 1 << 40 and again.crc32c == 0xFFFFFFFF


def test_crc_helpers():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    parts = [os.urandom(n) for n in (0, 1, 1000, 4097, 3)]
    whole = b"".join(parts)
    crc = 0
    for part in parts:
        crc = crc32c_extend(crc, part)
    assert crc == crc32c(whole)
    assert crc32c_of_parts((crc32c(p), len(p)) for p in parts) == crc32c(whole)
    assert crc32c_combine(crc32c(parts[2]), crc32c(parts[3]), len(parts[3])) == crc32c(parts[2] + parts[3])
    assert unmask(mask(crc)) == crc and mask(crc) != crc
    assert mask(0) == 0xA282EAD8


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 1 << 35, (1 << 64) - 1])
def test_varint_round_trip(value):
    encoded = encode_varint(value)
    assert decode_varint(encoded + b"junk", 0) == (value, len(encoded))


def test_varint_errors():
    with pytest.raises(ValueError):
        decode_varint(b"\x80\x80", 0)
    with pytest.raises(ValueError):
        decode_varint(b"\xff\xff\xff\xff\x7f", 0, max_bits=32)


def test_signed_ordered_code_preserves_order():
    values = sorted({0, -1, 1, 63, 64, -64, -65, 8191, 8192, -8193, 1 << 40, -(1 << 40), (1 << 62), -(1 << 63)}
                    | {v * s for v in range(0, 5000, 37) for s in (1, -1)})  # fmt: skip
    encoded = [_signed_num_increasing(v) for v in values]
    assert encoded == sorted(encoded)
    assert _signed_num_increasing(0) == b"\x80" and _signed_num_increasing(-1) == b"\x7f"


def test_slice_key_layout():
    key = encode_slice_key("v1/x", TensorSlice((0, 6), (6, -1)))
    assert key == b"\x00" + b"v1/x\x00\x01" + b"\x01\x02" + b"\x80\x86" + b"\x86\x7f"
