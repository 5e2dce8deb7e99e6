"""Shard specs: the part of each weight one rank of a distributed job owns, as a box to read.

A row slice of a contiguous C-order tensor is one byte range, so when every
rank reads only its rows, the bytes fetched by all ranks together are about
the file's size.  :class:`Shard` splits every weight along one axis; a
function ``(key, shape) -> Shard | box | None`` chooses per weight (``None``:
the rank reads the whole weight, which is then reported as replicated).

``Shard(rank, world_size, dim=None)`` splits the *flattened* (C-order)
weight instead, as ZeRO partitions and FSDP's flat parameters do: rank ``r``
owns elements ``[r*c, min((r+1)*c, n))`` of the ``n`` elements, a 1-D part,
so every rank reads about ``1/world_size`` of every weight whatever its shape
(a split along an axis gives rank 0 all of a Keras ``(1, 1, C, K)`` kernel) and
a contiguous weight's part is one byte range.

Uneven splits follow ``torch.chunk`` (and DTensor's ``Shard`` placement):
with ``c = ceil(n / world_size)``, rank ``r`` owns ``[r*c, min((r+1)*c, n))``,
so trailing ranks may own fewer rows, or none.  ``Shard(..., even=True)``
refuses a dimension the world size does not divide instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

from ..errors import ShardError
from ..geometry import Box, box_shape, normalize_index

__all__ = ["Box", "FlatPart", "Shard", "ShardArg", "part_shape", "shard_region"]

ShardFn = Callable[[str, tuple[int, ...]], Union["Shard", Box, None]]
ShardArg = Union["Shard", ShardFn, None]


@dataclass(frozen=True)
class Shard:
    """Rank ``rank`` of ``world_size`` owns its ``torch.chunk`` piece of every weight along ``dim``.

    Weights with fewer than ``dim + 1`` axes (scalars, or biases when
    ``dim=1``) are read whole by every rank (replicated).  Negative ``dim``
    counts from the last axis.  ``dim=None``: the piece of the flattened
    weight (see the module docstring); nothing is replicated.
    """

    rank: int
    world_size: int
    dim: int | None = 0
    even: bool = False

    def __post_init__(self) -> None:
        for name in ("rank", "world_size", "dim"):
            value = getattr(self, name)
            if (not isinstance(value, int) or isinstance(value, bool)) and not (name == "dim" and value is None):
                raise ShardError(f"Shard.{name} must be an int{' or None' if name == 'dim' else ''}, got {value!r}")
        if self.world_size < 1:
            raise ShardError(f"Shard.world_size must be at least 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ShardError(
                f"rank {self.rank} is out of range for world_size {self.world_size} "
                f"(expected 0 <= rank < {self.world_size})"
            )

    def bounds(self, n: int, key: str = "") -> tuple[int, int]:
        """This rank's ``[start, stop)`` of an axis of length ``n``."""
        if self.even and n % self.world_size:
            what = f"{n} elements" if self.dim is None else f"dimension {self.dim} has size {n}"
            raise ShardError(
                f"weight {key!r}: {what}, which world_size {self.world_size} does not "
                "divide; use Shard(even=False) for torch.chunk-style uneven pieces"
            )
        chunk = -(-n // self.world_size)
        start = min(self.rank * chunk, n)
        return start, min(start + chunk, n)

    def box(self, shape: tuple[int, ...], key: str = "") -> Box | None:
        """The box this rank reads of a weight of ``shape``; None when the weight is replicated."""
        if self.dim is None:
            raise ShardError(f"weight {key!r}: a flat Shard (dim=None) selects an element range, not a box")
        dim = self.dim + len(shape) if self.dim < 0 else self.dim
        if not 0 <= dim < len(shape):
            return None
        start, stop = self.bounds(shape[dim], key)
        return tuple(slice(start, stop) if i == dim else slice(0, n) for i, n in enumerate(shape))


@dataclass(frozen=True)
class FlatPart:
    """Elements ``[start, stop)`` of a weight's C-order flattening: a flat shard's part, loaded as a 1-D array."""

    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def part_shape(shape: tuple[int, ...], part: Box | FlatPart | None) -> tuple[int, ...]:
    """The shape of what a rank holds of a weight of ``shape``: the box's, ``(size,)`` for a flat part."""
    if part is None:
        return shape
    return (part.size,) if isinstance(part, FlatPart) else box_shape(part)


def shard_region(shard: ShardArg, key: str, shape: tuple[int, ...]) -> Box | FlatPart | None:
    """The part of weight ``key`` (full ``shape``) that ``shard`` selects: a box, a flat element range
    (a ``Shard`` with ``dim=None``), or None: the whole weight."""
    if shard is None:
        return None
    chosen = shard(key, shape) if callable(shard) and not isinstance(shard, Shard) else shard
    if chosen is None:
        return None
    if isinstance(chosen, Shard) and chosen.dim is None:
        return FlatPart(*chosen.bounds(math.prod(shape), key))
    if isinstance(chosen, Shard):
        return chosen.box(shape, key)
    try:
        box, rest = normalize_index(chosen, shape)
    except (IndexError, TypeError, ValueError) as exc:
        raise ShardError(f"weight {key!r} of shape {shape}: shard slice {chosen!r} is not valid: {exc}") from exc
    if any(r != slice(None) for r in rest):
        raise ShardError(
            f"weight {key!r} of shape {shape}: shard slice {chosen!r} must be unit-step slices "
            "(no ints, steps or arrays)"
        )
    return box
