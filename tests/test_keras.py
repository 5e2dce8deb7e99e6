"""lazyweights.keras against Keras itself: same files, same models, same results and errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import lazyweights as lw
from lazyweights import keras as lwk

from .conftest import KERAS2, build_keras3_model, keras2_expected

keras = pytest.importorskip("keras")  # installed by `make test`; listed for clarity


def _values(model) -> list[np.ndarray]:
    return [np.asarray(v) for v in model.weights]


def _assert_same(a, b) -> None:
    va, vb = _values(a), _values(b)
    assert len(va) == len(vb)
    for x, y in zip(va, vb, strict=True):
        np.testing.assert_array_equal(x, y)


def _fresh(seed: int = 1):
    model = build_keras3_model(seed)
    return model


@pytest.mark.parametrize("kind", ["h5", "weights", "keras"])
def test_load_weights_equals_keras(keras3_files, kind) -> None:
    ours, theirs = _fresh(), _fresh()
    before = _values(ours)
    report = lwk.load_weights(ours, keras3_files[kind], max_memory="64KiB")
    if kind == "h5":  # Keras 3 writes bfloat16 into legacy .h5 as opaque data it cannot read back itself
        with pytest.raises(ValueError, match="void16"):
            theirs.load_weights(keras3_files[kind])
        theirs = keras3_files["model"]
    else:
        theirs.load_weights(keras3_files[kind])
    _assert_same(ours, theirs)
    assert any(not np.array_equal(a, b) for a, b in zip(before, _values(ours), strict=True))  # it did change
    assert report.bytes_loaded > 0 and report.loaded


def test_optimizer_state_via_weights_h5_equals_keras(keras3_files) -> None:
    ours, theirs = _fresh(), _fresh()
    lwk.load_weights(ours, keras3_files["weights"])
    theirs.load_weights(keras3_files["weights"])
    _assert_same_slots(ours.optimizer, theirs.optimizer)


def _keras2_cnn():
    """The Keras 3 twin of the tf-keras fixture CNN (architecture from the file's own config)."""
    return lwk.load_model(KERAS2 / "cnn_full.h5", compile=False)


def test_keras2_weights_into_keras3_model_equals_keras() -> None:
    ours, theirs = _keras2_cnn(), _keras2_cnn()
    for v in ours.weights + theirs.weights:
        v.assign(np.zeros(v.shape, v.dtype))
    lwk.load_weights(ours, KERAS2 / "cnn_weights.h5")
    theirs.load_weights(KERAS2 / "cnn_weights.h5")
    _assert_same(ours, theirs)
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 3), dtype=np.float32)
    expected = np.array(keras2_expected("cnn_weights.h5")["predictions"])
    np.testing.assert_allclose(ours.predict(x, verbose=0), expected, atol=1e-5)


def test_mobilenetv2_keras2_weights_into_keras3_application() -> None:
    def app():
        return keras.applications.MobileNetV2(alpha=0.35, weights=None, input_shape=(32, 32, 3), classes=10)

    ours, theirs = app(), app()
    lwk.load_weights(ours, KERAS2 / "mobilenetv2_weights.h5", max_memory="256KiB")
    theirs.load_weights(KERAS2 / "mobilenetv2_weights.h5")
    _assert_same(ours, theirs)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3), dtype=np.float32)
    expected = np.array(keras2_expected("mobilenetv2_weights.h5")["predictions"])
    np.testing.assert_allclose(ours.predict(x, verbose=0), expected, atol=1e-4)


def _renamed_model(seed: int, fc_units: int = 12, rename: dict | None = None):
    """The conftest model with some layers renamed or resized (for by_name / skip_mismatch)."""
    rename = rename or {}
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, name=rename.get("conv", "conv"))(inp)
    x = keras.layers.BatchNormalization(name=rename.get("bn", "bn"))(x)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(fc_units, name="fc")(x)
    x = keras.layers.LayerNormalization(name="ln")(x)
    return keras.Model(inp, x)


def test_by_name_ignores_missing_and_equals_keras(keras3_files) -> None:
    ours, theirs = (_renamed_model(2, rename={"conv": "other_conv"}) for _ in range(2))
    theirs.set_weights(ours.get_weights())
    before_conv = np.asarray(ours.get_layer("other_conv").kernel).copy()
    lwk.load_weights(ours, keras3_files["h5"], by_name=True)
    theirs.load_weights(keras3_files["h5"], by_name=True)
    _assert_same(ours, theirs)
    np.testing.assert_array_equal(np.asarray(ours.get_layer("other_conv").kernel), before_conv)
    with lw.open(keras3_files["h5"]) as ckpt:
        np.testing.assert_array_equal(np.asarray(ours.get_layer("dw").kernel), ckpt["dw/kernel"].read())


