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
import json
import struct
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any

import h5py

from ..errors import FormatError, LazyWeightsError, StorageError, UnsupportedError
from ..manifest import Manifest
from ..storage import Source, WindowFile, get_source, storage_failure
from ..storage.retry import chain_status
from .hdf5 import ParseContext, check_superblock, find_superblock, parse_generic
from .keras_h5 import is_keras_h5, parse_keras_h5
from .keras_sharded import is_sharded_index, parse_sharded
from .keras_v3 import parse_keras_v3
from .tf.checkpoint_dir import POINTER_FILE, TF_FILE_SUFFIX, locate
from .tf.parse import parse_tf
from .zarr import parse_zarr

__all__ = ["describe_bytes", "open_source", "parse"]

_HEAD = 4096
_KERAS_MEMBER = "model.weights.h5"


def open_source(url: str, storage_options: Any = None) -> tuple[Source, str | None]:
    """The Source to read ``url`` through, and the TensorFlow checkpoint prefix in it (None: not one).

    One stat for ordinary files; a URL with no object of its own, a folder
    with a ``checkpoint`` pointer, or a ``.index``/``.data-*`` file name is
    looked up as a TensorFlow checkpoint.
    """
    if not TF_FILE_SUFFIX.search(url):
        try:
            source = get_source(url, storage_options, refresh=True)
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


def _not_found(exc: StorageError) -> bool:
    """Whether ``exc`` says there is no object at the URL (which may then name a TensorFlow prefix)."""
    status = chain_status(exc)
    return status == 404 or (status is None and isinstance(exc.__cause__, FileNotFoundError))


def parse(source: Source, tf_prefix: str | None = None) -> Manifest:
    """Read ``source``'s metadata and return its manifest (``tf_prefix``: a TensorFlow checkpoint in it)."""
    if tf_prefix is not None:
        return parse_tf(source, tf_prefix)
    if source.is_dir:
        return parse_zarr(source)
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
    source: Source, head: bytes, ctx: ParseContext, fileobj: Any, *, length: int, fmt: str | None = None
) -> Manifest:
    """Parse the HDF5 file of ``length`` bytes at ``ctx.base`` (via ``fileobj`` when not the whole source)."""
    at = find_superblock(head)
    check_superblock(head, at, length, ctx.url)
    with _h5(source, fileobj) as root:
        try:
            if is_keras_h5(root):
                return parse_keras_h5(root, ctx)
            manifest = parse_keras_v3(root, ctx, fmt or "keras-v3", known=fmt is not None)
            return manifest if manifest is not None else parse_generic(root, ctx)
        except LazyWeightsError:
            raise
        except (OSError, KeyError, ValueError, RuntimeError) as exc:  # HDF5 failing on malformed metadata
            raise FormatError(f"{ctx.url}: malformed HDF5 metadata: {exc}") from exc


def _member_data_offset(raw: Any, info: zipfile.ZipInfo) -> int:
    """Where a member's bytes start: after its local header, whose lengths may differ from the directory's."""
    raw.seek(info.header_offset)
    header = raw.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise FormatError(f"bad local zip header for member {info.filename}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


# What zipfile raises on a damaged archive besides BadZipFile: a bad version or method (NotImplementedError), a
# truncated member (EOFError), bad deflate data (zlib.error), a seek before the start (OSError EINVAL), a
# non-UTF-8 name (UnicodeDecodeError).  StorageError is an OSError too, so it is re-raised as itself first.
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, UnicodeDecodeError, ValueError, OSError)


def _parse_keras_zip(source: Source) -> Manifest:
    raw = source.open_file()
    try:
        try:
            archive = zipfile.ZipFile(raw)
        except LazyWeightsError:
            raise
        except _ZIP_ERRORS as exc:
            raise FormatError(f"{source.url}: a damaged zip archive: {type(exc).__name__}: {exc}") from exc
        names = archive.namelist()
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
        attrs = {k: _json_member(archive, k, source.url) for k in ("config.json", "metadata.json") if k in names}
        base = _member_data_offset(raw, info)
        if base + info.file_size > source.size:
            raise FormatError(f"{source.url}: {_KERAS_MEMBER} extends past the end of the archive")
        ctx = ParseContext(url=source.url, size=source.size, etag=source.etag, base=base)
        with WindowFile(source.open_file(), base, info.file_size) as window:
            head = window.read(_HEAD)
            window.seek(0)
            manifest = _parse_hdf5(source, head, ctx, window, length=info.file_size, fmt="keras-zip")
        exotic = [s.key for s in (*manifest.weights, *manifest.optimizer) if s.layout == "h5py"]
        if exotic:  # the h5py fallback reads whole files, not members
            raise UnsupportedError(f"{source.url}: weights {exotic[:5]} use HDF5 filters with no codec here")
    finally:
        raw.close()
    return _with_attrs(manifest, attrs)


# config.json / metadata.json of a .keras archive: a real config is kilobytes to a few MiB; a member
# declaring more is refused before it is inflated (a 0.4 MB archive can inflate to gigabytes)
JSON_MEMBER_LIMIT = 64 << 20


def _json_member(archive: zipfile.ZipFile, name: str, url: str) -> Any:
    """A JSON member, size-checked before it is inflated (:data:`JSON_MEMBER_LIMIT`); damage is a FormatError."""
    info = archive.getinfo(name)
    if info.file_size > JSON_MEMBER_LIMIT:
        raise FormatError(
            f"{url}: {name} declares {info.file_size} bytes uncompressed ({info.compress_size} stored), over the "
            f"{JSON_MEMBER_LIMIT}-byte limit for a config; refused as a possible decompression bomb"
        )
    try:
        return json.loads(archive.read(name))
    except LazyWeightsError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{url}: {name} in the archive is not valid JSON: {exc}") from exc
    except _ZIP_ERRORS as exc:
        raise FormatError(f"{url}: {name} in the archive cannot be read: {type(exc).__name__}: {exc}") from exc


def _with_attrs(manifest: Manifest, members: dict[str, Any]) -> Manifest:
    import dataclasses

    attrs = dict(manifest.attrs)
    if "config.json" in members:
        attrs["model_config"] = members["config.json"]
    if "metadata.json" in members:
        attrs["metadata"] = members["metadata.json"]
        attrs.setdefault("keras_version", members["metadata.json"].get("keras_version"))
    return dataclasses.replace(manifest, attrs=attrs)
