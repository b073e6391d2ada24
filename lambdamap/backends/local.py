"""The embedded backend: persistent local worker processes that run the universal handler.

Workers are started once and reused across calls and jobs, like warm Lambda containers. A
dispatcher thread hands each idle worker the next event over its own connection, so it always
knows which event a worker holds: when a worker dies (SIGKILL, out of memory) or overruns the
function time-out (it is killed), the executor is told which invocation was lost, and a fresh
worker takes its place.
"""
from __future__ import annotations

import collections
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Listener, wait
from typing import Sequence

from .. import scratch, signing
from ..serialize import RUNTIME_PROCESS_ENV
from ..wire import Event
from .base import Backend

log = logging.getLogger(__name__)

WORKER_START_TIMEOUT = 60.0
#: Folder-name prefix of the workers' socket folders (swept when their owner died).
WORKERS_PREFIX = "lambdamap-workers-"


# Events sent to a worker ahead of time: while it runs one, the next waits in its pipe, so the
# worker never idles for a round trip through the dispatcher.
PREFETCH = 2


class _Worker:
    def __init__(self, proc: subprocess.Popen, conn):
        self.proc, self.conn = proc, conn
        self.jobs: collections.deque[tuple[int, Event]] = collections.deque()  # [0] is running
        self.since = 0.0  # when jobs[0] started
        self.timed_out = False


