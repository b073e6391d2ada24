"""The worker processes of one function, and what each of them runs next.

A :class:`FunctionPool` has ``concurrency`` slots (the function's reserved concurrency). Each slot
holds a :class:`Worker`: one OS process running ``python -m awslambdaric <handler>`` against its
own Runtime API server (:mod:`.runtime_api`). Workers are started with the pool and reused
("warm") until they die. What runs where:

* A synchronous (``RequestResponse``) invocation is assigned to one free worker at once (a warm
  one if possible, else one still starting: a cold start), or throttled when every slot is busy.
* Asynchronous (``Event``) invocations wait in the pool's queue; whichever worker asks its Runtime
  API for the next invocation first takes the oldest.

Failures are handled like Lambda handles them:

* An invocation running past ``timeout`` has its worker killed (``Sandbox.Timedout``).
* With ``enforce_memory``, a worker whose peak RSS exceeds ``memory_mb`` is killed
  (``Runtime.OutOfMemory``); peak RSS is sampled every 0.1 s from ``/proc`` (Linux).
* A worker that dies (SIGKILL, segfault, ``os._exit``) fails its invocation
  (``Runtime.ExitError``) and is replaced at once.
* A worker whose handler cannot be imported (``/init/error``) or that dies while starting fails
  the invocation it was meant to run, and its slot restarts only when work arrives, so a broken
  package cannot spin in a restart loop.
* A failed Event invocation is run again up to ``async_retries`` times (default 0), immediately
  rather than after Lambda's one- and two-minute delays.

One condition variable guards all state; every change notifies it. Processes are started and
waited for outside it, so that a slow ``fork`` never holds up another worker's Runtime API call.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

from . import errors
from .runtime_api import RuntimeAPIServer
from .spec import Deployment, FunctionSpec

log = logging.getLogger(__name__)
#: The workers' stdout and stderr, one record per line, like the function's CloudWatch log group.
output_log = logging.getLogger("lambdamap.emulator.output")

RECORDS_KEPT = 10_000  # finished invocations remembered for records()
MEMORY_SAMPLE_INTERVAL = 0.1
LOG_TAIL_BYTES = 4096  # what LogType=Tail returns, like Lambda
# Environment variables of the host that describe the machine rather than the function.
_PASSED_THROUGH = ("PATH", "TMPDIR", "LD_LIBRARY_PATH", "LANG", "LC_ALL")


def _trace_id() -> str:
    return (f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};"
            f"Parent={uuid.uuid4().hex[:16]};Sampled=0")


@dataclass(frozen=True)
class Outcome:
    """How an invocation ended: the handler's JSON result, or an error JSON and its type."""

    ok: bool
    body: bytes
    error_type: str | None = None


@dataclass
class Invocation:
    """One delivery of an event to the function (a duplicate delivery is a second one)."""

    request_id: str
    payload: bytes
    function_arn: str
    sync: bool
    client_context: str | None = None  # JSON text, already decoded from base64
    trace_id: str = field(default_factory=_trace_id)
    attempt: int = 0
    keep_logs: bool = False  # LogType=Tail: collect the worker's output while it runs
    logs: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome | None = None

    def again(self, attempt: int | None = None) -> "Invocation":
        """A fresh delivery of the same event (same request id, as Lambda's retries have)."""
        return dataclasses.replace(self, attempt=self.attempt if attempt is None else attempt,
                                   logs=[], done=threading.Event(), outcome=None)


@dataclass(frozen=True)
class InvocationRecord:
    """A finished invocation, for tests and diagnostics (:meth:`LambdaEmulator.records`)."""

    function: str
    request_id: str
    sync: bool
    attempt: int
    worker: str            # the worker's AWS_LAMBDA_LOG_STREAM_NAME (lambdamap's worker id)
    pid: int | None
    ok: bool
    error_type: str | None
    duration: float        # seconds the worker ran it (0.0 if it never started)
    finished: float        # time.time()


