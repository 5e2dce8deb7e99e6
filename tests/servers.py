"""The product's Range HTTP server (:mod:`lazyweights.tools.serve`) with injected faults, for the tests.

On a loopback port chosen by the OS; it counts what it sends, so tests can
assert how many requests and bytes a read cost.  It honours ``If-Match``
unless told to ignore it (``server.honour_if_match = False``, as many servers
and CDNs do), can require request headers (403 without them), and injects
per-request faults, one per GET in order (:meth:`RangeHTTPServer.inject`):

- ``("ok", 0)``: served normally (to place a later fault mid-load);
- ``("status", code)`` or ``("status", code, retry_after)``: an error status,
  with a ``Retry-After`` header of that many seconds;
- ``("short", n)``: the body's last ``n`` bytes cut, then the connection closed;
- ``("reset", 0)``: the connection closed before any response;
- ``("stall", seconds)``: no response for that long, then the connection closed;
- ``("shift", n)``: a 206 whose ``Content-Range`` and body start ``n`` bytes later;
- ``("ignore_range", 0)``: a 200 with the whole file, Range ignored;
- ``("before", fn)``: ``fn()`` runs (replace or delete the file), then the request is served.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from lazyweights.tools import serve as product

Fault = tuple[Any, ...]  # (kind, value[, retry_after]); see the module docstring


class RangeHTTPServer(product.RangeHTTPServer):
    """The product server plus required headers and a queue of faults for the next GETs."""

    def __init__(self, root: os.PathLike[str] | str):
        self.faults: list[Fault] = []  # consumed by the next GETs, one each (see the module docstring)
        self.required_headers: dict[str, str] = {}  # requests lacking these get 403
        super().__init__(Path(root))

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self.faults.clear()
            self.honour_if_match = True

    def inject(self, *faults: Fault) -> None:
        """Make the next GET requests fail, one fault each, in order."""
        with self.lock:
            self.faults.extend(faults)

    def _next_fault(self) -> Fault | None:
        with self.lock:
            return self.faults.pop(0) if self.faults else None

    def handle_error(self, request: object, client_address: object) -> None:
        """A client hanging up mid-body, or a file deleted mid-request, is a fault the tests made: no traceback."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, FileNotFoundError)):
            super().handle_error(request, client_address)


class RangeHandler(product.RangeHandler):
    """Applies the server's required headers and its next fault through the product handler's hooks."""

    server: RangeHTTPServer
    _pending: Fault | None = None  # the fault still to apply to this response (short, shift, ignore_range)

    def _refused(self) -> bool:
        for name, value in self.server.required_headers.items():
            if self.headers.get(name) != value:
                self._record(0)
                self.send_error(403)
                return True
        self._pending = self.server._next_fault() if self.command == "GET" else None
        kind = self._pending[0] if self._pending else None
        if kind in ("before", "ok"):
            if kind == "before":
                self._pending[1]()
            self._pending = None
        elif kind == "status":
            self._record(0)
            self.send_response(self._pending[1])
            if len(self._pending) > 2:
                self.send_header("Retry-After", str(self._pending[2]))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True
        elif kind in ("reset", "stall"):
            self._record(0)
            time.sleep(self._pending[1] if kind == "stall" else 0)
            self.close_connection = True
            return True
        return False

    def _span(self, size: int) -> tuple[int, int, int] | None:
        kind = self._pending[0] if self._pending else None
        if kind == "ignore_range":
            return 0, size - 1, 200
        span = super()._span(size)
        if span is not None and kind == "shift" and span[2] == 206:
            n = self._pending[1]
            return span[0] + n, min(size - 1, span[1] + n), 206
        return span

    def _cut(self) -> int:
        return self._pending[1] if self._pending and self._pending[0] == "short" else 0


RangeHTTPServer.handler_class = RangeHandler


def serve(root: os.PathLike[str] | str) -> RangeHTTPServer:
    return RangeHTTPServer(root)
