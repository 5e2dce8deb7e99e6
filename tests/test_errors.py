"""Bad input: each gets a clear LazyWeightsError naming the file, the weight and what was expected."""

from __future__ import annotations

import pickle
import re
import struct
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

import lazyweights as lw


@pytest.fixture
def small_h5(tmp_path):
    path = tmp_path / "small.h5"
    with h5py.File(path, "w", libver="earliest") as f:
        f["dense/kernel"] = np.arange(12, dtype="f4").reshape(3, 4)
        f["dense/bias"] = np.arange(4, dtype="f4")
    return path


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (pickle.dumps({"w": [1, 2]}, protocol=4), "pickle"),
        (struct.pack("<Q", 20) + b'{"__metadata__":{}}' + b"\0" * 8, "safetensors"),
        (b"<html><body>403 Forbidden</body></html>", "HTML"),
        (b"", "empty"),
        (b"\x00\x01garbage" * 10, "unrecognised"),
    ],
)
def test_not_a_checkpoint(tmp_path, content, words) -> None:
    path = tmp_path / "thing.h5"
    path.write_bytes(content)
    with pytest.raises(lw.FormatError, match=words) as info:
        lw.open(path)
    assert str(path) in str(info.value)


def test_zip_that_is_not_keras(tmp_path) -> None:
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps([1]))
    with pytest.raises(lw.FormatError, match=r"data\.pkl"):
        lw.open(path)


def test_truncated_file(small_h5) -> None:
    data = small_h5.read_bytes()
    small_h5.write_bytes(data[: len(data) - 100])
    with pytest.raises(lw.TruncatedFileError, match=r"ends at byte \d+, but it has \d+ bytes \(100 missing\)"):
        lw.open(small_h5)


def test_truncated_inside_superblock(small_h5) -> None:
    small_h5.write_bytes(small_h5.read_bytes()[:20])
    with pytest.raises(lw.TruncatedFileError, match="superblock"):
        lw.open(small_h5)


def test_missing_key_suggests(small_h5) -> None:
    with lw.open(small_h5) as ckpt, pytest.raises(lw.MissingKeyError, match=r"'dense/kernl'.*dense/kernel") as info:
        ckpt["dense/kernl"]
    assert isinstance(info.value, KeyError)


def test_out_wrong_shape_writes_nothing(small_h5) -> None:
    out = {"dense/bias": np.zeros(4, "f4"), "dense/kernel": np.zeros((4, 3), "f4")}
    with pytest.raises(lw.MismatchError, match=r"dense/kernel.*\(3, 4\).*\(4, 3\)"):
        lw.load(small_h5, out=out)
    assert not out["dense/bias"].any()  # validated before any read


def test_out_wrong_dtype(small_h5) -> None:
    with pytest.raises(lw.MismatchError, match=r"dense/bias.*float32.*int32"):
        lw.load(small_h5, out={"dense/bias": np.zeros(4, "i4")})


def test_out_missing_key_and_wrong_length(small_h5) -> None:
    with pytest.raises(lw.MissingKeyError, match="dense/gamma"):
        lw.load(small_h5, out={"dense/gamma": np.zeros(4, "f4")})
    with pytest.raises(lw.MismatchError, match="holds 2 weights but `out` has 1"):
        lw.load(small_h5, out=[np.zeros(4, "f4")])


def _patch_eof(path, new_size: int) -> None:
    """Rewrite a version-0 superblock's end-of-file address (8-byte offsets, at byte 40)."""
    data = bytearray(path.read_bytes())
    assert data[8] == 0 and data[13] == 8
    struct.pack_into("<Q", data, 40, new_size)
    path.write_bytes(bytes(data[:new_size]))


def test_dataset_larger_than_file_refused_before_allocating(tmp_path) -> None:
    """A contiguous dataset past the end: libhdf5 refuses to open it; the error names it."""
    path = tmp_path / "big.h5"
    with h5py.File(path, "w", libver="earliest") as f:
        f.create_dataset("meta_first", data=np.zeros(1, "f4"))
        f.create_dataset("huge", shape=(1 << 20,), dtype="f4")[...] = 1.0
    with h5py.File(path) as f:
        offset = f["huge"].id.get_offset()
    _patch_eof(path, offset + 1024)  # superblock agrees with the size; the dataset runs past the end
    with pytest.raises(lw.FormatError, match=r"/huge"):
        lw.open(path)


