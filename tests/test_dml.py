"""dml: serverless DoubleML equals local doubleml, bit for bit, for every supported model.

Small data and small forests (integer random_state) keep the file fast; one lambdamap executor with
two local workers serves all tests.
"""
from __future__ import annotations

import concurrent.futures
import copy
import threading
import warnings

import doubleml
import numpy as np
import pandas as pd
import pytest
from doubleml.did.datasets import make_did_cs_CS2021, make_did_SZ2020
from doubleml.irm.datasets import make_iivm_data, make_irm_data, make_irm_data_discrete_treatments
from doubleml.plm.datasets import make_pliv_CHS2015, make_plpr_CP2025, make_plr_CCDDHNR2018
from sklearn.base import BaseEstimator
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import Lasso, LinearRegression

import dml
from dml.crossfit import choose_granularity
from lambdamap import Executor
from lambdamap.pricing import PRICE_PER_GB_SECOND, PRICE_PER_REQUEST, billed_gb_seconds, lambda_cost

N_FOLDS, N_REP = 3, 2


def reg(seed: int) -> RandomForestRegressor:
    return RandomForestRegressor(n_estimators=8, max_depth=4, random_state=seed)


def clf(seed: int) -> RandomForestClassifier:
    return RandomForestClassifier(n_estimators=8, max_depth=4, random_state=seed)


@pytest.fixture(scope="module")
def executor():
    with Executor(workers=2) as ex:
        yield ex


class SpyExecutor(concurrent.futures.ThreadPoolExecutor):
    """A plain concurrent.futures executor that counts submissions (no put: data travel inline)."""

    def __init__(self):
        super().__init__(max_workers=2)
        self.submitted = 0

    def submit(self, fn, /, *args, **kwargs):
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


# -- data sets, one per model family -----------------------------------------------------------


def _data():
    np.random.seed(1)
    plr = make_plr_CCDDHNR2018(n_obs=200, dim_x=5)
    df = make_plr_CCDDHNR2018(n_obs=200, dim_x=5, return_type="DataFrame")
    df["d2"] = df["X1"] + np.random.normal(size=len(df))
    plr_two_treatments = doubleml.DoubleMLData(df, "y", ["d", "d2"], x_cols=["X2", "X3", "X4", "X5"])
    df_bin = df.assign(d=(df["d"] > 0).astype(float))
    plr_binary_d = doubleml.DoubleMLData(df_bin, "y", "d", x_cols=["X1", "X2", "X3", "X4", "X5"])
    disc = make_irm_data_discrete_treatments(n_obs=200, random_state=1)
    apo_df = pd.DataFrame(np.column_stack((disc["y"], disc["d"], disc["x"])),
                          columns=["y", "d"] + [f"x{i}" for i in range(disc["x"].shape[1])])
    cs_df = make_did_cs_CS2021(n_obs=300, dgp_type=1, time_type="float")
    cs_panel = doubleml.DoubleMLPanelData(cs_df, y_col="y", d_cols="d", id_col="id", t_col="t",
                                          x_cols=["Z1", "Z2", "Z3", "Z4"])
    g_value = [g for g in cs_panel.g_values if np.isfinite(g)][0]
    plpr = doubleml.DoubleMLPanelData(make_plpr_CP2025(num_id=40, num_t=4, dim_x=4), "y", "d", "time", "id",
                                      static_panel=True)
    return {
        "plr": plr, "plr2": plr_two_treatments, "plr_bin": plr_binary_d,
        "pliv": make_pliv_CHS2015(n_obs=200, dim_x=5, dim_z=1),
        "pliv2": make_pliv_CHS2015(n_obs=200, dim_x=5, dim_z=2),
        "irm": make_irm_data(n_obs=200, dim_x=5), "iivm": make_iivm_data(n_obs=300, dim_x=5),
        "apo": doubleml.DoubleMLData(apo_df, "y", "d"),
        "did": make_did_SZ2020(n_obs=200), "didcs": make_did_SZ2020(n_obs=200, cross_sectional_data=True),
        "panel": make_did_SZ2020(n_obs=200, return_type="DoubleMLPanelData"),
        "cs_panel": cs_panel, "cs_gt": dict(g_value=g_value, t_value_pre=cs_panel.t_values[0],
                                            t_value_eval=cs_panel.t_values[1]),
        "plpr": plpr,
    }


DATA = _data()

