"""The Executor contract: concurrent.futures semantics, serialization, output, metrics, cleanup."""
from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from lambdamap import Executor, ObjectRef, SerializationError
from lambdamap.backends.local import LocalBackend
from lambdamap.storage import LocalStorage


@pytest.fixture(scope="module")
def ex():
    with Executor(workers=2) as executor:
        yield executor


class CustomError(Exception):
    pass


def fails_on_three(x):
    if x == 3:
        raise CustomError(f"bad item {x}")
    return x * 10


# -- the concurrent.futures contract ----------------------------------------------------------


def test_is_a_concurrent_futures_executor(ex):
    assert isinstance(ex, cf.Executor)
    fut = ex.submit(pow, 2, 10)
    assert isinstance(fut, cf.Future)
    assert fut.result(timeout=30) == 1024


def test_map_keeps_input_order_and_takes_several_iterables(ex):
    assert list(ex.map(lambda x: x * x, range(200))) == [x * x for x in range(200)]
    assert list(ex.map(pow, [2, 3, 4], [5, 6, 7])) == [32, 729, 16384]
    assert list(ex.map(abs, [])) == []


def test_submit_passes_keyword_arguments(ex):
    def f(a, b=0, *, c):
        return (a, b, c)

    assert ex.submit(f, 1, c=3).result() == (1, 0, 3)


@pytest.mark.parametrize("chunksize", [1, 7, 1000])
def test_chunksize_packs_calls_per_invocation(chunksize):
    class CountingBackend(LocalBackend):
        events = 0

        def invoke(self, events):
            CountingBackend.events += len(events)
            super().invoke(events)

    with Executor(CountingBackend(2)) as ex:
        assert list(ex.map(lambda x: -x, range(100), chunksize=chunksize)) == [-x for x in range(100)]
        fn_keys = ex.storage.list(f"jobs/{ex.job_id}/fn/")
    assert CountingBackend.events == -(-100 // chunksize)
    assert len(fn_keys) == 1  # the function is stored once per job


def test_map_raises_the_first_exception_at_its_position(ex):
    results = ex.map(fails_on_three, range(6))
    assert [next(results) for _ in range(3)] == [0, 10, 20]
    with pytest.raises(CustomError, match="bad item 3"):
        next(results)


def test_other_calls_are_unaffected_by_a_failing_one(ex):
    futures = ex.map_futures(fails_on_three, range(6))
    cf.wait(futures, timeout=30)
    assert [f.result() for f in futures if f.exception() is None] == [0, 10, 20, 40, 50]
    assert isinstance(futures[3].exception(), CustomError)


def test_wait_and_as_completed_work_unchanged(ex):
    futures = [ex.submit(time.sleep, 0.01 * i) for i in range(10)]
    done, not_done = cf.wait(futures, timeout=30, return_when=cf.ALL_COMPLETED)
    assert len(done) == 10 and not not_done
    futures = [ex.submit(pow, 2, i) for i in range(20)]
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=30)) == [2**i for i in range(20)]


def test_result_timeout_and_map_timeout_raise_timeout_error(ex):
    fut = ex.submit(time.sleep, 1.5)
    with pytest.raises(TimeoutError):
        fut.result(timeout=0.05)
    with pytest.raises(TimeoutError):
        list(ex.map(time.sleep, [1.5], timeout=0.05))
    assert fut.result(timeout=30) is None


def test_process_pool_code_runs_unchanged():
    def pipeline(executor: cf.Executor) -> list:
        futs = [executor.submit(pow, 3, i) for i in range(5)]
        mapped = list(executor.map(abs, [-1, -2, -3], chunksize=2))
        return [f.result() for f in futs] + mapped

    with cf.ProcessPoolExecutor(2) as ppe:
        expected = pipeline(ppe)
    with Executor(workers=2) as ex:
        assert pipeline(ex) == expected


def test_shutdown_semantics():
    ex = Executor(workers=1)
    slow = [ex.submit(time.sleep, 0.3) for _ in range(4)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.done() for f in slow)
    assert any(f.cancelled() for f in slow)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(pow, 2, 2)
    ex.shutdown()  # a second shutdown is harmless


def test_context_manager_waits_for_calls():
    with Executor(workers=2) as ex:
        futures = [ex.submit(time.sleep, 0.05) for _ in range(6)]
    assert all(f.done() and not f.cancelled() for f in futures)


def test_submit_from_many_threads(ex):
    with cf.ThreadPoolExecutor(8) as threads:
        futures = list(threads.map(lambda i: ex.submit(pow, i, 2), range(64)))
    assert [f.result(timeout=60) for f in futures] == [i * i for i in range(64)]


