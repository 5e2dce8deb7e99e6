"""Large attributes (a model config) are read when asked for, not at open: exactly their bytes, once, pinned.

The files are served by the Range HTTP server, so what the open fetched and what the first access
fetched are the server's own counts; h5py and zipfile read the same values for comparison.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

import lazyweights as lw
from lazyweights.attrs import DEFER_BYTES, Attrs, Deferred
from lazyweights.errors import FormatError, ObjectChangedError, StorageError
from lazyweights.formats.keras_zip import ARCHIVE_HEAD
from lazyweights.manifest import Manifest
from lazyweights.storage.source import HEAD_BYTES

from .conftest import build_keras3_model, save_keras_formats


def _config(nbytes: int) -> dict:
    """A Keras-shaped config of about ``nbytes`` of JSON (a long layer list)."""
    layers = [{"class_name": "Dense", "config": {"name": f"dense_{i}", "units": i % 7}} for i in range(nbytes // 60)]
    return {"class_name": "Sequential", "config": {"name": "big", "layers": layers}}


def _served(path: Path, http_server, http_root: Path) -> str:
    shutil.copy(path, http_root / path.name)
    http_server.reset()
    return f"{http_server.url}/{path.name}"


@pytest.fixture(scope="module")
def big_h5(tmp_path_factory) -> tuple[Path, str]:
    """A Keras-2-style ``.h5``: a vlen ``model_config`` past the first request's bytes, then the weights."""
    path = tmp_path_factory.mktemp("lazy") / "bigconfig.h5"
    text = json.dumps(_config(HEAD_BYTES + (256 << 10)))
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["model_config"] = text
        g = f.create_group("dense").create_group("dense")
        g["kernel:0"] = np.arange(12, dtype="f4").reshape(3, 4)
    return path, text


def test_h5_model_config_is_read_on_first_access(big_h5, http_server, http_root) -> None:
    path, text = big_h5
    url = _served(path, http_server, http_root)
    with lw.open(url, index=False) as ckpt:
        opened = http_server.bytes_sent
        assert opened < len(text)  # the config was not fetched
        assert list(ckpt.manifest.attrs.deferred()) == ["model_config"]
        assert ckpt.attrs["keras_version"] == "2.15.0"  # a small attribute: held, no request
        assert http_server.bytes_sent == opened
        with h5py.File(path, "r") as f:
            assert ckpt.model_config == json.loads(f.attrs["model_config"])
        fetched = http_server.requests[-1][2]
        assert http_server.bytes_sent - opened == fetched == len(text.encode())  # one request, exactly its bytes
        assert ckpt.model_config is ckpt.model_config  # read once
        assert http_server.bytes_sent - opened == fetched
        np.testing.assert_array_equal(ckpt["dense/dense/kernel:0"].read(), np.arange(12, dtype="f4").reshape(3, 4))


def test_the_reference_survives_the_index(big_h5, http_server, http_root, index_cache_dir) -> None:
    path, text = big_h5
    url = _served(path, http_server, http_root)
    with lw.open(url) as first:
        manifest = first.manifest
    doc = json.loads(manifest.to_json())
    assert "model_config" not in doc["attrs"] and "model_config" in doc["deferred_attrs"]
    again = Manifest.from_json(manifest.to_json())
    assert again == manifest and again.attrs.deferred() == manifest.attrs.references()
    http_server.reset()
    with lw.open(url) as ckpt:  # from the cached index: a stat, then the config when asked for
        assert http_server.count("GET") <= 1
        assert ckpt.model_config == json.loads(text)


def test_a_config_read_after_the_file_changed_is_refused(big_h5, http_server, http_root) -> None:
    path, _ = big_h5
    url = _served(path, http_server, http_root)
    with lw.open(url, index=False) as ckpt:
        with h5py.File(http_root / path.name, "a") as f:
            f.attrs["keras_version"] = "2.16.0"
        with pytest.raises(ObjectChangedError):
            ckpt.model_config  # noqa: B018


def test_generic_attrs_equal_h5py_through_both_paths(tmp_path: Path) -> None:
    """A large vlen string attribute anywhere (not only the root) reads as h5py reads it."""
    path = tmp_path / "generic.h5"
    big = "é" + "x" * (DEFER_BYTES + 100)
    with h5py.File(path, "w") as f:
        f.attrs["note"] = big
        f.attrs["training_config"] = json.dumps({"loss": "mse", "pad": "y" * DEFER_BYTES})
        f["w"] = np.ones(3, "f4")
    with lw.open(path) as ckpt, h5py.File(path, "r") as f:
        assert set(ckpt.manifest.attrs.deferred()) == {"note", "training_config"}
        assert ckpt.attrs["note"] == f.attrs["note"] == big
        assert ckpt.training_config == json.loads(f.attrs["training_config"])


