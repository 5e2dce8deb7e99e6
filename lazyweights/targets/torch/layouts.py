"""Tensor layout conventions: how a Keras weight becomes the matching PyTorch tensor.

Pure (no I/O, no framework import).  A :class:`Conversion` maps a checkpoint
tensor to the target's layout (``apply``), gives the target's shape, and maps
a box of the target back to the box of the checkpoint to read (``source_box``),
so a shard of a converted weight still reads only the bytes it needs.

Keras → PyTorch (``layout="keras"``):

================================  ============================  ==========================
Keras weight                      PyTorch tensor                conversion
================================  ============================  ==========================
Dense ``kernel`` (in, out)        Linear ``weight`` (out, in)   transpose
ConvND ``kernel`` (*k, in, out)   ConvNd ``weight`` (out, in, *k)  axes (N+1, N, 0..N-1)
DepthwiseConvND ``kernel``        grouped ConvNd ``weight``     (*k, C, M) → (C*M, 1, *k)
(*k, C, M)
BatchNormalization ``gamma``,     ``weight``, ``bias``,         none
``beta``, ``moving_mean``,        ``running_mean``,
``moving_variance``               ``running_var``
LayerNormalization ``gamma``,     ``weight``, ``bias``          none
``beta``
Embedding ``embeddings`` (V, D)   Embedding ``weight`` (V, D)   none
``bias``                          ``bias``                      none
================================  ============================  ==========================

A weight's role comes from its name (Keras 1/2 and legacy ``.h5``:
``conv/kernel:0``), or, in Keras 3 ``.weights.h5`` files where variables are
numbered, from the layer's class (the object path ``layers/conv2d_1``) and the
variable's position.  The layer class from ``model_config`` tells a depthwise
kernel apart where the name alone does not (Keras 3 names it ``kernel``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import UnsupportedError
from ...geometry import Box
from ...manifest import Manifest, WeightSpec
from ..keras.config import layer_classes as keras_layer_classes

__all__ = ["IDENTITY", "Conversion", "KerasName", "describe", "keras_names", "layer_classes", "snake_case"]

# Variables of each Keras 3 layer class, in the order its ``vars/<i>`` datasets hold them.
KERAS_VARIABLES: dict[str, tuple[str, ...]] = {
    "dense": ("kernel", "bias"),
    "conv1d": ("kernel", "bias"),
    "conv2d": ("kernel", "bias"),
    "conv3d": ("kernel", "bias"),
    "depthwise_conv1d": ("kernel", "bias"),
    "depthwise_conv2d": ("kernel", "bias"),
    "batch_normalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    "layer_normalization": ("gamma", "beta"),
    "embedding": ("embeddings",),
}
# Classes whose variable lists may drop trailing entries (use_bias=False); the others must be complete.
_PREFIX_OK = {"dense", "conv1d", "conv2d", "conv3d", "depthwise_conv1d", "depthwise_conv2d", "embedding"}

TORCH_NAMES = {
    "kernel": "weight",
    "depthwise_kernel": "weight",
    "bias": "bias",
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
    "embeddings": "weight",
}


@dataclass(frozen=True)
class Conversion:
    """Checkpoint tensor → target tensor: an axis permutation, optionally merging the last two source axes.

    ``perm`` permutes the source axes; with ``depthwise`` the permuted
    ``(C, M, *k)`` becomes ``(C*M, 1, *k)``, PyTorch's grouped-convolution weight.
    """

    name: str
    perm: tuple[int, ...] | None = None
    depthwise: bool = False

    def target_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.perm is None:
            return tuple(shape)
        permuted = tuple(shape[i] for i in self.perm)
        if self.depthwise:
            return (permuted[0] * permuted[1], 1, *permuted[2:])
        return permuted

    def apply(self, values: np.ndarray) -> np.ndarray:
        """The target-layout array for ``values`` (a view where no reshape is needed)."""
        if self.perm is None:
            return values
        permuted = values.transpose(self.perm)
        if self.depthwise:
            c, m, *k = permuted.shape
            return permuted.reshape(c * m, 1, *k)
        return permuted

    def source_box(self, box: Box, shape: tuple[int, ...], key: str = "") -> Box:
        """The box of the checkpoint tensor (of ``shape``) that fills ``box`` of the target."""
        if self.perm is None:
            return box
        src: list[slice] = [slice(0, n) for n in shape]
        if self.depthwise:
            m = shape[self.perm[1]]
            lead, ones, *spatial = box
            if lead.start % m or lead.stop % m or (ones.start, ones.stop) != (0, 1):
                raise UnsupportedError(
                    f"weight {key!r}: a depthwise kernel {shape} can be split only at multiples of its depth "
                    f"multiplier {m} along output channels, not {lead.start}:{lead.stop}"
                )
            box = (slice(lead.start // m, lead.stop // m), slice(0, m), *spatial)
        for target_axis, source_axis in enumerate(self.perm):
            src[source_axis] = box[target_axis]
        return tuple(src)


IDENTITY = Conversion("identity")


def _conversion(role: str | None, cls: str | None, ndim: int) -> Conversion:
    depthwise = role == "depthwise_kernel" or (role == "kernel" and bool(cls) and cls.startswith("depthwise"))
    if depthwise and ndim >= 3:  # (*k, C, M) → (C, M, *k)
        return Conversion("depthwise", (ndim - 2, ndim - 1, *range(ndim - 2)), depthwise=True)
    if role == "kernel" and ndim == 2:
        return Conversion("dense", (1, 0))
    if role == "kernel" and ndim >= 3:  # (*k, in, out) → (out, in, *k)
        return Conversion("conv", (ndim - 1, ndim - 2, *range(ndim - 2)))
    return IDENTITY


@dataclass(frozen=True)
class KerasName:
    """What ``layout="keras"`` makes of one checkpoint weight: its PyTorch name and conversion."""

    key: str
    module: str
    role: str | None
    name: str
    conversion: Conversion


def snake_case(name: str) -> str:
    """Keras's class-name → object-name rule (``DepthwiseConv2D`` → ``depthwise_conv2d``)."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def layer_classes(model_config: Any) -> dict[str, str]:
    """Layer name → snake-case class name, for every layer in a Keras ``model_config`` (nested included)."""
    return {name: snake_case(cls) for name, cls in keras_layer_classes(model_config).items()}


