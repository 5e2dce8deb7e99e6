"""The TensorFlow checkpoint reading core against checkpoints real TensorFlow wrote (no TensorFlow import here).

Fixtures come from ``scripts/make_tf_fixtures.sh``: each directory holds what
TensorFlow wrote plus ``oracle.json``/``oracle.npz`` with every tensor as
``tf.train.load_checkpoint(...).get_tensor(key)`` returned it.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import cramjam
import numpy as np
import pytest

from lazyweights.errors import FormatError, LazyWeightsError, TruncatedFileError, UnsafeCheckpointError
from lazyweights.formats.tf import protos
from lazyweights.formats.tf.bundle import parse_index, read_index
from lazyweights.formats.tf.checkpoint_dir import pointer_target, resolve_prefix
from lazyweights.formats.tf.crc import crc32c, mask
from lazyweights.formats.tf.files import FsspecFiles, LocalFiles
from lazyweights.formats.tf.graph import OBJECT_GRAPH_KEY, parse_object_graph
from lazyweights.formats.tf.reader import TFCheckpoint
from lazyweights.formats.tf.sstable import MAGIC, read_table
from lazyweights.formats.tf.varint import encode_varint

TF_FIXTURES = Path(__file__).parent / "fixtures" / "tf"
CHECKPOINTS = ["functional_mobilenetv2", "sequential_adam", "subclassed", "multishard"]


class RecordingFiles(LocalFiles):
    """Local files that remember every read, to check which files and how many requests the reader uses."""

    def __init__(self):
        self.reads: list[tuple[str, int, int]] = []

    def read(self, path: str, offset: int, length: int) -> bytes:
        self.reads.append((path, offset, length))
        return super().read(path, offset, length)


def oracle(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    meta = json.loads((TF_FIXTURES / name / "oracle.json").read_text())
    with np.load(TF_FIXTURES / name / "oracle.npz") as npz:
        arrays = {t["key"]: npz[t["npz"]] for t in meta["tensors"]}
    return meta, arrays


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
    meta, expected = oracle(name)
    ckpt = TFCheckpoint.open(str(TF_FIXTURES / name))
    assert ckpt.prefix.endswith("/" + meta["prefix"])
    assert set(ckpt.keys()) == set(expected) | set(meta["skipped"])
    for t in meta["tensors"]:
        entry = ckpt.entry(t["key"])
        assert entry.dtype_name == t["dtype"], t["key"]
        assert list(entry.shape) == t["shape"], t["key"]
        if t["dtype"] == "string":
            value = np.array(ckpt.read_strings(t["key"]), dtype=bytes).reshape(t["shape"])
        else:
            value = ckpt.read(t["key"])
            assert value.dtype.name == t["dtype"]
            if t["dtype"] == "bfloat16":
                value = value.view(np.uint16)
        ref = expected[t["key"]]
        assert value.dtype == ref.dtype and value.shape == ref.shape, t["key"]
        assert np.array_equal(value, ref), t["key"]


def test_dtypes_and_unsupported_listing():
    ckpt = TFCheckpoint.open(str(TF_FIXTURES / "subclassed"))
    names = {k.split("/")[0]: ckpt.entry(k).dtype_name for k in ckpt}
    for attr, dtype in json.loads((TF_FIXTURES / "subclassed" / "model.json").read_text())["variables"].items():
        assert names[attr] == dtype
    assert set(ckpt.unsupported) == {"label/.ATTRIBUTES/VARIABLE_VALUE", OBJECT_GRAPH_KEY}
    assert all("string" in reason for reason in ckpt.unsupported.values())
    with pytest.raises(LazyWeightsError, match="string"):
        ckpt.read("label/.ATTRIBUTES/VARIABLE_VALUE")


def test_small_index_is_one_request_and_parts_are_checked():
    files = RecordingFiles()
    ckpt = TFCheckpoint.open(str(TF_FIXTURES / "functional_mobilenetv2"), files)
    assert [r for r in files.reads if r[0].endswith(".index")] == [(ckpt.prefix + ".index", 0, ckpt.index_size)]
    key = max(ckpt.keys(), key=lambda k: ckpt.entry(k).size)
    files.reads.clear()
    whole = ckpt.read(key)
    assert np.array_equal(ckpt.read(key, part_size=1000), whole)
    assert len(files.reads) == 1 + -(-ckpt.entry(key).size // 1000)


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


def test_fsspec_url():
    import fsspec

    fs = fsspec.filesystem("memory")
    for f in (TF_FIXTURES / "multishard").iterdir():
        fs.pipe(f"/tfckpt/{f.name}", f.read_bytes())
    meta, expected = oracle("multishard")
    ckpt = TFCheckpoint.from_url("memory://tfckpt")
    assert isinstance(ckpt.files, FsspecFiles)
    for t in meta["tensors"]:
        assert np.array_equal(ckpt.read(t["key"]), expected[t["key"]])


# -- object graph -----------------------------------------------------------------------------------


def test_subclassed_paths_use_attribute_names():
    ckpt = TFCheckpoint.open(str(TF_FIXTURES / "subclassed"))
    graph = ckpt.object_graph()
    paths = {p for ps in graph.key_paths.values() for p in ps}
    for layer in ("encoder/dense1", "encoder/dense2", "blocks/0", "blocks/1", "heads/alpha", "heads/beta"):
        assert {f"{layer}/kernel", f"{layer}/bias"} <= paths
    assert {"step", "flags", "half", "brain", "label"} <= paths
    # the current tf-keras Adam lists m and v per trainable variable, not as slots
    assert graph.slots == []
    assert "optimizer/_momentums/0" in graph.key_paths["optimizer/_variables/1/.ATTRIBUTES/VARIABLE_VALUE"]


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_keys_are_shortest_paths(name):
    """TensorFlow names each saved variable by its shortest object path (slots by TensorFlow's slot naming)."""
    ckpt = TFCheckpoint.open(str(TF_FIXTURES / name))
    graph = ckpt.object_graph()
    for key in ckpt:
        if key != OBJECT_GRAPH_KEY:
            assert graph.path(key) + "/.ATTRIBUTES/VARIABLE_VALUE" == key
    assert OBJECT_GRAPH_KEY not in graph.key_paths


def test_functional_paths_include_aliases():
    graph = TFCheckpoint.open(str(TF_FIXTURES / "functional_mobilenetv2")).object_graph()
    paths = graph.key_paths["layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"]
    assert paths[0] == "layer_with_weights-0/kernel" and len(paths) > 1


def test_adam_slots():
    ckpt = TFCheckpoint.open(str(TF_FIXTURES / "sequential_adam"))
    slots = ckpt.object_graph().slots
    model = json.loads((TF_FIXTURES / "sequential_adam" / "model.json").read_text())
    assert len(slots) == 2 * len(model["weights"]) - 2 * 2  # m and v of each trainable weight (not BN statistics)
    assert {s.slot_name for s in slots} == {"m", "v"}
    for slot in slots:
        (original,) = slot.original_keys
        (slot_key,) = slot.slot_keys
        path = original.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE")
        assert slot.optimizer_path == "optimizer"
        assert slot_key == f"{path}/.OPTIMIZER_SLOT/optimizer/{slot.slot_name}/.ATTRIBUTES/VARIABLE_VALUE"
        assert ckpt.read(slot_key).shape == ckpt.read(original).shape


def test_graph_missing_node_is_refused():
    ckpt = TFCheckpoint.open(str(TF_FIXTURES / "sequential_adam"))
    (data,) = ckpt.read_strings(OBJECT_GRAPH_KEY)
    proto = protos.TrackableObjectGraph.FromString(data)
    missing = len(proto.nodes) + 3
    proto.nodes[2].children.add(node_id=missing, local_name="ghost")
    with pytest.raises(FormatError, match=f"ghost.*node {missing}") as err:
        parse_object_graph(proto.SerializeToString(), "ckpt.data-00000-of-00001")
    assert "ckpt.data-00000-of-00001" in str(err.value)
    proto = protos.TrackableObjectGraph.FromString(data)
    next(n for n in proto.nodes if n.slot_variables).slot_variables[0].slot_variable_node_id = missing
    with pytest.raises(FormatError, match=f"node {missing}"):
        parse_object_graph(proto.SerializeToString(), "ckpt.data-00000-of-00001")


# -- shards -----------------------------------------------------------------------------------------


def test_multishard_reads_several_data_files():
    files = RecordingFiles()
    meta, _ = oracle("multishard")
    ckpt = TFCheckpoint.open(str(TF_FIXTURES / "multishard"), files)
    assert ckpt.index.header.num_shards == len(meta["data_files"]) >= 2
    files.reads.clear()
    for t in meta["tensors"]:
        ckpt.read(t["key"])
    touched = {Path(path).name for path, _, _ in files.reads}
    assert len(touched) >= 2 and touched <= set(meta["data_files"])
    assert any(e.slices for e in ckpt.index.entries.values())  # TensorFlow split variables across shards


def test_missing_shard(tmp_path):
    root = copy_fixture("multishard", tmp_path)
    victim = root / "ckpt-1.data-00002-of-00004"
    victim.unlink()
    with pytest.raises(FormatError, match="missing") as err:
        TFCheckpoint.open(str(root))
    assert str(victim) in str(err.value)


def test_entry_past_its_shard(tmp_path):
    root = copy_fixture("subclassed", tmp_path)
    shard = root / "ckpt.data-00000-of-00001"
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(FormatError, match="runs past the end") as err:
        TFCheckpoint.open(str(root))
    assert str(shard) in str(err.value)
    # the same through an index whose entry points past the (intact) shard
    root = copy_fixture("sequential_adam", tmp_path)
    key = "layer_with_weights-0/bias/.ATTRIBUTES/VARIABLE_VALUE"
    size = (root / "ckpt.data-00000-of-00001").stat().st_size
    index = root / "ckpt.index"
    index.write_bytes(write_table(replace_entry(table_pairs(index), key, offset=size - 4)))
    with pytest.raises(FormatError, match="runs past the end") as err:
        TFCheckpoint.open(str(root))
    assert key in str(err.value) and "ckpt.data-00000-of-00001" in str(err.value)


def test_entry_size_disagrees_with_shape(tmp_path):
    index = copy_fixture("sequential_adam", tmp_path) / "ckpt.index"
    key = "layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    index.write_bytes(write_table(replace_entry(table_pairs(index), key, size=12)))
    with pytest.raises(FormatError, match="needs 432") as err:
        TFCheckpoint.open(str(index.parent))
    assert key in str(err.value) and str(index) in str(err.value)


def test_tensor_crc_mismatch(tmp_path):
    root = copy_fixture("sequential_adam", tmp_path)
    ckpt = TFCheckpoint.open(str(root))
    key = "layer_with_weights-2/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    entry = ckpt.entry(key)
    shard = root / "ckpt.data-00000-of-00001"
    data = bytearray(shard.read_bytes())
    data[entry.offset + entry.size // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="CRC32C") as err:
        ckpt.read(key)
    assert key in str(err.value) and str(shard) in str(err.value)
    with pytest.raises(FormatError, match="CRC32C"):
        ckpt.read(key, part_size=100)
    assert ckpt.read(key, verify=False).shape == entry.shape
    ckpt.read("layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE")  # others are intact


# -- malformed index ----------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.5, 20])
def test_truncated_index(tmp_path, keep):
    index = copy_fixture("sequential_adam", tmp_path) / "ckpt.index"
    data = index.read_bytes()
    index.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(FormatError) as err:
        TFCheckpoint.open(str(index.parent / "ckpt"))
    assert str(index) in str(err.value)
    if keep == 20:
        assert isinstance(err.value, TruncatedFileError)


def test_wrong_footer_magic(tmp_path):
    index = copy_fixture("subclassed", tmp_path) / "ckpt.index"
    data = bytearray(index.read_bytes())
    data[-1] ^= 0xFF
    index.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="magic") as err:
        TFCheckpoint.open(str(index.parent))
    assert str(index) in str(err.value)


@pytest.mark.parametrize("where", ["data", "index"])
def test_block_crc_failure(tmp_path, where):
    index = copy_fixture("functional_mobilenetv2", tmp_path) / "ckpt.index"
    data = bytearray(index.read_bytes())
    data[30 if where == "data" else len(data) - 60] ^= 0x40
    index.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="CRC32C") as err:
        TFCheckpoint.open(str(index.parent))
    assert str(index) in str(err.value)


