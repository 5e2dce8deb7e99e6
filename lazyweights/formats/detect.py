"""Format detection and parsing: a :class:`~lazyweights.storage.Source` → a Manifest.

Detection looks at the first bytes (one read), never at the file name:
HDF5 signature → HDF5 (Keras legacy, Keras 3 ``.weights.h5``, or generic);
zip signature → a ``.keras`` archive whose ``model.weights.h5`` member is read
in place.  A directory or store prefix is a zarr store (a lazyweights mirror
or a group written by another tool), recognised by its zarr metadata.
A TensorFlow checkpoint is several files: :func:`open_source` finds it from a
prefix, one of its files or a folder with a ``checkpoint`` pointer, and gives
its folder as a store Source and the prefix to :func:`parse`.
Anything else is refused with a description of what it looks like.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import struct
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any

import h5py

from ..attrs import Deferred
from ..errors import FormatError, LazyWeightsError, StorageError, UnsupportedError
from ..manifest import Manifest, WeightSpec
from ..storage import Prefetch, Source, WindowFile, get_source, storage_failure
from ..storage.retry import chain_status
from . import h5meta
from .hdf5 import ParseContext, check_superblock, find_superblock, parse_generic
from .keras_h5 import is_keras_h5, parse_keras_h5
from .keras_sharded import is_sharded_index, parse_sharded
from .keras_v3 import parse_keras_v3
from .keras_zip import ARCHIVE_HEAD, read_members, refuse_bomb
from .tf.checkpoint_dir import POINTER_FILE, TF_FILE_SUFFIX, locate
from .tf.parse import parse_tf
from .zarr import parse_zarr

__all__ = ["describe_bytes", "open_source", "parse"]

_HEAD = 4096
_HEAD_ONLY = Prefetch()  # a remote open's first round: the head with the stat
_KERAS_MEMBER = "model.weights.h5"
# How HDF5 metadata is walked: "walk" (pure-Python, level by level: no libhdf5 on untrusted metadata, so a
# corrupt file is a FormatError, never an abort or a hang inside the C library), "h5py" (libhdf5; remote files
# over the block-cached MetadataFile), or "auto" (the default): the walk, local and remote.  Measured with
# benchmarks/bench_open.py: the walk is 0.5-0.95x h5py's time on local Keras files, 2,000-layer ones included.
# Read at each parse so benchmarks and tests can compare.
METADATA_ENV = "LAZYWEIGHTS_HDF5_METADATA"
# The walk merges its own ranges (h5meta.scheduler.MERGE_GAP, 256 bytes); the source bridges no more.  A 4 KiB
# gap halved the requests of an open but, once each structure is read by what it holds, more than doubled
# its bytes (bench_open.py, DenseNet121 .weights.h5: 3.0% of the file at 256 bytes, 9.0% at 4 KiB).
_WALK_GAP = 0


def open_source(
    url: str, storage_options: Any = None, prefetch: Prefetch | None = _HEAD_ONLY
) -> tuple[Source, str | None]:
    """The Source to read ``url`` through, and the TensorFlow checkpoint prefix in it (None: not one).

    A remote object's first round of requests brings its head with its stat,
    and what ``prefetch`` names (small objects beside it, such as a metadata
    index); a ``.keras`` archive's tail too.  ``prefetch=None``: a plain stat.

    One stat for ordinary files; a URL with no object of its own, a folder
    with a ``checkpoint`` pointer, or a ``.index``/``.data-*`` file name is
    looked up as a TensorFlow checkpoint.
    """
    if not TF_FILE_SUFFIX.search(url):
        try:
            if prefetch is not None and _named_as_archive(url):  # read from both ends; its member behind a config
                prefetch = dataclasses.replace(prefetch, tail=True, head=max(prefetch.head, ARCHIVE_HEAD))
            source = get_source(url, storage_options, refresh=True, prefetch=prefetch)
        except StorageError as exc:
            if not _not_found(exc) or _named_as_other_format(url):  # not a TF prefix: the error is the answer
                raise
            found = locate(url, storage_options)
            if found is None:
                raise
            return found
        if not (source.is_dir and source.member(POINTER_FILE) is not None):
            return source, None
    found = locate(url, storage_options)
    if found is None:
        raise FormatError(f"{url}: no TensorFlow checkpoint ({url}.index and {url}/{POINTER_FILE} do not exist)")
    return found


# Names that say what the object is: a missing one is missing, not a TensorFlow prefix to look for
# (each look costs requests).  TF prefixes are bare (``ckpt``, ``ckpt-1200``) or end ``.ckpt``.
_OTHER_FORMAT_SUFFIXES = (".h5", ".hdf5", ".keras", ".zarr", ".json", ".safetensors", ".npz", ".pt", ".pth", ".bin")


def _named_as_other_format(url: str) -> bool:
    return url.split("?")[0].rstrip("/").lower().endswith(_OTHER_FORMAT_SUFFIXES)


def _named_as_archive(url: str) -> bool:
    return url.split("?")[0].rstrip("/").lower().endswith((".keras", ".zip"))


def _not_found(exc: StorageError) -> bool:
    """Whether ``exc`` says there is no object at the URL (which may then name a TensorFlow prefix)."""
    status = chain_status(exc)
    return status == 404 or (status is None and isinstance(exc.__cause__, FileNotFoundError))


def parse(source: Source, tf_prefix: str | None = None) -> Manifest:
    """Read ``source``'s metadata and return its manifest (``tf_prefix``: a TensorFlow checkpoint in it).

    Large attributes (a model config) are left in place and read from ``source`` when asked for.
    """
    return _parse(source, tf_prefix).bound(source.read)


def _parse(source: Source, tf_prefix: str | None) -> Manifest:
    if tf_prefix is not None:
        return parse_tf(source, tf_prefix)
    if source.is_dir:
        return parse_zarr(source)
    if _named_as_archive(source.url):  # a zip is read from both ends: fetch them in one round
        source.fetch_ends(ARCHIVE_HEAD)
    head = source.head()[:_HEAD]  # the metadata parse reads on from the same one request
    if find_superblock(head) is not None:
        ctx = ParseContext(url=source.url, size=source.size, etag=source.etag)
        return _parse_hdf5(source, head, ctx, None, length=source.size)
    if head.startswith(b"PK\x03\x04"):
        return _parse_keras_zip(source)
    if is_sharded_index(head):
        return parse_sharded(source, parse)
    raise FormatError(f"{source.url}: not an HDF5 file or .keras archive: {describe_bytes(head)}")


def describe_bytes(head: bytes) -> str:
    """What the first bytes of a file look like, for error messages."""
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "it starts like a Python pickle (e.g. a torch.save file); lazyweights never unpickles"
    if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < 100 << 20:
        return "it looks like a safetensors file"
    for magic, what in (
        (b"\x93NUMPY", "a NumPy .npy file"),
        (b"\x1f\x8b", "a gzip stream"),
        (b"\x89PNG", "a PNG image"),
        (b"<", "XML or HTML text (an error page?)"),
        (b"{", "JSON text"),
    ):
        if head.startswith(magic):
            return f"it looks like {what}"
    if not head:
        return "the file is empty"
    return f"unrecognised first bytes {head[:16]!r}"


def _use_walker(source: Source) -> bool:
    mode = os.environ.get(METADATA_ENV, "auto")
    if mode not in ("auto", "walk", "h5py"):
        raise ValueError(f"{METADATA_ENV}={mode!r}: expected auto, walk or h5py")
    return mode != "h5py"


def _fetch_many(source: Source) -> h5meta.FetchMany:
    """Concurrent ranged reads through ``source``, each range as the walk merged it (:data:`_WALK_GAP`).

    Keras interleaves object headers with weight data, so the storage policy's
    64 KiB gap would pull in weights (a 2,000-layer file: 3x its size).
    """

    def fetch(ranges: list[tuple[int, int]]) -> list[bytearray]:
        bufs = [bytearray(n) for _, n in ranges]
        items = [(off, memoryview(buf)) for (off, _), buf in zip(ranges, bufs, strict=True)]
        source.readinto_many(items, max_gap=_WALK_GAP)
        return bufs

    return fetch


def _walk(source: Source, base: int, head: bytes | None) -> h5meta.H5File:
    """The whole metadata tree in a few rounds of concurrent reads (the head is the first, already fetched)."""
    fetch, size = _fetch_many(source), source.size
    try:
        if head is None:
            return h5meta.walk(fetch, size, head=source.head(), base=base)
        return h5meta.walk(fetch, size, head=head, base=base, head_at=base)
    except LazyWeightsError as exc:
        if source.url in str(exc):
            raise
        raise type(exc)(f"{source.url}: {exc}") from exc


@contextlib.contextmanager
def _h5(source: Source, fileobj: Any) -> Iterator[h5py.File]:
    """Open HDF5 metadata read-only; h5py/HDF5 errors become FormatError."""
    target = fileobj if fileobj is not None else (source.path if source.is_local else source.open_file())
    try:
        f = _open_h5(target)
    except OSError as exc:
        _raise_storage_failure(target, exc)
        raise FormatError(f"{source.url}: HDF5 library cannot parse the file: {exc}") from exc
    try:
        yield f
    except (LazyWeightsError, OSError, KeyError, ValueError, RuntimeError) as exc:
        _raise_storage_failure(target, exc)
        raise
    finally:
        f.close()
        if fileobj is None and not source.is_local:
            target.close()


def _raise_storage_failure(target: Any, exc: BaseException) -> None:
    """If reading ``target`` failed in storage, raise that error (its type kept), not a format error."""
    failure = storage_failure(target) if not isinstance(target, str) else None
    if failure is not None and failure is not exc:
        raise failure from exc


def _open_h5(target: Any) -> h5py.File:
    """Read-only, without file locks (we never write); if the caller already holds the file open with
    locking, libhdf5 insists on the same flags, so fall back to the default."""
    try:
        return h5py.File(target, "r", locking=False)
    except OSError as exc:
        if "locking" not in str(exc):
            raise
        return h5py.File(target, "r")


def _parse_hdf5(
    source: Source,
    head: bytes,
    ctx: ParseContext,
    fileobj: Any,
    *,
    length: int,
    fmt: str | None = None,
    walk_head: bytes | None = None,
) -> Manifest:
    """Parse the HDF5 file of ``length`` bytes at ``ctx.base`` (via ``fileobj`` when not the whole source).

    ``walk_head``: the HDF5 file's first bytes, already fetched (default: the source's head).
    """
    at = find_superblock(head)
    check_superblock(head, at, length, ctx.url)
    if _use_walker(source):
        return _parse_tree(_walk(source, ctx.base, walk_head), ctx, fmt)
    with _h5(source, fileobj) as root:
        return _parse_tree(root, ctx, fmt)


def _parse_tree(root: Any, ctx: ParseContext, fmt: str | None) -> Manifest:
    """The manifest of an HDF5 tree (h5py's or the walker's)."""
    try:
        if is_keras_h5(root, ctx.url):
            return parse_keras_h5(root, ctx)
        manifest = parse_keras_v3(root, ctx, fmt or "keras-v3", known=fmt is not None)
        return manifest if manifest is not None else parse_generic(root, ctx)
    except LazyWeightsError as exc:
        if ctx.url in str(exc):
            raise
        raise type(exc)(f"{ctx.url}: {exc}") from exc
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:  # HDF5 failing on malformed metadata
        raise FormatError(f"{ctx.url}: malformed HDF5 metadata: {exc}") from exc


# What zipfile raises on a damaged archive besides BadZipFile: a bad version or method (NotImplementedError), a
# truncated member (EOFError), bad deflate data (zlib.error), a seek before the start (OSError EINVAL), a
# non-UTF-8 name (UnicodeDecodeError).  StorageError is an OSError too, so it is re-raised as itself first.
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, UnicodeDecodeError, ValueError, OSError)


def _parse_keras_zip(source: Source) -> Manifest:
    source.tail()  # the end record and, usually, the whole directory: one read, not the metadata cache's blocks
    raw = source.open_file()
    try:
        try:
            archive = zipfile.ZipFile(raw)
        except LazyWeightsError:
            raise
        except _ZIP_ERRORS as exc:
            raise FormatError(f"{source.url}: a damaged zip archive: {type(exc).__name__}: {exc}") from exc
        names = archive.namelist()
        for name in ("config.json", "metadata.json", _KERAS_MEMBER):  # Keras's order: refused before inflated
            if name in names:
                refuse_bomb(source.url, archive.getinfo(name))
        if _KERAS_MEMBER not in names:
            raise FormatError(
                f"{source.url}: a zip archive without {_KERAS_MEMBER} (members: {names[:8]}); "
                "not a .keras file (PyTorch zip checkpoints are never unpickled)"
            )
        info = archive.getinfo(_KERAS_MEMBER)
        if info.compress_type != zipfile.ZIP_STORED:
            raise UnsupportedError(
                f"{source.url}: {_KERAS_MEMBER} is compressed inside the archive; lazyweights reads it "
                "in place only when stored uncompressed, as Keras writes it"
            )
        small = [archive.getinfo(k) for k in ("config.json", "metadata.json") if k in names]
        _check_json_sizes(small, source.url)
        try:
            members, base, member_head = read_members(source, small, info)
        except LazyWeightsError:
            raise
        except _ZIP_ERRORS as exc:
            raise FormatError(f"{source.url}: a damaged zip archive: {type(exc).__name__}: {exc}") from exc
        attrs = {k: v if isinstance(v, Deferred) else _json_member(v, k, source.url) for k, v in members.items()}
        if base + info.file_size > source.size:
            raise FormatError(f"{source.url}: {_KERAS_MEMBER} extends past the end of the archive")
        ctx = ParseContext(url=source.url, size=source.size, etag=source.etag, base=base)
        with WindowFile(source.open_file(), base, info.file_size) as window:
            manifest = _parse_hdf5(
                source, member_head[:_HEAD], ctx, window, length=info.file_size, fmt="keras-zip", walk_head=member_head
            )
    finally:
        raw.close()
    return _with_attrs(_no_h5py_in_members(manifest), attrs)


# config.json / metadata.json of a .keras archive: a real config is kilobytes to a few MiB; a member
# declaring more is refused before it is inflated (a 0.4 MB archive can inflate to gigabytes)
JSON_MEMBER_LIMIT = 64 << 20


def _check_json_sizes(infos: list[zipfile.ZipInfo], url: str) -> None:
    """Refuse a JSON member declaring more than :data:`JSON_MEMBER_LIMIT` bytes, before it is inflated."""
    for info in infos:
        if info.file_size > JSON_MEMBER_LIMIT:
            raise FormatError(
                f"{url}: {info.filename} declares {info.file_size} bytes uncompressed ({info.compress_size} "
                f"stored), over the {JSON_MEMBER_LIMIT}-byte limit for a config; refused as a possible "
                "decompression bomb"
            )


def _no_h5py_in_members(manifest: Manifest) -> Manifest:
    """Weights only h5py reads become unsupported in an archive: the h5py fallback opens whole files."""

    def refuse(spec: WeightSpec) -> WeightSpec:
        if spec.layout != "h5py":
            return spec
        reason = f"{spec.reason}; only h5py reads it, and h5py cannot open a member of a .keras archive"
        return dataclasses.replace(spec, layout="unsupported", reason=reason, chunks=(), extent=None)

    return dataclasses.replace(
        manifest,
        weights=tuple(refuse(s) for s in manifest.weights),
        optimizer=tuple(refuse(s) for s in manifest.optimizer),
    )


def _json_member(data: bytes, name: str, url: str) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{url}: {name} in the archive is not valid JSON: {exc}") from exc


def _with_attrs(manifest: Manifest, members: dict[str, Any]) -> Manifest:
    attrs = dict(manifest.attrs)
    if "config.json" in members:
        attrs["model_config"] = members["config.json"]
    if "metadata.json" in members:
        attrs["metadata"] = members["metadata.json"]
        attrs.setdefault("keras_version", members["metadata.json"].get("keras_version"))
    return dataclasses.replace(manifest, attrs=attrs)
