"""forest: grove forests equal scikit-learn's forests tree for tree.

Most tests use forest.InlineExecutor (in-process, no pickling) for speed; the tests marked
"real executor" run through lambdamap.Executor with worker processes.
"""
from __future__ import annotations

import inspect
import math
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
import sklearn
from sklearn.base import clone
from sklearn.datasets import load_digits, make_regression
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
from sklearn.utils.estimator_checks import check_estimator

from forest import GroveForestClassifier, GroveForestRegressor, GroveGridSearchCV, InlineExecutor
from lambdamap import RuntimeMismatchError

pytestmark = pytest.mark.filterwarnings("ignore:Some inputs do not have OOB scores:UserWarning")

# Small data: a slice of digits (10 classes) and a small regression problem.
_DIGITS_X, _DIGITS_Y = load_digits(return_X_y=True)
X_CLS, Y_CLS = _DIGITS_X[:400], _DIGITS_Y[:400]
X_TEST = _DIGITS_X[400:600]
X_REG, Y_REG = make_regression(n_samples=200, n_features=8, noise=1.0, random_state=0)
WEIGHTS = np.random.RandomState(0).uniform(0.1, 2.0, size=len(X_CLS))


class CountingExecutor(InlineExecutor):
    """InlineExecutor that counts puts and calls (fit submits one call per grove, distributed
    prediction maps one per grove)."""

    def __init__(self):
        self.puts = 0
        self.calls = 0

    def put(self, obj):
        self.puts += 1
        return obj

    def map(self, fn, *iterables, **kwargs):
        results = list(super().map(fn, *iterables, **kwargs))
        self.calls += len(results)
        return iter(results)

    def submit(self, fn, /, *args, **kwargs):
        self.calls += 1
        return super().submit(fn, *args, **kwargs)


@pytest.fixture(scope="module")
def executor():
    """A real lambdamap executor with two local worker processes, shared by the module."""
    from lambdamap import Executor

    with Executor(workers=2) as ex:
        yield ex


def assert_same_forest(grove, plain, X):
    """Every observable output of the two fitted forests is exactly equal."""
    if hasattr(plain, "predict_proba"):
        assert np.array_equal(grove.predict_proba(X), plain.predict_proba(X))
    assert np.array_equal(grove.predict(X), plain.predict(X))
    assert np.array_equal(grove.feature_importances_, plain.feature_importances_)
    assert all(np.array_equal(a, b)
               for a, b in zip(grove.estimators_samples_, plain.estimators_samples_))
    assert [t.random_state for t in grove.estimators_] == [t.random_state for t in plain.estimators_]
    for name in ("oob_score_", "oob_decision_function_", "oob_prediction_"):
        assert hasattr(grove, name) == hasattr(plain, name)
        if hasattr(plain, name):
            assert np.array_equal(getattr(grove, name), getattr(plain, name))


# ------------------------------------------------------------------------- conventions

@pytest.mark.parametrize("grove_cls, sklearn_cls", [
    (GroveForestClassifier, RandomForestClassifier), (GroveForestRegressor, RandomForestRegressor)])
def test_parameters_are_sklearns_plus_grove_ones(grove_cls, sklearn_cls):
    ours = inspect.signature(grove_cls.__init__).parameters
    theirs = inspect.signature(sklearn_cls.__init__).parameters
    assert list(ours)[:-3] == list(theirs)
    assert all(ours[name].default == theirs[name].default for name in theirs)
    assert (ours["grove_size"].default, ours["executor"].default, ours["progress"].default) == \
        (10, None, None)


@pytest.mark.parametrize("estimator", [
    GroveForestClassifier(n_estimators=5, grove_size=2, executor=InlineExecutor()),
    GroveForestRegressor(n_estimators=5, grove_size=2, executor=InlineExecutor())],
    ids=["classifier", "regressor"])
def test_check_estimator(estimator):
    # scikit-learn excludes the same two checks for its own RandomForest* (instance_generator.py)
    reason = "sample_weight is not equivalent to removing/repeating samples (as RandomForest*)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_estimator(estimator, expected_failed_checks={
            "check_sample_weight_equivalence_on_dense_data": reason,
            "check_sample_weight_equivalence_on_sparse_data": reason})


