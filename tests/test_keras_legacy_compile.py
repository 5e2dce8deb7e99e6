"""Full-model ``.h5`` files of real Keras 2.0.5 and tf.keras 2.12 compile as their writer compiled them.

The files and their ``.expected.json`` oracles are written by the real writers
(``scripts/make_keras_legacy_fixtures.sh``: Keras 2.0.5 on Theano, TensorFlow
2.12), each compiled with what Keras 3 refuses (``lr=``, ``decay=``,
``Custom>Adam``, ``reduction="auto"``, ``cosine_proximity``).  Here
``lwk.load_model(compile=True)`` must give the same optimizer class and
hyperparameters, and ``evaluate`` must give the loss and metrics the writer's
own ``evaluate`` gave on the same data.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from lazyweights import keras as lwk  # noqa: E402

from .conftest import FIXTURES  # noqa: E402

LEGACY = FIXTURES / "keras_legacy"
FILES = sorted(p.name for p in LEGACY.glob("*.h5"))
# Keras 2's cosine_proximity metric was minus the cosine similarity (Keras 2.0: averaged over the last axis,
# so also divided by its length); its translation, Keras 3's cosine_similarity metric, reports the similarity.
NEGATED = {"cosine_proximity"}
# Keras 2 optimizer argument -> Keras 3's (the rest keep their names)
RENAMED = {"lr": "learning_rate"}
# arguments that describe how tf.keras ran, or that Keras 3 turns into a schedule (checked apart)
NOT_COMPARED = {"name", "decay", "jit_compile", "is_legacy_optimizer"}


def _expected(name: str) -> dict:
    return json.loads((LEGACY / f"{name}.expected.json").read_text())


@pytest.fixture(params=FILES)
def loaded(request):
    name = request.param
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras 3's own notes on legacy configs (input_shape on a layer, ...)
        model = lwk.load_model(LEGACY / name, compile=True)
    return model, _expected(name)


def test_fixtures_present() -> None:
    assert {n.split("_")[0] for n in FILES} == {"keras205", "tf212"}


def test_optimizer_as_written(loaded) -> None:
    model, expected = loaded
    assert model.compiled
    optimizer = model.optimizer
    assert type(optimizer).__name__ == expected["optimizer_class"]
    config = optimizer.get_config()
    for key, value in expected["optimizer_config"].items():
        key = RENAMED.get(key, key)
        if key in NOT_COMPARED or value is None or key not in config:
            continue
        if key == "learning_rate" and isinstance(config[key], dict):  # a Keras 2 decay became a schedule
            schedule = config[key]["config"]
            assert schedule["initial_learning_rate"] == pytest.approx(value)
            assert schedule["decay_rate"] == pytest.approx(expected["optimizer_config"]["decay"])
            assert schedule["decay_steps"] == 1
            continue
        assert config[key] == pytest.approx(value), key


def test_decay_became_inverse_time_schedule(loaded) -> None:
    model, expected = loaded
    decay = expected["optimizer_config"].get("decay") or 0.0
    rate = model.optimizer.learning_rate
    lr = expected["optimizer_config"].get("lr", expected["optimizer_config"].get("learning_rate"))
    # Keras 2: lr / (1 + decay * iterations), at the iteration the file was saved after (one step)
    assert float(rate) == pytest.approx(lr / (1 + decay * int(model.optimizer.iterations)), rel=1e-6)


def test_predict_and_evaluate_as_the_writer(loaded) -> None:
    model, expected = loaded
    x, y = np.asarray(expected["x"], "float32"), np.asarray(expected["y"], "float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), expected["predictions"], rtol=1e-5, atol=1e-6)
    scores = model.evaluate(x, y, verbose=0, batch_size=len(x))
    names = expected["metrics_names"]
    assert len(np.atleast_1d(scores)) == len(names), (scores, names)
    per_axis = y.shape[-1] if expected["keras_version"].startswith("2.0") else 1
    want = [-v * per_axis if n in NEGATED else v for n, v in zip(names, expected["evaluate"], strict=True)]
    np.testing.assert_allclose(np.atleast_1d(scores), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", FILES)
def test_optimizer_state(name) -> None:
    """tf.keras 2.12 slots are restored (the saved step count with them); Keras 2.0's are refused with a warning.

    Keras 2.0 saved its Theano optimizer's slots as ``param_1``, ``param_2``,
    ... (and the step count as ``/iterations``, at the file's root): nothing
    ties a slot to its variable but its position, so they are not guessed.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = lwk.load_model(LEGACY / name, compile=True)
    refused = [w for w in caught if "freshly initialized optimizer" in str(w.message)]
    if name.startswith("keras205"):
        assert refused and int(model.optimizer.iterations) == 0
    else:
        assert not refused and int(model.optimizer.iterations) == 1
        slots = [v for v in model.optimizer.variables if "momentum" in v.path or "velocity" in v.path]
        assert slots and any(np.any(np.asarray(v) != 0) for v in slots)
