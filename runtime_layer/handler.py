"""The universal handler: the one function that every invocation runs, on every backend.

``handler(event, context)`` reads the job named by the event from the store, runs its batch of
calls one after another, and for each call writes a result record, then a status record. It is the
AWS Lambda entry point (``runtime_layer.handler.handler``) and exactly what the local backend's
worker processes run. Module-level caches survive between invocations of a warm worker.
"""
from __future__ import annotations

import time

_IMPORT_STARTED = time.time()  # before the imports below: they are part of the worker's start-up

import contextlib
import io
import json
import logging
import os
import signal
import socket
import threading
import traceback

from lambdamap import serialize, signing, wire
from lambdamap.errors import (CallTimeoutError, IntegrityError, InvocationDeadline,
                             PayloadTooLargeError, SerializationError)
from lambdamap.logs import LogLocation, announcement
from lambdamap.objects import resolve, running_job
from lambdamap.storage import Storage, storage_from_spec
from runtime_layer.memory import PeakMemory

log = logging.getLogger("lambdamap.runtime")

WORKER_ID = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME") or f"{socket.gethostname()}:{os.getpid()}"
#: How often a running invocation reads the job's control record (cancellations), at most.
CONTROL_CHECK_SECONDS = 1.0
_invocations = 0  # > 0 means this process is warm
_functions: dict[str, object] = {}


def _process_age() -> float:
    """Seconds since this process started (Linux: both clocks count from boot, in ticks of
    10 ms), else since this module began to load."""
    fallback = time.time() - _IMPORT_STARTED
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start, in clock ticks
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return fallback
    age = uptime - ticks / os.sysconf("SC_CLK_TCK")
    return age if age >= fallback else fallback


#: Seconds from this process's start until the handler was ready: its part of Lambda's billed
#: INIT phase (reported with the first call the process runs, see :func:`_invocation_facts`).
INIT_SECONDS = _process_age()
_init_reported = False


def handler(event: dict, context=None) -> dict:
    """Run the calls of one invocation event; return a small summary (never the results)."""
    if isinstance(event, dict) and "lambdamap_probe" in event:  # the client asks what runs here
        from lambdamap.versions import describe
        return describe(event.get("packages") or ())
    global _invocations
    if isinstance(event, wire.Event):  # called in-process (tests, tools) rather than by Lambda
        event = event.to_json()
    invocation_started = time.time()
    warm = _invocations > 0
    _invocations += 1
    location = LogLocation.of_context(context)
    facts = {"invocation": event.get("invocation"), "invocation_started": invocation_started,
             "log_location": location.to_json() if location else None}
    storage = storage_from_spec(event["storage"])
    job_id, calls = event["job_id"], list(event["calls"])
    try:
        wire.check_event(event)
        ev = wire.Event.from_json(event)
        key = signing.key_for(job_id)
        if not _begin(storage, ev, key, location):
            log.info("invocation %s of job %s was cancelled before it began", ev.invocation, job_id)
            return _summary(calls, warm, not_run=[], skipped=calls)
        start, end = ev.range
        try:
            raw = storage.get(ev.args, (start, end))
        except KeyError:
            if _job_is_gone(storage, ev):
                log.warning("job %s is gone from the store; skipping %d calls", job_id, len(calls))
                _forget_start(storage, ev)
                return _summary(calls, warm, not_run=[], skipped=calls)
            raise
        batch = dict(wire.unpack_batch(raw, key, wire.batch_label(ev.args, start)))
        fn = _load_function(storage, ev.fn, key)
    except BaseException as exc:  # a job-level failure: every call of the batch reports it
        log.error("invocation of job %s failed before its calls ran: %s", job_id, exc)
        started = time.time()
        for call_id in calls:
            _write(storage, job_id, wire.failure_record(call_id, exc, traceback.format_exc()), started,
                   0, warm, event.get("attempt", 0), facts)
        return _summary(calls, warm, not_run=[], failed=True)

    deadline = _deadline(context)
    control = _Control(storage, ev, key)
    options = ev.options
    for i, call_id in enumerate(calls):
        if deadline is not None and time.monotonic() >= deadline:
            return _summary(calls, warm, not_run=calls[i:])
        if i > 0 and control.due():
            control.refresh()
            if control.job_gone:
                return _summary(calls, warm, not_run=[], skipped=calls[i:])
        if control.cancelled(call_id):
            continue
        payload = batch[call_id]
        started = time.time()
        with _alarm_at(deadline):
            record = _run(fn, payload, call_id, options.get("max_result_bytes"),
                          timeout=options.get("function_timeout"), job_id=job_id,
                          logs_hint=_logs_hint(location, job_id, call_id))
        if i > 0 and _stopped_by_deadline(record, deadline):
            # Earlier calls used part of the budget: this call gets the whole of it again, first
            # in a new invocation, rather than failing for a time-out that is not its own.
            return _summary(calls, warm, not_run=calls[i:])
        _write(storage, job_id, record, started, len(payload), warm, ev.attempt, facts)
        warm = True  # the first call of a cold invocation paid the start-up; the rest did not
        if control.due():  # cleaned up while this call ran? then take back what it wrote
            control.refresh()
            if control.job_gone:
                storage.delete(wire.result_key(job_id, call_id))
                storage.delete(wire.status_key(job_id, call_id))
                return _summary(calls, warm, not_run=[], skipped=calls[i + 1:])
    return _summary(calls, warm, not_run=[])


