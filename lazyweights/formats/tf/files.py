"""Byte access for the TF checkpoint reader: the size of a named file and a byte range of it.

The reading core asks only for ``size(path)`` (raising ``FileNotFoundError``
when there is no such file) and ``read(path, offset, length)``; anything that
provides both works, so the core carries no dependency on the rest of the
package.  :class:`LocalFiles` serves local paths, :class:`FsspecFiles` any
fsspec filesystem (object stores, HTTP, memory).
"""

from __future__ import annotations

import os
from typing import Any, Protocol

__all__ = ["CheckpointFiles", "FsspecFiles", "LocalFiles"]


class CheckpointFiles(Protocol):
    """What the reader needs from storage."""

    def size(self, path: str) -> int:
        """The file's size in bytes; ``FileNotFoundError`` when it does not exist."""
        ...

    def read(self, path: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer only at the end of the file)."""
        ...


class LocalFiles:
    """Local files through ``os`` calls."""

    def size(self, path: str) -> int:
        if not os.path.isfile(path):
            raise FileNotFoundError(path)
        return os.path.getsize(path)

    def read(self, path: str, offset: int, length: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)


class FsspecFiles:
    """Files of one fsspec filesystem (``fsspec.core.url_to_fs(url)[0]``)."""

    def __init__(self, fs: Any):
        self.fs = fs

    def size(self, path: str) -> int:
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            raise
        except OSError as exc:  # some stores say "not found" with other errors
            raise FileNotFoundError(path) from exc
        if info.get("type") == "directory":
            raise FileNotFoundError(path)
        return int(info["size"])

    def read(self, path: str, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        return self.fs.cat_file(path, start=offset, end=offset + length)
