"""Which checkpoint a path names: a prefix, a ``ckpt-1200`` prefix, or a directory with a ``checkpoint`` pointer.

TensorFlow writes ``<prefix>.index`` and ``<prefix>.data-*`` files and, beside
them, a text-format ``CheckpointState`` named ``checkpoint`` whose
``model_checkpoint_path`` names the latest prefix, normally relative to that
directory.  :func:`locate` accepts any of the three spellings.

The pointer file is data, not trusted configuration: a target outside the
pointer's own directory (an absolute path elsewhere, a ``..`` component, a
different URL) is refused with :class:`~lazyweights.errors.UnsafeCheckpointError`,
so a checkpoint cannot make the reader open unrelated files.  Name such a
checkpoint by its prefix directly instead.

All I/O goes through one store :class:`~lazyweights.storage.Source` for the
checkpoint's folder: the pointer, the index and the data shards are its members.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from google.protobuf import text_format

from ...errors import FormatError, UnsafeCheckpointError
from ...storage import Source, get_source
from . import protos

__all__ = ["POINTER_FILE", "TF_FILE_SUFFIX", "locate", "parse_pointer", "pointer_target"]

POINTER_FILE = "checkpoint"
MAX_POINTER_SIZE = 1 << 20
TF_FILE_SUFFIX = _FILE_SUFFIX = re.compile(r"(\.index|\.data-\d{5}-of-\d{5})$")
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


def _split(url: str) -> tuple[str, str]:
    """``url`` as (folder URL, file name prefix); the folder of a bare name is the working directory."""
    head, _, base = url.rstrip("/").rpartition("/")
    return (head or ".", base)


def locate(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Source, str] | None:
    """The checkpoint ``url`` names as (its folder as a store :class:`Source`, the prefix's name in it).

    ``url`` is a prefix (``…/ckpt``, ``…/ckpt-1200``), one of its files, or a
    folder holding a ``checkpoint`` pointer.  Every existence check is a
    member stat of a store Source; None when ``url`` names no TensorFlow
    checkpoint.  A pointer naming a prefix outside its folder is refused.
    """
    url = _FILE_SUFFIX.sub("", os.fspath(url).rstrip("/"))
    head, base = _split(url)
    if base:
        folder = get_source(head, storage_options, refresh=True, store=True)
        if folder.member(base + ".index") is not None:
            return folder, base
    folder = get_source(url, storage_options, refresh=True, store=True)
    pointer = folder.member(POINTER_FILE)
    if pointer is None:
        return None
    return folder, _follow_pointer(folder, pointer)


def _follow_pointer(folder: Source, pointer: Source) -> str:
    """The prefix (relative to ``folder``) that the ``checkpoint`` pointer file names."""
    if pointer.size > MAX_POINTER_SIZE:
        raise FormatError(f"{pointer.url}: {pointer.size} bytes, too large for a checkpoint pointer")
    try:
        text = pointer.read(0, pointer.size).decode()
    except UnicodeDecodeError:
        raise FormatError(f"{pointer.url}: not a text checkpoint pointer") from None
    directory = (folder.path if folder.is_local else folder.url).rstrip("/")
    target = pointer_target(directory, parse_pointer(text, pointer.url), pointer.url)
    prefix = target[len(directory) + 1 :]
    if folder.member(prefix + ".index") is None:
        raise FormatError(f"{pointer.url}: names {target}, but {target}.index does not exist")
    return prefix
