"""The Lambda Runtime API, served to one worker process (``AWS_LAMBDA_RUNTIME_API``).

awslambdaric (through its C client, aws-lambda-cpp) loops on::

    GET  /2018-06-01/runtime/invocation/next            blocks until there is an invocation
    POST /2018-06-01/runtime/invocation/{id}/response   the handler's return value (JSON)
    POST /2018-06-01/runtime/invocation/{id}/error      awslambdaric's error JSON
    POST /2018-06-01/runtime/init/error                 the handler could not even be imported

Each worker gets its own server, so a request's worker is known without trusting anything it
sends. The server only translates HTTP; what to run and what a result means is the pool's business
(:class:`Runtime`, implemented by :class:`~lambdamap.emulator.pool.FunctionPool`).

A failed POST makes awslambdaric raise and its process exit, so the handlers answer 2xx whenever
the request id is the worker's current one.
"""
from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Protocol

from ._http import JSONHandler, LoopbackHTTPServer

if TYPE_CHECKING:
    from .pool import Invocation, Worker

PREFIX = "/2018-06-01/runtime"
# A larger response fails the invocation, like Lambda's synchronous 6 MB response limit.
MAX_RESPONSE_BYTES = 6 * 2**20
_INVOCATION_POST = re.compile(PREFIX + r"/invocation/([^/]+)/(response|error)")


class Runtime(Protocol):
    """What a worker's Runtime API asks of the pool that owns the worker."""

    def next_invocation(self, worker: "Worker") -> tuple["Invocation", int] | None:
        """Block until ``worker`` has something to run: (invocation, deadline in epoch ms).

        ``None`` means the worker is being stopped or replaced and must get nothing.
        """

    def complete(self, worker: "Worker", request_id: str, ok: bool, body: bytes,
                 error_type: str | None) -> bool:
        """``worker`` finished ``request_id``; False if that is not what it was running."""

    def init_failed(self, worker: "Worker", body: bytes, error_type: str | None) -> None:
        """``worker``'s runtime could not load the handler (it exits next)."""


class RuntimeAPIServer(LoopbackHTTPServer):
    """The Runtime API endpoint of one worker process."""

    def __init__(self, runtime: Runtime, worker: "Worker"):
        self.runtime, self.worker = runtime, worker
        super().__init__(_RuntimeHandler, 0, name=f"lambda-runtime-api {worker.name}")

    @property
    def address(self) -> str:
        """The value of ``AWS_LAMBDA_RUNTIME_API``: host and port, no scheme."""
        return f"127.0.0.1:{self.port}"


class _RuntimeHandler(JSONHandler):
    server: RuntimeAPIServer

    def do_GET(self) -> None:
        if self.path != PREFIX + "/invocation/next":
            return self._not_found()
        got = self.server.runtime.next_invocation(self.server.worker)
        if got is None:  # stopping: no answer the runtime could act on
            self.close_connection = True
            return self.reply(500, _error("Runtime.Shutdown", "the worker is being stopped"))
        invocation, deadline_ms = got
        headers = {
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": invocation.function_arn,
            "Lambda-Runtime-Trace-Id": invocation.trace_id,
            "Content-Type": "application/json",
        }
        if invocation.client_context:
            headers["Lambda-Runtime-Client-Context"] = invocation.client_context
        self.reply(200, invocation.payload, headers)

    def do_POST(self) -> None:
        body = self.read_body()
        error_type = self.headers.get("Lambda-Runtime-Function-Error-Type")
        runtime, worker = self.server.runtime, self.server.worker
        if self.path == PREFIX + "/init/error":
            runtime.init_failed(worker, body, error_type)
            return self.reply(202, b'{"status":"OK"}')
        match = _INVOCATION_POST.fullmatch(self.path)
        if match is None:
            return self._not_found()
        request_id, kind = match.groups()
        if kind == "response" and len(body) > MAX_RESPONSE_BYTES:
            message = (f"Response payload size ({len(body)} bytes) exceeded maximum allowed "
                       f"payload size ({MAX_RESPONSE_BYTES} bytes).")
            runtime.complete(worker, request_id, False,
                             _error("Function.ResponseSizeTooLarge", message),
                             "Function.ResponseSizeTooLarge")
            return self.reply(413, _error("Function.ResponseSizeTooLarge", message))
        if not runtime.complete(worker, request_id, kind == "response", body,
                                error_type if kind == "error" else None):
            return self.reply(400, _error("InvalidRequestID", f"unknown request id {request_id}"))
        self.reply(202, b'{"status":"OK"}')

    def _not_found(self) -> None:
        self.reply(404, _error("InvalidRequest", f"no such Runtime API resource: {self.path}"))


def _error(error_type: str, message: str) -> bytes:
    return json.dumps({"errorType": error_type, "errorMessage": message}).encode()
