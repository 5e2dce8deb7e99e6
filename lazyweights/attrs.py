"""A checkpoint's attributes, the large ones read on first access.

A Keras file's model config is metadata, but it is not needed to find a
weight: a 2,000-layer model's ``model_config`` is 2.3 MB, more than every
object header of the file together.  So an open records where a large
attribute's bytes are (:class:`Deferred`: a byte range of the object, how it
is encoded, its declared size and checksum) and :class:`Attrs` reads it the
first time it is asked for, exactly once, through the reader the checkpoint's
source binds (a pinned, length-checked read of that object version).

Pure data plus one callable: no I/O happens here but the reader's.
"""

from __future__ import annotations

import json
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import FormatError, StorageError

__all__ = ["DEFER_BYTES", "Attrs", "Deferred", "Reader"]

# An attribute value of more than this many bytes is read on first access, not at open
# (a Keras config of 400 layers is ~0.4 MB; names, versions and weight lists are far below it).
DEFER_BYTES = 64 << 10
MAX_DEFERRED = 1 << 30  # a declared size beyond this is refused before anything is allocated

Reader = Callable[[int, int], bytes]


@dataclass(frozen=True)
class Deferred:
    """Where an attribute's value lies in the object and how to decode it.

    ``offset``/``length``: the stored bytes; ``size``: the decoded length;
    ``codec``: ``"raw"`` or ``"deflate"`` (a zip member); ``crc32``: a zip
    member's checksum of the decoded bytes; ``json``: parse the text as JSON
    (``*_config`` attributes, ``config.json``); ``strict``: refuse text that is
    not UTF-8 (HDF5 strings decode as h5py does, invalid bytes escaped);
    ``what``: the file and attribute, for errors.
    """

    offset: int
    length: int
    size: int
    what: str
    codec: str = "raw"
    crc32: int | None = None
    json: bool = False
    strict: bool = False

    def __post_init__(self) -> None:
        if self.codec not in ("raw", "deflate"):
            raise FormatError(f"{self.what}: unknown attribute encoding {self.codec!r}")
        if not (0 <= self.length <= MAX_DEFERRED and 0 <= self.size <= MAX_DEFERRED and self.offset >= 0):
            raise FormatError(f"{self.what}: {self.length} stored / {self.size} declared bytes at {self.offset}")
        if self.codec == "raw" and self.size != self.length:
            raise FormatError(f"{self.what}: stored as {self.length} bytes but declared {self.size}")

    def decode(self, data: bytes) -> Any:
        """The value of the stored bytes ``data``, checked against the declared length, size and checksum."""
        if len(data) != self.length:
            raise FormatError(f"{self.what}: read {len(data)} bytes, expected {self.length}")
        if self.codec == "deflate":
            try:
                data = zlib.decompressobj(-15).decompress(data, self.size + 1)
            except zlib.error as exc:
                raise FormatError(f"{self.what}: not valid deflate data: {exc}") from exc
        if len(data) != self.size or (self.crc32 is not None and zlib.crc32(data) != self.crc32):
            raise FormatError(f"{self.what}: {len(data)} bytes that do not match the declared size and checksum")
        try:
            text = data.decode("utf-8", "strict" if self.strict else "surrogateescape")
            return json.loads(text) if self.json else text
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FormatError(f"{self.what}: not valid {'JSON' if self.json else 'UTF-8'}: {exc}") from exc

    def to_plain(self) -> dict[str, Any]:
        """A JSON-able dict (see :meth:`from_plain`)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_plain(cls, d: Mapping[str, Any]) -> Deferred:
        """The reference :meth:`to_plain` wrote (validated again)."""
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        try:
            return cls(**known)
        except TypeError as exc:
            raise FormatError(f"a deferred attribute record lacks a field: {exc}") from exc


class Attrs(Mapping[str, Any]):
    """Read-only attributes; :class:`Deferred` values are read on first access through ``reader``.

    Two mappings compare equal when their values do (deferred ones are read
    for it, or compared as references where either mapping has no reader).
    """

    def __init__(self, values: Mapping[str, Any] | None = None, reader: Reader | None = None):
        self._values = dict(values or {})
        self._reader = reader
        self._read: dict[str, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def of(cls, values: Mapping[str, Any] | None) -> Attrs:
        """``values`` as Attrs (itself if it already is)."""
        return values if isinstance(values, Attrs) else cls(values)

    def bound(self, reader: Reader) -> Attrs:
        """The same attributes, deferred ones read through ``reader`` (what was read already is kept)."""
        out = Attrs(self._values, reader)
        out._read = dict(self._read)
        return out

    def deferred(self) -> dict[str, Deferred]:
        """The attributes not read yet, by name."""
        return {k: v for k, v in self.references().items() if k not in self._read}

    def references(self) -> dict[str, Deferred]:
        """Every attribute held as a reference (read since or not), by name."""
        return {k: v for k, v in self._values.items() if isinstance(v, Deferred)}

    def held(self) -> dict[str, Any]:
        """The attributes held as values (what an index stores beside the references)."""
        return {k: v for k, v in self._values.items() if not isinstance(v, Deferred)}

    def raw(self, key: str) -> Any:
        """The value as held: a :class:`Deferred` reference is returned, not read."""
        return self._values[key]

    def __getitem__(self, key: str) -> Any:
        value = self._values[key]
        if not isinstance(value, Deferred):
            return value
        with self._lock:
            if key not in self._read:
                if self._reader is None:
                    raise StorageError(f"{value.what}: not read at open, and no source is bound to read it now")
                self._read[key] = value.decode(self._reader(value.offset, value.length))
            return self._read[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        if set(self) != set(other):
            return False
        if isinstance(other, Attrs) and self.references() == other.references():  # the same bytes: no need to read
            return self.held() == other.held()
        mine, theirs = self._comparable(), other._comparable() if isinstance(other, Attrs) else dict(other)
        return mine == theirs

    __hash__ = None  # type: ignore[assignment]

    def _comparable(self) -> dict[str, Any]:
        if self._reader is None:
            return {k: self._read.get(k, v) for k, v in self._values.items()}
        return dict(self.items())

    def __getstate__(self) -> dict[str, Any]:
        return {"values": self._values, "reader": self._reader, "read": self._read}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["values"], state["reader"])  # type: ignore[misc]
        self._read = dict(state["read"])

    def __repr__(self) -> str:
        return f"Attrs({list(self._values)}, deferred={list(self.deferred())})"
