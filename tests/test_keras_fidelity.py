"""lazyweights.keras takes what Keras takes and fails where Keras fails, with Keras's exception types.

Keras 3 (the real one, torch backend) writes every file and is the oracle for
values, messages and exception types; the Keras 2 fixtures come from tf-keras.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
import pytest

import lazyweights as lw

keras = pytest.importorskip("keras")
from lazyweights import keras as lwk  # noqa: E402
from lazyweights.targets.keras.config import translate_training_config  # noqa: E402

from .conftest import KERAS2  # noqa: E402
from .stores import s3_server  # noqa: E402

X = np.random.default_rng(0).standard_normal((4, 3)).astype("f4")


def _model(seed: int = 0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(5, name="a"), keras.layers.Dense(2, name="b")])
    model.compile(optimizer="adam", loss="mse")
    model.fit(X, np.ones((4, 2), "f4"), verbose=0)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    model = _model()
    paths = {"keras": root / "m.keras", "weights": root / "m.weights.h5", "h5": root / "m.h5", "dir": root / "m_dir"}
    model.save(paths["keras"])
    model.save_weights(paths["weights"])
    model.save(paths["h5"])
    keras.saving.save_model(model, paths["dir"], zipped=False)
    return paths, model.predict(X, verbose=0)


# -- sources: file objects and unzipped folders ------------------------------------------------


@pytest.mark.parametrize("kind", ["keras", "h5"])
def test_file_objects_load_like_keras(saved, kind) -> None:
    paths, expected = saved
    with open(paths[kind], "rb") as f:
        f.seek(7)
        model = lwk.load_model(f)
        assert f.tell() == 7  # the caller's position is left as it was
    np.testing.assert_array_equal(model.predict(X, verbose=0), expected)
    buffer = io.BytesIO(paths[kind].read_bytes())
    np.testing.assert_array_equal(lwk.load_model(buffer).predict(X, verbose=0), expected)


def test_file_object_weights(saved) -> None:
    paths, expected = saved
    fresh = _model(seed=1)
    lwk.load_weights(fresh, io.BytesIO(paths["weights"].read_bytes()))
    np.testing.assert_array_equal(fresh.predict(X, verbose=0), expected)


def test_unzipped_keras_folder_local_and_s3(saved) -> None:
    paths, expected = saved
    np.testing.assert_array_equal(lwk.load_model(paths["dir"]).predict(X, verbose=0), expected)
    with s3_server() as store:
        bucket = store.bucket("fidelity", versioned=True)
        fs = store.fs()
        for name in ("config.json", "model.weights.h5"):
            fs.put(str(paths["dir"] / name), f"{bucket}/m_dir/{name}")
        model = lwk.load_model(f"s3://{bucket}/m_dir", storage_options=store.options, max_memory="64KiB")
    np.testing.assert_array_equal(model.predict(X, verbose=0), expected)


# -- options -----------------------------------------------------------------------------------


def test_objects_to_skip_like_keras(saved) -> None:
    paths, _ = saved
    ours, theirs = _model(seed=1), _model(seed=1)
    lwk.load_weights(ours, paths["weights"], objects_to_skip=[ours.layers[0]])
    theirs.load_weights(paths["weights"], objects_to_skip=[theirs.layers[0]])
    for a, b in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(
        ours.layers[0].get_weights()[0], keras.saving.load_model(paths["keras"]).layers[0].get_weights()[0]
    )
    for kind in ("keras", "h5"):  # Keras takes objects_to_skip for .weights.h5 files only
        with pytest.raises(ValueError, match="objects_to_skip") as info:
            lwk.load_weights(ours, paths[kind], objects_to_skip=[])
        assert isinstance(info.value, lw.UsageError)


# -- Keras's exception types -------------------------------------------------------------------


def _keras_raises(fn, *args, **kwargs) -> type[BaseException]:
    with pytest.raises(Exception) as info:
        fn(*args, **kwargs)
    return type(info.value)


def test_missing_file_is_a_value_error_like_keras(tmp_path) -> None:
    missing = tmp_path / "missing.keras"
    assert issubclass(_keras_raises(keras.saving.load_model, missing), ValueError)
    with pytest.raises(ValueError, match="File not found") as info:
        lwk.load_model(missing)
    assert isinstance(info.value, lw.NotFoundError) and isinstance(info.value, FileNotFoundError)
    with pytest.raises(ValueError, match="File not found"):
        lwk.load_weights(_model(), tmp_path / "missing.weights.h5")


def test_unbuilt_model_is_a_value_error_like_keras(saved) -> None:
    paths, _ = saved
    unbuilt = keras.Sequential([keras.layers.Dense(5, name="a"), keras.layers.Dense(2, name="b")])
    with pytest.raises(ValueError, match="not yet been built") as keras_info:
        unbuilt.load_weights(paths["weights"])
    with pytest.raises(ValueError, match="not yet been built") as info:
        lwk.load_weights(unbuilt, paths["weights"])
    assert isinstance(info.value, lw.UsageError) and type(keras_info.value) is ValueError


@pytest.mark.parametrize(
    ("kwargs", "words"), [({"by_name": True}, "by_name"), ({"bad_kwarg": None}, "Invalid keyword arguments")]
)
def test_keyword_refused_with_a_value_error_like_keras(saved, kwargs, words) -> None:
    """``by_name`` on a Keras 3 file, and a keyword load_weights does not take."""
    paths, _ = saved
    with pytest.raises(ValueError, match=words):
        _model().load_weights(paths["weights"], **kwargs)
    with pytest.raises(ValueError, match=words) as info:
        lwk.load_weights(_model(), paths["weights"], **kwargs)
    assert isinstance(info.value, lw.UsageError)


def test_custom_object_without_from_config_is_a_type_error_like_keras(tmp_path) -> None:
    @keras.saving.register_keras_serializable(package="lwfidelity")
    class Halve:  # serialisable (get_config) but not rebuildable: no from_config
        def __call__(self, x):
            return x * 0.5

        def get_config(self):
            return {}

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation=Halve(), name="d")])
    path = tmp_path / "custom.keras"
    model.save(path)
    assert issubclass(_keras_raises(keras.saving.load_model, path), TypeError)
    with pytest.raises(TypeError, match="custom_objects") as info:
        lwk.load_model(path)
    assert isinstance(info.value, lw.ModelConfigTypeError) and isinstance(info.value, ValueError)


def test_by_name_errors_number_layers_as_keras_does(tmp_path) -> None:
    inp = keras.Input((4,), name="inp")
    x = keras.layers.Dense(3, name="d1")(inp)
    x = keras.layers.Dropout(0.1, name="drop")(x)
    x = keras.layers.Dense(2, name="d2")(x)
    path = tmp_path / "m.weights.legacy.h5"
    keras.Model(inp, x).save(tmp_path / "full.h5")
    path = tmp_path / "full.h5"
    inp = keras.Input((4,), name="inp")
    y = keras.layers.Dense(3, name="d1")(inp)
    y = keras.layers.Dense(2, name="d2", use_bias=False)(y)
    other = keras.Model(inp, y)
    with pytest.raises(ValueError, match="Weight count mismatch") as keras_info:
        other.load_weights(path, by_name=True)
    with pytest.raises(ValueError, match="Weight count mismatch") as info:
        lwk.load_weights(other, path, by_name=True)
    number = re.compile(r"layer #\d+")
    assert number.findall(str(info.value)) == number.findall(str(keras_info.value))


# -- no warnings of Keras's own making -----------------------------------------------------------


def test_load_model_of_keras_file_warns_no_deprecation(saved) -> None:
    paths, _ = saved
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lwk.load_model(paths["keras"])
    assert [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)] == []


# -- Keras 2 training configs --------------------------------------------------------------------


def test_tf_keras_training_config_compiles_and_evaluates() -> None:
    """tf-keras 2.21's file: Custom>Adam, and an accuracy metric saved as a wrapper around a function name."""
    model = lwk.load_model(KERAS2 / "cnn_full.h5")
    assert type(model.optimizer).__name__ == "Adam"
    np.testing.assert_allclose(float(np.asarray(model.optimizer.learning_rate)), 1e-3, rtol=1e-6)
    shape = tuple(model.input_shape[1:])
    x = np.random.default_rng(0).standard_normal((2, *shape)).astype("f4")
    units = model.output_shape[-1]
    results = model.evaluate(x, np.arange(2) % units, verbose=0, return_dict=True)  # Keras cannot call a str
    assert set(results) == {"loss", "accuracy"}


