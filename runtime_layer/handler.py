"""The universal handler: the one function that every invocation runs, on every backend.

``handler(event, context)`` reads the job named by the event from the store, runs its batch of
calls one after another, and for each call writes a result record, then a status record. It is the
AWS Lambda entry point (``runtime_layer.handler.handler``) and exactly what the local backend's
worker processes run. Module-level caches survive between invocations of a warm worker.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import resource
import signal
import socket
import threading
import time
import traceback

from lambdamap import serialize, signing, wire
from lambdamap.errors import CallTimeoutError, PayloadTooLargeError, SerializationError
from lambdamap.objects import resolve
from lambdamap.storage import Storage, storage_from_spec

log = logging.getLogger("lambdamap.runtime")

WORKER_ID = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME") or f"{socket.gethostname()}:{os.getpid()}"
_invocations = 0  # > 0 means this process is warm
_functions: dict[str, object] = {}


def handler(event: dict, context=None) -> dict:
    """Run the calls of one invocation event; return a small summary (never the results)."""
    if isinstance(event, dict) and "lambdamap_probe" in event:  # the client asks what runs here
        from lambdamap.versions import describe
        return describe(event.get("packages") or ())
    global _invocations
    warm = _invocations > 0
    _invocations += 1
    storage = storage_from_spec(event["storage"])
    job_id, attempt, options = event["job_id"], event.get("attempt", 0), event.get("options", {})
    calls = event["calls"]
    try:
        wire.check_event(event)
        key = signing.key_for(job_id)
        start, end = event["range"]
        try:
            raw = storage.get(event["args"], (start, end))
        except KeyError:
            if _job_is_gone(storage, event):
                log.warning("job %s is gone from the store; skipping %d calls", job_id, len(calls))
                return _summary(calls, warm, not_run=[])
            raise
        batch = dict(wire.unpack_batch(raw, key, wire.batch_label(event["args"], start)))
        fn = _load_function(storage, event["fn"], key)
    except BaseException as exc:  # a job-level failure: every call of the batch reports it
        log.error("invocation of job %s failed before its calls ran: %s", job_id, exc)
        started = time.time()
        for call_id in calls:
            _write(storage, job_id, wire.failure_record(call_id, exc, traceback.format_exc()), started,
                   0, warm, attempt)
        return _summary(calls, warm, not_run=[], failed=True)

    deadline = _deadline(context)
    for i, call_id in enumerate(calls):
        if deadline is not None and time.monotonic() >= deadline:
            return _summary(calls, warm, not_run=calls[i:])
        payload = batch[call_id]
        started = time.time()
        with _alarm_at(deadline):
            record = _run(fn, payload, call_id, options.get("max_result_bytes"),
                          timeout=options.get("function_timeout"))
        _write(storage, job_id, record, started, len(payload), warm, attempt)
        warm = True  # the first call of a cold invocation paid the start-up; the rest did not
        # (a call stopped by the alarm leaves the clock past the deadline: the check above then
        # hands back the calls that did not start)
    return _summary(calls, warm, not_run=[])


def _job_is_gone(storage: Storage, event: dict) -> bool:
    """Whether the job was cleaned up (its manifest is gone too): the event is a late duplicate
    (at-least-once delivery) or a retry that lost the race, and writing would leave orphans.

    Asked only when the arguments are missing, so that it costs nothing on the normal path.
    """
    return bool(event.get("manifest")) and not storage.exists(event["manifest"])


def _summary(calls: list[int], warm: bool, not_run: list[int], failed: bool = False) -> dict:
    """What the invocation returns: counts, and the calls it had no time left to start."""
    return {"calls": len(calls), "warm": warm, "worker": WORKER_ID, "failed": failed,
            "not_run": not_run}


# -- the invocation's own deadline ----------------------------------------------------------------
#
# Lambda kills an invocation at its time-out and leaves nothing behind. The handler stops a call
# a little earlier (SIGALRM), so that the call fails with a CallTimeoutError record naming it, and
# the calls that did not start are returned as ``not_run`` instead of being lost with it.


class _Deadline(BaseException):
    """Raised by the alarm; a BaseException so that the user's ``except Exception`` can't eat it."""


def _deadline(context) -> float | None:
    """``time.monotonic()`` at which to stop: the remaining time less a margin (at most 2 s)."""
    remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
    if remaining_ms is None:
        return None
    remaining = remaining_ms() / 1000
    if remaining > 7 * 24 * 3600:  # "no limit"
        return None
    return time.monotonic() + remaining - min(2.0, 0.1 * remaining)


@contextlib.contextmanager
def _alarm_at(deadline: float | None):
    if deadline is None or threading.current_thread() is not threading.main_thread():
        yield  # signals only reach the main thread; the backend's hard limit still applies
        return

    def on_alarm(signum, frame):
        raise _Deadline()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(deadline - time.monotonic(), 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _load_function(storage: Storage, key: str, signing_key: bytes | None):
    fn = _functions.get(key)
    if fn is None:
        fn = serialize.loads(signing.unseal(signing_key, key, storage.get(key)))
        if len(_functions) >= 32:
            _functions.pop(next(iter(_functions)))
        _functions[key] = fn
    return fn


class _LogCapture(logging.Handler):
    """Collects the log records of the call being run (one instance, a fresh buffer per call)."""

    def __init__(self):
        super().__init__(logging.NOTSET)
        self.buffer = io.StringIO()
        self.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.buffer.write(self.format(record) + "\n")


_log_capture = _LogCapture()


def _run(fn, payload: bytes, call_id: int, max_result_bytes: int | None,
         timeout: float | None = None) -> wire.CallRecord:
    """Run one call, capturing what it prints and logs, and encode its outcome."""
    out, err, logs = io.StringIO(), io.StringIO(), io.StringIO()
    capture = _log_capture
    capture.buffer = logs
    root = logging.getLogger()
    root.addHandler(capture)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                args, kwargs = serialize.loads(payload)
                args, kwargs = resolve(args, kwargs)
                value = fn(*args, **kwargs)
            except _Deadline:
                error = CallTimeoutError(
                    f"call {call_id} ran past the function time-out"
                    f"{f' of {timeout} s' if timeout else ''} and was stopped")
                record = wire.failure_record(call_id, error, traceback.format_exc())
            except BaseException as exc:  # noqa: BLE001 - a user's SystemExit comes home too
                record = wire.failure_record(call_id, exc, traceback.format_exc())
            else:
                try:
                    blob = serialize.dumps(value, f"the result of call {call_id}")
                    if max_result_bytes and len(blob) > max_result_bytes:
                        raise PayloadTooLargeError(
                            f"the result of call {call_id} pickles to {len(blob) / 2**20:.1f} MiB, "
                            f"above max_result_bytes={max_result_bytes / 2**20:.1f} MiB: return "
                            "less (e.g. write large output to storage yourself) or raise the limit")
                    record = wire.CallRecord(call_id=call_id, ok=True, value_blob=blob)
                except (SerializationError, PayloadTooLargeError) as exc:
                    record = wire.failure_record(call_id, exc, traceback.format_exc())
    finally:
        root.removeHandler(capture)
    record.stdout, record.stderr, record.logs = out.getvalue(), err.getvalue(), logs.getvalue()
    return record


def _write(storage: Storage, job_id: str, record: wire.CallRecord, started: float,
           bytes_in: int, warm: bool, attempt: int) -> None:
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    wire.write_record(storage, job_id, record, started=started, bytes_in=bytes_in,
                      worker=WORKER_ID, warm=warm, attempt=attempt, peak_memory_mb=peak_mb)
