"""Keras 3 files of every shape Keras writes: subclassed models, assets, sharded weights, mismatches and bombs.

Every file is written by Keras in the test; every result is compared with
Keras's own load of the same file (``Model.load_weights``,
``keras.saving.load_model``), locally and from a moto S3 server.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

import lazyweights as lw
from lazyweights import keras as lwk

from .stores import s3_server

keras = pytest.importorskip("keras")

X = np.random.default_rng(0).standard_normal((4, 6)).astype("f4")


class Block(keras.layers.Layer):
    """Layers held in a list, a tuple and a dict attribute (Keras saves them as containers)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # assigned in name order: Keras saves attributes sorted by name, get_weights() lists them as assigned
        self.heads = {"first": keras.layers.Dense(3), "second": keras.layers.Dense(3)}
        self.pair = (keras.layers.Dense(4), keras.layers.LayerNormalization())
        self.stack = [keras.layers.Dense(5), keras.layers.Dense(4, activation="tanh")]

    def call(self, x):
        for layer in self.stack:
            x = layer(x)
        x = self.pair[1](self.pair[0](x))
        return self.heads["first"](x) + self.heads["second"](x)


class SubModel(keras.Model):
    """A subclassed model: layers in attributes (one a nested Block), saved as top-level groups."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense1 = keras.layers.Dense(6)
        self.encoder = Block()
        self.norm = keras.layers.BatchNormalization()

    def call(self, x):
        return self.norm(self.encoder(self.dense1(x)))


CUSTOM = {"SubModel": SubModel, "Block": Block}


def _sub_model(seed: int) -> SubModel:
    keras.utils.set_random_seed(seed)
    model = SubModel()
    model(X)
    rng = np.random.default_rng(seed)
    for v in model.weights:  # batch-norm statistics too: every variable holds something distinct
        v.assign(rng.standard_normal(tuple(v.shape)).astype("f4"))
    return model


@pytest.fixture(scope="module")
def sub_files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("subclassed")
    model = _sub_model(0)
    model.save_weights(root / "sub.weights.h5")
    model.save(root / "sub.keras")
    return {"weights": root / "sub.weights.h5", "keras": root / "sub.keras", "model": model}


@pytest.fixture(scope="module")
def s3():
    with s3_server() as store:
        store.bucket("lw-v3", versioned=True)
        yield store


def _upload(s3, *paths: Path) -> str:
    """Put the files in the bucket; the URL of the first."""
    fs = s3.fs()
    for path in paths:
        fs.put(str(path), f"lw-v3/{path.parent.name}/{path.name}")
    return f"s3://lw-v3/{paths[0].parent.name}/{paths[0].name}"


def _predict(model) -> np.ndarray:
    return np.asarray(model.predict(X, verbose=0))


# -- subclassed models ---------------------------------------------------------------------


def test_subclassed_weights_h5_is_keras_v3_in_get_weights_order(sub_files) -> None:
    with lw.open(sub_files["weights"]) as ckpt:
        assert ckpt.format == "keras-v3"
        keys = [w.key for w in ckpt.weights]
        values = [w.read() for w in ckpt.weights]
    assert "dense1/vars/0" in keys and "encoder/stack/dense/vars/0" in keys and "encoder/heads/dense_1/vars/1" in keys
    expected = sub_files["model"].get_weights()
    assert len(values) == len(expected)
    for ours, theirs in zip(values, expected, strict=True):
        np.testing.assert_array_equal(ours, theirs)


class Unsorted(keras.Model):
    """Attributes assigned out of name order: the file (save traversal, by name) and get_weights() differ."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.zeta = keras.layers.Dense(5)
        self.blocks = [Block(), Block()]
        self.alpha = keras.layers.Dense(3)
        self.heads = {"b": keras.layers.Dense(2), "a": keras.layers.Dense(1)}

    def call(self, x):
        x = self.alpha(self.blocks[1](self.blocks[0](self.zeta(x))))
        return self.heads["a"](x) + self.heads["b"](x)[:, :1]


@pytest.mark.parametrize("kind", ["weights", "keras"])
def test_weight_keys_follow_get_weights_order(tmp_path, kind) -> None:
    keras.utils.set_random_seed(1)
    model = Unsorted()
    model(X)
    path = tmp_path / ("u.weights.h5" if kind == "weights" else "u.keras")
    model.save_weights(path) if kind == "weights" else model.save(path)
    expected = model.get_weights()
    fresh = Unsorted()
    fresh(X)
    with lw.open(path) as ckpt:
        shapes = [w.shape for w in ckpt.weights]
        keys = lwk.weight_keys(fresh, ckpt)
        values = [ckpt[key].read() for key in keys]
    assert shapes != [v.shape for v in expected]  # the file's own order is not get_weights()'s here
    assert len(values) == len(expected)
    for ours, theirs in zip(values, expected, strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_weight_keys_none_where_the_file_has_none(tmp_path) -> None:
    model = _two_dense(4)
    path = tmp_path / "small.weights.h5"
    model.save_weights(path)
    bigger = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(4), keras.layers.Dense(4)])
    keys = lwk.weight_keys(bigger, path)
    with lw.open(path) as ckpt:
        assert keys[:4] == [w.key for w in ckpt.weights] and keys[4:] == [None, None]
    model.save(tmp_path / "small.h5")
    with pytest.raises(ValueError, match="Keras 3 object paths"):
        lwk.weight_keys(model, tmp_path / "small.h5")


