"""What doubleml fits, model by model: the nuisance plan of one treatment variable.

Every supported doubleml model estimates its nuisance functions by plain cross-fitting: for each
repetition and fold, clone a learner, fit it on the fold's training rows (sometimes only those of a
subgroup, e.g. the untreated), predict the fold's test rows. A :class:`Nuisance` describes one such
function exactly as the model's own ``_nuisance_est`` does it (same feature matrix, same target, same
subgroup, same predict method), so that predictions computed elsewhere and handed back through
``fit(external_predictions=...)`` are bit for bit those of a local fit.

Each plan function reads the model's state for the current treatment (``model._i_treat``; the caller
has run ``model._dml_data.set_x_d`` as doubleml's ``fit`` does) and returns the nuisances in the order
doubleml fits them. The names are doubleml's ``params_names`` (``ml_l``, ``ml_g0``, ``ml_m_Z1``...).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from doubleml.utils._checks import _check_binary_predictions, _check_finite_predictions
from sklearn.utils import check_X_y

#: A second-stage target: from the first-stage predictions of one repetition to the fit target.
SecondStage = Callable[[dict], np.ndarray]


@dataclass
class Nuisance:
    """One nuisance function of one treatment variable, cross-fitted with one learner."""

    name: str                  # doubleml's params name, e.g. "ml_g0"
    learner: str               # key in model.learner, e.g. "ml_g"
    method: str                # "predict" or "predict_proba" (column 1)
    x: np.ndarray              # features; rows are what the sample splits index
    y: np.ndarray | None       # fit target; None when `second_stage` computes it per repetition
    target: np.ndarray | None  # what doubleml records as target (NaN outside the subgroup)
    #: train only on these rows (a boolean mask, doubleml's _get_cond_smpls); None: all training rows
    train_rows: np.ndarray | None = None
    #: IV-type scores: the target as a function of the repetition's first-stage predictions
    second_stage: SecondStage | None = None
    #: DID on panel data: position of each row in the model's n_obs-long vectors
    positions: np.ndarray | None = None
    #: what doubleml does to its own predictions of this nuisance before using them (PLPR cre_general)
    adjust: Callable[[np.ndarray], np.ndarray] | None = None
    #: the checks doubleml runs on its own predictions of this nuisance but not on external ones
    #: (see :func:`check_predictions`); checks doubleml runs on both it runs on ours itself
    checks: tuple[str, ...] = ("finite",)
    #: nuisances whose external predictions make doubleml skip this one (PLR's ml_l under IV-type)
    skipped_with: tuple[str, ...] = ()


def check_predictions(model, nuis: Nuisance, preds: np.ndarray, smpls: list) -> None:
    """Run on remote predictions the checks doubleml runs on its own, with doubleml's messages.

    ``preds`` are one repetition's predictions of ``nuis`` (rows of ``nuis.x``), ``smpls`` that
    repetition's folds. ``"finite"``: ``ValueError: Predictions from learner ... for ml_l are not
    finite.``; ``"binary_outcome"``: probabilities, not labels, for a binary outcome.
    """
    learner = model._learner[nuis.learner]
    for check in nuis.checks:
        if check == "finite":
            _check_finite_predictions(preds, learner, nuis.learner, smpls)
        elif check == "binary_outcome":
            _check_binary_predictions(preds, learner, nuis.learner, model._dml_data.y_col)
        else:  # pragma: no cover - a plan names a check that does not exist
            raise ValueError(f"unknown prediction check {check!r}")


def _cond(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values`` as floats with NaN outside ``rows``: doubleml's conditional nuisance targets."""
    out = values.astype(float)
    out[~rows] = np.nan
    return out


def _xy(model):
    """Features and outcome after the same ``check_X_y`` as doubleml."""
    return check_X_y(model._dml_data.x, model._dml_data.y, ensure_all_finite=False)


def _plr_g_target(y, d) -> SecondStage:
    """The IV-type ``ml_g`` target ``y - theta_initial * d`` of PLR/PLPR (doubleml's own formula)."""
    def target(preds: dict) -> np.ndarray:
        psi_a = -np.multiply(d - preds["ml_m"], d - preds["ml_m"])
        psi_b = np.multiply(d - preds["ml_m"], y - preds["ml_l"])
        theta_initial = -np.nanmean(psi_b) / np.nanmean(psi_a)
        return y - theta_initial * d
    return target


