"""A loopback HTTP/1.1 server that starts on a free port and stops completely and at once.

Both of the emulator's APIs use it. Three things matter beyond ``ThreadingHTTPServer``:

* ``TCP_NODELAY`` on every accepted socket: a response written as headers then body would
  otherwise wait ~40-80 ms for Nagle's algorithm and the peer's delayed ACK, on every request.
* ``stop()`` returns at once (a wake-up pipe, not ``serve_forever``'s polling) and also shuts down
  the connections still open, so that keep-alive clients (boto3, curl in awslambdaric) cannot
  go on talking to a stopped emulator through a handler thread that is still alive.
* It binds 127.0.0.1 only: there is no authentication, so nothing else may reach it.
"""
from __future__ import annotations

import logging
import os
import selectors
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


class LoopbackHTTPServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` on 127.0.0.1 (port 0: any free port) with an immediate ``stop``."""

    # A client dispatching from 64 threads would overflow the default listen backlog of 5.
    request_queue_size = 128

    daemon_threads = True
    block_on_close = False  # stop() shuts connections down; never wait for clients to hang up

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int = 0, *, name: str):
        super().__init__((HOST, port), handler)
        self.name = name
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> "LoopbackHTTPServer":
        self._thread.start()
        return self

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in selector.select():
                    if key.fileobj is self.socket and not self._stopping:
                        self._handle_request_noblock()

    def process_request(self, request: socket.socket, client_address) -> None:
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # a peer that went away: a killed worker, a closed client
            log.debug("%s: connection from %s ended: %s", self.name, client_address, exc)
        else:
            log.exception("%s: error serving %s", self.name, client_address)

    def stop(self) -> None:
        """Stop accepting, end every open connection, release the port. Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        os.write(self._wake_w, b"x")
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.server_close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        with self._open_lock:
            still_open = list(self._open)
        for sock in still_open:  # their handler threads read EOF and end
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class JSONHandler(BaseHTTPRequestHandler):
    """Request handler with keep-alive, exact ``Content-Length`` and quiet logging."""

    protocol_version = "HTTP/1.1"  # keep-alive: boto3 and awslambdaric reuse their connections

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if body and not any(k.lower() == "content-type" for k in (headers or {})):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("%s: %s", self.server.name, format % args)
