"""Pure-Python HDF5 metadata walker: open a checkpoint's whole tree in a
number of round trips that depends on the tree's depth, not its size.

``walk(fetch_many, size, head=b"", base=0)`` returns an :class:`H5File`
whose groups/datasets mirror the subset of h5py that lazyweights uses.
One module per on-disk structure; no h5py here::

    def fetch_many(ranges):            # [(offset, length)] -> [bytes], fetched concurrently
        return [blob[o : o + n] for o, n in ranges]

    f = walk(fetch_many, len(blob), head=blob[: 1 << 20])
    f["model_weights"].attrs["layer_names"]      # numpy array of bytes, as h5py
    ds = f["model_weights/dense/dense/kernel:0"]
    ds.shape, ds.dtype, ds.layout, ds.contiguous, ds.chunk_table, ds.filters, ds.unsupported
    f.stats.calls                                 # sequential round trips (fetch_many calls)

Modules: :mod:`.superblock`, :mod:`.objheader`, :mod:`.messages`, :mod:`.btree1`,
:mod:`.btree2`, :mod:`.fractal_heap`, :mod:`.local_heap`, :mod:`.global_heap`,
:mod:`.chunk_index`, :mod:`.scheduler` (the level-by-level rounds), :mod:`.walker` (groups
and links), :mod:`.neighbours` (guesses at where the next structures lie), :mod:`.dataset`,
:mod:`.attributes`, :mod:`.tree`
(result nodes) and :mod:`._base` (cursor, context, request primitives).
"""

from __future__ import annotations

from ._base import Limits
from .scheduler import FetchMany
from .tree import (
    Attrs,
    Dataset,
    Empty,
    ExternalLink,
    FetchStats,
    Group,
    H5File,
    HardLink,
    Node,
    SoftLink,
    UnsupportedValue,
)
from .walker import walk

__all__ = [
    "Attrs",
    "Dataset",
    "Empty",
    "ExternalLink",
    "FetchMany",
    "FetchStats",
    "Group",
    "H5File",
    "HardLink",
    "Limits",
    "Node",
    "SoftLink",
    "UnsupportedValue",
    "walk",
]
