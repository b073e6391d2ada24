"""Cancellation, interruption, exit and cleanup: the job stops at once and leaves nothing behind.

Where the stdlib has an answer, the same code runs against ``ProcessPoolExecutor`` in the test.
"""
from __future__ import annotations

import concurrent.futures as cf
import itertools
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from pathlib import Path

import pytest

from lambdamap import CallTimeoutError, Executor, SerializationError, WorkerLostError
from lambdamap import scratch
from lambdamap.factories import STORE_PREFIX, default_store_dir
from lambdamap.backends.local import WORKERS_PREFIX

ROOT = Path(__file__).resolve().parent.parent


def touch_after(path: str, seconds: float) -> str:
    time.sleep(seconds)
    Path(path).touch()
    return path


def fail_fast_or_sleep(x: int) -> int:
    if x == 0:
        raise ValueError("the first item is bad")
    time.sleep(1.0)
    return x


def run_script(code: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=env, **kw)


def leftovers(pid: int) -> list[str]:
    """Scratch folders (stores, worker sockets) still owned by process ``pid``."""
    return scratch.owned_by(pid, STORE_PREFIX, default_store_dir()) + scratch.owned_by(pid, WORKERS_PREFIX)


# -- cancellation --------------------------------------------------------------------------------


def test_a_cancelled_future_is_done_for_wait_and_as_completed():
    with Executor(workers=1) as ex:
        blocker = ex.submit(time.sleep, 2)
        queued = ex.submit(time.sleep, 2)
        assert queued.cancel()
        done, not_done = cf.wait([queued], timeout=1)
        assert done == {queued} and not not_done
        assert list(cf.as_completed([queued], timeout=1)) == [queued]
        assert queued.cancelled() and not queued.cancel() is False  # idempotent: stays cancelled
        blocker.cancel()


