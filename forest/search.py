"""Distributed grid search: one executor call per (parameter setting, CV fold).

``GroveGridSearchCV`` is a small ``GridSearchCV``: same candidates (``ParameterGrid``), same splits
(``check_cv``), same scoring (``check_scoring``) and the same formulas for means, standard
deviations and ranks, so its ``cv_results_`` scores equal ``GridSearchCV``'s. It leaves out
multi-metric scoring, ``error_score`` (errors raise), groups-aware routing and ``n_jobs``.

Each call fits its candidate in the worker. A grove forest is fitted there as its plain
scikit-learn forest (the same trees, see forest/estimators.py) rather than fanning out again
from inside a worker; the final refit uses the grove forest itself, on the search's executor.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone, is_classifier
from sklearn.metrics import check_scoring
from sklearn.model_selection import ParameterGrid, check_cv
from sklearn.utils import _safe_indexing
from sklearn.utils.validation import check_is_fitted

from .estimators import _GROVE_PARAMS, GroveForestMixin
from .executors import using_executor


@dataclass(frozen=True)
class SearchData:
    """The training data of one search; uploaded once with ``executor.put``."""

    X: Any
    y: Any


def fit_and_score(data: SearchData, estimator: Any, params: dict, train: np.ndarray,
                  test: np.ndarray, scoring: Any, return_train_score: bool) -> dict:
    """Fit ``estimator`` with ``params`` on the train fold, score it (runs remotely)."""
    model = clone(estimator).set_params(**clone(params, safe=False))
    X_train, y_train = _safe_indexing(data.X, train), _safe_indexing(data.y, train)
    X_test, y_test = _safe_indexing(data.X, test), _safe_indexing(data.y, test)
    started = time.perf_counter()
    model.fit(X_train, y_train)
    fitted = time.perf_counter()
    scorer = check_scoring(model, scoring)
    result = {"test_score": scorer(model, X_test, y_test), "fit_time": fitted - started}
    result["score_time"] = time.perf_counter() - fitted
    if return_train_score:
        result["train_score"] = scorer(model, X_train, y_train)
    return result


def _unfitted_plain(estimator: Any) -> Any:
    """A grove forest's plain scikit-learn twin (same parameters); other estimators as they are."""
    if isinstance(estimator, GroveForestMixin):
        params = {k: v for k, v in estimator.get_params(deep=False).items()
                  if k not in _GROVE_PARAMS}
        return estimator._sklearn_class(**params)
    return estimator


class GroveGridSearchCV(MetaEstimatorMixin, BaseEstimator):
    """Exhaustive search over ``param_grid``, every (candidate, fold) fit in its own call.

    Parameters follow ``GridSearchCV``: ``estimator``, ``param_grid``, ``scoring`` (None, a
    string or a callable scorer), ``cv``, ``refit`` (bool) and ``return_train_score``; plus
    ``executor`` (None: a default ``lambdamap.Executor()`` for the duration of ``fit``).

    Fitted attributes: ``cv_results_`` (the ``GridSearchCV`` keys for one metric),
    ``best_index_``, ``best_params_``, ``best_score_``, ``n_splits_``, and with ``refit``,
    ``best_estimator_``, ``refit_time_``; ``predict``, ``predict_proba`` and ``score`` use it.
    """

    def __init__(self, estimator, param_grid, *, scoring=None, cv=None, refit=True,
                 return_train_score=False, executor=None):
        self.estimator = estimator
        self.param_grid = param_grid
        self.scoring = scoring
        self.cv = cv
        self.refit = refit
        self.return_train_score = return_train_score
        self.executor = executor

    def fit(self, X, y=None, groups=None):
        """Run every (candidate, fold) on the executor, then refit the best candidate."""
        candidates = list(ParameterGrid(self.param_grid))
        cv = check_cv(self.cv, y, classifier=is_classifier(self.estimator))
        splits = list(cv.split(X, y, groups))
        self.n_splits_ = len(splits)
        # Candidate-major order, as GridSearchCV: all folds of candidate 0, then candidate 1, ...
        tasks = [(params, train, test) for params in candidates for train, test in splits]
        worker_estimator = _unfitted_plain(self.estimator)
        with using_executor(self.executor) as executor:
            data_ref = executor.put(SearchData(X, y))
            n = len(tasks)
            results = list(executor.map(
                fit_and_score, [data_ref] * n, [worker_estimator] * n,
                [t[0] for t in tasks], [t[1] for t in tasks], [t[2] for t in tasks],
                [self.scoring] * n, [self.return_train_score] * n))
            self.cv_results_ = self._format_results(candidates, results)
            self.best_index_ = int(np.argmin(self.cv_results_["rank_test_score"]))
            self.best_params_ = candidates[self.best_index_]
            self.best_score_ = float(self.cv_results_["mean_test_score"][self.best_index_])
            if self.refit:
                self._refit(X, y, executor)
        return self

    def _refit(self, X, y, executor: Any) -> None:
        best = clone(self.estimator).set_params(**clone(self.best_params_, safe=False))
        if isinstance(best, GroveForestMixin) and best.executor is None:
            best.executor = executor  # grow the final forest's groves on the search's executor
        started = time.perf_counter()
        self.best_estimator_ = best.fit(X, y)
        self.refit_time_ = time.perf_counter() - started
        if isinstance(best, GroveForestMixin):
            best.executor = self.estimator.executor  # do not keep a default executor shut down

    def _format_results(self, candidates: list[dict], results: list[dict]) -> dict:
        """``cv_results_`` with GridSearchCV's keys and formulas (one metric)."""
        n_candidates, n_splits = len(candidates), self.n_splits_
        cv_results: dict[str, Any] = {}

        def store(name: str, values: list, splits: bool = False, rank: bool = False) -> None:
            array = np.array(values, dtype=np.float64).reshape(n_candidates, n_splits)
            if splits:
                for k in range(n_splits):
                    cv_results[f"split{k}_{name}"] = array[:, k]
            means = np.average(array, axis=1)
            cv_results[f"mean_{name}"] = means
            cv_results[f"std_{name}"] = np.sqrt(
                np.average((array - means[:, np.newaxis]) ** 2, axis=1))
            if rank:
                # Failed (NaN) candidates tie with the worst, as in GridSearchCV.
                if np.isnan(means).all():
                    cv_results[f"rank_{name}"] = np.ones_like(means, dtype=np.int32)
                else:
                    filled = np.nan_to_num(means, nan=np.nanmin(means) - 1)
                    cv_results[f"rank_{name}"] = rankdata(-filled, method="min").astype(np.int32)

        store("fit_time", [r["fit_time"] for r in results])
        store("score_time", [r["score_time"] for r in results])
        for name in sorted({name for params in candidates for name in params}):
            column = np.ma.MaskedArray(np.empty(n_candidates, dtype=object), mask=True)
            for index, params in enumerate(candidates):
                if name in params:
                    column[index] = params[name]
            cv_results[f"param_{name}"] = column
        cv_results["params"] = candidates
        store("test_score", [r["test_score"] for r in results], splits=True, rank=True)
        if self.return_train_score:
            store("train_score", [r["train_score"] for r in results], splits=True)
        return cv_results

    def predict(self, X):
        """``best_estimator_.predict(X)``."""
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict(X)

    def predict_proba(self, X):
        """``best_estimator_.predict_proba(X)``."""
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict_proba(X)

    def score(self, X, y=None):
        """The search's scorer on (X, y) with ``best_estimator_``."""
        check_is_fitted(self, "best_estimator_")
        return check_scoring(self.best_estimator_, self.scoring)(self.best_estimator_, X, y)