def test_by_name_shape_mismatch_error_and_skip(keras3_files) -> None:
    model = _renamed_model(3, fc_units=13)
    with pytest.raises(
        lw.MismatchError,
        match=r"named fc\) for weight fc/kernel .*expects shape \(4, 13\)\. Received .* shape \(4, 12\)",
    ):
        lwk.load_weights(model, keras3_files["h5"], by_name=True)
    keras_model = _renamed_model(3, fc_units=13)
    keras_model.set_weights(model.get_weights())
    with pytest.warns(UserWarning, match=r"fc/fc/kernel.*fc/fc/bias"):
        report = lwk.load_weights(model, keras3_files["h5"], by_name=True, skip_mismatch=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keras_model.load_weights(keras3_files["h5"], by_name=True, skip_mismatch=True)
    _assert_same(model, keras_model)
    skipped = {key for key, _ in report.skipped}
    assert {"fc/fc/kernel", "fc/fc/bias", "ln/ln/gamma", "ln/ln/beta"} <= skipped


def test_topological_count_mismatch_messages(keras3_files) -> None:
    small = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="only")])
    with pytest.raises(ValueError, match="Layer count mismatch") as theirs:
        small.load_weights(keras3_files["h5"])
    with pytest.raises(lw.MismatchError, match="containing 6 layers into a model with 1 layers") as ours:
        lwk.load_weights(small, keras3_files["h5"])
    assert "Model expected 1 layers, found 6 saved layers" in str(theirs.value)
    assert "Model expected 1 layers, found 6 saved layers" in str(ours.value)


def test_weight_count_mismatch_names_both_layers(tmp_path) -> None:
    def model(bias: bool, name: str):
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, use_bias=bias, name=name)])

    saved = tmp_path / "m.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model(True, "saved_dense").save(saved)
    with pytest.raises(lw.MismatchError, match=r"named no_bias in the current model, saved_dense in the save file"):
        lwk.load_weights(model(False, "no_bias"), saved)


def test_reshape(tmp_path) -> None:
    saved = tmp_path / "flat.h5"
    src = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="d")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src.save(saved)

    class Reshaped(keras.layers.Layer):
        def build(self, _):
            self.kernel = self.add_weight(shape=(2, 12), name="kernel")
            self.bias = self.add_weight(shape=(2, 2), name="bias")

        def call(self, x):
            return x

    target = keras.Sequential([keras.Input((6,)), Reshaped(name="d")])
    with pytest.raises(lw.MismatchError, match=r"expects shape \(2, 12\)"):
        lwk.load_weights(target, saved)
    lwk.load_weights(target, saved, reshape=True)
    np.testing.assert_array_equal(np.asarray(target.layers[0].kernel), np.asarray(src.layers[0].kernel).reshape(2, 12))


def test_cast_to_variable_dtype_and_incompatible_dtype(keras3_files, tmp_path) -> None:
    saved = tmp_path / "f32.h5"
    src = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, name="d")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src.save(saved)
    wide = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, name="d", dtype="float64")])
    lwk.load_weights(wide, saved)
    assert np.asarray(wide.layers[0].kernel).dtype == np.float64
    np.testing.assert_array_equal(np.asarray(wide.layers[0].kernel), np.asarray(src.layers[0].kernel).astype("f8"))

    class IntLayer(keras.layers.Layer):
        def build(self, _):
            self.kernel = self.add_weight(shape=(5, 3), dtype="int32", name="kernel", trainable=False)
            self.bias = self.add_weight(shape=(3,), dtype="int32", name="bias", trainable=False)

        def call(self, x):
            return x

    ints = keras.Sequential([keras.Input((5,)), IntLayer(name="d")])
    with pytest.raises(lw.MismatchError, match=r"variable is int32, the saved weight is float32"):
        lwk.load_weights(ints, saved)


def test_v3_by_name_refused_and_mismatch(keras3_files) -> None:
    with pytest.raises(lw.LazyWeightsError, match="by_name"):
        lwk.load_weights(_fresh(), keras3_files["weights"], by_name=True)
    other = _renamed_model(4, fc_units=13)
    with pytest.raises(lw.MismatchError, match="could not be loaded"):
        lwk.load_weights(other, keras3_files["weights"])


# -- load_model --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["h5", "keras"])
def test_load_model_equals_keras(keras3_files, kind) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = lwk.load_model(keras3_files[kind], max_memory="128KiB")
        if kind == "h5":  # see test_load_weights_equals_keras: Keras cannot read its own bfloat16 .h5
            with pytest.raises(ValueError, match="void16"):
                keras.models.load_model(keras3_files[kind])
            theirs = keras3_files["model"]
        else:
            theirs = keras.models.load_model(keras3_files[kind])
    _assert_same(ours, theirs)
    _assert_same(ours, keras3_files["model"])
    assert int(ours.optimizer.iterations.numpy()) == int(keras3_files["model"].optimizer.iterations.numpy()) == 1
    x = np.random.default_rng(5).standard_normal((3, 8, 8, 3), dtype=np.float32)
    np.testing.assert_array_equal(ours.predict(x, verbose=0), theirs.predict(x, verbose=0))
    _assert_same_slots(ours.optimizer, theirs.optimizer)