# (id, doubleml class, data key, learner and model arguments)
CASES = [
    ("PLR", doubleml.DoubleMLPLR, "plr", lambda: dict(ml_l=reg(1), ml_m=reg(2))),
    ("PLR-IV-type", doubleml.DoubleMLPLR, "plr", lambda: dict(ml_l=reg(1), ml_m=reg(2), ml_g=reg(3), score="IV-type")),
    ("PLR-two-treatments", doubleml.DoubleMLPLR, "plr2", lambda: dict(ml_l=reg(1), ml_m=reg(2))),
    ("PLR-classifier-m", doubleml.DoubleMLPLR, "plr_bin", lambda: dict(ml_l=reg(1), ml_m=clf(2))),
    ("PLIV", doubleml.DoubleMLPLIV, "pliv", lambda: dict(ml_l=reg(1), ml_m=reg(2), ml_r=reg(3))),
    ("PLIV-IV-type", doubleml.DoubleMLPLIV, "pliv",
     lambda: dict(ml_l=reg(1), ml_m=reg(2), ml_r=reg(3), ml_g=reg(4), score="IV-type")),
    ("PLIV-two-instruments", doubleml.DoubleMLPLIV, "pliv2", lambda: dict(ml_l=reg(1), ml_m=reg(2), ml_r=reg(3))),
    ("PLPR-cre_general", doubleml.DoubleMLPLPR, "plpr", lambda: dict(ml_l=reg(1), ml_m=reg(2), approach="cre_general")),
    ("PLPR-cre_normal", doubleml.DoubleMLPLPR, "plpr", lambda: dict(ml_l=reg(1), ml_m=reg(2), approach="cre_normal")),
    ("IRM", doubleml.DoubleMLIRM, "irm", lambda: dict(ml_g=reg(1), ml_m=clf(2))),
    ("IRM-ATTE", doubleml.DoubleMLIRM, "irm", lambda: dict(ml_g=reg(1), ml_m=clf(2), score="ATTE")),
    ("IIVM", doubleml.DoubleMLIIVM, "iivm", lambda: dict(ml_g=reg(1), ml_m=clf(2), ml_r=clf(3))),
    ("IIVM-no-always-takers", doubleml.DoubleMLIIVM, "iivm",
     lambda: dict(ml_g=reg(1), ml_m=clf(2), ml_r=clf(3), subgroups={"always_takers": False, "never_takers": True})),
    ("APO", doubleml.DoubleMLAPO, "apo", lambda: dict(ml_g=reg(1), ml_m=clf(2), treatment_level=1)),
    ("DID", doubleml.DoubleMLDID, "did", lambda: dict(ml_g=reg(1), ml_m=clf(2))),
    ("DID-experimental", doubleml.DoubleMLDID, "did", lambda: dict(ml_g=reg(1), score="experimental")),
    ("DIDCS", doubleml.DoubleMLDIDCS, "didcs", lambda: dict(ml_g=reg(1), ml_m=clf(2))),
    ("DIDBinary", doubleml.did.DoubleMLDIDBinary, "panel",
     lambda: dict(ml_g=reg(1), ml_m=clf(2), g_value=1, t_value_pre=0, t_value_eval=1)),
    ("DIDCSBinary", doubleml.did.DoubleMLDIDCSBinary, "cs_panel",
     lambda: dict(ml_g=reg(1), ml_m=clf(2), **DATA["cs_gt"])),
]
SERVERLESS = {cls.doubleml_class(): cls for cls in dml.SUPPORTED.values()}


