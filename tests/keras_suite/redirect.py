"""The loads Keras's saving tests call, each replaced by its ``lazyweights.keras`` counterpart.

The tests keep every assertion; only where the bytes come from changes.
Each replacement has the signature of the Keras function it stands in for
and passes its arguments on unchanged, so an argument lazyweights handles
differently shows up as a failing test, not as a harness that hides it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["patches"]


def _load_model(filepath: Any, custom_objects: Any = None, compile: bool = True, safe_mode: bool = True) -> Any:
    from lazyweights import keras as lwk

    return lwk.load_model(filepath, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)


def _load_weights(model: Any, filepath: Any, skip_mismatch: bool = False, **kwargs: Any) -> None:
    from lazyweights import keras as lwk

    lwk.load_weights(model, filepath, skip_mismatch=skip_mismatch, **kwargs)


def _model_load_weights(self: Any, filepath: Any, skip_mismatch: bool = False, **kwargs: Any) -> None:
    _load_weights(self, filepath, skip_mismatch, **kwargs)


def _load_weights_only(model: Any, filepath: Any, skip_mismatch: bool = False, objects_to_skip: Any = None) -> None:
    _load_weights(model, filepath, skip_mismatch, objects_to_skip=objects_to_skip)


def patches() -> Iterator[tuple[Any, str, Any]]:
    """``(owner, attribute, replacement)`` for every public and internal load entry the tests call."""
    import keras
    from keras.src import saving as src_saving
    from keras.src.legacy.saving import legacy_h5_format
    from keras.src.models import model as model_module
    from keras.src.saving import saving_api, saving_lib

    for owner in (keras.saving, keras.models, saving_api, src_saving):
        yield owner, "load_model", _load_model
    yield keras.saving, "load_weights", _load_weights
    yield saving_api, "load_weights", _load_weights
    yield saving_lib, "load_model", _load_model
    yield saving_lib, "load_weights_only", _load_weights_only
    yield legacy_h5_format, "load_model_from_hdf5", _load_model
    yield model_module.Model, "load_weights", _model_load_weights
