"""lambdamap as a joblib backend: scikit-learn and doubleml fan out unchanged, equal to loky.

One local executor with two workers serves the module; the loky runs use two workers too. The
last test runs a scikit-learn workload on the AWS path (moto's S3 and the Lambda emulator).
"""
from __future__ import annotations

import copy
import os
import time

import joblib
import numpy as np
import pytest
from joblib import Parallel, delayed, parallel_config
from sklearn.datasets import load_digits, make_regression
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.inspection import permutation_importance
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score

import lambdamap.joblib
from lambdamap import Executor, LambdamapError
from lambdamap.errors import RemoteTraceback
from lambdamap.joblib import LambdamapBackend

_DIGITS_X, _DIGITS_Y = load_digits(return_X_y=True)
X, Y = _DIGITS_X[:600] / 16, _DIGITS_Y[:600]  # 600 x 64 float64: 300 KiB, above the dedup threshold


@pytest.fixture(scope="module")
def executor():
    with Executor(workers=2) as ex:
        yield ex


def both(fn, executor, **backend_options):
    """``fn()`` under loky and under lambdamap (2 workers each): (loky's, lambdamap's, backend)."""
    with parallel_config(backend="loky", n_jobs=2):
        theirs = fn()
    backend = LambdamapBackend(executor, **backend_options)
    with parallel_config(backend=backend, n_jobs=2):
        ours = fn()
    return theirs, ours, backend


def square(x):
    return x * x


def pid_and_nesting():
    """What a task sees: its process, how many workers nested joblib would use, BLAS threads."""
    from threadpoolctl import threadpool_info

    inner = Parallel(n_jobs=-1)(delayed(os.getpid)() for _ in range(4))
    threads = max(pool["num_threads"] for pool in threadpool_info())
    return os.getpid(), joblib.effective_n_jobs(-1), len(set(inner)), threads


def fail_first(i):
    if i == 0:
        raise KeyError(f"task {i} failed")
    time.sleep(0.3)
    return i


# ------------------------------------------------------------------------- the backend itself

def test_registered_by_import_and_by_register():
    assert joblib.parallel.BACKENDS["lambdamap"] is LambdamapBackend
    lambdamap.joblib.register("lambdamap-again")
    assert joblib.parallel.BACKENDS["lambdamap-again"] is LambdamapBackend
    with pytest.raises(TypeError, match="lambdamap Executor"):
        LambdamapBackend(executor=object())
    with pytest.raises(ValueError, match="tasks_per_call"):
        LambdamapBackend(tasks_per_call=0)


def test_runs_on_the_executor_and_n_jobs_minus_one_is_its_capacity(executor):
    with parallel_config(backend="lambdamap", executor=executor):
        assert joblib.effective_n_jobs(-1) == executor.backend.capacity == 2
        assert joblib.effective_n_jobs(-2) == 1
        pids = Parallel(n_jobs=-1)(delayed(os.getpid)() for _ in range(8))
        assert set(pids) <= set(executor.backend.pids)
        # n_jobs=None (or 1) stays in this process, as with joblib's own backends
        assert Parallel()(delayed(os.getpid)() for _ in range(2)) == [os.getpid()] * 2
        assert Parallel(n_jobs=-1, return_as="generator")(
            delayed(square)(i) for i in range(5)).__next__() == 0


def test_each_batch_is_one_call_or_tasks_per_call_make_one(executor):
    backend = LambdamapBackend(executor)
    with parallel_config(backend=backend):
        parallel = Parallel(n_jobs=2, batch_size=4)
        assert parallel(delayed(square)(i) for i in range(20)) == [i * i for i in range(20)]
    assert backend.transfer.tasks == 20
    assert backend.transfer.calls == parallel.n_dispatched_batches < 20

    grouped = LambdamapBackend(executor, tasks_per_call=6)
    with parallel_config(backend=grouped):
        assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(20)) == [i * i for i in range(20)]
    assert (grouped.transfer.tasks, grouped.transfer.calls) == (20, 4)  # 6 + 6 + 6 + 2