def fit_pair(base, data, kwargs, executor, **serverless_kwargs):
    """A local doubleml fit and a serverless fit with the same sample splits."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # DoubleMLDID/DIDCS are deprecated in doubleml
        np.random.seed(7)
        local = base(data, n_folds=N_FOLDS, n_rep=N_REP, **kwargs).fit()
        np.random.seed(7)
        remote = SERVERLESS[base](data, n_folds=N_FOLDS, n_rep=N_REP, executor=executor, **kwargs,
                                  **serverless_kwargs).fit()
    return local, remote


def assert_identical(local, remote):
    assert all(np.array_equal(a[1], b[1]) for ra, rb in zip(local.smpls, remote.smpls) for a, b in zip(ra, rb))
    assert np.array_equal(remote.coef, local.coef)
    assert np.array_equal(remote.se, local.se)
    assert np.array_equal(remote.all_coef, local.all_coef)
    assert np.array_equal(remote.all_se, local.all_se)
    assert np.array_equal(remote.psi, local.psi, equal_nan=True)
    assert set(remote.predictions) == set(local.predictions)
    for name in local.predictions:
        assert np.array_equal(remote.predictions[name], local.predictions[name], equal_nan=True), name
        assert np.array_equal(remote.nuisance_targets[name], local.nuisance_targets[name], equal_nan=True), name
        assert np.array_equal(remote.nuisance_loss[name], local.nuisance_loss[name], equal_nan=True), name
    if local.sensitivity_elements is not None:
        for key, value in local.sensitivity_elements.items():
            assert np.array_equal(remote.sensitivity_elements[key], value, equal_nan=True), key


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_identical_to_doubleml(case, executor):
    _, base, data_key, make_kwargs = case
    local, remote = fit_pair(base, DATA[data_key], make_kwargs(), executor)
    assert_identical(local, remote)
    # diagnostics survive remote predictions: numbers, not NaN (where doubleml fits a learner)
    fitted = [name for name in remote.predictions if not np.isnan(local.nuisance_loss[name]).all()]
    assert fitted
    for name in fitted:
        assert np.isfinite(remote.nuisance_loss[name]).all()
    evaluation = remote.evaluate_learners(learners=fitted)
    assert all(np.isfinite(evaluation[name]).all() for name in fitted)


def test_granularities_agree_and_count_requests(executor):
    kwargs = dict(ml_l=reg(1), ml_m=reg(2))
    results = {g: fit_pair(doubleml.DoubleMLPLR, DATA["plr"], kwargs, executor, granularity=g) for g in ("fold", "rep")}
    for local, remote in results.values():
        assert_identical(local, remote)
    assert results["fold"][1].metrics.loc["requests", "value"] == N_REP * N_FOLDS * 2
    assert results["rep"][1].metrics.loc["requests", "value"] == N_REP * 2
    assert results["rep"][1].metrics.loc["fits", "value"] == N_REP * N_FOLDS * 2


def test_choose_granularity():
    # long fits: one task per fold keeps all workers busy; short fits: bundle the folds
    assert choose_granularity(fit_seconds=10.0, n_fits=100, n_folds=5, workers=1000, overhead=0.25) == "fold"
    assert choose_granularity(fit_seconds=0.01, n_fits=100, n_folds=5, workers=2, overhead=0.25) == "rep"
    # few repetitions on many workers: bundling would leave workers idle
    assert choose_granularity(fit_seconds=0.5, n_fits=10, n_folds=5, workers=8, overhead=0.02) == "fold"


def test_metrics_and_aliases(executor):
    np.random.seed(3)
    model = dml.DoubleMLPLRServerless(DATA["plr"], reg(1), reg(2), n_folds=N_FOLDS, n_rep=N_REP, executor=executor)
    assert model.fit_aws_lambda(n_lambdas_cv="n_rep") is model  # DoubleML-Serverless's name for "rep"
    m = model.metrics
    assert model.aws_lambda_metrics is m
    tasks = model.task_metrics
    assert len(tasks) == m.loc["requests", "value"] == N_REP * 2
    assert (tasks["bytes_in"] > 0).all() and (tasks["bytes_out"] > 0).all()
    # data travel by reference: a task's arguments are far smaller than the data
    assert tasks["bytes_in"].max() < m.loc["bytes put to the store (data, splits)", "value"]
    assert m.loc["total duration (s)", "value"] == pytest.approx(tasks["duration"].sum())
    # the whole cost: the fits' GB-seconds, plus cold starts' INIT phase and the S3 requests
    assert m.loc["estimated cost (USD)", "value"] > lambda_cost(tasks["duration"], 1769)
    assert m.loc["S3 requests", "value"] >= 5 * len(tasks)  # marker, result, status, args, result read
    assert m.loc["peak memory (MB)", "value"] > 0
    assert m.loc["wall-clock time (s)", "value"] >= m.loc["cross-fitting wall time (s)", "value"] > 0


def test_lambda_pricing():
    assert PRICE_PER_GB_SECOND["x86_64"] == 0.0000166667 and PRICE_PER_REQUEST == 0.20 / 1e6
    assert billed_gb_seconds([0.0001, 1.0], memory_mb=2048) == pytest.approx((0.001 + 1.0) * 2)  # 1 ms minimum
    assert lambda_cost([1.0] * 1000, 1024) == pytest.approx(1000 * 0.0000166667 + 1000 * 0.2e-6)
    assert lambda_cost([1.0], 1024, arch="arm64") < lambda_cost([1.0], 1024)
    with pytest.raises(ValueError, match="architecture"):
        lambda_cost([1.0], 1024, arch="sparc")


def test_inference_methods_as_in_doubleml(executor):
    local, remote = fit_pair(doubleml.DoubleMLPLR, DATA["plr"], dict(ml_l=reg(1), ml_m=reg(2)), executor)
    pd.testing.assert_frame_equal(remote.summary, local.summary)
    pd.testing.assert_frame_equal(remote.confint(), local.confint())
    for model in (local, remote):
        np.random.seed(11)
        model.bootstrap(n_rep_boot=50)
    pd.testing.assert_frame_equal(remote.confint(joint=True), local.confint(joint=True))
    pd.testing.assert_frame_equal(remote.p_adjust("bonferroni"), local.p_adjust("bonferroni"))
    local.sensitivity_analysis()
    remote.sensitivity_analysis()
    assert remote.sensitivity_summary == local.sensitivity_summary


def test_external_predictions_from_the_user_are_not_refitted(executor):
    np.random.seed(7)
    local = doubleml.DoubleMLPLR(DATA["plr"], reg(1), reg(2), n_folds=N_FOLDS, n_rep=N_REP).fit()
    np.random.seed(7)
    remote = dml.DoubleMLPLRServerless(DATA["plr"], reg(1), reg(2), n_folds=N_FOLDS, n_rep=N_REP,
                                       executor=executor, granularity="rep")
    remote.fit(external_predictions={"d": {"ml_m": local.predictions["ml_m"][:, :, 0]}})
    assert set(remote.task_metrics["nuisance"]) == {"ml_l"}
    assert np.array_equal(remote.coef, local.coef) and np.array_equal(remote.se, local.se)


def _external(model) -> dict:
    """A fitted doubleml model's predictions in the external_predictions layout, every nuisance."""
    return {d_col: {name: model.predictions[name][:, :, i] for name in model.predictions
                    if not np.isnan(model.predictions[name][:, :, i]).all()}
            for i, d_col in enumerate(model._dml_data.d_cols)}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_every_nuisance_external_runs_no_task(case):
    # doubleml's own tests refit this way everywhere; it once raised KeyError: 'duration' in dml.metrics
    _, base, data_key, make_kwargs = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        np.random.seed(7)
        local = base(DATA[data_key], n_folds=2, n_rep=1, **make_kwargs()).fit()
        spy = SpyExecutor()
        np.random.seed(7)
        remote = SERVERLESS[base](DATA[data_key], n_folds=2, n_rep=1, executor=spy, **make_kwargs())
        remote.fit(external_predictions=_external(local))
    spy.shutdown()
    assert spy.submitted == 0
    assert remote.metrics.loc["requests", "value"] == 0 and remote.metrics.loc["estimated cost (USD)", "value"] == 0
    assert np.array_equal(remote.coef, local.coef) and np.array_equal(remote.se, local.se)


