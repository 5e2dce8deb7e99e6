"""Regenerate the Keras 2 (tf-keras 2.x) HDF5 fixtures in ``tests/fixtures/keras2/``.

Every file in that directory is written by the *real* tf-keras legacy HDF5 writer, and each
``<file>.expected.json`` sidecar is the oracle the lazyweights tests compare against.
TensorFlow is never a dependency of lazyweights itself, so run this script from a throwaway
virtualenv outside the repository::

    python3 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu==2.21.0 tf-keras==2.21.0 h5py
    TF_USE_LEGACY_KERAS=1 /tmp/tfenv/bin/python scripts/make_keras2_fixtures.py

It overwrites every fixture listed in ``FIXTURES`` below (plus its sidecar), checks that the
long-names file really has a split ``layer_names`` attribute, and prints a short h5py summary.

Determinism: ``keras.utils.set_random_seed(0)`` plus op determinism before each model, and a
Keras session reset so auto-generated layer names are stable. Weights that Keras initialises to a
constant (biases, BatchNorm/LayerNorm gamma/beta/moving statistics) are overwritten with small
seeded random values, so that mixing up e.g. ``gamma`` and ``moving_variance`` changes the
predictions recorded in the sidecars instead of going unnoticed.

Sidecar keys:
    layer_names                 ``[layer.name for layer in model.layers]``
    weight_names, shapes        ``model.weights`` order (== ``model.get_weights()`` order)
    weights_order_is_topological whether that order equals the per-layer concatenation over
                                ``model.layers`` (the order ``load_weights`` walks the HDF5
                                ``layer_names``/``weight_names``); if not, that order is also
                                written as ``topological_weight_names``/``topological_shapes``
    optimizer_weight_names      (full models only) ``optimizer_weights`` ``weight_names`` from the file
    input_shape, predictions_input_seed, predictions
                                ``model.predict`` on
                                ``np.random.default_rng(0).standard_normal((2, *input_shape), np.float32)``
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py
import numpy as np
import tensorflow as tf
import tf_keras as keras

OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "keras2"
SEED = 0
PRED_BATCH = 2
# tf-keras splits an attribute into name0, name1, ... once its numpy payload exceeds this.
HDF5_OBJECT_HEADER_LIMIT = 64512
# Long names keep the layer count (and the file, ~3 KB of HDF5 headers per layer) small.
LONG_NAME = "dense_layer_with_a_deliberately_long_name_for_attribute_splitting_" * 4 + "{:04d}"


def reset(seed: int = SEED) -> None:
    """Fresh Keras session (stable auto names) and seeded RNGs."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def perturb_constant_weights(model: keras.Model, seed: int = SEED) -> None:
    """Replace constant-initialised variables with seeded random values (variances kept > 0)."""
    rng = np.random.default_rng(seed)
    for var in model.weights:
        value = var.numpy()
        if value.size == 0 or np.ptp(value) != 0:
            continue
        if "variance" in var.name:
            new = rng.uniform(0.5, 1.5, value.shape)
        else:
            new = value + 0.1 * rng.standard_normal(value.shape)
        var.assign(new.astype(value.dtype))


def build_cnn() -> keras.Model:
    """Small functional CNN covering conv, BN, depthwise, dense and layer norm weights."""
    inputs = keras.Input(shape=(16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw1")(x)
    x = keras.layers.Conv2D(16, 1, name="pw1")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(16, name="fc1")(x)
    x = keras.layers.LayerNormalization(name="ln1")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="logits")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


def build_cnn_weights() -> keras.Model:
    model = build_cnn()
    perturb_constant_weights(model)
    return model


def build_trained_cnn() -> keras.Model:
    """The CNN compiled with Adam and trained for 3 steps so optimizer slots are non-trivial."""
    model = build_cnn()
    perturb_constant_weights(model)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((12, 16, 16, 3), dtype=np.float32)
    y = rng.integers(0, 10, size=(12,))
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    return model


def build_mobilenet() -> keras.Model:
    model = keras.applications.MobileNetV2(alpha=0.35, weights=None, input_shape=(32, 32, 3), classes=10)
    perturb_constant_weights(model)
    return model


def long_names_count() -> int:
    """Enough layers that the fixed-width ``layer_names`` array exceeds the header limit."""
    return HDF5_OBJECT_HEADER_LIMIT // len(LONG_NAME.format(0)) + 16


def build_long_names() -> keras.Model:
    layers = [keras.layers.Dense(2, name=LONG_NAME.format(i)) for i in range(long_names_count())]
    model = keras.Sequential([keras.Input(shape=(2,)), *layers], name="long_names")
    perturb_constant_weights(model)
    return model


def prediction_input(model: keras.Model) -> np.ndarray:
    shape = tuple(model.input_shape[1:])
    return np.random.default_rng(SEED).standard_normal((PRED_BATCH, *shape), dtype=np.float32)


def topological_weights(model: keras.Model) -> list[tf.Variable]:
    return [w for layer in model.layers for w in layer.trainable_weights + layer.non_trainable_weights]


def read_attr_list(group: h5py.Group, name: str) -> list[str]:
    """Read a possibly chunked (name0, name1, ...) string-list attribute like tf-keras does."""
    if name in group.attrs:
        chunks = [group.attrs[name]]
    else:
        chunks, i = [], 0
        while f"{name}{i}" in group.attrs:
            chunks.append(group.attrs[f"{name}{i}"])
            i += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for c in chunks for v in c]


