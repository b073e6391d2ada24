"""``LambdaEmulator``: functions, their worker pools, the Invoke API, and fault injection.

This module holds the Invoke semantics (which function, which invocation type, what limits, what
answer) independent of HTTP; :mod:`.invoke_api` only translates requests and answers.
"""
from __future__ import annotations

import atexit
import base64
import binascii
import collections
import importlib.util
import json
import logging
import math
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import unquote

from . import errors
from .pool import FunctionPool, Invocation, InvocationRecord, RECORDS_KEPT, LOG_TAIL_BYTES
from .spec import FunctionSpec, build_runtime_dir, prepare

log = logging.getLogger(__name__)

SYNC_PAYLOAD_LIMIT = 6 * 2**20   # RequestResponse request body
ASYNC_PAYLOAD_LIMIT = 2**20      # Event request body (256 KiB until Lambda raised it in 2025)
DEFAULT_FUNCTION = "lambdamap"


@dataclass
class InvokeResult:
    """What ``Invoke`` answers: the HTTP status and the fields boto3 maps to its response."""

    status: int                        # 200 RequestResponse, 202 Event, 204 DryRun
    request_id: str
    payload: bytes = b""
    function_error: str | None = None  # "Unhandled" when the function failed
    log_result: str | None = None      # base64 of the last 4 KB of output (LogType=Tail)


