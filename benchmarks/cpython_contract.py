"""CPython's own ``concurrent.futures`` tests, run against lambdamap and ProcessPoolExecutor.

The yardstick for lambdamap's drop-in contract: the test classes that CPython 3.11's
``Lib/test/test_concurrent_futures.py`` runs against ``ProcessPoolExecutor`` (shutdown, wait,
as_completed, the executor tests, the deadlock tests, the initializer tests) and its ``Future``
tests, run unchanged against

* ``lambdamap``: CPython's own ``create_executor_tests`` combines each mixin with a
  ``LambdamapMixin`` that sets ``executor_type = lambdamap.Executor`` (local backend), as its
  ``ProcessPoolSpawnMixin`` sets ``ProcessPoolExecutor``; the deadlock tests, which pass
  ``mp_context`` to every executor they make, get a subclass that ignores it; the snippets run
  in a fresh interpreter import ``Executor`` from lambdamap; the ``Future`` tests run on
  :class:`lambdamap.CallFuture`;
* ``process-<context>``: ``ProcessPoolExecutor`` with that multiprocessing context, the peer,
  through CPython's own classes in the same run.

Tests that reach into a process pool's insides (``_processes``, ``mp_context``,
``max_tasks_per_child``, a ``ProcessPoolExecutor`` built by the test itself) or use
``initializer`` are not applicable to lambdamap: listed with the reason, not run against it.
Every lambdamap failure is classified: explained by a deliberate deviation (the README's
"Deviations from concurrent.futures"; the failure message must match what the deviation
predicts), or unexplained. Where a deviation stops a test half-way, a companion check verifies
the rest of its point (e.g. with a call's output captured, that a call pending at interpreter
exit still runs); a failed companion leaves the test unexplained.

The test file is not part of this repository, nor of the pyenv Python here; get CPython 3.11's
copy once, e.g. from Debian's ``libpython3.11-testsuite`` package::

    mkdir -p "${TMPDIR:-/tmp}/cpython-3.11" && cd "${TMPDIR:-/tmp}/cpython-3.11" \\
      && apt-get download libpython3.11-testsuite \\
      && dpkg-deb --fsys-tarfile libpython3.11-testsuite_*.deb \\
         | tar -xO ./usr/lib/python3.11/test/test_concurrent_futures.py \\
         > test_concurrent_futures.py && rm libpython3.11-testsuite_*.deb

(or ``git show origin/3.11:Lib/test/test_concurrent_futures.py`` in a CPython checkout). Then,
from the repository root, with Python 3.11 (the file uses 3.11's ``test.support``)::

    .venv/bin/python benchmarks/cpython_contract.py [TEST_FILE] [--peers spawn fork]

The script copies the file into a ``test`` package under benchmarks/results/scratch/ that
defers to the stdlib's ``test`` package, and puts it first on PYTHONPATH, so that every process
of the run imports ``test.test_concurrent_futures`` by name as in a CPython build tree. It writes
benchmarks/results/cpython_contract.json (per test and target: pass / fail / error / skip / n/a,
the message's first line, seconds; the classification) and prints a summary (~3-5 minutes).
Each target runs in child processes; a test that hangs is stopped after ``--test-timeout``
seconds, counted as an error, and the run goes on with the next test.
"""
from __future__ import annotations

import argparse
import faulthandler
import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
DEFAULT_TESTS = os.path.join(os.environ.get("TMPDIR") or "/tmp", "cpython-3.11",
                             "test_concurrent_futures.py")
MODULE = "test.test_concurrent_futures"

# The mixins CPython 3.11 combines with ProcessPool{Fork,Forkserver,Spawn}Mixin, in its order.
EXECUTOR_MIXINS = ["InitializerMixin", "FailingInitializerMixin", "ProcessPoolShutdownTest",
                   "WaitTests", "AsCompletedTests", "ProcessPoolExecutorTest",
                   "ExecutorDeadlockTest"]

