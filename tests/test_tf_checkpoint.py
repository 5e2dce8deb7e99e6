"""TensorFlow checkpoints through ``lw.open``/``Weight.read`` against what real TensorFlow wrote and read.

No TensorFlow import here.  Fixtures come from ``scripts/make_tf_fixtures.sh``:
each directory holds what TensorFlow wrote plus ``oracle.json``/``oracle.npz``
with every tensor as ``tf.train.load_checkpoint(...).get_tensor(key)`` returned it.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import cramjam
import numpy as np
import pytest

import lazyweights as lw
from lazyweights.errors import FormatError, TruncatedFileError, UnsafeCheckpointError
from lazyweights.formats.tf import protos
from lazyweights.formats.tf.bundle import decode_strings, parse_index, read_index
from lazyweights.formats.tf.checkpoint_dir import pointer_target
from lazyweights.formats.tf.crc import crc32c, mask
from lazyweights.formats.tf.graph import OBJECT_GRAPH_KEY, parse_object_graph
from lazyweights.formats.tf.sstable import MAGIC, read_table
from lazyweights.formats.tf.varint import encode_varint

TF_FIXTURES = Path(__file__).parent / "fixtures" / "tf"
CHECKPOINTS = ["functional_mobilenetv2", "sequential_adam", "subclassed", "multishard"]


def oracle(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    meta = json.loads((TF_FIXTURES / name / "oracle.json").read_text())
    with np.load(TF_FIXTURES / name / "oracle.npz") as npz:
        arrays = {t["key"]: npz[t["npz"]] for t in meta["tensors"]}
    return meta, arrays


def numeric(meta: dict) -> list[dict]:
    return [t for t in meta["tensors"] if t["dtype"] != "string"]


def assert_matches_oracle(ckpt: lw.Checkpoint, name: str) -> None:
    """Every numeric tensor, read through the executor, equals TensorFlow's; strings are listed as skipped."""
    meta, expected = oracle(name)
    skipped = dict(ckpt.manifest.skipped)
    assert set(skipped) == {t["key"] for t in meta["tensors"] if t["dtype"] == "string"} | set(meta["skipped"])
    for t in numeric(meta):
        weight = ckpt[t["key"]]
        assert weight.dtype.name == t["dtype"] and list(weight.shape) == t["shape"], t["key"]
        value, ref = weight.read(), expected[t["key"]]
        if t["dtype"] == "bfloat16":
            value = value.view(np.uint16)
        assert value.dtype == ref.dtype and value.shape == ref.shape, t["key"]
        assert np.array_equal(value, ref), t["key"]


def assert_loaded_matches(loaded: dict, meta: dict, expected: dict[str, np.ndarray]) -> None:
    """``lw.load`` gave every model tensor (optimizer state is not the model's) with TensorFlow's values."""
    model_keys = {
        t["key"] for t in numeric(meta) if not t["key"].startswith("optimizer/") and "OPTIMIZER" not in t["key"]
    }
    assert set(loaded) == model_keys
    for key, value in loaded.items():
        assert np.array_equal(value.view(np.uint16) if value.dtype.name == "bfloat16" else value, expected[key]), key


def graph_bytes(root: Path, prefix: str = "ckpt") -> bytes:
    """The serialized object graph, read with the index parser (test-side, not through the library's reads)."""
    index_data = (root / f"{prefix}.index").read_bytes()
    index = read_index(lambda o, n: index_data[o : o + n], len(index_data), "x.index", prefix)
    entry = index.entries[OBJECT_GRAPH_KEY]
    shard = (root / index.shard_name(entry.shard_id)).read_bytes()
    (data,) = decode_strings(entry, shard[entry.offset : entry.offset + entry.size], "shard")
    return data


def encode_string_tensor(value: bytes) -> tuple[bytes, int]:
    """A scalar DT_STRING as TensorFlow's bundle writer stores it, and the entry's masked CRC32C."""
    lengths = struct.pack("<I", len(value))
    checksum = struct.pack("<I", mask(crc32c(lengths)))
    data = encode_varint(len(value)) + checksum + value
    return data, mask(crc32c(lengths + checksum + value))


def copy_fixture(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(TF_FIXTURES / name, tmp_path / name))


def table_pairs(path: Path) -> list[tuple[bytes, bytes]]:
    data = path.read_bytes()
    return read_table(lambda o, n: data[o : o + n], len(data), str(path))


