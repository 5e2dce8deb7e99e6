"""Values that need no storage read: compact (inline) bytes and never-written (fill) weights."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..manifest import WeightSpec

__all__ = ["constant_values", "fill_value"]


def fill_value(spec: WeightSpec) -> Any:
    """The value of elements never written (HDF5 or zarr fill value, default zero)."""
    dtype = spec.np_dtype
    return np.frombuffer(spec.fill, dtype=dtype)[0] if spec.fill else dtype.type(0)


def constant_values(spec: WeightSpec) -> np.ndarray:
    """The values of a weight whose bytes live in the manifest (compact) or nowhere (fill)."""
    dtype = spec.np_dtype
    if spec.layout == "compact":
        return np.frombuffer(spec.inline, dtype=dtype).reshape(spec.shape)
    return np.full(spec.shape, fill_value(spec), dtype=dtype)