class LocalBackend(Backend):
    """Run invocations in ``workers`` local processes (default: one per core).

    ``function_timeout`` (seconds, default none) is enforced like Lambda's: an invocation running
    longer is killed and reported as timed out. ``signing_key`` (default: a random one) is the
    HMAC key shared with the workers.
    """

    name = "local"
    reports_losses = True

    def __init__(self, workers: int | None = None, *, function_timeout: float | None = None,
                 signing_key: bytes | None = None):
        self.workers = workers or os.cpu_count() or 1
        self._signing_key = signing_key or signing.new_key()
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.function_timeout = function_timeout
        self._pending: collections.deque[tuple[int, Event]] = collections.deque()
        self._seq = 0
        self._lock = threading.Lock()
        self._closed = False
        self._pool: list[_Worker] = []
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, listener) -> None:
        super().start(listener)
        scratch.sweep(WORKERS_PREFIX)
        self._folder = scratch.make_owned_dir(WORKERS_PREFIX)
        self._authkey = secrets.token_bytes(32)
        procs: dict[int, subprocess.Popen] = {}
        try:
            self._listener = Listener(os.path.join(self._folder, "socket"), family="AF_UNIX",
                                      authkey=self._authkey)
            # Start them all, then take their hand-shakes in whatever order they arrive.
            procs = {p.pid: p for p in (self._spawn() for _ in range(self.workers))}
            self._pool = [self._accept(procs) for _ in range(self.workers)]
        except BaseException:
            for proc in list(procs.values()) + [w.proc for w in self._pool]:
                proc.kill()
                proc.wait()
            shutil.rmtree(self._folder, ignore_errors=True)
            raise
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._dispatch, name="lambdamap-local-dispatch",
                                        daemon=True)
        self._thread.start()

    def _spawn(self) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lambdamap.backends.local_worker", self._listener.address,
             str(self.function_timeout or 0)],
            stdin=subprocess.PIPE, env=_worker_env(), start_new_session=True,
            cwd=self._folder)  # not the client's working directory: a Lambda container has none
        # Secrets travel on stdin: never in argv or the environment of the client.
        proc.stdin.write(self._authkey.hex().encode() + b"\n" + self._signing_key.hex().encode() + b"\n")
        proc.stdin.close()
        return proc

    def _accept(self, procs: dict[int, subprocess.Popen]) -> _Worker:
        """Take the hand-shake of one of ``procs``; fail clearly if a worker cannot start."""
        # Listener.accept has no time-out of its own; its socket does (private attribute).
        self._listener._listener._socket.settimeout(WORKER_START_TIMEOUT)
        try:
            conn = self._listener.accept()
        except OSError as exc:
            codes = {pid: p.poll() for pid, p in procs.items()}
            raise RuntimeError(
                f"local worker processes did not start within {WORKER_START_TIMEOUT} s "
                f"(exit codes {codes}); run `{sys.executable} -m lambdamap.backends.local_worker` "
                "to see why") from exc
        _, pid = conn.recv()
        return _Worker(procs.pop(pid), conn)

    def close(self) -> None:
        """Stop the workers: idle ones exit, busy ones (running calls nobody waits for any
        more: the executor closes the backend only when every call is resolved or cancelled)
        are killed at once. The socket folder is removed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join(timeout=10)
        for w in self._pool:
            if w.jobs:
                w.proc.kill()
                continue
            try:
                w.conn.send(None)
            except OSError:
                pass
        deadline = time.time() + 5
        for w in self._pool:
            try:
                w.proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            w.conn.close()
        if self._thread is not None:
            self._listener.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            shutil.rmtree(self._folder, ignore_errors=True)  # the workers' cwd: whatever they left

    def signing_key(self) -> bytes:
        return self._signing_key

    def runtime_versions(self) -> dict[str, str | None]:
        """The workers run this interpreter, so they have the client's own packages."""
        from ..versions import installed_versions

        return installed_versions()

    @property
    def capacity(self) -> int:
        """The number of worker processes."""
        return self.workers

    @property
    def pids(self) -> list[int]:
        """Process ids of the current workers (for tests and diagnostics)."""
        return [w.proc.pid for w in self._pool]

    # -- invoking ----------------------------------------------------------------------------

    def invoke(self, events: Sequence[Event]) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot invoke: the local backend is closed")
            for event in events:
                self._seq += 1
                self._pending.append((self._seq, event))
        os.write(self._wake_w, b"x")

    def _dispatch(self) -> None:
        while not self._closed:
            self._hand_out()
            waitables = [self._wake_r] + [w.conn for w in self._pool]
            ready = wait(waitables, timeout=self._next_deadline())
            for obj in ready:
                if obj == self._wake_r:
                    os.read(self._wake_r, 65536)
                    continue
                worker = next(w for w in self._pool if w.conn is obj)
                try:
                    _, seq, failure, not_run = worker.conn.recv()
                except (EOFError, OSError):
                    self._replace(worker)
                    continue
                _, event = worker.jobs.popleft()
                worker.since = time.monotonic()
                if failure:
                    self.listener.invocation_lost(event, f"the handler failed:\n{failure}", False)
                    continue
                if not_run:  # the handler ran out of time before these started: run them again
                    with self._lock:
                        self._seq += 1
                        self._pending.appendleft((self._seq, event.with_calls(not_run)))
                self.listener.wake([c for c in event.calls if c not in not_run])
            self._enforce_timeout()

    def _hand_out(self) -> None:
        # Fill every worker's first slot before any second one, so that a short job still
        # spreads over all workers.
        for depth in range(1, PREFETCH + 1):
            for worker in self._pool:
                if len(worker.jobs) >= depth:
                    continue
                job = self._next_live()
                if job is None:
                    return
                seq, event = job
                if not worker.jobs:
                    worker.since = time.monotonic()
                worker.jobs.append(job)
                try:
                    worker.conn.send((seq, event.to_json()))
                except OSError:
                    pass  # the worker died; its connection reads as closed and it is replaced

    def _next_live(self) -> tuple[int, Event] | None:
        """The next queued event, without its cancelled calls (skipping those left empty)."""
        while True:
            with self._lock:
                if not self._pending:
                    return None
                seq, event = self._pending.popleft()
            live = self.listener.live(event)
            if live is not None:
                return seq, live

    def _next_deadline(self) -> float | None:
        if not self.function_timeout:
            return None
        busy = [w.since for w in self._pool if w.jobs]
        if not busy:
            return None
        return max(0.0, min(busy) + self.function_timeout - time.monotonic()) + 0.01

    def _enforce_timeout(self) -> None:
        if not self.function_timeout:
            return
        now = time.monotonic()
        for worker in self._pool:
            if worker.jobs and now - worker.since > self.function_timeout:
                worker.timed_out = True
                worker.proc.kill()  # its connection now reads as closed: replaced in _dispatch

    def _replace(self, worker: _Worker) -> None:
        """A worker died: report its invocation as lost and start a fresh worker in its place."""
        code = worker.proc.wait()
        worker.conn.close()
        if code < 0:
            cause = f"worker process {worker.proc.pid} was killed by {signal.Signals(-code).name}"
        else:
            cause = f"worker process {worker.proc.pid} exited with code {code}"
        if worker.timed_out:
            cause = f"the invocation ran past the function time-out of {self.function_timeout} s"
        log.warning("local backend: %s", cause)
        index = self._pool.index(worker)
        if not self._closed:
            proc = self._spawn()
            self._pool[index] = self._accept({proc.pid: proc})
        if worker.jobs:
            _, running = worker.jobs.popleft()
            with self._lock:  # the prefetched ones never started: they simply go first again
                self._pending.extendleft(reversed(worker.jobs))
            self.listener.invocation_lost(running, cause, worker.timed_out)
        self.listener.wake()


def _worker_env() -> dict:
    """The worker's environment: the client's, but ``PYTHONPATH`` only makes lambdamap importable
    (even from a source tree); the client's own additions are not the runtime's (see local_worker)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env[RUNTIME_PROCESS_ENV] = "1"  # a runtime: what it pickles never ships modules by value
    return env
