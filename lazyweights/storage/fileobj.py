"""File objects (``io.BytesIO``, an open binary file) as URLs: a one-object fsspec filesystem per file object.

Keras's ``load_model``/``load_weights`` accept file objects.  lazyweights
reads every byte through a :class:`~lazyweights.storage.Source` on an fsspec
filesystem, so :func:`file_object_url` gives a file object a URL of its own
(``lwfileobj://<token>/<name>``) for as long as the ``with`` block lasts.
Nothing is copied up front: each read seeks and reads the caller's object
under a lock (a file object has one position), and the position the caller
left it at is restored afterwards.  The pin is the object's size, so a
file object that grows or shrinks while it is read is refused.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any, BinaryIO, ClassVar

import fsspec
from fsspec.spec import AbstractFileSystem

__all__ = ["FileObjectFileSystem", "file_object_url", "is_file_object"]

PROTOCOL = "lwfileobj"


def is_file_object(obj: Any) -> bool:
    """True for readable, seekable binary file objects (not paths or URLs)."""
    return not isinstance(obj, (str, bytes, os.PathLike)) and all(
        callable(getattr(obj, name, None)) for name in ("read", "seek", "tell")
    )


class FileObjectFileSystem(AbstractFileSystem):
    """Serves the file objects registered by :func:`file_object_url`, each as one read-only object."""

    protocol = PROTOCOL
    root_marker = ""
    _objects: ClassVar[dict[str, tuple[BinaryIO, threading.Lock]]] = {}

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        return str(path).removeprefix(f"{PROTOCOL}://").rstrip("/")

    def _get(self, path: str) -> tuple[BinaryIO, threading.Lock]:
        try:
            return self._objects[self._strip_protocol(path)]
        except KeyError:
            raise FileNotFoundError(path) from None

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        fileobj, lock = self._get(path)
        with lock:
            size = fileobj.seek(0, io.SEEK_END)
        return {"name": self._strip_protocol(path), "size": size, "type": "file"}

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        fileobj, lock = self._get(path)
        with lock:
            size = fileobj.seek(0, io.SEEK_END)
            start = 0 if start is None else (start + size if start < 0 else start)
            end = size if end is None else (end + size if end < 0 else end)
            fileobj.seek(start)
            return fileobj.read(max(0, end - start))

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        info = self.info(path)
        return [info] if detail else [info["name"]]


fsspec.register_implementation(PROTOCOL, FileObjectFileSystem, clobber=True)


@contextlib.contextmanager
def file_object_url(fileobj: BinaryIO) -> Iterator[str]:
    """A URL that reads ``fileobj`` while the block runs; the object's position is restored on exit."""
    name = os.path.basename(str(getattr(fileobj, "name", "") or "fileobj"))
    token = f"{uuid.uuid4().hex}/{name}"
    position = fileobj.tell()
    FileObjectFileSystem._objects[token] = (fileobj, threading.Lock())
    try:
        yield f"{PROTOCOL}://{token}"
    finally:
        del FileObjectFileSystem._objects[token]
        fileobj.seek(position)