def test_cancelled_calls_that_were_not_sent_never_run(tmp_path):
    with Executor(workers=1) as ex:
        first = ex.submit(touch_after, str(tmp_path / "first"), 0.5)
        rest = [ex.submit(touch_after, str(tmp_path / f"m{i}"), 0) for i in range(6)]
        for future in rest:
            assert future.cancel()
        first.result(timeout=30)
        time.sleep(0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first"]


def test_a_running_invocation_skips_the_cancelled_calls_it_has_not_started(tmp_path):
    with Executor(workers=1) as ex:
        futures = ex.map_futures(touch_after, [str(tmp_path / f"m{i}") for i in range(10)],
                                 [0.4] * 10, chunksize=10)
        while not (tmp_path / "m0").exists():
            time.sleep(0.01)
        for future in futures[2:]:
            assert future.cancel()
        assert futures[0].result(timeout=30)
        assert futures[1].result(timeout=30)
        time.sleep(3)  # the invocation would have run four more calls by now
    ran = {p.name for p in tmp_path.iterdir()}
    assert {"m0", "m1"} <= ran and len(ran) <= 5, ran  # it read the cancellation within ~1 s


def test_shutdown_cancel_futures_returns_promptly():
    ex = Executor(workers=1)
    futures = [ex.submit(time.sleep, 1) for _ in range(20)]
    start = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - start < 3
    assert all(f.done() for f in futures) and sum(f.cancelled() for f in futures) >= 19


# -- interruption ---------------------------------------------------------------------------------


def test_an_exception_inside_with_cancels_the_job_and_cleans_up():
    start = time.monotonic()
    with pytest.raises(KeyError):
        with Executor(workers=2) as ex:
            futures = [ex.submit(time.sleep, 1) for _ in range(20)]
            root = ex.storage.root
            raise KeyError("the user's code failed")
    assert time.monotonic() - start < 4  # not the 10 s the job would take
    assert all(f.done() for f in futures)
    assert not os.path.exists(root)


def test_the_first_error_of_map_inside_with_reaches_the_caller_at_once():
    def time_to_error(make) -> float:
        start = time.monotonic()
        with pytest.raises(ValueError, match="first item is bad"):
            with make() as ex:
                list(ex.map(fail_fast_or_sleep, range(12)))
        return time.monotonic() - start

    stdlib = time_to_error(lambda: cf.ProcessPoolExecutor(2))
    ours = time_to_error(lambda: Executor(workers=2))
    # The stdlib waits for the calls already running or queued (2-3 s); lambdamap cancels those
    # too. The job itself would take 6 s.
    assert ours < 2.5 and ours <= stdlib + 0.5, (ours, stdlib)


def test_map_timeout_inside_with_cancels_the_rest():
    start = time.monotonic()
    with pytest.raises(cf.TimeoutError):
        with Executor(workers=2) as ex:
            list(ex.map(time.sleep, [2] * 10, timeout=0.5))
    assert time.monotonic() - start < 3


def test_ctrl_c_while_waiting_stops_the_job_and_leaves_nothing(tmp_path):
    script = f"""
        import os, signal, threading, time
        from lambdamap import Executor
        # As in a terminal, even when this test runs as a background job (which ignores SIGINT).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        ex = Executor(workers=2)
        print(ex.storage.root, flush=True)
        futures = [ex.submit(time.sleep, 1) for _ in range(30)]
        ref = ex.put(b"x" * 10_000_000)
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        with ex:
            [f.result() for f in futures]
    """
    start = time.monotonic()
    proc = run_script(script)
    elapsed = time.monotonic() - start
    assert "KeyboardInterrupt" in proc.stderr and proc.returncode != 0
    assert elapsed < 15, elapsed  # not the 15 s the job would take, plus start-up
    root = proc.stdout.split()[0]
    assert not os.path.exists(root)


def test_a_second_ctrl_c_during_shutdown_cannot_strand_the_store():
    script = """
        import os, signal, threading, time
        from lambdamap import Executor
        # As in a terminal, even when this test runs as a background job (which ignores SIGINT).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        ex = Executor(workers=1)
        print(ex.storage.root, flush=True)
        ex.put(b"y" * 5_000_000)
        futures = [ex.submit(time.sleep, 0.2) for _ in range(10)]
        for delay in (0.3, 0.35):
            threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            ex.shutdown(wait=True)
        except KeyboardInterrupt:
            try:
                time.sleep(1)
            except KeyboardInterrupt:
                pass
        print("after", flush=True)
    """
    proc = run_script(script)
    root = proc.stdout.split()[0]
    assert not os.path.exists(root), proc.stderr


# -- exit -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", ["", "ex.shutdown(wait=False)"])
def test_at_exit_pending_calls_finish_then_everything_is_released(tmp_path, ending):
    marker = tmp_path / "ran"
    script = f"""
        import time
        from pathlib import Path
        from lambdamap import Executor

        def slow(path):
            time.sleep(1)
            Path(path).touch()

        ex = Executor(workers=1)
        print(ex.storage.root, flush=True)
        ex.submit(slow, {str(marker)!r})
        {ending}
    """
    proc = run_script(script)
    assert proc.returncode == 0, proc.stderr
    assert marker.exists()  # as with the stdlib: the program does not exit before the call ran
    assert not os.path.exists(proc.stdout.split()[0])


@pytest.mark.parametrize("kind", ["ProcessPoolExecutor", "Executor"])
def test_submit_from_an_atexit_hook_raises_runtime_error(kind):
    script = f"""
        import atexit
        @atexit.register
        def run_last():
            try:
                ex.submit(id, None)
            except RuntimeError as exc:
                print("runtime-error:", exc)
        from concurrent.futures import ProcessPoolExecutor
        from lambdamap import Executor
        ex = {kind}(2)
        ex.submit(id, 42).result()
    """
    proc = run_script(script)
    assert "runtime-error: cannot schedule new futures after" in proc.stdout, proc.stderr


def test_stores_of_clients_killed_hard_are_swept_unless_kept():
    script = """
        import os, signal
        from lambdamap import Executor
        lost = Executor(workers=1)
        kept = Executor(workers=1, keep_data=True)
        kept.put(b"keep me")
        print(lost.storage.root, kept.storage.root, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """
    proc = run_script(script)
    lost, kept = proc.stdout.split()
    assert os.path.exists(lost) and os.path.exists(kept)
    try:
        with Executor(workers=1):
            pass
        assert not os.path.exists(lost)  # its owner is gone: swept
        assert os.path.exists(kept)      # kept on purpose (for attach)
    finally:
        import shutil

        shutil.rmtree(kept, ignore_errors=True)


def test_a_failed_init_leaves_no_folder(monkeypatch):
    from lambdamap.backends.local import LocalBackend

    def refuse(self, listener):
        raise OSError("no workers today")

    monkeypatch.setattr(LocalBackend, "start", refuse)
    before = set(leftovers(os.getpid()))
    with pytest.raises(OSError, match="no workers today"):
        Executor(workers=1)
    assert set(leftovers(os.getpid())) == before


# -- thread safety --------------------------------------------------------------------------------


def test_submit_racing_shutdown_either_schedules_fully_or_raises():
    for _ in range(3):
        ex = Executor(workers=2)
        outcomes: list = []
        go = threading.Event()

        def submitter():
            go.wait()
            for i in range(30):
                try:
                    outcomes.append(ex.submit(abs, -i))
                except RuntimeError as exc:
                    outcomes.append(exc)

        threads = [threading.Thread(target=submitter) for _ in range(4)]
        for t in threads:
            t.start()
        go.set()
        time.sleep(0.01)
        ex.shutdown(wait=True)
        for t in threads:
            t.join()
        for item in outcomes:
            if isinstance(item, RuntimeError):
                assert "after shutdown" in str(item)
            else:
                assert item.done() and item.result(timeout=0) >= 0


# -- drop-in arguments ------------------------------------------------------------------------------


def test_the_stdlib_pool_size_spellings_work():
    for ex in (Executor(max_workers=2), Executor(2)):
        with ex:
            assert ex.backend.workers == 2
            assert ex.submit(abs, -3).result(timeout=30) == 3


@pytest.mark.parametrize("kwargs, name", [
    ({"workers": 0}, "workers"), ({"max_workers": -1}, "max_workers"),
    ({"function_timeout": -1}, "function_timeout"), ({"function_timeout": 0}, "function_timeout"),
    ({"max_retries": -1}, "max_retries"), ({"start_timeout": 0}, "start_timeout"),
])
def test_nonsense_arguments_are_refused_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Executor(**kwargs)
    with pytest.raises(ValueError, match="max_workers"):
        Executor(0)


# -- no BaseException breaks the machinery -----------------------------------------------------------


def _exit_on_unpickle():
    raise SystemExit("unpickled")


class ExitsWhenUnpickled:
    def __reduce__(self):
        return (_exit_on_unpickle, ())


class ExitsWhenPickled:
    def __reduce__(self):
        raise SystemExit("pickled")


def make_exits_when_unpickled():
    return ExitsWhenUnpickled()


def make_exits_when_pickled(path):
    with open(path, "a") as f:
        f.write("ran\n")
    return ExitsWhenPickled()


def test_system_exit_while_unpickling_a_result_fails_only_that_call():
    with Executor(workers=1) as ex:
        bad = ex.submit(make_exits_when_unpickled)
        with pytest.raises(SerializationError, match="could not be unpickled"):
            bad.result(timeout=30)
        assert ex.submit(abs, -2).result(timeout=30) == 2  # the collector lives on


def test_system_exit_while_pickling_a_result_fails_once_without_rerun(tmp_path):
    runs = tmp_path / "runs"
    with Executor(workers=1) as ex:
        with pytest.raises(SerializationError):
            ex.submit(make_exits_when_pickled, str(runs)).result(timeout=30)
    assert runs.read_text().count("ran") == 1


def test_errors_keep_stdlib_bases():
    assert issubclass(SerializationError, pickle.PicklingError)
    assert issubclass(WorkerLostError, cf.BrokenExecutor)
    assert issubclass(CallTimeoutError, TimeoutError)


# -- time limits ----------------------------------------------------------------------------------


def test_every_call_of_a_batch_gets_the_whole_function_timeout():
    with Executor(workers=1, function_timeout=3) as ex:
        futures = ex.map_futures(time.sleep, [0.5] * 10, chunksize=10)
        assert [f.result(timeout=60) for f in futures] == [None] * 10
        with pytest.raises(CallTimeoutError, match="call 10 .*function time-out of 3"):
            ex.submit(time.sleep, 10).result(timeout=60)


# -- memory and laziness ------------------------------------------------------------------------------


class Dummy:
    pass


def make_dummy(_):
    return Dummy()


@pytest.mark.parametrize("make", [lambda: cf.ProcessPoolExecutor(2), lambda: Executor(workers=2)],
                         ids=["stdlib", "lambdamap"])
def test_map_keeps_no_reference_to_results_already_yielded(make):
    import gc

    with make() as ex:
        alive = 0
        for obj in ex.map(make_dummy, range(5)):
            ref = weakref.ref(obj)
            del obj
            gc.collect()
            alive += ref() is not None
    assert alive == 0


def test_the_executor_keeps_only_a_metrics_row_per_consumed_call():
    import gc

    with Executor(workers=2) as ex:
        for _ in range(3):
            futures = ex.map_futures(bytes, [1_000_000] * 20)
            assert all(len(f.result(timeout=60)) == 1_000_000 for f in futures)
            del futures
        gc.collect()
        assert ex.futures == [] and len(ex.metrics()) == 60


def test_map_with_buffersize_consumes_an_endless_input_lazily():
    with Executor(workers=2) as ex:
        results = ex.map(abs, itertools.count(), buffersize=8, chunksize=2)
        assert list(itertools.islice(results, 25)) == list(range(25))
        assert len(ex.metrics()) <= 25 + 8 + 2  # never more than the buffer ahead
        results.close()


# -- libraries on top stop at their first failed task ------------------------------------------


from sklearn.base import BaseEstimator, RegressorMixin  # noqa: E402


class FailingOnce(RegressorMixin, BaseEstimator):
    """A scikit-learn regressor whose fit fails on one fold's data and is slow on the others."""

    def __init__(self, fail_rows: int = -1):
        self.fail_rows = fail_rows

    def fit(self, X, y):
        if len(X) == self.fail_rows:
            raise ArithmeticError("this learner fails on one fold")
        time.sleep(1.0)
        self.mean_ = float(y.mean())
        return self

    def predict(self, X):
        import numpy as np

        return np.full(len(X), self.mean_)


def test_a_dml_fit_stops_at_its_first_failed_task():
    import numpy as np
    from doubleml import DoubleMLData

    from dml import DoubleMLPLRServerless

    rng = np.random.default_rng(0)
    n = 103  # folds of 5 on 103 rows: training sets of 82 and 83 rows
    x = rng.normal(size=(n, 2))
    d = x[:, 0] + rng.normal(size=n)
    y = 0.5 * d + x[:, 1] + rng.normal(size=n)
    data = DoubleMLData.from_arrays(x, y, d)
    with Executor(workers=2) as ex:
        model = DoubleMLPLRServerless(data, FailingOnce(fail_rows=82), FailingOnce(), n_folds=5,
                                      n_rep=4, executor=ex, granularity="fold")
        start = time.monotonic()
        with pytest.raises(ArithmeticError, match="fails on one fold"):
            model.fit()
        # 40 tasks of 1 s on 2 workers would take 20 s; the failure comes within the first wave.
        assert time.monotonic() - start < 8