def test_first_error_keeps_its_type_and_traceback_and_cancels_the_rest(executor):
    before = len(executor.metrics())
    started = time.monotonic()
    with parallel_config(backend="lambdamap", executor=executor):
        with pytest.raises(KeyError, match="task 0 failed") as info:
            Parallel(n_jobs=2, batch_size=1, pre_dispatch="all")(
                delayed(fail_first)(i) for i in range(30))
    assert time.monotonic() - started < 0.3 * 29 / 2  # did not wait for the other tasks
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "fail_first" in str(info.value.__cause__)
    # joblib stops dispatching at the error; what was submitted and had not finished is cancelled
    calls = executor.metrics().iloc[before:]  # the executor keeps a row per call, not futures
    finished = int((calls["ok"] == True).sum())  # noqa: E712 - None for calls without a result
    failed = int((calls["ok"] == False).sum())  # noqa: E712
    assert finished < 10 and failed == 1
    assert int(calls["cancelled"].sum()) == len(calls) - finished - failed  # none left pending


def test_embedded_executor_is_shared_and_refused_inside_a_task(monkeypatch):
    monkeypatch.setattr(lambdamap.joblib, "_default", None)
    try:
        with parallel_config(backend="lambdamap"):
            assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]
        default = lambdamap.joblib._default
        assert default is not None and lambdamap.joblib.default_executor() is default
        # Inside a task, nested joblib asking for the default executor is refused, clearly.
        nested = LambdamapBackend()
        with parallel_config(backend="lambdamap", executor=default):
            with pytest.raises(LambdamapError, match="inside a lambdamap task"):
                Parallel(n_jobs=2)(delayed(_nested_lambdamap)(nested) for _ in range(2))
    finally:
        if lambdamap.joblib._default is not None:
            lambdamap.joblib._default.shutdown()


def _nested_lambdamap(backend):
    with parallel_config(backend=backend):
        return Parallel(n_jobs=2)(delayed(square)(i) for i in range(2))


# ------------------------------------------------------------------------- data and nesting

def test_large_arguments_travel_once(executor):
    grid = {"C": [0.01, 0.1, 1.0, 10.0]}
    cv = StratifiedKFold(3)

    def search():
        return GridSearchCV(LogisticRegression(max_iter=200), grid, cv=cv, n_jobs=2).fit(X, Y)

    with parallel_config(backend=(deduped := LambdamapBackend(executor))):
        ours = search()
    with parallel_config(backend=(plain := LambdamapBackend(executor, dedup_bytes=None))):
        inline = search()
    assert deduped.transfer.objects == 1  # X; y (4.7 KiB) travels with the calls
    assert deduped.transfer.object_bytes >= X.nbytes
    assert deduped.transfer.sent_bytes * 2 < plain.transfer.sent_bytes
    assert plain.transfer.objects == 0
    assert np.array_equal(ours.cv_results_["mean_test_score"], inline.cv_results_["mean_test_score"])


def test_stored_arguments_cannot_be_changed_by_a_task(executor):
    import pandas as pd

    frame = pd.DataFrame({"a": np.zeros(10_000), "b": np.ones(10_000)})  # 160 KB: stored
    with parallel_config(backend="lambdamap", executor=executor):
        flags = Parallel(n_jobs=2)(delayed(_writeable)(X, i) for i in range(4))
        seen = Parallel(n_jobs=2, batch_size=3)(delayed(_overwrite)(frame, i) for i in range(6))
    assert flags == [False] * 4  # a read-only view, as joblib's memory maps
    assert seen == [0.0] * 6  # each task got its own shallow copy of the shared frame
    assert X.flags.writeable and frame["a"].sum() == 0  # the caller's objects are untouched


def _writeable(array, _i):
    return array.flags.writeable


def _overwrite(frame, i):
    before = float(frame["a"].iloc[0])
    frame["a"] = float(i + 1)
    return before


