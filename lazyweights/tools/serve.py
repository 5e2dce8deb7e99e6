"""A small HTTP/1.1 file server with Range requests and ETags, that counts what it sends.

For trying remote loads without a cloud account, and for measuring them:
``with serve("build/") as server: lw.load(f"{server.url}/model.h5")``, then
``server.count()`` GETs and ``server.bytes_sent`` bytes.  It answers what
lazyweights needs from a static web server: ``HEAD`` with ``Content-Length``
and ``ETag``, ranged ``GET`` (206, 416 past the end), ``If-Match`` (412 when
the file changed since the client pinned its ETag), 404 outside the root.
It binds loopback on a port the OS picks unless told otherwise, serves each
connection on its own thread, and is not meant to face a network.
"""

from __future__ import annotations

import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["RangeHTTPServer", "RangeHandler", "serve"]


class RangeHTTPServer(ThreadingHTTPServer):
    """Serves the files under ``root``; ``requests`` records (method, path, body bytes sent) of each answer."""

    daemon_threads = True
    request_queue_size = 256  # socketserver's default backlog of 5 drops SYNs of concurrent clients: 1 s stalls

    handler_class: type[BaseHTTPRequestHandler]  # RangeHandler, set below; subclasses may swap in their own

    def __init__(self, root: os.PathLike[str] | str, host: str = "127.0.0.1", port: int = 0):
        self.root = Path(root)
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, int]] = []
        self.honour_if_match = True  # False: answer as if If-Match were not there (as many servers and CDNs do)
        super().__init__((host, port), self.handler_class)
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def bytes_sent(self) -> int:
        """Body bytes sent since the start (or the last :meth:`reset`)."""
        with self.lock:
            return sum(n for _, _, n in self.requests)

    def count(self, method: str = "GET") -> int:
        """Requests of ``method`` answered since the start (or the last :meth:`reset`)."""
        with self.lock:
            return sum(1 for m, _, _ in self.requests if m == method)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()

    def __enter__(self) -> RangeHTTPServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class RangeHandler(BaseHTTPRequestHandler):
    """HEAD and ranged GET of the server's files.  ``_refused``, ``_span`` and ``_cut`` are hooks for test servers."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms delayed-ACK stalls
    server: RangeHTTPServer

    def log_message(self, *args: object) -> None:  # quiet: the server's counts are its log
        pass

    def _refused(self) -> bool:
        """Answer instead of serving (an error, a dropped connection); True when answered.  Serves by default."""
        return False

    def _cut(self) -> int:
        """Bytes to leave off the next body (0: none); a test server's short-read fault."""
        return 0

    def _file(self) -> Path | None:
        if self._refused():
            return None
        path = (self.server.root / self.path.split("?")[0].lstrip("/")).resolve()
        if self.server.root.resolve() not in path.parents or not path.is_file():
            self._record(0)
            self.send_error(404)
            return None
        return path

    def _record(self, nbytes: int) -> None:
        with self.server.lock:
            self.server.requests.append((self.command, self.path, nbytes))

    @staticmethod
    def _etag(path: Path) -> str:
        return f'"{path.stat().st_mtime_ns:x}"'

    def do_HEAD(self) -> None:
        path = self._file()
        if path is None:
            return
        self.send_response(200)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", self._etag(path))
        self._record(0)
        self.end_headers()

    def do_GET(self) -> None:
        path = self._file()
        if path is None:
            return
        if self.server.honour_if_match and "If-Match" in self.headers and self.headers["If-Match"] != self._etag(path):
            self._record(0)
            self.send_error(412)
            return
        size = path.stat().st_size
        span = self._span(size)
        if span is None:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end, status = span
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", self._etag(path))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self._record(length)  # recorded before the body goes out, so a client that has it sees the count
        self.end_headers()
        cut = self._cut()
        self._send_body(path, start, max(0, length - cut))
        if cut:  # a short body: hang up, so the client sees fewer bytes than Content-Length said
            self.close_connection = True

    def _span(self, size: int) -> tuple[int, int, int] | None:
        """``(first byte, last byte, status)`` of the answer to the request's Range; None: unsatisfiable (416)."""
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if not match:
            return 0, size - 1, 200
        a, b = match.groups()
        if a == "":
            start, end = max(0, size - int(b)), size - 1
        else:
            start, end = int(a), min(size - 1, int(b)) if b else size - 1
        return None if start >= size else (start, end, 206)

    def _send_body(self, path: Path, start: int, length: int) -> None:
        with open(path, "rb") as f:
            f.seek(start)
            remaining = length
            while remaining:
                data = f.read(min(remaining, 1 << 20))
                if not data:
                    break
                self.wfile.write(data)
                remaining -= len(data)


RangeHTTPServer.handler_class = RangeHandler


def serve(root: os.PathLike[str] | str, host: str = "127.0.0.1", port: int = 0) -> RangeHTTPServer:
    """A server for the files under ``root``; use it as a context manager (it runs on a thread until exit)."""
    return RangeHTTPServer(root, host, port)