def test_missing_header(tmp_path):
    pairs = [p for p in table_pairs(TF_FIXTURES / "subclassed" / "ckpt.index") if p[0]]
    with pytest.raises(FormatError, match="header"):
        parse_index(pairs, "x.index", "x")
    table = write_table(pairs)
    with pytest.raises(FormatError, match=r"x\.index"):
        read_index(lambda o, n: table[o : o + n], len(table), "x.index", "x")


# -- locating the checkpoint --------------------------------------------------------------------------


def test_resolve_prefix_spellings():
    files = LocalFiles()
    root = str(TF_FIXTURES / "multishard")
    prefix = root + "/ckpt-1"
    assert resolve_prefix(files, root) == prefix
    assert resolve_prefix(files, root + "/") == prefix
    assert resolve_prefix(files, prefix) == prefix
    assert resolve_prefix(files, prefix + ".index") == prefix
    assert resolve_prefix(files, prefix + ".data-00001-of-00004") == prefix
    with pytest.raises(FormatError, match="no TensorFlow checkpoint"):
        resolve_prefix(files, root + "/nothing")


@pytest.mark.parametrize(
    "target", ["/etc/ckpt", "../subclassed/ckpt", "sub/../../ckpt", "s3://bucket/ckpt", "C:\\ckpt", "file:///etc/x"]
)
def test_pointer_outside_directory_is_refused(tmp_path, target):
    root = copy_fixture("subclassed", tmp_path)
    (root / "checkpoint").write_text(f'model_checkpoint_path: "{target}"\n')
    with pytest.raises(UnsafeCheckpointError) as err:
        TFCheckpoint.open(str(root))
    assert str(root / "checkpoint") in str(err.value)


