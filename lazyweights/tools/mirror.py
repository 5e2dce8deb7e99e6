"""Zarr mirrors: a checkpoint copied into a zarr group that loads exactly like its source.

:func:`mirror` streams the source's values under ``max_memory`` (half for
reads in flight, half for values waiting to be written) into one zarr array
per weight, chunked along the first axis for parallel ranged reads, and
records the source's manifest and a SHA-256 per weight (layout in
``lazyweights.formats.zarr``).  Writes run on local threads or on a
``dask.distributed`` Client.

**Packed layout** (the default for uncompressed zarr v3 mirrors, mirror
version 2): weights of at most ``chunk_bytes / 8`` are concatenated per dtype
into a few 1-D sharded arrays (``lazyweights-packed-<dtype>``), each weight
inside one chunk (a weight that would cross a chunk boundary starts the next
chunk), so a weight is one byte range of one shard object; the root's
catalog maps each key to its array, element offset and shape, and the
packed array's attributes hold each weight's CRC32C and SHA-256.  Larger
weights keep an array of their own.  Mirroring Keras's MobileNetV2 to S3
was 3,858 requests with an array per weight (262 arrays: a metadata
document, parent groups and existence checks each); packed, it is a few
dozen (``benchmarks/bench_mirror.py --remote``).

**Few requests**: every metadata document is designed in an in-memory zarr
store and PUT once; every data object (a shard, or a chunk when unsharded)
is encoded by zarr into an in-memory store and PUT once (writes always cover
whole shards or chunks, so nothing is read back: zarr's own writes to an
object store stat and list before each shard); the root is written once
incomplete and once complete with the consolidated metadata of the whole
tree, built from memory.  Shards stay under s3fs's single-PUT limit
(``2 * 50 MiB``; the default shard is 64 MiB at most), so no upload is
multipart.

Crash safety: the root starts marked incomplete; a weight's checksum is
recorded only after all its chunks are stored; the root is marked complete
and its metadata consolidated last.  Re-running on an interrupted mirror of
the same source with the same settings resumes it (weights with a checksum
are kept); anything else already at the destination is refused unless
``overwrite=True``, which deletes it and starts over.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import time
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec

from ..checkpoint import Checkpoint, Url, opened
from ..errors import DestinationExistsError, LazyWeightsError, StorageError
from ..formats.zarr import ATTR, MIRROR_VERSION, PACKED_VERSION, encode_key, encode_name, packed_path
from ..formats.zarr_store import crc32c, open_store, source_store, stored_dtype, to_stored, zarr_module
from ..manifest import Manifest, WeightSpec
from ..storage import get_source, release_source
from ..stream import LoadReport
from ..stream.blocks import DEFAULT_BLOCK_BYTES, Block, Digests, for_each_block
from ..stream.budget import parse_bytes
from ..stream.progress import ProgressArg, progress_callback
from ..stream.writepool import WritePool

__all__ = ["MirrorReport", "chunk_shape", "mirror", "shard_shape"]

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES = 8 << 20
DEFAULT_SHARD_BYTES = DEFAULT_BLOCK_BYTES
MIN_SHARD_CHUNKS = 3
PACK_FRACTION = 8  # weights of at most chunk_bytes / PACK_FRACTION are packed: a chunk wastes less than this share


@dataclass
class MirrorReport:
    """What a mirror run did."""

    src: str
    dst: str
    weights: int = 0
    written: list[str] = dataclasses.field(default_factory=list)
    resumed: list[str] = dataclasses.field(default_factory=list)
    bytes_written: int = 0
    seconds: float = 0.0
    peak_in_flight: int = 0

    def __str__(self) -> str:
        mib = 1 << 20
        rate = self.bytes_written / mib / self.seconds if self.seconds > 0 else float("inf")
        kept = f", {len(self.resumed)} kept from an interrupted run" if self.resumed else ""
        return (
            f"mirrored {self.weights} weights of {self.src} to {self.dst}: wrote {len(self.written)} "
            f"({self.bytes_written / mib:.1f} MiB) in {self.seconds:.2f} s ({rate:.0f} MiB/s){kept}"
        )


def chunk_shape(shape: tuple[int, ...], itemsize: int, chunk_bytes: int) -> tuple[int, ...]:
    """Chunks of at most about ``chunk_bytes``, splitting leading axes only (C order): each chunk is one byte run."""
    dims = [max(1, n) for n in shape]
    for axis in range(len(dims)):
        inner = math.prod(dims[axis + 1 :]) * itemsize
        if inner <= chunk_bytes:
            return (1,) * axis + (max(1, min(dims[axis], chunk_bytes // inner)),) + tuple(dims[axis + 1 :])
    return tuple(dims)


def shard_shape(chunks: tuple[int, ...], shape: tuple[int, ...], itemsize: int, shard_bytes: int) -> tuple[int, ...]:
    """Shards of whole ``chunks`` (as :func:`chunk_shape` splits them) holding at most about ``shard_bytes``.

    Split along the same leading axes as the chunks, each shard axis a
    multiple of the chunk's (a shard may reach past the array's end, as zarr
    allows), so a shard is one byte run of the array too.
    """
    if not shape:
        return ()
    outer = chunk_shape(shape, itemsize, max(shard_bytes, math.prod(chunks) * itemsize))
    return tuple(c * max(1, -(-o // c) if o >= n else o // c) for c, o, n in zip(chunks, outer, shape, strict=True))


def _codecs(compressor: Any, zarr_format: int, checksum: bool) -> Any:
    """The compressors argument of ``create_array``: the compressor, then (zarr v3) a CRC32C of each chunk."""
    zarr_module()  # an error naming the extra when zarr is missing
    codec = _compressors(compressor, zarr_format)
    if zarr_format == 2 or not checksum:
        return codec
    from zarr.codecs import Crc32cCodec

    return (*(() if codec is None else (codec,)), Crc32cCodec())


def _compressors(compressor: Any, zarr_format: int) -> Any:
    """None, ``"zstd"``/``"blosc"`` (optionally ``":<level>"``), or a codec object passed through."""
    if compressor is None or compressor == "none":
        return None
    if not isinstance(compressor, str):
        return compressor
    name, _, level = compressor.partition(":")
    if name not in ("zstd", "blosc") or (level and not level.isdigit()):
        raise LazyWeightsError(
            f"unknown compressor {compressor!r}; expected None, 'zstd', 'blosc' (optionally ':<level>', "
            "e.g. 'zstd:5') or a zarr/numcodecs codec object"
        )
    if zarr_format == 2:
        import numcodecs

        if name == "zstd":
            return numcodecs.Zstd(level=int(level or 3))
        return numcodecs.Blosc(cname="zstd", clevel=int(level or 5), shuffle=numcodecs.Blosc.SHUFFLE)
    from zarr.codecs import BloscCodec, ZstdCodec

    if name == "zstd":
        return ZstdCodec(level=int(level or 3))
    return BloscCodec(cname="zstd", clevel=int(level or 5), shuffle="shuffle")


def _codec_token(compressor: Any) -> Any:
    if compressor is None or isinstance(compressor, str):
        return compressor
    for method in ("to_dict", "get_config"):
        if hasattr(compressor, method):
            return json.loads(json.dumps(getattr(compressor, method)(), default=str))
    return repr(compressor)


def _fingerprint(manifest: Manifest) -> str:
    """Identifies the source's content and layout, whatever URL it was opened from."""
    return hashlib.sha256(dataclasses.replace(manifest, url="").to_json().encode()).hexdigest()


