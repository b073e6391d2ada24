"""lambdamap as a joblib backend: scikit-learn's ``n_jobs``, doubleml's ``n_jobs_cv`` and any
``joblib.Parallel`` loop fan out as lambdamap invocations, unchanged::

    import joblib
    import lambdamap.joblib                       # registers the backend "lambdamap"
    from lambdamap import Executor

    with Executor(backend="aws") as ex, joblib.parallel_config(backend="lambdamap", executor=ex):
        GridSearchCV(RandomForestClassifier(random_state=0), grid, n_jobs=-1).fit(X, y)

How joblib's work travels (see docs/joblib.md):

* **Batches.** Each batch of tasks that joblib forms (its automatic batching, tuned to the
  backend: batches of about 0.2-2 s locally, 1-10 s on AWS) runs as one executor call, hence one
  invocation. ``tasks_per_call=k`` groups exactly ``k`` tasks per invocation instead.
* **Large arguments travel once.** A top-level task argument that is a NumPy array, a pandas
  object or a SciPy sparse matrix of at least ``dedup_bytes`` (64 KiB) is stored once with
  ``executor.put`` (by identity within a ``Parallel`` call, by content hash across calls) and
  resolved on the worker, where a warm worker keeps it decoded; tasks see a read-only view
  (arrays) or a shallow copy (pandas), as with joblib's read-only memory maps.
* **Nested parallelism is bounded.** Inside a task, nested joblib runs sequentially
  (``inner_n_jobs=1``) and BLAS/OpenMP pools have one thread (``inner_max_num_threads=1``).
* **Errors abort.** The first failing task's exception reaches the caller with its own type and
  the remote traceback as ``__cause__``; joblib then aborts and the job's remaining calls are
  cancelled.
* ``n_jobs=-1`` means the executor's capacity (``Backend.capacity``: the local workers, or the
  function's concurrency on AWS); ``n_jobs=None`` means 1 (run in this process) unless a
  ``parallel_config(n_jobs=...)`` says otherwise, as for joblib's own backends.
"""
from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import functools
import inspect
import logging
import os
import queue
import sys
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

# The real joblib, not this module: imports are absolute.
from joblib.parallel import (AutoBatchingMixin, FallbackToBackend, ParallelBackendBase,
                             SequentialBackend, ThreadingBackend, parallel_config,
                             register_parallel_backend)

from . import serialize
from .errors import LambdamapError, RuntimeMismatchError
from .objects import ObjectRef
from .progress import TaskBar

log = logging.getLogger(__name__)

#: The name under which :func:`register` makes the backend known to joblib.
NAME = "lambdamap"
#: Arrays, DataFrames and sparse matrices from this size on are stored once per job.
DEDUP_BYTES = 64 * 1024
#: joblib's automatic batching aims at batches of this many seconds (min, max), per backend:
#: a Lambda invocation costs tens of milliseconds more than a local one.
BATCH_SECONDS = {"local": (0.2, 2.0), "aws": (1.0, 10.0)}

__all__ = ["LambdamapBackend", "Transfer", "register", "default_executor", "check_runtime",
           "NAME", "DEDUP_BYTES"]


def register(name: str = NAME) -> None:
    """Make ``parallel_config(backend=name)`` use :class:`LambdamapBackend` (done on import)."""
    register_parallel_backend(name, LambdamapBackend)


# ----------------------------------------------------------------------------- the executor

_default = None
_default_lock = threading.Lock()
_task = threading.local()  # .active is True while this thread runs joblib tasks for a client


def default_executor():
    """The executor of the backend when none is given: one local ``Executor()`` per process
    (one worker per core), started at first use and shut down when the interpreter exits."""
    global _default
    if getattr(_task, "active", False):
        raise LambdamapError(
            "joblib backend 'lambdamap' without an executor inside a lambdamap task: that would "
            "start worker processes inside a worker. Pass executor=... explicitly, or let "
            "nested joblib calls run in the task (the default)")
    with _default_lock:
        if _default is None:
            from . import Executor

            _default = Executor()
            atexit.register(_default.shutdown)
        return _default