def _numbered(manifest: Manifest) -> dict[str, KerasName]:
    """Keras 3 ``.weights.h5``: roles from the object path's class and the variable's position."""
    names: dict[str, KerasName] = {}
    for layer in manifest.layers:
        cls = re.sub(r"_\d+$", "", layer.name.rsplit("/", 1)[-1])
        roles = KERAS_VARIABLES.get(cls, ())
        complete = len(layer.keys) == len(roles) or (cls in _PREFIX_OK and len(layer.keys) <= len(roles))
        module = layer.alias or layer.name.rsplit("/", 1)[-1]
        for i, key in enumerate(layer.keys):
            spec = manifest[key]
            role = roles[i] if complete else None
            name = f"{module}.{TORCH_NAMES[role]}" if role else f"{module}.{spec.name}"
            names[key] = KerasName(key, module, role, name, _conversion(role, cls, len(spec.shape)))
    return names


def _named(manifest: Manifest) -> dict[str, KerasName]:
    """Keras 1/2 and legacy ``.h5``: roles from weight names (``bn/moving_mean:0``)."""
    classes = layer_classes(manifest.attrs.get("model_config"))
    names: dict[str, KerasName] = {}
    for spec in manifest.weights:
        parts = spec.name.split(":")[0].split("/")
        role = parts[-1]
        module = ".".join(parts[:-1]) or spec.layer.replace("/", ".")  # TF checkpoints: the object path
        cls = classes.get(parts[-2] if len(parts) > 1 else spec.layer) or classes.get(spec.layer)
        name = f"{module}.{TORCH_NAMES.get(role, role)}"
        known = role if role in TORCH_NAMES else None
        names[spec.key] = KerasName(spec.key, module, known, name, _conversion(known, cls, len(spec.shape)))
    return names


def keras_names(manifest: Manifest) -> dict[str, KerasName]:
    """Every model weight's PyTorch name and conversion under the Keras → PyTorch conventions."""
    if manifest.format in ("keras-v3", "keras-zip"):
        return _numbered(manifest)
    return _named(manifest)


def describe(spec: WeightSpec, conversion: Conversion) -> str:
    """``(3, 3, 4, 8) → (8, 4, 3, 3) [conv]``, for error messages."""
    if conversion is IDENTITY:
        return str(spec.shape)
    return f"{spec.shape} → {conversion.target_shape(spec.shape)} [{conversion.name}]"