# -- writing objects (runs on threads or on dask workers) ---------------------------------


@dataclass(frozen=True)
class ArrayRef:
    """A picklable handle on one destination array: its store, path and metadata document (no request to open)."""

    url: str
    options: str  # storage options as JSON, so the handle is hashable
    path: str
    metadata: bytes  # the array's metadata document(s) as written: key -> bytes, JSON

    def scratch(self) -> tuple[Any, dict[str, Any]]:
        """The array in a fresh in-memory store holding only its metadata, and that store's dict of objects."""
        zarr = zarr_module()
        from zarr.core.buffer import default_buffer_prototype
        from zarr.storage import MemoryStore

        proto = default_buffer_prototype()
        docs = {k: proto.buffer.from_bytes(v.encode("latin-1")) for k, v in json.loads(self.metadata).items()}
        arr = zarr.open_array(MemoryStore(store_dict=docs), path=self.path, mode="r+")
        return arr.with_config({"write_empty_chunks": True}), docs


@functools.lru_cache(maxsize=64)
def _store(url: str, options: str) -> Any:
    return open_store(url, json.loads(options), read_only=False)


def upload(url: str, options: str, objects: Mapping[str, bytes]) -> None:
    """PUT ``objects`` (key -> bytes) under the store at ``url``, concurrently, one request each."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    store = _store(url, options)
    proto = default_buffer_prototype()

    async def put_all() -> None:
        import asyncio

        await asyncio.gather(*(store.set(k, proto.buffer.from_bytes(v)) for k, v in objects.items()))

    with warnings.catch_warnings():  # zarr warns when it wraps a synchronous filesystem (memory://)
        warnings.simplefilter("ignore", UserWarning)
        sync(put_all())


def write_rows(ref: ArrayRef, start: int, dtype: str, digest: str | None, values: Any) -> int:
    """Store ``values`` as rows ``start...`` of the array ``ref``: whole objects (shards, or chunks), one PUT each.

    Blocks are aligned to whole shards (chunks when unsharded) or reach the
    array's end, so zarr encodes complete objects in memory and nothing at
    the destination is read back.  ``digest`` is unused (kept for callers
    that pass it; the writer records digests after the writes succeed).
    """
    arr, docs = ref.scratch()
    before = set(docs)
    stored = to_stored(values, dtype)
    if arr.ndim == 0:
        arr[...] = stored
    elif arr.size:
        arr[start : start + stored.shape[0]] = stored
    objects = {k: v.to_bytes() for k, v in docs.items() if k not in before}
    upload(ref.url, ref.options, objects)
    return int(stored.nbytes)


# -- the destination ------------------------------------------------------------------


class _Tree:
    """The mirror's metadata documents, designed and kept in an in-memory zarr store; written out by PUTs.

    Zarr's own node creation on an object store checks each node's
    existence and lists its parents (3-4 requests a node); designed here,
    each document costs one PUT, and the root's consolidated metadata is
    built from memory, not by reading every document back.
    """

    def __init__(self, url: str, options: dict[str, Any], zarr_format: int):
        from zarr.storage import MemoryStore

        self.url, self.options = url, json.dumps(options, sort_keys=True)
        self.docs: dict[str, Any] = {}
        self.store = MemoryStore(store_dict=self.docs)
        self.zarr_format = zarr_format
        self.written: dict[str, bytes] = {}

    def create(self, nodes: Mapping[str, Any]) -> None:
        """Design ``nodes`` (path -> zarr ArrayMetadata / GroupMetadata) here, implicit parent groups included."""
        zarr = zarr_module()
        for _ in zarr.create_hierarchy(store=self.store, nodes=dict(nodes), overwrite=True):
            pass

    def ref(self, path: str) -> ArrayRef:
        names = (f"{path}/zarr.json",) if self.zarr_format == 3 else (f"{path}/.zarray", f"{path}/.zattrs")
        docs = {k: self.docs[k].to_bytes().decode("latin-1") for k in names if k in self.docs}
        return ArrayRef(self.url, self.options, path, json.dumps(docs, sort_keys=True).encode())

    def group(self) -> Any:
        zarr = zarr_module()
        return zarr.open_group(self.store, mode="r+", zarr_format=self.zarr_format, use_consolidated=False)

    def flush(self, only: Any = None) -> None:
        """PUT every document changed since the last flush (``only``: a predicate on keys)."""
        docs = {k: v.to_bytes() for k, v in self.docs.items() if only is None or only(k)}
        changed = {k: v for k, v in docs.items() if self.written.get(k) != v}
        if changed:
            upload(self.url, self.options, changed)
            self.written.update(changed)


@dataclass
class _Destination:
    url: str
    options: dict[str, Any]
    done: set[str]
    tree: _Tree
    resumed: bool = False  # an interrupted mirror's nodes exist: create them over the old ones


def _root_doc(
    manifest: Manifest, paths: dict[str, str], settings: dict[str, Any], packing: _Packing
) -> dict[str, Any]:
    """The root's ``lazyweights`` document: the source's manifest, the array of each key, the packed catalog."""
    doc = {
        "version": PACKED_VERSION if packing.where else MIRROR_VERSION,
        "complete": False,
        "format": manifest.format,
        "source": {"url": manifest.url, "size": manifest.size, "etag": manifest.etag},
        "fingerprint": _fingerprint(manifest),
        "settings": settings,
        "layers": [{"name": la.name, "keys": list(la.keys), "alias": la.alias} for la in manifest.layers],
        "weights": [w.key for w in manifest.weights],
        "optimizer": [w.key for w in manifest.optimizer],
        "paths": {k: v for k, v in paths.items() if k not in packing.where},
        "skipped": [list(s) for s in manifest.skipped],
    }
    if packing.where:
        specs = {s.key: s for s in (*manifest.weights, *manifest.optimizer)}
        doc["packed"] = {
            key: {"array": path, "offset": offset, "shape": list(specs[key].shape), "dtype": specs[key].dtype,
                  "layer": specs[key].layer, "name": specs[key].name}
            for key, (path, offset) in packing.where.items()
        }  # fmt: skip
    return doc


def _prepare(
    url: str, options: dict[str, Any], doc: dict[str, Any], attrs: Mapping[str, Any], overwrite: bool, zarr_format: int
) -> _Destination:
    """Open (resume), create, or refuse the destination; see the module docstring."""
    zarr = zarr_module()
    from zarr.core.group import GroupMetadata

    fs, path = fsspec.core.url_to_fs(url, **options)
    existing = fs.exists(path) and (not fs.isdir(path) or bool(fs.ls(path, detail=False)))
    tree = _Tree(url, options, zarr_format)
    tree.create({"": GroupMetadata(attributes={**attrs, ATTR: doc}, zarr_format=zarr_format)})
    if existing and overwrite:
        logger.info("removing %s before mirroring (overwrite=True)", url)
        fs.rm(path, recursive=True)
    elif existing:
        old = _existing_doc(url, options)
        if old is None:
            raise DestinationExistsError(f"{url}: the destination exists and is not a lazyweights mirror; "
                                         "pass overwrite=True to replace it")  # fmt: skip
        if old.get("complete"):
            raise DestinationExistsError(f"{url}: already holds a complete mirror of {old['source']['url']}; "
                                         "pass overwrite=True to write it again")  # fmt: skip
        if old.get("fingerprint") != doc["fingerprint"] or old.get("settings") != doc["settings"]:
            raise DestinationExistsError(
                f"{url}: holds an interrupted mirror of another checkpoint or with other settings "
                f"(was {old.get('source', {}).get('url')} with {old.get('settings')}, now {doc['source']['url']} "
                f"with {doc['settings']}); pass overwrite=True to start over"
            )
        group = zarr.open_group(open_store(url, options, read_only=False), mode="r+", use_consolidated=False)
        return _Destination(url, options, _done_keys(group, doc), tree, resumed=True)
    return _Destination(url, options, set(), tree)


def _existing_doc(url: str, options: dict[str, Any]) -> dict[str, Any] | None:
    """The mirror document of what is at ``url`` (None: not a lazyweights mirror), read through a Source."""
    zarr = zarr_module()
    try:
        source = get_source(url, options, refresh=True)
    except StorageError:
        return None
    try:  # read as a store prefix like any mirror, then dropped: the writer is about to change it
        if not source.is_dir:
            return None
        group = zarr.open_group(source_store(source), mode="r", use_consolidated=False)
        doc = group.attrs.get(ATTR)
    except (FileNotFoundError, ValueError, KeyError):
        return None
    finally:
        release_source(source)
    return doc if isinstance(doc, dict) and "paths" in doc else None


def _done_keys(group: Any, doc: dict[str, Any]) -> set[str]:
    """Keys stored whole by an earlier run: an own array's SHA-256 or a packed array's checksums, recorded last."""
    done = set()
    arrays = {**{path: [key] for key, path in doc["paths"].items()}}
    for key, entry in (doc.get("packed") or {}).items():
        arrays.setdefault(entry["array"], []).append(key)
    for path, keys in arrays.items():
        try:
            meta = group[path].attrs.get(ATTR) or {}
        except KeyError:
            continue
        if meta.get("sha256") or meta.get("weights"):
            done.update(keys)
    return done


@dataclass(frozen=True)
class _Grid:
    """How a mirror cuts arrays: chunks of about ``chunk_bytes``, shards of about ``shard_bytes`` (None: none)."""

    chunk_bytes: int
    shard_bytes: int | None

    def chunks(self, spec: WeightSpec) -> tuple[int, ...]:
        return chunk_shape(spec.shape, stored_dtype(spec.dtype).itemsize, self.chunk_bytes)

    def shards(self, spec: WeightSpec) -> tuple[int, ...] | None:
        """Shards for weights of at least :data:`MIN_SHARD_CHUNKS` chunks (None: chunk objects).

        A shard costs a stat and an index read before its chunks; a weight of
        one or two chunks reads in fewer requests as chunk objects.
        """
        if self.shard_bytes is None or not spec.shape:
            return None
        chunks = self.chunks(spec)
        if math.prod(-(-max(1, n) // c) for n, c in zip(spec.shape, chunks, strict=True)) < MIN_SHARD_CHUNKS:
            return None
        return shard_shape(chunks, spec.shape, stored_dtype(spec.dtype).itemsize, self.shard_bytes)

    def rows(self, spec: WeightSpec) -> int:
        """Rows per write: whole shards (or chunks), so no object is written twice."""
        return (self.shards(spec) or self.chunks(spec))[0] if spec.shape else 1


# -- packed arrays --------------------------------------------------------------------


@dataclass(frozen=True)
class _PackedArray:
    """A 1-D array of small weights of one dtype: ``size`` elements in chunks of ``chunk``, written ``unit`` at once."""

    path: str
    dtype: str  # the manifest dtype of its first weight (all share its stored bytes)
    size: int
    chunk: int
    unit: int  # elements per object: a shard (a chunk when unsharded)


@dataclass(frozen=True)
class _Packing:
    """Which weights are packed: key -> (packed array path, element offset); and the arrays."""

    where: dict[str, tuple[str, int]]
    arrays: dict[str, _PackedArray]


def _packable(spec: WeightSpec, grid: _Grid) -> bool:
    """Small (at most ``chunk_bytes / PACK_FRACTION``), non-empty, and stored as its own bytes (little-endian)."""
    if spec.size == 0 or spec.nbytes * PACK_FRACTION > grid.chunk_bytes:
        return False
    return spec.dtype == "bfloat16" or stored_dtype(spec.dtype) == spec.np_dtype


def _pack(specs: list[WeightSpec], grid: _Grid, enabled: bool) -> _Packing:
    """Lay out the small weights of ``specs`` in manifest order, per dtype; none crosses a chunk boundary.

    A weight that would cross one starts the next chunk instead, so each
    packed weight is one byte range of one stored chunk (and its CRC32C in
    the catalog covers exactly the bytes a load reads).  Weights are at most
    an eighth of a chunk, so padding stays under an eighth of the array.
    """
    where: dict[str, tuple[str, int]] = {}
    cursor: dict[str, int] = {}
    first: dict[str, WeightSpec] = {}
    for spec in specs if enabled else ():
        if not _packable(spec, grid):
            continue
        path = packed_path(spec.dtype)
        first.setdefault(path, spec)
        chunk = max(1, grid.chunk_bytes // stored_dtype(spec.dtype).itemsize)
        pos = cursor.get(path, 0)
        if pos % chunk + spec.size > chunk:
            pos = -(-pos // chunk) * chunk
        where[spec.key] = (path, pos)
        cursor[path] = pos + spec.size
    arrays = {}
    for path, size in cursor.items():
        itemsize = stored_dtype(first[path].dtype).itemsize
        chunk = min(size, max(1, grid.chunk_bytes // itemsize))
        unit = chunk if grid.shard_bytes is None else shard_shape((chunk,), (size,), itemsize, grid.shard_bytes)[0]
        arrays[path] = _PackedArray(path, first[path].dtype, size, chunk, unit)
    return _Packing(where, arrays)


class _Packer:
    """Assembles packed arrays' objects from weight blocks; hands out each object once all its weights are in.

    Blocks arrive in manifest order, so at most about one object per packed
    array is being assembled at a time.  Each weight's CRC32C is taken from
    the assembled object's bytes as it is handed out.
    """

    def __init__(self, packing: _Packing, todo: list[WeightSpec]):
        self.packing = packing
        self.specs = {s.key: s for s in todo if s.key in packing.where}
        self.expected: dict[tuple[str, int], int] = {}
        self.members: dict[tuple[str, int], list[str]] = {}
        for key, spec in self.specs.items():
            unit = self._unit(key)
            self.expected[unit] = self.expected.get(unit, 0) + spec.size
            self.members.setdefault(unit, []).append(key)
        self.buffers: dict[tuple[str, int], Any] = {}
        self.crc32c: dict[str, int] = {}
        self.held = self.peak = 0

    def _unit(self, key: str) -> tuple[str, int]:
        path, offset = self.packing.where[key]
        return path, offset // self.packing.arrays[path].unit

    def add(self, block: Block) -> list[tuple[str, int, Any]]:
        """Place ``block``; return ``(array path, first element, values)`` for each object now complete."""
        import numpy as np

        key = block.spec.key
        path, offset = self.packing.where[key]
        arr = self.packing.arrays[path]
        unit = self._unit(key)
        buf = self.buffers.get(unit)
        if buf is None:
            n = min(arr.unit, arr.size - unit[1] * arr.unit)
            buf = self.buffers[unit] = np.zeros(n, stored_dtype(arr.dtype))
            self.held += buf.nbytes
            self.peak = max(self.peak, self.held)
        flat = to_stored(block.values, block.spec.dtype).reshape(-1)
        at = offset - unit[1] * arr.unit + block.start * math.prod(block.spec.shape[1:])
        buf[at : at + flat.size] = flat
        self.expected[unit] -= flat.size
        if self.expected[unit]:
            return []
        del self.buffers[unit]
        self.held -= buf.nbytes
        for member in self.members[unit]:
            at = self.packing.where[member][1] - unit[1] * arr.unit
            self.crc32c[member] = crc32c(buf[at : at + self.specs[member].size])
        return [(path, unit[1] * arr.unit, buf)]


# -- metadata ---------------------------------------------------------------------------


def _create_nodes(
    dest: _Destination,
    manifest: Manifest,
    specs: list[WeightSpec],
    paths: dict[str, str],
    grid: _Grid,
    codecs: Any,
    packing: _Packing,
) -> None:
    """Design every array's (and labelled group's) metadata document in memory, then PUT them all at once.

    Groups are labelled with their original names and Keras's
    ``weight_names`` (a copy of an ``.h5`` file's look); packed mirrors label
    only the groups that hold arrays anyway (a group per layer would cost a
    PUT each; the root document holds all of it).
    """
    zarr = zarr_module()
    from zarr.core.group import GroupMetadata
    from zarr.storage import MemoryStore

    fmt = dest.tree.zarr_format
    scratch = zarr.open_group(MemoryStore(), mode="w", zarr_format=fmt)
    nodes: dict[str, Any] = {}
    packed_todo = {packing.where[s.key][0] for s in specs if s.key in packing.where}
    for spec in specs:
        if spec.key in packing.where:
            continue
        nodes[paths[spec.key]] = scratch.create_array(
            paths[spec.key],
            shape=spec.shape,
            dtype=stored_dtype(spec.dtype),
            chunks=grid.chunks(spec),
            shards=grid.shards(spec),
            compressors=codecs,
            fill_value=0,
            attributes={ATTR: {"key": spec.key, "layer": spec.layer, "name": spec.name, "dtype": spec.dtype}},
        ).metadata
    for path in sorted(packed_todo):
        arr = packing.arrays[path]
        nodes[path] = scratch.create_array(
            path,
            shape=(arr.size,),
            dtype=stored_dtype(arr.dtype),
            chunks=(arr.chunk,),
            shards=None if arr.unit == arr.chunk and grid.shard_bytes is None else (arr.unit,),
            compressors=codecs,
            fill_value=0,
            attributes={ATTR: {"packed": arr.dtype}},
        ).metadata
    labels = _group_labels(manifest, paths)
    if packing.where:  # only groups that exist anyway: parents of arrays
        parents = {"/".join(p.split("/")[:i]) for p in nodes for i in range(1, p.count("/") + 1)}
        labels = {path: attrs for path, attrs in labels.items() if path in parents}
    if not dest.resumed:  # on resuming, groups exist and hold finished arrays: naming them would erase them
        nodes.update({path: GroupMetadata(attributes=attrs, zarr_format=fmt) for path, attrs in labels.items()})
    dest.tree.create(nodes)
    if dest.resumed:
        group = dest.tree.group()
        for path, attrs in labels.items():
            if path in group:
                group[path].update_attributes(attrs)
    dest.tree.flush()


def _group_labels(manifest: Manifest, paths: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Attributes of groups: original names of encoded groups, and each layer's ``weight_names``."""
    labels: dict[str, dict[str, Any]] = {}
    for key in paths:
        parts = key.split("/")[:-1]
        for i, part in enumerate(parts):
            if encode_name(part) != part:
                labels.setdefault(encode_key("/".join(parts[: i + 1])), {})[ATTR] = {"name": part}
    for layer in manifest.layers:
        prefix = layer.name + "/"
        if layer.keys and all(k.startswith(prefix) for k in layer.keys):
            labels.setdefault(encode_key(layer.name), {})["weight_names"] = [k[len(prefix) :] for k in layer.keys]
    return labels


def _record(tree: _Tree, path: str, attrs: dict[str, Any]) -> None:
    """Merge ``attrs`` into the ``lazyweights`` attribute of the array ``path`` and PUT its document."""
    arr = tree.group()[path]
    arr.update_attributes({ATTR: {**arr.attrs[ATTR], **attrs}})
    tree.flush(only=lambda k: k.startswith(path + "/"))


def _complete(dest: _Destination, doc: dict[str, Any]) -> None:
    """Mark the mirror whole and consolidate: the root document, written last, holds both.

    A fresh mirror's tree is all in memory: consolidated there, then the
    root alone is PUT.  A resumed one holds arrays of the earlier run: zarr
    consolidates what is at the destination.
    """
    zarr = zarr_module()
    dest.tree.group().update_attributes({ATTR: {**doc, "complete": True, "id": uuid.uuid4().hex}})
    fmt = dest.tree.zarr_format
    with warnings.catch_warnings():  # "consolidated metadata is not part of the v3 spec": we know
        warnings.simplefilter("ignore", UserWarning)
        if dest.resumed:
            dest.tree.flush()
            zarr.consolidate_metadata(open_store(dest.url, dest.options, read_only=False), zarr_format=fmt)
        else:
            zarr.consolidate_metadata(dest.tree.store, zarr_format=fmt)
            dest.tree.flush()


# -- the public function --------------------------------------------------------------


def mirror(
    src: Url | Checkpoint,
    dst: Url,
    *,
    chunk_bytes: int | str = DEFAULT_CHUNK_BYTES,
    compressor: Any = None,
    storage_options: Mapping[str, Any] | None = None,
    dst_storage_options: Mapping[str, Any] | None = None,
    max_memory: int | str | None = None,
    concurrency: int | None = None,
    overwrite: bool = False,
    zarr_format: int = 3,
    checksum: bool = True,
    shard_bytes: int | str | None = DEFAULT_SHARD_BYTES,
    packed: bool = True,
    client: Any = None,
    progress: ProgressArg = False,
) -> MirrorReport:
    """Write a zarr mirror of the checkpoint ``src`` at ``dst`` (any fsspec URL); return a :class:`MirrorReport`.

    ``chunk_bytes`` sizes the chunks (default 8 MiB); ``compressor`` is None,
    ``"zstd"``, ``"blosc"`` (optionally ``":<level>"``) or a codec object;
    ``max_memory`` bounds the bytes in flight (reads and pending writes);
    ``client`` (a ``dask.distributed.Client``) runs the chunk writes on its
    workers; ``zarr_format=2`` writes a zarr v2 mirror.

    zarr v3 mirrors are written for object stores and for integrity:
    ``checksum`` (default True) appends zarr's ``crc32c`` codec, so every
    chunk read checks its CRC32C (lazyweights checks it on its raw fast path
    too); ``shard_bytes`` (default 64 MiB, at most the write block size under
    ``max_memory``; None: one object per chunk) groups chunks into shard
    objects with zarr's sharding codec, so a weight is a few objects and a
    load a few ranged GETs, not one object (and one request) per chunk.
    ``packed`` (default True; uncompressed zarr v3 mirrors only) concatenates
    weights of at most ``chunk_bytes / 8`` per dtype into a few packed arrays
    (see the module docstring); False writes an array per weight, as mirrors
    of version 1 were.  ``lazyweights.open(dst)`` then gives the source's
    manifest and load semantics.
    """
    if zarr_format not in (2, 3):
        raise LazyWeightsError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
    with opened(src, storage_options) as ckpt:
        return _mirror(ckpt, dst, locals())


def _mirror(ckpt: Checkpoint, dst: Url, args: dict[str, Any]) -> MirrorReport:
    start = time.perf_counter()
    dst = os.fspath(dst)
    manifest = ckpt.manifest
    own = manifest.attrs.get(ATTR)
    if own is not None and not (isinstance(own, dict) and "mirror_of" in own):  # a mirror's facts are dropped
        raise LazyWeightsError(f"{ckpt.url}: has a root attribute {ATTR!r}, which a mirror needs for itself")
    specs = [*manifest.weights, *manifest.optimizer]
    paths = {s.key: encode_key(s.key) for s in specs}
    if len(set(paths.values())) != len(paths):
        raise LazyWeightsError(f"{ckpt.url}: two weight keys encode to the same zarr path; cannot mirror")
    v3 = args["zarr_format"] == 3
    codecs = _codecs(args["compressor"], args["zarr_format"], args["checksum"])
    chunk_bytes, shard_bytes = parse_bytes(args["chunk_bytes"]), parse_bytes(args["shard_bytes"]) if v3 else None
    max_memory = parse_bytes(args["max_memory"])
    half = None if max_memory is None else max(1, max_memory // 2)
    block_bytes = DEFAULT_BLOCK_BYTES if half is None else max(1 << 20, min(DEFAULT_BLOCK_BYTES, half // 4))
    grid = _Grid(chunk_bytes, None if shard_bytes is None else min(shard_bytes, block_bytes))
    packs = bool(args["packed"] and v3 and _compressors(args["compressor"], 3) is None)
    packing = _pack(specs, grid, packs)
    if any(p.split("/")[0] in packing.arrays for p in paths.values()):
        raise LazyWeightsError(f"{ckpt.url}: a weight's path is a packed array's name; mirror with packed=False")
    settings = {
        "chunk_bytes": chunk_bytes, "compressor": _codec_token(_compressors(args["compressor"], args["zarr_format"])),
        "zarr_format": args["zarr_format"], "checksum": bool(args["checksum"] and v3), "shard_bytes": shard_bytes,
    }  # fmt: skip
    if packs:
        settings["packed"] = True
    doc = _root_doc(manifest, paths, settings, packing)
    options = dict(args["dst_storage_options"] or {})
    attrs = {k: v for k, v in manifest.attrs.items() if k != ATTR}
    dest = _prepare(dst, options, doc, attrs, args["overwrite"], args["zarr_format"])
    todo = [s for s in specs if s.key not in dest.done]
    _create_nodes(dest, manifest, todo, paths, grid, codecs, packing)
    report = MirrorReport(src=ckpt.url, dst=dst, weights=len(specs), resumed=sorted(dest.done))
    reserve = max((a.unit * stored_dtype(a.dtype).itemsize for a in packing.arrays.values()), default=0)
    pool_bytes = None if half is None else max(1, half - reserve)
    pool = WritePool(max_bytes=pool_bytes, threads=args["concurrency"] or 4, client=args["client"])
    load, packer = _write_all(ckpt, dest, todo, paths, grid, packing, block_bytes, pool, half, args)
    _complete(dest, doc)
    report.written = [s.key for s in todo]
    report.bytes_written = pool.bytes_written
    report.peak_in_flight = load.peak_in_flight + pool.budget.peak + packer.peak
    report.seconds = time.perf_counter() - start
    logger.info("%s", report)
    return report


def _write_all(
    ckpt: Checkpoint,
    dest: _Destination,
    todo: list[WeightSpec],
    paths: dict[str, str],
    grid: _Grid,
    packing: _Packing,
    block_bytes: int,
    pool: WritePool,
    read_budget: int | None,
    args: dict[str, Any],
) -> tuple[LoadReport, _Packer]:
    """Stream ``todo`` from the source into their arrays; record each checksum once its objects are stored."""
    digests = Digests()
    packer = _Packer(packing, todo)
    refs: dict[str, ArrayRef] = {}

    def ref(path: str) -> ArrayRef:
        if path not in refs:
            refs[path] = dest.tree.ref(path)
        return refs[path]

    def consume(block: Block) -> None:
        spec = block.spec
        digest = digests.update(block)
        if spec.key in packing.where:
            for path, first, values in packer.add(block):
                pool.submit(path, write_rows, ref(path), first, packing.arrays[path].dtype, None, values=values)
            return
        pool.submit(spec.key, write_rows, ref(paths[spec.key]), block.start, spec.dtype, None, values=block.values)
        if digest is not None:  # blocks of one weight may be stored in any order: recorded after all
            pool.after(spec.key, functools.partial(_record, dest.tree, paths[spec.key], {"sha256": digest}))

    def align(spec: WeightSpec) -> int:
        return 1 if spec.key in packing.where else grid.rows(spec)

    total = sum(s.nbytes for s in todo)
    report = LoadReport(url=ckpt.url, format=ckpt.format)
    with progress_callback(args["progress"], total, f"mirroring {os.path.basename(ckpt.url) or ckpt.url}") as cb:
        try:
            for_each_block(
                ckpt.source, todo, consume, max_memory=read_budget, concurrency=args["concurrency"],
                block_bytes=block_bytes, align=align, progress=cb, report=report,
            )  # fmt: skip
            for path in sorted({packing.where[k][0] for k in packer.specs}):
                keys = [k for k in packer.specs if packing.where[k][0] == path]
                weights = {k: {"crc32c": packer.crc32c[k], "sha256": digests.done[k]} for k in keys}
                pool.after(path, functools.partial(_record, dest.tree, path, {"weights": weights}))
        except BaseException:
            pool.cancel()
            raise
        pool.close()
    return report, packer