_PROCESSES = "reaches into the pool's worker processes (`executor._processes`)"
_OWN_POOL = ("builds a `ProcessPoolExecutor` itself (not `executor_type`) and joins its processes "
             "and manager thread: it tests the stdlib, whatever the executor under test")
_MAX_TASKS = "`max_tasks_per_child` and `_mp_context` are process-pool arguments"
_INITIALIZER = ("`initializer`/`initargs` are not part of the abstract `Executor` interface, and "
                "`lambdamap.Executor` has none: per-worker state lives in the function (a "
                "module-level cache) or in `put()` objects")

#: Test id -> why it does not apply to lambdamap; not run against it.
NOT_APPLICABLE = {
    "InitializerMixin.test_initializer": _INITIALIZER,
    "FailingInitializerMixin.test_initializer": _INITIALIZER + "; the test also polls "
    "`executor._broken`",
    "ProcessPoolShutdownTest.test_processes_terminate": _PROCESSES + " and shares a "
    "multiprocessing Semaphore with them",
    "ProcessPoolShutdownTest.test_context_manager_shutdown": _OWN_POOL,
    "ProcessPoolShutdownTest.test_del_shutdown": _OWN_POOL,
    "ProcessPoolShutdownTest.test_shutdown_no_wait": _OWN_POOL,
    "ProcessPoolExecutorTest.test_max_workers_too_large": "Windows' limit of 61 processes",
    "ProcessPoolExecutorTest.test_killed_child": _PROCESSES + " to terminate one; lambdamap's "
    "answer to a lost worker is deviation `lost-worker`",
    "ProcessPoolExecutorTest.test_ressources_gced_in_workers": "sends a `multiprocessing."
    "Manager` proxy, which authenticates only in processes of the client's multiprocessing "
    "family (an invocation on Lambda cannot reach the client's manager at all)",
    "ProcessPoolExecutorTest.test_saturation": _PROCESSES + " and shares a multiprocessing "
    "Semaphore with them",
    "ProcessPoolExecutorTest.test_idle_process_reuse_one": _PROCESSES,
    "ProcessPoolExecutorTest.test_idle_process_reuse_multiple": _PROCESSES,
    "ProcessPoolExecutorTest.test_max_tasks_per_child": _MAX_TASKS,
    "ProcessPoolExecutorTest.test_max_tasks_per_child_defaults_to_spawn_context": _MAX_TASKS,
    "ProcessPoolExecutorTest.test_max_tasks_early_shutdown": _MAX_TASKS,
    "ExecutorDeadlockTest.test_shutdown_deadlock_pickle": "reads "
    "`executor._executor_manager_thread` before it reaches its point (which "
    "test_error_at_task_pickle covers)",
}

#: Deliberate deviations, as the README's "Deviations from concurrent.futures" names them.
DEVIATIONS = {
    "cancel-running": "`cancel()` succeeds until the result arrives, also while the call runs "
                      "remotely, and notifies waiters at once (state CANCELLED_AND_NOTIFIED); "
                      "`running()` is never True",
    "exit-by-exception": "leaving `with` by an exception cancels the outstanding calls instead "
                         "of waiting for them",
    "lost-worker": "a lost worker (crash, kill, out of memory) is retried, then fails that one "
                   "call with `WorkerLostError` (a `BrokenExecutor`, not a "
                   "`BrokenProcessPool`); the executor keeps running the other calls",
    "output-captured": "what a call prints goes to `future.stdout`/`stderr`, not to the "
                       "client's streams",
    "submit-time-pickling": "an argument that cannot be pickled raises `SerializationError` (a "
                            "`pickle.PicklingError`) from `submit()`/`map()` itself, before "
                            "anything is sent, not later from `result()`",
    "call-failures-stay-per-call": "whatever a user object raises while a call's arguments or "
                                   "result are (un)pickled, `SystemExit` included, is that "
                                   "call's outcome (the error itself on the worker's side of "
                                   "the arguments, `SerializationError` for the result), not a "
                                   "broken pool",
    "remote-traceback-type": "the remote traceback is carried by "
                             "`lambdamap.errors.RemoteTraceback` (same `.tb` text), not the "
                             "stdlib's private `concurrent.futures.process._RemoteTraceback`",
    "future-repr": "`CallFuture`'s repr names its class and call: `<CallFuture call=N at 0x... "
                   "state=...>`",
}

