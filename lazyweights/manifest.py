"""The manifest: what a checkpoint holds and where its bytes are.

Pure data, no I/O.  A :class:`Manifest` is built once from a file's metadata
(``lazyweights.formats``) and is everything later stages need: it pickles, it
round-trips through JSON (:meth:`Manifest.to_json`), and two manifests of the
same file compare equal.  It is validated when built, so a reader can trust
that every byte range lies inside the file and that keys are unique.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .attrs import Attrs, Deferred, Reader
from .errors import FormatError, MissingKeyError

__all__ = [
    "Chunk",
    "Extent",
    "Filter",
    "Layer",
    "Manifest",
    "Piece",
    "WeightSpec",
    "ZarrChunks",
    "resolve_dtype",
]

Layout = Literal["contiguous", "chunked", "compact", "empty", "h5py", "zarr", "pieces", "unsupported"]


def resolve_dtype(name: str) -> np.dtype:
    """Turn a manifest dtype string into a numpy dtype (``"bfloat16"`` via ml_dtypes)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


@dataclass(frozen=True, slots=True)
class Extent:
    """A byte range ``[offset, offset + length)`` of the container file."""

    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True, slots=True)
class Chunk:
    """One stored chunk of a chunked dataset: its origin in element coordinates and its bytes."""

    origin: tuple[int, ...]
    extent: Extent
    filter_mask: int = 0


@dataclass(frozen=True, slots=True)
class Filter:
    """One stage of an HDF5 filter pipeline, in the order the writer applied it."""

    id: int
    name: str
    values: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ZarrChunks:
    """How the chunks of a zarr array are named and stored: each chunk is an object of its own.

    The chunk at grid index ``(i, j)`` is the object ``<array path>/c/i/j``
    with zarr v3's default key encoding (``prefix`` ``"c"``, ``separator``
    ``"/"``), or ``<array path>/i.j`` with zarr v2's (no prefix; ``"0"`` for a
    0-d array).  ``byteorder`` is set (``"<"``, ``">"``, or ``"|"`` for one-byte
    types) when chunks are **raw** — exactly ``prod(chunk_shape)`` elements in
    C order, no codec — so any run of a chunk is a byte range of its object;
    it is None when chunks must be decoded.  ``checksum``: each raw chunk is
    followed by the CRC32C of its bytes (zarr v3's ``crc32c`` codec, 4 bytes
    little-endian).  ``shard``: chunks live in shard objects of that many
    chunks per axis (zarr v3's sharding codec, index of ``(offset, nbytes)``
    pairs and its CRC32C at the end); the object is named by the shard's grid
    index.
    """

    separator: str = "/"
    prefix: str = "c"
    byteorder: str | None = None
    checksum: bool = False
    shard: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.shard is not None:  # a list after a JSON round trip
            object.__setattr__(self, "shard", tuple(self.shard))

    def key(self, index: tuple[int, ...]) -> str:
        """The object key of the chunk at grid ``index``, relative to the array."""
        if self.prefix:
            return self.separator.join((self.prefix, *map(str, index)))
        return self.separator.join(map(str, index)) or "0"


@dataclass(frozen=True, slots=True)
class Piece:
    """One stored block of a weight assembled from blocks (a TensorFlow partitioned variable's slice).

    The block of ``shape`` at element ``origin`` is raw C-order data of the
    weight's dtype at ``extent`` of the store member ``member``; ``crc32c``
    is the masked CRC32C of those bytes as the writer recorded it.
    """

    origin: tuple[int, ...]
    shape: tuple[int, ...]
    member: str
    extent: Extent
    crc32c: int | None = None