def plr(model) -> list[Nuisance]:
    """DoubleMLPLR: l(X)=E[Y|X], m(X)=E[D|X]; g for the IV-type score (after l and m)."""
    x, y = _xy(model)
    x, d = check_X_y(x, model._dml_data.d, ensure_all_finite=False)
    pm = model._predict_method
    # under the IV-type score doubleml needs ml_l only to compute ml_g's target
    skipped_with = ("ml_g",) if model.score == "IV-type" else ()
    plan = [Nuisance("ml_l", "ml_l", pm["ml_l"], x, y, y, skipped_with=skipped_with),
            Nuisance("ml_m", "ml_m", pm["ml_m"], x, d, d)]
    if "ml_g" in model._learner:
        plan.append(Nuisance("ml_g", "ml_g", pm["ml_g"], x, None, None, second_stage=_plr_g_target(y, d)))
    return plan


def plpr(model) -> list[Nuisance]:
    """DoubleMLPLPR: PLR on the transformed panel; CRE approaches change the features/predictions of m."""
    plan = plr(model)
    nuis_m = plan[1]
    if model._approach in ("cre_normal", "cre_general"):
        d_mean = model._d_mean[:, model._i_treat]
        if model._approach == "cre_normal":
            nuis_m.x = np.column_stack((nuis_m.x, d_mean))
        else:
            ids = model._dml_data.id_var

            def cre_general(m_hat: np.ndarray) -> np.ndarray:
                # doubleml adjusts its own m predictions like this, but not external ones: do it here
                df_m_hat = pd.DataFrame({"id": ids, "m_hat": m_hat})
                m_hat_mean = df_m_hat.groupby(["id"]).transform("mean")
                return (m_hat + d_mean - m_hat_mean["m_hat"]).to_numpy()
            nuis_m.adjust = cre_general
    return plan


def pliv(model) -> list[Nuisance]:
    """DoubleMLPLIV (partialX): l(X)=E[Y|X], m(X)=E[Z|X] per instrument, r(X)=E[D|X]; g for IV-type.

    doubleml checks these predictions for finiteness whether external or not: no checks here.
    """
    if not (model.partialX and not model.partialZ):
        raise NotImplementedError("Only DoubleMLPLIV with partialX (the default constructor) accepts "
                                  "external predictions in doubleml; partialZ/partialXZ are not supported.")
    x, y = _xy(model)
    x, d = check_X_y(x, model._dml_data.d, ensure_all_finite=False)
    pm = model._predict_method
    plan = [Nuisance("ml_l", "ml_l", pm["ml_l"], x, y, y, checks=())]
    z_all = model._dml_data.z
    if model._dml_data.n_instr == 1:
        x, z = check_X_y(x, np.ravel(z_all), ensure_all_finite=False)
        plan.append(Nuisance("ml_m", "ml_m", pm["ml_m"], x, z, z, checks=()))
    else:
        for i, z_col in enumerate(model._dml_data.z_cols):
            _, z_i = check_X_y(x, z_all[:, i], ensure_all_finite=False)
            plan.append(Nuisance("ml_m_" + z_col, "ml_m", pm["ml_m"], x, z_i, z_i, checks=()))
    plan.append(Nuisance("ml_r", "ml_r", pm["ml_r"], x, d, d, checks=()))
    if model._dml_data.n_instr == 1 and "ml_g" in model._learner:
        def target(preds: dict) -> np.ndarray:
            psi_a = -np.multiply(d - preds["ml_r"], z - preds["ml_m"])
            psi_b = np.multiply(z - preds["ml_m"], y - preds["ml_l"])
            theta_initial = -np.nanmean(psi_b) / np.nanmean(psi_a)
            return y - theta_initial * d
        plan.append(Nuisance("ml_g", "ml_g", pm["ml_g"], x, None, None, second_stage=target, checks=()))
    return plan


def irm(model) -> list[Nuisance]:
    """DoubleMLIRM: g0/g1(X)=E[Y|X,D=0/1] on the untreated/treated, m(X)=P(D=1|X)."""
    x, y = _xy(model)
    x, d = check_X_y(x, model._dml_data.d, ensure_all_finite=False)
    pm = model._predict_method
    # doubleml checks ml_g1 for binary predictions whether external or not, ml_g0 only if its own
    g0_checks = ("finite", "binary_outcome") if model._dml_data.binary_outcome else ("finite",)
    return [Nuisance("ml_g0", "ml_g", pm["ml_g"], x, y, _cond(y, d == 0), train_rows=d == 0, checks=g0_checks),
            Nuisance("ml_g1", "ml_g", pm["ml_g"], x, y, _cond(y, d == 1), train_rows=d == 1),
            Nuisance("ml_m", "ml_m", pm["ml_m"], x, d, d)]


