"""Seeing a job: its timeline, progress bars, every call's logs on AWS, and the whole cost."""
from __future__ import annotations

import concurrent.futures
import json
import math
import time

import numpy as np
import pandas as pd
import pytest

from lambdamap import Executor, cli, cost, pricing, timeline, wire
from lambdamap.logs import LogLocation, announcement
from lambdamap.progress import TaskBar, interactive
from lambdamap.storage import LocalStorage


def work(x):
    time.sleep(0.05)
    if x == 3:
        raise ValueError("three")
    return x


@pytest.fixture(scope="module")
def executor():
    with Executor(workers=2) as ex:
        yield ex


# -- the timeline ---------------------------------------------------------------------------------


def test_timeline_of_a_known_table():
    """Three calls submitted at 10 s on two workers; the third fails on worker a."""
    frame = pd.DataFrame({
        "call_id": [0, 1, 2], "submitted": [10.0] * 3, "started": [11.0, 12.0, 13.0],
        "finished": [13.0, 14.0, 15.0], "worker": ["a", "b", "a"], "cold": [True, True, False],
        "ok": [True, True, False], "invocation": ["0.0.0.x", "0.1.0.x", "0.2.0.x"],
        "invocation_started": [10.5, 12.0, 13.0]})
    seg = timeline.segments(frame)
    assert seg[["call_id", "lane", "start", "end"]].values.tolist() == [
        [0, 0, 1.0, 3.0], [1, 1, 2.0, 4.0], [2, 0, 3.0, 5.0]]
    assert seg["failed"].tolist() == [False, False, True]
    assert seg["cold"].tolist() == [True, True, False]
    assert seg["setup_start"].tolist() == [0.5, 2.0, 3.0]
    steps = timeline.concurrency(frame)
    assert steps.values.tolist() == [[0.0, 0, 3], [1.0, 1, 2], [2.0, 2, 1], [3.0, 2, 0],
                                     [4.0, 1, 0], [5.0, 0, 0]]
    with pytest.raises(ValueError, match="needs per-call 'started' and 'finished'"):
        timeline.segments(frame.drop(columns="finished"))


def test_plot_of_a_job_draws_every_call_on_its_worker(executor, tmp_path):
    before = len(executor.metrics())
    futures = executor.map_futures(work, range(8))
    concurrent.futures.wait(futures)
    metrics = executor.metrics().iloc[before:]
    figure = timeline.plot(metrics, tmp_path / "job.png")
    assert (tmp_path / "job.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    seg = timeline.segments(metrics)
    assert len(seg) == 8 and seg["lane"].nunique() <= 2
    assert seg.loc[seg["failed"], "call_id"].tolist() == [before + 3]
    assert timeline.concurrency(metrics)["running"].max() <= 2
    calls_ax, _ = figure.axes
    drawn = {c.get_label(): len(c) for c in calls_ax.containers}
    assert drawn["call"] == 7 and drawn["call failed"] == 1
    assert (executor.plot(tmp_path / "all.png").axes[0].get_title()
            .startswith(f"{len(executor.metrics())} calls on"))


def test_plots_of_dml_and_forest_work(executor, tmp_path):
    from doubleml.plm.datasets import make_plr_CCDDHNR2018
    from sklearn.ensemble import RandomForestRegressor

    import dml
    from forest import GroveForestRegressor

    np.random.seed(0)
    data = make_plr_CCDDHNR2018(n_obs=200, dim_x=5)
    learner = RandomForestRegressor(n_estimators=5, max_depth=3, random_state=0)
    model = dml.DoubleMLPLRServerless(data, learner, learner, n_folds=2, n_rep=1,
                                      executor=executor, granularity="fold").fit()
    tasks = model.task_metrics
    figure = timeline.plot(tasks, tmp_path / "dml.png")
    assert len(timeline.segments(tasks)) == len(tasks) == 4
    assert sum(len(c) for c in figure.axes[0].containers if c.get_label().startswith("call")) == 4

    before = len(executor.metrics())
    X = np.random.default_rng(0).normal(size=(100, 3))
    GroveForestRegressor(n_estimators=6, grove_size=2, executor=executor).fit(X, X[:, 0])
    groves = executor.metrics().iloc[before:]
    timeline.plot(groves, tmp_path / "forest.png")
    assert len(timeline.segments(groves)) == 3  # one call per grove


# -- progress -------------------------------------------------------------------------------------


def test_progress_is_on_where_someone_watches(monkeypatch):
    import sys

    for name in ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "JENKINS_URL", "TF_BUILD"):
        monkeypatch.delenv(name, raising=False)
    assert not interactive()  # pytest captures stderr: no terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert interactive()
    monkeypatch.setenv("CI", "true")
    assert not interactive() and TaskBar(None, 5)._bar is None
    monkeypatch.delenv("CI")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)

    class ZMQInteractiveShell:  # what Jupyter's kernel runs
        pass

    monkeypatch.setitem(sys.modules, "IPython", type(sys)("IPython"))
    sys.modules["IPython"].get_ipython = ZMQInteractiveShell
    assert interactive()  # a notebook, though stderr is no terminal
    with pytest.raises(TypeError, match="True, False or None"):
        TaskBar("yes", 5)


