"""Fault injection on the local backend: every case runs >= 200 calls and checks every result.

Killed workers, time-outs, silently lost and duplicated invocations, transient storage faults and
a client restarted mid-job: each call's result is correct, or exactly the calls that failed get a
clear error; nothing hangs. (The same faults on the AWS path are in tests/test_aws.py.)
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import threading
import time

import pytest

from lambdamap import CallTimeoutError, Executor, IntegrityError, WorkerLostError, wire
from lambdamap.backends.local import LocalBackend
from lambdamap.collector import outcome
from lambdamap.storage import S3Storage

from fault_injection import faulty_moto_server  # noqa: F401 - a fixture

pytestmark = pytest.mark.faults


def kill_own_worker_once(x, marker_dir):
    """Dies by SIGKILL mid-call the first time it sees ``x``; succeeds when run again."""
    marker = os.path.join(marker_dir, str(x))
    if x % 10 == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 2


def always_killed(x):
    if x == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def hangs_on_two(x):
    if x == 2:
        time.sleep(600)
    return x


def test_worker_killed_mid_call_is_retried_and_nothing_is_lost(tmp_path):
    with Executor(workers=2) as ex:
        results = list(ex.map(kill_own_worker_once, range(200), [str(tmp_path)] * 200, chunksize=3))
        m = ex.metrics()
    assert results == [2 * x for x in range(200)]
    assert len(os.listdir(tmp_path)) == 20  # twenty calls were killed once each
    assert (m["attempt"] > 0).sum() >= 20
    assert m["ok"].all()


def test_call_that_always_kills_its_worker_fails_naming_the_call():
    with Executor(workers=2, max_retries=2) as ex:
        futures = ex.map_futures(always_killed, range(200), chunksize=2)
        with pytest.raises(WorkerLostError, match=r"call 5 .*lost 3 times.*SIGKILL"):
            futures[5].result(timeout=120)
        assert [f.result(timeout=60) for i, f in enumerate(futures) if i != 5] == \
            [i for i in range(200) if i != 5]


def hangs_on_two_deaf_to_signals(x):
    """Hangs with SIGALRM blocked, like C code that never returns to Python: only a kill stops it."""
    if x == 2:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(600)
    return x


def test_call_past_the_function_timeout_is_stopped_by_the_runtime():
    with Executor(workers=2, function_timeout=1.0) as ex:
        pids_before = set(ex.backend.pids)
        futures = ex.map_futures(hangs_on_two, range(200), chunksize=4)
        with pytest.raises(CallTimeoutError, match=r"call 2 ran past the function time-out of 1.0 s") as info:
            futures[2].result(timeout=60)
        assert isinstance(info.value, TimeoutError)
        assert [f.result(timeout=60) for i, f in enumerate(futures) if i != 2] == \
            [i for i in range(200) if i != 2]
        assert set(ex.backend.pids) == pids_before  # stopped in time: no worker had to die


def test_call_deaf_to_the_alarm_is_killed_and_the_worker_replaced():
    with Executor(workers=2, function_timeout=1.0) as ex:
        pids_before = set(ex.backend.pids)
        futures = ex.map_futures(hangs_on_two_deaf_to_signals, range(200), chunksize=4)
        with pytest.raises(CallTimeoutError, match=r"call 2 .*function time-out of 1.0 s"):
            futures[2].result(timeout=60)
        assert [f.result(timeout=60) for i, f in enumerate(futures) if i != 2] == \
            [i for i in range(200) if i != 2]
        assert set(ex.backend.pids) != pids_before  # a fresh worker took the killed one's place
        assert ex.submit(abs, -4).result(timeout=30) == 4


class DroppingBackend(LocalBackend):
    """A backend that silently loses some invocations and cannot tell (like Lambda's async queue)."""

    reports_losses = False

    def __init__(self, drop_first_n: int, **kw):
        super().__init__(2, **kw)
        self.to_drop = drop_first_n
        self.dropped = 0

    def invoke(self, events):
        kept = []
        for event in events:
            if self.dropped < self.to_drop and event.attempt == 0:
                self.dropped += 1
            else:
                kept.append(event)
        super().invoke(kept)


def test_silently_lost_invocations_are_re_invoked_after_their_deadline():
    backend = DroppingBackend(drop_first_n=10, function_timeout=0.5)
    with Executor(backend, lost_after_margin=0.5, start_timeout=1.0) as ex:
        start = time.monotonic()
        assert list(ex.map(abs, range(-200, 0), chunksize=2)) == list(range(200, 0, -1))
        assert time.monotonic() - start > 1.0  # the dropped ones waited for their deadline
        assert backend.dropped == 10
        assert (ex.metrics()["attempt"] == 1).sum() == 20


def test_invocations_that_never_report_fail_with_a_clear_error():
    class BlackHole(DroppingBackend):
        def invoke(self, events):
            self.dropped += len(events)

    with Executor(BlackHole(0, function_timeout=0.2), lost_after_margin=0.2, start_timeout=0.5,
                  max_retries=1) as ex:
        with pytest.raises(WorkerLostError, match=r"call 0 .*lost 2 times.*never started"):
            ex.submit(abs, -1).result(timeout=30)


def test_duplicate_delivery_gives_each_future_exactly_one_result():
    class DuplicatingBackend(LocalBackend):
        def invoke(self, events):
            super().invoke(list(events) + list(events))  # every batch delivered twice

    with Executor(DuplicatingBackend(2)) as ex:
        futures = ex.map_futures(lambda x: (x, os.getpid(), time.time()), range(200), chunksize=3)
        results = [f.result(timeout=60) for f in futures]
        stored = [wire.decode_record(ex.storage.get(wire.result_key(ex.job_id, i)), ex.signing_key,
                                     wire.result_key(ex.job_id, i)) for i in range(200)]
    assert [r[0] for r in results] == list(range(200))
    # the future's value is the stored (first-written) one, not the duplicate's
    assert [tuple(outcome(rec)[0]) for rec in stored] == [tuple(r) for r in results]


CLIENT_SCRIPT = """
import sys, time
from lambdamap import Executor

def slow_square(x):
    time.sleep(0.02)
    return x * x

ex = Executor(workers=2, storage=sys.argv[1], keep_data=True)
print(ex.job_id, ex.signing_key.hex(), flush=True)
futures = ex.map_futures(slow_square, range(200), chunksize=2)
time.sleep(600)  # killed long before
"""


def test_client_restarted_mid_job_attach_recovers_every_result(tmp_path):
    import subprocess
    import sys

    store = tmp_path / "store"
    client = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, str(store)],
                              stdout=subprocess.PIPE, text=True)
    job_id, key = client.stdout.readline().split()
    status_dir = store / "jobs" / job_id / "status"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(status_dir.glob("*")) if status_dir.exists() else []) < 30:
        time.sleep(0.05)
    import psutil

    workers = psutil.Process(client.pid).children()
    assert len(workers) == 2
    client.kill()  # the client dies mid-job; its workers follow it
    client.wait()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, "worker processes outlived their client"
    finished_before = len(list(status_dir.glob("*")))
    assert 30 <= finished_before < 200

    # Without the key: a clear error, and nothing of the attempt keeps running.
    children = {p.pid for p in psutil.Process().children()}
    threads = set(threading.enumerate())
    with pytest.raises(IntegrityError, match="another signing key .*signing_key=old.signing_key"):
        Executor.attach(job_id, storage=str(store), workers=2)
    assert {p.pid for p in psutil.Process().children()} <= children
    assert not [t for t in set(threading.enumerate()) - threads if t.name.startswith("lambdamap")]
    assert len(list(status_dir.glob("*"))) == finished_before  # and the job is untouched

    with Executor.attach(job_id, storage=str(store), workers=2, signing_key=bytes.fromhex(key)) as ex:
        futures = ex.futures
        assert [f.result(timeout=120) for f in futures] == [x * x for x in range(200)]
    assert not (store / "jobs" / job_id).exists()  # cleaned up after recovery