@pytest.mark.parametrize("kind", ["weights", "keras"])
def test_subclassed_load_weights_equals_keras(sub_files, kind) -> None:
    ours, theirs = _sub_model(1), _sub_model(1)
    report = lwk.load_weights(ours, sub_files[kind], max_memory="64MiB")
    theirs.load_weights(sub_files[kind])
    np.testing.assert_array_equal(_predict(ours), _predict(theirs))
    np.testing.assert_array_equal(_predict(ours), _predict(sub_files["model"]))
    assert len(report.loaded) == len(theirs.weights) and not report.skipped


def test_subclassed_load_model_equals_keras(sub_files) -> None:
    ours = lwk.load_model(sub_files["keras"], custom_objects=CUSTOM)
    theirs = keras.saving.load_model(sub_files["keras"], custom_objects=CUSTOM)
    assert type(ours) is SubModel
    np.testing.assert_array_equal(_predict(ours), _predict(theirs))


def test_subclassed_from_s3_equals_keras(sub_files, s3) -> None:
    weights_url = _upload(s3, sub_files["weights"])
    keras_url = _upload(s3, sub_files["keras"])
    expected = _predict(keras.saving.load_model(sub_files["keras"], custom_objects=CUSTOM))
    ours = _sub_model(2)
    lwk.load_weights(ours, weights_url, storage_options=s3.options, max_memory="64MiB")
    np.testing.assert_array_equal(_predict(ours), expected)
    model = lwk.load_model(keras_url, custom_objects=CUSTOM, storage_options=s3.options, max_memory="64MiB")
    np.testing.assert_array_equal(_predict(model), expected)


def test_plain_hdf5_with_groups_stays_generic(tmp_path) -> None:
    """A file with a dataset outside any ``vars`` group is not Keras's: it is read as generic HDF5."""
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["encoder/vars/0"] = np.ones(3, "f4")
        f["encoder/bias"] = np.zeros(2, "f4")
    with lw.open(path) as ckpt:
        assert ckpt.format == "hdf5"


# -- assets ------------------------------------------------------------------------------------


class Table(keras.layers.Layer):
    """A layer whose only state is an asset file (as vocabularies are): ``save_assets``/``load_assets``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.table = np.zeros(4, "f4")

    def call(self, x):
        return x * keras.ops.convert_to_tensor(self.table)

    def save_assets(self, dir_path):
        np.save(Path(dir_path) / "table.npy", self.table)

    def load_assets(self, dir_path):
        self.table = np.load(Path(dir_path) / "table.npy", allow_pickle=False)


def _table_model(path: Path) -> Path:
    inp = keras.Input((6,))
    out = Table(name="table")(keras.layers.Dense(4, name="dense")(inp))
    model = keras.Model(inp, out)
    model.get_layer("table").table = np.array([1.5, -2.0, 3.25, 9.0], "f4")
    model.save(path)
    return path


def test_assets_restored_like_keras(tmp_path, monkeypatch) -> None:
    """The table lives only in the archive's assets: without them the model predicts zeros."""
    path = _table_model(tmp_path / "table.keras")
    theirs = keras.saving.load_model(path, custom_objects={"Table": Table})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    ours = lwk.load_model(path, custom_objects={"Table": Table})
    assert not list(scratch.iterdir())  # the assets' temporary directory is gone
    np.testing.assert_array_equal(ours.get_layer("table").table, [1.5, -2.0, 3.25, 9.0])
    np.testing.assert_array_equal(_predict(ours), _predict(theirs))
    assert np.abs(_predict(ours)).sum() > 0


def test_assets_from_s3(tmp_path, s3) -> None:
    path = _table_model(tmp_path / "table_s3.keras")
    theirs = keras.saving.load_model(path, custom_objects={"Table": Table})
    url = _upload(s3, path)
    ours = lwk.load_model(url, custom_objects={"Table": Table}, storage_options=s3.options, max_memory="64MiB")
    np.testing.assert_array_equal(_predict(ours), _predict(theirs))


# -- sharded weights -----------------------------------------------------------------------------


