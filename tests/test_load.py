"""Load on the local backend: a 20,000-call job, and 20 executors used at once from threads."""
from __future__ import annotations

import concurrent.futures as cf

from lambdamap import Executor


def test_twenty_thousand_calls_all_correct():
    with Executor(workers=2) as ex:
        results = list(ex.map(lambda x: x * 3 + 1, range(20_000)))
        metrics = ex.metrics()
    assert results == [x * 3 + 1 for x in range(20_000)]
    assert len(metrics) == 20_000 and metrics["ok"].all()


def test_twenty_executors_from_threads_do_not_interfere():
    def one_client(k: int) -> tuple[str, list]:
        with Executor(workers=1) as ex:
            return ex.job_id, list(ex.map(lambda x, k=k: (k, x * k), range(100), chunksize=3))

    with cf.ThreadPoolExecutor(20) as threads:
        outcomes = list(threads.map(one_client, range(20)))
    assert len({job_id for job_id, _ in outcomes}) == 20
    for k, (_, results) in enumerate(outcomes):
        assert results == [(k, x * k) for x in range(100)]