def check_runtime(executor: Any, required: Mapping[str, str]) -> None:
    """Refuse, before anything is invoked, an executor whose runtime has other versions of the
    ``required`` distributions (``{"scikit-learn": "1.9.1"}``) than this client.

    Executors without a ``backend`` run in this process: nothing to check. A backend that
    cannot tell its runtime's versions (``runtime_versions()`` is None) gets a warning; the
    tasks then check on the worker, before they are unpickled (see :func:`run_batches`).
    """
    backend = getattr(executor, "backend", None)
    if backend is None or not required:
        return
    runtime = backend.runtime_versions()
    if runtime is None:
        log.warning("the versions of %s on the %s runtime are unknown; each call checks them on "
                    "the worker", ", ".join(required), getattr(backend, "name", "executor's"))
        return
    _refuse_mismatch(required, runtime, "the runtime")


def _check_installed(required: Mapping[str, str]) -> None:
    """The worker's half of :func:`check_runtime`: the versions installed here."""
    _refuse_mismatch(required, _installed(tuple(sorted(required))), "this runtime")


@functools.lru_cache(maxsize=None)
def _installed(names: tuple[str, ...]) -> dict[str, str | None]:
    # Read once per process: a warm worker checks every call, and packages do not change under it.
    from .versions import installed_versions

    return installed_versions(names)


def _refuse_mismatch(required: Mapping[str, str], found: Mapping[str, str | None],
                     where: str) -> None:
    wrong = {name: found.get(name) for name, version in required.items()
             if found.get(name) != version}
    if wrong:
        listing = "; ".join(f"{name} {required[name]} on the client, "
                            f"{version or 'not installed'} on {where}"
                            for name, version in wrong.items())
        raise RuntimeMismatchError(
            f"{listing}: results would differ from this client's or fail. Deploy the runtime "
            "from this environment (`lambdamap deploy`), or install the runtime's versions here")


# ------------------------------------------------------------------------- the worker's side

@dataclass(frozen=True)
class TaskSettings:
    """How the tasks of a call run on the worker (sent with every call; small)."""

    nested: tuple  # (joblib backend, n_jobs) that joblib inside a task uses
    max_threads: int | None  # BLAS/OpenMP threads per task; None: not limited
    required: Mapping[str, str] | None  # versions the runtime must have, or None


def run_batches(settings: TaskSettings, batches: Any) -> list[list]:
    """Run joblib batches, each a list of ``(function, args, kwargs)``, in order (runs remotely).

    With ``settings.required`` the batches arrive pickled, so that a runtime with other package
    versions fails here, with a message naming them, rather than while unpickling the tasks.
    """
    if settings.required:
        _check_installed(settings.required)
        batches = serialize.loads(batches)
    with _task_scope(settings):
        return [[fn(*map(_resolved, args), **{k: _resolved(v) for k, v in kwargs.items()})
                 for fn, args, kwargs in batch] for batch in batches]


@contextlib.contextmanager
def _task_scope(settings: TaskSettings) -> Iterator[None]:
    backend, n_jobs = settings.nested
    config = {"backend": backend} if n_jobs is None else {"backend": backend, "n_jobs": n_jobs}
    with contextlib.ExitStack() as stack:
        if settings.max_threads is not None:
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:  # no threadpoolctl: no scikit-learn, hardly any BLAS to limit
                pass
            else:
                stack.enter_context(threadpool_limits(limits=settings.max_threads))
        stack.enter_context(parallel_config(**config))
        outer, _task.active = getattr(_task, "active", False), True
        try:
            yield
        finally:
            _task.active = outer


def _resolved(value: Any) -> Any:
    """A stored argument as its task sees it: a read-only view of a shared array, a shallow copy
    of a shared pandas object (the worker's cached original stays intact for the next task)."""
    if not isinstance(value, ObjectRef):
        return value
    obj = value.get()
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(obj, numpy.ndarray):
        view = obj.view()
        view.flags.writeable = False
        return view
    if hasattr(obj, "copy") and type(obj).__module__.startswith("pandas"):
        return obj.copy(deep=False)
    return obj


class _InnerThreads(ThreadingBackend):
    """Threads for joblib inside a task: at most ``cap``, whatever ``n_jobs`` the code asks."""

    def __init__(self, cap: int, nesting_level: int | None = None):
        super().__init__(nesting_level=nesting_level)
        self.cap = cap

    def effective_n_jobs(self, n_jobs):
        return min(super().effective_n_jobs(n_jobs), self.cap)


# ------------------------------------------------------------------------- the client's side