class Worker:
    """One awslambdaric process and what the pool knows about it."""

    def __init__(self) -> None:
        day = time.strftime("%Y/%m/%d", time.gmtime())
        self.name = f"{day}/[$LATEST]{uuid.uuid4().hex}"  # AWS_LAMBDA_LOG_STREAM_NAME
        self.short = self.name[-8:]
        self.proc: subprocess.Popen | None = None
        self.server: RuntimeAPIServer | None = None
        self.spawned = time.monotonic()
        self.deadline: float | None = None  # kill it at this monotonic time (init or invocation)
        self.ready = False                  # it asked for its first invocation: init is done
        self.init_duration = 0.0
        self.init_error: tuple[bytes, str | None] | None = None
        self.assigned: Invocation | None = None  # reserved for it, not yet fetched
        self.current: Invocation | None = None   # fetched and running
        self.started = 0.0
        self.invocations = 0
        self.kill_cause: tuple[str, str] | None = None  # (errorType, reason) when we killed it
        self.exited = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def busy(self) -> bool:
        return self.assigned is not None or self.current is not None

    @property
    def free(self) -> bool:
        return not self.busy and not self.exited and self.kill_cause is None


class FunctionPool:
    """Worker processes for one function; implements the Runtime API's side (``Runtime``)."""

    def __init__(self, name: str, spec: FunctionSpec, deployment: Deployment, *,
                 concurrency: int, max_queue: int, region: str, account_id: str,
                 enforce_memory: bool, on_record: Callable[[InvocationRecord], None] | None = None):
        self.name, self.spec, self.deployment = name, spec, deployment
        self.concurrency, self.max_queue = concurrency, max_queue
        self.region, self.enforce_memory = region, enforce_memory
        self.arn = f"arn:aws:lambda:{region}:{account_id}:function:{name}"
        self.init_timeout = max(10.0, spec.timeout)  # Lambda: 10 s, then once more within timeout
        self.on_record = on_record
        self.cond = threading.Condition()
        self.slots: list[Worker | None] = [None] * concurrency
        self.queue: collections.deque[Invocation] = collections.deque()
        self.stopping = False
        self._threads: list[threading.Thread] = []
        self._monitor = threading.Thread(target=self._watch_deadlines, daemon=True,
                                         name=f"lambda-emulator-monitor {name}")

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start every worker (they initialise in the background) and the deadline monitor."""
        with self.cond:
            new = self._fill_slots()
        for worker in new:
            self._launch(worker)
        self._monitor.start()

    def stop(self) -> None:
        """Kill every worker and wait for it; queued Event invocations are dropped."""
        with self.cond:
            if self.stopping:
                return
            self.stopping = True
            if self.queue:
                log.warning("function %s: dropping %d queued Event invocations", self.name,
                            len(self.queue))
            self.queue.clear()
            workers = [w for w in self.slots if w is not None]
            for worker in workers:
                self._kill(worker, ("Runtime.ExitError", "Runtime exited: the emulator stopped"))
            self.cond.notify_all()
        self._monitor.join(timeout=10)
        deadline = time.monotonic() + 30
        # Exit watchers and output pumps; a launch racing with stop() may still add some.
        while time.monotonic() < deadline:
            alive = [t for t in list(self._threads) if t.is_alive()]
            if not alive:
                break
            alive[0].join(timeout=max(0.0, deadline - time.monotonic()))
        for worker in workers:  # ones whose process never started have no watcher to do this
            if worker.server is not None:
                worker.server.stop()

    def pids(self) -> list[int]:
        """Process ids of the live workers."""
        with self.cond:
            return [w.pid for w in self.slots if w is not None and w.pid and not w.exited]

    def idle(self) -> bool:
        return not self.queue and all(w is None or not w.busy for w in self.slots)

    # -- invoking ----------------------------------------------------------------------------

    def invoke_sync(self, invocation: Invocation) -> Outcome:
        """Run ``invocation`` on a free worker and wait for it; throttle if there is none."""
        with self.cond:
            if self.stopping:
                raise errors.service_unavailable("the emulator is stopping")
            # A warm worker first, then one still starting, then an empty slot (cold start).
            candidates = [(w.ready if w else False, w is not None, i)
                          for i, w in enumerate(self.slots) if w is None or w.free]
            if not candidates:
                raise errors.too_many_requests()
            slot = max(candidates)[2]
            worker = self.slots[slot]
            launch = worker is None
            if launch:
                worker = self.slots[slot] = Worker()
                worker.deadline = worker.spawned + self.init_timeout
            worker.assigned = invocation
            self.cond.notify_all()
        if launch:
            self._launch(worker)
        invocation.done.wait()  # always set: by a result, an error, a kill or the worker's exit
        return invocation.outcome

    def enqueue(self, invocation: Invocation, copies: int = 1) -> None:
        """Queue ``copies`` deliveries of an Event invocation; throttle if the queue is full."""
        with self.cond:
            if self.stopping:
                raise errors.service_unavailable("the emulator is stopping")
            if len(self.queue) + copies > self.max_queue:
                raise errors.too_many_requests("FunctionInvocationRateLimitExceeded")
            self.queue.append(invocation)
            self.queue.extend(invocation.again() for _ in range(copies - 1))
            new = self._fill_slots()
            self.cond.notify_all()
        for worker in new:
            self._launch(worker)

    def wait_idle(self, timeout: float | None) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.stopping or self.idle(), timeout)

    # -- the Runtime API's side (called from the worker's server threads) --------------------

    def next_invocation(self, worker: Worker) -> tuple[Invocation, int] | None:
        with self.cond:
            if not worker.ready:
                worker.ready = True
                worker.init_duration = time.monotonic() - worker.spawned
                worker.deadline = None
                log.debug("function %s: worker %s ready after %.3f s", self.name, worker.short,
                          worker.init_duration)
            while True:
                if self.stopping or worker.exited or worker.kill_cause is not None:
                    return None
                invocation = worker.assigned or (self.queue.popleft() if self.queue else None)
                if invocation is not None:
                    break
                self.cond.wait()
            worker.assigned, worker.current = None, invocation
            worker.started = time.monotonic()
            worker.deadline = worker.started + self.spec.timeout
            deadline_ms = int((time.time() + self.spec.timeout) * 1000)
            self.cond.notify_all()  # the monitor has a new deadline to watch
        self._log(worker, invocation, f"START RequestId: {invocation.request_id} Version: $LATEST")
        return invocation, deadline_ms

    def complete(self, worker: Worker, request_id: str, ok: bool, body: bytes,
                 error_type: str | None) -> bool:
        with self.cond:
            invocation = worker.current
            if invocation is None or invocation.request_id != request_id:
                return False
            if worker.kill_cause is not None:  # too late: it is being killed (time-out, memory)
                return False
            worker.current, worker.deadline = None, None
            self._finish(invocation, Outcome(ok, body, error_type), worker,
                         time.monotonic() - worker.started)
            worker.invocations += 1
            return True

    def init_failed(self, worker: Worker, body: bytes, error_type: str | None) -> None:
        with self.cond:  # the process exits next; _on_exit fails the invocation with this
            worker.init_error = (body, error_type)

    # -- processes ---------------------------------------------------------------------------

    def _fill_slots(self) -> list[Worker]:
        """Put a new worker into every empty slot (under the lock); the caller launches them."""
        new = []
        for i, worker in enumerate(self.slots):
            if worker is None:
                worker = self.slots[i] = Worker()
                worker.deadline = worker.spawned + self.init_timeout
                new.append(worker)
        return new

    def _launch(self, worker: Worker) -> None:
        """Start ``worker``'s Runtime API server and process (not under the lock)."""
        server = RuntimeAPIServer(self, worker).start()
        try:
            proc = subprocess.Popen(
                self._command(), cwd=self.deployment.task_root,
                env=self._environment(worker, server),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True)  # its own process group: killed with its children
        except OSError as exc:  # e.g. out of processes or file descriptors
            log.error("function %s: cannot start a worker: %s", self.name, exc)
            server.stop()
            with self.cond:
                worker.exited = True
                self._release(worker, ("Runtime.ExitError", f"Runtime failed to start: {exc}"),
                              replace=False)
            return
        with self.cond:
            worker.server, worker.proc = server, proc
            worker.spawned = time.monotonic()
            if self.stopping:
                self._kill(worker, ("Runtime.ExitError", "Runtime exited: the emulator stopped"))
            for target in (self._pump_output, self._wait_exit):
                thread = threading.Thread(target=target, args=(worker,), daemon=True,
                                          name=f"lambda-emulator-{target.__name__} {worker.short}")
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
                thread.start()

    def _command(self) -> list[str]:
        # -S leaves the host's site-packages off sys.path: the package must bring what it needs.
        isolation = ["-S"] if self.deployment.isolated else []
        return [sys.executable, *isolation, "-m", "awslambdaric", self.spec.handler]

    def _environment(self, worker: Worker, server: RuntimeAPIServer) -> dict[str, str]:
        """Lambda's environment variables for ``worker``, then the function's own."""
        spec = self.spec
        env = {k: os.environ[k] for k in _PASSED_THROUGH if k in os.environ}
        env.setdefault("LANG", "C.UTF-8")
        env.update({
            "AWS_LAMBDA_RUNTIME_API": server.address,
            "_HANDLER": spec.handler,
            "LAMBDA_TASK_ROOT": self.deployment.task_root,
            "LAMBDA_RUNTIME_DIR": self.deployment.runtime_dir,
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{spec.runtime}",
            "AWS_LAMBDA_FUNCTION_NAME": self.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(math.ceil(spec.timeout)),
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": worker.name,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "TZ": ":UTC",
            "PYTHONPATH": os.pathsep.join(self.deployment.python_path),
        })
        env.update(spec.environment)
        return env

    def _pump_output(self, worker: Worker) -> None:
        """Forward the worker's output to logging (and to the invocation that asked for a tail)."""
        for raw in iter(worker.proc.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n").replace("\r", "\n")
            invocation = worker.current
            if invocation is not None and invocation.keep_logs:
                invocation.logs.append(line + "\n")
            output_log.info("[%s %s] %s", self.name, worker.short, line)
        worker.proc.stdout.close()

    def _wait_exit(self, worker: Worker) -> None:
        code = worker.proc.wait()
        try:  # whatever it started goes with it, as when Lambda discards a sandbox
            os.killpg(worker.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        with self.cond:
            worker.exited = True
            replacement = self._release(worker, self._exit_cause(worker, code))
        worker.server.stop()
        if replacement is not None:
            self._launch(replacement)

    def _exit_cause(self, worker: Worker, code: int) -> tuple[str, str]:
        if worker.kill_cause is not None:
            return worker.kill_cause
        if worker.init_error is not None:
            return worker.init_error[1] or "Runtime.Unknown", "init error"
        if code < 0:
            return "Runtime.ExitError", f"Runtime exited with error: signal: {_signal_name(-code)}"
        if code > 0:
            return "Runtime.ExitError", f"Runtime exited with error: exit status {code}"
        return "Runtime.ExitError", "Runtime exited without providing a reason"

    def _release(self, worker: Worker, cause: tuple[str, str],
                 replace: bool = True) -> Worker | None:
        """``worker`` is gone (under the lock): fail its invocation, maybe refill its slot.

        Returns the replacement to launch, if any.
        """
        invocation = worker.current or worker.assigned
        duration = time.monotonic() - worker.started if worker.current is not None else 0.0
        worker.current = worker.assigned = worker.deadline = None
        if invocation is None and not worker.ready and self.queue and not self.stopping:
            invocation = self.queue.popleft()  # a failed init fails the event it would have run
        error_type, reason = cause
        if invocation is not None:
            if worker.init_error is not None and worker.kill_cause is None:
                body = worker.init_error[0]
            else:
                body = json.dumps({"errorType": error_type, "errorMessage":
                                   f"RequestId: {invocation.request_id} Error: {reason}"}).encode()
            self._finish(invocation, Outcome(False, body, error_type), worker, duration)
        if not self.stopping:
            log.warning("function %s: worker %s (pid %s) is gone: %s (%s)", self.name,
                        worker.short, worker.pid, reason, error_type)
        slot = next((i for i, w in enumerate(self.slots) if w is worker), None)
        if slot is None:
            return None
        self.slots[slot] = None
        # Replace at once a worker that had started fine; a failed start waits for work.
        if self.stopping or not replace or not (worker.ready or self.queue):
            self.cond.notify_all()
            return None
        replacement = self.slots[slot] = Worker()
        replacement.deadline = replacement.spawned + self.init_timeout
        self.cond.notify_all()
        return replacement

    def _kill(self, worker: Worker, cause: tuple[str, str]) -> None:
        """Kill ``worker``'s process group (under the lock); its exit watcher does the rest."""
        if worker.kill_cause is None:
            worker.kill_cause = cause
        if worker.proc is not None and not worker.exited:
            try:
                os.killpg(worker.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    # -- invocations end ---------------------------------------------------------------------

    def _finish(self, invocation: Invocation, outcome: Outcome, worker: Worker,
                duration: float) -> None:
        """Record how ``invocation`` ended and hand it back (under the lock)."""
        invocation.outcome = outcome
        record = InvocationRecord(
            function=self.name, request_id=invocation.request_id, sync=invocation.sync,
            attempt=invocation.attempt, worker=worker.name, pid=worker.pid, ok=outcome.ok,
            error_type=outcome.error_type, duration=duration, finished=time.time())
        if self.on_record is not None:
            self.on_record(record)
        self._report(worker, invocation, duration)
        if invocation.sync:
            invocation.done.set()
        elif not outcome.ok:
            if invocation.attempt < self.spec.async_retries and not self.stopping:
                log.info("function %s: Event invocation %s failed (%s); retry %d of %d", self.name,
                         invocation.request_id, outcome.error_type, invocation.attempt + 1,
                         self.spec.async_retries)
                self.queue.append(invocation.again(invocation.attempt + 1))
            elif not self.stopping:
                log.warning("function %s: Event invocation %s failed (%s), not retried: %s",
                            self.name, invocation.request_id, outcome.error_type,
                            outcome.body[:500].decode(errors="replace"))
        self.cond.notify_all()

    def _report(self, worker: Worker, invocation: Invocation, duration: float) -> None:
        """Lambda's END and REPORT log lines."""
        first = worker.invocations == 0 and worker.ready
        init = f"\tInit Duration: {worker.init_duration * 1000:.2f} ms" if first else ""
        self._log(worker, invocation, f"END RequestId: {invocation.request_id}")
        self._log(worker, invocation,
                  f"REPORT RequestId: {invocation.request_id}\tDuration: {duration * 1000:.2f} ms"
                  f"\tBilled Duration: {math.ceil(duration * 1000)} ms\tMemory Size: "
                  f"{self.spec.memory_mb} MB\tMax Memory Used: {_peak_rss_mb(worker.pid):.0f} MB"
                  f"{init}")

    def _log(self, worker: Worker, invocation: Invocation, line: str) -> None:
        if invocation.keep_logs:
            invocation.logs.append(line + "\n")
        output_log.info("[%s %s] %s", self.name, worker.short, line)

    # -- deadlines and memory ----------------------------------------------------------------

    def _watch_deadlines(self) -> None:
        """Kill workers past their init or invocation deadline, or over their memory size."""
        with self.cond:
            while not self.stopping:
                now = time.monotonic()
                for worker in self.slots:
                    if worker is None or worker.proc is None or worker.kill_cause is not None:
                        continue
                    if worker.deadline is not None and now >= worker.deadline:
                        self._kill(worker, self._timeout_cause(worker))
                    elif (self.enforce_memory and worker.current is not None
                          and _peak_rss_mb(worker.pid) > self.spec.memory_mb):
                        self._kill(worker, ("Runtime.OutOfMemory",
                                            "Runtime exited with error: signal: killed"))
                deadlines = [w.deadline for w in self.slots
                             if w is not None and w.deadline is not None and w.kill_cause is None]
                wait = max(0.0, min(deadlines) - now) if deadlines else None
                if self.enforce_memory and any(w is not None and w.current for w in self.slots):
                    wait = min(wait if wait is not None else math.inf, MEMORY_SAMPLE_INTERVAL)
                self.cond.wait(wait)

    def _timeout_cause(self, worker: Worker) -> tuple[str, str]:
        if worker.ready:
            return "Sandbox.Timedout", f"Task timed out after {self.spec.timeout:.2f} seconds"
        return "Sandbox.Timedout", f"Init timed out after {self.init_timeout:.2f} seconds"


def _peak_rss_mb(pid: int | None) -> float:
    """The process's peak resident set size (``VmHWM``) in MB; 0 if unknown (not Linux)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def _signal_name(number: int) -> str:
    """A signal as Go's os/exec prints it, which is how Lambda reports it ("killed")."""
    names = {signal.SIGKILL: "killed", signal.SIGSEGV: "segmentation fault",
             signal.SIGABRT: "aborted", signal.SIGTERM: "terminated", signal.SIGBUS: "bus error"}
    try:
        return names.get(signal.Signals(number), signal.Signals(number).name)
    except ValueError:
        return f"signal {number}"
