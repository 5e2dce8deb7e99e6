"""NumPy destinations: new arrays, a dict filled by key, or a list filled by position.

Every destination is checked against the checkpoint before a single byte is
read, so a shape or dtype mismatch leaves the caller's arrays untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import MismatchError
from ..geometry import Box, box_shape, flat_boxes
from ..manifest import WeightSpec
from ..stream import Group, Target
from ..stream.budget import allocate
from .shard import FlatPart, ShardArg, part_shape, shard_region

__all__ = ["check_destination", "plan_numpy"]

Resolve = Callable[[str], WeightSpec]


def check_destination(
    url: str, spec: WeightSpec, dest: Any, where: str, box: Box | FlatPart | None = None
) -> np.ndarray:
    """``dest`` as a writable ndarray of ``spec``'s shape (or its shard's) into which its dtype casts safely."""
    if not isinstance(dest, np.ndarray):
        raise MismatchError(
            f"{url}: destination for weight {spec.key!r} ({where}) is a {type(dest).__name__}, not a numpy array"
        )
    shape = part_shape(spec.shape, box)
    if tuple(dest.shape) != tuple(shape):
        what = f"has shape {spec.shape}" if box is None else f"of shape {spec.shape} has a shard of shape {shape}"
        raise MismatchError(f"{url}: weight {spec.key!r} {what} but its destination ({where}) has shape {dest.shape}")
    if not np.can_cast(spec.np_dtype, dest.dtype, casting="same_kind"):
        raise MismatchError(
            f"{url}: weight {spec.key!r} has dtype {spec.np_dtype} but its destination ({where}) has dtype "
            f"{dest.dtype}; expected a destination of the same kind (e.g. any float dtype for float weights)"
        )
    if not dest.flags.writeable:
        raise MismatchError(f"{url}: destination for weight {spec.key!r} ({where}) is read-only")
    if isinstance(box, FlatPart) and not dest.flags.c_contiguous:
        raise MismatchError(
            f"{url}: destination for weight {spec.key!r} ({where}) of a flat shard must be contiguous; "
            f"got strides {dest.strides}"
        )
    return dest


def shard_targets(spec: WeightSpec, dest: np.ndarray, part: Box | FlatPart | None) -> list[Target]:
    """The executor targets that fill ``dest`` with ``part`` of ``spec``: one, or for a flat part one per
    box of :func:`~lazyweights.geometry.flat_boxes`, each into its run of the 1-D destination."""
    if not isinstance(part, FlatPart):
        return [Target(spec, dest, part)]
    targets, at = [], 0
    for box in flat_boxes(spec.shape, part.start, part.stop):
        n = math.prod(box_shape(box))
        view = dest[at : at + n].view()
        view.shape = box_shape(box)  # a view, never a copy (dest is contiguous): raises rather than copy
        targets.append(Target(spec, view, box))
        at += n
    return targets


def plan_numpy(
    url: str,
    weights: Sequence[WeightSpec],
    resolve: Resolve,
    out: Mapping[str, Any] | Sequence[Any] | None,
    shard: ShardArg = None,
) -> tuple[list[Group], dict[str, np.ndarray] | None, list[tuple[str, str]]]:
    """Groups to execute, the new-array dict (when ``out`` is None), and the weights not loaded.

    With ``shard``, each target is the part of its weight this rank owns, and
    destinations have the part's shape (1-D for a flat shard).
    """
    if out is None:
        parts = {w.key: shard_region(shard, w.key, w.shape) for w in weights}
        arrays = {
            w.key: allocate(part_shape(w.shape, parts[w.key]), w.np_dtype.newbyteorder("="), f"{url}: weight {w.key!r}")
            for w in weights
        }
        return [Group(shard_targets(w, arrays[w.key], parts[w.key])) for w in weights], arrays, []
    if isinstance(out, Mapping):
        pairs = [(resolve(str(k)), v, f"out[{k!r}]") for k, v in out.items()]
        chosen = {spec.key for spec, _, _ in pairs}
        skipped = [(w.key, "not in out") for w in weights if w.key not in chosen]
    elif isinstance(out, Sequence) and not isinstance(out, (str, bytes)):
        if len(out) != len(weights):
            raise MismatchError(
                f"{url}: the checkpoint holds {len(weights)} weights but `out` has {len(out)} arrays; "
                "a list is filled by position, like set_weights()"
            )
        pairs = [(w, v, f"out[{i}]") for i, (w, v) in enumerate(zip(weights, out, strict=True))]
        skipped = []
    else:
        raise MismatchError(
            f"{url}: `out` must be a dict of arrays, a list of arrays or None, not {type(out).__name__}"
        )
    groups = []
    for spec, dest, where in pairs:
        part = shard_region(shard, spec.key, spec.shape)
        groups.append(Group(shard_targets(spec, check_destination(url, spec, dest, where, part), part)))
    return groups, None, skipped
