"""Finding weights and layers by the names users gave them, and progress through an fsspec Callback."""

from __future__ import annotations

import fsspec.callbacks
import numpy as np
import pytest

import lazyweights as lw

from .conftest import KERAS2


@pytest.mark.parametrize("kind", ["weights", "keras"])
def test_keras3_layers_and_weights_by_their_own_names(keras3_files: dict, kind: str) -> None:
    """Keras 3 stores ``fc`` at ``layers/dense``: the layer's own name finds it, and ``fc/kernel`` its kernel."""
    model = keras3_files["model"]
    with lw.open(keras3_files[kind]) as ckpt:
        for name in ("conv", "bn", "fc", "ln"):
            layer = ckpt.layer(name)
            expected = model.get_layer(name).weights
            assert [w.shape for w in layer.weights] == [tuple(v.shape) for v in expected], name
            for weight, variable in zip(layer.weights, expected, strict=True):
                np.testing.assert_array_equal(weight.read(), np.asarray(variable))
        np.testing.assert_array_equal(ckpt["fc/kernel"].read(), np.asarray(model.get_layer("fc").kernel))
        variance = np.asarray(model.get_layer("bn").moving_variance)
        np.testing.assert_array_equal(ckpt["bn/moving_variance"].read(), variance)
        assert ckpt["fc/1"].key == ckpt["fc/bias"].key == ckpt.layer("fc").weights[1].key
        assert "fc/kernel" in ckpt and "fc/nothing" not in ckpt
        assert ckpt.layer(ckpt.layer("fc").name) == ckpt.layer("fc")  # the object path still works
        with pytest.raises(KeyError, match=r"no layer 'fcc'.*'fc'"):
            ckpt.layer("fcc")


def test_keras2_layers_by_name() -> None:
    with lw.open(KERAS2 / "cnn_weights.h5") as ckpt:
        first = next(layer for layer in ckpt.layers if layer.weights)
        assert ckpt.layer(first.name) == first
        assert ckpt[first.weights[0].name].key == first.weights[0].key


def test_progress_accepts_an_fsspec_callback() -> None:
    class Recorder(fsspec.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.updates: list[int] = []

        def relative_update(self, inc: int = 1) -> None:
            self.updates.append(inc)
            super().relative_update(inc)

    recorder = Recorder()
    path = KERAS2 / "mobilenetv2_weights.h5"
    loaded = lw.load(path, progress=recorder)
    assert recorder.size == loaded.report.bytes_loaded == sum(a.nbytes for a in loaded.values())
    assert recorder.value == recorder.size and len(recorder.updates) > 1
