"""The AWS backend: one asynchronous Lambda invocation of the universal handler per batch.

``invoke`` queues events; a bounded pool of threads sends each with
``lambda.invoke(InvocationType="Event")`` and returns as soon as Lambda has accepted it (HTTP 202).
Events carry keys, never data: the arguments are already in S3, so an event is a few hundred
bytes, far below Lambda's asynchronous payload limit. Results travel only through S3.

Failures, and who handles them:

* throttling (429 ``TooManyRequestsException``), Lambda's 5xx and connection faults while sending
  an invocation: retried here with exponential back-off and full jitter, ``invoke_attempts`` times
  (botocore's own retries are off, so the two loops do not multiply); after the last attempt the
  invocation is reported lost (``listener.invocation_lost``), and the executor's bounded retry of
  the calls applies: they run again, or fail with an error that names the call and the cause;
* an invocation that Lambda accepted but that never reports (time-out, out of memory, dropped by
  the asynchronous queue): Lambda cannot tell the client, so ``reports_losses`` is False and the
  executor declares it lost when its calls stay silent past ``function_timeout`` plus a margin;
* a duplicated delivery (asynchronous invoke is at-least-once): the handler's first-writer-wins
  writes keep exactly one result per call.
"""
from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from tenacity import (Retrying, retry_if_exception, stop_after_attempt, stop_when_event_set,
                      wait_random_exponential)

from .. import __version__, signing, wire
from ..config import Settings
from ..errors import IntegrityError, LambdamapError, PayloadTooLargeError, RuntimeMismatchError
from ..storage import S3Storage
from ..wire import Event
from .base import Backend

log = logging.getLogger(__name__)

#: Lambda's limit for an asynchronous (``Event``) payload: 256 KB for years, 1 MB since late 2025;
#: the smaller one keeps lambdamap working in every region and account.
MAX_EVENT_BYTES = 256 * 1024
#: When the function's time-out cannot be read (no permission), assume Lambda's maximum.
FALLBACK_FUNCTION_TIMEOUT = 900.0
LAMBDA_MAX_TIMEOUT = 900.0  # Lambda's hard limit on one invocation

_THROTTLE_CODES = {"TooManyRequestsException", "Throttling", "ThrottlingException",
                   "EC2ThrottledException", "RequestLimitExceeded"}
_TRANSIENT_CODES = _THROTTLE_CODES | {"ServiceException", "ServiceUnavailable", "InternalFailure",
                                      "EC2UnexpectedException", "ResourceNotReadyException"}


def _error_code(exc: BaseException) -> str | None:
    from botocore.exceptions import ClientError

    return exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None


def _status(exc: BaseException) -> int:
    response = getattr(exc, "response", None) or {}
    return response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)


def _is_throttle(exc: BaseException) -> bool:
    return _error_code(exc) in _THROTTLE_CODES or _status(exc) == 429


def _is_transient(exc: BaseException) -> bool:
    """Throttling, server faults and broken connections: worth another attempt."""
    from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError, ReadTimeoutError

    # HTTPClientError covers ConnectionClosedError (a reset). Resending an Event invoke that Lambda
    # may have accepted can deliver it twice, which the handler tolerates (first writer wins).
    if isinstance(exc, (BotoConnectionError, HTTPClientError, ReadTimeoutError, ConnectionError)):
        return True
    if isinstance(exc, ClientError):
        return _is_throttle(exc) or _error_code(exc) in _TRANSIENT_CODES or _status(exc) >= 500
    return False


def lambda_client(settings: Settings, max_pool_connections: int = 10):
    """A Lambda client with botocore's retries off: callers retry with tenacity, visibly."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "total_max_attempts": 1},
                    max_pool_connections=max_pool_connections, connect_timeout=10, read_timeout=70)
    return boto3.session.Session().client("lambda", region_name=settings.region,
                                          endpoint_url=settings.lambda_endpoint_url, config=config)


def encode_event(event: Event) -> bytes:
    """The event as JSON; refuse one over Lambda's asynchronous payload limit."""
    payload = json.dumps(event.to_json(), separators=(",", ":")).encode()
    if len(payload) > MAX_EVENT_BYTES:
        raise PayloadTooLargeError(
            f"the invocation event for calls {event.calls[0]}..{event.calls[-1]} is "
            f"{len(payload):,} bytes, over Lambda's asynchronous limit of {MAX_EVENT_BYTES:,}: "
            f"use a smaller chunksize (it lists {len(event.calls)} call ids)")
    return payload