def write_table(pairs: list[tuple[bytes, bytes]], *, snappy: bool = False, per_block: int = 7) -> bytes:
    """A LevelDB table of ``pairs`` (no prefix sharing), blocks of ``per_block`` entries, optionally snappy."""
    out = bytearray()

    def block(entries: list[tuple[bytes, bytes]]) -> bytes:
        body, restarts = bytearray(), []
        for key, value in entries:
            restarts.append(len(body))
            body += encode_varint(0) + encode_varint(len(key)) + encode_varint(len(value)) + key + value
        restarts = restarts or [0]
        return bytes(body) + struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack("<I", len(restarts))

    def put(raw: bytes, compress: bool) -> bytes:
        kind = 1 if compress else 0
        stored = bytes(cramjam.snappy.compress_raw(raw)) if compress else raw
        offset = len(out)
        out.extend(stored + bytes([kind]) + struct.pack("<I", mask(crc32c(stored + bytes([kind])))))
        return encode_varint(offset) + encode_varint(len(stored))

    index = []
    for i in range(0, len(pairs), per_block):
        chunk = pairs[i : i + per_block]
        index.append((chunk[-1][0], put(block(chunk), snappy)))
    meta = put(block([]), False)
    handles = meta + put(block(index), False)
    return bytes(out) + handles + bytes(40 - len(handles)) + struct.pack("<Q", MAGIC)


def replace_entry(pairs, key: str, **changes) -> list[tuple[bytes, bytes]]:
    out = []
    for k, v in pairs:
        if k == key.encode():
            entry = protos.BundleEntryProto.FromString(v)
            for field, value in changes.items():
                setattr(entry, field, value)
            v = entry.SerializeToString()
        out.append((k, v))
    return out


# -- every tensor equals TensorFlow's own reading ---------------------------------------------------


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_every_tensor_matches_tensorflow(name):
    meta, _ = oracle(name)
    with lw.open(TF_FIXTURES / name) as ckpt:
        assert ckpt.format == "tf-checkpoint"
        assert ckpt.url.endswith("/" + meta["prefix"])
        assert_matches_oracle(ckpt, name)


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_load_matches_tensorflow_in_small_parts(name):
    """Parts of one tensor finish in any order; their CRC32Cs are combined, and values still match."""
    meta, expected = oracle(name)
    loaded = lw.load(TF_FIXTURES / name, part_size=100, max_memory="4KiB", concurrency=4)
    assert_loaded_matches(loaded, meta, expected)


def test_dtypes_and_unsupported_listing():
    with lw.open(TF_FIXTURES / "subclassed") as ckpt:
        names = {w.key.split("/")[0]: w.spec.dtype for w in ckpt.weights}
        skipped = dict(ckpt.manifest.skipped)
    variables = json.loads((TF_FIXTURES / "subclassed" / "model.json").read_text())["variables"]
    for attr, dtype in variables.items():
        if dtype != "string":
            assert names[attr] == dtype
    assert set(skipped) == {"label/.ATTRIBUTES/VARIABLE_VALUE", OBJECT_GRAPH_KEY}
    assert "string" in skipped["label/.ATTRIBUTES/VARIABLE_VALUE"]


def test_members_are_the_checkpoint_files():
    with lw.open(TF_FIXTURES / "functional_mobilenetv2") as ckpt:
        assert ckpt.source.is_dir
        for spec in ckpt.manifest.weights:
            assert spec.member == "ckpt.data-00000-of-00001" and spec.crc32c is not None
        again = lw.Manifest.from_json(ckpt.manifest.to_json())
        assert again == ckpt.manifest