def test_fit_uploads_once_and_calls_once_per_grove():
    ex = CountingExecutor()
    model = GroveForestClassifier(n_estimators=23, grove_size=5, random_state=0, executor=ex)
    assert model.fit(X_CLS, Y_CLS) is model
    assert (ex.puts, ex.calls) == (1, math.ceil(23 / 5))
    assert len(model.estimators_) == 23


def test_clone_shares_executor_and_pickle_drops_it():
    ex = InlineExecutor()
    model = GroveForestClassifier(n_estimators=3, executor=ex, random_state=0).fit(X_CLS, Y_CLS)
    assert clone(model).executor is ex
    restored = pickle.loads(pickle.dumps(model))
    assert restored.executor is None
    assert np.array_equal(restored.predict(X_TEST), model.predict(X_TEST))


# ----------------------------------------------------------------------- tree for tree

@pytest.mark.parametrize("params", [
    {},
    {"max_samples": 0.5},
    {"max_samples": 150, "oob_score": True},
    {"class_weight": "balanced_subsample"},
    {"class_weight": "balanced_subsample", "oob_score": True, "max_features": 0.3},
    {"class_weight": "balanced", "oob_score": True},
    {"bootstrap": False, "max_depth": 6},
    {"oob_score": True, "sample_weight": True},
    {"random_state": np.random.RandomState(3)},
], ids=str)
def test_classifier_equals_sklearn(params):
    params = {"random_state": 0, **params}
    fit_kwargs = {"sample_weight": WEIGHTS} if params.pop("sample_weight", False) else {}
    random_state = params.pop("random_state")
    # A RandomState instance is consumed by fitting: give each forest an identical copy.
    twin_state = pickle.loads(pickle.dumps(random_state))
    grove = GroveForestClassifier(n_estimators=13, grove_size=4, executor=InlineExecutor(),
                                  random_state=random_state, **params).fit(X_CLS, Y_CLS, **fit_kwargs)
    plain = RandomForestClassifier(n_estimators=13, random_state=twin_state,
                                   **params).fit(X_CLS, Y_CLS, **fit_kwargs)
    assert_same_forest(grove, plain, X_TEST)


@pytest.mark.parametrize("params", [
    {}, {"oob_score": True, "max_samples": 0.7}, {"criterion": "absolute_error", "max_depth": 4},
    {"bootstrap": False, "max_features": 0.5}], ids=str)
def test_regressor_equals_sklearn(params):
    grove = GroveForestRegressor(n_estimators=11, grove_size=3, random_state=1,
                                 executor=InlineExecutor(), **params).fit(X_REG, Y_REG)
    plain = RandomForestRegressor(n_estimators=11, random_state=1, **params).fit(X_REG, Y_REG)
    assert_same_forest(grove, plain, X_REG)


def test_sparse_and_missing_values_equal_sklearn():
    from scipy.sparse import csr_matrix

    with_nan = X_CLS.copy()
    with_nan[::7, 20] = np.nan  # trees learn where missing values go
    for X in (csr_matrix(X_CLS), with_nan):
        grove = GroveForestClassifier(n_estimators=7, grove_size=3, random_state=0,
                                      executor=InlineExecutor()).fit(X, Y_CLS)
        plain = RandomForestClassifier(n_estimators=7, random_state=0).fit(X, Y_CLS)
        assert_same_forest(grove, plain, X)


def test_multioutput_and_warm_start_equal_sklearn():
    Y2 = np.c_[Y_CLS, Y_CLS % 2]
    grove = GroveForestClassifier(n_estimators=6, grove_size=4, random_state=0,
                                  executor=InlineExecutor()).fit(X_CLS, Y2)
    plain = RandomForestClassifier(n_estimators=6, random_state=0).fit(X_CLS, Y2)
    assert all(np.array_equal(a, b) for a, b in
               zip(grove.predict_proba(X_TEST), plain.predict_proba(X_TEST)))
    assert np.array_equal(grove.predict(X_TEST, distributed=True), plain.predict(X_TEST))
    # Warm start: 6 more trees continue scikit-learn's seed sequence.
    grove.set_params(warm_start=True, n_estimators=12).fit(X_CLS, Y2)
    plain.set_params(warm_start=True, n_estimators=12).fit(X_CLS, Y2)
    assert np.array_equal(grove.predict(X_TEST), plain.predict(X_TEST))
    assert np.array_equal(grove.feature_importances_, plain.feature_importances_)