def test_bars_close_on_errors_and_show_nothing_for_no_work(capsys):
    with pytest.raises(ValueError):
        with TaskBar(True, 3, desc="things") as bar:
            bar.done()
            bar.done(failed=True)
            raise ValueError("boom")
    assert bar._bar.disable  # closed: tqdm disables a closed bar
    assert "things:  67%" in capsys.readouterr().err
    empty = TaskBar(True, 0, desc="nothing")
    empty.close()
    assert empty._bar is None and capsys.readouterr().err == ""


def test_dml_and_joblib_bars_count_the_work_and_close(executor, capsys):
    import joblib
    from doubleml.plm.datasets import make_plr_CCDDHNR2018
    from sklearn.ensemble import RandomForestRegressor

    import dml
    from lambdamap.joblib import LambdamapBackend

    np.random.seed(1)
    data = make_plr_CCDDHNR2018(n_obs=150, dim_x=4)
    learner = RandomForestRegressor(n_estimators=4, max_depth=3, random_state=0)
    dml.DoubleMLPLRServerless(data, learner, learner, n_folds=2, n_rep=2, executor=executor,
                              granularity="rep", progress=True).fit()
    err = capsys.readouterr().err
    assert "cross-fitting: 100%" in err and "4/4" in err  # 2 repetitions x 2 nuisances

    backend = LambdamapBackend(executor=executor, tasks_per_call=2, progress=True)
    with joblib.parallel_config(backend=backend):
        with pytest.raises(ValueError, match="three"):
            joblib.Parallel(n_jobs=2)(joblib.delayed(work)(i) for i in range(6))
    assert backend._bar._closed and backend._bar.failed >= 2  # the failing call's two tasks
    with joblib.parallel_config(backend=backend):
        assert joblib.Parallel(n_jobs=2)(joblib.delayed(work)(i) for i in range(0)) == []
    assert backend._bar._bar is None  # no work: no bar


# -- logs -----------------------------------------------------------------------------------------


class LambdaContext:
    """What Lambda's context tells about logs and time."""

    log_group_name = "/aws/lambda/fn"
    log_stream_name = "2026/01/01/[$LATEST]abc"
    aws_request_id = "req-1"

    def __init__(self, seconds: float = 60.0):
        self.end = time.time() + seconds

    def get_remaining_time_in_millis(self):
        return int((self.end - time.time()) * 1000)


def sleeps(seconds):
    time.sleep(seconds)
    return seconds