def test_attach_to_an_unknown_job_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no job 'nope'"):
        Executor.attach("nope", storage=str(tmp_path))


@pytest.mark.parametrize("kind", ["slowdown", "reset"])
def test_transient_storage_faults_lose_nothing(faulty_moto_server, kind):
    """S3 answers 503 SlowDown (or resets the connection) N times, to client and workers alike."""
    import boto3

    server = faulty_moto_server
    boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1").create_bucket(
        Bucket="flaky")
    store = S3Storage("flaky", "jobs-under-fire", endpoint_url=server.endpoint_url)
    with Executor(workers=2, storage=store) as ex:
        # Bursts of 7 consecutive faults: one request may meet them all and still succeed
        # (8 attempts). One burst before the job, one in the middle of it.
        server.inject(7, method="PUT", kind=kind)   # argument uploads, results, statuses
        server.inject(7, method="GET", kind=kind)   # listings, argument and result reads
        futures = ex.map_futures(lambda x: x * x, range(200), chunksize=4)
        done = 0
        for _ in cf.as_completed(futures, timeout=120):
            done += 1
            if done == 50:
                server.inject(7, method="PUT", kind=kind)
                server.inject(7, method="GET", kind=kind)
        assert [f.result() for f in futures] == [x * x for x in range(200)]
        assert server.remaining() == 0  # every injected fault was met, and survived


def test_storage_that_keeps_failing_is_a_clear_error(faulty_moto_server):
    import boto3

    from lambdamap import StorageError

    server = faulty_moto_server
    boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1").create_bucket(
        Bucket="down")
    store = S3Storage("down", endpoint_url=server.endpoint_url)
    server.inject(8, method="PUT")
    with pytest.raises(StorageError, match="still failing after 8 attempts.*SlowDown"):
        store.put("k", b"v")


def test_a_launch_that_fails_fails_its_calls_instead_of_hanging():
    class RefusingBackend(LocalBackend):
        def invoke(self, events):
            raise RuntimeError("the invoke API is down")

    ex = Executor(RefusingBackend(1))
    seen = []
    ex.backend.invoke = lambda events: (seen.append(ex.futures), RefusingBackend.invoke(None, events))
    with pytest.raises(RuntimeError, match="invoke API is down"):
        ex.map_futures(abs, range(200))
    futures = seen[0]  # the futures as they were when the launch failed
    assert len(futures) == 200 and all(isinstance(f.exception(timeout=5), RuntimeError) for f in futures)
    assert ex._pending == {}  # nothing is left waiting, so shutdown returns at once
    ex.shutdown()
