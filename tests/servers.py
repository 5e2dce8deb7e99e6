"""A real HTTP/1.1 server with Range support, on a loopback port chosen by the OS.

Serves files from a directory and counts what it sends, so tests can assert
how many requests and bytes a read cost.  Honours ``If-Match`` (412 when the
file's ETag changed) unless told to ignore it as many servers and CDNs do,
can require request headers (403 without them), and injects per-request
faults, one per GET in order (:meth:`RangeHTTPServer.inject`):

- ``("ok", 0)``: served normally (to place a later fault mid-load);
- ``("status", code)`` or ``("status", code, retry_after)``: an error status,
  with a ``Retry-After`` header of that many seconds;
- ``("short", n)``: the body's last ``n`` bytes cut, then the connection closed;
- ``("reset", 0)``: the connection closed before any response;
- ``("stall", seconds)``: no response for that long, then the connection closed;
- ``("shift", n)``: a 206 whose ``Content-Range`` and body start ``n`` bytes later;
- ``("ignore_range", 0)``: a 200 with the whole file, Range ignored;
- ``("before", fn)``: ``fn()`` runs (replace or delete the file), then the request is served.

Started and stopped by the tests.
"""

from __future__ import annotations

import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Fault = tuple[Any, ...]  # (kind, value[, retry_after]); see the module docstring


class RangeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # socketserver's default backlog of 5 drops SYNs of concurrent clients: 1 s stalls

    handler_class: type[BaseHTTPRequestHandler]  # RangeHandler, set below; subclasses may swap in their own

    def __init__(self, root: Path):
        self.root = Path(root)
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, int]] = []  # (method, path, bytes sent)
        self.faults: list[Fault] = []  # consumed by the next GETs, one each (see the module docstring)
        self.required_headers: dict[str, str] = {}  # requests lacking these get 403
        self.honour_if_match = True  # False: answer as if If-Match were not there (many servers and CDNs)
        super().__init__(("127.0.0.1", 0), self.handler_class)
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def bytes_sent(self) -> int:
        with self.lock:
            return sum(n for _, _, n in self.requests)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.faults.clear()
            self.honour_if_match = True

    def inject(self, *faults: Fault) -> None:
        """Make the next GET requests fail, one fault each, in order."""
        with self.lock:
            self.faults.extend(faults)

    def count(self, method: str = "GET") -> int:
        with self.lock:
            return sum(1 for m, _, _ in self.requests if m == method)

    def _next_fault(self) -> Fault | None:
        with self.lock:
            return self.faults.pop(0) if self.faults else None

    def handle_error(self, request: object, client_address: object) -> None:
        """A client hanging up mid-body, or a file deleted mid-request, is a fault the tests made: no traceback."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, FileNotFoundError)):  # a file deleted mid-request
            super().handle_error(request, client_address)

    def __enter__(self) -> RangeHTTPServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class RangeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms delayed-ACK stalls
    server: RangeHTTPServer

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def _file(self) -> Path | None:
        for name, value in self.server.required_headers.items():
            if self.headers.get(name) != value:
                self._record(0)
                self.send_error(403)
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

    def _fault(self) -> Fault | None:
        """Apply an injected fault; returns it when the response is still to be sent (short, shifted, whole)."""
        fault = self.server._next_fault()
        if fault is None:
            return None
        kind, value = fault[0], fault[1]
        if kind == "before":
            value()
            return None
        if kind == "status":
            self._record(0)
            self.send_response(value)
            if len(fault) > 2:
                self.send_header("Retry-After", str(fault[2]))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return ("handled", 0)
        if kind in ("reset", "stall"):
            self._record(0)
            time.sleep(value if kind == "stall" else 0)
            self.close_connection = True
            return ("handled", 0)
        return None if kind == "ok" else fault

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
        fault = self._fault()
        if fault is not None and fault[0] == "handled":
            return
        if not path.is_file():  # deleted by a ("before", fn) fault
            self._record(0)
            self.send_error(404)
            return
        honour = self.server.honour_if_match
        if honour and "If-Match" in self.headers and self.headers["If-Match"] != self._etag(path):
            self._record(0)
            self.send_error(412)
            return
        size = path.stat().st_size
        start, end, status = 0, size - 1, 200
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if fault is not None and fault[0] == "ignore_range":
            match, fault = None, None
        if match:
            a, b = match.groups()
            if a == "":
                start, end = max(0, size - int(b)), size - 1
            else:
                start, end = int(a), min(size - 1, int(b)) if b else size - 1
            status = 206
            if fault is not None and fault[0] == "shift":
                start, end, fault = start + fault[1], min(size - 1, end + fault[1]), None
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", self._etag(path))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self._record(length)  # recorded before the body goes out, so a client that has it sees the count
        self.end_headers()
        self._send_body(path, start, length if fault is None else max(0, length - fault[1]))
        if fault is not None:  # a short body: hang up, so the client sees fewer bytes than Content-Length said
            self.close_connection = True

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


def serve(root: os.PathLike[str] | str) -> RangeHTTPServer:
    return RangeHTTPServer(Path(root))
