"""Zarr stores (v2 or v3): lazyweights mirrors, and zarr groups written by other tools.

A **mirror** (written by :func:`lazyweights.mirror`) keeps its source's
manifest in the root group's ``lazyweights`` attribute — format, layer order
(layers without weights included), weight and optimizer key order, and the
array path of every key — next to the source's own root attributes
(``layer_names``, ``model_config``, ...).  Each array's ``lazyweights``
attribute holds its key, layer, original name, manifest dtype and SHA-256.
Parsing rebuilds the source's manifest with ``zarr`` layouts, so every loader
treats a mirror exactly like its source; the mirror reports the source's
``format``.  A mirror whose writer has not finished is refused.  The
manifest's ``attrs["lazyweights"]`` says what the mirror itself is: its
source, whether its chunks are checksummed (``"crc32c"``) or
``"unverified"``, and whether they are sharded.

A **packed** mirror (version 2, the default for uncompressed zarr v3
mirrors) stores small weights concatenated per dtype in 1-D arrays named
``lazyweights-packed-<dtype>``; the root document's ``packed`` catalog gives
each such key its array, element ``offset``, ``shape``, ``dtype``, layer and
name, and the packed array's ``lazyweights`` attribute its ``crc32c`` and
``sha256`` (under ``weights``).  No packed weight crosses a chunk boundary,
so each is one byte range of one stored chunk: parsing turns it into a
``contiguous`` spec on the shard (or chunk) object holding it (``member``,
its byte range located through the shard's index, read once per shard) with
its CRC32C, so loads read packed weights like an ``.h5`` file's — neighbours
merged into one ranged GET, each weight's CRC32C checked as it lands.  Plain
zarr reads them too: ``group[entry["array"]][offset : offset + size]``
reshaped to ``shape`` (see the README).

Names zarr (or portable stores) cannot hold — ``kernel:0``, names with
spaces, ``__``-prefixed or reserved names — are stored encoded
(:func:`encode_name`); the original names live in the attributes, so
decoding never needs to invert the encoding.

A **foreign** zarr group is read like a generic HDF5 file: every numeric
array is a weight keyed by its path, in path order; when its root (or
``model_weights``) lists ``layer_names`` and the layer groups list
``weight_names``, as in a converted Keras ``.h5`` file, that order is used.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import FormatError, UnsupportedError
from ..manifest import Extent, Layer, Manifest, WeightSpec, ZarrChunks
from ..storage import Source
from .hdf5 import group_layers
from .tf.crc import mask
from .zarr_store import (
    EMPTY_CHUNK,
    array,
    checksummed,
    chunk_format,
    fill_bytes,
    root_group,
    shard_index,
    stored_dtype,
    zarr_module,
)

__all__ = [
    "ATTR",
    "MIRROR_VERSION",
    "PACKED_PREFIX",
    "PACKED_VERSION",
    "encode_key",
    "encode_name",
    "packed_path",
    "parse_zarr",
    "recorded_sha256",
    "stored_array",
]

ATTR = "lazyweights"  # the attribute holding lazyweights' own metadata, on the root and on every array
MIRROR_VERSION = 1  # an array per weight
PACKED_VERSION = 2  # small weights packed per dtype (the catalog in the root document)
PACKED_PREFIX = "lazyweights-packed-"

_SAFE = re.compile(r"[A-Za-z0-9._-]+")
_RESERVED = frozenset({".", "..", "zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"})


def encode_name(name: str) -> str:
    """``name`` if it is a portable zarr node name, else a readable, collision-free stand-in.

    Portable names use ``A-Z a-z 0-9 . _ -`` only (the zarr v3 recommendation),
    are not reserved and do not start with ``__``.  Others become the name with
    each other character replaced by ``_`` plus a hash of the original:
    ``kernel:0`` → ``kernel_0-<8 hex digits>``.
    """
    if _SAFE.fullmatch(name) and name not in _RESERVED and not name.startswith("__"):
        return name
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip("_.") or "n"
    return f"{clean}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def encode_key(key: str) -> str:
    """The zarr path of a weight key: each ``/``-separated segment encoded."""
    return "/".join(encode_name(part) for part in key.split("/"))


def packed_path(dtype: str) -> str:
    """The packed array holding small weights of the manifest ``dtype`` (one per stored dtype name)."""
    return PACKED_PREFIX + ("bfloat16" if dtype == "bfloat16" else np.dtype(dtype).name)


def stored_array(spec: WeightSpec) -> str:
    """The zarr array holding a mirror's weight: its own (``path``), or the packed array its ``member`` is in.

    A packed weight's ``path`` is the path it would have with an array of its
    own (what object-graph matching and users see), not the packed array's.
    """
    return spec.member.split("/", 1)[0] if spec.layout == "contiguous" and spec.member else spec.path


def recorded_sha256(source: Source, spec: WeightSpec) -> str | None:
    """The SHA-256 a mirror recorded for ``spec`` (its own array's, or its packed array's entry); None if none."""
    meta = array(source, stored_array(spec)).attrs.get(ATTR) or {}
    if "packed" in meta:
        return ((meta.get("weights") or {}).get(spec.key) or {}).get("sha256")
    return meta.get("sha256")


def parse_zarr(source: Source) -> Manifest:
    """The manifest of the zarr store at ``source`` (a directory or store prefix)."""
    group = _open_group(source)
    doc = group.attrs.get(ATTR)
    if isinstance(doc, Mapping) and "paths" in doc:
        return _parse_mirror(source, group, doc)
    return _parse_foreign(source, group)


def _open_group(source: Source) -> Any:
    """The store's root group; on object stores that list with pins, every member pinned from one listing first."""
    zarr = zarr_module()
    source.pin_listed()
    try:
        return root_group(source)
    except zarr.errors.ContainsArrayError as exc:
        raise FormatError(f"{source.url}: a single zarr array, not a group of weights") from exc
    except FileNotFoundError as exc:
        raise FormatError(
            f"{source.url}: a directory without zarr metadata (zarr.json, .zgroup), not a checkpoint"
        ) from exc
    except (ValueError, KeyError, TypeError) as exc:  # zarr rejecting malformed metadata documents
        raise FormatError(f"{source.url}: malformed zarr metadata: {exc}") from exc