class AWSBackend(Backend):
    """Run invocations on the deployed Lambda function (``lambdamap deploy``).

    Example::

        with Executor(backend="aws", function_name="lambdamap", bucket="my-bucket",
                      region="eu-central-1") as ex:
            results = list(ex.map(simulate, range(10_000), chunksize=10))

    Settings come from :class:`lambdamap.config.Settings` (arguments, ``LAMBDAMAP_*``
    variables, config file). ``function_timeout`` defaults to the function's configured time-out.
    """

    name = "aws"
    reports_losses = False

    def __init__(self, settings: Settings, *, function_timeout: float | None = None):
        if function_timeout is not None and not 0 < function_timeout <= LAMBDA_MAX_TIMEOUT:
            raise ValueError(f"function_timeout must be in (0, {LAMBDA_MAX_TIMEOUT:.0f}] seconds: "
                             f"Lambda stops every invocation after 15 minutes, not {function_timeout}")
        self.settings = settings
        self.function_timeout = function_timeout
        self.function_config: dict = {}
        self._closing = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._client = None
        self._unsent = 0  # invocations queued or being sent
        self._sent = threading.Condition()
        self._capacity: int | None = None  # read on first use (see capacity)

    @classmethod
    def from_settings(cls, *, function_timeout: float | None = None, **options: Any) -> AWSBackend:
        """Resolve the settings from ``options``, the environment and the config file."""
        return cls(Settings.resolve(**options), function_timeout=function_timeout)

    def __repr__(self) -> str:
        return f"AWSBackend(function={self.settings.function_name!r}, region={self.settings.region!r})"

    def signing_key(self) -> bytes | None:
        """The deployment's key (``lambdamap deploy`` stored it in the config file)."""
        return bytes.fromhex(self.settings.signing_key) if self.settings.signing_key else None

    def default_storage(self) -> S3Storage:
        s = self.settings
        storage = S3Storage(s.require_bucket(), s.prefix, region=s.region,
                            endpoint_url=s.s3_endpoint_url,
                            max_pool_connections=max(64, s.invoke_threads))
        storage.check()  # a missing bucket fails here, clearly, not in the first invocation
        return storage

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, listener) -> None:
        super().start(listener)
        threads = self.settings.invoke_threads
        self._client = lambda_client(self.settings, max_pool_connections=threads + 2)
        self._inspect_function()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="lambdamap-invoke")

    def _inspect_function(self) -> None:
        """Read the function's time-out and check that its runtime speaks the client's format."""
        from botocore.exceptions import ClientError

        name = self.settings.function_name
        try:
            self.function_config = self._retrying()(self._client.get_function_configuration,
                                                  FunctionName=name)
        except ClientError as exc:
            code = _error_code(exc)
            if code == "ResourceNotFoundException":
                raise LambdamapError(
                    f"Lambda function {name!r} does not exist in region {self._client.meta.region_name}: "
                    "deploy it with `lambdamap deploy` (see docs/aws.md)") from exc
            if code not in ("AccessDeniedException", "AccessDenied"):
                raise
            log.warning("cannot read the configuration of %r (%s); assuming a time-out of %s s",
                        name, code, self.function_timeout or FALLBACK_FUNCTION_TIMEOUT)
        if self.function_timeout is None:
            self.function_timeout = float(self.function_config.get("Timeout") or FALLBACK_FUNCTION_TIMEOUT)
        self.memory_mb = self.function_config.get("MemorySize")  # named when a call goes silent
        deployed = (self.function_config.get("Environment") or {}).get("Variables") or {}
        theirs = {"wire": deployed.get("LAMBDAMAP_WIRE_VERSION"), "python": deployed.get("LAMBDAMAP_PYTHON")}
        ours = {"wire": str(wire.WIRE_VERSION), "python": wire.python_version()}
        if any(theirs[k] is not None and theirs[k] != ours[k] for k in ours):
            raise RuntimeMismatchError(
                f"function {name!r} runs wire format {theirs['wire']} on Python {theirs['python']}, "
                f"this client speaks wire format {ours['wire']} on Python {ours['python']}: run "
                "`lambdamap deploy` from this environment")
        theirs_key = deployed.get(signing.SIGNING_KEY_ENV)
        if theirs_key is not None and theirs_key != (self.settings.signing_key or ""):
            raise IntegrityError(
                f"function {name!r} has another signing key than this client "
                f"({'none' if not self.settings.signing_key else 'a different one'} here), so it "
                "would refuse every job: use the deployment's key (the config file `lambdamap "
                f"deploy` wrote, or ${signing.SIGNING_KEY_ENV})")
        if deployed.get("LAMBDAMAP_VERSION") not in (None, __version__):
            log.warning("function %r runs lambdamap %s, this client is %s (same wire format: ok)",
                        name, deployed["LAMBDAMAP_VERSION"], __version__)

    @property
    def capacity(self) -> int:
        """Invocations that can run at once: the function's reserved concurrency if it has one,
        else the account's unreserved concurrency; if neither can be read (no permission), the
        ``invoke_threads`` setting. Read once."""
        if self._capacity is None:
            self._capacity = self._read_capacity()
        return self._capacity

    def _read_capacity(self) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            reserved = self._client.get_function_concurrency(
                FunctionName=self.settings.function_name).get("ReservedConcurrentExecutions")
            if reserved:
                return int(reserved)
            return int(self._client.get_account_settings()["AccountLimit"]
                       ["UnreservedConcurrentExecutions"])
        except (BotoCoreError, ClientError, KeyError) as exc:
            log.info("cannot read the concurrency of %r (%s); assuming invoke_threads=%d",
                     self.settings.function_name, exc, self.settings.invoke_threads)
            return self.settings.invoke_threads

    def close(self) -> None:
        self._closing.set()  # ends back-off sleeps at once
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        with self._sent:  # cancelled sends never ran: nothing is left to wait for
            self._unsent = 0
            self._sent.notify_all()

    # -- invoking ----------------------------------------------------------------------------------

    def invoke(self, events: Sequence[Event]) -> None:
        if self._closing.is_set():
            raise RuntimeError("cannot invoke: the AWS backend is closed")
        for event in events:  # refuse before sending any
            encode_event(event)
        with self._sent:
            self._unsent += len(events)
        for event in events:
            self._pool.submit(self._send, event)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued invocation was accepted by Lambda or reported lost.

        False if ``timeout`` ran out first. (Results still travel through the store.)
        """
        with self._sent:
            return self._sent.wait_for(lambda: self._unsent == 0, timeout)

    def _retrying(self) -> Retrying:
        return Retrying(
            retry=retry_if_exception(_is_transient),
            stop=stop_after_attempt(self.settings.invoke_attempts) | stop_when_event_set(self._closing),
            wait=wait_random_exponential(multiplier=0.1, max=5.0),
            sleep=self._closing.wait,
            before_sleep=_log_retry,
            reraise=True,
        )

    def _send(self, event: Event) -> None:
        """Send one invocation, retrying transient faults; report it lost if that fails."""
        retrying = self._retrying()
        try:
            live = self.listener.live(event)  # calls cancelled while it waited are not sent
            if live is None:
                return
            event = live
            retrying(self._invoke_once, encode_event(event))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a reported loss
            if not self._closing.is_set():
                attempts = retrying.statistics.get("attempt_number", 1)
                self.listener.invocation_lost(event, self._describe(exc, attempts), timed_out=False)
        finally:
            with self._sent:
                self._unsent -= 1
                self._sent.notify_all()

    def _invoke_once(self, payload: bytes) -> None:
        response = self._client.invoke(FunctionName=self.settings.function_name,
                                       InvocationType="Event", Payload=payload)
        # Read the (empty) body: only then does urllib3 put the connection back in its pool;
        # otherwise every invoke would open a new connection.
        response["Payload"].read()

    def _describe(self, exc: Exception, attempts: int) -> str:
        what = str(exc) if _error_code(exc) else f"{type(exc).__name__}: {exc}"  # names its code
        if _is_throttle(exc):
            return (f"invocation of {self.settings.function_name!r} throttled on all {attempts} "
                    f"attempts ({what}); raise the function's concurrency limit or send fewer "
                    "invocations at once (larger chunksize)")
        return f"invoking {self.settings.function_name!r} failed after {attempts} attempt(s): {what}"


def _log_retry(state) -> None:
    log.warning("Lambda invoke failed (%s); retry %d", state.outcome.exception(), state.attempt_number)
