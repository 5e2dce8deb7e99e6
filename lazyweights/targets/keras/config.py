"""Keras 2 → Keras 3 translation: layer configs, training configs and optimizer slot names.

Keras 3 refuses many configs tf-keras 2.x wrote (every MobileNet fails with
"Unrecognized keyword arguments passed to DepthwiseConv2D: {'groups': 1}").
The differences are known and few; they are listed here as data, applied to
a copy of the config, and each change is logged, so nothing is dropped
silently.  Pure functions, no Keras import.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterator
from typing import Any

__all__ = [
    "RNN_CELLS", "is_keras2_config", "layer_classes", "layer_configs", "layer_nodes", "optimizer_slot_key",
    "translate_config", "translate_training_config",
]  # fmt: skip

logger = logging.getLogger(__name__)

# Constructor arguments tf-keras 2.x wrote that Keras 3 no longer accepts, by class.
REMOVED_ARGS: dict[str, tuple[str, ...]] = {
    "DepthwiseConv2D": ("groups",),
    "DepthwiseConv1D": ("groups",),
    "BatchNormalization": ("fused", "virtual_batch_size", "adjustment"),
    "LSTM": ("time_major",),
    "GRU": ("time_major",),
    "SimpleRNN": ("time_major",),
    "RNN": ("time_major",),
    "InputLayer": ("ragged",),
}
# Arguments renamed between the two.
RENAMED_ARGS: dict[str, dict[str, str]] = {
    "InputLayer": {"batch_input_shape": "batch_shape"},
}


def is_keras2_config(attrs: dict[str, Any]) -> bool:
    """True for files written by Keras 1/2 (tf-keras), judged by the writer's version attribute."""
    version = str(attrs.get("keras_version", "1"))
    return not version.startswith("3")


def layer_configs(config: Any) -> Iterator[dict[str, Any]]:
    """Every ``{"class_name": ..., "config": {...}}`` node, nested models included, depth first."""
    if isinstance(config, dict):
        if _is_node(config):
            yield config
        for value in config.values():
            yield from layer_configs(value)
    elif isinstance(config, list):
        for value in config:
            yield from layer_configs(value)


# Where a layer's config holds other layers: models, wrappers (Bidirectional, TimeDistributed), RNN cells.
_LAYER_KEYS = ("layers", "layer", "forward_layer", "backward_layer", "cell", "cells")
# The cell class Keras 3 builds inside each recurrent layer (not in its config, but in the file: ``lstm/cell``).
RNN_CELLS = {
    "LSTM": "LSTMCell", "GRU": "GRUCell", "SimpleRNN": "SimpleRNNCell",
    "ConvLSTM1D": "ConvLSTMCell", "ConvLSTM2D": "ConvLSTMCell", "ConvLSTM3D": "ConvLSTMCell",
}  # fmt: skip


def _is_node(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("class_name"), str) and isinstance(
        value.get("config"), dict
    )


def layer_nodes(config: Any) -> Iterator[dict[str, Any]]:
    """The model node and every layer in it (nested models, wrapped layers, RNN cells), depth first.

    Only layers: dtype policies, initializers, regularizers, optimizers and
    losses are class nodes too, but sit under other keys.
    """
    if not _is_node(config):
        return
    yield config
    for key in _LAYER_KEYS:
        value = config["config"].get(key)
        for item in value if isinstance(value, list) else [value]:
            yield from layer_nodes(item)


def layer_classes(config: Any) -> dict[str, str]:
    """Layer name → class name for the model and every layer of a Keras model config (first occurrence wins)."""
    found: dict[str, str] = {}
    for node in layer_nodes(config):
        name = node["config"].get("name")
        if isinstance(name, str):
            found.setdefault(name, node["class_name"])
    return found