def _begin(storage: Storage, event: wire.Event, key: bytes | None,
           location: LogLocation | None = None) -> bool:
    """Write the invocation's start marker; False if the client cancelled it first.

    One request per invocation: the client's loss deadline counts from this marker, so an
    invocation that waited long in Lambda's queue is not mistaken for a lost one. On Lambda the
    marker holds where the invocation's logs are (for the error of a call it loses), and one line
    in those logs names the job and calls (for ``lambdamap logs``).
    """
    if location is not None:
        print(announcement(event.job_id, event.invocation, event.attempt, location.request_id,
                           list(event.calls)), flush=True)
    if not event.invocation:
        return True
    marker = wire.start_key(event.job_id, event.invocation)
    body = json.dumps({"worker": WORKER_ID, "started": time.time(), "attempt": event.attempt,
                       "logs": location.to_json() if location else None})
    if storage.put(marker, signing.seal(key, marker, body.encode()), if_absent=True):
        return True
    try:  # a duplicate delivery, or the client's "cancelled"
        return signing.unseal(key, marker, storage.get(marker)) != wire.CANCELLED_MARK
    except (KeyError, IntegrityError):
        return True


def _forget_start(storage: Storage, event: wire.Event) -> None:
    if event.invocation:
        storage.delete(wire.start_key(event.job_id, event.invocation))


def _stopped_by_deadline(record: wire.CallRecord, deadline: float | None) -> bool:
    return (deadline is not None and time.monotonic() >= deadline and not record.ok
            and record.error_type == f"{CallTimeoutError.__module__}.{CallTimeoutError.__qualname__}")


class _Control:
    """What the client decided while this invocation runs: calls cancelled, or the whole job
    (its data deleted). Read at most every ``CONTROL_CHECK_SECONDS``, never before the first
    call, so that short invocations pay nothing for it."""

    def __init__(self, storage: Storage, event: wire.Event, key: bytes | None):
        self.storage, self.event, self.key = storage, event, key
        self.checked = time.monotonic()
        self.cancelled_ids: set[int] | str = set()
        self.job_gone = False

    def due(self) -> bool:
        return time.monotonic() - self.checked >= CONTROL_CHECK_SECONDS

    def refresh(self) -> None:
        self.checked = time.monotonic()
        key = wire.control_key(self.event.job_id)
        try:  # the client writes it before the job's first invocation and deletes it with the job
            body = json.loads(signing.unseal(self.key, key, self.storage.get(key)))
        except KeyError:
            self.job_gone = True
            return
        cancelled = body.get("cancelled", [])
        self.cancelled_ids = "all" if cancelled == "all" else set(cancelled)

    def cancelled(self, call_id: int) -> bool:
        return self.cancelled_ids == "all" or call_id in self.cancelled_ids


def _job_is_gone(storage: Storage, event: wire.Event) -> bool:
    """Whether the job was cleaned up (its manifest is gone too): the event is a late duplicate
    (at-least-once delivery) or a retry that lost the race, and writing would leave orphans.

    Asked only when the arguments are missing, so that it costs nothing on the normal path.
    """
    return bool(event.manifest) and not storage.exists(event.manifest)


def _summary(calls: list[int], warm: bool, not_run: list[int], failed: bool = False,
             skipped: list[int] | None = None) -> dict:
    """What the invocation returns: counts, the calls it had no time left to start (to run
    again), and those it skipped because they were cancelled or the job is gone."""
    return {"calls": len(calls), "warm": warm, "worker": WORKER_ID, "failed": failed,
            "not_run": not_run, "skipped": skipped or []}


# -- the invocation's own deadline ----------------------------------------------------------------
#
# Lambda kills an invocation at its time-out and leaves nothing behind. The handler stops a call
# a little earlier (SIGALRM), so that the call fails with a CallTimeoutError record naming it, and
# the calls that did not start are returned as ``not_run`` instead of being lost with it.