def test_a_large_config_that_is_not_json_fails_when_read(tmp_path: Path) -> None:
    """The weights stay usable; asking for the config raises, naming the file and the attribute."""
    path = tmp_path / "badconfig.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = "{" * (DEFER_BYTES + 1)
        f["w"] = np.arange(4, dtype="f4")
    with lw.open(path) as ckpt:
        np.testing.assert_array_equal(ckpt["w"].read(), np.arange(4, dtype="f4"))
        with pytest.raises(FormatError, match=r"badconfig\.h5: attribute 'model_config': not valid JSON"):
            ckpt.model_config  # noqa: B018


# -- .keras archives -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lazykeras")
    return save_keras_formats(build_keras3_model(), root, "m")["keras"]


def _with_config(src: Path, dst: Path, config: bytes, compression: int) -> Path:
    """``src`` with its ``config.json`` replaced (the weights member stored, as Keras writes it)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = config if info.filename == "config.json" else zin.read(info)
            kind = compression if info.filename == "config.json" else zipfile.ZIP_STORED
            zout.writestr(info.filename, data, compress_type=kind)
    return dst


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_keras_config_json_is_read_on_first_access(keras_file, tmp_path, http_server, http_root, compression) -> None:
    config = json.loads(zipfile.ZipFile(keras_file).read("config.json"))
    config["pad"] = np.random.default_rng(0).bytes(ARCHIVE_HEAD).hex()  # past the archive's head; deflated, too
    raw = json.dumps(config).encode()
    path = _with_config(keras_file, tmp_path / f"big{compression}.keras", raw, compression)
    url = _served(path, http_server, http_root)
    stored = zipfile.ZipFile(path).getinfo("config.json").compress_size
    with lw.open(url, index=False) as ckpt:
        opened = http_server.bytes_sent
        assert "model_config" in ckpt.manifest.attrs.deferred()
        assert ckpt.attrs["metadata"]["keras_version"]  # small members are read at open
        assert ckpt.model_config == config
        if compression == zipfile.ZIP_STORED:
            assert opened < len(raw)
            assert http_server.bytes_sent - opened <= stored


def test_a_damaged_config_json_fails_when_read_naming_it(keras_file, tmp_path) -> None:
    good = zipfile.ZipFile(keras_file).read("config.json")
    bad = b"{" + b" " * (DEFER_BYTES + 10) + b"not json"
    path = _with_config(keras_file, tmp_path / "bad.keras", bad, zipfile.ZIP_STORED)
    with lw.open(path) as ckpt:
        assert len(ckpt.keys()) > 0  # the weights are usable
        with pytest.raises(FormatError, match=r"config\.json in the archive: not valid JSON"):
            ckpt.model_config  # noqa: B018
    padded = good[:-1] + b" " * (DEFER_BYTES + 10) + b"}"
    path = _with_config(keras_file, tmp_path / "crc.keras", padded, zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    at = data.index(b" " * 64)
    data[at] = ord("\t")  # still JSON, but not the bytes the archive's CRC-32 is of
    path.write_bytes(bytes(data))
    with lw.open(path) as ckpt, pytest.raises(FormatError, match="checksum"):
        ckpt.model_config  # noqa: B018


# -- the reference itself ------------------------------------------------------------------------------


def test_references_are_checked_when_built_and_read() -> None:
    ref = Deferred(offset=10, length=4, size=4, what="f: attribute 'a'", json=True)
    attrs = Attrs({"a": ref, "b": 1})
    with pytest.raises(StorageError, match="no source is bound"):
        attrs["a"]
    assert attrs.bound(lambda off, n: b"[1] ")["a"] == [1]
    with pytest.raises(FormatError, match="read 3 bytes, expected 4"):
        attrs.bound(lambda off, n: b"[1]")["a"]
    with pytest.raises(FormatError, match="declared"):
        Deferred(offset=0, length=4, size=5, what="f")
    with pytest.raises(FormatError):
        Deferred(offset=0, length=1 << 40, size=1 << 40, what="f", codec="deflate")
    with pytest.raises(FormatError, match="lacks a field"):
        Deferred.from_plain({"offset": 1})


# -- a real Keras model whose config is large ----------------------------------------------------------


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory):
    """150 small Dense layers: Keras writes a config of ~0.1 MB, read when the model is built."""
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), *(keras.layers.Dense(4, name=f"d{i}") for i in range(150))])
    root = tmp_path_factory.mktemp("deep")
    save_keras_formats(model, root, "deep")
    return model, root


@pytest.mark.parametrize("name", ["deep.h5", "deep.keras"])
def test_load_model_reads_a_large_config_when_building(deep_model, http_server, http_root, name) -> None:
    from lazyweights import keras as lwk

    model, root = deep_model
    url = _served(root / name, http_server, http_root)
    with lw.open(url, index=False) as ckpt:
        assert "model_config" in ckpt.manifest.attrs.deferred()  # over 64 KiB: not read at open
    loaded = lwk.load_model(url, compile=False)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    for want, got in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