#: Test id -> (deviation, regex its lambdamap failure message must match). A failure whose
#: message does not match is not explained by the deviation, and counts as unexplained.
EXPECTED_FAILURES: dict[str, tuple[str, str]] = {
    "ExecutorShutdownTest.test_cancel_futures": ("cancel-running", r"0 not greater than 0"),
    "ExecutorShutdownTest.test_interpreter_shutdown": ("output-captured", r"b'' != b'apple'"),
    "ExecutorShutdownTest.test_hang_gh83386": ("output-captured", r"b'' != b'apple'"),
    "ProcessPoolExecutorTest.test_traceback": ("remote-traceback-type",
                                               r"RemoteTraceback'> is not <class 'concurrent"),
    "ExecutorDeadlockTest.test_crash_at_task_unpickle": ("lost-worker", r"^WorkerLostError"),
    "ExecutorDeadlockTest.test_crash_during_func_exec_on_worker": ("lost-worker",
                                                                   r"^WorkerLostError"),
    "ExecutorDeadlockTest.test_crash_during_result_pickle_on_worker": ("lost-worker",
                                                                       r"^WorkerLostError"),
    "ExecutorDeadlockTest.test_shutdown_deadlock": ("lost-worker", r"^WorkerLostError"),
    "ExecutorDeadlockTest.test_error_at_task_pickle": ("submit-time-pickling",
                                                       r"^SerializationError: cannot serialize"),
    "ExecutorDeadlockTest.test_error_at_task_unpickle": ("call-failures-stay-per-call",
                                                         r"^UnpicklingError"),
    "ExecutorDeadlockTest.test_exit_at_task_unpickle": ("call-failures-stay-per-call",
                                                        r"^SystemExit: 1"),
    "ExecutorDeadlockTest.test_exit_during_result_pickle_on_worker": (
        "call-failures-stay-per-call", r"^SerializationError: cannot serialize the result"),
    "ExecutorDeadlockTest.test_error_during_result_unpickle_in_result_handler": (
        "call-failures-stay-per-call", r"^SerializationError: the result .* could not be unp"),
    "ExecutorDeadlockTest.test_exit_during_result_unpickle_in_result_handler": (
        "call-failures-stay-per-call", r"^SerializationError: the result .* could not be unp"),
    "FutureTests.test_cancel": ("cancel-running", r"'CANCELLED_AND_NOTIFIED' != 'CANCELLED'"),
    "FutureTests.test_repr": ("future-repr", r"<CallFuture call=0 at"),
    "FutureTests.test_multiple_set_result": ("future-repr", r"<CallFuture call=0 at"),
    "FutureTests.test_multiple_set_exception": ("future-repr", r"<CallFuture call=0 at"),
}

#: Test id -> the companion check (below) that verifies what a deviation keeps the test from
#: checking: e.g. with output captured, that a pending call still runs at interpreter exit.
COMPANIONS = {
    "ExecutorShutdownTest.test_interpreter_shutdown": "exit_runs_pending_call",
    "ExecutorShutdownTest.test_hang_gh83386": "exit_after_shutdown_nowait_runs_pending_call",
    "ProcessPoolExecutorTest.test_traceback": "traceback_shows_source_line",
}


# -- loading the test module ---------------------------------------------------------------------

_OVERLAY_INIT = '''"""CPython's test package, plus test_concurrent_futures.py from this folder.

Made by benchmarks/cpython_contract.py: with this folder first on PYTHONPATH, every process of
the run (ProcessPoolExecutor's spawned workers, the tests' fresh interpreters) imports
``test.test_concurrent_futures`` by name, as in a CPython build tree.
"""
import os
import sysconfig

__path__.append(os.path.join(sysconfig.get_paths()["stdlib"], "test"))
'''