class LambdaEmulator:
    """A local AWS Lambda: the Invoke API on 127.0.0.1, each function run by awslambdaric workers.

    Example::

        from lambdamap.emulator import LambdaEmulator, FunctionSpec

        with LambdaEmulator({"lambdamap": FunctionSpec(timeout=60)}, concurrency=4) as emu:
            client = boto3.client("lambda", endpoint_url=emu.endpoint_url, region_name="us-east-1")
            client.invoke(FunctionName="lambdamap", InvocationType="Event", Payload=b"{}")

    Args:
        functions: function name -> :class:`FunctionSpec`; default one function ``"lambdamap"``
            running lambdamap's universal handler from the host environment.
        concurrency: worker processes per function (its reserved concurrency; a function's
            ``FunctionSpec.concurrency`` overrides it): a synchronous invoke finding all of
            them busy is throttled; Event invocations queue.
        max_queue: Event invocations each function may queue before invokes are throttled.
        port: the Invoke API's port on 127.0.0.1 (0: any free port; see :attr:`endpoint_url`).
        region, account_id: used in ARNs and the workers' ``AWS_REGION``.
        enforce_memory: kill a worker whose peak RSS exceeds its function's ``memory_mb``.
    """

    def __init__(self, functions: Mapping[str, FunctionSpec] | None = None, *,
                 concurrency: int = 2, max_queue: int = 10_000, port: int = 0,
                 region: str = "us-east-1", account_id: str = "123456789012",
                 enforce_memory: bool = True):
        self.functions = dict(functions if functions is not None
                              else {DEFAULT_FUNCTION: FunctionSpec()})
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        for name, spec in self.functions.items():
            spec.check(name)
        self.concurrency, self.max_queue, self.port = concurrency, max_queue, port
        self.region, self.account_id, self.enforce_memory = region, account_id, enforce_memory
        self._lock = threading.Lock()
        self._throttles = 0
        self._duplicates = 0
        self._records: collections.deque[InvocationRecord] = collections.deque(maxlen=RECORDS_KEPT)
        self._pools: dict[str, FunctionPool] = {}
        self._server = None
        self._workdir: str | None = None
        self._started = self._stopped = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "LambdaEmulator":
        """Lay out the packages, start the workers and the Invoke API; return ``self``."""
        from .invoke_api import InvokeAPIServer  # here: it imports this module

        if self._started:
            raise RuntimeError("the emulator was already started")
        if importlib.util.find_spec("awslambdaric") is None:
            raise RuntimeError("the Lambda emulator runs awslambdaric, which is not installed: "
                               "pip install 'lambdamap[emulate]'")
        self._started = True
        atexit.register(self.stop)  # no worker outlives an interpreter that forgot to stop()
        try:
            self._workdir = tempfile.mkdtemp(prefix="lambdamap-emulator-")
            runtime_dir = build_runtime_dir(f"{self._workdir}/runtime")
            for name, spec in self.functions.items():
                pool = FunctionPool(
                    name, spec, prepare(name, spec, self._workdir, runtime_dir),
                    concurrency=spec.concurrency or self.concurrency, max_queue=self.max_queue,
                    region=self.region, account_id=self.account_id,
                    enforce_memory=self.enforce_memory, on_record=self._records.append)
                self._pools[name] = pool
                pool.start()
            self._server = InvokeAPIServer(self, self.port).start()
        except BaseException:
            self.stop()
            raise
        log.info("Lambda emulator at %s: %s", self.endpoint_url, ", ".join(self.functions))
        return self

    def stop(self) -> None:
        """Stop the Invoke API, kill every worker process and wait for it. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        if self._server is not None:
            self._server.stop()
        for pool in self._pools.values():
            pool.stop()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> "LambdaEmulator":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT``: give it to boto3 as ``endpoint_url``."""
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return self._server.url

    # -- fault injection and inspection (for tests) ------------------------------------------

    def inject_throttles(self, n: int) -> None:
        """Answer the next ``n`` Invoke requests with 429 ``TooManyRequestsException``.

        boto3 retries 429 by itself (4 retries in its default "legacy" mode), so each of its
        ``invoke`` calls consumes up to 5 of them.
        """
        with self._lock:
            self._throttles += n

    def duplicate_next(self, n: int) -> None:
        """Deliver each of the next ``n`` Event invocations twice (Lambda is at-least-once)."""
        with self._lock:
            self._duplicates += n

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no invocation is queued or running; False if ``timeout`` ran out first."""
        end = None if timeout is None else time.monotonic() + timeout
        for pool in list(self._pools.values()):
            remaining = None if end is None else max(0.0, end - time.monotonic())
            if not pool.wait_idle(remaining):
                return False
        return all(pool.idle() for pool in self._pools.values())

    def worker_pids(self, function: str | None = None) -> list[int]:
        """Process ids of the live workers (of one function, or of all)."""
        pools = [self._pools[function]] if function else list(self._pools.values())
        return [pid for pool in pools for pid in pool.pids()]

    def records(self, function: str | None = None) -> list[InvocationRecord]:
        """Finished invocations, oldest first (the last 10 000)."""
        return [r for r in list(self._records) if function is None or r.function == function]

    # -- the Lambda API ------------------------------------------------------------------------

    def invoke(self, function_name: str, payload: bytes = b"", *,
               invocation_type: str = "RequestResponse", qualifier: str | None = None,
               client_context: str | None = None, log_type: str = "None") -> InvokeResult:
        """Lambda's ``Invoke``, as the Invoke API serves it; raises :class:`errors.ApiError`.

        ``client_context`` is base64-encoded JSON, as in the ``X-Amz-Client-Context`` header.
        """
        with self._lock:
            throttled = self._throttles > 0
            self._throttles -= throttled
        if throttled:
            raise errors.too_many_requests("CallerRateLimitExceeded")
        name, qualifier = self.resolve(function_name, qualifier)
        pool = self._pools[name]
        if invocation_type not in ("RequestResponse", "Event", "DryRun"):
            raise errors.invalid_parameter(
                f"1 validation error detected: Value '{invocation_type}' at 'invocationType' "
                "failed to satisfy constraint: Member must satisfy enum value set: "
                "[Event, RequestResponse, DryRun]")
        limit, operation = ((ASYNC_PAYLOAD_LIMIT, "InvokeFunctionAsync")
                            if invocation_type == "Event" else
                            (SYNC_PAYLOAD_LIMIT, "InvokeFunction"))
        if len(payload) > limit:
            raise errors.request_too_large(limit, operation)
        payload = payload or b"{}"  # Lambda hands an empty request body to the handler as {}
        try:
            json.loads(payload)
        except ValueError as exc:
            raise errors.invalid_request_content(
                f"Could not parse request body into json: {exc}") from None
        context = _decode_client_context(client_context)
        request_id = str(uuid.uuid4())
        if invocation_type == "DryRun":
            return InvokeResult(204, request_id)
        arn = pool.arn + (f":{qualifier}" if qualifier else "")
        invocation = Invocation(request_id=request_id, payload=payload, function_arn=arn,
                                sync=invocation_type == "RequestResponse", client_context=context,
                                keep_logs=log_type == "Tail")
        if invocation_type == "Event":
            with self._lock:
                copies = 2 if self._duplicates > 0 else 1
                self._duplicates -= copies == 2
            pool.enqueue(invocation, copies)
            return InvokeResult(202, request_id)
        outcome = pool.invoke_sync(invocation)
        tail = None
        if invocation.keep_logs:
            text = "".join(invocation.logs).encode()[-LOG_TAIL_BYTES:]
            tail = base64.b64encode(text).decode()
        return InvokeResult(200, request_id, outcome.body,
                            function_error=None if outcome.ok else "Unhandled", log_result=tail)

    def resolve(self, function_name: str, qualifier: str | None = None) -> tuple[str, str | None]:
        """(name, qualifier) of a function given by name, ``name:qualifier``, or (partial) ARN.

        Every qualifier (a version or an alias) resolves to the one deployed code.
        """
        given = unquote(function_name)
        parts = given.split(":")
        if given.startswith("arn:"):  # arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]
            parts = parts[6:] if len(parts) >= 7 and parts[5] == "function" else []
        elif len(parts) >= 3 and parts[1] == "function":  # ACCOUNT:function:NAME[:QUALIFIER]
            parts = parts[2:]
        name = parts[0] if parts else given
        if len(parts) > 1:
            qualifier = qualifier or parts[1]
        if name not in self._pools:
            arn = f"arn:aws:lambda:{self.region}:{self.account_id}:function:{given}"
            raise errors.resource_not_found(given if given.startswith("arn:") else arn)
        return name, qualifier

    def function_configuration(self, function_name: str) -> dict:
        """Lambda's ``FunctionConfiguration`` of a function (for ``GetFunction`` and friends)."""
        name, _ = self.resolve(function_name)
        spec, pool = self.functions[name], self._pools[name]
        return {
            "FunctionName": name, "FunctionArn": pool.arn, "Runtime": spec.runtime,
            "Handler": spec.handler, "Timeout": math.ceil(spec.timeout),
            "MemorySize": spec.memory_mb,
            "Version": "$LATEST", "State": "Active", "LastUpdateStatus": "Successful",
            "PackageType": "Zip", "Architectures": ["x86_64"],
            "Environment": {"Variables": dict(spec.environment)},
            "Layers": [{"Arn": f"arn:aws:lambda:{self.region}:{self.account_id}:layer:"
                               f"emulated-{i}:1"} for i, _ in enumerate(spec.layer_dirs)],
        }


def _decode_client_context(value: str | None) -> str | None:
    if not value:
        return None
    try:
        text = base64.b64decode(value, validate=True).decode()
        json.loads(text)
    except (binascii.Error, ValueError):
        raise errors.invalid_request_content(
            "Client context must be a valid Base64-encoded JSON object.") from None
    return text
