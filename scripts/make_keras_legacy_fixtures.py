"""Write the Keras 2.0.5 and tf-keras 2.12 full-model ``.h5`` fixtures of ``tests/fixtures/keras_legacy/``.

Run by ``scripts/make_keras_legacy_fixtures.sh``, once per writer, each in its
own Python 3.11 virtualenv (TensorFlow is never a dependency of lazyweights)::

    make_keras_legacy_fixtures.py keras205 OUT_DIR    # Keras 2.0.5 on Theano 1.0.5 (no C compiler needed)
    make_keras_legacy_fixtures.py tf212 OUT_DIR       # TensorFlow 2.12 (tf.keras 2.12)

Each model is compiled with the optimizer, loss and metrics the writer knew
(``lr=``, ``decay=``, ``Custom>Adam``, ``reduction="auto"``, old metric
names), trained one step, and saved with ``model.save(path)``.  Its sidecar
``<file>.expected.json`` is the oracle: the optimizer's class and
``get_config()``, the metric names as compiled, and what the writer's
``predict`` and ``evaluate`` return on the data ``x``, ``y`` it holds.

Keras 2.0.5 predates Python 3.10's removal of ``collections.Iterable`` and
3.11's of ``inspect.getargspec``; the two aliases below let its unmodified
code import on the only Python this machine has.  They change no arithmetic
or serialisation.
"""

from __future__ import annotations

import collections
import collections.abc
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

for _name in ("Iterable", "Mapping", "MutableMapping", "Sequence", "Callable", "Hashable"):
    if not hasattr(collections, _name):
        setattr(collections, _name, getattr(collections.abc, _name))
if not hasattr(inspect, "getargspec"):
    inspect.getargspec = inspect.getfullargspec  # type: ignore[attr-defined]

RNG = np.random.default_rng(0)
X = RNG.standard_normal((8, 6)).astype("float32")
Y = np.eye(3, dtype="float32")[RNG.integers(0, 3, 8)]


def _keras205() -> tuple[Any, list[tuple[str, Any]]]:
    os.environ["KERAS_BACKEND"] = "theano"
    os.environ.setdefault("THEANO_FLAGS", "cxx=,blas.ldflags=,device=cpu,floatX=float32")
    import keras
    from keras.layers import Dense, Input
    from keras.models import Model, Sequential
    from keras.optimizers import SGD, Adam

    np.random.seed(0)
    seq = Sequential([Dense(8, input_shape=(6,), activation="relu"), Dense(3, activation="softmax")])
    seq.compile(optimizer=Adam(lr=0.01), loss="categorical_crossentropy", metrics=["acc", "mae"])
    inputs = Input(shape=(6,))
    hidden = Dense(5, activation="tanh")(inputs)
    func = Model(inputs, Dense(3)(hidden))
    func.compile(optimizer=SGD(lr=0.05, momentum=0.9, decay=0.001), loss="mse", metrics=["cosine_proximity"])
    return keras, [("keras205_sequential_adam.h5", seq), ("keras205_functional_sgd.h5", func)]


def _tf212() -> tuple[Any, list[tuple[str, Any]]]:
    import tensorflow as tf

    keras = tf.keras
    tf.keras.utils.set_random_seed(0)
    seq = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    seq.compile(
        optimizer=keras.optimizers.Adam(learning_rate=0.01),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=["mae", keras.metrics.CategoricalAccuracy()],
    )
    inputs = keras.Input((6,))
    func = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(5, activation="tanh")(inputs)))
    func.compile(optimizer=keras.optimizers.RMSprop(learning_rate=0.002, rho=0.8), loss="mse", metrics=["mae"])
    return keras, [("tf212_sequential_adam.h5", seq), ("tf212_functional_rmsprop.h5", func)]


def _plain(value: Any) -> Any:
    """A JSON-able copy of an optimizer config value (numpy scalars as floats)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


def _sidecar(keras: Any, model: Any) -> dict[str, Any]:
    scores = model.evaluate(X, Y, verbose=0)
    return {
        "keras_version": keras.__version__,
        "optimizer_class": type(model.optimizer).__name__,
        "optimizer_config": _plain(model.optimizer.get_config()),
        "metrics_names": list(model.metrics_names),
        "evaluate": [float(s) for s in np.atleast_1d(scores)],
        "x": X.tolist(),
        "y": Y.tolist(),
        "predictions": model.predict(X).tolist(),
    }


def main(writer: str, out: Path) -> None:
    keras, models = {"keras205": _keras205, "tf212": _tf212}[writer]()
    out.mkdir(parents=True, exist_ok=True)
    for name, model in models:
        model.fit(X, Y, epochs=1, batch_size=8, verbose=0)
        model.save(str(out / name))
        (out / f"{name}.expected.json").write_text(json.dumps(_sidecar(keras, model), indent=1) + "\n")
        print(f"wrote {out / name} ({(out / name).stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