def test_large_index_reads_block_by_block():
    pairs = table_pairs(TF_FIXTURES / "functional_mobilenetv2" / "ckpt.index")
    data = write_table(pairs, per_block=20)  # TensorFlow's own blocks are larger than this small index
    reads = []

    def read(offset, length):
        reads.append(length)
        return data[offset : offset + length]

    assert read_table(read, len(data), "big.index", whole_file_limit=0) == pairs
    assert len(reads) == 2 + -(-len(pairs) // 20)  # footer, index block, each data block
    assert max(reads) < len(data) // 4


def test_snappy_blocks(tmp_path):
    pairs = table_pairs(TF_FIXTURES / "subclassed" / "ckpt.index")
    packed = write_table(pairs, snappy=True)
    assert read_table(lambda o, n: packed[o : o + n], len(packed), "x.index") == pairs
    root = copy_fixture("subclassed", tmp_path)
    (root / "ckpt.index").write_bytes(packed)
    with lw.open(root) as ckpt:
        assert_matches_oracle(ckpt, "subclassed")


def test_memory_url():
    import fsspec

    fs = fsspec.filesystem("memory")
    for f in (TF_FIXTURES / "multishard").iterdir():
        fs.pipe(f"/tfckpt/{f.name}", f.read_bytes())
    for url in ("memory://tfckpt", "memory://tfckpt/ckpt-1", "memory://tfckpt/ckpt-1.index"):
        with lw.open(url) as ckpt:
            assert_matches_oracle(ckpt, "multishard")


# -- object graph -----------------------------------------------------------------------------------


def graph_attrs(name: str) -> dict:
    with lw.open(TF_FIXTURES / name) as ckpt:
        return ckpt.manifest.attrs["object_graph"]


def test_subclassed_paths_use_attribute_names():
    graph = graph_attrs("subclassed")
    paths = {p for ps in graph["paths"].values() for p in ps}
    for layer in ("encoder/dense1", "encoder/dense2", "blocks/0", "blocks/1", "heads/alpha", "heads/beta"):
        assert {f"{layer}/kernel", f"{layer}/bias"} <= paths
    assert {"step", "flags", "half", "brain", "label"} <= paths
    # the current tf-keras Adam lists m and v per trainable variable, not as slots
    assert graph["slots"] == []
    assert "optimizer/_momentums/0" in graph["paths"]["optimizer/_variables/1/.ATTRIBUTES/VARIABLE_VALUE"]


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_keys_are_shortest_paths(name):
    """TensorFlow names each saved variable by its shortest object path (slots by TensorFlow's slot naming)."""
    with lw.open(TF_FIXTURES / name) as ckpt:
        for spec in (*ckpt.manifest.weights, *ckpt.manifest.optimizer):
            assert spec.path + "/.ATTRIBUTES/VARIABLE_VALUE" == spec.key
        assert OBJECT_GRAPH_KEY not in ckpt.manifest.attrs["object_graph"]["paths"]


def test_functional_paths_include_aliases():
    paths = graph_attrs("functional_mobilenetv2")["paths"]["layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"]
    assert paths[0] == "layer_with_weights-0/kernel" and len(paths) > 1


def test_adam_slots():
    with lw.open(TF_FIXTURES / "sequential_adam") as ckpt:
        slots = ckpt.manifest.attrs["object_graph"]["slots"]
        model = json.loads((TF_FIXTURES / "sequential_adam" / "model.json").read_text())
        assert len(slots) == 2 * len(model["weights"]) - 2 * 2  # m and v of each trainable weight (not BN statistics)
        assert {s["slot"] for s in slots} == {"m", "v"}
        optimizer_keys = {w.key for w in ckpt.optimizer_weights}
        for slot in slots:
            (original,) = slot["original"]
            (slot_key,) = slot["keys"]
            path = original.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE")
            assert slot["optimizer"] == "optimizer"
            assert slot_key == f"{path}/.OPTIMIZER_SLOT/optimizer/{slot['slot']}/.ATTRIBUTES/VARIABLE_VALUE"
            assert slot_key in optimizer_keys and original in ckpt
            assert ckpt[slot_key].read().shape == ckpt[original].read().shape


def test_graph_missing_node_is_refused(tmp_path):
    data = graph_bytes(TF_FIXTURES / "sequential_adam")
    proto = protos.TrackableObjectGraph.FromString(data)
    missing = len(proto.nodes) + 3
    proto.nodes[2].children.add(node_id=missing, local_name="ghost")
    with pytest.raises(FormatError, match=f"ghost.*node {missing}") as err:
        parse_object_graph(proto.SerializeToString(), "ckpt.data-00000-of-00001")
    assert "ckpt.data-00000-of-00001" in str(err.value)
    # the same graph written into a checkpoint, refused by lw.open naming the shard that holds it
    root = copy_fixture("sequential_adam", tmp_path)
    shard = root / "ckpt.data-00000-of-00001"
    stored, crc = encode_string_tensor(proto.SerializeToString())
    offset = shard.stat().st_size
    shard.write_bytes(shard.read_bytes() + stored)
    index = root / "ckpt.index"
    index.write_bytes(
        write_table(replace_entry(table_pairs(index), OBJECT_GRAPH_KEY, offset=offset, size=len(stored), crc32c=crc))
    )
    with pytest.raises(FormatError, match=f"ghost.*node {missing}") as err:
        lw.open(root)
    assert str(shard) in str(err.value)
    proto = protos.TrackableObjectGraph.FromString(data)
    next(n for n in proto.nodes if n.slot_variables).slot_variables[0].slot_variable_node_id = missing
    with pytest.raises(FormatError, match=f"node {missing}"):
        parse_object_graph(proto.SerializeToString(), "ckpt.data-00000-of-00001")


# -- shards -----------------------------------------------------------------------------------------


def test_multishard_reads_several_data_files():
    meta, _ = oracle("multishard")
    with lw.open(TF_FIXTURES / "multishard") as ckpt:
        lw.load(ckpt)
        touched = {k for k, m in ckpt.source.members_read().items() if m is not None and ".data-" in k}
        assert len(touched) >= 2 and touched <= set(meta["data_files"])
        pieced = [s for s in ckpt.manifest.weights if s.layout == "pieces"]
        assert pieced  # TensorFlow split variables across shards
        assert len({p.member for s in pieced for p in s.pieces}) >= 2
        # a region of a partitioned variable reads only the slices that meet it
        spec = pieced[0]
        _, expected = oracle("multishard")
        assert np.array_equal(ckpt[spec.key][3:5, 1:4], expected[spec.key][3:5, 1:4])
        assert np.array_equal(ckpt[spec.key].to_dask()[::2].compute(), expected[spec.key][::2])


def test_missing_shard(tmp_path):
    root = copy_fixture("multishard", tmp_path)
    victim = root / "ckpt-1.data-00002-of-00004"
    victim.unlink()
    with pytest.raises(FormatError, match="missing") as err:
        lw.open(root)
    assert str(victim) in str(err.value)


def test_entry_past_its_shard(tmp_path):
    root = copy_fixture("subclassed", tmp_path)
    shard = root / "ckpt.data-00000-of-00001"
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(FormatError, match="runs past the end") as err:
        lw.open(root)
    assert str(shard) in str(err.value)
    # the same through an index whose entry points past the (intact) shard
    root = copy_fixture("sequential_adam", tmp_path)
    key = "layer_with_weights-0/bias/.ATTRIBUTES/VARIABLE_VALUE"
    size = (root / "ckpt.data-00000-of-00001").stat().st_size
    index = root / "ckpt.index"
    index.write_bytes(write_table(replace_entry(table_pairs(index), key, offset=size - 4)))
    with pytest.raises(FormatError, match="runs past the end") as err:
        lw.open(root / "ckpt")
    assert key in str(err.value) and "ckpt.data-00000-of-00001" in str(err.value)


def test_entry_size_disagrees_with_shape(tmp_path):
    index = copy_fixture("sequential_adam", tmp_path) / "ckpt.index"
    key = "layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    index.write_bytes(write_table(replace_entry(table_pairs(index), key, size=12)))
    with pytest.raises(FormatError, match="needs 432") as err:
        lw.open(index.parent)
    assert key in str(err.value) and str(index) in str(err.value)


def flip_byte(root: Path, ckpt: lw.Checkpoint, key: str) -> Path:
    spec = ckpt.manifest[key]
    shard = root / spec.member
    data = bytearray(shard.read_bytes())
    data[spec.extent.offset + spec.extent.length // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    return shard


def test_tensor_crc_mismatch_is_found_by_the_executor(tmp_path):
    root = copy_fixture("sequential_adam", tmp_path)
    key = "layer_with_weights-2/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    with lw.open(root) as ckpt:
        shard = flip_byte(root, ckpt, key)
    with lw.open(root) as ckpt:  # the metadata is intact: open succeeds, the read fails
        with pytest.raises(FormatError, match="CRC32C") as err:
            ckpt[key].read()
        assert key in str(err.value) and str(shard) in str(err.value)
        for part_size in (100, None):  # parts combined out of order, or one part
            with pytest.raises(FormatError, match="CRC32C"):
                lw.load(ckpt, part_size=part_size, concurrency=4)
        assert ckpt["layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"].read().shape == (3, 3, 3, 4)  # intact
        out = {key: np.zeros(ckpt[key].shape, np.float32)}
        with pytest.raises(lw.LazyWeightsError, match="CRC32C"):
            lw.load(ckpt, out)


def test_slice_crc_mismatch(tmp_path):
    root = copy_fixture("multishard", tmp_path)
    with lw.open(root) as ckpt:
        spec = next(s for s in ckpt.manifest.weights if s.layout == "pieces")
        piece = spec.pieces[-1]
        shard = root / piece.member
        data = bytearray(shard.read_bytes())
        data[piece.extent.offset] ^= 0x10
        shard.write_bytes(bytes(data))
    with lw.open(root) as ckpt, pytest.raises(FormatError, match="CRC32C") as err:
        ckpt[spec.key].read()
    assert spec.key in str(err.value) and str(shard) in str(err.value)


# -- malformed index ----------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.5, 20])
def test_truncated_index(tmp_path, keep):
    index = copy_fixture("sequential_adam", tmp_path) / "ckpt.index"
    data = index.read_bytes()
    index.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(FormatError) as err:
        lw.open(index.parent / "ckpt")
    assert str(index) in str(err.value)
    if keep == 20:
        assert isinstance(err.value, TruncatedFileError)


def test_wrong_footer_magic(tmp_path):
    index = copy_fixture("subclassed", tmp_path) / "ckpt.index"
    data = bytearray(index.read_bytes())
    data[-1] ^= 0xFF
    index.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="magic") as err:
        lw.open(index.parent)
    assert str(index) in str(err.value)


@pytest.mark.parametrize("where", ["data", "index"])
def test_block_crc_failure(tmp_path, where):
    index = copy_fixture("functional_mobilenetv2", tmp_path) / "ckpt.index"
    data = bytearray(index.read_bytes())
    data[30 if where == "data" else len(data) - 60] ^= 0x40
    index.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="CRC32C") as err:
        lw.open(index.parent)
    assert str(index) in str(err.value)


