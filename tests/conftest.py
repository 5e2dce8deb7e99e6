"""Shared fixtures: real Keras 3 files (torch backend), committed Keras 2 files, a real Range HTTP server."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras 3's numpy backend would need jax

import atexit
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.database import DirectoryBasedExampleDatabase

from .servers import serve

# hypothesis keeps its example database and caches in a temporary directory, not .hypothesis/ in the working tree
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="lazyweights-hypothesis-")
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, ignore_errors=True)
set_hypothesis_home_dir(_HYPOTHESIS_HOME)
settings.register_profile(
    "lazyweights", database=DirectoryBasedExampleDatabase(os.path.join(_HYPOTHESIS_HOME, "examples"))
)
settings.load_profile("lazyweights")

FIXTURES = Path(__file__).parent / "fixtures"
KERAS2 = FIXTURES / "keras2"


def build_keras3_model(seed: int = 0):
    """A small functional model with conv, batch-norm, depthwise, dense, layer-norm, a nested model and bfloat16."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(12, name="fc")(x)
    x = keras.layers.LayerNormalization(name="ln")(x)
    head = keras.Sequential(
        [keras.layers.Dense(6, name="inner_fc"), keras.layers.Dense(3, dtype="bfloat16", name="half")], name="head"
    )
    out = head(x)
    model = keras.Model(inp, out, name="small_cnn")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    rng = np.random.default_rng(seed)
    model.fit(rng.standard_normal((4, 8, 8, 3)).astype("f4"), rng.standard_normal((4, 3)).astype("f4"), verbose=0)
    return model


def save_keras_formats(model, root, stem: str) -> dict:
    """``model`` saved by Keras itself as ``.weights.h5``, ``.keras`` and legacy ``.h5`` under ``root``."""
    import warnings

    paths = {"weights": root / f"{stem}.weights.h5", "keras": root / f"{stem}.keras", "h5": root / f"{stem}.h5"}
    model.save_weights(paths["weights"])
    model.save(paths["keras"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns that legacy .h5 is legacy
        model.save(paths["h5"])
    return paths


@pytest.fixture(scope="session")
def keras3_files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same trained model saved by Keras 3 as .weights.h5, .keras and legacy .h5, with its values."""
    model = build_keras3_model()
    paths = save_keras_formats(model, tmp_path_factory.mktemp("keras3"), "model")
    return {
        **paths,
        "values": [np.asarray(v) for v in model.get_weights()],
        "names": [v.path for v in model.weights],
        "optimizer": [np.asarray(v) for v in model.optimizer.variables],
        "optimizer_names": [v.path for v in model.optimizer.variables],
        "model": model,
    }


def keras2_expected(name: str) -> dict:
    return json.loads((KERAS2 / f"{name}.expected.json").read_text())


@pytest.fixture(scope="session")
def http_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("http")


@pytest.fixture(scope="session")
def http_server(http_root: Path):
    with serve(http_root) as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def user_cache_home(tmp_path_factory: pytest.TempPathFactory):
    """Subprocesses the tests start (CLI, ranks) cache manifests under a temporary XDG cache home."""
    path = tmp_path_factory.mktemp("xdg-cache")
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(path)
    yield path
    if previous is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(autouse=True)
def index_cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test caches remote manifests in its own temporary directory, never in the user's cache."""
    import lazyweights.formats.index

    path = tmp_path_factory.mktemp("lwindex")
    monkeypatch.setattr(lazyweights.formats.index, "DEFAULT_CACHE_DIR", path)
    return path
