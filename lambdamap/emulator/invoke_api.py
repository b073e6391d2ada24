"""The Invoke API over HTTP: what boto3's ``lambda`` client sends, answered as Lambda answers.

Served paths (botocore's service model for ``lambda``, protocol ``rest-json``)::

    POST /2015-03-31/functions/{FunctionName}/invocations[?Qualifier=Q]     Invoke
    GET  /2015-03-31/functions/{FunctionName}[?Qualifier=Q]                 GetFunction
    GET  /2015-03-31/functions/{FunctionName}/configuration[?Qualifier=Q]   GetFunctionConfiguration
    GET  /2015-03-31/functions/                                             ListFunctions

``Invoke`` takes ``X-Amz-Invocation-Type`` (``RequestResponse``, ``Event``, ``DryRun``),
``X-Amz-Log-Type`` (``Tail``) and ``X-Amz-Client-Context``; it answers with the status code
(200/202/204), ``X-Amz-Function-Error``, ``X-Amz-Log-Result`` and ``X-Amz-Executed-Version``
headers and the function's result as the body. Errors carry ``x-amzn-ErrorType`` and a JSON body,
from which botocore builds ``client.exceptions.<Code>``. Request signatures are not checked.
"""
from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from . import errors
from ._http import JSONHandler, LoopbackHTTPServer

if TYPE_CHECKING:
    from .core import LambdaEmulator

log = logging.getLogger(__name__)

_FUNCTION = re.compile(r"/2015-03-31/functions/([^/]+)(/invocations|/configuration)?/?")
_LIST = re.compile(r"/2015-03-31/functions/?")


class InvokeAPIServer(LoopbackHTTPServer):
    """The emulator's Lambda endpoint on 127.0.0.1."""

    def __init__(self, emulator: "LambdaEmulator", port: int = 0):
        self.emulator = emulator
        super().__init__(_InvokeHandler, port, name="lambda-invoke-api")


class _InvokeHandler(JSONHandler):
    server: InvokeAPIServer

    def do_POST(self) -> None:
        body = self.read_body()  # read even when answering an error: the connection is reused
        path, query = self._split()
        match = _FUNCTION.fullmatch(path)
        if match is None or match[2] != "/invocations":
            return self._unknown_operation()
        headers = self.headers
        try:
            result = self.server.emulator.invoke(
                match[1], body, invocation_type=headers.get("X-Amz-Invocation-Type") or
                "RequestResponse", qualifier=query.get("Qualifier"),
                client_context=headers.get("X-Amz-Client-Context"),
                log_type=headers.get("X-Amz-Log-Type") or "None")
        except errors.ApiError as exc:
            return self._error(exc)
        answer = {"x-amzn-RequestId": result.request_id}
        if result.status == 200:
            answer["X-Amz-Executed-Version"] = "$LATEST"
        if result.function_error:
            answer["X-Amz-Function-Error"] = result.function_error
        if result.log_result is not None:
            answer["X-Amz-Log-Result"] = result.log_result
        self.reply(result.status, result.payload, answer)

    def do_GET(self) -> None:
        path, _ = self._split()
        emulator = self.server.emulator
        try:
            if _LIST.fullmatch(path):
                body = {"Functions": [emulator.function_configuration(name)
                                      for name in emulator.functions]}
            elif (match := _FUNCTION.fullmatch(path)) and match[2] != "/invocations":
                config = emulator.function_configuration(match[1])
                body = config if match[2] == "/configuration" else {
                    "Configuration": config, "Code": {"RepositoryType": "S3", "Location": ""}}
            else:
                return self._unknown_operation()
        except errors.ApiError as exc:
            return self._error(exc)
        self.reply(200, json.dumps(body).encode())

    def _split(self) -> tuple[str, dict[str, str]]:
        path, _, query = self.path.partition("?")
        return path, {k: v[-1] for k, v in parse_qs(query).items()}

    def _error(self, exc: errors.ApiError) -> None:
        log.debug("Invoke API: %s %s -> %d %s", self.command, self.path, exc.status, exc.code)
        self.reply(exc.status, exc.json_body(), {"x-amzn-ErrorType": exc.code})

    def _unknown_operation(self) -> None:
        self._error(errors.ApiError(404, "UnknownOperationException",
                                    f"{self.command} {self.path} is not an operation the emulator "
                                    "serves (it serves Invoke, GetFunction, "
                                    "GetFunctionConfiguration and ListFunctions)"))
