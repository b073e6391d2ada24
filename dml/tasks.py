"""The remote function: fit a learner on the training rows of some folds and predict their test rows.

This is what runs in a worker (a local process or an AWS Lambda invocation). It does exactly what
doubleml's ``_dml_cv_predict`` does for one fold (clone, optional per-fold parameters, label-encode
the target for ``predict_proba``, fit on ``x[train]``, predict ``x[test]``), so the predictions are
bit for bit those of a local fit. Its big inputs arrive as :class:`lambdamap.ObjectRef` arguments that
the worker resolves and caches, so a warm worker decodes the data of a model once.
"""
from __future__ import annotations

import time

import numpy as np
from sklearn.base import clone
from sklearn.preprocessing import LabelEncoder


def train_test(folds: list, fold: int, train_rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The fold's (train, test) indices; training restricted to ``train_rows`` like doubleml's _get_cond_smpls."""
    train, test = folds[fold]
    if train_rows is not None:
        train = np.intersect1d(np.where(train_rows)[0], train)
    return train, test


def fit_predict(
    data: dict,
    folds: list,
    learner,
    name: str,
    units: list[tuple[int, dict | None]],
    y: np.ndarray | None = None,
    n_jobs: int | None = 1,
    return_models: bool = False,
) -> dict:
    """Cross-fit nuisance ``name`` on the (fold, parameters) ``units`` of one repetition.

    ``data[name]`` holds the nuisance's ``x``, ``y``, ``train_rows`` and ``method`` (see
    :mod:`dml.plans`); ``folds`` is the repetition's list of (train, test) index arrays; ``y``
    overrides the target (second-stage nuisances). ``n_jobs`` is set on learners that have such a
    parameter (None leaves it): the executor already runs fits in parallel, and n_jobs does not
    change a scikit-learn forest's result.

    Returns ``{"preds": [test-row predictions per unit], "models": [...] or None, "seconds": float}``.
    """
    start = time.perf_counter()
    nuisance = data[name]
    x, method = nuisance["x"], nuisance["method"]
    target = nuisance["y"] if y is None else y
    if method == "predict_proba":
        # doubleml (and cross_val_predict) encode class labels before splitting
        target = LabelEncoder().fit_transform(np.asarray(target))
    preds, models = [], []
    for fold, params in units:
        train, test = train_test(folds, fold, nuisance["train_rows"])
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
