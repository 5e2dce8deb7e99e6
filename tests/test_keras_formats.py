"""Keras layouts read by lazyweights equal what the real writers put in them."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import lazyweights as lw

from .conftest import KERAS2, keras2_expected


@pytest.mark.parametrize("kind", ["weights", "keras", "h5"])
def test_keras3_weights_in_get_weights_order(keras3_files: dict, kind: str) -> None:
    with lw.open(keras3_files[kind]) as ckpt:
        got = [w.read() for w in ckpt.weights]
        expected = keras3_files["values"]
        assert len(got) == len(expected)
        for name, a, b in zip(keras3_files["names"], got, expected, strict=True):
            assert a.dtype == b.dtype, name
            np.testing.assert_array_equal(a, b, err_msg=name)
        assert ckpt.format == {"weights": "keras-v3", "keras": "keras-zip", "h5": "keras-h5"}[kind]


@pytest.mark.parametrize("kind", ["weights", "keras", "h5"])
def test_keras3_optimizer_state(keras3_files: dict, kind: str) -> None:
    expected = dict(zip(keras3_files["optimizer_names"], keras3_files["optimizer"], strict=True))
    with lw.open(keras3_files[kind]) as ckpt:
        if kind == "h5":  # the legacy writer keys each slot by its variable path, in an order of its own
            got = {w.key.removeprefix("optimizer_weights/"): w.read() for w in ckpt.optimizer_weights}
        else:  # Keras 3 writes optimizer/vars/<i> in the optimizer's variable order
            assert [w.key for w in ckpt.optimizer_weights] == [f"optimizer/vars/{i}" for i in range(len(expected))]
            got = dict(zip(expected, (w.read() for w in ckpt.optimizer_weights), strict=True))
    assert sorted(got) == sorted(expected)
    assert len(expected) > 2
    for name, value in expected.items():
        assert got[name].dtype == value.dtype, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_keras3_bfloat16_is_typed(keras3_files: dict) -> None:
    import ml_dtypes

    with lw.open(keras3_files["weights"]) as ckpt:
        half = [w for w in ckpt.weights if w.dtype == np.dtype(ml_dtypes.bfloat16)]
        assert len(half) == 2
        assert half[0].to_dask().compute().dtype == np.dtype(ml_dtypes.bfloat16)


def test_keras_zip_read_in_place_and_config(keras3_files: dict) -> None:
    with lw.open(keras3_files["keras"]) as ckpt:
        assert ckpt.model_config["class_name"] == "Functional"
        assert ckpt.model_config["config"]["name"] == "small_cnn"
        assert ckpt.attrs["keras_version"]
        # every extent lies inside the stored member, i.e. past the zip's local header
        first = min(e.offset for w in ckpt.weights for e in w.spec.extents())
        assert first > 100


def test_keras3_legacy_h5_attrs(keras3_files: dict) -> None:
    with lw.open(keras3_files["h5"]) as ckpt:
        assert ckpt.model_config["config"]["name"] == "small_cnn"
        assert ckpt.training_config["optimizer_config"]["class_name"] == "Adam"
        assert [la.name for la in ckpt.layers][:3] == ["image", "conv", "bn"]
        assert ckpt["conv/kernel"].key == "conv/conv/kernel"  # unique weight names resolve to keys


def test_keras3_v3_layers_follow_object_paths(keras3_files: dict) -> None:
    with lw.open(keras3_files["weights"]) as ckpt:
        names = [la.name for la in ckpt.layers if la.weights]
        assert names[0] == "layers/conv2d"
        assert "layers/sequential/layers/dense_1" in names
        aliases = {la.name: la.alias for la in ckpt.layers}
        assert aliases["layers/conv2d"] == "conv"


KERAS2_FILES = ["cnn_weights", "cnn_full", "mobilenetv2_weights", "mobilenetv2_full", "long_names_weights"]


@pytest.mark.parametrize("name", KERAS2_FILES)
def test_keras2_order_matches_tf_keras(name: str) -> None:
    """Topological order = tf-keras's model.weights order recorded by the generator."""
    expected = keras2_expected(f"{name}.h5")
    with lw.open(KERAS2 / f"{name}.h5") as ckpt:
        assert ckpt.format == "keras-h5"
        assert [w.name for w in ckpt.weights] == expected["weight_names"]
        assert [list(w.shape) for w in ckpt.weights] == [list(s) for s in expected["shapes"]]
        assert [la.name for la in ckpt.layers] == expected["layer_names"]


@pytest.mark.parametrize("name", KERAS2_FILES)
def test_keras2_values_equal_h5py(name: str) -> None:
    path = KERAS2 / f"{name}.h5"
    loaded = lw.load(path, max_memory="1MiB")
    with h5py.File(path) as f:
        root = f.get("model_weights", f)
        for key, value in loaded.items():
            np.testing.assert_array_equal(value, root[key][()], err_msg=key)
    assert list(loaded) == [f"{layer}/{w}" for layer, w in _keras2_pairs(path)]


def _keras2_pairs(path):
    with lw.open(path) as ckpt:
        return [(w.layer, w.name) for w in ckpt.weights]


def test_keras2_full_model_attrs_and_optimizer() -> None:
    expected = keras2_expected("cnn_full.h5")
    with lw.open(KERAS2 / "cnn_full.h5") as ckpt:
        assert ckpt.model_config["class_name"] in ("Functional", "Model")
        assert ckpt.training_config["loss"]
        assert [w.name for w in ckpt.optimizer_weights] == expected["optimizer_weight_names"]
        assert ckpt.optimizer_weights[0].read().shape == ()


def test_keras2_split_layer_names() -> None:
    with h5py.File(KERAS2 / "long_names_weights.h5") as f:
        assert "layer_names" not in f.attrs and "layer_names1" in f.attrs  # the fixture really is split
    with lw.open(KERAS2 / "long_names_weights.h5") as ckpt:
        assert len(ckpt.layers) == len(keras2_expected("long_names_weights.h5")["layer_names"])


def test_keras1_names(tmp_path) -> None:
    """Keras 1 era naming (``conv1_W:0``), as in the classic ResNet50 weights file; hand-made (no writer left)."""
    path = tmp_path / "keras1.h5"
    rng = np.random.default_rng(0)
    layers = {
        "input_1": [],
        "conv1": [("conv1_W:0", (7, 7, 3, 8)), ("conv1_b:0", (8,))],
        "fc1000": [("fc1000_W:0", (8, 10))],
    }
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in layers]
        f.attrs["keras_version"] = b"1.2.2"
        for lname, ws in layers.items():
            g = f.create_group(lname)
            g.attrs["weight_names"] = [w.encode() for w, _ in ws] if ws else np.zeros((0,), "f8")
            for wname, shape in ws:
                g[wname] = rng.standard_normal(shape).astype("f4")
    with lw.open(path) as ckpt:
        assert [w.key for w in ckpt.weights] == ["conv1/conv1_W:0", "conv1/conv1_b:0", "fc1000/fc1000_W:0"]
        assert [la.name for la in ckpt.layers] == ["input_1", "conv1", "fc1000"]
        assert ckpt.attrs["keras_version"] == "1.2.2"
        with h5py.File(path) as f:
            np.testing.assert_array_equal(ckpt["conv1_W:0"].read(), f["conv1/conv1_W:0"][()])
