"""``Executor``: a ``concurrent.futures.Executor`` whose calls run as serverless invocations.

How a call travels: ``submit``/``map`` pickle the function (once per job) and the arguments
(packed per batch of ``chunksize`` calls) and write them to the store (:mod:`lambdamap.jobs`);
the backend starts one invocation per batch. Every invocation runs the universal handler, which
marks its start and writes one result and one status record per call. The collector
(:mod:`lambdamap.collector`) lists the statuses, reads the results and fills the futures. The
ledger (:mod:`lambdamap.ledger`) keeps what is outstanding and decides what a lost invocation
means: run its calls again, or fail the one that was running.

Lifecycle: ``shutdown()`` (or leaving ``with``) waits for the calls, then releases workers and
the job's data; leaving ``with`` by an exception (Ctrl-C included) cancels the job instead. An
executor never shut down is shut down at interpreter exit like the stdlib's executors.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import json
import logging
import os
import secrets
import shutil
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from . import objects, scratch, signing, wire
from .backends.base import Backend
from .collector import Collector, outcome
from .errors import IntegrityError, SerializationError
from .factories import embedded_store, make_backend, make_storage
from .futures import CallFuture
from .jobs import JobWriter
from .ledger import Ledger
from .objects import ObjectRef
from .storage import LocalStorage, Storage

if TYPE_CHECKING:
    import pandas as pd

    from .cost import CostEstimate

log = logging.getLogger(__name__)

# Default bounds on one call's pickled arguments and result; larger data goes by reference.
MAX_ARGUMENT_BYTES = 64 * 2**20
MAX_RESULT_BYTES = 256 * 2**20
#: How often (seconds) the client lists the start markers of invocations it has not seen start.
START_LIST_INTERVAL = 2.0
#: How often (seconds) cancellations are written for running invocations to see, at most.
CONTROL_WRITE_INTERVAL = 0.5

METRICS_COLUMNS = ["call_id", "submitted", "started", "finished", "duration", "peak_memory_mb",
                   "peak_memory_scope", "worker", "warm", "bytes_in", "bytes_out", "attempt", "ok",
                   "error_type", "cancelled", "invocation", "invocation_started", "init_duration"]
METRICS_ORDER = ["call_id", "submitted", "started", "finished", "duration", "queue_delay", "cold",
                 "warm", "peak_memory_mb", "peak_memory_scope", "worker", "bytes_in", "bytes_out",
                 "attempt", "ok", "error_type", "cancelled", "invocation", "invocation_started",
                 "init_duration"]


class Executor(concurrent.futures.Executor):
    """Run Python calls as serverless invocations; the embedded default needs no account.

    Example::

        from lambdamap import Executor
        with Executor() as ex:                   # local worker processes, temp-folder store
            squares = list(ex.map(lambda x: x * x, range(1000)))
            assert ex.submit(pow, 2, 10).result() == 1024

    Args:
        backend: ``"local"`` (worker processes on this machine), ``"aws"`` or a
            :class:`Backend` instance. An int means ``"local"`` with that many workers, so that
            ``Executor(4)`` works as ``ProcessPoolExecutor(4)`` does.
        max_workers: local: the number of worker processes (default one per core); AWS: a cap
            on the invocations in flight at once (default none: Lambda queues what exceeds the
            function's concurrency). ``workers`` is the same for the local backend.
        storage: where the job's objects live: a :class:`Storage`, a folder path or
            ``"s3://bucket/prefix"``; default the backend's (a fresh folder, in RAM if possible).
        function_timeout: seconds one invocation may run (default: none locally, the function's
            configuration on AWS). Every call gets the whole budget: a call cut short because
            earlier calls of its batch used time runs again in a fresh invocation; a call that
            alone overruns it fails with :class:`CallTimeoutError`.
        max_retries: how often a call whose worker was lost is run again before it fails with
            :class:`WorkerLostError`.
        keep_data: keep the job's objects in the store after shutdown (default: delete them).
        poll_interval: ``(min, max)`` seconds between the collector's polls of the store.
        lost_after_margin: for backends that cannot see a lost invocation (AWS): seconds past
            the function time-out, counted from the invocation's start, after which a silent
            invocation counts as lost.
        start_timeout: seconds without *any* invocation of the job starting after which the
            invocations not yet started count as never delivered (default: twice the function
            time-out plus the margin, at least 5 minutes). Invocations waiting in Lambda's queue
            behind others that run are never counted lost.
        signing_key: the HMAC key for payload integrity (default: the backend's; the local
            backend makes a random one).
        max_argument_bytes, max_result_bytes: bounds on one call's pickled arguments (checked
            before anything is uploaded) and result (checked by the runtime): beyond them the
            call fails with :class:`PayloadTooLargeError`. Pass large inputs with :meth:`put`.
        backend_options: passed to the backend (e.g. ``function_name``, ``bucket`` for AWS).
    """

    def __init__(self, backend: str | Backend | int = "local", *, max_workers: int | None = None,
                 workers: int | None = None, storage: Storage | str | None = None,
                 function_timeout: float | None = None, max_retries: int = 2,
                 keep_data: bool = False, poll_interval: tuple[float, float] | None = None,
                 lost_after_margin: float = 30.0, start_timeout: float | None = None,
                 signing_key: bytes | None = None, max_argument_bytes: int = MAX_ARGUMENT_BYTES,
                 max_result_bytes: int = MAX_RESULT_BYTES, _job_id: str | None = None,
                 **backend_options: Any):
        if isinstance(backend, int) and not isinstance(backend, bool):
            backend, max_workers = "local", _positive_int("max_workers", backend)
        _check_arguments(max_workers=max_workers, workers=workers,
                         function_timeout=function_timeout, max_retries=max_retries,
                         lost_after_margin=lost_after_margin, start_timeout=start_timeout,
                         max_argument_bytes=max_argument_bytes, max_result_bytes=max_result_bytes)
        local = not isinstance(backend, Backend) and backend == "local"
        if local and max_workers is not None and workers not in (None, max_workers):
            raise ValueError(f"workers={workers} and max_workers={max_workers} disagree: give one")
        # Unguessable, so that nobody else can find the job's objects.
        self.job_id = _job_id or secrets.token_hex(12)
        self.keep_data = keep_data
        self.max_argument_bytes, self.max_result_bytes = max_argument_bytes, max_result_bytes
        if signing_key is not None:
            backend_options["signing_key"] = signing_key
        self.backend = make_backend(backend, workers=(max_workers or workers) if local else workers,
                                    function_timeout=function_timeout, **backend_options)
        self._own_folder: str | None = None
        if storage is None:
            storage = self.backend.default_storage()
        if storage is None:
            storage = embedded_store()
            self._own_folder = storage.root
            if keep_data:
                scratch.mark_kept(self._own_folder)
        self.storage = make_storage(storage)
        self._key = self.backend.signing_key()
        signing.register_job(self.job_id, self._key)  # for ObjectRef.get() in this process
        self._sender = secrets.token_hex(3)

        self._lock = threading.RLock()
        self._pending: dict[int, CallFuture] = {}  # submitted, outcome not yet arrived
        self._done: weakref.WeakValueDictionary[int, CallFuture] = weakref.WeakValueDictionary()
        self._kept: list[CallFuture] = []  # futures nobody else holds (made by attach)
        self._rows: dict[int, dict] = {}  # call id -> metrics row (all that stays per call)
        self._next_call = 0
        # Cancelled calls that running invocations must skip (new ones, all so far), and sent
        # invocations left with nothing to run (stopped unless they have begun).
        self._cancel_ids: list[int] = []
        self._cancelled: set[int] = set()
        self._tombstones: list[wire.Event] = []
        self._control_due = 0.0
        self._starts_listed = 0.0
        self._start_lists = 0  # LIST requests of start markers, for the cost estimate
        # Shutdown protocol (as the stdlib's): a schedule either completes or sees the flag.
        self._state = threading.Condition(threading.Lock())
        self._shutdown = False
        self._scheduling = 0
        self._released = False
        self._release_lock = threading.Lock()

        try:  # the backend learns its time-out as it starts (AWS reads the function's)
            self.backend.start(_Listener(self))
        except BaseException:
            signing.forget_job(self.job_id)
            self._remove_own_folder()
            raise
        timeout = self.backend.function_timeout
        margin = lost_after_margin
        self._ledger = Ledger(
            max_retries=max_retries, function_timeout=timeout, lost_after_margin=margin,
            start_timeout=start_timeout or max(300.0, 2 * ((timeout or 900.0) + margin)),
            watch_deadlines=not self.backend.reports_losses,
            max_in_flight=None if local else max_workers)
        self._writer = JobWriter(
            self.storage, self.job_id, self._key, sender=self._sender,
            max_argument_bytes=max_argument_bytes,
            options={"max_result_bytes": max_result_bytes, "function_timeout": timeout})
        interval = poll_interval or ((0.002, 0.1) if isinstance(self.storage, LocalStorage)
                                     else (0.05, 2.0))
        self._collector = Collector(self.storage, self.job_id, self._key, self._on_record,
                                    self._ledger.pending, self._lowest_pending,
                                    min_interval=interval[0], max_interval=interval[1],
                                    after_poll=self._after_poll)
        _live_executors.add(self)

    @property
    def function_timeout(self) -> float | None:
        """Seconds one invocation may run (the backend's limit), or None for no limit."""
        return self.backend.function_timeout

    def __repr__(self) -> str:
        return (f"Executor(backend={self.backend.name!r}, storage={self.storage!r}, "
                f"job_id={self.job_id!r})")

    def __exit__(self, exc_type, exc_val, exc_tb) -> bool:
        # Leaving by an exception (Ctrl-C included) means nobody will read the other results:
        # cancel them rather than wait for the whole job (the stdlib would wait).
        self.shutdown(wait=True, cancel_futures=exc_type is not None)
        return False

    # -- the concurrent.futures.Executor interface -------------------------------------------

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> CallFuture:
        """Schedule ``fn(*args, **kwargs)``; return its future."""
        return self._schedule(fn, [(args, kwargs)], chunksize=1)[0]

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1, buffersize: int | None = None,
            progress: bool = False) -> Iterator:
        """Like the built-in ``map``, each call run remotely; results come in input order.

        ``chunksize`` calls share one invocation. The first exception is raised when its
        position is reached, and the calls not yet consumed are cancelled; ``timeout`` (seconds
        from this call) raises ``TimeoutError``. ``buffersize`` (Python 3.14's name) keeps at
        most that many calls submitted ahead of the consumer, so that an endless or huge input
        is consumed lazily; by default every call is submitted at once.
        """
        end_time = None if timeout is None else time.monotonic() + timeout
        if buffersize is not None and (not isinstance(buffersize, int) or buffersize < 1):
            raise ValueError(f"buffersize must be a positive int or None, got {buffersize!r}")
        if buffersize is None:
            futures = self.map_futures(fn, *iterables, chunksize=chunksize, progress=progress)
            return _results(futures, end_time, refill=None)
        _check_chunksize(chunksize)
        args = zip(*iterables)
        ahead = max(buffersize, chunksize)

        def refill(queued: int) -> list[CallFuture]:
            want = ahead - queued
            if want < chunksize and queued:
                return []  # wait for room for a whole batch
            batch = list(itertools.islice(args, max(want, 1)))
            if not batch:
                return []
            return self._schedule(fn, [(a, {}) for a in batch], chunksize=chunksize)

        return _results(refill(0), end_time, refill=refill)

    def map_futures(self, fn: Callable, *iterables: Iterable, chunksize: int = 1,
                    progress: bool = False) -> list[CallFuture]:
        """Schedule ``fn`` over the zipped iterables and return the futures (PyWren style)."""
        calls = [(args, {}) for args in zip(*iterables)]
        return self._schedule(fn, calls, chunksize=chunksize, progress=progress)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; by default wait for the calls, then free workers and data.

        ``cancel_futures=True`` cancels every call whose result has not arrived (also those
        running remotely: see :meth:`CallFuture.cancel`) and returns promptly. A Ctrl-C while
        waiting cancels the job, releases it and re-raises. Calling it again after an
        interrupted shutdown finishes the release.
        """
        with self._state:
            self._shutdown = True
            # A schedule under way completes first, so that it never invokes after the release.
            self._state.wait_for(lambda: self._scheduling == 0)
        if cancel_futures:
            self._cancel_all()
        if not wait:
            threading.Thread(target=self._release_when_done, name="lambdamap-release",
                             daemon=False).start()
            return
        try:
            with self._lock:
                outstanding = list(self._pending.values())
            concurrent.futures.wait(outstanding)
        except BaseException:
            self._cancel_all()
            self._release_safely()
            raise
        self._release_safely()

    # -- data by reference ---------------------------------------------------------------------

    def put(self, obj: Any) -> ObjectRef:
        """Store ``obj`` once (by content hash); pass the returned reference to calls.

        A top-level :class:`ObjectRef` argument arrives in the call as the object itself, and a
        warm worker keeps it decoded between calls; each call gets its own copy, whose numpy
        arrays are read-only views of the cached ones (see :mod:`lambdamap.objects`)::

            X_ref = ex.put(X)
            scores = ex.map(lambda X, seed: fit(X, seed), itertools.repeat(X_ref, 100), range(100))
        """
        self._check_open()
        return self._writer.put_object(obj)

    # -- recovering a job ------------------------------------------------------------------------

    @classmethod
    def attach(cls, job_id: str, *, storage: Storage | str | None = None,
               backend: str | Backend = "local", **options: Any) -> "Executor":
        """Take over a job whose client went away (crashed, restarted) from its store.

        Finished calls are read back from the store; every unfinished call is invoked again
        (at-least-once: if its first invocation is in fact still running, whichever finishes
        first gives the one result). ``ex.futures`` lists the job's futures in call order::

            ex = Executor.attach("3f2a...", backend="aws")   # the deployment's bucket
            results = [f.result() for f in ex.futures]

        The job must have been run with ``keep_data=True`` or its client must have died before
        its cleanup; the attached executor cleans up as usual when it shuts down. Its payloads
        are checked with the deployment's key; for a local job pass the original executor's
        ``signing_key``.
        """
        ex = cls(backend, storage=storage, _job_id=job_id, **options)
        try:
            events = ex._writer.read_manifests()
            if not events:
                raise ValueError(f"no job {job_id!r} in {ex.storage!r}: nothing to attach to "
                                 "(was it cleaned up? pass the storage it ran with)")
        except BaseException as exc:
            # A failed attach must not delete the job it could not read (a fresh embedded store
            # holds no job: that one goes).
            ex.keep_data = ex._own_folder is None
            ex.shutdown()
            if isinstance(exc, IntegrityError):
                raise IntegrityError(
                    f"job {job_id!r} was written with another signing key than this executor's, "
                    "so its manifests cannot be trusted: pass the original executor's key "
                    "(Executor.attach(..., signing_key=old.signing_key)) for a local job, or use "
                    "the deployment's key (the config file `lambdamap deploy` wrote) on AWS") from exc
            raise
        done = {wire.call_id_of(k) for k in ex.storage.list(wire.status_prefix(job_id))}
        now = time.time()
        with ex._lock:
            for event in events:
                for cid in event.calls:
                    future = ex._new_future(cid, now, 0)
                    ex._kept.append(future)
                    ex._ledger.add([cid])
            ex._next_call = max(c for e in events for c in e.calls) + 1
        rerun = [e.retry(todo, ex._sender) for e in events
                 if (todo := [c for c in e.calls if c not in done])]
        log.info("attached to job %s: %d calls, %d finished, %d invocations re-run", job_id,
                 len(ex._kept), len(done), len(rerun))
        if rerun:
            ex._send(rerun)
        ex._collector.wake()
        return ex

    @property
    def signing_key(self) -> bytes | None:
        """The HMAC key this executor's payloads are sealed with (keep it to ``attach`` later)."""
        return self._key

    @property
    def futures(self) -> list[CallFuture]:
        """The futures of this executor still alive (held by someone), in call order.

        The executor itself holds a future only until its outcome arrives (and those made by
        :meth:`attach`), so that a long-lived executor's memory stays flat.
        """
        with self._lock:
            alive = dict(self._done.items())
            alive.update(self._pending)
            alive.update((f.call_id, f) for f in self._kept)
        return [alive[cid] for cid in sorted(alive)]

    # -- diagnostics ---------------------------------------------------------------------------

    def metrics(self) -> pd.DataFrame:
        """One row per call, in call order. Columns (times are epoch seconds):

        ``call_id``; ``submitted`` (when ``submit``/``map`` made it); ``started``, ``finished``
        and ``duration`` (the call's own run in the runtime); ``queue_delay`` (started − submitted:
        upload, dispatch, queueing and cold start); ``cold`` (its invocation started a fresh
        worker and this was its first call); ``peak_memory_mb`` (the call's own peak RSS where
        the runtime can reset it — see ``peak_memory_scope`` — else the worker's lifetime peak);
        ``worker`` (process or Lambda log stream); ``bytes_in``/``bytes_out`` (pickled arguments
        and result); ``attempt`` (0 for the first invocation, +1 per re-invocation); ``ok``;
        ``error_type``; ``cancelled``; ``invocation`` (the id of the invocation that ran it) and
        ``invocation_started`` (when that invocation's handler began: Lambda bills from there);
        ``init_duration`` (on a cold start's first call: seconds from the worker process's start
        to a ready handler, Lambda's billed INIT phase). Calls without a result have NaN/None in
        the run columns. :meth:`plot` draws this table, :meth:`cost` prices it.
        """
        import pandas as pd  # here: workers import lambdamap too, and need no pandas

        with self._lock:
            rows = [dict(row) for _, row in sorted(self._rows.items())]
        frame = pd.DataFrame(rows, columns=METRICS_COLUMNS)
        frame["queue_delay"] = frame["started"] - frame["submitted"]
        frame["cold"] = frame["warm"].map({True: False, False: True})
        return frame[METRICS_ORDER]

    def cost(self, memory_mb: float | None = None, arch: str | None = None) -> CostEstimate:
        """What this executor's calls cost on AWS Lambda — or would cost, for a local one:
        requests, billed GB-seconds (cold starts' INIT phase included), S3 requests and dollars
        at the published prices (:mod:`lambdamap.cost`). ``memory_mb`` and ``arch`` default to
        the function's (AWS), else ``lambdamap deploy``'s defaults::

            print(ex.cost())            # "... $0.000412 (Lambda $0.000371, S3 $0.000041)"
            ex.cost(memory_mb=1769).total_usd
        """
        from .cost import estimate, function_config

        memory, architecture = function_config(self.backend)
        functions, objects = self._writer.uploads()
        # On S3 the client's LISTs are counted; a folder is polled otherwise: they are modelled.
        lists = (None if isinstance(self.storage, LocalStorage)
                 else self._collector.lists + self._start_lists)
        return estimate(self.metrics(), memory_mb=memory_mb or memory, arch=arch or architecture,
                        functions=functions, objects=objects, client_lists=lists)

    def plot(self, path: str | os.PathLike | None = None, **options: Any) -> Any:
        """Draw the job's timeline — calls per worker over time, cold starts and failures
        marked, and concurrency — into a PNG at ``path`` (see :func:`lambdamap.timeline.plot`);
        returns the matplotlib figure. Needs matplotlib (``pip install lambdamap[plot]``)."""
        from .timeline import plot

        return plot(self.metrics(), path, **options)

    # -- scheduling ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if _interpreter_exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _schedule(self, fn: Callable, calls: list[tuple[tuple, dict]], chunksize: int,
                  progress: bool = False) -> list[CallFuture]:
        _check_chunksize(chunksize)
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        with self._state:
            self._check_open()
            self._scheduling += 1
        try:
            return self._write_and_send(fn, calls, chunksize, progress)
        finally:
            with self._state:
                self._scheduling -= 1
                self._state.notify_all()

    def _write_and_send(self, fn: Callable, calls: list[tuple[tuple, dict]], chunksize: int,
                        progress: bool) -> list[CallFuture]:
        fn_key = self._writer.function(fn)
        with self._lock:
            first = self._next_call
            self._next_call += len(calls)
        payloads = self._writer.arguments(fn, calls, first)
        progress_bar = _progress_bar(len(calls), getattr(fn, "__name__", "calls")) if progress else None
        futures: list[CallFuture] = []
        for blob, events in self._writer.batches(fn_key, payloads, first, chunksize):
            now = time.time()
            batch = []
            with self._lock:
                for event in events:
                    for cid in event.calls:
                        future = self._new_future(cid, now, len(payloads[cid - first]))
                        if progress_bar is not None:
                            progress_bar.watch(future)
                        batch.append(future)
                    self._ledger.add(event.calls)
            futures.extend(batch)
            try:
                self._writer.write(blob, events)
                self._send(events)
            except BaseException as exc:
                # Nothing may wait for calls that were never sent: they fail with the cause.
                self._fail_unsent(batch, exc)
                raise
        return futures

    def _new_future(self, call_id: int, submitted: float, bytes_in: int) -> CallFuture:
        future = CallFuture(call_id)
        future.on_cancel = self._on_cancel
        self._pending[call_id] = future
        self._rows[call_id] = {"call_id": call_id, "submitted": submitted, "bytes_in": bytes_in,
                               "cancelled": False}
        return future

    def _fail_unsent(self, futures: list[CallFuture], exc: BaseException) -> None:
        with self._lock:
            for future in futures:
                self._ledger.resolve(future.call_id)
                self._pending.pop(future.call_id, None)
                self._done[future.call_id] = future
        for future in futures:
            try:
                if future.set_running_or_notify_cancel():
                    future.set_exception(exc)
            except RuntimeError:
                pass

    def _send(self, events: list[wire.Event]) -> None:
        """Queue events and hand the backend those that have a slot (all, unless capped)."""
        with self._lock:
            if self._released:
                return
            self._ledger.queue(events)
            ready = self._ledger.take(time.monotonic())
        if ready:
            self.backend.invoke(ready)

    # -- collecting ------------------------------------------------------------------------------

    def _lowest_pending(self) -> int | None:
        with self._lock:
            return self._ledger.lowest_pending()

    def _on_record(self, record: wire.CallRecord) -> None:
        with self._lock:
            if not self._ledger.resolve(record.call_id):
                return
            future = self._pending.pop(record.call_id)
            self._done[record.call_id] = future
            self._rows[record.call_id].update(_row_of(record.status))
            slots = self._ledger.queued() > 0
        if slots:
            self._send([])
        future.stdout, future.stderr, future.logs = record.stdout, record.stderr, record.logs
        future.status, future.remote_traceback = record.status, record.traceback
        if future.on_collected is not None:
            future.on_collected(future)
        try:
            if not future.set_running_or_notify_cancel():
                return  # cancelled just now: its result is dropped
        except RuntimeError:
            return
        try:
            value, error = outcome(record)
        except BaseException as exc:  # noqa: BLE001 - e.g. the result's class is unknown here
            value, error = None, SerializationError(
                f"the result of call {record.call_id} could not be unpickled at the client: "
                f"{type(exc).__name__}: {exc}")
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)

    # -- cancelling ------------------------------------------------------------------------------

    def _on_cancel(self, future: CallFuture) -> None:
        with self._lock:
            in_flight, emptied = self._ledger.cancel(future.call_id)
            if future.call_id not in self._pending:
                return
            del self._pending[future.call_id]
            self._rows[future.call_id]["cancelled"] = True
            if in_flight:  # a running invocation may reach it: tell it to skip the call
                self._cancel_ids.append(future.call_id)
            if emptied is not None:  # nothing left to run: stop it if it has not begun
                self._tombstones.append(emptied)
        self._collector.wake()

    def _cancel_all(self) -> None:
        with self._lock:
            outstanding = list(self._pending.values())
        for future in outstanding:
            future.cancel()
        if not self.keep_data:
            with self._lock:  # deleting the job's data (next) stops unstarted invocations too
                self._tombstones.clear()
        self._write_control(force=True)

    def _write_control(self, force: bool = False) -> None:
        """Tell running invocations about cancelled calls; stop those not yet begun."""
        now = time.monotonic()
        with self._lock:
            if not (self._cancel_ids or self._tombstones) or self._released:
                return
            if not force and now < self._control_due:
                return
            self._control_due = now + CONTROL_WRITE_INTERVAL
            self._cancelled.update(self._cancel_ids)
            self._cancel_ids.clear()
            cancelled = "all" if not self._pending else sorted(self._cancelled)
            tombstones, self._tombstones = self._tombstones, []
        try:
            self._writer.write_control(cancelled)
            for event in tombstones:
                self._writer.cancel_invocation(event)
        except Exception:  # noqa: BLE001 - best effort: the calls are cancelled at the client anyway
            log.warning("lambdamap: could not record cancellations in the store", exc_info=True)

    # -- watching invocations (collector thread) ---------------------------------------------------

    def _after_poll(self) -> None:
        self._write_control()
        now = time.monotonic()
        with self._lock:
            unstarted = self._ledger.unstarted()
        if unstarted and now - self._starts_listed >= START_LIST_INTERVAL:
            self._starts_listed = now
            prefix = wire.start_prefix(self.job_id)
            blob = unstarted[0].split(".", 1)[0]
            keys = self.storage.list(prefix, start_after=prefix + blob)
            self._start_lists += 1 + len(keys) // 1000
            with self._lock:
                for key in keys:
                    self._ledger.started(key[len(prefix):], now)
        with self._lock:
            expired = self._ledger.expired(now)
        for event, cause in expired:
            memory = self.backend.memory_mb
            if memory:
                cause += f" (its configured memory: {memory} MB)"
            self._lost(event, cause, timed_out=False)

    def _lost(self, event: wire.Event, cause: str, timed_out: bool) -> None:
        """Run the unfinished calls of a lost invocation again, or fail the one that was running."""
        with self._lock:
            unfinished = [c for c in event.calls if c in self._ledger.pending]
        finished = [c for c in unfinished
                    if self.storage.exists(wire.status_key(self.job_id, c))]
        running = next((c for c in unfinished if c not in finished), None)
        if running is not None:
            cause += self._where_logs_are(event, running)
        with self._lock:
            verdict = self._ledger.lost(event, cause, timed_out=timed_out, finished=finished,
                                        job_id=self.job_id, sender=self._sender)
        for call_id, error in verdict.fail:
            self._fail(call_id, error, event)
        if verdict.retried is not None:
            log.warning("call %d of job %s lost (%s); running it again", verdict.retried,
                        self.job_id, cause)
        if verdict.resend is not None:
            try:
                self._send([verdict.resend])
            except RuntimeError:
                pass  # the backend closed meanwhile: the job is being released
        self._collector.wake()

    def _where_logs_are(self, event: wire.Event, call_id: int) -> str:
        """``; its logs: ...`` from the invocation's start marker (AWS), else ``""``."""
        from .logs import LogLocation

        key = wire.start_key(self.job_id, event.invocation)
        try:
            marker = json.loads(signing.unseal(self._key, key, self.storage.get(key)))
            location = LogLocation.of(marker.get("logs"))
        except Exception:  # noqa: BLE001 - never started, cancelled, or an older runtime
            return ""
        if location is None:
            return ""
        return f"; its logs: {location.describe()} (`lambdamap logs {self.job_id} {call_id}`)"

    def _fail(self, call_id: int, error: Exception, event: wire.Event) -> None:
        """Record the failure in the store, like any result, so that it counts exactly once."""
        if self._released:
            return
        record = wire.failure_record(call_id, error)
        wire.write_record(self.storage, self.job_id, record, started=time.time(), bytes_in=0,
                          worker="client", warm=False, attempt=event.attempt,
                          signing_key=self._key)

    # -- cleaning up -------------------------------------------------------------------------------

    def _release_when_done(self) -> None:
        with self._lock:
            outstanding = list(self._pending.values())
        concurrent.futures.wait(outstanding)
        self._release()

    def _release_safely(self) -> None:
        """Release in a non-daemon thread: a second Ctrl-C cannot stop it half-way (the
        interpreter waits for it at exit), and a later ``shutdown()`` finishes it too."""
        if _interpreter_exiting:
            self._release()
            return
        worker = threading.Thread(target=self._release, name="lambdamap-release")
        worker.start()
        worker.join()

    def _release(self) -> None:
        with self._release_lock:
            if self._released:
                return
            with self._lock:
                self._released = True
            self._collector.stop()
            self.backend.close()
            signing.forget_job(self.job_id)
            objects.forget_job(self.job_id)
            if not self.keep_data:
                self.storage.delete(wire.job_prefix(self.job_id))
                self._remove_own_folder()
            else:
                log.info("lambdamap: kept job %s in %r", self.job_id, self.storage)
            _live_executors.discard(self)

    def _remove_own_folder(self) -> None:
        if self._own_folder is not None and not self.keep_data:
            shutil.rmtree(self._own_folder, ignore_errors=True)