def translate_config(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a Keras 2 model config that Keras 3 deserialises; logs each change."""
    config = copy.deepcopy(config)
    for node in layer_configs(config):
        cls, args = node["class_name"], node["config"]
        name = args.get("name", "?")
        for arg in REMOVED_ARGS.get(cls, ()):
            if arg in args:
                logger.info("Keras 2 config: dropped %s=%r from %s %r", arg, args.pop(arg), cls, name)
        for old, new in RENAMED_ARGS.get(cls, {}).items():
            if old in args:
                args.setdefault(new, args.pop(old))
                logger.info("Keras 2 config: renamed %s to %s in %s %r", old, new, cls, name)
    return config


# -- training configs ------------------------------------------------------------------------

# Keras's own optimizers: a Keras 2 file may name them "Custom>Adam" (tf-keras registered them so).
BUILTIN_OPTIMIZERS = frozenset(
    [
        "Adadelta",
        "Adafactor",
        "Adagrad",
        "Adam",
        "AdamW",
        "Adamax",
        "Ftrl",
        "Lamb",
        "Lion",
        "LossScaleOptimizer",
        "Muon",
        "Nadam",
        "RMSprop",
        "SGD",
    ]
)
OPTIMIZER_RENAMED_ARGS = {"lr": "learning_rate"}
# tf-keras 2.11+ arguments that say how tf-keras ran, not what the optimizer is.
OPTIMIZER_REMOVED_ARGS = ("is_legacy_optimizer", "jit_compile")
# tf.keras loss reductions Keras 3 names differently ("auto" meant sum over batch size outside distribution).
LOSS_REDUCTIONS = {"auto": "sum_over_batch_size", "sum_over_batch_size": "sum_over_batch_size"}
# Loss and metric names Keras 1/2 knew and Keras 3 does not.
OLD_NAMES = {"cosine_proximity": "cosine_similarity", "cosine": "cosine_similarity"}


def translate_training_config(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a Keras 1/2 ``training_config`` that Keras 3 compiles; logs each change.

    ``lr`` becomes ``learning_rate``; a non-zero Keras 2 ``decay`` (the learning
    rate divided by ``1 + decay * iterations``) becomes Keras 3's equal
    ``InverseTimeDecay`` schedule; ``Custom>Adam`` becomes ``Adam``; loss
    ``reduction="auto"`` becomes ``"sum_over_batch_size"``; old loss and
    metric names are renamed; metric wrappers whose function is saved by name
    become that name.
    """
    config = copy.deepcopy(config)
    if isinstance(config.get("optimizer_config"), dict):
        config["optimizer_config"] = _translate_optimizer(config["optimizer_config"])
    if "loss" in config:
        config["loss"] = _translate_nested(config["loss"], _translate_loss)
    for field in ("metrics", "weighted_metrics"):
        if config.get(field) is not None:
            config[field] = _translate_nested(config[field], _translate_metric)
    return config


def _translate_optimizer(node: dict[str, Any]) -> dict[str, Any]:
    cls, args = node.get("class_name"), dict(node.get("config") or {})
    if isinstance(cls, str) and cls.startswith("Custom>") and cls.removeprefix("Custom>") in BUILTIN_OPTIMIZERS:
        logger.info("Keras 2 training config: optimizer %s is Keras's own %s", cls, cls.removeprefix("Custom>"))
        node = {key: value for key, value in node.items() if key not in ("module", "registered_name")}
        cls = node["class_name"] = cls.removeprefix("Custom>")
    for old, new in OPTIMIZER_RENAMED_ARGS.items():
        if old in args:
            args.setdefault(new, args.pop(old))
            logger.info("Keras 2 training config: renamed optimizer argument %s to %s", old, new)
    for arg in OPTIMIZER_REMOVED_ARGS:
        if arg in args:
            logger.info("Keras 2 training config: dropped optimizer argument %s=%r", arg, args.pop(arg))
    decay = args.pop("decay", None)
    if decay:
        rate = args.get("learning_rate", 0.001)
        args["learning_rate"] = {
            "module": "keras.optimizers.schedules",
            "class_name": "InverseTimeDecay",
            "config": {"initial_learning_rate": rate, "decay_steps": 1, "decay_rate": decay},
            "registered_name": None,
        }
        logger.info("Keras 2 training config: decay=%r became an InverseTimeDecay learning-rate schedule", decay)
    return {**node, "class_name": cls, "config": args}


def _translate_nested(config: Any, translate: Any) -> Any:
    """Apply ``translate`` to each loss/metric of a (possibly nested, per-output) list or dict."""
    if isinstance(config, list):
        return [_translate_nested(item, translate) for item in config]
    if isinstance(config, dict) and "class_name" not in config:
        return {key: _translate_nested(value, translate) for key, value in config.items()}
    return translate(config)


def _translate_loss(loss: Any) -> Any:
    if isinstance(loss, str):
        return _renamed(loss)
    if isinstance(loss, dict) and isinstance(loss.get("config"), dict):
        reduction = loss["config"].get("reduction")
        if reduction in LOSS_REDUCTIONS and reduction != LOSS_REDUCTIONS[reduction]:
            loss = {**loss, "config": {**loss["config"], "reduction": LOSS_REDUCTIONS[reduction]}}
            logger.info("Keras 2 training config: loss reduction %r became %r", reduction, LOSS_REDUCTIONS[reduction])
    return loss


def _translate_metric(metric: Any) -> Any:
    if isinstance(metric, str):
        return _renamed(metric)
    if isinstance(metric, dict) and metric.get("class_name") == "MeanMetricWrapper":
        args = metric.get("config") or {}
        if isinstance(args.get("fn"), str):  # Keras 3 cannot call a function saved by name; compile resolves names
            name = args.get("name")
            plain = name if name in ("accuracy", "acc", "crossentropy", "ce") else args["fn"]
            logger.info("Keras 2 training config: metric wrapper %r became %r", name, plain)
            return _renamed(plain)
    return metric


def _renamed(name: str) -> str:
    if name in OLD_NAMES:
        logger.info("Keras 2 training config: renamed %s to %s", name, OLD_NAMES[name])
    return OLD_NAMES.get(name, name)


# tf-keras 2.11+ optimizers name slots "<Optimizer>/<slot>/<variable name>:0";
# Keras 3 names them "<optimizer>/<variable path with _>_<slot name>".
SLOT_NAMES = {"m": "momentum", "v": "velocity", "vhat": "velocity_hat"}
_TF_SLOT = re.compile(r"^(?P<opt>[^/]+)/(?P<slot>[^/]+)/(?P<var>.+?)(?::\d+)?$")


def optimizer_slot_key(name: str) -> tuple[str, str] | None:
    """``("conv1/kernel", "momentum")`` for ``"Adam/m/conv1/kernel:0"``; None if not a slot name."""
    match = _TF_SLOT.match(name)
    if not match:
        return None
    return match["var"], SLOT_NAMES.get(match["slot"], match["slot"])
