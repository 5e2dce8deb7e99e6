"""Keras 3 integration: ``load_weights`` and ``load_model`` with Keras's semantics, streamed.

>>> from lazyweights import keras as lwk
>>> lwk.load_weights(model, "gs://bucket/resnet50_weights.h5", by_name=True)     # doctest: +SKIP
>>> model = lwk.load_model("s3://bucket/model.keras")                            # doctest: +SKIP

Unlike ``keras.models.load_model`` / ``Model.load_weights``, nothing is copied
to local disk or read whole into memory: values stream from any fsspec URL,
one layer at a time, under ``max_memory``.  Keras 2 (tf-keras) full-model
files whose configs Keras 3 rejects are translated (``keras_compat``), and
their optimizer slots are restored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

from . import checkpoint as _checkpoint
from .checkpoint import readahead_limit
from .errors import (
    CompileError,
    FormatError,
    MismatchError,
    ModelConfigError,
    ModelConfigTypeError,
    NotFoundError,
    StorageError,
    UnsafeCheckpointError,
    UsageError,
    require,
)
from .formats.keras_v3 import ASSETS_DIR, extract_assets
from .storage import file_object_url, get_source, is_file_object
from .stream import LoadReport
from .stream.budget import DEFAULT_MAX_MEMORY, parse_bytes
from .stream.progress import ProgressArg, progress_callback
from .targets.keras import (
    KerasLoader,
    import_keras,
    legacy_groups,
    load_v3_state,
    model_order_keys,
    optimizer_group,
    optimizer_pairs,
    v3_store,
)
from .targets.keras.config import is_keras2_config, translate_config, translate_training_config
from .targets.keras.object_graph import object_graph_groups, object_graph_optimizer_pairs, optimizer_groups

require("keras", "keras")  # fail at import, naming the extra, not at the first call

__all__ = ["load_model", "load_weights", "weight_keys"]

logger = logging.getLogger(__name__)

Url = str | os.PathLike[str] | BinaryIO
_V3 = ("keras-v3", "keras-zip", "keras-sharded")
_ARRAY_COPY_WARNING = "__array__ implementation doesn't accept a copy keyword"
_UNZIPPED_WEIGHTS = "model.weights.h5"  # an unzipped .keras: a folder of config.json and this
_KERAS_SUFFIXES = (".keras", ".h5", ".hdf5", ".json")  # what Keras opens by extension
_TF = "tf-checkpoint"


def load_weights(
    model: Any,
    src: Url | _checkpoint.Checkpoint,
    *,
    by_name: bool = False,
    skip_mismatch: bool = False,
    reshape: bool = False,
    objects_to_skip: Any = None,
    storage_options: Mapping[str, Any] | None = None,
    max_memory: int | str | None = DEFAULT_MAX_MEMORY,
    concurrency: int | None = None,
    progress: ProgressArg = False,
    **kwargs: Any,
) -> LoadReport:
    """Load a checkpoint's weights into a built Keras 3 model, as ``model.load_weights`` would.

    Legacy ``.h5`` files match layers by position (``by_name=False``) or by
    name; ``skip_mismatch`` skips (with a warning, and in the report) layers
    whose weight count or shapes disagree; ``reshape`` accepts a saved array
    of another shape but the same size.  Keras 3 ``.weights.h5``/``.keras``
    files match by object path, as Keras 3 does; ``objects_to_skip`` (layers
    or other Keras objects of ``model``) leaves those objects as they are, for
    ``.weights.h5`` files as in Keras.  ``src`` may also be a binary file
    object.  Values are cast to each variable's dtype.  ``max_memory`` bounds
    the bytes in flight (default ``DEFAULT_MAX_MEMORY``, 256 MiB, as
    ``lw.load`` and ``lwt.load_state_dict``; None: unbounded).  Returns the
    :class:`~lazyweights.LoadReport`.

    Any other keyword raises :class:`~lazyweights.UsageError` (a
    ``ValueError``, as Keras's ``load_weights`` raises for a keyword it does
    not take), before the file is opened.
    """
    if kwargs:
        raise UsageError(f"Invalid keyword arguments: {kwargs}")
    with _opened(src, storage_options, readahead_limit(max_memory)) as (ckpt, _):
        if not model.built:
            raise UsageError(
                f"{ckpt.url}: You are loading weights into a model that has not yet been built. Try building the "
                "model first by calling it on some data or by using `build()`."
            )
        if objects_to_skip is not None and ckpt.format in ("keras-zip", "keras-h5"):
            raise UsageError(
                f"{ckpt.url}: `objects_to_skip` only supports loading '.weights.h5' files; this is a {ckpt.format} file"
            )
        with _loader(ckpt, max_memory, concurrency, progress) as loader:
            if ckpt.format == _TF:
                if by_name or reshape:
                    raise UsageError(
                        f"{ckpt.url}: `by_name`/`reshape` only apply to legacy '.h5' files; a TensorFlow "
                        "checkpoint is matched through its object graph"
                    )
                _load_tf(model, ckpt, loader, skip_mismatch)
            elif ckpt.format in _V3:
                if by_name:
                    raise UsageError(
                        f"{ckpt.url}: `by_name` only supports loading legacy '.h5' or '.hdf5' files; this is a "
                        f"{ckpt.format} file, matched by object path"
                    )
                _load_v3(model, ckpt, loader, skip_mismatch, objects_to_skip)
            else:
                _load_legacy(model, ckpt, loader, by_name=by_name, skip_mismatch=skip_mismatch, reshape=reshape)
        return loader.report


def load_model(
    src: Url | _checkpoint.Checkpoint,
    *,
    custom_objects: Mapping[str, Any] | None = None,
    compile: bool | str = True,
    safe_mode: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    max_memory: int | str | None = DEFAULT_MAX_MEMORY,
    concurrency: int | None = None,
    progress: ProgressArg = False,
) -> Any:
    """Build a model from the checkpoint's config and stream its weights (and optimizer state) in.

    ``.keras`` archives use their ``config.json`` (so does an unzipped
    ``.keras``: a folder holding ``config.json`` and ``model.weights.h5``);
    full-model ``.h5`` files their ``model_config`` (Keras 2 configs are
    translated for Keras 3).  ``src`` may also be a binary file object.
    ``safe_mode=True`` refuses configs that would run arbitrary code (Lambda
    layers); ``compile=True`` compiles from the saved training config
    (Keras 2 optimizer, loss and metric configs translated) and restores the
    optimizer state, warning and keeping a fresh optimizer when it does not
    fit, like Keras.  A training config that still cannot be compiled raises
    :class:`~lazyweights.CompileError` naming the field; with
    ``compile="best_effort"`` it warns and returns the model uncompiled.
    """
    if compile not in (True, False, "best_effort"):
        raise UsageError(f"compile must be True, False or 'best_effort', not {compile!r}")
    opened = _opened(src, storage_options, readahead_limit(max_memory))
    with opened as (ckpt, config), _loader(ckpt, max_memory, concurrency, progress) as loader:
        if config is None:
            raise FormatError(
                f"{ckpt.url}: No model config found in the file ({ckpt.format}); load_model needs a .keras archive "
                "or a full-model .h5 (model.save); use load_weights into a model you build"
            )
        if ckpt.format in _V3:
            model = _build(ckpt, lambda: _v3_model(config, custom_objects, bool(compile), safe_mode))
            with _assets(ckpt) as assets:
                _load_v3(model, ckpt, loader, skip_mismatch=False, assets=assets)
            return model
        model = _build(ckpt, lambda: _legacy_model(ckpt, custom_objects, safe_mode))
        matched = _load_legacy(model, ckpt, loader, by_name=False, skip_mismatch=False, reshape=False)
        if compile:
            _compile_legacy(model, ckpt, loader, custom_objects, matched, best_effort=compile == "best_effort")
        return model


def weight_keys(
    model: Any, src: Url | _checkpoint.Checkpoint, *, storage_options: Mapping[str, Any] | None = None
) -> list[str | None]:
    """The checkpoint key of each of ``model.weights``, in ``model.get_weights()`` order; None where none.

    ``ckpt.weights`` lists a Keras 3 file's weights in the order Keras wrote
    them: its save traversal, which for a subclassed model visits attributes
    by name, not in the order they were assigned, the order of
    ``get_weights()``.  The file does not record that order; the model does.
    The keys are paired with variables as :func:`load_weights` pairs them::

        with lw.open(url) as ckpt:
            arrays = [ckpt[key].read() for key in lwk.weight_keys(model, ckpt)]   # model.get_weights()'s order

    Reads metadata only.  For Keras 3 files (``.weights.h5``, ``.keras``,
    sharded); other formats raise :class:`~lazyweights.UsageError`.
    """
    with _opened(src, storage_options) as (ckpt, _):
        if ckpt.format not in _V3:
            raise UsageError(
                f"{ckpt.url}: weight_keys pairs Keras 3 object paths; this is a {ckpt.format} file, whose "
                "ckpt.weights already follow its layers' order"
            )
        with warnings.catch_warnings():  # see _load_v3: Keras's traversal, numpy's notes on Variable.__array__
            warnings.filterwarnings("ignore", _ARRAY_COPY_WARNING, DeprecationWarning)
            return model_order_keys(model, ckpt.keys())


# -- shared plumbing -------------------------------------------------------------------------


@contextlib.contextmanager
def _opened(
    src: Any, storage_options: Mapping[str, Any] | None, readahead: int | None = None
) -> Iterator[tuple[_checkpoint.Checkpoint, Any]]:
    """The checkpoint at ``src`` and its model config, opened as Keras takes a model file.

    ``src`` is a URL or path, an open :class:`~lazyweights.Checkpoint`, a
    binary file object (read in place, never indexed), or an unzipped
    ``.keras`` folder (its ``model.weights.h5`` opened, its ``config.json``
    read).  A missing file raises :class:`~lazyweights.NotFoundError`, a
    ``ValueError`` as in Keras.  ``readahead``: a URL's object of at most that
    size is read whole at open (a full load follows; see :func:`lazyweights.load`)
    and dropped on exit.
    """
    if is_file_object(src):
        with file_object_url(src) as url, _checkpoint.opened(url, index=False) as ckpt:
            yield ckpt, ckpt.model_config
        return
    with contextlib.ExitStack() as stack:
        try:
            ckpt = stack.enter_context(_checkpoint.opened(src, storage_options, readahead=_ahead(src, readahead)))
            if readahead:
                stack.callback(ckpt._source.release_whole)
            config = ckpt.model_config
        except (StorageError, FormatError) as exc:
            unzipped = _unzipped(src, storage_options)
            if unzipped is None:
                if _not_found(exc):
                    raise NotFoundError(_not_found_message(src, exc)) from exc
                raise
            ckpt = stack.enter_context(_checkpoint.opened(unzipped[0], storage_options))
            config = unzipped[1]
        yield ckpt, config


def _ahead(src: Any, readahead: int | None) -> int | None:
    """The read-ahead limit for opening ``src`` (None for a Checkpoint already open: it was opened as it is)."""
    return None if isinstance(src, _checkpoint.Checkpoint) else readahead


def _not_found_message(src: Any, exc: BaseException) -> str:
    """Keras's words for a missing file: "File format not supported" where it would not even look, by extension."""
    if str(src).endswith(_KERAS_SUFFIXES):
        return f"File not found: filepath={src}. Please ensure the file is an accessible `.keras` zip file. ({exc})"
    return f"File format not supported: filepath={src}, and there is no file there either ({exc})"


