"""The product's Range HTTP server (:mod:`lazyweights.tools.serve`) plus what tests need of a bad server.

Adds, on demand: required request headers (403 without them) and injected
faults consumed by the next GETs (an error status, a body cut short, a
connection closed before any response).  Started and stopped by the tests
on a loopback port chosen by the OS.
"""

from __future__ import annotations

import os
from pathlib import Path

from lazyweights.tools import serve as product


class RangeHTTPServer(product.RangeHTTPServer):
    def __init__(self, root: Path):
        self.faults: list[tuple[str, int]] = []  # ("status", code) | ("short", n): last n bytes cut | ("reset", 0)
        self.required_headers: dict[str, str] = {}  # requests lacking these get 403
        super().__init__(root)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.faults.clear()

    def inject(self, *faults: tuple[str, int]) -> None:
        """Make the next GET requests fail, one fault each, in order."""
        with self.lock:
            self.faults.extend(faults)

    def _next_fault(self) -> tuple[str, int] | None:
        with self.lock:
            return self.faults.pop(0) if self.faults else None


class RangeHandler(product.RangeHandler):
    server: RangeHTTPServer

    def _refused(self) -> bool:
        for name, value in self.server.required_headers.items():
            if self.headers.get(name) != value:
                self._record(0)
                self.send_error(403)
                return True
        if self.command != "GET":
            return False
        self._short = 0
        fault = self.server._next_fault()
        if fault is None:
            return False
        kind, value = fault
        if kind == "short":
            self._short = value
            return False
        self._record(0)
        if kind == "status":
            self.send_error(value)
        else:  # "reset": hang up without an answer
            self.close_connection = True
        return True

    def _cut(self) -> int:
        return getattr(self, "_short", 0)


RangeHTTPServer.handler_class = RangeHandler


def serve(root: os.PathLike[str] | str) -> RangeHTTPServer:
    return RangeHTTPServer(Path(root))