# -- what travels -------------------------------------------------------------------------------


def test_lambdas_and_closures_travel(ex):
    offset = 7
    table = {"a": 1}
    assert ex.submit(lambda: offset + table["a"]).result() == 8


def test_function_from_main_travels(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        from lambdamap import Executor

        def triple(x):
            return 3 * x

        if __name__ == "__main__":
            with Executor(workers=1) as ex:
                print(list(ex.map(triple, range(4))))
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0, 3, 6, 9]"


def test_user_module_the_worker_cannot_import_travels_by_value(tmp_path, monkeypatch):
    pkg = tmp_path / "userpkg_not_on_worker_path"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("SCALE = 5\n\ndef scale(x):\n    return SCALE * x\n")
    (pkg / "model.py").write_text(textwrap.dedent("""
        from .helpers import scale

        class Point:
            def __init__(self, x):
                self.x = x

        def work(x):
            return Point(scale(x))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    from userpkg_not_on_worker_path.model import Point, work

    with Executor(workers=1) as ex:
        point = ex.submit(work, 3).result(timeout=60)
    assert point.x == 15
    assert isinstance(point, Point)  # the class identity survives the round trip


def test_unpicklable_function_fails_at_submit_naming_it(ex):
    lock = threading.Lock()

    def holds_lock():
        return lock

    with pytest.raises(SerializationError, match="holds_lock.*cannot pickle"):
        ex.submit(holds_lock)


def test_unpicklable_argument_fails_before_anything_runs(ex):
    calls_before = len(ex.metrics())
    with pytest.raises(SerializationError, match="argument 0 of call .*lock"):
        ex.map_futures(lambda x: x, [1, 2, threading.Lock(), 4])
    assert len(ex.metrics()) == calls_before  # nothing was scheduled


def test_unpicklable_result_comes_back_as_a_clear_error(ex):
    with pytest.raises(SerializationError, match="result of call"):
        ex.submit(threading.Lock).result(timeout=30)


# -- errors and output come home -----------------------------------------------------------------


def test_remote_exception_keeps_type_and_traceback(ex):
    fut = ex.submit(fails_on_three, 3)
    with pytest.raises(CustomError) as info:
        fut.result(timeout=30)
    cause = info.value.__cause__
    assert "fails_on_three" in str(cause) and "bad item 3" in str(cause)
    assert "fails_on_three" in fut.remote_traceback


def test_exception_that_cannot_be_rebuilt_arrives_as_remote_error(ex):
    from lambdamap import RemoteError

    def raise_odd():
        class Odd(Exception):
            def __init__(self, a, b):  # pickles, but cannot be rebuilt from its args
                super().__init__(f"{a}-{b}")
        raise Odd(1, 2)

    with pytest.raises(RemoteError, match="Odd: 1-2"):
        ex.submit(raise_odd).result(timeout=30)


def test_printed_output_and_logs_are_kept(ex):
    def chatty(x):
        print("to stdout", x)
        print("to stderr", x, file=sys.stderr)
        logging.getLogger("user.code").warning("a warning %d", x)
        return x

    fut = ex.submit(chatty, 5)
    assert fut.result(timeout=30) == 5
    assert fut.stdout == "to stdout 5\n"
    assert fut.stderr == "to stderr 5\n"
    assert "WARNING:user.code:a warning 5" in fut.logs


def test_progress_bar(ex, capsys):
    assert list(ex.map(abs, range(-20, 0), progress=True)) == list(range(20, 0, -1))
    err = capsys.readouterr().err
    assert "20/20" in err


def test_progress_bar_of_an_empty_map_prints_nothing(ex, capsys):
    assert list(ex.map(abs, [], progress=True)) == []
    assert capsys.readouterr().err == ""


def test_progress_bar_of_a_failed_map_says_so_and_closes(ex, capsys):
    from tqdm import tqdm

    with pytest.raises(CustomError):
        list(ex.map(fails_on_three, [3] + [x for x in range(40) if x != 3], progress=True))
    deadline = time.monotonic() + 30
    while tqdm._instances and time.monotonic() < deadline:  # the rest are cancelled or collected
        time.sleep(0.05)
    assert not tqdm._instances  # closed
    assert "failed=1" in capsys.readouterr().err


def test_metrics_one_row_per_call():
    with Executor(workers=2) as ex:
        list(ex.map(lambda x: bytes(x), [10, 1000, 100_000]))
        m = ex.metrics()
    assert list(m["call_id"]) == [0, 1, 2]
    for col in ("submitted", "started", "finished", "duration", "peak_memory_mb", "worker",
                "warm", "bytes_in", "bytes_out"):
        assert m[col].notna().all(), col
    assert (m["finished"] >= m["started"]).all() and (m["started"] >= m["submitted"] - 1).all()
    assert m["bytes_out"].iloc[2] > 100_000 > m["bytes_out"].iloc[1]
    assert (m["peak_memory_mb"] > 1).all()
    assert m["worker"].str.contains(":").all()
    assert (m["queue_delay"] >= -1).all() and (m["queue_delay"] == m["started"] - m["submitted"]).all()
    assert (m["cold"] == ~m["warm"].astype(bool)).all() and (m["attempt"] == 0).all()
    assert set(m["peak_memory_scope"]) <= {"call", "process"}


def test_workers_are_reused_warm_across_jobs():
    with Executor(workers=1) as ex:
        list(ex.map(abs, range(3)))
        list(ex.map(abs, range(3)))
        m = ex.metrics()
    assert m["worker"].nunique() == 1
    assert list(m["warm"]) == [False, True, True, True, True, True]


# -- data by reference and cleanup ------------------------------------------------------------------


def test_put_stores_once_and_refs_resolve_at_top_level_and_by_get(ex):
    big = list(range(10_000))
    ref1, ref2 = ex.put(big), ex.put(list(range(10_000)))
    assert isinstance(ref1, ObjectRef) and ref1 == ref2
    assert len(ex.storage.list(f"jobs/{ex.job_id}/obj/")) == 1
    assert ex.submit(sum, ref1).result(timeout=30) == sum(big)
    assert ex.submit(lambda d: sum(d["x"].get()), {"x": ref1}).result(timeout=30) == sum(big)


def test_job_data_is_deleted_at_shutdown(tmp_path):
    store = LocalStorage(tmp_path)
    with Executor(workers=1, storage=store) as ex:
        list(ex.map(abs, range(10)))
        assert store.list(f"jobs/{ex.job_id}/")
    assert store.list("") == []


def test_keep_data_keeps_it(tmp_path):
    store = LocalStorage(tmp_path)
    with Executor(workers=1, storage=store, keep_data=True) as ex:
        list(ex.map(abs, range(10)))
    assert len(store.list(f"jobs/{ex.job_id}/result/")) == 10


def test_default_temp_folder_is_removed():
    with Executor(workers=1) as ex:
        root = ex.storage.root
        ex.submit(abs, -1).result()
        assert os.path.isdir(root)
    assert not os.path.exists(root)


def test_end_to_end_on_s3_through_moto(s3_bucket):
    """Worker processes (separate OS processes) reach moto's server through endpoint_url."""
    from lambdamap.storage import S3Storage

    endpoint, bucket = s3_bucket
    store = S3Storage(bucket, "lambdamap-test", endpoint_url=endpoint)
    with Executor(workers=2, storage=store) as ex:
        assert list(ex.map(lambda x: x + 1, range(60), chunksize=4)) == list(range(1, 61))
        assert ex.submit(fails_on_three, 3).exception(timeout=60).args == ("bad item 3",)
        assert len({w for w in ex.metrics()["worker"]}) >= 1
        pids = ex.backend.pids
    assert all(pid != os.getpid() for pid in pids)
    assert store.list("") == []  # cleaned up


# -- limits -------------------------------------------------------------------------------------------


def test_oversize_argument_is_refused_before_upload(tmp_path):
    from lambdamap import PayloadTooLargeError

    store = LocalStorage(tmp_path)
    with Executor(workers=1, storage=store, max_argument_bytes=1000) as ex:
        with pytest.raises(PayloadTooLargeError, match=r"call 1 pickle to .*max_argument_bytes.*ex.put"):
            ex.map_futures(len, [b"x", b"y" * 5000])
        assert store.list(f"jobs/{ex.job_id}/args/") == []  # nothing was uploaded
        ref = ex.put(b"y" * 5000)  # by reference, the same data is fine
        assert ex.submit(len, ref).result(timeout=30) == 5000


def test_oversize_result_is_a_clear_error_naming_the_call():
    from lambdamap import PayloadTooLargeError

    with Executor(workers=1, max_result_bytes=10_000) as ex:
        futures = ex.map_futures(bytes, [10, 50_000])
        assert futures[0].result(timeout=30) == bytes(10)
        with pytest.raises(PayloadTooLargeError, match=r"result of call 1 pickles to .*max_result_bytes"):
            futures[1].result(timeout=30)
