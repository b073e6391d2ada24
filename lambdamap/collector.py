"""The collector: learns from the store which calls finished and fills their futures.

It does not poll per call: each poll is one ``list`` of the job's status prefix, starting after
the oldest call still outstanding, then one ``get`` per newly finished call (in parallel on S3).
The poll interval adapts: it shrinks to ``min_interval`` while results arrive and doubles up to
``max_interval`` while none do. A backend that knows which calls finished (the local one) can
``wake`` it with their ids: their results are then read without listing at all.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Container

from . import serialize, wire
from .errors import IntegrityError, RemoteError, RemoteTraceback
from .storage import LocalStorage, Storage

log = logging.getLogger(__name__)


class Collector:
    """Background thread that turns status/result records into future results."""

    def __init__(self, storage: Storage, job_id: str, signing_key: bytes | None,
                 on_record: Callable[[wire.CallRecord], None], pending: Container[int],
                 low: Callable[[], int | None], *, min_interval: float, max_interval: float,
                 fetch_threads: int = 32, after_poll: Callable[[], None] | None = None):
        self.storage, self.job_id, self.signing_key = storage, job_id, signing_key
        # ``pending`` holds the ids of calls not yet collected; ``low()`` is the smallest of them.
        self.pending, self.low = pending, low
        self.on_record, self.after_poll = on_record, after_poll
        self.min_interval, self.max_interval = min_interval, max_interval
        self._wake = threading.Event()
        self._hints: list[int] = []  # call ids a backend says have finished
        self._stop = False
        self.lists = 0  # LIST requests made (pages), for the cost estimate
        # A folder answers a read in microseconds: threads would only add overhead there.
        self._fetcher = None if isinstance(storage, LocalStorage) else ThreadPoolExecutor(
            fetch_threads, thread_name_prefix="lambdamap-fetch")
        self._thread = threading.Thread(target=self._run, name="lambdamap-collector", daemon=True)
        self._thread.start()

    def wake(self, finished=None) -> None:
        if finished:
            self._hints.extend(finished)  # list.extend is atomic under the GIL
        self._wake.set()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=30)
        if self._fetcher is not None:
            self._fetcher.shutdown(wait=True)

    def _run(self) -> None:
        interval = self.min_interval
        while not self._stop:
            self._wake.wait(interval)
            self._wake.clear()
            if self._stop:
                return
            hints, self._hints = self._hints, []
            # Nothing may kill this thread (every future would hang): a failing store, or a
            # SystemExit from a user's class while a result is unpickled, is reported and survived.
            try:
                found = self.fetch(hints) if hints else self.poll()
            except BaseException:  # noqa: BLE001
                log.exception("lambdamap collector: polling the store failed; retrying")
                found = 0
            if self.after_poll is not None:
                try:
                    self.after_poll()
                except BaseException:  # noqa: BLE001
                    log.exception("lambdamap collector: checking invocations failed; retrying")
            interval = self.min_interval if found else min(interval * 2, self.max_interval)

    def poll(self) -> int:
        """One round: list finished calls, fetch their records, hand them over. Returns the count."""
        low = self.low()
        if low is None:
            return 0
        start_after = wire.status_key(self.job_id, low - 1) if low > 0 else None
        keys = self.storage.list(wire.status_prefix(self.job_id), start_after=start_after)
        self.lists += 1 + len(keys) // 1000
        return self.fetch(map(wire.call_id_of, keys))

    def fetch(self, call_ids) -> int:
        """Read the results of those ``call_ids`` that are still pending; return how many."""
        done = [cid for cid in dict.fromkeys(call_ids) if cid in self.pending]
        if not done:
            return 0
        keys = [wire.result_key(self.job_id, cid) for cid in done]
        blobs = map(self.storage.get, keys) if self._fetcher is None else self._fetcher.map(self.storage.get, keys)
        for cid, key, blob in zip(done, keys, blobs):
            try:
                record = wire.decode_record(blob, self.signing_key, key)
            except IntegrityError as exc:
                record = self._refused(cid, exc)
            self.on_record(record)
        return len(done)

    def _refused(self, call_id: int, exc: IntegrityError) -> wire.CallRecord:
        """A failure record for a result that failed authentication; it is never unpickled.

        The status JSON (plain text, never unpickled) may say what the runtime reported, e.g. a
        runtime without the signing key; that text is added as a hint.
        """
        hint = ""
        try:
            status = wire.decode_status(self.storage.get(wire.status_key(self.job_id, call_id)))
            if status.get("error_type"):
                hint = f" (its status says the runtime reported {status['error_type']})"
        except Exception:  # noqa: BLE001 - the hint is best effort
            pass
        error = IntegrityError(f"the result of call {call_id}: {exc}{hint}")
        return wire.failure_record(call_id, error, tb="")


def outcome(record: wire.CallRecord):
    """``(value, None)`` or ``(None, exception)`` for a record; the remote traceback is the cause."""
    if record.ok:
        return serialize.loads(record.value_blob), None
    exc = None
    if record.error_blob is not None:
        try:
            exc = serialize.loads(record.error_blob)
        except Exception:  # noqa: BLE001 - e.g. its class does not exist here
            exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteError(record.error_type or "Exception", record.error_message)
    if record.traceback:
        exc.__cause__ = RemoteTraceback(record.traceback)
    return None, exc
