"""The harness itself: the upstream tests are there, and a load inside them really goes through lazyweights."""

from __future__ import annotations

import pytest

from .conftest import UPSTREAM, UPSTREAM_DIR
from .redirect import patches


def test_upstream_tests_are_extracted():
    missing = [name for name in UPSTREAM if not (UPSTREAM_DIR / name).is_file()]
    if missing:
        pytest.skip(f"run `make keras-suite` to extract Keras's tests ({', '.join(missing)} missing)")


def test_every_patched_load_calls_lazyweights(tmp_path, monkeypatch):
    import keras

    from lazyweights import keras as lwk

    calls = []
    monkeypatch.setattr(lwk, "load_model", lambda *a, **k: calls.append("load_model"))
    monkeypatch.setattr(lwk, "load_weights", lambda *a, **k: calls.append("load_weights"))
    for owner, name, replacement in patches():
        monkeypatch.setattr(owner, name, replacement)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    path = str(tmp_path / "m.keras")
    keras.saving.load_model(path)
    keras.models.load_model(path)
    model.load_weights(path)
    keras.saving.load_weights(model, path)
    from keras.src.legacy.saving import legacy_h5_format
    from keras.src.saving import saving_lib

    saving_lib.load_model(path)
    saving_lib.load_weights_only(model, path)
    legacy_h5_format.load_model_from_hdf5(path)
    assert calls == [
        "load_model",
        "load_model",
        "load_weights",
        "load_weights",
        "load_model",
        "load_weights",
        "load_model",
    ]
