"""Which checkpoint a path names: a prefix, a ``ckpt-1200`` prefix, or a directory with a ``checkpoint`` pointer.

TensorFlow writes ``<prefix>.index`` and ``<prefix>.data-*`` files and, beside
them, a text-format ``CheckpointState`` named ``checkpoint`` whose
``model_checkpoint_path`` names the latest prefix, normally relative to that
directory.  :func:`resolve_prefix` accepts any of the three spellings.

The pointer file is data, not trusted configuration: a target outside the
pointer's own directory (an absolute path elsewhere, a ``..`` component, a
different URL) is refused with :class:`~lazyweights.errors.UnsafeCheckpointError`,
so a checkpoint cannot make the reader open unrelated files.  Name such a
checkpoint by its prefix directly instead.
"""

from __future__ import annotations

import re

from google.protobuf import text_format

from ...errors import FormatError, UnsafeCheckpointError
from . import protos
from .files import CheckpointFiles

__all__ = ["POINTER_FILE", "parse_pointer", "pointer_target", "resolve_prefix"]

POINTER_FILE = "checkpoint"
MAX_POINTER_SIZE = 1 << 20
_FILE_SUFFIX = re.compile(r"(\.index|\.data-\d{5}-of-\d{5})$")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def parse_pointer(text: str, where: str) -> str:
    """The ``model_checkpoint_path`` of a ``checkpoint`` pointer file's text."""
    state = protos.CheckpointState()
    try:
        text_format.Parse(text, state, allow_unknown_field=True)
    except text_format.ParseError as exc:
        raise FormatError(f"{where}: not a TensorFlow checkpoint pointer: {exc}") from None
    if not state.model_checkpoint_path:
        raise FormatError(f"{where}: the pointer names no model_checkpoint_path")
    return state.model_checkpoint_path


def _is_absolute(path: str) -> bool:
    return path.startswith(("/", "\\")) or bool(_URL.match(path)) or bool(re.match(r"^[A-Za-z]:[\\/]", path))


def _strip_file_scheme(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def _clean_parts(path: str) -> list[str]:
    return [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]


def pointer_target(directory: str, target: str, where: str) -> str:
    """The prefix that a pointer in ``directory`` names by ``target``; refuses targets outside ``directory``."""
    directory = directory.rstrip("/")
    if "\x00" in target:
        raise UnsafeCheckpointError(f"{where}: checkpoint path {target!r} contains a NUL byte")
    relative = target
    if _is_absolute(target):
        inside = _strip_file_scheme(directory).rstrip("/") + "/"
        candidate = _strip_file_scheme(target)
        if ".." in _clean_parts(candidate) or not candidate.startswith(inside):
            raise UnsafeCheckpointError(
                f"{where}: names {target!r}, outside its directory {directory!r}; "
                "open the checkpoint by its prefix instead"
            )
        relative = candidate[len(inside) :]
    parts = _clean_parts(relative)
    if not parts or ".." in parts:
        raise UnsafeCheckpointError(f"{where}: names {target!r}, outside its directory {directory!r}")
    return "/".join([directory, *parts])


def _exists(files: CheckpointFiles, path: str) -> bool:
    try:
        files.size(path)
    except FileNotFoundError:
        return False
    return True


def resolve_prefix(files: CheckpointFiles, path: str) -> str:
    """The checkpoint prefix that ``path`` names (a prefix, one of its files, or a directory with a pointer)."""
    path = _FILE_SUFFIX.sub("", path.rstrip("/"))
    if _exists(files, path + ".index"):
        return path
    pointer = f"{path}/{POINTER_FILE}"
    try:
        size = files.size(pointer)
    except FileNotFoundError:
        raise FormatError(f"{path}: no TensorFlow checkpoint ({path}.index and {pointer} do not exist)") from None
    if size > MAX_POINTER_SIZE:
        raise FormatError(f"{pointer}: {size} bytes, too large for a checkpoint pointer")
    try:
        text = files.read(pointer, 0, size).decode()
    except UnicodeDecodeError:
        raise FormatError(f"{pointer}: not a text checkpoint pointer") from None
    prefix = pointer_target(path, parse_pointer(text, pointer), pointer)
    if not _exists(files, prefix + ".index"):
        raise FormatError(f"{pointer}: names {prefix}, but {prefix}.index does not exist")
    return prefix