def make_overlay(tests_path: str, folder: str) -> str:
    """A ``test`` package in ``folder`` that holds the test file and defers to the stdlib's
    ``test`` package for the rest (``test.support``); returns the folder for PYTHONPATH."""
    package = os.path.join(folder, "test")
    os.makedirs(package, exist_ok=True)
    shutil.copyfile(tests_path, os.path.join(package, "test_concurrent_futures.py"))
    with open(os.path.join(package, "__init__.py"), "w") as f:
        f.write(_OVERLAY_INIT)
    return folder


def _python_snippet_hook(tcf, target: str):
    """``assert_python_ok`` for the tests that run a snippet in a fresh interpreter: the snippet
    imports the executor under test by its name (``Executor`` is lambdamap's), and keeps the
    PYTHONPATH that makes the test module importable (isolated mode, ``-I``, would drop it)."""
    original = tcf.assert_python_ok

    def assert_python_ok(*args, **env_vars):
        args = list(args)
        script = args[args.index("-c") + 1]
        if target == "lambdamap":
            stdlib_import = "from concurrent.futures import Executor"
            if stdlib_import not in script:
                raise AssertionError("snippet does not import the executor by name: "
                                     + script[:200])
            args[args.index("-c") + 1] = script.replace(stdlib_import,
                                                        "from lambdamap import Executor")
        return original(*args, PYTHONPATH=os.environ["PYTHONPATH"], **env_vars)

    return assert_python_ok


# -- the child: run one target's tests -------------------------------------------------------------

def _test_id(test: unittest.TestCase) -> str:
    """``<class that defines the method>.<method>``: the same id for every executor."""
    name = test._testMethodName
    for klass in type(test).__mro__:
        if name in vars(klass):
            return f"{klass.__name__}.{name}"
    return f"{type(test).__name__}.{name}"


def _classes_for(tcf, executor_mixin: type) -> list[type]:
    """The test classes CPython's ``create_executor_tests`` made for ``executor_mixin``."""
    found = []
    for name in EXECUTOR_MIXINS:
        mixin = getattr(tcf, name)
        found += [c for c in vars(tcf).values() if isinstance(c, type)
                  and issubclass(c, mixin) and issubclass(c, executor_mixin)
                  and issubclass(c, tcf.BaseTestCase)]
    return list(dict.fromkeys(found))


def _lambdamap_classes(tcf) -> list[type]:
    """CPython's mixins combined with lambdamap's executor by CPython's own helper, in the test
    module (so that their methods pickle by reference as the stdlib's classes do)."""
    import multiprocessing

    import lambdamap

    class LambdamapMixin(tcf.ExecutorMixin):
        """ExecutorMixin with lambdamap's executor, as ProcessPoolSpawnMixin does it with
        ProcessPoolExecutor."""
        executor_type = lambdamap.Executor

        def get_context(self):
            # For tests that make multiprocessing objects; lambdamap's local workers are fresh
            # interpreters, as with "spawn".
            return multiprocessing.get_context("spawn")

    class DropsMpContext(lambdamap.Executor):
        """``lambdamap.Executor`` that ignores ``mp_context``: the deadlock tests pass one to
        every executor they make."""

        def __init__(self, *args, mp_context=None, **kwargs):
            super().__init__(*args, **kwargs)

    DropsMpContext.__name__ = DropsMpContext.__qualname__ = "Executor"
    for name in EXECUTOR_MIXINS:
        tcf.create_executor_tests(getattr(tcf, name), executor_mixins=(LambdamapMixin,))
    classes = _classes_for(tcf, LambdamapMixin)
    for klass in classes:
        if issubclass(klass, tcf.ExecutorDeadlockTest):
            klass.executor_type = DropsMpContext

    class CallFuture(lambdamap.CallFuture):
        """A ``CallFuture`` that, like ``Future()``, needs no argument."""

        def __init__(self):
            super().__init__(call_id=0)

    # The tests make their futures with Future() or take the module's ready-made ones: all
    # become CallFutures.
    tcf.Future = CallFuture
    for name, state, kwargs in (("PENDING", "PENDING", {}), ("RUNNING", "RUNNING", {}),
                                ("CANCELLED", "CANCELLED", {}),
                                ("CANCELLED_AND_NOTIFIED", "CANCELLED_AND_NOTIFIED", {}),
                                ("EXCEPTION", "FINISHED", {"exception": OSError()}),
                                ("SUCCESSFUL", "FINISHED", {"result": 42})):
        setattr(tcf, f"{name}_FUTURE", tcf.create_future(state=getattr(tcf, state), **kwargs))
    return classes