IV_TYPE = {  # IV-type second stages: (doubleml class, data key, learners), the nuisances that can be external
    "PLR": (doubleml.DoubleMLPLR, "plr", lambda: dict(ml_l=reg(1), ml_m=reg(2), ml_g=reg(3), score="IV-type")),
    "PLPR": (doubleml.DoubleMLPLPR, "plpr", lambda: dict(ml_l=reg(1), ml_m=reg(2), ml_g=reg(3), score="IV-type")),
    "PLIV": (doubleml.DoubleMLPLIV, "pliv",
             lambda: dict(ml_l=reg(1), ml_m=reg(2), ml_r=reg(3), ml_g=reg(4), score="IV-type")),
}
IV_MIXES = [("PLR", ("ml_m",)), ("PLR", ("ml_l",)), ("PLR", ("ml_l", "ml_m")), ("PLR", ("ml_g",)),
            ("PLPR", ("ml_m",)), ("PLPR", ("ml_l", "ml_m")), ("PLPR", ("ml_g", "ml_m")),
            ("PLIV", ("ml_r",)), ("PLIV", ("ml_l", "ml_m", "ml_r")), ("PLIV", ("ml_g",))]


@pytest.mark.parametrize("model,given", IV_MIXES, ids=[f"{m}-{'+'.join(g)}" for m, g in IV_MIXES])
def test_iv_type_with_some_nuisances_external(model, given, executor):
    # the second stage takes the user's first-stage predictions (it raised KeyError: 'ml_m'); with
    # all of them given it still runs; with ml_g given, PLR/PLPR skip ml_l as doubleml does
    base, data_key, make_kwargs = IV_TYPE[model]
    np.random.seed(7)
    source = base(DATA[data_key], n_folds=2, n_rep=2, **make_kwargs()).fit()
    external = {source._dml_data.d_cols[0]: {name: source.predictions[name][:, :, 0] for name in given}}
    np.random.seed(8)
    local = base(DATA[data_key], n_folds=2, n_rep=2, **make_kwargs()).fit(external_predictions=external)
    np.random.seed(8)
    remote = SERVERLESS[base](DATA[data_key], n_folds=2, n_rep=2, executor=executor, granularity="rep",
                              **make_kwargs()).fit(external_predictions=external)
    assert np.array_equal(remote.coef, local.coef) and np.array_equal(remote.se, local.se)
    fitted = set(remote.task_metrics["nuisance"])
    assert not fitted & set(given)
    if "ml_g" not in given:
        assert "ml_g" in fitted
    elif model != "PLIV":  # doubleml's PLIV fits ml_l even then
        assert "ml_l" not in fitted


def test_iv_type_with_external_g_never_touches_a_placeholder_l(executor):
    # doubleml's tests pass DMLDummyRegressor (which raises on fit) for learners they give predictions of
    from doubleml.utils import DMLDummyRegressor

    np.random.seed(7)
    source = doubleml.DoubleMLPLR(DATA["plr"], reg(1), reg(2), reg(3), n_folds=2, score="IV-type").fit()
    np.random.seed(8)
    remote = dml.DoubleMLPLRServerless(DATA["plr"], DMLDummyRegressor(), reg(2), reg(3), n_folds=2,
                                       score="IV-type", executor=executor)
    remote.fit(external_predictions={"d": {"ml_g": source.predictions["ml_g"][:, :, 0]}})
    assert set(remote.task_metrics["nuisance"]) == {"ml_m"} and np.isfinite(remote.coef).all()


def test_auto_granularity_with_a_rare_class(executor):
    # 6 treated of 1,000: the 200-row probe of the propensity fit sees one class and used to crash
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    x = rng.normal(size=(1000, 3))
    d = np.zeros(1000)
    d[rng.choice(1000, 6, replace=False)] = 1
    data = doubleml.DoubleMLData.from_arrays(x, x[:, 0] + d + rng.normal(size=1000), d)
    np.random.seed(1)
    local = doubleml.DoubleMLIRM(data, LinearRegression(), LogisticRegression(), n_folds=2).fit()
    np.random.seed(1)
    remote = dml.DoubleMLIRMServerless(data, LinearRegression(), LogisticRegression(), n_folds=2,
                                       executor=executor).fit()
    assert np.array_equal(remote.coef, local.coef) and np.array_equal(remote.se, local.se)


def test_probe_failure_leaves_the_nuisance_out():
    from dml.crossfit import estimate_fit_seconds
    from dml.plans import Nuisance
    from sklearn.linear_model import LogisticRegression

    x = np.arange(1000.0).reshape(-1, 1)
    one_class = Nuisance("ml_m", "ml_m", "predict_proba", x, np.zeros(1000), None)
    folds = [[(np.arange(500), np.arange(500, 1000))]]
    assert estimate_fit_seconds([one_class], {"ml_m": LogisticRegression()}, folds, 1) is None


def lasso_with_nan_pred() -> Lasso:
    """doubleml's own test learner (doubleml/tests/test_exceptions.py): one prediction is NaN.

    Defined in a function: cloudpickle sends such a class by value (workers cannot import this test module).
    """
    class LassoWithNanPred(Lasso):
        def predict(self, X):
            preds = super().predict(X)
            preds[np.random.randint(0, len(preds), 1)] = np.nan
            return preds
    return LassoWithNanPred()


def column_predictions() -> LinearRegression:
    """A learner whose predictions are an (n, 1) column."""
    class ColumnPredictions(LinearRegression):
        def predict(self, X):
            return super().predict(X).reshape(-1, 1)
    return ColumnPredictions()