def iivm(model) -> list[Nuisance]:
    """DoubleMLIIVM: g0/g1 and r0/r1 on the Z=0/Z=1 subgroups, m(X)=P(Z=1|X)."""
    x, y = _xy(model)
    x, z = check_X_y(x, np.ravel(model._dml_data.z), ensure_all_finite=False)
    x, d = check_X_y(x, model._dml_data.d, ensure_all_finite=False)
    pm = model._predict_method
    plan = [Nuisance("ml_g0", "ml_g", pm["ml_g"], x, y, _cond(y, z == 0), train_rows=z == 0),
            Nuisance("ml_g1", "ml_g", pm["ml_g"], x, y, _cond(y, z == 1), train_rows=z == 1),
            Nuisance("ml_m", "ml_m", pm["ml_m"], x, z, z)]
    # without always-/never-takers doubleml fixes r0=0 / r1=1 and fits nothing
    if model.subgroups["always_takers"]:
        plan.append(Nuisance("ml_r0", "ml_r", pm["ml_r"], x, d, _cond(d, z == 0), train_rows=z == 0))
    if model.subgroups["never_takers"]:
        plan.append(Nuisance("ml_r1", "ml_r", pm["ml_r"], x, d, _cond(d, z == 1), train_rows=z == 1))
    return plan


def apo(model) -> list[Nuisance]:
    """DoubleMLAPO: g on the treated level (features X) and on the others (features D, X), m(X)=P(D=level|X)."""
    x, y = _xy(model)
    x, d = check_X_y(x, model._dml_data.d, ensure_all_finite=False)
    dx = np.column_stack((d, x))
    treated = model.treated
    pm = model._predict_method
    return [Nuisance("ml_g_d_lvl0", "ml_g", pm["ml_g"], dx, y, _cond(y, treated == 0), train_rows=treated == 0),
            Nuisance("ml_g_d_lvl1", "ml_g", pm["ml_g"], x, y, _cond(y, treated == 1), train_rows=treated == 1),
            Nuisance("ml_m", "ml_m", pm["ml_m"], x, treated, treated)]


def _did(model, x, y, d, t=None, positions=None, g_checks=("finite",)) -> list[Nuisance]:
    """The DID family: outcome regressions per (D[, T]) cell, propensity m(X) for the observational score.

    doubleml checks m's predictions whether external or not; g's only if its own (``g_checks``).
    """
    pm = model._predict_method
    if t is None:  # panel: cells D=0, D=1
        cells = {f"ml_g{i}": d == i for i in (0, 1)}
    else:          # repeated cross-sections: cells (D, T)
        cells = {f"ml_g_d{i}_t{j}": (d == i) & (t == j) for i in (0, 1) for j in (0, 1)}
    plan = [Nuisance(name, "ml_g", pm["ml_g"], x, y, _cond(y, rows), train_rows=rows, positions=positions,
                     checks=g_checks) for name, rows in cells.items()]
    if model.score == "observational":
        plan.append(Nuisance("ml_m", "ml_m", pm["ml_m"], x, d, d, positions=positions, checks=()))
    return plan


def did(model) -> list[Nuisance]:
    """DoubleMLDID (panel, outcome in differences)."""
    x, y = _xy(model)
    x, d = check_X_y(x, model._dml_data.d, ensure_all_finite=False)
    return _did(model, x, y, d)


def didcs(model) -> list[Nuisance]:
    """DoubleMLDIDCS (repeated cross-sections, time indicator t)."""
    x, y = _xy(model)
    x, d = check_X_y(x, model._dml_data.d, ensure_all_finite=False)
    x, t = check_X_y(x, model._dml_data.t, ensure_all_finite=False)
    return _did(model, x, y, d, t, g_checks=())  # doubleml's DIDCS checks none of its g predictions


def did_binary(model) -> list[Nuisance]:
    """DoubleMLDIDBinary: the DID plan on the model's (g, t_pre, t_eval) subset of units."""
    x, y = check_X_y(model._x_data_subset, model._y_data_subset, ensure_all_finite=False)
    x, d = check_X_y(x, model._g_data_subset, ensure_all_finite=False)
    return _did(model, x, y, d, positions=model.id_positions)


def did_cs_binary(model) -> list[Nuisance]:
    """DoubleMLDIDCSBinary: the DIDCS plan on the model's subset of observations."""
    x, y = check_X_y(model._x_data_subset, model._y_data_subset, ensure_all_finite=False)
    _, d = check_X_y(x, model._g_data_subset, ensure_all_finite=False)
    _, t = check_X_y(x, model._t_data_subset, ensure_all_finite=False)
    return _did(model, x, y, d, t, positions=model.id_positions)