def test_missing_header(tmp_path):
    pairs = [p for p in table_pairs(TF_FIXTURES / "subclassed" / "ckpt.index") if p[0]]
    with pytest.raises(FormatError, match="header"):
        parse_index(pairs, "x.index", "x")
    table = write_table(pairs)
    with pytest.raises(FormatError, match=r"x\.index"):
        read_index(lambda o, n: table[o : o + n], len(table), "x.index", "x")


# -- locating the checkpoint --------------------------------------------------------------------------


def test_spellings_of_one_checkpoint():
    root = str(TF_FIXTURES / "multishard")
    prefix = root + "/ckpt-1"
    for url in (root, root + "/", prefix, prefix + ".index", prefix + ".data-00001-of-00004"):
        with lw.open(url) as ckpt:
            assert ckpt.url == prefix and len(ckpt.weights) == 6
    with pytest.raises(lw.LazyWeightsError, match="nothing"):
        lw.open(root + "/nothing")


@pytest.mark.parametrize(
    "target", ["/etc/ckpt", "../subclassed/ckpt", "sub/../../ckpt", "s3://bucket/ckpt", "C:\\ckpt", "file:///etc/x"]
)
def test_pointer_outside_directory_is_refused(tmp_path, target):
    root = copy_fixture("subclassed", tmp_path)
    (root / "checkpoint").write_text(f'model_checkpoint_path: "{target}"\n')
    with pytest.raises(UnsafeCheckpointError) as err:
        lw.open(root)
    assert str(root / "checkpoint") in str(err.value)