class _Listener:
    """What the backend may tell the executor (see :class:`~lambdamap.backends.base.InvocationListener`)."""

    def __init__(self, executor: Executor):
        self._executor = executor

    def invocation_lost(self, event: wire.Event, cause: str, timed_out: bool) -> None:
        self._executor._lost(event, cause, timed_out)

    def wake(self, finished: Iterable[int] | None = None) -> None:
        self._executor._collector.wake(finished)

    def live(self, event: wire.Event) -> wire.Event | None:
        with self._executor._lock:
            return self._executor._ledger.live(event)


# -- interpreter exit ------------------------------------------------------------------------------

_live_executors: weakref.WeakSet[Executor] = weakref.WeakSet()
_interpreter_exiting = False


def _at_exit() -> None:
    """As the stdlib's executors: pending calls finish before the interpreter exits — unless it
    exits because of Ctrl-C, which cancels them; then every executor is released."""
    global _interpreter_exiting
    _interpreter_exiting = True
    interrupted = isinstance(getattr(sys, "last_value", None), KeyboardInterrupt)
    for executor in list(_live_executors):
        try:
            executor.shutdown(wait=True, cancel_futures=interrupted)
        except BaseException:  # noqa: BLE001 - go on releasing the others
            log.exception("lambdamap: releasing %r at exit failed", executor)