def test_the_runtime_records_where_each_calls_logs_are(tmp_path, capsys):
    import cloudpickle

    from lambdamap import CallTimeoutError, serialize
    from lambdamap.collector import outcome
    from runtime_layer.handler import handler

    store = LocalStorage(tmp_path)
    fn_blob = cloudpickle.dumps(sleeps)
    fn_key = wire.fn_key("job1", serialize.digest(fn_blob))
    store.put(fn_key, fn_blob)
    blob = wire.pack_batch([(0, cloudpickle.dumps(((0.0,), {}))), (1, cloudpickle.dumps(((30.0,), {})))])
    store.put(wire.args_key("job1", 0), blob)
    event = wire.make_event(storage=store.spec(), job_id="job1", fn=fn_key, args=wire.args_key("job1", 0),
                            byte_range=(0, len(blob)), calls=[0], invocation="00000000.00000.0.x")
    handler(event, LambdaContext())
    where = {"group": "/aws/lambda/fn", "stream": "2026/01/01/[$LATEST]abc", "request_id": "req-1"}
    status = wire.decode_status(store.get(wire.status_key("job1", 0)))
    assert status["log_location"] == where and status["invocation"] == "00000000.00000.0.x"
    marker = json.loads(store.get(wire.start_key("job1", "00000000.00000.0.x")))
    assert marker["logs"] == where
    assert announcement("job1", "00000000.00000.0.x", 0, "req-1", [0]) in capsys.readouterr().out

    # A call stopped at the time-out names its logs.
    timed_out = wire.make_event(storage=store.spec(), job_id="job1", fn=fn_key, args=wire.args_key("job1", 0),
                                byte_range=(0, len(blob)), calls=[1], invocation="00000000.00001.0.x")
    handler(timed_out, LambdaContext(1.0))
    _, error = outcome(wire.decode_record(store.get(wire.result_key("job1", 1))))
    assert isinstance(error, CallTimeoutError)
    assert ("its logs: CloudWatch log group /aws/lambda/fn, stream 2026/01/01/[$LATEST]abc, "
            "request id req-1 (`lambdamap logs job1 1`)") in str(error)


def test_lambdamap_logs_reads_a_jobs_invocations_from_cloudwatch(monkeypatch, capsys):
    from moto import mock_aws

    import boto3

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LAMBDAMAP_CONFIG", "/nonexistent")
    now = int(time.time() * 1000)
    group, job = "/aws/lambda/lambdamap", "5eed" * 6

    def invocation(request, calls, attempt, printed):
        return [f"START RequestId: {request} Version: $LATEST",
                announcement(job, f"00000000.0000{calls[0]}.{attempt}.ab", attempt, request, calls),
                *printed, f"END RequestId: {request}",
                f"REPORT RequestId: {request}\tDuration: 12.00 ms"]

    streams = {  # stream 1 ran another job first, then calls 0-1 of ours; stream 2 ran call 2
        "s1": (invocation("r0", [0], 0, ["other job's output"])[:1] + ["other job's output",
               "END RequestId: r0", "REPORT RequestId: r0\tDuration: 1 ms"]
               + invocation("r1", [0, 1], 0, ["fitting fold 0", "fitting fold 1"])),
        "s2": invocation("r2", [2], 0, ["Traceback: fold 2 failed"]),
    }
    with mock_aws():
        client = boto3.client("logs", region_name="us-east-1")
        client.create_log_group(logGroupName=group)
        for offset, (stream, lines) in enumerate(streams.items()):
            client.create_log_stream(logGroupName=group, logStreamName=stream)
            client.put_log_events(logGroupName=group, logStreamName=stream, logEvents=[
                {"timestamp": now + 1000 * offset + i, "message": line} for i, line in enumerate(lines)])

        assert cli.main(["logs", job, "1"]) == 0
        out = capsys.readouterr().out
        assert "calls 0-1: CloudWatch log group /aws/lambda/lambdamap, stream s1, request id r1" in out
        assert "fitting fold 1" in out and "REPORT RequestId: r1" in out
        assert "other job's output" not in out and "fold 2 failed" not in out

        assert cli.main(["logs", job]) == 0
        out = capsys.readouterr().out
        assert out.index("request id r1") < out.index("fold 2 failed")  # every invocation, in order

        assert cli.main(["logs", job, "7"]) == 1
        assert f"no invocation of call 7 of job {job}" in capsys.readouterr().err
        assert cli.main(["logs", job, "--function-name", "missing"]) == 1
        assert "no log group /aws/lambda/missing" in capsys.readouterr().err