def test_pointer_absolute_inside_directory_is_accepted(tmp_path):
    root = copy_fixture("subclassed", tmp_path)
    (root / "checkpoint").write_text(f'model_checkpoint_path: "{root}/ckpt"\nall_model_checkpoint_paths: "x"\n')
    assert TFCheckpoint.open(str(root)).prefix == f"{root}/ckpt"
    assert pointer_target("gs://b/run", "gs://b/run/ckpt-3", "p") == "gs://b/run/ckpt-3"
    assert pointer_target("gs://b/run", "./ckpt-3", "p") == "gs://b/run/ckpt-3"


def test_pointer_to_absent_prefix(tmp_path):
    root = copy_fixture("subclassed", tmp_path)
    (root / "checkpoint").write_text('model_checkpoint_path: "ckpt-9"\n')
    with pytest.raises(FormatError, match=r"ckpt-9\.index does not exist"):
        TFCheckpoint.open(str(root))


@pytest.mark.parametrize("name", ["functional_mobilenetv2", "sequential_adam", "subclassed"])
def test_model_weights_are_the_non_optimizer_tensors(name):
    """``model.json`` (for the later Keras 3 rebuild) lists exactly the model's tensors of the checkpoint."""
    from lazyweights.formats.tf import TFCheckpoint as Exported

    ckpt = Exported.open(str(TF_FIXTURES / name))
    weights = json.loads((TF_FIXTURES / name / "model.json").read_text())["weights"]
    graph = ckpt.object_graph()
    model_keys = [k for k in ckpt if k != OBJECT_GRAPH_KEY and not graph.path(k).startswith("optimizer")]
    model_keys = [k for k in model_keys if ".OPTIMIZER_SLOT" not in graph.path(k)]
    assert sorted(tuple(w["shape"]) for w in weights) == sorted(ckpt.entry(k).shape for k in model_keys)
    assert sorted(w["dtype"] for w in weights) == sorted(ckpt.entry(k).dtype_name for k in model_keys)