def test_chunk_past_end_refused_before_allocating(tmp_path, monkeypatch) -> None:
    """Chunk addresses are not checked by libhdf5 at open; the manifest refuses them before any read."""
    path = tmp_path / "chunked.h5"
    with h5py.File(path, "w", libver="earliest") as f:
        f.create_dataset("huge", shape=(1 << 20,), dtype="f4", chunks=(1 << 16,))[...] = 1.0
    with h5py.File(path) as f:
        last = max(f["huge"].id.get_chunk_info(i).byte_offset for i in range(16))
    _patch_eof(path, last + 16)
    with pytest.raises(lw.FormatError, match=r"/huge .*chunk \(\d+,\): range 0x[0-9a-f]+\+\d+ beyond end of file"):
        lw.open(path)  # the walk checks every chunk address as it reads the chunk index
    monkeypatch.setenv("LAZYWEIGHTS_HDF5_METADATA", "h5py")  # libhdf5 does not: the manifest does
    with pytest.raises(lw.FormatError, match=r"'huge' declares bytes \[\d+, \d+\) but the file has \d+ bytes"):
        lw.open(path)


def test_external_link_refused(tmp_path) -> None:
    other = tmp_path / "secret.h5"
    with h5py.File(other, "w") as f:
        f["data"] = np.arange(3.0)
    path = tmp_path / "linky.h5"
    with h5py.File(path, "w") as f:
        f["ok"] = np.arange(3.0)
        f["stolen"] = h5py.ExternalLink(str(other), "/data")
    with pytest.raises(lw.UnsafeCheckpointError, match="external link"):
        lw.open(path)


def test_external_link_as_keras_layer_refused(tmp_path) -> None:
    other = tmp_path / "secret.h5"
    with h5py.File(other, "w") as f:
        f.create_group("dense").attrs["weight_names"] = [b"kernel:0"]
        f["dense/kernel:0"] = np.arange(3.0)
    path = tmp_path / "keras.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"dense"]
        f["dense"] = h5py.ExternalLink(str(other), "/dense")
    with pytest.raises(lw.UnsafeCheckpointError, match="dense"):
        lw.open(path)


def test_external_storage_refused(tmp_path) -> None:
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.arange(4, dtype="f4").tobytes())
    path = tmp_path / "ext.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("w", shape=(4,), dtype="f4", external=[(str(raw), 0, 16)])
    with pytest.raises(lw.UnsafeCheckpointError, match="external files"):
        lw.open(path)


def test_virtual_dataset_refused(tmp_path) -> None:
    src = tmp_path / "src.h5"
    with h5py.File(src, "w") as f:
        f["d"] = np.arange(4.0)
    layout = h5py.VirtualLayout(shape=(4,), dtype="f8")
    layout[:] = h5py.VirtualSource(str(src), "d", shape=(4,))
    path = tmp_path / "vds.h5"
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("v", layout)
    with pytest.raises(lw.UnsafeCheckpointError, match="virtual"):
        lw.open(path)


def test_file_changed_during_load_names_written_weights(tmp_path) -> None:
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        for i in range(4):
            f[f"w{i}"] = np.full(1 << 16, i, dtype="f4")
    out = {f"w{i}": np.zeros(1 << 16, "f4") for i in range(4)}
    with lw.open(path) as ckpt:
        last = max(ckpt.weights, key=lambda w: w.spec.extent.offset)
        with open(path, "r+b") as f:
            f.truncate(last.spec.extent.offset + 8)  # the file shrinks after open
        with pytest.raises(lw.PartialLoadError, match="load failed at weight") as info:
            ckpt.load(out=out, concurrency=1)
    err = info.value
    assert last.key not in err.written
    assert set(err.written) | set(err.partial) >= {k for k in out if k != last.key}
    assert isinstance(err.__cause__, lw.StorageError)
    for key in err.written:
        np.testing.assert_array_equal(out[key], np.full(1 << 16, int(key[1]), "f4"))


def test_errors_are_builtin_subclasses() -> None:
    assert issubclass(lw.MissingKeyError, KeyError)
    assert issubclass(lw.StorageError, OSError)
    assert issubclass(lw.FormatError, ValueError)
    assert issubclass(lw.TruncatedFileError, lw.FormatError)


def test_open_while_h5py_holds_the_file(small_h5) -> None:
    with h5py.File(small_h5, "r") as held, lw.open(small_h5) as ckpt:  # default locking in the caller's handle
        np.testing.assert_array_equal(ckpt["dense/bias"].read(), held["dense/bias"][()])


HOSTILE = Path(__file__).parent / "fixtures" / "hostile"


@pytest.mark.parametrize("name", sorted(p.name for p in HOSTILE.glob("*.keras")))
def test_damaged_keras_archives_are_format_errors(name: str) -> None:
    """Fuzzer-found .keras archives (bad CRCs, versions, methods, names, offsets, a config.json deflate bomb):
    each is a FormatError naming the file, never zipfile's, zlib's or the codec's own exception."""
    with pytest.raises(lw.FormatError, match=re.escape(name)):
        lw.open(HOSTILE / name, index=False)
