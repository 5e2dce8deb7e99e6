"""TensorFlow-format checkpoints into Keras 3 models and torch twins; each must predict what tf-keras predicted.

The models are rebuilt here in Keras 3 code from each fixture's ``model.json``
(same architecture), loaded with ``lwk.load_weights`` from the checkpoint
tf-keras wrote, and run on the input tf-keras ran (``predictions.npz``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import torch

import lazyweights as lw
from lazyweights import keras as lwk
from lazyweights import torch as lwt
from lazyweights.errors import MismatchError

from .test_tf_checkpoint import TF_FIXTURES, flip_byte
from .test_tf_checkpoint import oracle as tensorflow_read


def predictions(name: str) -> dict[str, np.ndarray]:
    with np.load(TF_FIXTURES / name / "predictions.npz") as npz:
        return dict(npz)


def oracle(name: str) -> dict[str, np.ndarray]:
    return tensorflow_read(name)[1]


def sequential() -> keras.Model:
    """``sequential_adam``'s architecture (model.json: conv 4@3x3, bn, flatten, dense 6 relu, dense 3)."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(6, activation="relu", name="fc1"),
            keras.layers.Dense(3, name="fc2"),
        ]
    )


def functional() -> keras.Model:
    kwargs = json.loads((TF_FIXTURES / "functional_mobilenetv2" / "model.json").read_text())["kwargs"]
    return keras.applications.MobileNetV2(**kwargs)


class Encoder(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense1 = keras.layers.Dense(5, name="dense1")
        self.dense2 = keras.layers.Dense(4, name="dense2")

    def call(self, x):
        return self.dense2(keras.ops.relu(self.dense1(x)))


class Subclassed(keras.Model):
    """``subclassed``'s structure (model.json): an encoder, a list of blocks, a dict of heads, plain variables."""

    def __init__(self, structure: dict, variables: dict[str, str], shapes: dict[str, tuple[int, ...]]):
        super().__init__(name="subclassed")
        self.encoder = Encoder(name="encoder")
        self.blocks = [keras.layers.Dense(b["units"], name=f"block{i}") for i, b in enumerate(structure["blocks"])]
        self.heads = {
            name: keras.layers.Dense(h["units"], name=f"head_{name}") for name, h in structure["heads"].items()
        }
        for name, dtype in variables.items():
            if dtype != "string":  # a string variable has no Keras 3 counterpart; the loader lists it as skipped
                var = self.add_weight(shape=shapes[name], dtype=dtype, trainable=False, initializer="zeros", name=name)
                setattr(self, name, var)

    def call(self, x):
        h = self.encoder(x)
        for block in self.blocks:
            h = block(h)
        return {name: head(h) for name, head in self.heads.items()}


def subclassed() -> keras.Model:
    desc = json.loads((TF_FIXTURES / "subclassed" / "model.json").read_text())
    with lw.open(TF_FIXTURES / "subclassed") as ckpt:
        shapes = {w.key.split("/")[0]: w.shape for w in ckpt.weights}
    model = Subclassed(desc["structure"], desc["variables"], shapes)
    model(np.zeros((1, *desc["input_shape"]), np.float32))
    return model


def compiled(model: keras.Model) -> keras.Model:
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def test_sequential_predicts_what_tf_keras_did():
    model = compiled(sequential())
    report = lwk.load_weights(model, TF_FIXTURES / "sequential_adam")
    expected = predictions("sequential_adam")
    np.testing.assert_allclose(model.predict(expected["input"], verbose=0), expected["output"], atol=1e-5)
    hyper = {f"optimizer/{n}/.ATTRIBUTES/VARIABLE_VALUE" for n in ("beta_1", "beta_2", "decay")}
    assert {key for key, _ in report.skipped} == hyper  # plain floats in a Keras 3 Adam, not variables
    assert len(report.loaded) == len(model.weights) + 2 * len(model.trainable_weights) + 2  # + iter, learning_rate
    # the legacy Adam's slots went to the Keras 3 optimizer's m and v of the variables they belong to
    values = oracle("sequential_adam")
    conv = model.get_layer("conv")
    index = model.optimizer._get_variable_index(conv.kernel)
    iterations = keras.ops.convert_to_numpy(model.optimizer.iterations)
    assert iterations == values["optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE"] > 0
    slot = "layer_with_weights-0/kernel/.OPTIMIZER_SLOT/optimizer/{}/.ATTRIBUTES/VARIABLE_VALUE"
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.optimizer._momentums[index]), values[slot.format("m")]
    )
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.optimizer._velocities[index]), values[slot.format("v")]
    )