def _build_suite(tcf, target: str) -> list[tuple[str, unittest.TestCase]]:
    if target == "lambdamap":
        classes = _lambdamap_classes(tcf)
    else:
        context = target.split("-", 1)[1]
        classes = _classes_for(tcf, getattr(tcf, f"ProcessPool{context.capitalize()}Mixin"))
    tests = []
    for klass in classes + [tcf.FutureTests]:
        for test in unittest.TestLoader().loadTestsFromTestCase(klass):
            tests.append((_test_id(test), test))
    return tests


class _Outcome(unittest.TestResult):
    """Keeps the worst outcome of one test (an error in tearDown after a pass counts)."""
    RANK = {"pass": 0, "skip": 1, "fail": 2, "error": 3}

    def __init__(self):
        super().__init__()
        self.outcome, self.message = "pass", ""

    def _set(self, outcome: str, message: str) -> None:
        if self.RANK[outcome] >= self.RANK[self.outcome]:
            self.outcome, self.message = outcome, message

    @staticmethod
    def _first_line(err) -> str:
        exc_type, exc, _ = err
        text = str(exc).strip().splitlines()
        return f"{exc_type.__name__}: {text[0] if text else ''}".strip()

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._set("fail", self._first_line(err))
        self.details = "".join(traceback.format_exception(*err))

    def addError(self, test, err):
        super().addError(test, err)
        self._set("error", self._first_line(err))
        self.details = "".join(traceback.format_exception(*err))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._set("skip", str(reason).splitlines()[0] if reason else "")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._set("fail" if failed else "error", self._first_line(err))


def run_target(target: str, out_path: str, done: set[str], test_timeout: float) -> None:
    """Run the target's tests not in ``done``, one JSON line per test (a start line first, so
    that the parent can name a test that hung)."""
    tcf = importlib.import_module(MODULE)
    if not tcf.__file__.startswith(os.environ["PYTHONPATH"].split(os.pathsep)[0]):
        raise SystemExit(f"{MODULE} came from {tcf.__file__}, not from the overlay")
    tcf.assert_python_ok = _python_snippet_hook(tcf, target)
    out = open(out_path, "a", buffering=1)
    for test_id, test in _build_suite(tcf, target):
        if test_id in done:
            continue
        if target == "lambdamap" and test_id in NOT_APPLICABLE:
            out.write(json.dumps({"id": test_id, "outcome": "n/a",
                                  "message": NOT_APPLICABLE[test_id], "seconds": 0.0}) + "\n")
            continue
        out.write(json.dumps({"id": test_id, "started": True}) + "\n")
        print(f"[{target}] {test_id} ...", end=" ", flush=True)
        # A hung test (a deadlock is one of the things these tests look for) must not stop the
        # run: dump the stacks to stderr and exit; the parent restarts after this test.
        faulthandler.dump_traceback_later(test_timeout, exit=True)
        start = time.monotonic()
        result = _Outcome()
        test.run(result)
        faulthandler.cancel_dump_traceback_later()
        seconds = time.monotonic() - start
        print(result.outcome, f"({seconds:.1f} s)", flush=True)
        if result.outcome in ("fail", "error"):
            sys.stderr.write(f"\n==== {target} {test_id}\n{getattr(result, 'details', '')}\n")
        out.write(json.dumps({"id": test_id, "outcome": result.outcome,
                              "message": result.message, "seconds": round(seconds, 2)}) + "\n")
    if target == "lambdamap":
        run_companions(tcf, out, done)
    out.close()