def _not_found(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, FileNotFoundError) and not isinstance(exc, NotFoundError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _unzipped(src: Any, storage_options: Mapping[str, Any] | None) -> tuple[str, Any] | None:
    """``(weights URL, config)`` of an unzipped ``.keras`` folder at ``src`` (local or remote); else None."""
    if isinstance(src, _checkpoint.Checkpoint):
        return None
    base = os.fspath(src).rstrip("/")
    try:
        source = get_source(f"{base}/config.json", storage_options, refresh=True)
        config = json.loads(source.read(0, source.size))
    except (StorageError, ValueError):
        return None
    return f"{base}/{_UNZIPPED_WEIGHTS}", config


class _loader:
    """A KerasLoader with a progress bar over the checkpoint's bytes."""

    def __init__(self, ckpt: _checkpoint.Checkpoint, max_memory: Any, concurrency: int | None, progress: ProgressArg):
        self._ckpt, self._args = ckpt, (parse_bytes(max_memory), concurrency)
        self._bar = progress_callback(progress, ckpt.nbytes, f"loading {os.path.basename(str(ckpt.url))}")

    def __enter__(self) -> KerasLoader:
        callback = self._bar.__enter__()
        report = LoadReport(url=self._ckpt.url, format=self._ckpt.format)
        return KerasLoader(self._ckpt.source, report, *self._args, progress=callback)

    def __exit__(self, *exc: Any) -> None:
        self._bar.__exit__(*exc)


def _file_layers(ckpt: _checkpoint.Checkpoint) -> list[tuple[str, list[Any]]]:
    return [(layer.name, [w.spec for w in layer.weights]) for layer in ckpt.layers]


def _load_legacy(
    model: Any, ckpt: _checkpoint.Checkpoint, loader: KerasLoader, *, by_name: bool, skip_mismatch: bool, reshape: bool
) -> dict[str, Any]:
    """Load a legacy .h5 file's weights; return saved weight name → the model variable it filled."""
    if ckpt.format not in ("keras-h5",):
        raise FormatError(
            f"{ckpt.url}: a {ckpt.format} file has no Keras layer structure (no layer_names); "
            "read its weights with lw.load or lw.open instead"
        )
    matched: dict[str, Any] = {}
    groups = legacy_groups(
        ckpt.url,
        _file_layers(ckpt),
        model,
        by_name=by_name,
        skip_mismatch=skip_mismatch,
        reshape=reshape,
        report=loader.report,
        matched=matched,
    )
    loader.run(groups)
    return matched


def _load_tf(model: Any, ckpt: _checkpoint.Checkpoint, loader: KerasLoader, skip_mismatch: bool) -> None:
    """A TensorFlow checkpoint through its object graph; then the optimizer state, if the model has one."""
    graph = ckpt.attrs["object_graph"]
    groups, matched = object_graph_groups(
        ckpt.url, model, ckpt.manifest.weights, graph["paths"], skip_mismatch=skip_mismatch, report=loader.report
    )
    loader.run(groups)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not ckpt.manifest.optimizer:
        return
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    pairs, unmatched = object_graph_optimizer_pairs(ckpt.url, model, ckpt.manifest.optimizer, graph, matched)
    for key, why in unmatched:  # hyperparameters tf-keras kept as variables (beta_1, decay) have none in Keras 3
        logger.info("%s", why)
        loader.report.skipped.append((key, why))
    loader.run(optimizer_groups(pairs))


def _load_v3(
    model: Any,
    ckpt: _checkpoint.Checkpoint,
    loader: KerasLoader,
    skip_mismatch: bool,
    objects_to_skip: Any = None,
    assets: Any = None,
) -> None:
    manifest = ckpt.manifest
    paths = [layer.name for layer in manifest.layers]
    skip = list(objects_to_skip or ())
    with warnings.catch_warnings():
        # Recording the model's variable paths runs Keras's optimizer save_own_variables, whose variable.numpy()
        # makes numpy 2 warn once per variable about Keras's Variable.__array__ signature; nothing of ours.
        warnings.filterwarnings("ignore", _ARRAY_COPY_WARNING, DeprecationWarning)
        store = v3_store(ckpt.url, [*manifest.weights, *manifest.optimizer], paths, loader, model, skip=skip)
    errors = load_v3_state(
        model, store, loader.report, assets_store=assets, skip_mismatch=skip_mismatch, objects_to_skip=skip
    )
    if not errors:
        return
    from keras.src.saving import saving_lib

    try:
        saving_lib._raise_loading_failure(errors, warn_only=skip_mismatch)
    except ValueError as exc:
        raise MismatchError(f"{ckpt.url}: {exc}") from exc


@contextlib.contextmanager
def _assets(ckpt: _checkpoint.Checkpoint) -> Any:
    """Keras's asset store over a ``.keras`` archive's ``assets/`` (None without any).

    Keras's ``load_assets`` takes a directory, so the asset members (only
    those) are written to a temporary directory, removed on exit.
    """
    if ckpt.format != "keras-zip":
        yield None
        return
    from keras.src.saving.saving_lib import DiskIOStore

    with tempfile.TemporaryDirectory(prefix="lazyweights-assets-") as directory:
        if not extract_assets(ckpt.source, directory):
            yield None
            return
        yield DiskIOStore(os.path.join(directory, ASSETS_DIR), mode="r")


# -- building models ------------------------------------------------------------------------------


def _build(ckpt: _checkpoint.Checkpoint, make: Any) -> Any:
    """Run Keras's deserialisation; its errors become ours, with the hint Keras users need."""
    try:
        return make()
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        text = str(exc)
        _refuse_unsafe(ckpt, exc, "model config")
        error = ModelConfigTypeError if isinstance(exc, TypeError) else ModelConfigError
        raise error(
            f"{ckpt.url}: Keras cannot build the model from its config: {text}. If the model uses custom layers "
            "or functions, pass them as custom_objects={'Name': Class}"
        ) from exc


def _refuse_unsafe(ckpt: _checkpoint.Checkpoint, exc: BaseException, what: str) -> None:
    """Raise :class:`UnsafeCheckpointError` when Keras refused ``what`` under safe mode (a lambda, arbitrary code)."""
    text = str(exc)
    if "safe_mode" in text or "unsafe" in text.lower():
        raise UnsafeCheckpointError(
            f"{ckpt.url}: the {what} would run arbitrary code ({text.splitlines()[0] if text else exc!r}); pass "
            "safe_mode=False only if you trust this file"
        ) from exc


def _legacy_model(ckpt: _checkpoint.Checkpoint, custom_objects: Mapping[str, Any] | None, safe_mode: bool) -> Any:
    from keras.src.legacy.saving import json_utils, saving_options, saving_utils
    from keras.src.saving import serialization_lib

    config = ckpt.model_config
    if is_keras2_config(ckpt.attrs):
        config = translate_config(config)
    config = json_utils.decode(json.dumps(config))  # Keras's own decoding of tuples, shapes, ...
    with saving_options.keras_option_scope(use_legacy_config=True), serialization_lib.SafeModeScope(safe_mode):
        return saving_utils.model_from_config(config, custom_objects=dict(custom_objects or {}))


def _v3_model(config: Any, custom_objects: Mapping[str, Any] | None, compile: bool, safe_mode: bool) -> Any:
    from keras.src.saving import saving_lib

    return saving_lib._model_from_config(json.dumps(config), dict(custom_objects or {}), compile, safe_mode)


# -- compiling and optimizer state (legacy .h5) -------------------------------------------------------


def _compile_legacy(
    model: Any,
    ckpt: _checkpoint.Checkpoint,
    loader: KerasLoader,
    custom_objects: Mapping[str, Any] | None,
    matched: dict[str, Any],
    *,
    best_effort: bool = False,
) -> None:
    from keras.src.legacy.saving import saving_utils

    if ckpt.training_config is None:
        warnings.warn(
            f"{ckpt.url}: No training configuration found in the save file, so the model was *not* compiled. "
            "Compile it manually.",
            UserWarning,
            stacklevel=3,
        )
        return
    try:
        args = _compile_args(ckpt, custom_objects)
        _field(ckpt, "training_config", lambda: model.compile(**args))
    except CompileError as exc:
        if not best_effort:
            raise
        warnings.warn(f"{exc}; compile='best_effort': the model is returned uncompiled", UserWarning, stacklevel=3)
        return
    saving_utils.try_build_compiled_arguments(model)
    if ckpt.optimizer_weights:
        _restore_optimizer(model, ckpt, loader, matched)


def _compile_args(ckpt: _checkpoint.Checkpoint, custom_objects: Mapping[str, Any] | None) -> dict[str, Any]:
    """Keras's compile arguments from ``training_config`` (a Keras 1/2 one translated first).

    Keras 3 cannot deserialise the plain-function losses its own legacy writer
    records (``'keras.metrics.mse' ... is not a KerasSaveable subclass``, so
    ``keras.models.load_model`` fails on them); such losses and metrics are
    passed to ``compile`` by name instead, which Keras resolves itself, after
    checking each field so that one that cannot compile is named.
    """
    from keras.src.legacy.saving import saving_utils

    config, objects = ckpt.training_config, dict(custom_objects or {})
    if is_keras2_config(ckpt.attrs):
        config = translate_training_config(config)
    try:
        return saving_utils.compile_args_from_training_config(config, objects)
    except (ValueError, TypeError, KeyError) as exc:
        logger.info("%s: compiling field by field (%s)", ckpt.url, exc)
    keras = import_keras()
    with keras.saving.CustomObjectScope(objects):
        optimizer = _field(ckpt, "optimizer_config", lambda: keras.optimizers.deserialize(config["optimizer_config"]))
        for field, get in (("loss", keras.losses.get), ("metrics", keras.metrics.get)):
            for name in _named(config.get(field)):
                _field(ckpt, f"{field} ({name!r})", lambda get=get, name=name: get(name))
    return {
        "optimizer": optimizer,
        "loss": config.get("loss"),
        "metrics": config.get("metrics"),
        "loss_weights": config.get("loss_weights"),
        "weighted_metrics": config.get("weighted_metrics"),
    }


def _named(config: Any) -> Iterator[Any]:
    """The losses/metrics of a nested per-output config that Keras resolves by itself (names compile knows aside)."""
    if isinstance(config, list):
        for item in config:
            yield from _named(item)
    elif isinstance(config, dict) and "class_name" not in config:
        for item in config.values():
            yield from _named(item)
    elif config is not None and config not in ("accuracy", "acc", "crossentropy", "ce"):
        yield config


def _field(ckpt: _checkpoint.Checkpoint, field: str, make: Any) -> Any:
    """``make()``; a Keras error becomes a :class:`CompileError` naming the training-config field."""
    try:
        return make()
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        _refuse_unsafe(ckpt, exc, f"training config ({field})")
        raise CompileError(
            f"{ckpt.url}: cannot compile from the saved training config: field {field} cannot be compiled: {exc}"
        ) from exc


def _restore_optimizer(model: Any, ckpt: _checkpoint.Checkpoint, loader: KerasLoader, matched: dict[str, Any]) -> None:
    """Match saved optimizer weights to the built optimizer's variables by name; all or nothing.

    Keras 3's own legacy loader calls ``optimizer.set_weights`` by position,
    which fails for every tf-keras file (Keras 3 adds a learning-rate
    variable) and leaves the slots fresh; here slots are matched through the
    model variable they belong to, whatever the variable was called in Keras 2.
    """
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    pairs, problem = optimizer_pairs(optimizer, [w.spec for w in ckpt.optimizer_weights], matched)
    if problem:
        warnings.warn(
            f"{ckpt.url}: Error in loading the saved optimizer state ({problem}). As a result, your model is "
            "starting with a freshly initialized optimizer.",
            UserWarning,
            stacklevel=4,
        )
        return
    loader.run([optimizer_group(pairs)])