@pytest.mark.parametrize("position", ["ml_l", "ml_m"])
def test_non_finite_predictions_raise_doubleml_error(position, executor):
    learners = {"ml_l": Lasso(), "ml_m": Lasso(), position: lasso_with_nan_pred()}
    message = rf"Predictions from learner LassoWithNanPred\(\) for {position} are not finite\."
    with pytest.raises(ValueError, match=message):
        doubleml.DoubleMLPLR(DATA["plr"], **learners, n_folds=2).fit()
    with pytest.raises(ValueError, match=message):
        dml.DoubleMLPLRServerless(DATA["plr"], **learners, n_folds=2, executor=executor).fit()


def test_label_predictions_for_a_binary_outcome_raise_doubleml_error(executor):
    # under ATTE doubleml checks ml_g0 for 0/1 labels only when it fitted ml_g0 itself
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsRegressor

    df = DATA["irm"].data.assign(y=lambda f: (f["y"] > 0).astype(float))
    data = doubleml.DoubleMLData(df, "y", "d")
    message = "For the binary variable y, predictions obtained with the ml_g learner"
    for cls, extra in ((doubleml.DoubleMLIRM, {}), (dml.DoubleMLIRMServerless, {"executor": executor})):
        with pytest.raises(ValueError, match=message):
            cls(data, KNeighborsRegressor(1), LogisticRegression(), n_folds=2, score="ATTE", **extra).fit()


def test_predictions_of_the_wrong_shape_raise_a_clear_error(executor):
    model = dml.DoubleMLPLRServerless(DATA["plr"], column_predictions(), LinearRegression(), n_folds=2,
                                      executor=executor)
    with pytest.raises(ValueError, match=r"ColumnPredictions\(\) for ml_l have shape \(100, 1\).*expected \(100,\)"):
        model.fit()


def test_store_models_and_copies(executor):
    np.random.seed(7)
    model = dml.DoubleMLPLRServerless(DATA["plr"], reg(1), reg(2), n_folds=N_FOLDS, n_rep=N_REP, executor=executor)
    model.fit(store_models=True)
    fitted = model.models["ml_l"]["d"]
    assert len(fitted) == N_REP and all(len(per_rep) == N_FOLDS for per_rep in fitted)
    assert hasattr(fitted[0][0], "estimators_")
    # a copy shares the executor (it owns processes) instead of copying it
    twin = copy.deepcopy(model)
    assert twin.executor is executor and np.array_equal(twin.coef, model.coef)
    benchmark = model.sensitivity_benchmark(benchmarking_set=["X1"])  # refits a copy remotely
    assert np.isfinite(benchmark.to_numpy(dtype=float)).all()


def test_any_concurrent_futures_executor_and_default_executor():
    np.random.seed(7)
    local = doubleml.DoubleMLIRM(DATA["irm"], reg(1), clf(2), n_folds=N_FOLDS, n_rep=1).fit()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # no put(), no metrics(): data travel inline
        np.random.seed(7)
        remote = dml.DoubleMLIRMServerless(DATA["irm"], reg(1), clf(2), n_folds=N_FOLDS, n_rep=1, executor=pool).fit()
    assert np.array_equal(remote.coef, local.coef) and np.array_equal(remote.se, local.se)
    np.random.seed(7)
    embedded = dml.DoubleMLIRMServerless(DATA["irm"], reg(1), clf(2), n_folds=N_FOLDS, n_rep=1).fit()  # executor=None
    assert np.array_equal(embedded.coef, local.coef)


def test_remote_tasks_need_no_doubleml():
    # cross-fitting and tuning tasks run on the default Lambda layer (scikit-learn, no doubleml)
    import subprocess
    import sys

    code = "import sys, dml.tasks; assert 'doubleml' not in sys.modules, 'dml.tasks imported doubleml'"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- bad input: doubleml's own errors (or ours, as clear), before any invocation ------------------


class NoFit(BaseEstimator):
    def predict(self, x):
        return np.zeros(len(x))


def test_bad_input_fails_before_any_invocation():
    spy = SpyExecutor()
    with pytest.warns(UserWarning, match="no classifier"), pytest.raises(TypeError, match="predict_proba"):
        dml.DoubleMLIRMServerless(DATA["irm"], reg(1), reg(2), executor=spy)  # ml_m must be a classifier
    with pytest.raises(ValueError, match="Invalid covariates x_cols.*no data column"):
        dml.DoubleMLPLRServerless(doubleml.DoubleMLData(DATA["plr"].data, "y", "d", x_cols=["X1", "nope"]),
                                  reg(1), reg(2), executor=spy)
    locked = LinearRegression()
    locked.lock = threading.Lock()
    with pytest.raises(TypeError, match=r"ml_m.*cannot be pickled.*lock"):
        dml.DoubleMLPLRServerless(DATA["plr"], reg(1), locked, executor=spy)
    with pytest.raises(TypeError, match=r"ml_l.*has no method \.fit\(\)"):
        dml.DoubleMLPLRServerless(DATA["plr"], NoFit(), reg(2), executor=spy)
    model = dml.DoubleMLPLRServerless(DATA["plr"], reg(1), reg(2), executor=spy)
    with pytest.raises(ValueError, match="Invalid external_predictions"):
        model.fit(external_predictions={"d": {"ml_x": np.zeros((200, 1))}})
    with pytest.raises(ValueError, match="granularity"):
        dml.DoubleMLPLRServerless(DATA["plr"], reg(1), reg(2), executor=spy, granularity="per-tree")
    assert spy.submitted == 0
    spy.shutdown()


# -- data ---------------------------------------------------------------------------------------


