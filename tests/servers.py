"""A real HTTP/1.1 server with Range support, on a loopback port chosen by the OS.

Serves files from a directory and counts what it sends, so tests can assert
how many requests and bytes a read cost.  Started and stopped by the tests.
"""

from __future__ import annotations

import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class RangeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path):
        self.root = Path(root)
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, int]] = []  # (method, path, bytes sent)
        super().__init__(("127.0.0.1", 0), _Handler)
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

    def __enter__(self) -> RangeHTTPServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RangeHTTPServer

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def _file(self) -> Path | None:
        path = (self.server.root / self.path.split("?")[0].lstrip("/")).resolve()
        if self.server.root.resolve() not in path.parents or not path.is_file():
            self.send_error(404)
            return None
        return path

    def do_HEAD(self) -> None:
        path = self._file()
        if path is None:
            return
        self.send_response(200)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{path.stat().st_mtime_ns:x}"')
        with self.server.lock:
            self.server.requests.append(("HEAD", self.path, 0))
        self.end_headers()

    def do_GET(self) -> None:
        path = self._file()
        if path is None:
            return
        size = path.stat().st_size
        start, end, status = 0, size - 1, 200
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if match:
            a, b = match.groups()
            if a == "":
                start, end = max(0, size - int(b)), size - 1
            else:
                start, end = int(a), min(size - 1, int(b)) if b else size - 1
            status = 206
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
        self.send_header("ETag", f'"{path.stat().st_mtime_ns:x}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        with self.server.lock:  # recorded before the body goes out, so a client that has it sees the count
            self.server.requests.append(("GET", self.path, length))
        self.end_headers()
        with open(path, "rb") as f:
            f.seek(start)
            remaining = length
            while remaining:
                data = f.read(min(remaining, 1 << 20))
                if not data:
                    break
                self.wfile.write(data)
                remaining -= len(data)


def serve(root: os.PathLike[str] | str) -> RangeHTTPServer:
    return RangeHTTPServer(Path(root))