def test_functions_of_your_own_modules_travel_by_value(executor, tmp_path, monkeypatch):
    from sklearn.utils.parallel import Parallel as SkParallel
    from sklearn.utils.parallel import delayed as sk_delayed

    (tmp_path / "my_helpers_12.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the workers' sys.path does not have it
    import my_helpers_12

    with parallel_config(backend="lambdamap", executor=executor):
        assert SkParallel(n_jobs=2)(sk_delayed(my_helpers_12.triple)(i) for i in range(4)) == \
            [0, 3, 6, 9]


def test_nested_joblib_and_blas_use_one_worker_unless_asked(executor):
    with parallel_config(backend="lambdamap", executor=executor):
        seen = Parallel(n_jobs=2)(delayed(pid_and_nesting)() for _ in range(4))
    assert {s[1:] for s in seen} == {(1, 1, 1)}
    assert {s[0] for s in seen} <= set(executor.backend.pids)
    with parallel_config(backend="lambdamap", executor=executor, inner_n_jobs=2,
                         inner_max_num_threads=2):
        seen = Parallel(n_jobs=2)(delayed(pid_and_nesting)() for _ in range(2))
    assert {s[1] for s in seen} == {2} and {s[3] for s in seen} == {2}


# -------------------------------------------------------------- equal to loky, with ==

def test_grid_search_over_a_forest_and_a_linear_model_equals_loky(executor):
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    for estimator, grid in [
            (RandomForestClassifier(n_estimators=8, random_state=0, n_jobs=-1),
             {"max_depth": [4, None], "max_features": ["sqrt", 0.5]}),
            (LogisticRegression(max_iter=100), {"C": [0.1, 1.0]})]:
        theirs, ours, backend = both(
            lambda: GridSearchCV(estimator, grid, cv=cv, n_jobs=-1).fit(X, Y), executor)
        for key, value in theirs.cv_results_.items():
            if key.endswith("test_score"):
                assert np.array_equal(ours.cv_results_[key], value), key
        assert ours.best_params_ == theirs.best_params_
        assert backend.transfer.calls >= 2


def test_cross_val_score_permutation_importance_and_forest_fit_equal_loky(executor):
    model = LogisticRegression(max_iter=100)
    theirs, ours, _ = both(lambda: cross_val_score(model, X, Y, cv=4, n_jobs=-1), executor)
    assert np.array_equal(ours, theirs)

    forest = RandomForestClassifier(n_estimators=10, random_state=0).fit(X, Y)
    theirs, ours, _ = both(lambda: permutation_importance(
        forest, X[:200], Y[:200], n_repeats=2, random_state=0, n_jobs=-1), executor)
    assert np.array_equal(ours.importances, theirs.importances)

    theirs, ours, backend = both(lambda: RandomForestClassifier(
        n_estimators=12, random_state=0, n_jobs=-1).fit(X, Y), executor)
    assert np.array_equal(ours.predict_proba(X), theirs.predict_proba(X))
    assert backend.transfer.tasks == 12 and backend.transfer.objects == 1  # X, once


def _dml_data():
    import doubleml

    X_, y = make_regression(n_samples=200, n_features=5, noise=1.0, random_state=0)
    rng = np.random.RandomState(0)
    d_cont = X_[:, 0] + rng.normal(size=200)
    d_bin = (d_cont > 0).astype(float)
    frame = {f"x{i}": X_[:, i] for i in range(1, 5)}
    import pandas as pd

    plr = doubleml.DoubleMLData(pd.DataFrame({"y": y, "d": d_cont, **frame}), "y", "d")
    irm = doubleml.DoubleMLData(pd.DataFrame({"y": y, "d": d_bin, **frame}), "y", "d")
    return plr, irm


def _fit_twice(model, executor, **fit_kwargs):
    """Deep copies share the sample splits: fit one under loky, one under lambdamap."""
    twin = copy.deepcopy(model)
    with parallel_config(backend="loky"):
        theirs = model.fit(**fit_kwargs)
    backend = LambdamapBackend(executor)
    with parallel_config(backend=backend):
        ours = twin.fit(**fit_kwargs)
    assert np.array_equal(ours.coef, theirs.coef) and np.array_equal(ours.se, theirs.se)
    return backend


def test_doubleml_n_jobs_cv_for_plr_and_irm_equals_loky(executor):
    import doubleml

    plr, irm = _dml_data()
    forest = RandomForestRegressor(n_estimators=10, max_depth=4, random_state=0)
    np.random.seed(0)
    backend = _fit_twice(doubleml.DoubleMLPLR(plr, forest, LinearRegression(), n_folds=3),
                         executor, n_jobs_cv=3)
    assert backend.transfer.calls >= 2
    np.random.seed(0)
    _fit_twice(doubleml.DoubleMLIRM(irm, LinearRegression(), LogisticRegression(), n_folds=3),
               executor, n_jobs_cv=3)


@pytest.mark.filterwarnings("ignore:The inplace keyword:DeprecationWarning")
def test_doubleml_n_jobs_models_for_apos_and_did_multi_equals_loky(executor):
    import doubleml
    import pandas as pd
    from doubleml.did import DoubleMLDIDMulti
    from doubleml.did.datasets import make_did_CS2021
    from doubleml.irm.datasets import make_irm_data_discrete_treatments

    raw = make_irm_data_discrete_treatments(n_obs=200, random_state=0)
    frame = pd.DataFrame(np.column_stack((raw["y"], raw["d"], raw["x"])),
                         columns=["y", "d"] + [f"x{i}" for i in range(raw["x"].shape[1])])
    np.random.seed(0)
    apos = doubleml.DoubleMLAPOS(doubleml.DoubleMLData(frame, "y", "d"), LinearRegression(),
                                 LogisticRegression(), treatment_levels=[0, 1, 2], n_folds=2)
    _fit_twice(apos, executor, n_jobs_models=2)

    np.random.seed(0)
    panel = doubleml.DoubleMLPanelData(make_did_CS2021(n_obs=200, dgp_type=1), y_col="y",
                                       d_cols="d", id_col="id", t_col="t",
                                       x_cols=["Z1", "Z2", "Z3", "Z4"])
    did = DoubleMLDIDMulti(panel, ml_g=LinearRegression(), ml_m=LogisticRegression(), n_folds=2)
    _fit_twice(did, executor, n_jobs_models=2)


# ---------------------------------------------------------------------------- the AWS path

def test_grid_search_on_the_aws_path_equals_loky(s3_bucket):
    # moto's S3 and the Lambda emulator in host mode: its workers import scikit-learn from this
    # environment (the offline layer of tests/aws_stack.py holds only the handler's packages).
    from conftest import FAKE_AWS_ENV
    from lambdamap.emulator import FunctionSpec, LambdaEmulator

    endpoint, bucket = s3_bucket
    grid, cv = {"C": [0.1, 1.0, 10.0]}, StratifiedKFold(3)

    def search():
        return GridSearchCV(LogisticRegression(max_iter=100), grid, cv=cv, n_jobs=-1).fit(X, Y)

    with parallel_config(backend="loky", n_jobs=2):
        theirs = search()
    spec = FunctionSpec(environment=FAKE_AWS_ENV, timeout=60.0)
    with LambdaEmulator({"lambdamap": spec}, concurrency=2) as emulator, Executor(
            backend="aws", function_name="lambdamap", bucket=bucket, region="us-east-1",
            s3_endpoint_url=endpoint, lambda_endpoint_url=emulator.endpoint_url,
            poll_interval=(0.02, 0.2)) as ex:
        backend = LambdamapBackend(ex)
        with parallel_config(backend=backend):
            ours = search()
        assert backend.MIN_IDEAL_BATCH_DURATION == lambdamap.joblib.BATCH_SECONDS["aws"][0]
        workers = set(ex.metrics()["worker"])
    assert workers and all("[$LATEST]" in w for w in workers)
    assert backend.transfer.objects == 1
    for key, value in theirs.cv_results_.items():
        if key.endswith("test_score"):
            assert np.array_equal(ours.cv_results_[key], value), key
    assert ours.best_params_ == theirs.best_params_


def test_aws_capacity_is_the_functions_concurrency():
    from botocore.stub import Stubber

    from lambdamap.backends.aws import AWSBackend, lambda_client
    from lambdamap.config import Settings

    def backend_answering(*responses):
        settings = Settings.resolve(function_name="fn", region="us-east-1", bucket="b")
        aws = AWSBackend(settings)
        aws._client = lambda_client(settings)
        stub = Stubber(aws._client)
        for method, answer in responses:
            if isinstance(answer, str):
                stub.add_client_error(method, service_error_code=answer, http_status_code=403)
            else:
                stub.add_response(method, answer)
        stub.activate()
        return aws

    reserved = backend_answering(("get_function_concurrency", {"ReservedConcurrentExecutions": 7}))
    assert reserved.capacity == 7 and reserved.capacity == 7  # read once
    account = backend_answering(("get_function_concurrency", {}), (
        "get_account_settings", {"AccountLimit": {"UnreservedConcurrentExecutions": 900}}))
    assert account.capacity == 900
    denied = backend_answering(("get_function_concurrency", "AccessDeniedException"))
    assert denied.capacity == denied.settings.invoke_threads