def _forget_in_child() -> None:
    # A forked child (e.g. a ProcessPoolExecutor's worker) runs the exit hooks too: the parent's
    # executors are not its to release.
    _live_executors.clear()


os.register_at_fork(after_in_child=_forget_in_child)

# Runs when the main thread ends, before non-daemon threads are joined and before atexit hooks,
# like concurrent.futures' own hook; atexit is the fallback where that hook does not exist.
try:
    threading._register_atexit(_at_exit)  # type: ignore[attr-defined]
except AttributeError:  # pragma: no cover
    import atexit

    atexit.register(_at_exit)


# ----------------------------------------------------------------------------------------------


def _results(futures: list[CallFuture], end_time: float | None,
             refill: Callable[[int], list[CallFuture]] | None) -> Iterator:
    """Yield the futures' results in order, cancelling the rest if the consumer stops."""
    pending = list(reversed(futures))  # pop from the end: no reference to yielded results

    def results() -> Iterator:
        try:
            while pending:
                if refill is not None:  # keep the buffer full behind the call about to be read
                    pending[:0] = list(reversed(refill(len(pending) - 1)))
                remaining = None if end_time is None else end_time - time.monotonic()
                # No local name for the future: a suspended generator would keep its result alive.
                yield _result_or_cancel(pending.pop(), remaining)
        finally:
            for future in pending:
                future.cancel()

    return results()


