"""The result of a walk: group / dataset nodes mirroring the subset of h5py
that lazyweights' parsers use (``name``, mapping of children in h5py's
iteration order, ``attrs``, ``get(name, getlink=True)``, ``shape``,
``dtype``, ``chunks``) plus plain-data storage info for each dataset.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...attrs import Attrs as BaseAttrs
from ...attrs import Reader
from ...errors import UnsafeCheckpointError, UnsupportedError

__all__ = [
    "Attrs",
    "Dataset",
    "Empty",
    "ExternalLink",
    "FetchStats",
    "Group",
    "H5File",
    "HardLink",
    "Node",
    "SoftLink",
    "UnsupportedValue",
]

_MAX_SOFT_HOPS = 32


class HardLink:
    """A hard link (as ``h5py.HardLink``)."""

    def __repr__(self) -> str:
        return "HardLink()"


@dataclass(frozen=True)
class SoftLink:
    """A soft link to ``path`` inside the file (as ``h5py.SoftLink``)."""

    path: str


@dataclass(frozen=True)
class ExternalLink:
    """A link into another file; never followed (as ``h5py.ExternalLink``)."""

    filename: str
    path: str


@dataclass(frozen=True)
class Empty:
    """The value of an attribute with a null dataspace (as ``h5py.Empty``)."""

    dtype: np.dtype


@dataclass(frozen=True)
class UnsupportedValue:
    """Placeholder for an attribute whose type this package does not decode."""

    reason: str


class Attrs(BaseAttrs):
    """Read-only attribute mapping; values as h5py returns them (a large string read when asked for)."""

    def __init__(self, items: list[tuple[str, Any]] | None = None, reader: Reader | None = None):
        super().__init__(dict(items or []), reader)
        self.problems: list[str] = []  # attributes that could not even be named (shared-message heap)

    def __getitem__(self, key: str) -> Any:
        v = super().__getitem__(key)
        if isinstance(v, UnsupportedValue):
            raise UnsupportedError(f"attribute {key!r}: {v.reason}")
        return v


@dataclass(eq=False)
class Node:
    """Common part of groups and datasets."""

    name: str
    address: int  # absolute offset of the object header
    attrs: Attrs = field(default_factory=Attrs)
    file: H5File | None = field(default=None, repr=False)

    @property
    def parent_name(self) -> str:
        """Path of the containing group."""
        return self.name.rsplit("/", 1)[0] or "/"


@dataclass(eq=False)
class Dataset(Node):
    """A dataset's metadata and where its bytes are.

    ``layout`` is ``contiguous``, ``compact``, ``chunked`` or ``virtual``.
    ``contiguous`` is ``(absolute address or None if never written, size)``;
    ``chunk_table`` lists ``(chunk offset, absolute address, size, filter mask)``
    like h5py's ``chunk_iter``; ``filters`` lists ``(id, name, client values)``.
    ``unsupported`` names why this one dataset cannot be handled (None if it can);
    ``converted`` marks a datatype h5py converts on read (``dtype`` is then h5py's).
    """

    shape: tuple[int, ...] = ()
    null: bool = False  # a null dataspace (no elements, not even a scalar; h5py's shape None)
    maxshape: tuple[int | None, ...] = ()
    dtype: np.dtype | None = None
    chunks: tuple[int, ...] | None = None
    layout: str = "contiguous"
    contiguous: tuple[int | None, int] | None = None
    compact: bytes | None = None
    chunk_table: list[tuple[tuple[int, ...], int, int, int]] | None = None
    chunk_index: str | None = None
    filters: list[tuple[int, str, tuple[int, ...]]] = field(default_factory=list)
    filter_flags: list[int] = field(default_factory=list)
    fillvalue: bytes | None = None  # None: the file says the fill value is undefined
    converted: str | None = None  # why the datatype is not a numpy layout (h5py converts it to ``dtype``)
    external: bool = False
    unsupported: str | None = None

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass(eq=False)
class Group(Node, Mapping):
    """A group: children by name (h5py's iteration order), links, attrs."""

    links: dict[str, HardLink | SoftLink | ExternalLink] = field(default_factory=dict)
    children: dict[str, Node] = field(default_factory=dict)  # hard links, resolved

    def __hash__(self) -> int:
        return id(self)

    def __iter__(self) -> Iterator[str]:
        return iter(self.links)

    def __len__(self) -> int:
        return len(self.links)

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` resolves (an external link counts as present; it is never opened)."""
        try:
            self[name]  # type: ignore[index]
        except KeyError:
            return False
        except UnsafeCheckpointError:
            return True
        return True

    def __getitem__(self, path: str) -> Node:
        node, _link = self._resolve(path, follow_last=True)
        assert node is not None
        return node

    def get(self, name: str, default: Any = None, getclass: bool = False, getlink: bool = False) -> Any:  # type: ignore[override]
        """As h5py: the node at ``name`` or ``default``; ``getlink`` gives the link object, ``getclass`` its class."""
        try:
            node, link = self._resolve(name, follow_last=not getlink)
        except KeyError:
            return default
        out = link if getlink else node
        return type(out) if getclass else out

    def _root(self) -> Group:
        return self.file if self.file is not None else self

    def _resolve(self, path: str, follow_last: bool, hops: int = 0) -> tuple[Node | None, Any]:
        if hops > _MAX_SOFT_HOPS:
            raise KeyError(f"{path}: too many soft-link hops")
        node: Node = self._root() if path.startswith("/") else self
        parts = [p for p in path.split("/") if p and p != "."]
        if not parts:
            return node, HardLink()
        link: Any = HardLink()
        for i, part in enumerate(parts):
            if not isinstance(node, Group) or part not in node.links:
                raise KeyError(f"{path!r}: no such object")
            link = node.links[part]
            last = i == len(parts) - 1
            if last and not follow_last:
                return None, link
            if isinstance(link, HardLink):
                node = node.children[part]
            elif isinstance(link, SoftLink):
                base = node
                target, _ = base._resolve(link.path, True, hops + 1)
                assert target is not None
                node = target
            else:
                raise UnsafeCheckpointError(
                    f"{node.name}/{part}: ExternalLink (external link) to {link.filename}:{link.path} is never followed"
                )
        return node, link


@dataclass
class FetchStats:
    """What the walk cost: sequential ``fetch_many`` calls, ranges and bytes fetched."""

    calls: int = 0
    ranges: int = 0
    bytes: int = 0
    requested: int = 0  # ranges asked for by parsers (before merging and cache hits)
    per_call: list[int] = field(default_factory=list)  # ranges in each call
    ahead: int = 0  # bytes fetched on guesses (see ``_base.Ahead``), right or wrong


@dataclass(eq=False)
class H5File(Group):
    """The root group plus file-level facts."""

    superblock_version: int = 0
    base_address: int = 0  # absolute offset of HDF5 address 0 (user block size + ``base``)
    stats: FetchStats = field(default_factory=FetchStats)

    def __hash__(self) -> int:
        return id(self)

    def visit_datasets(self) -> Iterator[Dataset]:
        """Every dataset reachable through hard links, depth first in iteration order."""
        stack: list[Node] = [self]
        while stack:
            node = stack.pop()
            if isinstance(node, Dataset):
                yield node
            elif isinstance(node, Group):
                stack.extend(reversed(list(node.children.values())))