# -- lazyweights mirrors ----------------------------------------------------------


def _parse_mirror(source: Source, group: Any, doc: Mapping[str, Any]) -> Manifest:
    url = source.url
    if doc.get("version") not in (MIRROR_VERSION, PACKED_VERSION):
        raise UnsupportedError(
            f"{url}: a lazyweights mirror of version {doc.get('version')}; this reads versions 1 and 2"
        )
    if not doc.get("complete"):
        raise FormatError(
            f"{url}: an incomplete lazyweights mirror (its writer was interrupted or is still running); "
            "run lazyweights.mirror again to resume it"
        )
    paths: Mapping[str, str] = doc["paths"]
    try:
        specs = {key: _mirror_spec(source, key, path) for key, path in paths.items()}
        specs.update({key: _packed_spec(source, key, entry) for key, entry in (doc.get("packed") or {}).items()})
        weights = tuple(specs[k] for k in doc["weights"])
        optimizer = tuple(specs[k] for k in doc["optimizer"])
    except KeyError as exc:
        raise FormatError(f"{url}: mirror metadata lists {exc} but holds no array for it") from exc
    return Manifest(
        url=url,
        format=doc["format"],
        size=0,
        etag=doc.get("id"),
        weights=weights,
        layers=tuple(Layer(la["name"], tuple(la["keys"]), la.get("alias")) for la in doc["layers"]),
        optimizer=optimizer,
        attrs={**{k: v for k, v in group.attrs.items() if k != ATTR}, ATTR: _mirror_facts(source, doc, specs)},
        skipped=tuple((p, r) for p, r in doc.get("skipped", ())),
    )