KERAS_205 = {  # the training_config shape Keras 2.0.x wrote (h5py attribute, JSON)
    "optimizer_config": {"class_name": "RMSprop", "config": {"lr": 0.01, "rho": 0.9, "epsilon": 1e-08, "decay": 0.5}},
    "loss": "mean_squared_error",
    "metrics": ["mae", "cosine_proximity"],
    "sample_weight_mode": None,
    "loss_weights": None,
}


def test_keras2_optimizer_arguments_translated() -> None:
    with pytest.raises(ValueError, match="lr"):  # Keras itself refuses it
        keras.optimizers.deserialize(KERAS_205["optimizer_config"])
    config = translate_training_config(KERAS_205)
    optimizer = keras.optimizers.deserialize(config["optimizer_config"])
    assert type(optimizer).__name__ == "RMSprop"
    schedule = optimizer._learning_rate
    # Keras 2's decay: lr / (1 + decay * iterations)
    np.testing.assert_allclose([float(schedule(step)) for step in (0, 1, 4)], [0.01, 0.01 / 1.5, 0.01 / 3], rtol=1e-6)
    assert config["metrics"] == ["mae", "cosine_similarity"]
    assert KERAS_205["optimizer_config"]["config"]["lr"] == 0.01  # the input is left alone


def test_custom_registration_and_reduction_auto_translated() -> None:
    config = translate_training_config(
        {
            "optimizer_config": {
                "class_name": "Custom>Adam",
                "config": {"name": "Adam", "learning_rate": 0.002, "is_legacy_optimizer": False, "jit_compile": True},
            },
            "loss": {"class_name": "CategoricalCrossentropy", "config": {"reduction": "auto", "from_logits": True}},
            "metrics": None,
        }
    )
    optimizer = keras.optimizers.deserialize(config["optimizer_config"])
    assert type(optimizer).__name__ == "Adam" and float(np.asarray(optimizer.learning_rate)) == pytest.approx(0.002)
    with pytest.raises(ValueError, match="reduction"):
        keras.losses.deserialize({"class_name": "CategoricalCrossentropy", "config": {"reduction": "auto"}})
    loss = keras.losses.deserialize(config["loss"])
    assert loss.reduction == "sum_over_batch_size" and loss.from_logits