def test_distributed_prediction_equals_local():
    ex = CountingExecutor()
    clf = GroveForestClassifier(n_estimators=10, grove_size=3, random_state=0, executor=ex)
    clf.fit(X_CLS, Y_CLS)
    assert np.array_equal(clf.predict_proba(X_TEST, distributed=True), clf.predict_proba(X_TEST))
    assert np.array_equal(clf.predict(X_TEST, distributed=True), clf.predict(X_TEST))
    reg = GroveForestRegressor(n_estimators=10, grove_size=4, random_state=0,
                               executor=InlineExecutor()).fit(X_REG, Y_REG)
    assert np.array_equal(reg.predict(X_REG, distributed=True), reg.predict(X_REG))


class RuntimeReporting(CountingExecutor):
    """An in-process executor whose "runtime" reports the given package versions."""

    def __init__(self, versions):
        super().__init__()
        self.backend = type("FakeBackend", (), {"name": "fake", "capacity": 2,
                                                "runtime_versions": lambda _self: versions})()


def test_runtime_with_another_sklearn_is_refused_before_any_call():
    ex = RuntimeReporting({"scikit-learn": "1.7.2"})
    model = GroveForestClassifier(n_estimators=4, grove_size=2, executor=ex)
    with pytest.raises(RuntimeMismatchError, match=rf"scikit-learn {sklearn.__version__} on the "
                                                   r"client, 1\.7\.2 on the runtime"):
        model.fit(X_CLS, Y_CLS)
    assert (ex.calls, ex.puts) == (0, 0)


def test_worker_checks_sklearn_itself_when_the_runtime_is_unknown(executor, monkeypatch, caplog):
    # The client cannot tell (runtime_versions() is None): it warns, and the worker refuses
    # before it unpickles a tree, with both versions in the message.
    monkeypatch.setattr(executor.backend, "runtime_versions", lambda: None)
    monkeypatch.setattr("forest.estimators.sklearn_requirement", lambda: {"scikit-learn": "0.99"})
    model = GroveForestClassifier(n_estimators=4, grove_size=2, executor=executor)
    with pytest.raises(RuntimeMismatchError, match=r"scikit-learn 0\.99 on the client, "
                                                   rf"{sklearn.__version__} on this runtime") as info:
        model.fit(X_CLS, Y_CLS)
    assert "_check_installed" in str(info.value.__cause__)  # the remote traceback
    assert "versions of scikit-learn on the local runtime are unknown" in caplog.text


# -------------------------------------------------------------------- sklearn and files

def test_to_sklearn_is_plain_and_unpickles_without_lambdamap(tmp_path):
    model = GroveForestClassifier(n_estimators=8, grove_size=3, random_state=0,
                                  oob_score=True, executor=InlineExecutor()).fit(X_CLS, Y_CLS)
    plain = model.to_sklearn()
    assert type(plain) is RandomForestClassifier
    assert "grove_size" not in plain.get_params() and plain.oob_score_ == model.oob_score_
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(plain))
    np.save(tmp_path / "x.npy", X_TEST)
    # A fresh interpreter in which importing lambdamap or forest fails.
    code = ("import sys, pickle, numpy as np; sys.modules['lambdamap'] = sys.modules['forest'] = None;"
            f"m = pickle.load(open({str(path)!r}, 'rb')); "
            f"np.save({str(tmp_path / 'p.npy')!r}, m.predict_proba(np.load({str(tmp_path / 'x.npy')!r})))")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    assert np.array_equal(np.load(tmp_path / "p.npy"), model.predict_proba(X_TEST))


def test_save_and_load_local(tmp_path):
    model = GroveForestRegressor(n_estimators=5, grove_size=2, random_state=0,
                                 executor=InlineExecutor()).fit(X_REG, Y_REG)
    model.save(str(tmp_path / "models" / "reg.pkl"))
    loaded = GroveForestRegressor.load(str(tmp_path / "models" / "reg.pkl"))
    assert type(loaded) is GroveForestRegressor and loaded.grove_size == 2
    assert np.array_equal(loaded.predict(X_REG), model.predict(X_REG))
    with pytest.raises(TypeError):
        GroveForestClassifier.load(str(tmp_path / "models" / "reg.pkl"))