def _wide_model(seed: int):
    """A kernel of 536,000 bytes: with 0.0005 GB (536,870-byte) shards its bias spills into the next shard."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((335,))
    x = keras.layers.Dense(400, name="a")(inp)
    x = keras.layers.Dense(330, name="b")(x)
    out = keras.layers.Dense(7, name="c")(x)
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("sharded")
    model = _wide_model(0)
    model.save_weights(root / "wide.weights.json", max_shard_size=0.0005)
    index = json.loads((root / "wide.weights.json").read_text())
    return {"index": root / "wide.weights.json", "root": root, "map": index["weight_map"], "model": model}


def test_sharded_index_opens_as_one_checkpoint(sharded) -> None:
    shards = sorted({n for v in sharded["map"].values() for n in ([v] if isinstance(v, str) else v)})
    assert len(shards) >= 3 and any(isinstance(v, list) for v in sharded["map"].values())  # one object split
    with lw.open(sharded["index"]) as ckpt:
        assert ckpt.format == "keras-sharded"
        assert {w.spec.member for w in ckpt.weights} == set(shards)
        values = ckpt.load(max_memory="1MiB")
        ordered = [values[w.key] for w in ckpt.weights]
    for ours, theirs in zip(ordered, sharded["model"].get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_sharded_load_weights_equals_keras(sharded) -> None:
    ours, theirs = _wide_model(1), _wide_model(1)
    lwk.load_weights(ours, sharded["index"], max_memory="64MiB")
    theirs.load_weights(sharded["index"])
    x = np.random.default_rng(1).standard_normal((2, 335)).astype("f4")
    np.testing.assert_array_equal(ours.predict(x, verbose=0), theirs.predict(x, verbose=0))
    np.testing.assert_array_equal(ours.predict(x, verbose=0), sharded["model"].predict(x, verbose=0))


def test_sharded_from_s3_equals_keras(sharded, s3) -> None:
    files = [sharded["index"], *sorted(sharded["root"].glob("wide_*.weights.h5"))]
    url = _upload(s3, *files)
    ours, theirs = _wide_model(2), _wide_model(2)
    report = lwk.load_weights(ours, url, storage_options=s3.options, max_memory="64MiB")
    theirs.load_weights(sharded["index"])
    x = np.random.default_rng(2).standard_normal((2, 335)).astype("f4")
    np.testing.assert_array_equal(ours.predict(x, verbose=0), theirs.predict(x, verbose=0))
    assert len(report.loaded) == 6


def test_sharded_missing_shard_is_a_format_error(sharded, tmp_path) -> None:
    index = tmp_path / "gone.weights.json"
    index.write_text(sharded["index"].read_text())  # the shards it names are not beside this copy
    with pytest.raises(lw.FormatError, match="does not exist"):
        lw.open(index)


def test_sharded_shard_names_stay_beside_the_index(tmp_path) -> None:
    index = tmp_path / "evil.weights.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"/vars": "../outside.weights.h5"}}))
    with pytest.raises(lw.FormatError, match="not a file beside"):
        lw.open(index)


# -- shapes checked before reading; skip_mismatch -------------------------------------------------


def _two_dense(units: int):
    inp = keras.Input((4,))
    out = keras.layers.Dense(units, name="second")(keras.layers.Dense(3, name="first")(inp))
    return keras.Model(inp, out)


def test_shape_bomb_raises_value_error_before_reading(tmp_path) -> None:
    """A dataset declaring 2**50 elements (stored: nothing) is refused as Keras refuses it, not allocated."""
    model = _two_dense(2)
    path = tmp_path / "bomb.weights.h5"
    model.save_weights(path)
    with h5py.File(path, "a") as f:
        del f["layers/dense_1/vars/0"]
        f.create_dataset("layers/dense_1/vars/0", shape=(2**50,), dtype="f4", chunks=(1 << 16,))
    with pytest.raises(ValueError, match="shape bomb"):
        _two_dense(2).load_weights(path)
    with pytest.raises(ValueError) as caught:
        lwk.load_weights(_two_dense(2), path)
    assert isinstance(caught.value, lw.LazyWeightsError) and "bomb" in str(caught.value)


def test_skip_mismatch_reads_nothing_it_skips(tmp_path) -> None:
    path = tmp_path / "two.weights.h5"
    saved = _two_dense(2)
    saved.save_weights(path)
    ours, theirs = _two_dense(5), _two_dense(5)
    theirs.set_weights(ours.get_weights())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = lwk.load_weights(ours, path, skip_mismatch=True)
        theirs.load_weights(path, skip_mismatch=True)
    for a, b in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert report.loaded == ["layers/dense/vars/0", "layers/dense/vars/1"]
    assert report.bytes_loaded == (4 * 3 + 3) * 4
    assert [key for key, _ in report.skipped] == ["layers/dense_1/vars/0", "layers/dense_1/vars/1"]
    assert all("shape" in reason and len(reason) < 400 and "\n" not in reason for _, reason in report.skipped)


def test_sharded_shard_changed_after_open_is_refused(sharded, tmp_path) -> None:
    """Each shard is pinned when the index is opened; a shard replaced since is refused, not read."""
    import os
    import shutil

    for path in sharded["root"].iterdir():
        shutil.copy(path, tmp_path / path.name)
    with lw.open(tmp_path / "wide.weights.json") as ckpt:
        shard = tmp_path / ckpt.weights[-1].spec.member
        stat = shard.stat()
        os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        with pytest.raises(lw.ObjectChangedError):
            ckpt.load()