def _uncompilable(tmp_path):
    def my_loss(y_true, y_pred):
        return keras.ops.mean(keras.ops.abs(y_true - y_pred))

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
    model.compile(optimizer="sgd", loss=my_loss)
    path = tmp_path / "custom_loss.h5"
    model.save(path)
    return path, model.predict(X, verbose=0)


def test_uncompilable_field_is_named_or_best_effort(tmp_path) -> None:
    path, expected = _uncompilable(tmp_path)
    with pytest.raises(lw.CompileError, match="field loss"):
        lwk.load_model(path)
    with pytest.warns(UserWarning, match="best_effort"):
        model = lwk.load_model(path, compile="best_effort")
    assert not model.compiled
    np.testing.assert_array_equal(model.predict(X, verbose=0), expected)
    assert not lwk.load_model(path, compile=False).compiled


def test_config_decompression_bomb_refused_before_inflating(saved, tmp_path, monkeypatch) -> None:
    """A .keras whose config.json declares more than the limit is refused from its zip header, never inflated."""
    import zipfile

    from lazyweights.formats import detect

    paths, _ = saved
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(paths["keras"]) as good, zipfile.ZipFile(bomb, "w") as evil:
        for info in good.infolist():
            data = good.read(info)
            if info.filename == "config.json":
                data = data[:-1] + b" " * 300_000 + data[-1:]  # still valid JSON, compresses to almost nothing
                evil.writestr(info.filename, data, compress_type=zipfile.ZIP_DEFLATED)
            else:
                evil.writestr(info, data)
    monkeypatch.setattr(detect, "JSON_MEMBER_LIMIT", 100_000)
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda *a, **k: pytest.fail("inflated a member"))
    with pytest.raises(ValueError, match="decompression bomb") as info:
        lwk.load_model(bomb)
    assert isinstance(info.value, lw.FormatError)


def _soft_linked(saved, tmp_path, kind: str):
    """A copy of a saved file with a weights group replaced by a soft link to the same group elsewhere."""
    import shutil

    import h5py

    paths, _ = saved
    path = tmp_path / ("m.h5" if kind == "h5" else "m.weights.h5")
    shutil.copy(paths[kind], path)
    group = "model_weights" if kind == "h5" else "layers/dense_1"
    with h5py.File(path, "r+") as f:
        f.move(group, "real")
        f[group] = h5py.SoftLink("/real")
    return path


@pytest.mark.parametrize("mode", ["h5py", "walk"])
@pytest.mark.parametrize("kind", ["h5", "weights"])
def test_soft_link_refused_like_keras(saved, tmp_path, monkeypatch, kind, mode) -> None:
    """Keras refuses a SoftLink where it looks for weights; so does each metadata path (h5py, h5meta's walk)."""
    path = _soft_linked(saved, tmp_path, kind)
    with pytest.raises(ValueError, match="SoftLink"):
        _model().load_weights(path)
    monkeypatch.setenv("LAZYWEIGHTS_HDF5_METADATA", mode)
    with pytest.raises(ValueError, match="Not allowed: H5 file with SoftLink") as info:
        lwk.load_weights(_model(), path)
    assert isinstance(info.value, lw.UnsafeCheckpointError)


def test_keras_zip_bomb_limits_followed_at_call_time(saved, tmp_path, monkeypatch) -> None:
    """Keras's member limits are read when the archive is opened: lowered there, a deflated config is a bomb."""
    import zipfile

    from keras.src.saving import saving_lib

    paths, expected = saved
    deflated = tmp_path / "deflated.keras"
    with zipfile.ZipFile(paths["keras"]) as good, zipfile.ZipFile(deflated, "w") as out:
        for info in good.infolist():
            method = zipfile.ZIP_DEFLATED if info.filename == "config.json" else zipfile.ZIP_STORED
            out.writestr(info.filename, good.read(info), compress_type=method)
    np.testing.assert_array_equal(lwk.load_model(deflated).predict(X, verbose=0), expected)
    monkeypatch.setattr(saving_lib, "_ZIP_MEMBER_BOMB_FLOOR_BYTES", 64)
    monkeypatch.setattr(saving_lib, "_ZIP_MEMBER_MAX_EXPANSION", 1)
    with pytest.raises(ValueError, match="decompression bomb"):
        keras.saving.load_model(deflated)
    with pytest.raises(ValueError, match=r"ZIP member 'config.json'.*decompression bomb") as info:
        lwk.load_model(deflated)
    assert isinstance(info.value, lw.UnsafeCheckpointError)
