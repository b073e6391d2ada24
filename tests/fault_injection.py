"""Fault injection for moto's S3 server: make chosen requests fail the way S3 fails.

:class:`FaultInjector` wraps any WSGI app and answers the next ``n`` requests that match a method
and a path regex with either

* ``kind="slowdown"``: HTTP 503 with S3's ``SlowDown`` error XML (botocore parses
  ``Error.Code == "SlowDown"``), or
* ``kind="reset"``: no answer at all; the connection is closed abortively (the client sees a
  reset or a closed connection: botocore raises ``ConnectionClosedError``).

:class:`FaultyMotoServer` is moto's server (as ``moto.server.ThreadedMotoServer`` builds it) on
127.0.0.1, port 0, behind a ``FaultInjector``. Use the ``faulty_moto_server`` fixture::

    from fault_injection import faulty_moto_server  # noqa: F401 (a fixture)

    def test_put_survives_throttling(faulty_moto_server):
        server = faulty_moto_server
        s3 = boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1")
        s3.create_bucket(Bucket="b")
        server.inject(3, method="PUT", path_regex=r"^/b/")   # the next 3 PUTs get 503 SlowDown
        ...
        assert server.remaining() == 0                        # all 3 were consumed

The path regex is matched (``re.search``) against the request path plus ``?query`` if any; with
an ``endpoint_url`` boto3 uses path-style addressing, so a path starts with ``/<bucket>/``.
"""
from __future__ import annotations

import logging
import re
import socket
import struct
import threading
import uuid
from dataclasses import dataclass

import pytest

FAKE_AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

log = logging.getLogger(__name__)

_SLOWDOWN_XML = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                 '<Message>Please reduce your request rate.</Message>'
                 '<RequestId>{rid}</RequestId><HostId>{rid}</HostId></Error>')


@dataclass
class _Fault:
    remaining: int
    method: str | None
    path: re.Pattern | None
    kind: str

    def matches(self, method: str, path: str) -> bool:
        return ((self.method is None or self.method == method)
                and (self.path is None or self.path.search(path) is not None))


class FaultInjector:
    """WSGI middleware: the next matching requests fail (503 SlowDown or a dropped connection)."""

    KINDS = ("slowdown", "reset")

    def __init__(self, app):
        self.app = app
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self.injected: list[tuple[str, str, str]] = []  # (kind, method, path) of each fault served

    def inject(self, n: int, *, method: str | None = None, path_regex: str | None = None,
               kind: str = "slowdown") -> None:
        """Fail the next ``n`` requests matching ``method`` (e.g. ``"PUT"``) and ``path_regex``.

        Faults are checked in the order injected; a request consumes at most one.
        """
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        with self._lock:
            self._faults.append(_Fault(n, method and method.upper(),
                                       re.compile(path_regex) if path_regex else None, kind))

    def remaining(self) -> int:
        """Faults injected but not yet served."""
        with self._lock:
            return sum(f.remaining for f in self._faults)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take(self, method: str, path: str) -> str | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and fault.matches(method, path):
                    fault.remaining -= 1
                    self.injected.append((fault.kind, method, path))
                    return fault.kind
        return None

    def __call__(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        if environ.get("QUERY_STRING"):
            path += "?" + environ["QUERY_STRING"]
        kind = self._take(method, path)
        if kind is None:
            return self.app(environ, start_response)
        if kind == "reset":
            # Consume the request body, so that the server does not read it as the next request.
            if environ.get("wsgi.input_terminated"):
                environ["wsgi.input"].read()
            elif environ.get("CONTENT_LENGTH"):
                environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
            sock = environ["werkzeug.socket"]
            # Linger 0: the close that follows sends RST. Shutting down now makes the server's
            # handler read EOF and close, instead of waiting for another request.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RDWR)
            raise ConnectionResetError("fault injection: connection reset")
        rid = uuid.uuid4().hex[:16].upper()
        body = b"" if method == "HEAD" else _SLOWDOWN_XML.format(rid=rid).encode()
        start_response("503 Slow Down", [("Content-Type", "application/xml"),
                                         ("Content-Length", str(len(body))),
                                         ("x-amz-request-id", rid)])
        return [body]


class FaultyMotoServer:
    """moto's server on 127.0.0.1 (any free port) behind a :class:`FaultInjector`."""

    def __init__(self) -> None:
        self._server = None
        self._thread: threading.Thread | None = None
        self.faults: FaultInjector | None = None

    def start(self) -> "FaultyMotoServer":
        from moto.moto_server.werkzeug_app import (DomainDispatcherApplication,
                                                   MotoRequestHandler, create_backend_app)
        from werkzeug.serving import make_server

        class QuietHandler(MotoRequestHandler):
            def log(self, type: str, message: str, *args) -> None:  # noqa: A002
                log.debug("moto %s: " + message, type, *args)

        self.faults = FaultInjector(DomainDispatcherApplication(create_backend_app))
        self._server = make_server("127.0.0.1", 0, self.faults, threaded=True,
                                   request_handler=QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="faulty-moto-server")
        self._thread.start()
        return self

    @property
    def endpoint_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def inject(self, n: int, *, method: str | None = None, path_regex: str | None = None,
               kind: str = "slowdown") -> None:
        """See :meth:`FaultInjector.inject`."""
        self.faults.inject(n, method=method, path_regex=path_regex, kind=kind)

    def remaining(self) -> int:
        return self.faults.remaining()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()  # ThreadedMotoServer.stop leaves the socket open
            self._thread.join(timeout=10)
            self._server = None

    def __enter__(self) -> "FaultyMotoServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


@pytest.fixture
def faulty_moto_server(monkeypatch):
    """A :class:`FaultyMotoServer`, with fake AWS credentials in the environment."""
    for key, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(key, value)
    with FaultyMotoServer() as server:
        yield server