# -- companion checks (lambdamap only) ---------------------------------------------------------------

_EXIT_SNIPPET = """
import time
from lambdamap import Executor

def sleep_and_write(t, path):
    time.sleep(t)
    with open(path, "w") as f:
        f.write("apple")

if __name__ == "__main__":
    t = Executor(max_workers=3)
    t.submit(sleep_and_write, 1.0, {path!r})
    {shutdown}
"""


def _exit_runs_pending_call(shutdown: str) -> tuple[bool, str]:
    """test_interpreter_shutdown's point, seen through a file instead of the (captured) stdout:
    a call pending when the interpreter exits still runs, and nothing is printed to stderr."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "apple")
        proc = subprocess.run([sys.executable, "-I", "-c",
                               _EXIT_SNIPPET.format(path=path, shutdown=shutdown)],
                              capture_output=True, text=True, timeout=120)
        ran = os.path.exists(path)
    ok = proc.returncode == 0 and ran and not proc.stderr
    return ok, f"exit {proc.returncode}; the call ran: {ran}; stderr: {proc.stderr.strip()[:300]!r}"


def _traceback_shows_source_line(tcf) -> tuple[bool, str]:
    """test_traceback's other assertions: the remote traceback, and what sys.excepthook prints,
    contain the raising source line."""
    import lambdamap
    from test import support

    line = "raise RuntimeError(123) # some comment"
    with lambdamap.Executor(max_workers=2) as ex:
        future = ex.submit(tcf.ProcessPoolExecutorTest._test_traceback)
        exc = future.exception()
    if type(exc) is not RuntimeError or exc.args != (123,):
        return False, f"raised {exc!r}, not RuntimeError(123)"
    remote = getattr(exc.__cause__, "tb", "")
    with support.captured_stderr() as hook:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    in_tb, in_hook = line in remote, line in hook.getvalue()
    last = [x.strip() for x in remote.strip().splitlines()[-3:]]
    return in_tb and in_hook, (f"source line in the remote traceback: {in_tb}, in excepthook's "
                               f"output: {in_hook}; the remote traceback ends {last}")


def run_companions(tcf, out, done: set[str]) -> None:
    checks = {
        "exit_runs_pending_call": lambda: _exit_runs_pending_call(""),
        "exit_after_shutdown_nowait_runs_pending_call":
            lambda: _exit_runs_pending_call("t.shutdown(wait=False)"),
        "traceback_shows_source_line": lambda: _traceback_shows_source_line(tcf),
    }
    for name, check in checks.items():
        if f"companion:{name}" in done:
            continue
        start = time.monotonic()
        try:
            ok, detail = check()
        except Exception as exc:  # noqa: BLE001 - a check that breaks is a failed check
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        print(f"[lambdamap] companion {name} ...", "pass" if ok else "fail", flush=True)
        out.write(json.dumps({"id": f"companion:{name}", "outcome": "pass" if ok else "fail",
                              "message": detail,
                              "seconds": round(time.monotonic() - start, 2)}) + "\n")


# -- the parent --------------------------------------------------------------------------------------

def _read_lines(path: str) -> tuple[dict[str, dict], str | None]:
    records, started = {}, None
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if record.get("started"):
                    started = record["id"]
                else:
                    records[record["id"]] = record
                    started = None
    return records, started


def collect(target: str, overlay: str, scratch: str, test_timeout: float) -> dict[str, dict]:
    """Run ``target`` in child processes until every test has an outcome."""
    path = os.pathsep.join(p for p in (overlay, os.environ.get("PYTHONPATH")) if p)
    out_path = os.path.join(scratch, f"{target}.jsonl")
    log_path = os.path.join(scratch, f"{target}.log")
    if os.path.exists(out_path):
        os.remove(out_path)
    with open(log_path, "w"):
        pass
    while True:
        records, _ = _read_lines(out_path)
        done_path = os.path.join(scratch, f"{target}.done.json")
        with open(done_path, "w") as f:
            json.dump(sorted(records), f)
        with open(log_path, "a") as log:
            child = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", target,
                 "--out", out_path, "--done", done_path, "--test-timeout", str(test_timeout)],
                stderr=log, env={**os.environ, "PYTHONPATH": path})
        records, hung = _read_lines(out_path)
        if hung is None:
            if child.returncode != 0:
                raise SystemExit(f"the {target} run failed (exit {child.returncode}) outside "
                                 f"any test; see {log_path}")
            return records
        print(f"\n[{target}] {hung} did not finish within {test_timeout:.0f} s (or killed its "
              f"process): counted as an error; stacks in {log_path}", flush=True)
        with open(out_path, "a") as f:
            f.write(json.dumps({"id": hung, "outcome": "error",
                                "message": f"hang: no outcome within {test_timeout:.0f} s, or "
                                           f"the test process died (exit {child.returncode})",
                                "seconds": test_timeout}) + "\n")


def _group(test_id: str) -> str:
    return "futures" if test_id.startswith("FutureTests.") else "executor"


def _counts(records: dict[str, dict], ids: list[str]) -> dict[str, int]:
    counts = {"pass": 0, "fail": 0, "error": 0, "skip": 0, "n/a": 0}
    for test_id in ids:
        if test_id in records:
            counts[records[test_id]["outcome"]] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tests", nargs="?", default=DEFAULT_TESTS,
                        help="CPython 3.11's Lib/test/test_concurrent_futures.py "
                             f"(default {DEFAULT_TESTS})")
    parser.add_argument("--peers", nargs="*", default=["spawn", "fork"],
                        choices=["spawn", "fork", "forkserver"],
                        help="ProcessPoolExecutor contexts to run as peers (default spawn fork)")
    parser.add_argument("--test-timeout", type=float, default=180.0,
                        help="seconds after which a test counts as hung (default 180)")
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--done", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    tests_path = os.path.abspath(args.tests)
    if args.child:
        with open(args.done) as f:
            done = set(json.load(f))
        run_target(args.child, args.out, done, args.test_timeout)
        return
    if sys.version_info[:2] != (3, 11):
        raise SystemExit("run with Python 3.11: the test file uses 3.11's test.support")
    if not os.path.exists(tests_path):
        raise SystemExit(f"{tests_path} does not exist: fetch CPython 3.11's "
                         "Lib/test/test_concurrent_futures.py first (see --help's description "
                         "at the top of this script)")
    with open(tests_path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()

    targets = ["lambdamap"] + [f"process-{c}" for c in args.peers]
    scratch = os.path.join(RESULTS, "scratch", "cpython_contract")
    os.makedirs(scratch, exist_ok=True)
    overlay = make_overlay(tests_path, os.path.join(scratch, "overlay"))
    load_before = os.getloadavg()
    started = time.time()
    runs = {}
    for target in targets:
        runs[target] = collect(target, overlay, scratch, args.test_timeout)
    load_after = os.getloadavg()

    ids = [i for i in dict.fromkeys(i for t in targets for i in runs[t])
           if not i.startswith("companion:")]
    tests = [_classify(test_id, runs, targets) for test_id in ids]
    unexplained = [row["id"] for row in tests if row.get("verdict") == "unexplained"]
    applicable = [row["id"] for row in tests if row["applicable"]]
    counts = {t: {g: _counts(runs[t], [i for i in applicable if _group(i) == g])
                  for g in ("executor", "futures")} for t in targets}
    not_applicable = [row["id"] for row in tests if not row["applicable"]]
    report = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "wall_s": round(time.time() - started, 1),
        "command": "python benchmarks/cpython_contract.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "loadavg_before": load_before, "loadavg_after": load_after},
        "test_file": {"path": tests_path, "sha256": sha,
                      "origin": "CPython 3.11 Lib/test/test_concurrent_futures.py"},
        "targets": targets,
        "counts_note": "over the tests applicable to lambdamap, for every target alike",
        "counts": counts,
        "not_applicable_to_lambdamap": len(not_applicable),
        "peer_outcomes_on_not_applicable": {
            t: _counts(runs[t], not_applicable) for t in targets[1:]},
        "deviations": DEVIATIONS,
        "unexplained_lambdamap_failures": unexplained,
        "tests": tests,
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "cpython_contract.json"), "w") as f:
        json.dump(report, f, indent=2)
    _print_summary(report)


def _classify(test_id: str, runs: dict[str, dict], targets: list[str]) -> dict:
    """One test's row: outcomes per target and, for a lambdamap failure, what explains it."""
    row = {"id": test_id, "group": _group(test_id), "applicable": test_id not in NOT_APPLICABLE,
           "results": {t: runs[t].get(test_id) for t in targets}}
    if not row["applicable"]:
        row["not_applicable"] = NOT_APPLICABLE[test_id]
        return row
    mine = runs["lambdamap"].get(test_id) or {}
    companion = COMPANIONS.get(test_id)
    if companion:
        row["companion"] = {"check": companion, **(runs["lambdamap"].get(f"companion:{companion}")
                                                   or {"outcome": "missing"})}
    expected = EXPECTED_FAILURES.get(test_id)
    if mine.get("outcome") not in ("fail", "error"):
        if expected:
            row["note"] = f"listed under deviation {expected[0]} but did not fail"
        return row
    if expected is None:
        row["verdict"], row["why"] = "unexplained", "no deviation covers this failure"
    elif not re.search(expected[1], mine.get("message", "")):
        row["verdict"], row["why"] = "unexplained", (
            f"fails otherwise than deviation {expected[0]} explains (expected /{expected[1]}/)")
    elif companion and row["companion"].get("outcome") != "pass":
        row["verdict"], row["why"] = "unexplained", (
            f"deviation {expected[0]} explains the failure, but the companion check {companion}"
            f" of the rest of the test failed: {row['companion'].get('message', '')}")
    else:
        row["verdict"], row["deviation"] = "deviation", expected[0]
    return row