def test_save_and_load_s3(s3_bucket, monkeypatch):
    # s3_bucket (tests/conftest.py): moto's ThreadedMotoServer on 127.0.0.1, fake credentials.
    endpoint, bucket = s3_bucket
    monkeypatch.setenv("LAMBDAMAP_S3_ENDPOINT_URL", endpoint)  # honoured by lambdamap's S3Storage
    model = GroveForestClassifier(n_estimators=5, grove_size=2, random_state=0,
                                  executor=InlineExecutor()).fit(X_CLS, Y_CLS)
    uri = f"s3://{bucket}/models/digits.pkl"
    model.save(uri)
    loaded = GroveForestClassifier.load(uri)
    assert np.array_equal(loaded.predict_proba(X_TEST), model.predict_proba(X_TEST))


# ---------------------------------------------------------------------------- search

def _assert_same_cv_results(ours, theirs):
    for key, value in theirs.cv_results_.items():
        if key.endswith(("test_score", "train_score")):  # not the timings
            assert np.array_equal(ours.cv_results_[key], value), key
    assert ours.cv_results_["params"] == theirs.cv_results_["params"]
    assert ours.best_params_ == theirs.best_params_ and ours.best_score_ == theirs.best_score_


def test_grid_search_equals_gridsearchcv():
    grid = {"max_depth": [3, None], "max_features": ["sqrt", 0.5]}
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    ex = CountingExecutor()
    estimator = GroveForestClassifier(n_estimators=6, grove_size=3, random_state=0)
    ours = GroveGridSearchCV(estimator, grid, cv=cv, executor=ex,
                             return_train_score=True).fit(X_CLS, Y_CLS)
    theirs = GridSearchCV(RandomForestClassifier(n_estimators=6, random_state=0), grid, cv=cv,
                          return_train_score=True).fit(X_CLS, Y_CLS)
    _assert_same_cv_results(ours, theirs)
    assert ex.calls == 4 * 3 + 2  # one call per (setting, fold), then the refit's two groves
    assert type(ours.best_estimator_) is GroveForestClassifier
    assert np.array_equal(ours.predict(X_TEST), theirs.predict(X_TEST))


# --------------------------------------------------------------------- real executor

def test_real_executor_fit_predict_search(executor):
    clf = GroveForestClassifier(n_estimators=12, grove_size=4, random_state=0,
                                class_weight="balanced_subsample", oob_score=True,
                                executor=executor).fit(X_CLS, Y_CLS)
    plain = RandomForestClassifier(n_estimators=12, random_state=0, oob_score=True,
                                   class_weight="balanced_subsample").fit(X_CLS, Y_CLS)
    assert_same_forest(clf, plain, X_TEST)
    assert np.array_equal(clf.predict_proba(X_TEST, distributed=True), plain.predict_proba(X_TEST))

    reg = GroveForestRegressor(n_estimators=6, grove_size=4, random_state=0, max_samples=0.5,
                               executor=executor).fit(X_REG, Y_REG)
    assert np.array_equal(reg.predict(X_REG, distributed=True),
                          RandomForestRegressor(n_estimators=6, random_state=0, max_samples=0.5)
                          .fit(X_REG, Y_REG).predict(X_REG))

    grid, cv = {"min_samples_leaf": [1, 5]}, KFold(2)
    ours = GroveGridSearchCV(GroveForestRegressor(n_estimators=4, random_state=0), grid, cv=cv,
                             executor=executor).fit(X_REG, Y_REG)
    theirs = GridSearchCV(RandomForestRegressor(n_estimators=4, random_state=0), grid,
                          cv=cv).fit(X_REG, Y_REG)
    _assert_same_cv_results(ours, theirs)


def test_default_executor_is_created_and_shut_down():
    model = GroveForestClassifier(n_estimators=4, grove_size=2, random_state=0).fit(X_CLS, Y_CLS)
    assert model.executor is None
    plain = RandomForestClassifier(n_estimators=4, random_state=0).fit(X_CLS, Y_CLS)
    assert np.array_equal(model.predict_proba(X_TEST), plain.predict_proba(X_TEST))


def test_cli_trains_evaluates_and_saves(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "forest", "train", "digits-small", "--trees", "12", "--grove", "4",
         "--predict", "--models", str(tmp_path / "models")],
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "accuracy 0.9" in run.stdout and "3 groves" in run.stdout
    assert "equal to local" in run.stdout
    loaded = GroveForestClassifier.load(str(tmp_path / "models" / "digits-small.pkl"))
    assert len(loaded.estimators_) == 12