@dataclass
class Transfer:
    """What a backend sent (cumulative over its ``Parallel`` calls), to measure argument dedup.

    ``argument_bytes`` are the pickled calls (tasks with stored arguments replaced by
    references); ``object_bytes`` the stored arguments (each uploaded once; a warm worker reads
    each at most once). ``result_bytes`` came back.
    """

    tasks: int = 0
    calls: int = 0
    objects: int = 0
    object_bytes: int = 0
    argument_bytes: int = 0
    result_bytes: int = 0

    @property
    def sent_bytes(self) -> int:
        """Everything the client uploaded: calls plus stored objects."""
        return self.argument_bytes + self.object_bytes


class LambdamapBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib backend that runs batches of tasks as calls of a lambdamap executor.

    Usually selected by name, with its arguments passed through ``parallel_config``::

        with joblib.parallel_config(backend="lambdamap", executor=ex, dedup_bytes=None):
            cross_val_score(model, X, y, cv=5, n_jobs=-1)

    Args:
        executor: a ``lambdamap.Executor`` (anything with ``submit`` and ``put``); None uses
            :func:`default_executor`, a local one shared by the process.
        tasks_per_call: group exactly this many tasks per invocation (the last may have fewer),
            whatever joblib's batching; every task is then submitted at once and ``n_jobs`` is
            ignored. Default None: one joblib batch per invocation.
        dedup_bytes: store arrays, DataFrames and sparse matrices of at least this many bytes
            once (see the module doc); None or 0 sends every argument with its call.
        inner_n_jobs: threads that joblib inside a task may use (1: it runs sequentially).
        inner_max_num_threads: BLAS/OpenMP threads inside a task (threadpoolctl); None: as the
            worker starts them (one per core of the worker).
        require_versions: ``{distribution: version}`` the runtime must have, checked on the
            client before anything is invoked and on the worker before the tasks are unpickled
            (forest passes its scikit-learn version: equal trees need equal code).
        progress: a progress bar over the tasks of each ``Parallel`` call (its total grows as
            joblib dispatches); None: when someone watches (:mod:`lambdamap.progress`).
            Default False: joblib's own ``verbose`` reports progress too.
        progress_unit: what the bar counts (``"tree"`` for forest).
    """

    supports_retrieve_callback = True
    supports_inner_max_num_threads = True
    supports_sharedmem = False
    uses_threads = False
    default_n_jobs = 1

    def __init__(self, executor: Any = None, *, tasks_per_call: int | None = None,
                 dedup_bytes: int | None = DEDUP_BYTES, inner_n_jobs: int = 1,
                 inner_max_num_threads: int | None = 1,
                 require_versions: Mapping[str, str] | None = None,
                 progress: bool | None = False, progress_unit: str = "task",
                 nesting_level: int | None = None):
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        if executor is not None and not all(hasattr(executor, m) for m in ("submit", "put")):
            raise TypeError(f"executor must be a lambdamap Executor (submit and put), "
                            f"not {type(executor).__name__}")
        for name, value in (("tasks_per_call", tasks_per_call), ("inner_n_jobs", inner_n_jobs),
                            ("inner_max_num_threads", inner_max_num_threads)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, not {value!r}")
        self.executor = executor
        self.tasks_per_call = tasks_per_call
        self.dedup_bytes = dedup_bytes or 0
        self.inner_n_jobs = inner_n_jobs or 1
        self.require_versions = dict(require_versions) if require_versions else None
        self.progress, self.progress_unit = progress, progress_unit
        self._bar = TaskBar(False)
        self.transfer = Transfer()
        self._lock = threading.Lock()
        self._checked = False
        self._reset_call()

    def __repr__(self) -> str:
        return f"LambdamapBackend(executor={self.executor!r}, tasks_per_call={self.tasks_per_call})"

    def __reduce__(self):
        # A backend captured by a task travels without its executor (processes, connections):
        # unpickled in a worker it would need the default executor, which a task refuses.
        return (functools.partial(LambdamapBackend, tasks_per_call=self.tasks_per_call,
                                  dedup_bytes=self.dedup_bytes, inner_n_jobs=self.inner_n_jobs,
                                  inner_max_num_threads=self.inner_max_num_threads,
                                  require_versions=self.require_versions), ())

    # -- what joblib asks ---------------------------------------------------------------------

    def effective_n_jobs(self, n_jobs):
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None or n_jobs == 1:
            return 1
        if n_jobs < 0:
            return max(self._capacity() + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs=1, parallel=None, **_parallel_options):
        """Called by ``Parallel`` before it dispatches: returns the number of workers to plan for."""
        self.parallel = parallel
        if self.tasks_per_call:
            # Every task goes to submit() before results are awaited, so groups fill in order.
            if parallel is not None:
                parallel.pre_dispatch = "all"
            n_jobs = max(2, self._capacity())
        else:
            n_jobs = self.effective_n_jobs(n_jobs)
            if n_jobs == 1:
                raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        executor = self._executor()
        if self.require_versions and not self._checked:
            check_runtime(executor, self.require_versions)
            self._checked = True
        backend = getattr(executor, "backend", None)
        self.MIN_IDEAL_BATCH_DURATION, self.MAX_IDEAL_BATCH_DURATION = BATCH_SECONDS.get(
            getattr(backend, "name", "local"), BATCH_SECONDS["aws"])
        return n_jobs

    def compute_batch_size(self):
        # Grouped: one task per joblib batch, the groups are made in submit().
        return 1 if self.tasks_per_call else super().compute_batch_size()

    def get_nested_backend(self):
        level = (self.nesting_level or 0) + 1
        if self.inner_n_jobs == 1:
            return SequentialBackend(nesting_level=level), None
        return _InnerThreads(self.inner_n_jobs, nesting_level=level), self.inner_n_jobs

    def start_call(self):
        self._reset_call()
        self._bar = TaskBar(self.progress, desc=f"{self.progress_unit}s", unit=self.progress_unit)

    def stop_call(self):
        with self._lock:  # anything still waiting belongs to a call that ended without it
            waiting, self._waiting = self._waiting, []
            self._refs.clear()  # drop our hold on the call's arguments
        self._bar.close()  # joblib stops a call however it ends: done, failed or aborted
        for _, future in waiting:
            future.cancel()

    def terminate(self):
        self.reset_batch_stats()

    @contextlib.contextmanager
    def retrieval_context(self):
        # joblib has dispatched what it could before it waits: send the last, partial group.
        self._flushing = True
        self._send_waiting()
        yield

    def submit(self, func, callback=None):
        """Queue one joblib batch; returns a future of its list of results."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if callback is not None:
            future.add_done_callback(callback)
        tasks = self._by_reference(func.items)
        with self._lock:
            self._waiting.append((tasks, future))
            size = self.tasks_per_call if self.tasks_per_call and not self._flushing else 1
            ready = len(self._waiting) >= size
        if ready:
            self._send_waiting()
        return future

    def retrieve_result_callback(self, out):
        return out.result()

    def abort_everything(self, ensure_ready=True):
        """Cancel the calls of this ``Parallel`` call that have not started (joblib aborts)."""
        with self._lock:
            calls, self._calls = list(self._calls), set()
            waiting, self._waiting = self._waiting, []
        for call in calls:
            call.cancel()
        for _, future in waiting:
            future.cancel()

    # -- sending -----------------------------------------------------------------------------

    def _reset_call(self) -> None:
        with self._lock:
            self._waiting: list[tuple[list, concurrent.futures.Future]] = []
            self._calls: set = set()
            self._refs: dict[int, tuple[Any, Any]] = {}
            self._flushing = False

    def _executor(self):
        if self.executor is None:
            return default_executor()
        return self.executor

    def _capacity(self) -> int:
        capacity = getattr(getattr(self._executor(), "backend", None), "capacity", None)
        return capacity or os.cpu_count() or 1  # unknown: joblib's meaning of -1, this machine

    def _send_waiting(self) -> None:
        """Send the waiting batches as calls of ``tasks_per_call`` tasks (or one batch each)."""
        while True:
            with self._lock:
                if not self._waiting:
                    return
                size = self.tasks_per_call or 1
                if self.tasks_per_call and len(self._waiting) < size and not self._flushing:
                    return
                group, self._waiting = self._waiting[:size], self._waiting[size:]
            self._send(group)

    def _send(self, group: list[tuple[list, concurrent.futures.Future]]) -> None:
        settings = TaskSettings(self.get_nested_backend(), self.inner_max_num_threads,
                                self.require_versions)
        batches = [tasks for tasks, _ in group]
        try:
            payload = (serialize.dumps(batches, "the joblib tasks") if self.require_versions
                       else batches)
            call = self._executor().submit(run_batches, settings, payload)
        except BaseException as exc:  # noqa: BLE001 - joblib raises it in order, like a task's
            _to_finisher((self, None, exc, group, None))
            return
        with self._lock:
            self._calls.add(call)
            self.transfer.calls += 1
            self.transfer.tasks += sum(len(tasks) for tasks in batches)
        bar = self._bar
        bar.add(sum(len(tasks) for tasks in batches))
        call.add_done_callback(lambda done: _to_finisher((self, done, None, group, bar)))

    def _finish(self, call, error: BaseException | None, group: list,
                bar: TaskBar | None = None) -> None:
        """Resolve a call's joblib futures (on the finisher thread: joblib's callbacks may
        dispatch the next batch, which must not hold up the executor's collector)."""
        results: list = [None] * len(group)
        if call is not None:
            with self._lock:
                self._calls.discard(call)
                status = getattr(call, "status", None) or {}
                self.transfer.argument_bytes += status.get("bytes_in") or 0
                self.transfer.result_bytes += status.get("bytes_out") or 0
            if call.cancelled():
                error = concurrent.futures.CancelledError()
            else:
                error = call.exception()
                if error is None:
                    results = call.result()
            if bar is not None:
                bar.done(sum(len(tasks) for tasks, _ in group), failed=error is not None)
        for (_, future), result in zip(group, results):
            if not future.set_running_or_notify_cancel():
                continue  # aborted
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    # -- large arguments once ------------------------------------------------------------------

    def _by_reference(self, items: list) -> list:
        """The batch's tasks with large arguments replaced by stored references."""
        tasks = []
        for fn, args, kwargs in items:
            if self.dedup_bytes:
                args = tuple(self._stored(a) for a in args)
                kwargs = {k: self._stored(v) for k, v in kwargs.items()}
            tasks.append((fn, args, kwargs))
        return tasks

    def _stored(self, value: Any) -> Any:
        size = _nbytes(value)
        if size is None or size < self.dedup_bytes:
            return value
        with self._lock:
            hit = self._refs.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
        ref = self._executor().put(value)
        with self._lock:
            # Holding the value keeps its id from being reused by another object in this call.
            self._refs[id(value)] = (value, ref)
            self.transfer.objects += 1
            self.transfer.object_bytes += ref.nbytes if isinstance(ref, ObjectRef) else size
        return ref