def test_load_bonus_matches_fetch_bonus_preprocessing(monkeypatch):
    import importlib
    from importlib import resources

    # the module, not the function of the same name that doubleml.datasets exports
    fetch_bonus_module = importlib.import_module("doubleml.datasets.fetch_bonus")

    read_csv = pd.read_csv
    shipped = resources.files("dml").joinpath("data", "penn_jae.dat.gz")

    def offline_read_csv(url, **kwargs):  # fetch_bonus's download, answered by the shipped copy
        with shipped.open("rb") as f:
            return read_csv(f, compression="gzip", **kwargs)

    monkeypatch.setattr(fetch_bonus_module.pd, "read_csv", offline_read_csv)
    expected = fetch_bonus_module.fetch_bonus(return_type="DataFrame")
    expected_poly = fetch_bonus_module.fetch_bonus(return_type="DataFrame", polynomial_features=True)
    monkeypatch.undo()
    pd.testing.assert_frame_equal(dml.load_bonus(return_type="DataFrame"), expected)
    pd.testing.assert_frame_equal(dml.load_bonus(return_type="DataFrame", polynomial_features=True), expected_poly)
    data = dml.load_bonus()
    assert (data.n_obs, data.y_col, data.d_cols, len(data.x_cols)) == (5099, "inuidur1", ["tg"], 15)


def test_demo_runs_the_case_study(capsys, executor):
    from dml.demo import main

    model = main(["--n-rep", "1", "--trees", "10"], executor=executor)  # the real settings take a minute
    out = capsys.readouterr().out
    assert "5099 rows" in out and "tg" in out and "estimated cost (USD)" in out
    assert model.n_rep == 1 and np.isfinite(model.coef).all()


@pytest.fixture
def moto_s3(s3_bucket, monkeypatch):
    """A bucket on the project's moto server (tests/conftest.py), and lambdamap pointed at it."""
    endpoint, bucket = s3_bucket
    monkeypatch.setenv("LAMBDAMAP_S3_ENDPOINT_URL", endpoint)
    return endpoint, bucket


@pytest.mark.parametrize("file_key", ["plr/data.csv", "plr/data.pkl"])
def test_doubleml_data_s3_round_trip(moto_s3, file_key):
    endpoint, bucket = moto_s3
    df = DATA["plr"].data
    data = dml.DoubleMLDataS3(bucket, file_key, df, "y", "d", endpoint_url=endpoint)
    assert data.store_and_upload_to_s3() == f"s3://{bucket}/{file_key}"
    back = dml.DoubleMLDataS3.from_s3(bucket, file_key, "y", "d")  # endpoint from LAMBDAMAP_S3_ENDPOINT_URL
    assert (back.bucket, back.file_key) == (bucket, file_key)
    assert np.array_equal(back.x, data.x) and np.array_equal(back.y, data.y) and np.array_equal(back.d, data.d)
    with pytest.raises(ValueError, match="nope is no data column"):
        dml.DoubleMLDataS3(bucket, file_key, df, "nope", "d")
    with pytest.raises(ValueError, match="must end in"):
        dml.DoubleMLDataS3(bucket, "plr/data.xlsx", df, "y", "d")


def test_fit_with_s3_data_and_s3_store(moto_s3):
    _, bucket = moto_s3
    dml.DoubleMLDataS3(bucket, "plr/fit.csv", DATA["plr"].data, "y", "d").store_and_upload_to_s3()
    data = dml.DoubleMLDataS3.from_s3(bucket, "plr/fit.csv", "y", "d")
    np.random.seed(7)
    local = doubleml.DoubleMLPLR(DATA["plr"], reg(1), reg(2), n_folds=N_FOLDS, n_rep=1).fit()
    with Executor(storage=f"s3://{bucket}/lambdamap", workers=2) as s3_executor:  # the store is moto's S3
        np.random.seed(7)
        remote = dml.DoubleMLPLRServerless(data, reg(1), reg(2), n_folds=N_FOLDS, n_rep=1,
                                           executor=s3_executor, granularity="rep").fit()
    assert np.array_equal(remote.coef, local.coef) and np.array_equal(remote.se, local.se)
    assert np.array_equal(remote.predictions["ml_l"], local.predictions["ml_l"])


# -- composites: every sub-model's fits in one wave ------------------------------------------------


def _count_waves(monkeypatch) -> list:
    """Patches CrossFitRun.execute to record the sub-model count of each wave of tasks."""
    from dml.crossfit import CrossFitRun

    waves, execute = [], CrossFitRun.execute

    def counting(self, executor, granularity="auto", **options):
        waves.append(len({p.model_index for p in self.parts}))
        return execute(self, executor, granularity, **options)
    monkeypatch.setattr(CrossFitRun, "execute", counting)
    return waves


def assert_frameworks_equal(local, remote):
    assert np.array_equal(remote.coef, local.coef) and np.array_equal(remote.se, local.se)
    assert np.array_equal(remote.all_coef, local.all_coef) and np.array_equal(remote.all_se, local.all_se)
    pd.testing.assert_frame_equal(remote.summary, local.summary)
    pd.testing.assert_frame_equal(remote.confint(), local.confint())


