"""A TensorFlow checkpoint's metadata → a :class:`~lazyweights.manifest.Manifest`, over one store Source.

The checkpoint's folder is a store :class:`~lazyweights.storage.Source`;
``<prefix>.index`` and ``<prefix>.data-*`` are its members.  Parsing reads the
index and the object graph (a string tensor in a data shard: metadata) and
stats each shard; it never reads a weight's values.  Each numeric tensor
becomes a ``contiguous`` :class:`WeightSpec` whose ``member`` names its shard
and whose ``crc32c`` is the index's masked CRC32C, which the executor checks
as it reads; a partitioned variable becomes a ``pieces`` spec, one
:class:`Piece` per stored slice.  Strings and dtypes without a numpy
equivalent are listed in ``Manifest.skipped`` with the reason.

Weights are keyed by their checkpoint key; ``path`` is the object-graph path
(``encoder/dense1/kernel``), ``layer`` the owning object's path.  Keys under
``optimizer/`` and slot variables (``…/.OPTIMIZER_SLOT/…``) are the
optimizer's.  ``attrs["object_graph"]`` carries, as plain data for targets,
every path of each key (aliases: ``layer_with_weights-0`` and ``layer-1``) and
the slot variables.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import FormatError
from ...manifest import Extent, Layer, Manifest, Piece, WeightSpec
from ...storage import Source
from .bundle import BundleIndex, TensorEntry, decode_strings, read_index, shard_name
from .graph import OBJECT_GRAPH_KEY, ObjectGraph, parse_object_graph

__all__ = ["FORMAT", "parse_tf"]

FORMAT = "tf-checkpoint"
_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def _member(folder: Source, key: str, what: str) -> Source:
    found = folder.member(key)
    if found is None:
        raise FormatError(f"{folder.url.rstrip('/')}/{key}: the checkpoint's {what} is missing")
    return found


def parse_tf(folder: Source, prefix: str) -> Manifest:
    """The manifest of the checkpoint ``prefix`` (a name relative to the store ``folder``)."""
    url = f"{folder.url.rstrip('/')}/{prefix}"
    index_file = _member(folder, prefix + ".index", "index")
    index = read_index(index_file.read, index_file.size, index_file.url, url)
    n = index.header.num_shards
    shards = {i: _member(folder, shard_name(prefix, i, n), "data shard") for i in range(n)}
    index.check_shards({i: s.size for i, s in shards.items()})
    graph = _object_graph(index, shards)
    weights, optimizer, skipped = [], [], []
    for key, entry in index.entries.items():
        if key == OBJECT_GRAPH_KEY or entry.unsupported:
            skipped.append((key, "object graph (read as metadata)" if key == OBJECT_GRAPH_KEY else entry.unsupported))
            continue
        spec = _spec(index, entry, prefix, graph)
        (optimizer if _is_optimizer(spec.path) else weights).append(spec)
    attrs = {"tf_prefix": prefix, "object_graph": _graph_attrs(graph, index)}
    size = index_file.size + sum(s.size for s in shards.values())
    return Manifest(
        url=url,
        format=FORMAT,
        size=size,
        weights=tuple(weights),
        layers=_layers(weights),
        optimizer=tuple(optimizer),
        attrs=attrs,
        skipped=tuple(skipped),
    )


def _object_graph(index: BundleIndex, shards: dict[int, Source]) -> ObjectGraph | None:
    """The decoded object graph (None for a name-based TF1 checkpoint without one)."""
    entry = index.entries.get(OBJECT_GRAPH_KEY)
    if entry is None or entry.slices or entry.shape != () or not entry.is_string:
        return None
    shard = shards[entry.shard_id]
    (data,) = decode_strings(entry, shard.read(entry.offset, entry.size), shard.url)
    return parse_object_graph(data, shard.url)


def _path(key: str, graph: ObjectGraph | None) -> str:
    found = graph.path(key) if graph is not None else None
    return found if found is not None else key.removesuffix(_SUFFIX)


def _is_optimizer(path: str) -> bool:
    return path == "optimizer" or path.startswith("optimizer/") or "/.OPTIMIZER_SLOT/" in path


def _dtype(entry: TensorEntry, index: BundleIndex) -> str:
    dtype = entry.dtype
    if index.header.endianness == "big" and dtype.itemsize > 1:
        return dtype.newbyteorder(">").str
    return dtype.name


def _spec(index: BundleIndex, entry: TensorEntry, prefix: str, graph: ObjectGraph | None) -> WeightSpec:
    path = _path(entry.key, graph)
    layer, _, name = path.rpartition("/")
    common = dict(key=entry.key, layer=layer, name=name, path=path, shape=entry.shape, dtype=_dtype(entry, index))
    n = index.header.num_shards
    if entry.slices:
        return WeightSpec(**common, layout="pieces", pieces=_pieces(index, entry, prefix))
    return WeightSpec(
        **common,
        layout="contiguous",
        extent=Extent(entry.offset, entry.size),
        member=shard_name(prefix, entry.shard_id, n),
        crc32c=entry.crc32c,
    )


def _pieces(index: BundleIndex, entry: TensorEntry, prefix: str) -> tuple[Piece, ...]:
    """The stored slices of a partitioned variable, checked to tile its shape exactly once."""
    where = f"{index.index_name}: tensor {entry.key!r}"
    covered = np.zeros(entry.shape, dtype=np.uint8) if math.prod(entry.shape) <= 1 << 24 else None
    pieces, total = [], 0
    for piece in entry.slices:
        stored = index.slice_entry(entry, piece)
        shape = piece.shape_in(entry.shape)
        if stored.shape != shape or stored.dtype_code != entry.dtype_code:
            raise FormatError(f"{where}: slice {piece} stored as {stored.shape}, expected {shape}")
        origin = tuple(0 if n == -1 else s for s, n in zip(piece.starts, piece.lengths, strict=True))
        if any(o < 0 or o + d > dim for o, d, dim in zip(origin, shape, entry.shape, strict=True)):
            raise FormatError(f"{where}: slice {piece} lies outside shape {entry.shape}")
        if covered is not None:
            covered[piece.bounds(entry.shape)] += 1
        total += math.prod(shape)
        member = shard_name(prefix, stored.shard_id, index.header.num_shards)
        pieces.append(Piece(origin, shape, member, Extent(stored.offset, stored.size), stored.crc32c))
    if total != math.prod(entry.shape) or (covered is not None and not (covered == 1).all()):
        raise FormatError(f"{where}: its slices do not cover shape {entry.shape} exactly once")
    return tuple(pieces)


def _layers(weights: list[WeightSpec]) -> tuple[Layer, ...]:
    owners: dict[str, list[str]] = {}
    for spec in weights:
        owners.setdefault(spec.layer, []).append(spec.key)
    return tuple(Layer(name, tuple(keys)) for name, keys in owners.items())


def _graph_attrs(graph: ObjectGraph | None, index: BundleIndex) -> dict:
    """The object graph as plain data for targets: every path of each key, and the slot variables."""
    if graph is None:
        return {"paths": {}, "slots": []}
    paths = {k: list(graph.key_paths.get(k, ())) for k in index.entries if k != OBJECT_GRAPH_KEY}
    slots = [
        {
            "optimizer": s.optimizer_path,
            "slot": s.slot_name,
            "original": list(s.original_keys),
            "keys": list(s.slot_keys),
        }
        for s in graph.slots
    ]
    return {"paths": paths, "slots": slots}
