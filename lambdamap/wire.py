"""The wire format: where a job's objects live in the store and what an invocation receives.

Layout of one job (everything below ``jobs/<job_id>/``, an unguessable random id)::

    fn/<sha256>        the cloudpickled function, stored once per job (content-addressed)
    obj/<sha256>       objects passed by reference (``Executor.put``), stored once
    args/<blob>        argument batches: concatenated pickles, one per batch; an event names
                       its batch by byte range, so one upload serves many invocations
    manifest/<blob>    JSON list of the events of that blob: lets a restarted client find every
                       call of the job again (``Executor.attach``)
    result/<call>      one pickled :class:`CallRecord` per call (value or exception + output)
    status/<call>      one small JSON status per call, written after the result: its presence
                       means "finished"; the collector lists this prefix to learn what is done
    start/<invocation> written by the runtime as an invocation begins (one per invocation): the
                       client's loss deadline counts from it; the client writes ``cancelled``
                       there first to stop an invocation that has not begun
    control            JSON of the calls cancelled while invocations run (checked now and then)

The event an invocation receives is small JSON (keys, never data); see :class:`Event`. Both
sides check ``WIRE_VERSION`` and the Python minor version, because cloudpickle does not travel
across Python versions.
"""
from __future__ import annotations

import json
import pickle
import sys
import time
import traceback as traceback_module
from dataclasses import dataclass, field, replace
from typing import Iterable

from . import signing
from .errors import IntegrityError, RuntimeMismatchError

WIRE_VERSION = 2  # 2: invocation ids, start markers, the control record
CALL_ID_WIDTH = 8  # zero-padded so that keys sort in call order