def _result_or_cancel(future: concurrent.futures.Future, timeout: float | None) -> Any:
    try:
        try:
            return future.result(timeout)
        finally:
            future.cancel()
    finally:
        del future  # break a reference cycle with the exception's traceback


def _row_of(status: dict) -> dict:
    keys = ("started", "finished", "duration", "peak_memory_mb", "peak_memory_scope", "worker",
            "warm", "bytes_out", "attempt", "ok", "error_type", "invocation", "invocation_started",
            "init_duration")
    return {k: status.get(k) for k in keys}


def _check_chunksize(chunksize: int) -> None:
    if not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"chunksize must be an int >= 1, got {chunksize!r}")


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be greater than 0 and an int, got {value!r}")
    return value


def _check_arguments(*, max_workers, workers, function_timeout, max_retries, lost_after_margin,
                     start_timeout, max_argument_bytes, max_result_bytes) -> None:
    """Refuse nonsense early, naming the argument (the stdlib raises ValueError too)."""
    for name, value in (("max_workers", max_workers), ("workers", workers)):
        if value is not None:
            _positive_int(name, value)
    for name, value in (("function_timeout", function_timeout), ("start_timeout", start_timeout)):
        if value is not None and not (isinstance(value, (int, float)) and value > 0):
            raise ValueError(f"{name} must be a positive number of seconds or None, got {value!r}")
    if not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
    if not isinstance(lost_after_margin, (int, float)) or lost_after_margin < 0:
        raise ValueError(f"lost_after_margin must be >= 0 seconds, got {lost_after_margin!r}")
    _positive_int("max_argument_bytes", max_argument_bytes)
    _positive_int("max_result_bytes", max_result_bytes)


def _progress_bar(total: int, label: str) -> _Progress | None:
    """A tqdm bar over ``total`` calls (none for an empty map)."""
    return _Progress(total, label) if total else None


class _Progress:
    """Ticks once per collected call (before waiters wake, so the bar is never behind), counts
    failures, and closes when every call is done — collected or cancelled."""

    def __init__(self, total: int, label: str):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=label, unit="call")
        self.left = total
        self.failed = 0
        self.lock = threading.Lock()

    def __call__(self, future: CallFuture) -> None:
        with self.lock:
            self.bar.update(1)
            if future.status.get("ok") is False:
                self.failed += 1
                self.bar.set_postfix(failed=self.failed, refresh=False)

    def watch(self, future: CallFuture) -> None:
        future.on_collected = self
        future.add_done_callback(self._done)

    def _done(self, future: concurrent.futures.Future) -> None:
        with self.lock:
            self.left -= 1
            if future.cancelled():
                self.bar.set_postfix(failed=self.failed, cancelled=True, refresh=False)
            if self.left == 0:
                self.bar.close()
