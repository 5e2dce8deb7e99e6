"""Real object stores on loopback for the tests: S3 (moto in server mode) and GCS (gcp-storage-emulator).

Each is a real HTTP server speaking the store's API on a port the OS picks,
started and stopped by the test fixtures; the clients are the real s3fs and
gcsfs, configured only through ``storage_options``.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec

CREDENTIALS = {"key": "testing", "secret": "testing"}


class IfMatchSwitch:
    """WSGI middleware in front of moto: with ``honour = False`` requests reach moto without ``If-Match``,
    as from an S3-compatible server or proxy that ignores the condition (moto itself honours it)."""

    def __init__(self, app: Any):
        self.app = app
        self.honour = True

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if not self.honour:
            environ.pop("HTTP_IF_MATCH", None)
        return self.app(environ, start_response)


@dataclass
class S3Store:
    endpoint: str
    options: dict[str, Any]
    if_match: IfMatchSwitch

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=CREDENTIALS["key"],
            aws_secret_access_key=CREDENTIALS["secret"],
            region_name="us-east-1",
        )

    def bucket(self, name: str, *, versioned: bool) -> str:
        client = self.client()
        client.create_bucket(Bucket=name)
        if versioned:
            client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    def fs(self) -> Any:
        return fsspec.filesystem("s3", **self.options)


@contextlib.contextmanager
def s3_server() -> Iterator[S3Store]:
    """moto's S3 API on 127.0.0.1, port chosen by the OS."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    switch = server._server.app = IfMatchSwitch(server._server.app)  # werkzeug's server calls .app per request
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        options = {**CREDENTIALS, "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
        yield S3Store(endpoint, options, switch)
    finally:
        server.stop()


@dataclass
class GCSStore:
    endpoint: str
    bucket: str
    options: dict[str, Any]

    def fs(self) -> Any:
        return fsspec.filesystem("gs", **self.options)


class _BackloggedHTTPServer(http.server.HTTPServer):
    """The emulator's single-threaded server with a listen backlog for a level of concurrent reads.

    socketserver's backlog of 5 drops the connections of a metadata level's hundred
    concurrent reads; the dropped ones then wait out the 60 s read timeout.
    """

    request_queue_size = 256


def _backlogged(api: Any) -> None:
    """Make the emulator's API thread serve through :class:`_BackloggedHTTPServer` (same handler)."""
    from gcp_storage_emulator.server import RequestHandler

    def run() -> None:
        api._httpd = _BackloggedHTTPServer((api._host, api._port), functools.partial(RequestHandler, api._storage))
        api.is_running.set()
        api._httpd.serve_forever()

    api.run = run


@contextlib.contextmanager
def gcs_server(bucket: str = "lw-gcs") -> Iterator[GCSStore]:
    """gcp-storage-emulator's JSON API on 127.0.0.1 (in memory), port chosen by the OS.

    gcsfs's default class probes bucket types over gRPC, which no emulator
    speaks; while the server runs, ``gs://`` maps to gcsfs's plain HTTP class.
    """
    import gcsfs.core
    from gcp_storage_emulator.server import create_server

    previous = fsspec.get_filesystem_class("gs")
    fsspec.register_implementation("gs", gcsfs.core.GCSFileSystem, clobber=True)
    server = create_server("127.0.0.1", 0, in_memory=True, default_bucket=bucket)
    _backlogged(server._api)
    server.start()
    try:
        server._api.is_running.wait(10)
        port = server._api._httpd.server_address[1]
        endpoint = f"http://127.0.0.1:{port}"
        yield GCSStore(endpoint, bucket, {"token": "anon", "endpoint_url": endpoint, "project": "lazyweights-test"})
    finally:
        server.stop()
        fsspec.register_implementation("gs", previous, clobber=True)