def python_version() -> str:
    """This interpreter's ``major.minor``, e.g. ``"3.11"``."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def fn_key(job_id: str, digest: str) -> str:
    return f"jobs/{job_id}/fn/{digest}"


def obj_key(job_id: str, digest: str) -> str:
    return f"jobs/{job_id}/obj/{digest}"


def args_key(job_id: str, blob: int) -> str:
    return f"jobs/{job_id}/args/{blob:0{CALL_ID_WIDTH}d}"


def manifest_key(job_id: str, blob: int) -> str:
    return f"jobs/{job_id}/manifest/{blob:0{CALL_ID_WIDTH}d}"


def result_key(job_id: str, call_id: int) -> str:
    return f"jobs/{job_id}/result/{call_id:0{CALL_ID_WIDTH}d}"


def status_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/status/"


def status_key(job_id: str, call_id: int) -> str:
    return f"{status_prefix(job_id)}{call_id:0{CALL_ID_WIDTH}d}"


def call_id_of(key: str) -> int:
    """The call id at the end of a result or status key."""
    return int(key.rsplit("/", 1)[1])


# ---------------------------------------------------------------------------------------------
# Invocation markers and the job's control record


def start_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/start/"


def start_key(job_id: str, invocation: str) -> str:
    """Written by the runtime when an invocation begins: loss deadlines count from its presence."""
    return f"{start_prefix(job_id)}{invocation}"


#: The content of a start marker written by the client instead: "never run this invocation".
CANCELLED_MARK = b"cancelled"


def control_key(job_id: str) -> str:
    """JSON ``{"cancelled": [call ids] | "all"}``: what running invocations must skip."""
    return f"jobs/{job_id}/control"


# ---------------------------------------------------------------------------------------------
# Events


@dataclass(frozen=True)
class Event:
    """What one invocation receives: which function, which argument batch, which calls.

    Small JSON on the wire (keys, never data): :meth:`to_json` / :meth:`from_json`. ``calls`` are
    the call ids to run (a retry may run only the unfinished ones). ``invocation`` names this
    invocation (blob, index, attempt, sender): the runtime's start marker is written under it.
    ``manifest`` names the job's manifest for this blob: a runtime that finds it gone knows the
    job was cleaned up, and a late duplicate then does nothing.
    """

    storage: dict
    job_id: str
    fn: str
    args: str
    range: tuple[int, int]
    calls: tuple[int, ...]
    invocation: str
    attempt: int = 0
    options: dict = field(default_factory=dict)
    signed: bool = False
    manifest: str | None = None
    wire_version: int = WIRE_VERSION
    python: str = field(default_factory=lambda: python_version())

    def to_json(self) -> dict:
        """The JSON-able dict that travels to the runtime."""
        return {"wire_version": self.wire_version, "python": self.python, "storage": self.storage,
                "job_id": self.job_id, "fn": self.fn, "args": self.args, "range": list(self.range),
                "calls": list(self.calls), "invocation": self.invocation, "attempt": self.attempt,
                "options": self.options, "signed": self.signed, "manifest": self.manifest}

    @classmethod
    def from_json(cls, data: dict) -> "Event":
        """Rebuild an event; call :func:`check_event` first for a clear error on a foreign one."""
        return cls(storage=data["storage"], job_id=data["job_id"], fn=data["fn"], args=data["args"],
                   range=tuple(data["range"]), calls=tuple(data["calls"]),
                   invocation=data.get("invocation") or "", attempt=data.get("attempt", 0),
                   options=data.get("options") or {}, signed=bool(data.get("signed")),
                   manifest=data.get("manifest"), wire_version=data.get("wire_version"),
                   python=data.get("python"))

    def with_calls(self, calls: Iterable[int]) -> "Event":
        """The same invocation, running only ``calls`` (e.g. without cancelled ones)."""
        return replace(self, calls=tuple(calls))

    def retry(self, calls: Iterable[int], sender: str) -> "Event":
        """A new invocation (next attempt) of ``calls`` of this event."""
        blob, index = self.invocation.split(".")[:2] if self.invocation else ("0", "0")
        return replace(self, calls=tuple(calls), attempt=self.attempt + 1,
                       invocation=invocation_id(int(blob), int(index), self.attempt + 1, sender))


def invocation_id(blob: int, index: int, attempt: int, sender: str) -> str:
    """``blob.index.attempt.sender``: sorts in dispatch order; unique per sending client."""
    return f"{blob:0{CALL_ID_WIDTH}d}.{index:05d}.{attempt}.{sender}"


def make_event(*, storage: dict, job_id: str, fn: str, args: str, byte_range: tuple[int, int],
               calls: Iterable[int], attempt: int = 0, options: dict | None = None,
               signed: bool = False, manifest: str | None = None,
               invocation: str | None = None) -> Event:
    """An :class:`Event` (keyword form, for tests and tools)."""
    return Event(storage=storage, job_id=job_id, fn=fn, args=args, range=tuple(byte_range),
                 calls=tuple(calls), invocation=invocation or invocation_id(0, 0, attempt, "x"),
                 attempt=attempt, options=options or {}, signed=signed, manifest=manifest)


def check_event(event: dict | Event) -> None:
    """Refuse an event from a client with another wire format or Python minor version."""
    if isinstance(event, Event):
        event = event.to_json()
    theirs_wire = event.get("wire_version")
    if theirs_wire != WIRE_VERSION:
        raise RuntimeMismatchError(
            f"wire-format version mismatch: the client sent version {theirs_wire}, this runtime "
            f"speaks version {WIRE_VERSION}; redeploy the runtime (`lambdamap deploy`) with the "
            "client's lambdamap version")
    theirs_py = event.get("python")
    if theirs_py != python_version():
        raise RuntimeMismatchError(
            f"Python version mismatch: the client runs Python {theirs_py}, this runtime runs "
            f"Python {python_version()}; cloudpickle does not travel across Python versions, so "
            f"deploy a runtime for Python {theirs_py} (`lambdamap deploy` uses the client's version)")
    has_key = signing.key_for(event.get("job_id", "")) is not None
    if event.get("signed") and not has_key:
        raise IntegrityError(
            "the client signs its payloads but this runtime has no signing key: redeploy "
            f"(`lambdamap deploy`) or give the function the client's key in {signing.SIGNING_KEY_ENV}")
    if has_key and not event.get("signed"):
        raise IntegrityError("this runtime has a signing key and refuses unsigned jobs: give the "
                             "client the deployment's key (`lambdamap deploy` stores it)")


# ---------------------------------------------------------------------------------------------
# Argument batches: one pickled list of (call_id, payload) per batch; payload = pickled (args, kwargs)


def batch_label(args: str, start: int) -> str:
    return f"{args}@{start}"


def pack_batch(calls: list[tuple[int, bytes]], key: bytes | None = None, label: str = "") -> bytes:
    return signing.seal(key, label, pickle.dumps(calls, protocol=pickle.HIGHEST_PROTOCOL))


def unpack_batch(data: bytes, key: bytes | None = None, label: str = "") -> list[tuple[int, bytes]]:
    return pickle.loads(signing.unseal(key, label, data))


# ---------------------------------------------------------------------------------------------
# Results and statuses


@dataclass
class CallRecord:
    """What a call left behind: its value or exception, what it printed, and its measurements.

    The value and the exception stay pickled (``value_blob``, ``error_blob``) until the client
    asks for them; ``error_type``, ``error_message`` and ``traceback`` are plain text, so that an
    exception that cannot be rebuilt at the client still comes home readable.
    """

    call_id: int
    ok: bool
    value_blob: bytes | None = None
    error_blob: bytes | None = None
    error_type: str | None = None
    error_message: str = ""
    traceback: str = ""
    stdout: str = ""
    stderr: str = ""
    logs: str = ""
    status: dict = field(default_factory=dict)


def encode_record(record: CallRecord, key: bytes | None = None, label: str = "") -> bytes:
    return signing.seal(key, label, pickle.dumps(record.__dict__, protocol=pickle.HIGHEST_PROTOCOL))


def decode_record(data: bytes, key: bytes | None = None, label: str = "") -> CallRecord:
    return CallRecord(**pickle.loads(signing.unseal(key, label, data)))


def make_status(*, call_id: int, ok: bool, started: float, finished: float, peak_memory_mb: float,
                worker: str, warm: bool, bytes_in: int, bytes_out: int, attempt: int,
                error_type: str | None = None, peak_memory_scope: str | None = None,
                invocation: str | None = None, invocation_started: float | None = None,
                init_duration: float | None = None, log_location: dict | None = None) -> dict:
    """The JSON status of one call; the same dict is embedded in its :class:`CallRecord`.

    ``peak_memory_scope`` says what ``peak_memory_mb`` measures: ``"call"`` (the peak while this
    call ran) or ``"process"`` (the worker's lifetime peak); see ``runtime_layer/memory.py``.
    What the runtime knows of the invocation that ran the call: its id (``invocation``), when
    its handler began (``invocation_started``: Lambda bills from there), the worker process's
    start-up seconds on the first call it ran (``init_duration``: Lambda bills the INIT phase of
    a cold start) and where its logs are (``log_location``: CloudWatch ``group``, ``stream`` and
    ``request_id``, see :mod:`lambdamap.logs`); None where unknown.
    """
    return {
        "call_id": call_id, "ok": ok, "started": started, "finished": finished,
        "duration": finished - started, "peak_memory_mb": peak_memory_mb,
        "peak_memory_scope": peak_memory_scope, "worker": worker,
        "warm": warm, "bytes_in": bytes_in, "bytes_out": bytes_out, "attempt": attempt,
        "error_type": error_type, "invocation": invocation,
        "invocation_started": invocation_started, "init_duration": init_duration,
        "log_location": log_location,
    }


def encode_status(status: dict) -> bytes:
    return json.dumps(status, separators=(",", ":")).encode()


def decode_status(data: bytes) -> dict:
    return json.loads(data)


def failure_record(call_id: int, exc: BaseException, tb: str | None = None) -> CallRecord:
    """A record for a call that raised ``exc`` (or that infrastructure failed on its behalf)."""
    from . import serialize  # here, not at the top: serialize is the heavier import

    try:
        blob = serialize.dumps(exc, "exception", ship_user_modules=False)
        pickle.loads(blob)  # an exception that pickles but cannot be rebuilt travels as text only
    except BaseException:  # noqa: BLE001
        blob = None
    if tb is None:
        tb = "".join(traceback_module.format_exception(exc))
    return CallRecord(call_id=call_id, ok=False, error_blob=blob,
                      error_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
                      error_message=str(exc), traceback=tb)


def write_record(storage, job_id: str, record: CallRecord, *, started: float, bytes_in: int,
                 worker: str, warm: bool, attempt: int, peak_memory_mb: float = 0.0,
                 signing_key: bytes | None = None, peak_memory_scope: str | None = None,
                 **invocation_facts) -> bool:
    """Write a call's result, then its status; the first writer wins (``if_absent``).

    Returns whether this record is the one that counts. A call delivered twice (at-least-once
    invocation) therefore still has exactly one result. ``signing_key`` defaults to the job's
    (:func:`lambdamap.signing.key_for`). ``invocation_facts`` are :func:`make_status`'s
    ``invocation``, ``invocation_started``, ``init_duration`` and ``log_location``.
    """
    blob = record.value_blob if record.ok else record.error_blob
    record.status = make_status(
        call_id=record.call_id, ok=record.ok, started=started, finished=time.time(),
        peak_memory_mb=round(peak_memory_mb, 1), peak_memory_scope=peak_memory_scope, worker=worker,
        warm=warm, bytes_in=bytes_in, bytes_out=len(blob or b""), attempt=attempt,
        error_type=record.error_type, **invocation_facts)
    key = result_key(job_id, record.call_id)
    if signing_key is None:
        signing_key = signing.key_for(job_id)
    won = storage.put(key, encode_record(record, signing_key, key), if_absent=True)
    # The status follows even if another delivery won the result: that one may have died between
    # its two writes, and a result without a status would never be collected.
    storage.put(status_key(job_id, record.call_id), encode_status(record.status), if_absent=True)
    return won
