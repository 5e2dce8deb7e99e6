"""Loading a whole checkpoint through a ``dask.distributed`` cluster, in one call.

Every weight becomes a dask array (:func:`lazyweights.read.dask.to_dask`: tasks
carry the URL, options and byte extents, never an open file), so each worker
reads its own blocks straight from storage; the client only gathers results
(or, with ``persist=True``, keeps them on the workers).  For torch ranks that
each read their shard, see :mod:`lazyweights.torch` and :class:`~lazyweights.Shard`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..checkpoint import Checkpoint, opened
from ..errors import require
from ..geometry import ROW_BLOCK_BYTES
from ..targets.shard import FlatPart, ShardArg, shard_region

__all__ = ["load"]


def load(
    src: str | os.PathLike[str] | Checkpoint,
    client: Any = None,
    *,
    keys: Sequence[str] | None = None,
    shard: ShardArg = None,
    persist: bool = False,
    block_size: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Read ``src``'s weights on the workers of ``client`` (default: the current ``distributed`` client).

    Returns key → numpy array (gathered to this process), or with
    ``persist=True`` key → dask array whose blocks stay in worker memory.
    ``keys`` limits the load (full keys or unique weight names); ``shard``
    selects each weight's part as in :func:`lazyweights.load`; ``block_size``
    (bytes) sets the size of the blocks one task reads from contiguous weights.
    """
    client = client or require("distributed", "distributed").default_client()
    with opened(src, storage_options) as ckpt:
        return _load(ckpt, client, keys, shard, persist, block_size)


def _load(
    ckpt: Checkpoint, client: Any, keys: Sequence[str] | None, shard: ShardArg, persist: bool, block: int | None
) -> dict[str, Any]:
    specs = [ckpt.resolve(k) for k in keys] if keys is not None else list(ckpt.manifest.weights)
    arrays = {}
    for spec in specs:
        array = ckpt[spec.key].to_dask(block_bytes=block or ROW_BLOCK_BYTES)
        part = shard_region(shard, spec.key, spec.shape)
        if isinstance(part, FlatPart):
            array = array.reshape(-1)[part.start : part.stop]
        arrays[spec.key] = array if part is None or isinstance(part, FlatPart) else array[part]
    names, values = list(arrays), list(arrays.values())
    done = client.persist(values) if persist else client.gather(client.compute(values))
    return dict(zip(names, done, strict=True))
