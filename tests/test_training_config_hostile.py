"""Hostile training configs in Keras 2 ``.h5`` files (the issue's reproductions, committed under fixtures/hostile).

Both carry a Python lambda that, if ever deserialised and run, writes a file:
a loss with no ``name`` (Keras 3's compile raised a bare ``KeyError`` on it)
and a lambda learning-rate schedule (a bare ``ValueError`` under safe mode).
Each must be a ``LazyWeightsError`` naming the file, the lambda refused as
unsafe code, and the payload never run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import lazyweights as lw

HOSTILE = Path(__file__).parent / "fixtures" / "hostile"
PAYLOAD = Path("/tmp/rel/hostile/PWNED")  # what the lambdas would write


@pytest.fixture(autouse=True)
def _payload_never_runs():
    assert not PAYLOAD.exists()
    yield
    assert not PAYLOAD.exists(), "code from the checkpoint ran"


def test_loss_without_name_is_a_lazyweights_error_not_a_key_error() -> None:
    from lazyweights.keras import load_model

    path = HOSTILE / "keyerror_training_config_loss_without_name.h5"
    with pytest.raises(lw.LazyWeightsError, match=r"keyerror_training_config_loss_without_name\.h5.*loss") as info:
        load_model(path)
    assert not isinstance(info.value, KeyError)
    model = load_model(path, compile="best_effort")  # the weights load; only compiling is given up
    assert model.weights and not model.compiled


@pytest.mark.parametrize("compile_", [True, "best_effort"])
def test_lambda_learning_rate_under_safe_mode_is_unsafe(compile_) -> None:
    from lazyweights.keras import load_model

    path = HOSTILE / "valueerror_training_config_lambda_lr.h5"
    with pytest.raises(lw.UnsafeCheckpointError, match=r"valueerror_training_config_lambda_lr\.h5.*optimizer_config"):
        load_model(path, safe_mode=True, compile=compile_)
    model = load_model(path, compile=False)  # nothing of the training config is read: the model itself is safe
    assert model.weights
    assert os.environ.get("KERAS_BACKEND") == "torch"


@pytest.mark.parametrize("metadata", ["walk", "h5py"])
def test_million_repeated_layer_names_are_refused_at_the_first_repeat(tmp_path, monkeypatch, metadata) -> None:
    """A 5 MB file whose ``layer_names`` repeats one layer 1,000,000 times: refused at the first repeat
    (each repeat used to cost a full weight spec; measured 42 s to open before, 1.7 s now)."""
    import h5py
    import numpy as np

    path = tmp_path / "million.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f.create_dataset("dense/dense/kernel:0", data=np.ones((2, 2), "f4"))
        f["dense"].attrs["weight_names"] = np.array([b"dense/kernel:0"])
        f.attrs["layer_names"] = np.array([b"dense"] * 1_000_000)
    monkeypatch.setenv("LAZYWEIGHTS_HDF5_METADATA", metadata)
    with pytest.raises(lw.FormatError, match=r"million\.h5: layer_names lists the layer 'dense' twice"):
        lw.open(path, index=False)