def test_apos_one_wave_equal_to_doubleml(executor, monkeypatch):
    waves = _count_waves(monkeypatch)
    kwargs = dict(ml_g=reg(1), ml_m=clf(2), treatment_levels=[0, 1, 2], n_folds=2, n_rep=2)
    np.random.seed(7)
    local = doubleml.DoubleMLAPOS(DATA["apo"], **kwargs).fit()
    np.random.seed(7)
    remote = dml.DoubleMLAPOSServerless(DATA["apo"], executor=executor, granularity="rep", **kwargs).fit()
    assert waves == [3]  # one wave, three sub-models
    assert_frameworks_equal(local, remote)
    assert all(isinstance(m, dml.DoubleMLAPOServerless) for m in remote.modellist)
    tasks = remote.task_metrics
    assert len(tasks) == 3 * 2 * 3 and sorted(tasks["model"].unique()) == [0, 1, 2]  # levels x reps x nuisances
    assert remote.metrics.loc["requests", "value"] == len(tasks)
    contrast_local, contrast_remote = local.causal_contrast(reference_levels=0), remote.causal_contrast(reference_levels=0)
    pd.testing.assert_frame_equal(contrast_remote.summary, contrast_local.summary)
    for model in (local, remote):
        model.sensitivity_analysis()
    pd.testing.assert_frame_equal(pd.DataFrame(remote.sensitivity_params["theta"]),
                                  pd.DataFrame(local.sensitivity_params["theta"]))
    # external propensities (doubleml's APOS wants every level's): no ml_m task, the estimates stay doubleml's
    external = {lvl: {"ml_m": local.modellist[i].predictions["ml_m"][:, :, 0]} for i, lvl in enumerate([0, 1, 2])}
    np.random.seed(7)
    local_ext = doubleml.DoubleMLAPOS(DATA["apo"], **kwargs).fit(external_predictions=external)
    np.random.seed(7)
    remote_ext = dml.DoubleMLAPOSServerless(DATA["apo"], executor=executor, **kwargs).fit(external_predictions=external)
    assert_frameworks_equal(local_ext, remote_ext)
    assert set(remote_ext.task_metrics["nuisance"]) == {"ml_g_d_lvl0", "ml_g_d_lvl1"}


def _did_multi_data():
    from doubleml.did.datasets import make_did_CS2021

    np.random.seed(3)
    df = make_did_CS2021(n_obs=240, dgp_type=1, time_type="float")
    return doubleml.DoubleMLPanelData(df, y_col="y", d_cols="d", id_col="id", t_col="t", x_cols=["Z1", "Z2", "Z3", "Z4"])


@pytest.mark.parametrize("panel", [True, False], ids=["panel", "repeated-cross-sections"])
def test_did_multi_one_wave_equal_to_doubleml(panel, executor, monkeypatch):
    waves = _count_waves(monkeypatch)
    data = _did_multi_data()
    kwargs = dict(ml_g=LinearRegression(), ml_m=clf(2), gt_combinations="standard", n_folds=2, panel=panel)
    np.random.seed(7)
    local = doubleml.did.DoubleMLDIDMulti(data, **kwargs).fit()
    np.random.seed(7)
    remote = dml.DoubleMLDIDMultiServerless(data, executor=executor, **kwargs).fit()
    assert waves == [local.n_gt_atts] and local.n_gt_atts >= 6
    assert_frameworks_equal(local, remote)
    sub = dml.DoubleMLDIDBinaryServerless if panel else dml.DoubleMLDIDCSBinaryServerless
    assert all(type(m) is sub for m in remote.modellist)
    pd.testing.assert_frame_equal(remote.aggregate("group").overall_summary, local.aggregate("group").overall_summary)
    for model in (local, remote):
        model.sensitivity_analysis()
    assert remote.sensitivity_summary == local.sensitivity_summary


def test_qte_sub_models_fitted_remotely_equal_to_doubleml(executor):
    from sklearn.ensemble import RandomForestClassifier

    kwargs = dict(ml_g=RandomForestClassifier(n_estimators=5, max_depth=3, random_state=1), ml_m=clf(2),
                  quantiles=[0.25, 0.75], n_folds=2)
    np.random.seed(7)
    local = doubleml.DoubleMLQTE(DATA["irm"], **kwargs).fit()
    np.random.seed(7)
    remote = dml.DoubleMLQTEServerless(DATA["irm"], executor=executor, **kwargs).fit()
    assert_frameworks_equal(local, remote)
    assert len(remote.task_metrics) == 2 * 2  # quantiles x treatment levels
    assert remote.modellist_0[0]._dml_data is DATA["irm"]  # sub-models came back with the client's data


# -- tuning, sensitivity benchmarks, randomness, versions ------------------------------------------


TUNE_CASES = [("grid_search", False, "partialling out"), ("randomized_search", True, "partialling out"),
              ("grid_search", True, "IV-type")]


@pytest.mark.parametrize("search_mode,tune_on_folds,score", TUNE_CASES,
                         ids=["grid", "randomized-on-folds", "grid-on-folds-IV-type"])