def _print_summary(report: dict) -> None:
    targets = report["targets"]
    load = report["machine"]
    print(f"\n{len(report['tests'])} tests ({report['not_applicable_to_lambdamap']} not "
          f"applicable to lambdamap); load average {load['loadavg_before'][0]:.1f} -> "
          f"{load['loadavg_after'][0]:.1f}; {report['wall_s']:.0f} s\n")
    print("| target | group | pass | fail | error | skip |")
    print("|---|---|---:|---:|---:|---:|")
    for t in targets:
        for g in ("executor", "futures"):
            c = report["counts"][t][g]
            print(f"| {t} | {g} | {c['pass']} | {c['fail']} | {c['error']} | {c['skip']} |")
    print(f"\n(counts over the tests applicable to lambdamap)")
    print("\nlambdamap failures:")
    for row in report["tests"]:
        result = row["results"]["lambdamap"] or {}
        if result.get("outcome") in ("fail", "error"):
            why = row.get("deviation") or f"UNEXPLAINED: {row['why']}"
            print(f"- {row['id']}: {result['outcome']} [{why}] {result['message'][:120]}")
        if row.get("note"):
            print(f"- {row['id']}: {row['note']}")
    for t in targets[1:]:
        bad = [row["id"] for row in report["tests"]
               if (row["results"][t] or {}).get("outcome") in ("fail", "error")]
        print(f"\n{t} failures (all tests): {', '.join(bad) or 'none'}")
    if report["unexplained_lambdamap_failures"]:
        print(f"\nUNEXPLAINED: {', '.join(report['unexplained_lambdamap_failures'])}")


if __name__ == "__main__":
    main()