def _nbytes(value: Any) -> int | None:
    """The data size of an array, pandas object or sparse matrix; None for anything else."""
    module = type(value).__module__
    if module.startswith("numpy") and hasattr(value, "nbytes") and hasattr(value, "dtype"):
        return int(value.nbytes)
    if module.startswith("pandas") and hasattr(value, "memory_usage"):
        usage = value.memory_usage(index=True, deep=False)
        return int(usage.sum() if hasattr(usage, "sum") else usage)
    if module.startswith("scipy.sparse"):
        return sum(int(getattr(value, part).nbytes) for part in ("data", "indices", "indptr",
                                                                  "row", "col", "offsets")
                   if hasattr(getattr(value, part, None), "nbytes"))
    return None


# ------------------------------------------------------------------ the finisher thread

_finisher: queue.SimpleQueue = queue.SimpleQueue()
_finisher_thread: threading.Thread | None = None
_finisher_lock = threading.Lock()


def _to_finisher(item: tuple) -> None:
    """Hand a finished call to the one thread that resolves joblib's futures (started lazily:
    worker processes import this module too, and need no thread)."""
    global _finisher_thread
    with _finisher_lock:
        if _finisher_thread is None or not _finisher_thread.is_alive():  # e.g. after a fork
            _finisher_thread = threading.Thread(target=_finish_forever, daemon=True,
                                                name="lambdamap-joblib-finisher")
            _finisher_thread.start()
    _finisher.put(item)


def _finish_forever() -> None:
    while True:
        backend, call, error, group, bar = _finisher.get()
        try:
            backend._finish(call, error, group, bar)
        except BaseException:  # noqa: BLE001 - a joblib callback failed; keep serving the rest
            log.exception("lambdamap joblib backend: resolving a batch failed")


register()