def test_pointer_absolute_inside_directory_is_accepted(tmp_path):
    root = copy_fixture("subclassed", tmp_path)
    (root / "checkpoint").write_text(f'model_checkpoint_path: "{root}/ckpt"\nall_model_checkpoint_paths: "x"\n')
    with lw.open(root) as ckpt:
        assert ckpt.url == f"{root}/ckpt"
    assert pointer_target("gs://b/run", "gs://b/run/ckpt-3", "p") == "gs://b/run/ckpt-3"
    assert pointer_target("gs://b/run", "./ckpt-3", "p") == "gs://b/run/ckpt-3"


def test_pointer_to_absent_prefix(tmp_path):
    root = copy_fixture("subclassed", tmp_path)
    (root / "checkpoint").write_text('model_checkpoint_path: "ckpt-9"\n')
    with pytest.raises(FormatError, match=r"ckpt-9\.index does not exist"):
        lw.open(root)


def test_rewritten_checkpoint_is_reopened_fresh(tmp_path):
    """A second open sees the files as they are now, not a cached member of the first open."""
    root = copy_fixture("subclassed", tmp_path / "a")
    with lw.open(root) as ckpt:
        before = ckpt.manifest
    shutil.rmtree(root)
    shutil.copytree(TF_FIXTURES / "sequential_adam", root)
    with lw.open(root) as ckpt:
        assert ckpt.manifest != before
        assert_matches_oracle(ckpt, "sequential_adam")


@pytest.mark.parametrize("name", ["functional_mobilenetv2", "sequential_adam", "subclassed"])
def test_model_weights_are_the_non_optimizer_tensors(name):
    """``model.json`` (for the Keras 3 rebuild) lists exactly the model's numeric tensors of the checkpoint."""
    weights = json.loads((TF_FIXTURES / name / "model.json").read_text())["weights"]
    with lw.open(TF_FIXTURES / name) as ckpt:
        specs = ckpt.manifest.weights
    numeric_weights = [w for w in weights if w["dtype"] != "string"]
    assert sorted(tuple(w["shape"]) for w in numeric_weights) == sorted(s.shape for s in specs)
    assert sorted(w["dtype"] for w in numeric_weights) == sorted(s.dtype for s in specs)