def _assert_same_slots(ours, theirs) -> None:
    """Optimizer slots compared by name (the path under the optimizer's own, numbered name) and value, not position."""
    got = {v.path.split("/", 1)[1]: np.asarray(v) for v in ours.variables}
    expected = {v.path.split("/", 1)[1]: np.asarray(v) for v in theirs.variables}
    assert len(got) == len(ours.variables) and len(expected) == len(theirs.variables) > 2
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_keras2_mobilenet_full_model_loads_where_keras_fails() -> None:
    path = KERAS2 / "mobilenetv2_full.h5"
    with pytest.raises(TypeError, match="groups"):
        keras.models.load_model(path)  # Keras 3 itself rejects tf-keras MobileNet configs
    with pytest.warns(UserWarning, match="No training configuration"):
        model = lwk.load_model(path)
    twin = keras.applications.MobileNetV2(alpha=0.35, weights=None, input_shape=(32, 32, 3), classes=10)
    twin.load_weights(KERAS2 / "mobilenetv2_weights.h5")
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(model.predict(x, verbose=0), twin.predict(x, verbose=0), atol=1e-6)
    np.testing.assert_allclose(
        model.predict(x, verbose=0), np.array(keras2_expected("mobilenetv2_full.h5")["predictions"]), atol=1e-4
    )


def test_keras2_optimizer_slots_restored() -> None:
    """Keras 3's legacy loader starts tf-keras optimizers fresh; lazyweights restores every slot."""
    import h5py

    model = lwk.load_model(KERAS2 / "cnn_full.h5")
    assert int(model.optimizer.iterations.numpy()) == 3
    by_slot = {v.path.split("/", 1)[1]: np.asarray(v) for v in model.optimizer.variables}
    with h5py.File(KERAS2 / "cnn_full.h5") as f:
        group = f["optimizer_weights"]
        np.testing.assert_array_equal(by_slot["conv1_kernel_momentum"], group["Adam/m/conv1/kernel:0"][()])
        np.testing.assert_array_equal(by_slot["dw1_kernel_velocity"], group["Adam/v/dw1/depthwise_kernel:0"][()])
        restored = sum(1 for name in group.attrs["weight_names"] if "/m/" in str(name) or "/v/" in str(name))
    assert restored == len(by_slot) - 2  # every slot but iteration and learning_rate came from the file
    assert all(np.abs(v).sum() > 0 for k, v in by_slot.items() if k.endswith("_velocity"))


def test_optimizer_mismatch_warns_and_keeps_fresh(tmp_path) -> None:
    import h5py

    path = tmp_path / "bad_opt.h5"
    path.write_bytes((KERAS2 / "cnn_full.h5").read_bytes())
    with h5py.File(path, "r+") as f:
        names = [n.encode() if isinstance(n, str) else n for n in f["optimizer_weights"].attrs["weight_names"]]
        f["optimizer_weights"].attrs["weight_names"] = [*names, b"Adam/m/nowhere/kernel:0"]
        f["optimizer_weights"]["Adam/m/nowhere/kernel:0"] = np.zeros(3, "f4")
    with pytest.warns(UserWarning, match="freshly initialized optimizer"):
        model = lwk.load_model(path)
    assert int(model.optimizer.iterations.numpy()) == 0


def test_lambda_refused_in_safe_mode(tmp_path) -> None:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda x: x * 2.0, name="double")])
    path = tmp_path / "lam.keras"
    model.save(path)
    with pytest.raises(lw.UnsafeCheckpointError, match="safe_mode=False"):
        lwk.load_model(path)
    loaded = lwk.load_model(path, safe_mode=False)
    np.testing.assert_allclose(loaded.predict(np.ones((1, 3), "f4"), verbose=0), 2.0)


def test_unknown_class_says_custom_objects(tmp_path) -> None:
    @keras.saving.register_keras_serializable(package="lwtest")
    class Scale(keras.layers.Layer):
        def build(self, shape):
            self.s = self.add_weight(shape=(shape[-1],), initializer="ones", name="s")

        def call(self, x):
            return x * self.s

    model = keras.Sequential([keras.Input((3,)), Scale(name="scale")])
    path = tmp_path / "custom.keras"
    model.save(path)
    keras.saving.get_custom_objects().pop("lwtest>Scale")
    with pytest.raises(lw.FormatError, match="custom_objects"):
        lwk.load_model(path)
    loaded = lwk.load_model(path, custom_objects={"lwtest>Scale": Scale})
    np.testing.assert_array_equal(np.asarray(loaded.layers[0].s), np.ones(3, "f4"))


def test_load_model_needs_a_config(keras3_files) -> None:
    with pytest.raises(lw.FormatError, match="No model config"):
        lwk.load_model(keras3_files["weights"])
    with pytest.raises(lw.FormatError, match="No model config"):
        lwk.load_model(KERAS2 / "cnn_weights.h5")


def test_load_model_over_http(keras3_files, http_server, http_root) -> None:
    import shutil

    shutil.copy(keras3_files["keras"], http_root / "served.keras")
    model = lwk.load_model(f"{http_server.url}/served.keras", max_memory="64KiB")
    _assert_same(model, keras3_files["model"])