def test_functional_mobilenetv2_predicts_what_tf_keras_did():
    model = functional()
    lwk.load_weights(model, TF_FIXTURES / "functional_mobilenetv2", max_memory="256KiB")
    expected = predictions("functional_mobilenetv2")
    np.testing.assert_allclose(model.predict(expected["input"], verbose=0), expected["output"], atol=1e-5)


def test_subclassed_matches_by_attribute_path():
    model = compiled(subclassed())
    report = lwk.load_weights(model, TF_FIXTURES / "subclassed")
    expected = predictions("subclassed")
    got = model.predict(expected["input"], verbose=0)
    for head in ("alpha", "beta"):
        np.testing.assert_allclose(got[head], expected[head], atol=1e-5)
    values = oracle("subclassed")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.step), values["step/.ATTRIBUTES/VARIABLE_VALUE"])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.cplx), values["cplx/.ATTRIBUTES/VARIABLE_VALUE"])
    # tf-keras's Adam state (optimizer/_momentums/0, ...) went into the Keras 3 Adam
    m0 = keras.ops.convert_to_numpy(model.optimizer._momentums[0])
    key0 = next(k for k, v in lw.open(TF_FIXTURES / "subclassed").manifest.attrs["object_graph"]["paths"].items()
                if "optimizer/_momentums/0" in v)  # fmt: skip
    np.testing.assert_array_equal(m0, values[key0])
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == int(
        values["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"]
    )
    assert all("optimizer" not in key for key, _ in report.skipped)


def test_graphs_that_disagree_name_both_sides():
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="conv")])
    with pytest.raises(MismatchError, match="layer_with_weights-1") as err:
        lwk.load_weights(model, TF_FIXTURES / "sequential_adam")
    assert "1 layers with weights" in str(err.value)
    model = subclassed()
    del model.encoder.dense2  # the model now lacks what the checkpoint names
    with pytest.raises(MismatchError, match=r"encoder/dense2/(kernel|bias).*Encoder 'model.encoder'.*'dense2'"):
        lwk.load_weights(model, TF_FIXTURES / "subclassed")
    layers = keras.layers
    wrong = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            *(layers.Conv2D(5, 3), layers.BatchNormalization(), layers.Flatten(), layers.Dense(6), layers.Dense(3)),
        ]
    )
    with pytest.raises(MismatchError, match=r"expects shape \(5,\)\. Received saved weight with shape \(4,\)") as err:
        lwk.load_weights(wrong, TF_FIXTURES / "sequential_adam")
    assert "layer_with_weights-0/bias" in str(err.value)


class Twin(torch.nn.Module):
    """The sequential CNN in PyTorch, its modules named by the checkpoint's object paths."""

    def __init__(self):
        super().__init__()
        self.add_module("layer_with_weights-0", torch.nn.Conv2d(3, 4, 3))
        self.add_module("layer_with_weights-1", torch.nn.BatchNorm2d(4, eps=1e-3))
        self.add_module("layer_with_weights-2", torch.nn.Linear(144, 6))
        self.add_module("layer_with_weights-3", torch.nn.Linear(6, 3))

    def forward(self, x):
        conv, bn, fc1, fc2 = self.children()
        h = bn(conv(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1).flatten(1)  # Keras flattens channels-last
        return fc2(torch.relu(fc1(h)))


def test_torch_twin_predicts_what_tf_keras_did():
    twin = Twin().eval()
    report = lwt.load_state_dict(twin, TF_FIXTURES / "sequential_adam", layout="keras")
    assert not report.missing_keys and not report.unexpected_keys
    expected = predictions("sequential_adam")
    with torch.no_grad():
        got = twin(torch.from_numpy(expected["input"])).numpy()
    np.testing.assert_allclose(got, expected["output"], atol=1e-5)


def test_tensor_crc_mismatch_through_load_weights(tmp_path):
    root = Path(shutil.copytree(TF_FIXTURES / "sequential_adam", tmp_path / "ckpt"))
    key = "layer_with_weights-3/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    with lw.open(root) as ckpt:
        shard = flip_byte(root, ckpt, key)
    with pytest.raises(lw.LazyWeightsError, match="CRC32C") as err:
        lwk.load_weights(sequential(), root)
    assert key in str(err.value) and str(shard) in str(err.value)


def test_load_weights_from_a_zarr_mirror_of_a_tf_checkpoint(tmp_path):
    """A mirror keeps the object graph: Keras loads from it as from the checkpoint."""
    lw.mirror(TF_FIXTURES / "sequential_adam", tmp_path / "m.zarr")
    model = compiled(sequential())
    lwk.load_weights(model, tmp_path / "m.zarr")
    expected = predictions("sequential_adam")
    np.testing.assert_allclose(model.predict(expected["input"], verbose=0), expected["output"], atol=1e-5)