def _mirror_facts(source: Source, doc: Mapping[str, Any], specs: Mapping[str, WeightSpec]) -> dict[str, Any]:
    """What a loader should know about the mirror itself: its source, and whether its chunks are checksummed.

    ``checksums`` is ``"crc32c"`` when every array's chunks carry a CRC32C
    checked on every read, else ``"unverified"`` (mirrors written before
    checksums, or with ``checksum=False``, or zarr v2): a corrupt chunk of an
    uncompressed unverified mirror reads as wrong values, found only by
    ``lazyweights.verify``.
    """
    arrays = [array(source, stored_array(spec)) for spec in specs.values()]
    return {
        "mirror_of": dict(doc.get("source") or {}),
        "checksums": "crc32c" if all(checksummed(a) for a in arrays) else "unverified",
        "sharded": any(a.metadata.zarr_format == 3 and a.shards is not None for a in arrays),
    }


def _mirror_spec(source: Source, key: str, path: str) -> WeightSpec:
    zarr = zarr_module()
    try:
        arr = array(source, path)
    except (zarr.errors.NodeNotFoundError, KeyError) as exc:
        raise FormatError(f"{source.url}: weight {key!r} should be the array {path!r}, which is missing") from exc
    meta = arr.attrs.get(ATTR) or {}
    if meta.get("key") != key:
        raise FormatError(f"{source.url}: array {path!r} records key {meta.get('key')!r}, the mirror says {key!r}")
    if stored_dtype(meta["dtype"]) != arr.dtype.newbyteorder("<"):  # zarr reports native order on reading
        raise FormatError(
            f"{source.url}: weight {key!r} is recorded as {meta['dtype']} but stored as {arr.dtype} in {path!r}"
        )
    return WeightSpec(
        key=key,
        layer=meta["layer"],
        name=meta["name"],
        path=path,
        shape=tuple(arr.shape),
        dtype=meta["dtype"],
        layout="zarr",
        chunk_shape=tuple(arr.chunks),
        fill=fill_bytes(arr, meta["dtype"]),
        zarr=chunk_format(arr),
    )


def _packed_spec(source: Source, key: str, entry: Mapping[str, Any]) -> WeightSpec:
    """A packed weight as a ``contiguous`` spec: its byte range in the stored chunk holding it, and its CRC32C."""
    path, offset, shape, dtype = entry["array"], int(entry["offset"]), tuple(entry["shape"]), entry["dtype"]
    where = f"{source.url}: weight {key!r} (packed in {path!r} at element {offset})"
    try:
        arr = array(source, path)
    except KeyError as exc:
        raise FormatError(f"{where}: the packed array is missing") from exc
    recorded = ((arr.attrs.get(ATTR) or {}).get("weights") or {}).get(key)
    fmt = chunk_format(arr)
    if recorded is None or fmt is None or fmt.byteorder is None or arr.ndim != 1:
        raise FormatError(f"{where}: the packed array records no checksum for it or is not raw 1-D chunks")
    if stored_dtype(dtype) != arr.dtype.newbyteorder("<"):
        raise FormatError(f"{where}: recorded as {dtype} but the packed array holds {arr.dtype}")
    size, chunk, itemsize = math.prod(shape), arr.chunks[0], arr.dtype.itemsize
    index = offset // chunk
    if offset < 0 or offset % chunk + size > chunk or offset + size > arr.shape[0]:
        raise FormatError(f"{where}: {size} elements there leave their chunk of {chunk} or the array")
    member, base = _packed_chunk(source, path, fmt, index, chunk * itemsize + 4 * fmt.checksum, where)
    return WeightSpec(
        key=key,
        layer=entry["layer"],
        name=entry["name"],
        path=encode_key(key),
        shape=shape,
        dtype=dtype,
        layout="contiguous",
        extent=Extent(base + offset % chunk * itemsize, size * itemsize),
        member=member,
        crc32c=mask(int(recorded["crc32c"])),
    )