_Deadline = InvocationDeadline  # raised by the alarm

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
    """Collects the log records of the call being run (one instance, a fresh buffer per call).

    It takes INFO and above from every logger the user did not set to a higher level. The root
    logger's WARNING default would drop INFO records before any handler sees them, so during the
    call the root level is lowered to INFO, and the root's other handlers (e.g. Lambda's own,
    which feeds CloudWatch) get a filter that keeps from them what the old level would have
    dropped. Both are undone after the call, unless the call set the root level itself.
    """

    def __init__(self):
        super().__init__(logging.NOTSET)
        self.buffer = io.StringIO()
        self.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
        self._level_before = logging.NOTSET

    def emit(self, record: logging.LogRecord) -> None:
        self.buffer.write(self.format(record) + "\n")

    @contextlib.contextmanager
    def capturing(self, buffer: io.StringIO):
        self.buffer = buffer
        root = logging.getLogger()
        self._level_before = before = root.level
        lowered = before > logging.INFO
        others = list(root.handlers)
        if lowered:
            root.setLevel(logging.INFO)
            for handler in others:
                handler.addFilter(self._passed_before)
        root.addHandler(self)
        try:
            yield
        finally:
            root.removeHandler(self)
            if lowered:
                for handler in others:
                    handler.removeFilter(self._passed_before)
                if root.level == logging.INFO:
                    root.setLevel(before)

    def _passed_before(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` would have been logged under the root's level before the call:
        it is at or above that level, or its logger (or a parent below root) has a level of its own."""
        if record.levelno >= self._level_before:
            return True
        logger = logging.getLogger(record.name)
        while logger.parent is not None:
            if logger.level != logging.NOTSET:
                return True
            logger = logger.parent
        return False


_log_capture = _LogCapture()
_peak_memory = PeakMemory()


def _run(fn, payload: bytes, call_id: int, max_result_bytes: int | None,
         timeout: float | None = None, job_id: str | None = None,
         logs_hint: str = "") -> wire.CallRecord:
    """Run one call, capturing what it prints and logs, and encode its outcome.

    ``job_id`` is the call's job: an :class:`~lambdamap.ObjectRef` of another job is refused.
    ``logs_hint`` ends the message of a call stopped at the time-out (where its logs are).
    """
    out, err, logs = io.StringIO(), io.StringIO(), io.StringIO()
    _peak_memory.reset()
    with _log_capture.capturing(logs), running_job(job_id), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args, kwargs = serialize.loads(payload)
            args, kwargs = resolve(args, kwargs)
            value = fn(*args, **kwargs)
        except _Deadline:
            error = CallTimeoutError(
                f"call {call_id} ran past the function time-out"
                f"{f' of {timeout} s' if timeout else ''} and was stopped{logs_hint}")
            record = wire.failure_record(call_id, error, traceback.format_exc())
        except BaseException as exc:  # noqa: BLE001 - a user's SystemExit comes home too
            record = wire.failure_record(call_id, exc, traceback.format_exc())
        else:
            try:
                blob = serialize.dumps(value, f"the result of call {call_id}",
                                       ship_user_modules=False)
                if max_result_bytes and len(blob) > max_result_bytes:
                    raise PayloadTooLargeError(
                        f"the result of call {call_id} pickles to {len(blob) / 2**20:.1f} MiB, "
                        f"above max_result_bytes={max_result_bytes / 2**20:.1f} MiB: return "
                        "less (e.g. write large output to storage yourself) or raise the limit")
                record = wire.CallRecord(call_id=call_id, ok=True, value_blob=blob)
            except (SerializationError, PayloadTooLargeError) as exc:
                record = wire.failure_record(call_id, exc, traceback.format_exc())
    record.stdout, record.stderr, record.logs = out.getvalue(), err.getvalue(), logs.getvalue()
    return record


def _write(storage: Storage, job_id: str, record: wire.CallRecord, started: float,
           bytes_in: int, warm: bool, attempt: int, facts: dict) -> None:
    """Write the call's record with its peak memory (see :mod:`runtime_layer.memory`) and the
    invocation's ``facts`` (see :func:`lambdamap.wire.make_status`)."""
    wire.write_record(storage, job_id, record, started=started, bytes_in=bytes_in,
                      worker=WORKER_ID, warm=warm, attempt=attempt,
                      peak_memory_mb=_peak_memory.peak_mb(), peak_memory_scope=_peak_memory.scope,
                      **_invocation_facts(facts))


def _invocation_facts(facts: dict) -> dict:
    """``facts`` plus the process's start-up seconds on the first record it writes (once: Lambda
    bills the INIT phase once per execution environment)."""
    global _init_reported
    if _init_reported:
        return {**facts, "init_duration": None}
    _init_reported = True
    return {**facts, "init_duration": round(INIT_SECONDS, 3)}


def _logs_hint(location: LogLocation | None, job_id: str, call_id: int) -> str:
    if location is None:
        return ""
    return f"; its logs: {location.describe()} (`lambdamap logs {job_id} {call_id}`)"