@dataclass(frozen=True, slots=True)
class WeightSpec:
    """Everything needed to read one weight without the format's library.

    ``key`` is the dataset's path relative to the checkpoint's weights root
    (``model_weights`` for full-model Keras files, the file root otherwise), so
    it is unique and stable.  ``layout`` says how the bytes are stored:

    - ``contiguous``: one extent of ``nbytes`` bytes, C order;
    - ``chunked``: ``chunks`` of ``chunk_shape`` each, decoded with ``filters``;
    - ``compact``: the raw bytes are in ``inline`` (they live in the metadata);
    - ``empty``: never written, every element is ``fill``;
    - ``h5py``: decoded by h5py from ``path`` (``reason``: a filter with no
      codec here, a stored type that is not a numpy layout, metadata only
      libhdf5 follows);
    - ``unsupported``: no reader here gives its values (``reason`` says why);
      reading it raises :class:`~lazyweights.errors.UnsupportedError`;
    - ``zarr``: an array of a zarr store at ``path`` in chunks of
      ``chunk_shape``, each an object of its own named and stored as ``zarr``
      says (None: zarr itself reads and decodes them); chunks never written
      hold ``fill``;
    - ``pieces``: assembled from ``pieces``, blocks stored apart.

    ``member`` names the object of a store (a checkpoint made of several
    files) that holds ``extent``; None: the source itself.  ``crc32c`` is the
    masked CRC32C (TensorFlow's) of the extent's bytes, checked as they are read.
    """

    key: str
    layer: str
    name: str
    path: str
    shape: tuple[int, ...]
    dtype: str
    layout: Layout
    extent: Extent | None = None
    chunk_shape: tuple[int, ...] | None = None
    chunks: tuple[Chunk, ...] = ()
    filters: tuple[Filter, ...] = ()
    inline: bytes | None = None
    fill: bytes | None = None
    zarr: ZarrChunks | None = None
    member: str | None = None
    crc32c: int | None = None
    pieces: tuple[Piece, ...] = ()
    reason: str | None = None

    @property
    def np_dtype(self) -> np.dtype:
        return resolve_dtype(self.dtype)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.np_dtype.itemsize

    @property
    def stored_bytes(self) -> int:
        """Bytes this weight occupies in the file (compressed size for chunked data)."""
        if self.layout == "contiguous":
            return self.extent.length if self.extent else 0
        if self.layout == "chunked":
            return sum(c.extent.length for c in self.chunks)
        if self.layout == "pieces":
            return sum(p.extent.length for p in self.pieces)
        return 0

    def extents(self) -> Iterator[Extent]:
        """Every byte range of the container file this weight reads."""
        if self.extent is not None:
            yield self.extent
        for chunk in self.chunks:
            yield chunk.extent


@dataclass(frozen=True, slots=True)
class Layer:
    """A layer as the checkpoint names it, with its weight keys in the file's order.

    ``name`` is what loaders match on (the layer name in Keras 2 files, the
    object path such as ``layers/dense_1`` in Keras 3 files); ``alias`` is the
    layer's own name where the file records it separately.
    """

    name: str
    keys: tuple[str, ...]
    alias: str | None = None