def test_tune_fans_out_and_equals_doubleml(search_mode, tune_on_folds, score, executor):
    grid = {"alpha": [0.01, 0.05, 0.1, 0.5]}
    learners = [Lasso(random_state=0) for _ in range(3 if score == "IV-type" else 2)]
    grids = dict(zip(["ml_l", "ml_m", "ml_g"], [grid] * len(learners)))
    models, results = [], []
    for cls, extra in ((doubleml.DoubleMLPLR, {}), (dml.DoubleMLPLRServerless, {"executor": executor})):
        np.random.seed(3)
        model = cls(DATA["plr"], *learners, n_folds=2, score=score, **extra)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # doubleml deprecates tune() in favour of tune_ml_models
            results.append(model.tune(grids, tune_on_folds=tune_on_folds, search_mode=search_mode, n_folds_tune=3,
                                      n_iter_randomized_search=3, return_tune_res=True))
        models.append(model.fit())
        models[-1].after = np.random.rand()  # the global random state advanced alike
    local, remote = models
    assert remote.params == local.params
    assert np.array_equal(remote.coef, local.coef) and local.after == remote.after
    first = (lambda r: r[0][0]) if tune_on_folds else (lambda r: r[0])
    search_local, search_remote = first(results[0])["tune_res"]["m_tune"][0], first(results[1])["tune_res"]["m_tune"][0]
    for key in ("mean_test_score", "std_test_score", "rank_test_score", "split0_test_score"):
        assert np.array_equal(search_remote.cv_results_[key], search_local.cv_results_[key]), key
    assert search_remote.best_params_ == search_local.best_params_
    # learners x folds x (candidates + the refit of the best)
    n_candidates = 3 if search_mode == "randomized_search" else 4
    assert remote.tuning_requests == len(learners) * (2 if tune_on_folds else 1) * (n_candidates + 1)


def test_tune_warns_about_learners_that_draw_from_the_global_state(executor):
    model = dml.DoubleMLPLRServerless(DATA["plr"], Lasso(), Lasso(random_state=0), n_folds=2, executor=executor)
    with pytest.warns(UserWarning, match=r"Learner ml_l \(Lasso\) draws from numpy's global random state"):
        model.tune({"ml_l": {"alpha": [0.1, 1.0]}, "ml_m": {"alpha": [0.1, 1.0]}})


def test_sensitivity_benchmark_refits_through_the_executor():
    spy = SpyExecutor()
    np.random.seed(7)
    local = doubleml.DoubleMLPLR(DATA["plr"], reg(1), reg(2), n_folds=2).fit()
    np.random.seed(7)
    remote = dml.DoubleMLPLRServerless(DATA["plr"], reg(1), reg(2), n_folds=2, executor=spy, granularity="fold").fit()
    assert spy.submitted == 2 * 2
    pd.testing.assert_frame_equal(remote.sensitivity_benchmark(["X1", "X2"]), local.sensitivity_benchmark(["X1", "X2"]))
    assert spy.submitted == 2 * 2 * 2  # the short model's fits went through the same executor
    spy.shutdown()


def test_composite_sensitivity_benchmark_is_one_more_wave(executor, monkeypatch):
    waves = _count_waves(monkeypatch)
    kwargs = dict(ml_g=reg(1), ml_m=clf(2), treatment_levels=[0, 1], n_folds=2)
    np.random.seed(7)
    local = doubleml.DoubleMLAPOS(DATA["apo"], **kwargs).fit()
    np.random.seed(7)
    remote = dml.DoubleMLAPOSServerless(DATA["apo"], executor=executor, **kwargs).fit()
    x_cols = DATA["apo"].x_cols[:2]
    pd.testing.assert_frame_equal(remote.sensitivity_benchmark(x_cols), local.sensitivity_benchmark(x_cols))
    assert waves == [2, 2]


def test_unseeded_randomness_warns_where_it_changes_fits(executor):
    from sklearn.linear_model import LassoCV, RidgeCV
    from sklearn.model_selection import GridSearchCV, KFold, ShuffleSplit
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    noisy = {
        "random_state": RandomForestRegressor(n_estimators=5),
        r"cv = KFold\(n_splits=3, random_state=None, shuffle=True\) shuffles": RidgeCV(cv=KFold(3, shuffle=True)),
        r"cv = KFold\(.*shuffles": GridSearchCV(Lasso(), {"alpha": [0.1, 1.0]}, cv=KFold(3, shuffle=True)),
        r"cv = ShuffleSplit": LassoCV(cv=ShuffleSplit(3)),
        r"randomforestregressor__random_state=None": make_pipeline(StandardScaler(), RandomForestRegressor(5)),
        r"random_state=RandomState": RandomForestRegressor(5, random_state=np.random.RandomState(0)),
    }
    for pattern, learner in noisy.items():
        with pytest.warns(UserWarning, match=pattern):
            dml.DoubleMLPLRServerless(DATA["plr"], learner, reg(2), executor=executor)
    quiet = [LinearRegression(), reg(1), make_pipeline(StandardScaler(), Lasso()), Lasso(selection="cyclic"),
             RidgeCV(cv=KFold(3)), RidgeCV(cv=KFold(3, shuffle=True, random_state=1)), LassoCV(cv=3),
             GridSearchCV(Lasso(), {"alpha": [0.1, 1.0]}, cv=KFold(3, shuffle=True, random_state=0))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # deterministic learners and integer seeds: no warning
        for learner in quiet:
            dml.DoubleMLPLRServerless(DATA["plr"], learner, reg(2), executor=executor)


def test_unsupported_doubleml_version_is_refused(monkeypatch):
    from dml.compat import UnsupportedDoubleMLVersion, check_doubleml_version

    check_doubleml_version()  # the installed one is supported
    monkeypatch.setattr(doubleml, "__version__", "0.12.0")
    with pytest.raises(UnsupportedDoubleMLVersion, match=r"doubleml >=0\.11,<0\.12.*found doubleml 0\.12\.0.*DML_ALLOW"):
        dml.DoubleMLPLRServerless(DATA["plr"], reg(1), reg(2))
    monkeypatch.setenv("DML_ALLOW_UNTESTED_DOUBLEML", "1")
    with pytest.warns(UserWarning, match="found doubleml 0.12.0"):
        dml.DoubleMLPLRServerless(DATA["plr"], reg(1), reg(2))