def test_a_futures_logs_location_comes_from_its_status():
    from lambdamap.futures import CallFuture

    future = CallFuture(0)
    assert future.logs_location is None  # local calls: their output is in future.stdout and .logs
    future.status = {"log_location": {"group": "g", "stream": "s", "request_id": "r"}}
    assert future.logs_location == LogLocation("g", "s", "r")


# -- the whole cost -------------------------------------------------------------------------------


def test_cost_of_a_known_table_counts_lambda_init_and_s3():
    """Two invocations of blob 0: calls 0-1 (a cold start, INIT measured) and call 2 (warm)."""
    frame = pd.DataFrame({
        "call_id": [0, 1, 2], "submitted": [0.0] * 3, "started": [1.0, 1.5, 1.2],
        "finished": [1.5, 3.0, 1.26], "duration": [0.5, 1.5, 0.06], "worker": ["a", "a", "b"],
        "cold": [True, False, False], "init_duration": [0.4, np.nan, np.nan],
        "invocation": ["00000000.00000.0.x", "00000000.00000.0.x", "00000000.00001.0.x"],
        "invocation_started": [0.9, 0.9, 1.1]})
    est = cost.estimate(frame, memory_mb=2048, objects=1, poll_interval=(0.5, 2.0))
    assert (est.invocations, est.calls, est.cold_starts) == (2, 3, 1)
    assert est.billed_seconds == pytest.approx((3.0 - 0.9) + (1.26 - 1.1))
    assert est.init_seconds == pytest.approx(0.4)
    assert est.gb_seconds == pytest.approx((2.1 + 0.16 + 0.4) * 2)
    # runtime: 2 markers + 3 x (result, status); client: control, function, object, blob + manifest
    assert est.s3_put == 2 + 6 + 1 + 1 + 1 + 2
    # runtime: 2 argument reads, 1 function read (cold), 2 control reads (the invocation of 2
    # calls ran 2.1 s), the object by each of 2 workers; client: 3 results
    assert est.s3_get == 2 + 1 + 2 + 2 + 3
    # polls (each 0.03 s) at 0.53 (none), 1.56 (found: 1.26, 1.5), 2.09 (none), 3.12 (found);
    # start markers at 0 (1.1 is the last start); cleanup: 13 keys
    assert est.s3_list == 4 + 1 + 1
    assert est.lambda_usd == pytest.approx(est.gb_seconds * pricing.PRICE_PER_GB_SECOND["x86_64"]
                                           + 2 * pricing.PRICE_PER_REQUEST)
    assert est.total_usd == pytest.approx(est.lambda_usd + 13 * 0.005e-3 + 10 * 0.0004e-3
                                          + 6 * 0.005e-3)
    unmeasured = cost.estimate(frame.assign(init_duration=np.nan), memory_mb=2048)
    assert unmeasured.init_seconds == pricing.INIT_SECONDS_ESTIMATE
    with pytest.raises(ValueError, match="unknown architecture"):
        cost.estimate(frame, memory_mb=1024, arch="sparc")


def test_executor_cost_of_a_local_job_is_what_lambda_would_bill(tmp_path):
    with Executor(workers=2) as ex:
        list(ex.map(sleeps, [0.05] * 9, chunksize=3))
        ex.put(b"x" * 1000)
        est = ex.cost()
        m = ex.metrics()
    assert (est.memory_mb, est.arch) == (1024, "x86_64")  # lambdamap deploy's defaults
    assert est.invocations == 3 and est.calls == 9 and m["invocation"].nunique() == 3
    assert est.cold_starts == m["cold"].sum() >= 1 and 0 < est.init_seconds < 30
    assert est.billed_seconds >= m["duration"].sum() >= 0.45
    assert est.s3_put == 3 + 2 * 9 + 1 + 1 + 1 + 2  # markers, records; control, fn, object, blob
    assert est.total_usd == pytest.approx(est.lambda_usd + est.s3_usd) and est.s3_usd > 0
    assert "3 Lambda requests (9 calls)" in str(est)
    assert ex.cost(memory_mb=2048, arch="arm64").lambda_usd < 2 * est.lambda_usd
