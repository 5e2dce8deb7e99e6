"""Pure-Python HDF5 metadata walker: open a checkpoint's whole tree in a
number of round trips that depends on the tree's depth, not its size.

``walk(fetch_many, size, head=b"", base=0)`` returns an :class:`H5File`
whose groups/datasets mirror the subset of h5py that lazyweights uses.
One module per on-disk structure; no h5py here.
"""

from __future__ import annotations

from ._base import Limits
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
from .walker import FetchMany, walk

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
