"""Infrastructure failures on the local backend: killed workers and time-outs never hang the caller."""
from __future__ import annotations

import os
import signal
import time

import pytest

from lambdamap import CallTimeoutError, Executor, WorkerLostError


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
        results = list(ex.map(kill_own_worker_once, range(40), [str(tmp_path)] * 40, chunksize=3))
        m = ex.metrics()
    assert results == [2 * x for x in range(40)]
    assert len(os.listdir(tmp_path)) == 4  # four calls were killed once each
    assert (m["attempt"] > 0).sum() >= 4
    assert m["ok"].all()


def test_call_that_always_kills_its_worker_fails_naming_the_call():
    with Executor(workers=2, max_retries=2) as ex:
        futures = ex.map_futures(always_killed, range(10), chunksize=2)
        with pytest.raises(WorkerLostError, match=r"call 5 .*lost 3 times.*SIGKILL"):
            futures[5].result(timeout=120)
        assert [f.result(timeout=60) for i, f in enumerate(futures) if i != 5] == \
            [i for i in range(10) if i != 5]


def test_call_past_the_function_timeout_fails_and_the_worker_is_replaced():
    with Executor(workers=2, function_timeout=1.0) as ex:
        pids_before = set(ex.backend.pids)
        futures = ex.map_futures(hangs_on_two, range(6), chunksize=2)
        with pytest.raises(CallTimeoutError, match=r"call 2 .*function time-out of 1.0 s") as info:
            futures[2].result(timeout=60)
        assert isinstance(info.value, TimeoutError)
        assert [f.result(timeout=60) for i, f in enumerate(futures) if i != 2] == [0, 1, 3, 4, 5]
        assert set(ex.backend.pids) != pids_before  # a fresh worker took the killed one's place
        assert ex.submit(abs, -4).result(timeout=30) == 4