def _packed_chunk(source: Source, path: str, fmt: ZarrChunks, index: int, stored: int, where: str) -> tuple[str, int]:
    """``(object key, byte offset)`` of the packed array's chunk ``index``: its own object, or its place in a shard."""
    if fmt.shard is None:
        key, base = f"{path}/{fmt.key((index,))}", 0
        member = source.member(key)
        size = None if member is None else member.size
    else:
        key = f"{path}/{fmt.key((index // fmt.shard[0],))}"
        table = shard_index(source, key, fmt.shard, where)
        entry = None if table is None else table[1][index % fmt.shard[0]]
        base, size = (int(entry[0]), int(entry[1])) if entry is not None else (0, None)
        if size == EMPTY_CHUNK or (table is not None and base + stored > table[0].size):
            size = None
    if size != stored:
        raise FormatError(f"{where}: its chunk {index} is missing or holds {size} bytes, not {stored}")
    return key, base


# -- zarr groups written by other tools ---------------------------------------------


def _foreign_spec(source: Source, path: str, key: str, layer: str, name: str) -> WeightSpec | None:
    arr = array(source, path)
    if arr.dtype.kind not in "biufc" or arr.dtype.fields is not None:
        return None
    return WeightSpec(
        key=key,
        layer=layer,
        name=name,
        path=path,
        shape=tuple(arr.shape),
        dtype=arr.dtype.str,
        layout="zarr",
        chunk_shape=tuple(arr.chunks),
        fill=fill_bytes(arr, arr.dtype.str),
        zarr=chunk_format(arr),
    )


def _keras_root(group: Any) -> tuple[str, Any] | None:
    """``(prefix, group)`` of the group listing ``layer_names`` (the root or ``model_weights``), if any."""
    if "layer_names" in group.attrs:
        return "", group
    inner = group.get("model_weights")
    if inner is not None and "layer_names" in inner.attrs:
        return "model_weights/", inner
    return None


def _parse_foreign(source: Source, group: Any) -> Manifest:
    keras = _keras_root(group)
    if keras is not None:
        return _parse_foreign_keras(source, group, *keras)
    weights: list[WeightSpec] = []
    skipped: list[tuple[str, str]] = []
    paths = sorted(path for path, node in group.members(max_depth=None) if hasattr(node, "dtype"))
    for path in paths:
        layer, _, name = path.rpartition("/")
        spec = _foreign_spec(source, path, path, layer, name)
        if spec is None:
            skipped.append((path, f"dtype {array(source, path).dtype} is not numeric"))
        else:
            weights.append(spec)
    return Manifest(
        url=source.url,
        format="zarr",
        size=0,
        etag=source.etag,
        weights=tuple(weights),
        layers=group_layers(weights),
        attrs=_json_configs(source, group.attrs),
        skipped=tuple(skipped),
    )


def _parse_foreign_keras(source: Source, root: Any, prefix: str, wroot: Any) -> Manifest:
    """A Keras ``.h5`` layout copied into zarr: ``layer_names`` → groups with ``weight_names``."""
    layers: list[Layer] = []
    weights: list[WeightSpec] = []
    for lname in wroot.attrs["layer_names"]:
        wnames = wroot[lname].attrs.get("weight_names", []) if lname in wroot else []
        keys = []
        for wname in wnames:
            key = f"{lname}/{wname}"
            spec = _foreign_spec(source, prefix + key, key, lname, wname)
            if spec is None:
                raise FormatError(f"{source.url}: weight {key!r} is not a numeric array")
            weights.append(spec)
            keys.append(key)
        layers.append(Layer(lname, tuple(keys)))
    attrs = _json_configs(source, wroot.attrs)
    attrs.update(_json_configs(source, root.attrs) if prefix else {})
    return Manifest(
        url=source.url,
        format="keras-h5",
        size=0,
        etag=source.etag,
        weights=tuple(weights),
        layers=tuple(layers),
        attrs=attrs,
    )


def _json_configs(source: Source, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes as a dict, ``*_config`` strings parsed as JSON (as the HDF5 formats do)."""
    out = dict(attrs)
    for key, value in out.items():
        if key.endswith("_config") and isinstance(value, str):
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise FormatError(f"{source.url}: attribute {key!r} is not valid JSON: {exc}") from exc
    return out
