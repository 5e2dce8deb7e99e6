"""Write TensorFlow-format checkpoints and their oracles into ``tests/fixtures/tf/`` (run via make_tf_fixtures.sh).

Each fixture is a directory holding what TensorFlow wrote (``checkpoint``,
``<prefix>.index``, ``<prefix>.data-*``) plus:

* ``oracle.json`` + ``oracle.npz``: every key's dtype, shape and value as
  ``tf.train.load_checkpoint(prefix).get_tensor(key)`` returns it (bfloat16 stored
  as its uint16 bit pattern; string tensors as bytes; the object graph skipped);
* for tf-keras models, ``predictions.npz`` (a fixed seeded input and the output)
  and ``model.json`` (architecture sufficient to rebuild the model in Keras 3).

Large random weights would make the fixtures big and incompressible, so model
weights are rounded to multiples of 1/64 after building; they remain ordinary
float32 values written by TensorFlow.  ``proto_fields.json`` records TensorFlow's
own field numbers so the tests can check lazyweights' runtime descriptors.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import tensorflow as tf
import tf_keras as keras

SEED = 1234


def quantize(model: keras.Model) -> None:
    """Round float weights to multiples of 1/64 so the committed files compress well."""
    for var in model.weights:
        if var.dtype.is_floating:
            value = var.numpy().astype("float64")
            var.assign(np.round(value * 64) / 64)


def write_oracle(prefix: Path) -> None:
    reader = tf.train.load_checkpoint(str(prefix))
    dtypes = reader.get_variable_to_dtype_map()
    shapes = reader.get_variable_to_shape_map()
    tensors, arrays, skipped = [], {}, []
    for i, key in enumerate(sorted(dtypes)):
        dtype = dtypes[key]
        if key == "_CHECKPOINTABLE_OBJECT_GRAPH":
            skipped.append(key)
            continue
        value = reader.get_tensor(key)
        if dtype == tf.string:
            value = np.asarray(value, dtype=object).astype(bytes)
        elif dtype == tf.bfloat16:
            value = np.asarray(value).view(np.uint16)
        arrays[f"t{i}"] = np.asarray(value)
        tensors.append({"key": key, "npz": f"t{i}", "dtype": dtype.name, "shape": list(shapes[key])})
    np.savez_compressed(prefix.parent / "oracle.npz", **arrays)
    data_files = sorted(p.name for p in prefix.parent.glob(prefix.name + ".data-*"))
    meta = {"prefix": prefix.name, "tensors": tensors, "skipped": skipped, "data_files": data_files}
    (prefix.parent / "oracle.json").write_text(json.dumps(meta, indent=1) + "\n")


def weights_table(model: keras.Model) -> list[dict]:
    return [{"name": w.name, "path": getattr(w, "path", w.name), "shape": list(w.shape), "dtype": w.dtype.name}
            for w in model.weights]  # fmt: skip


def write_predictions(model: keras.Model, out: Path, input_shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(SEED).standard_normal((2, *input_shape)).astype("float32")
    y = model(x, training=False)
    y = {k: np.asarray(v) for k, v in y.items()} if isinstance(y, dict) else {"output": np.asarray(y)}
    np.savez_compressed(out / "predictions.npz", input=x, **y)


def save_keras(model: keras.Model, out: Path, description: dict, input_shape: tuple[int, ...]) -> None:
    out.mkdir(parents=True)
    model.save_weights(str(out / "ckpt"))
    write_oracle(out / "ckpt")
    write_predictions(model, out, input_shape)
    description.update(input_shape=list(input_shape), weights=weights_table(model))
    (out / "model.json").write_text(json.dumps(description, indent=1) + "\n")


def functional_mobilenetv2(root: Path) -> None:
    keras.utils.set_random_seed(SEED)
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10)
    quantize(model)
    desc = {"kind": "functional", "builder": "keras.applications.MobileNetV2",
            "kwargs": {"input_shape": [32, 32, 3], "alpha": 0.35, "weights": None, "classes": 10},
            "tf_keras_json": json.loads(model.to_json())}  # fmt: skip
    save_keras(model, root / "functional_mobilenetv2", desc, (32, 32, 3))


def sequential_adam(root: Path) -> None:
    keras.utils.set_random_seed(SEED)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(6, activation="relu", name="fc1"),
            keras.layers.Dense(3, name="fc2"),
        ],
        name="seq",
    )
    quantize(model)
    # the legacy optimizer records its m and v slots as the object graph's slot_variables
    model.compile(optimizer=keras.optimizers.legacy.Adam(1e-2), loss="mse")
    rng = np.random.default_rng(SEED)
    x, y = rng.standard_normal((4, 8, 8, 3)).astype("f4"), rng.standard_normal((4, 3)).astype("f4")
    model.train_on_batch(x, y)  # one Adam step: creates the m and v slots
    desc = {"kind": "sequential", "optimizer": "legacy.Adam", "tf_keras_json": json.loads(model.to_json())}
    save_keras(model, root / "sequential_adam", desc, (8, 8, 3))


class Encoder(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense1 = keras.layers.Dense(5, name="dense1")
        self.dense2 = keras.layers.Dense(4, name="dense2")

    def call(self, x):
        return self.dense2(tf.nn.relu(self.dense1(x)))


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="subclassed")
        self.encoder = Encoder(name="encoder")
        self.blocks = [keras.layers.Dense(4, name=f"block{i}") for i in range(2)]
        self.heads = {"alpha": keras.layers.Dense(2, name="head_alpha"),
                      "beta": keras.layers.Dense(3, name="head_beta")}  # fmt: skip
        # plain tracked variables of assorted dtypes
        def fixed(value, name):
            return tf.Variable(value, trainable=False, name=name)

        self.step = fixed(tf.constant(7, tf.int64), "step")
        self.flags = fixed([True, False, True], "flags")
        self.half = fixed(np.arange(6, dtype="float16").reshape(2, 3) / 4, "half")
        self.brain = fixed(tf.cast(tf.constant([[0.5, -1.25], [3.0, 0.125]]), tf.bfloat16), "brain")
        self.wide = fixed(np.array([1.5, -2.25], dtype="float64"), "wide")
        self.cplx = fixed(np.array([1 + 2j, -3j], dtype="complex64"), "cplx")
        self.small = fixed(np.array([1, 200, 255], dtype="uint8"), "small")
        self.tiny = fixed(np.array([-5, 7], dtype="int8"), "tiny")
        self.label = fixed("lazyweights", "label")

    def call(self, x):
        h = self.encoder(x)
        for block in self.blocks:
            h = block(h)
        return {name: head(h) for name, head in self.heads.items()}


def subclassed(root: Path) -> None:
    keras.utils.set_random_seed(SEED)
    model = Subclassed()
    model(np.zeros((1, 6), "float32"))
    quantize(model)
    # the current tf-keras Adam keeps its m and v as a flat ``optimizer/_variables/N`` list, not as slots
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((4, 6)).astype("f4")
    model.train_on_batch(x, {"alpha": rng.standard_normal((4, 2)).astype("f4"),
                             "beta": rng.standard_normal((4, 3)).astype("f4")})  # fmt: skip
    desc = {
        "kind": "subclassed",
        "optimizer": "Adam",
        "structure": {"encoder": {"class": "Encoder", "dense1": {"units": 5}, "dense2": {"units": 4}},
                      "blocks": [{"units": 4}, {"units": 4}],
                      "heads": {"alpha": {"units": 2}, "beta": {"units": 3}}},
        "call": "h = encoder(x) (dense2(relu(dense1(x)))); h = block(h) for each block; {name: head(h)}",
        "variables": {"step": "int64", "flags": "bool", "half": "float16", "brain": "bfloat16",
                      "wide": "float64", "cplx": "complex64", "small": "uint8", "tiny": "int8", "label": "string"},
    }  # fmt: skip
    save_keras(model, root / "subclassed", desc, (6,))


def multishard(root: Path) -> None:
    """A plain tf.train.Checkpoint split by size into several data files."""
    out = root / "multishard"
    out.mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    variables = {f"v{i}": tf.Variable(np.round(rng.standard_normal((16, 16 + i)) * 64) / 64, dtype=tf.float32)
                 for i in range(4)}  # fmt: skip
    variables["count"] = tf.Variable(np.arange(10, dtype="int32"))
    ckpt = tf.train.Checkpoint(**variables)
    policy = tf.train.experimental.MaxShardSizePolicy(max_shard_size=1500)
    options = tf.train.CheckpointOptions(experimental_sharding_callback=policy)
    path = ckpt.save(str(out / "ckpt"), options=options)
    write_oracle(Path(path))


def proto_fields(root: Path) -> None:
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import tensor_bundle_pb2, trackable_object_graph_pb2

    def fields(desc) -> dict:
        out = {desc.name: {f.name: f.number for f in desc.fields}}
        for nested in desc.nested_types:
            for name, value in fields(nested).items():
                out[f"{desc.name}.{name}"] = value
        return out

    table: dict = {}
    for cls in (tensor_bundle_pb2.BundleHeaderProto, tensor_bundle_pb2.BundleEntryProto,
                trackable_object_graph_pb2.TrackableObjectGraph):  # fmt: skip
        table.update(fields(cls.DESCRIPTOR))
    table["DataType"] = {v.name: v.number for v in types_pb2.DataType.DESCRIPTOR.values if v.number < 100}
    (root / "proto_fields.json").write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")


def main(root: str) -> None:
    out = Path(root)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    functional_mobilenetv2(out)
    sequential_adam(out)
    subclassed(out)
    multishard(out)
    proto_fields(out)
    (out / "VERSIONS.json").write_text(json.dumps({"tensorflow": tf.__version__, "tf_keras": keras.__version__}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
