"""The AWS backend: one asynchronous Lambda invocation of the universal handler per batch.

``invoke`` queues events; a bounded pool of threads sends each with
``lambda.invoke(InvocationType="Event")`` and returns as soon as Lambda has accepted it (HTTP 202).
Events carry keys, never data: the arguments are already in S3, so an event is a few hundred
bytes, far below Lambda's asynchronous payload limit. Results travel only through S3.

Before any invocation the backend checks that the function runs what the client runs (Python,
wire format, package versions: :mod:`lambdamap.versions`), from the record ``lambdamap deploy``
left in the function's environment and from one synchronous probe of the runtime itself.

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

import functools
import json
import logging
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from tenacity import (Retrying, retry_if_exception, stop_after_attempt, stop_when_event_set,
                      wait_random_exponential)

from .. import signing, versions
from ..config import Settings
from ..errors import IntegrityError, LambdamapError, PayloadTooLargeError, RuntimeMismatchError
from ..storage import S3Storage
from ..wire import Event
from .base import Backend

log = logging.getLogger(__name__)

#: The largest event lambdamap sends. Lambda accepts asynchronous (``Event``) payloads up to
#: 1 MB since October 2025 (256 KB before). lambdamap keeps 256 KB on purpose: an event carries
#: keys and call ids only (about 9 bytes per call), so 256 KB is a batch of some 25,000 calls, far
#: beyond any useful ``chunksize``, and staying under the old limit keeps endpoints that still
#: enforce it working (partitions or Lambda-compatible servers that have not caught up).
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


#: Probe answers per function revision (:meth:`AWSBackend._revision`): a function's runtime
#: cannot change without a new revision.
_probes: dict[tuple[str, str], dict] = {}


def probe_runtime(client, function_name: str, packages: Sequence[str] = (), *,
                  revision: tuple[str, str] | None = None, retrying=None) -> dict[str, Any]:
    """Ask the deployed runtime, synchronously, which Python and package versions it runs.

    One ``RequestResponse`` invocation of the universal handler with ``{"lambdamap_probe": 1}``
    (:func:`lambdamap.versions.describe` answers). ``revision`` (ARN, RevisionId) caches the
    answer for this process. Raises :class:`LambdamapError` saying why there is no answer.
    """
    if revision is not None and revision in _probes:
        return _probes[revision]
    payload = json.dumps({"lambdamap_probe": 1, "packages": list(packages)}).encode()
    call = functools.partial(client.invoke, FunctionName=function_name,
                             InvocationType="RequestResponse", Payload=payload)
    try:
        response = retrying(call) if retrying is not None else call()
        body = response["Payload"].read()
    except Exception as exc:  # noqa: BLE001 - any failure: the caller decides how loud to be
        raise LambdamapError(f"could not ask function {function_name!r} which versions it runs "
                             f"({type(exc).__name__}: {exc})") from exc
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if response.get("FunctionError") or not isinstance(answer, dict) or \
            not isinstance(answer.get("versions"), dict):
        raise LambdamapError(
            f"function {function_name!r} does not answer lambdamap's version probe (a runtime "
            f"deployed by an older lambdamap, or not lambdamap's handler): {body[:300]!r}; "
            "redeploy with `lambdamap deploy`")
    if revision is not None:
        _probes[revision] = answer
    return answer


class AWSBackend(Backend):
    """Run invocations on the deployed Lambda function (``lambdamap deploy``).

    Example::

        with Executor(backend="aws", function_name="lambdamap", bucket="my-bucket",
                      region="eu-central-1") as ex:
            results = list(ex.map(simulate, range(10_000), chunksize=10))

    Settings come from :class:`lambdamap.config.Settings` (arguments, ``LAMBDAMAP_*``
    variables, config file). ``function_timeout`` defaults to the function's configured time-out.

    At start the client compares the function's runtime with itself (:mod:`lambdamap.versions`):
    what deploy recorded, and, with ``runtime_probe`` (default on), what the runtime reports to one
    synchronous invocation. Another Python or wire format raises ``RuntimeMismatchError``; so do
    package differences that make results fail, unless ``version_check="warn"``; smaller
    differences warn (``RuntimeVersionWarning``) with a table of both sides.
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
        self.versions: versions.Comparison | None = None  # client against runtime, after start

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
        """Read the function's time-out; check that its runtime runs what this client runs.

        First against what ``lambdamap deploy`` recorded in the function's environment (no
        invocation needed), then, with ``runtime_probe`` on, against the runtime's own answer
        (:mod:`lambdamap.versions`).
        """
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
        record = versions.parse_record(deployed)
        client = versions.describe((record or {}).get("versions") or ())
        strict = self.settings.version_check == "strict"
        what = f"function {name!r}"
        self.versions = versions.compare(client, record, None)
        if self.versions.fatal:  # another Python or wire format: no need to ask the runtime
            self.versions.enforce(what)
        theirs_key = deployed.get(signing.SIGNING_KEY_ENV)
        if theirs_key is not None and theirs_key != (self.settings.signing_key or ""):
            raise IntegrityError(
                f"function {name!r} has another signing key than this client "
                f"({'none' if not self.settings.signing_key else 'a different one'} here), so it "
                "would refuse every job: use the deployment's key (the config file `lambdamap "
                f"deploy` wrote, or ${signing.SIGNING_KEY_ENV})")
        if self.settings.runtime_probe:
            try:
                probe = probe_runtime(self._client, name, list(client["versions"]),
                                      revision=self._revision(), retrying=self._retrying())
            except LambdamapError as exc:
                warnings.warn(versions.RuntimeVersionWarning(
                    f"{exc}; comparing with what `lambdamap deploy` recorded instead"), stacklevel=4)
            else:
                self.versions = versions.compare(client, record, probe)
        self.versions.enforce(what, strict=strict)

    def _revision(self) -> tuple[str, str] | None:
        """The function as deployed now: Lambda changes RevisionId (and LastModified) on every
        update of its code or configuration, layers included; None if it says neither."""
        config = self.function_config
        revision = config.get("RevisionId") or config.get("LastModified")
        if config.get("FunctionArn") and revision:
            return config["FunctionArn"], f"{revision} {config.get('CodeSha256', '')}"
        return None

    def runtime_versions(self) -> dict[str, str | None] | None:
        """What the function runs: its answer to the probe, else what deploy recorded."""
        return self.versions.runtime_versions() if self.versions is not None else None

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