@dataclass(frozen=True)
class Manifest:
    """An ordered, validated description of a checkpoint.

    ``weights`` is in topological order (for Keras files, the order of
    ``model.get_weights()``); ``layers`` in the file's layer order, including
    layers without weights.  ``attrs`` holds the JSON-able root attributes,
    with ``model_config``/``training_config`` parsed (large ones read on first
    access, see :mod:`lazyweights.attrs`).
    """

    url: str
    format: str
    size: int
    weights: tuple[WeightSpec, ...]
    layers: tuple[Layer, ...] = ()
    optimizer: tuple[WeightSpec, ...] = ()
    attrs: Mapping[str, Any] = field(default_factory=dict)
    etag: str | None = None
    skipped: tuple[tuple[str, str], ...] = ()
    _index: dict[str, WeightSpec] = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "attrs", Attrs.of(self.attrs))
        index: dict[str, WeightSpec] = {}
        for spec in (*self.weights, *self.optimizer):
            if spec.key in index:
                raise FormatError(f"{self.url}: two weights share the key {spec.key!r}")
            if spec.member is None:  # a member's extents were checked against that member when it was parsed
                _check_extents(self.url, self.size, spec)
            index[spec.key] = spec
        for layer in self.layers:
            missing = [k for k in layer.keys if k not in index]
            if missing:
                raise FormatError(f"{self.url}: layer {layer.name!r} lists weights the file lacks: {missing}")
        object.__setattr__(self, "_index", index)

    def __getitem__(self, key: str) -> WeightSpec:
        try:
            return self._index[key]
        except KeyError:
            raise MissingKeyError(_missing_message(self.url, key, list(self._index))) from None

    def __contains__(self, key: object) -> bool:
        return key in self._index

    @property
    def keys(self) -> list[str]:
        return [w.key for w in self.weights]

    @property
    def nbytes(self) -> int:
        return sum(w.nbytes for w in self.weights)

    def bound(self, reader: Reader) -> Manifest:
        """This manifest with its large attributes read, when asked for, through ``reader`` (an object's reads)."""
        return dataclasses.replace(self, attrs=self.attrs.bound(reader)) if self.attrs.references() else self

    def to_json(self) -> str:
        """Serialise to JSON; :meth:`from_json` gives back an equal manifest (large attributes stay references)."""
        plain = _to_plain(self)
        plain["deferred_attrs"] = {k: d.to_plain() for k, d in self.attrs.references().items()}
        return json.dumps(plain, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        return cls(
            url=data["url"],
            format=data["format"],
            size=data["size"],
            etag=data.get("etag"),
            weights=tuple(_spec_from_plain(w) for w in data["weights"]),
            layers=tuple(Layer(d["name"], tuple(d["keys"]), d.get("alias")) for d in data["layers"]),
            optimizer=tuple(_spec_from_plain(w) for w in data["optimizer"]),
            attrs=Attrs(
                {
                    **data["attrs"],
                    **{k: Deferred.from_plain(d) for k, d in (data.get("deferred_attrs") or {}).items()},
                }
            ),
            skipped=tuple((p, r) for p, r in data["skipped"]),
        )


def _check_extents(url: str, size: int, spec: WeightSpec) -> None:
    """Refuse byte ranges outside the file before anything is allocated or read.

    Extents of store members (``member``, pieces) lie in objects of their own,
    checked against those objects' sizes by the format's parser.
    """
    for ext in () if spec.member is not None else spec.extents():
        if ext.offset < 0 or ext.length < 0 or ext.end > size:
            raise FormatError(
                f"{url}: weight {spec.key!r} declares bytes [{ext.offset}, {ext.end}) but the file has {size} bytes"
            )
    if spec.layout == "contiguous" and spec.extent is not None and spec.extent.length != spec.nbytes:
        raise FormatError(
            f"{url}: weight {spec.key!r} of shape {spec.shape} and dtype {spec.dtype} needs "
            f"{spec.nbytes} bytes but its storage holds {spec.extent.length}"
        )


def _missing_message(url: str, key: str, keys: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, keys, n=3)
    hint = f"; did you mean {close}?" if close else f"; it holds {len(keys)} weights"
    return f"{url}: no weight {key!r}{hint}"


def _to_plain(obj: Any) -> Any:
    """Dataclasses → dicts, tuples → lists, bytes → base64, recursively."""
    if isinstance(obj, bytes):
        return {"b64": base64.b64encode(obj).decode()}
    if isinstance(obj, Attrs):  # references are written apart (Manifest.to_json), never read for it
        return _to_plain(obj.held())
    if hasattr(obj, "__dataclass_fields__"):
        return {f: _to_plain(getattr(obj, f)) for f in obj.__dataclass_fields__ if not f.startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


def _bytes(value: Any) -> bytes | None:
    return None if value is None else base64.b64decode(value["b64"])


def _spec_from_plain(d: dict[str, Any]) -> WeightSpec:
    ext = d["extent"]
    return WeightSpec(
        key=d["key"],
        layer=d["layer"],
        name=d["name"],
        path=d["path"],
        shape=tuple(d["shape"]),
        dtype=d["dtype"],
        layout=d["layout"],
        extent=Extent(**ext) if ext else None,
        chunk_shape=tuple(d["chunk_shape"]) if d["chunk_shape"] is not None else None,
        chunks=tuple(
            Chunk(origin=tuple(c["origin"]), extent=Extent(**c["extent"]), filter_mask=c["filter_mask"])
            for c in d["chunks"]
        ),
        filters=tuple(Filter(id=f["id"], name=f["name"], values=tuple(f["values"])) for f in d["filters"]),
        inline=_bytes(d["inline"]),
        fill=_bytes(d["fill"]),
        zarr=ZarrChunks(**d["zarr"]) if d.get("zarr") else None,
        member=d.get("member"),
        crc32c=d.get("crc32c"),
        pieces=tuple(
            Piece(tuple(p["origin"]), tuple(p["shape"]), p["member"], Extent(**p["extent"]), p.get("crc32c"))
            for p in d.get("pieces", ())
        ),
        reason=d.get("reason"),
    )
