"""The remote function: fit a learner on the training rows of some folds and predict their test rows.

This is what runs in a worker (a local process or an AWS Lambda invocation). It does exactly what
doubleml's ``_dml_cv_predict`` does for one fold (clone, optional per-fold parameters, label-encode
the target for ``predict_proba``, fit on ``x[train]``, predict ``x[test]``), so the predictions are
bit for bit those of a local fit. Its big inputs arrive as :class:`lambdamap.ObjectRef` arguments that
the worker resolves and caches, so a warm worker decodes the data of a model once. It needs only
numpy, scikit-learn and lambdamap: it runs on the default Lambda runtime.
"""
from __future__ import annotations

import time

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import cross_validate
from sklearn.preprocessing import LabelEncoder

from lambdamap.objects import ObjectRef


def train_test(folds: list, fold: int, train_rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The fold's (train, test) indices; training restricted to ``train_rows`` like doubleml's _get_cond_smpls."""
    train, test = folds[fold]
    if train_rows is not None:
        train = np.intersect1d(np.where(train_rows)[0], train)
    return train, test


def _value(obj):
    """A nested reference's object (top-level references arrive resolved)."""
    return obj.get() if isinstance(obj, ObjectRef) else obj


def fit_predict(
    nuisance: dict,
    folds: list,
    learner,
    name: str,
    units: list[tuple[int, dict | None]],
    y: np.ndarray | None = None,
    n_jobs: int | None = 1,
    return_models: bool = False,
) -> dict:
    """Cross-fit nuisance ``name`` on the (fold, parameters) ``units`` of one repetition.

    ``nuisance`` holds the nuisance's ``x``, ``y``, ``train_rows`` (arrays or references to them)
    and ``method`` (see :mod:`dml.plans`); ``folds`` is the repetition's list of (train, test) index
    arrays; ``y`` overrides the target (second-stage nuisances). ``n_jobs`` is set on learners that have such a
    parameter (None leaves it): the executor already runs fits in parallel, and n_jobs does not
    change a scikit-learn forest's result.

    Returns ``{"preds": [test-row predictions per unit], "models": [...] or None, "seconds": float}``.
    """
    start = time.perf_counter()
    x, method, train_rows = _value(nuisance["x"]), nuisance["method"], _value(nuisance["train_rows"])
    target = _value(nuisance["y"]) if y is None else y
    if method == "predict_proba":
        # doubleml (and cross_val_predict) encode class labels before splitting
        target = LabelEncoder().fit_transform(np.asarray(target))
    preds, models = [], []
    for fold, params in units:
        train, test = train_test(folds, fold, train_rows)
        estimator = clone(learner)
        if params is not None:
            estimator.set_params(**params)
        if n_jobs is not None and "n_jobs" in estimator.get_params(deep=False):
            estimator.set_params(n_jobs=n_jobs)
        estimator.fit(x[train, :], target[train])
        pred = getattr(estimator, method)(x[test, :])
        preds.append(pred[:, 1] if method == "predict_proba" else pred)
        if return_models:
            models.append(estimator)
    return {"preds": preds, "models": models if return_models else None,
            "seconds": time.perf_counter() - start}


def fit_model(model, data, fit_args: dict) -> dict:
    """Fit a whole doubleml model (a sub-model of a composite that takes no external predictions).

    ``model`` arrives without its data (``_dml_data`` is None), ``data`` separately (a reference the
    worker resolves and caches, shared by all sub-models); the fitted model goes back without it.
    The worker needs doubleml. Returns ``{"model": fitted model, "seconds": float}``.
    """
    start = time.perf_counter()
    model._dml_data = data
    model.fit(n_jobs_cv=None, **fit_args)
    model._dml_data = None
    return {"model": model, "seconds": time.perf_counter() - start}


def _search_rows(x, y, train_index, fold_target: bool):
    """A search's training data: the fold's rows of x, and of y unless y is the fold's own target."""
    return x[train_index, :], (y if fold_target else y[train_index])


def _candidate(learner, params: dict, n_jobs: int | None):
    estimator = clone(learner).set_params(**clone(params, safe=False))  # as scikit-learn's search sets them
    if n_jobs is not None and "n_jobs" in estimator.get_params(deep=False):
        estimator.set_params(n_jobs=n_jobs)
    return estimator


def score_candidate(x, y, train_index, learner, params: dict, scoring, splits: list, fold_target: bool = False,
                    n_jobs: int | None = 1) -> np.ndarray:
    """One candidate of a hyperparameter search: its test score on each inner split (NaN where a fit fails).

    Computed with scikit-learn's ``cross_validate`` (the same scorer and ``_fit_and_score`` as
    ``GridSearchCV``) on the training rows ``train_index``; ``splits`` index those rows.
    """
    x_train, y_train = _search_rows(x, y, train_index, fold_target)
    result = cross_validate(_candidate(learner, params, n_jobs), x_train, y_train, scoring=scoring, cv=splits,
                            error_score=np.nan)
    return result["test_score"]


def refit_candidate(x, y, train_index, learner, params: dict, fold_target: bool = False,
                    n_jobs: int | None = 1):
    """The best candidate of a search, refitted on all its training rows (the search's ``best_estimator_``)."""
    x_train, y_train = _search_rows(x, y, train_index, fold_target)
    return _candidate(learner, params, n_jobs).fit(x_train, y_train)