def expected(model: keras.Model, path: Path, full: bool) -> dict[str, Any]:
    topo = topological_weights(model)
    is_topological = [w.name for w in topo] == [w.name for w in model.weights]
    data: dict[str, Any] = {
        "layer_names": [layer.name for layer in model.layers],
        "weight_names": [w.name for w in model.weights],
        "shapes": [list(w.shape) for w in model.weights],
        "weights_order_is_topological": is_topological,
        "tf_keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "h5py_version": h5py.__version__,
    }
    if not is_topological:
        data["topological_weight_names"] = [w.name for w in topo]
        data["topological_shapes"] = [list(w.shape) for w in topo]
    if full:
        with h5py.File(path, "r") as f:
            opt = f.get("optimizer_weights")
            data["optimizer_weight_names"] = read_attr_list(opt, "weight_names") if opt is not None else []
    x = prediction_input(model)
    data["input_shape"] = list(x.shape[1:])
    data["predictions_input_seed"] = SEED
    data["predictions"] = model.predict(x, verbose=0).astype(np.float64).tolist()
    return data


def write_fixture(name: str, build: Callable[[], keras.Model], full: bool) -> Path:
    reset()
    model = build()
    path = OUT_DIR / name
    if full:
        model.save(path, save_format="h5")
    else:
        model.save_weights(path, save_format="h5")
    sidecar = path.with_name(path.name + ".expected.json")
    sidecar.write_text(json.dumps(expected(model, path, full), indent=1) + "\n")
    return path


def check_split(path: Path) -> None:
    with h5py.File(path, "r") as f:
        if "layer_names" in f.attrs or "layer_names0" not in f.attrs:
            raise RuntimeError(f"{path.name}: layer_names was not split; raise long_names_count()")


def summarize(path: Path, n_groups: int = 4) -> None:
    with h5py.File(path, "r") as f:
        print(f"== {path.name} ({path.stat().st_size} bytes)")
        groups = sorted(f)
        print(f"   root attrs: {sorted(f.attrs)}  groups ({len(groups)}): {groups[:n_groups]}...")
        weights = f.get("model_weights", f)
        attrs = {k: f"{weights.attrs.get_id(k).dtype}{weights.attrs.get_id(k).shape}" for k in weights.attrs}
        print(f"   {weights.name} attrs: {attrs}")
        for layer in read_attr_list(weights, "layer_names")[:n_groups]:
            wn = weights[layer].attrs["weight_names"]
            print(f"   {layer}: weight_names dtype={wn.dtype} {read_attr_list(weights[layer], 'weight_names')}")


FIXTURES: list[tuple[str, Callable[[], keras.Model], bool]] = [
    ("cnn_weights.h5", build_cnn_weights, False),
    ("cnn_full.h5", build_trained_cnn, True),
    ("mobilenetv2_full.h5", build_mobilenet, True),
    ("mobilenetv2_weights.h5", build_mobilenet, False),
    ("long_names_weights.h5", build_long_names, False),
]


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    paths = [write_fixture(name, build, full) for name, build, full in FIXTURES]
    check_split(OUT_DIR / "long_names_weights.h5")
    for path in paths:
        summarize(path)


if __name__ == "__main__":
    main()
