"""doubleml's ``tune()`` with every grid or randomized search fanned out through the executor.

doubleml's ``tune`` calls ``_dml_tune`` once per nuisance: for each training fold, a
``GridSearchCV`` / ``RandomizedSearchCV`` with ``cv=KFold(n_folds_tune, shuffle=True)`` (no seed:
it draws from numpy's global random state) is fitted on the fold's training rows. Here each such
search becomes one task per **candidate** (its inner cross-validation inside the task), plus one
refit task per search for the best candidate:

1. On the client, in doubleml's order, the random draws doubleml's search would make (the
   randomized search's candidates, then the ``KFold`` shuffle) are made from a copy of the global
   random state, which then advances exactly as it would have: candidates and inner splits are
   doubleml's, and so is every later draw (sample splits, bootstrap).
2. Every (nuisance, training fold, candidate) is submitted at once: learners x folds x candidates
   tasks in flight. Each computes the candidate's score on each inner split with scikit-learn's
   own ``cross_validate`` (the same scorer, the same ``_fit_and_score`` as the search).
3. As a fold's candidates complete, the client ranks them as scikit-learn's search does
   (mean over inner splits; NaN ranks last; ties go to the first candidate) and submits the refit
   of the best on the fold's training rows.

doubleml receives :class:`SearchResult` objects (``best_params_``, ``best_score_``,
``best_index_``, ``best_estimator_``, ``cv_results_`` with the mean, std, rank and per-split test
scores, ``predict``...), resolved lazily, so that doubleml's ``_nuisance_tuning`` submits all its
nuisances before it waits for the first. With learners that do not draw from numpy's global random
state (seeded or deterministic), the chosen parameters and the subsequent fit equal doubleml's.

``tune_ml_models`` (Optuna) stays local: its sampler picks each trial from the previous ones.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import sys
import threading
import warnings
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.model_selection import KFold, ParameterGrid, ParameterSampler

from .randomness import unseeded_sources
from .tasks import refit_candidate, score_candidate

_active = threading.local()  # the RemoteSearches of the tune() running on this thread, if any


class SearchResult:
    """A fanned-out search over one training fold: the attributes doubleml reads from a fitted search.

    Attributes are filled when the search's tasks complete; reading one before waits for them.
    """

    cv_results_: dict
    best_index_: int
    best_score_: float
    best_params_: dict
    best_estimator_: Any

    def __init__(self, runner: "RemoteSearches | None", candidates: list[dict], n_splits: int):
        self._runner = runner
        self.candidates = candidates
        self.n_splits_ = n_splits

    def __getattr__(self, name: str) -> Any:
        # only called for attributes not yet set: the search is still running
        runner = self.__dict__.get("_runner")
        if name.startswith("__") or runner is None:
            raise AttributeError(name)
        runner.wait_for(self, name)
        return object.__getattribute__(self, name)

    def _set_scores(self, scores: np.ndarray) -> None:
        """Rank the candidates from their (candidates, splits) test scores, as scikit-learn's search."""
        means = np.average(scores, axis=1)
        stds = np.sqrt(np.average((scores - means[:, np.newaxis]) ** 2, axis=1))
        if np.isnan(means).all():
            rank = np.ones_like(means, dtype=np.int32)
        else:
            rank = rankdata(-np.nan_to_num(means, nan=np.nanmin(means) - 1), method="min").astype(np.int32)
        self.cv_results_ = {"params": self.candidates, "mean_test_score": means, "std_test_score": stds,
                            "rank_test_score": rank,
                            **{f"split{k}_test_score": scores[:, k] for k in range(scores.shape[1])}}
        self.best_index_ = int(rank.argmin())
        self.best_score_ = means[self.best_index_]
        self.best_params_ = self.candidates[self.best_index_]

    def predict(self, X):
        """The refitted best estimator's ``predict``."""
        return self.best_estimator_.predict(X)

    def predict_proba(self, X):
        """The refitted best estimator's ``predict_proba``."""
        return self.best_estimator_.predict_proba(X)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_runner"] = None
        return state

    def __repr__(self):
        done = "best_params_" in self.__dict__
        return f"SearchResult({len(self.candidates)} candidates, best_params_={self.__dict__.get('best_params_')!r})" \
            if done else f"SearchResult({len(self.candidates)} candidates, running)"


class RemoteSearches:
    """The searches of one ``tune()`` call: submits their tasks and completes them as results arrive."""

    def __init__(self, executor, n_jobs: int | None):
        self.executor, self.n_jobs = executor, n_jobs
        self._refs: dict[int, tuple[Any, Any]] = {}
        self.pending: dict[concurrent.futures.Future, tuple[SearchResult, str, int]] = {}
        self.scores: dict[int, np.ndarray] = {}   # id(search) -> (candidates, splits) scores
        self.left: dict[int, int] = {}            # id(search) -> unfinished candidate tasks
        self.jobs: dict[int, tuple] = {}          # id(search) -> (x_ref, y_ref, train, learner)
        self.searches: list[SearchResult] = []
        self.tasks = 0

    def _store(self, obj):
        put = getattr(self.executor, "put", None)
        if put is None:
            return obj
        if id(obj) not in self._refs:
            self._refs[id(obj)] = (obj, put(obj))
        return self._refs[id(obj)][1]

    def dml_tune(self, y, x, train_inds, learner, param_grid, scoring_method, n_folds_tune, n_jobs_cv,
                 search_mode, n_iter_randomized_search, fold_specific_target=False) -> list[SearchResult]:
        """doubleml's ``_dml_tune``, fanned out (same signature; ``n_jobs_cv`` is ignored)."""
        results = []
        x_ref = self._store(x)
        for i, train_index in enumerate(train_inds):
            # the draws doubleml's search makes, in its order, from a copy of the global random state
            rng = np.random.RandomState()
            rng.set_state(np.random.get_state())
            if search_mode == "grid_search":
                candidates = list(ParameterGrid(param_grid))
            else:
                candidates = list(ParameterSampler(param_grid, n_iter_randomized_search, random_state=rng))
            splits = list(KFold(n_splits=n_folds_tune, shuffle=True, random_state=rng).split(x[train_index, :]))
            np.random.set_state(rng.get_state())
            # the target: y's training rows, or (fold_specific_target) the fold's own target y[i]
            y_ref = self._store(np.asarray(y[i]) if fold_specific_target else y)
            search = SearchResult(self, candidates, len(splits))
            self.scores[id(search)] = np.full((len(candidates), len(splits)), np.nan)
            self.left[id(search)] = len(candidates)
            self.jobs[id(search)] = (x_ref, y_ref, train_index, fold_specific_target, learner)
            for k, params in enumerate(candidates):
                future = self.executor.submit(score_candidate, x_ref, y_ref, train_index, learner, params,
                                              scoring_method, splits, fold_target=fold_specific_target,
                                              n_jobs=self.n_jobs)
                self.pending[future] = (search, "score", k)
                self.tasks += 1
            self.searches.append(search)
            results.append(search)
        return results

    def wait_for(self, search: SearchResult | None = None, attribute: str = "best_estimator_") -> None:
        """Process results until ``search`` has ``attribute`` (default: until every search is complete)."""
        def done() -> bool:
            return not self.pending or (search is not None and attribute in search.__dict__)
        try:
            while not done():
                finished, _ = concurrent.futures.wait(list(self.pending), return_when=concurrent.futures.FIRST_COMPLETED)
                for future in finished:
                    self._on_done(future)
        except BaseException:
            for future in self.pending:
                future.cancel()
            raise

    def _on_done(self, future) -> None:
        search, kind, k = self.pending.pop(future)
        result = future.result()  # a remote exception re-raises here
        key = id(search)
        if kind == "score":
            self.scores[key][k] = result
            self.left[key] -= 1
            if self.left[key] == 0:
                search._set_scores(self.scores.pop(key))
                x_ref, y_ref, train_index, fold_target, learner = self.jobs[key]
                refit = self.executor.submit(refit_candidate, x_ref, y_ref, train_index, learner, search.best_params_,
                                             fold_target=fold_target, n_jobs=self.n_jobs)
                self.pending[refit] = (search, "refit", 0)
                self.tasks += 1
        else:
            search.best_estimator_ = result
            del self.jobs[key]

    def close(self) -> None:
        """Complete every search and detach them from the executor."""
        self.wait_for()
        for search in self.searches:
            search._runner = None


def _dispatch(*args, **kwargs):
    """Stands in for doubleml's ``_dml_tune``: the remote version inside a serverless ``tune()``."""
    runner = getattr(_active, "runner", None)
    if runner is None:
        return _ORIGINAL(*args, **kwargs)
    return runner.dml_tune(*args, **kwargs)


_ORIGINAL = None
_install_lock = threading.Lock()


def _install() -> None:
    """Route every doubleml module's ``_dml_tune`` through :func:`_dispatch` (idempotent, thread-safe).

    Outside a serverless ``tune()`` the dispatcher calls doubleml's own function: local doubleml
    models on any thread are unaffected.
    """
    global _ORIGINAL
    from doubleml.utils import _estimation

    with _install_lock:
        if _ORIGINAL is None:
            _ORIGINAL = getattr(_estimation, "_dml_tune")
        for name, module in list(sys.modules.items()):
            if name.startswith("doubleml.") and getattr(module, "_dml_tune", None) is _ORIGINAL:
                setattr(module, "_dml_tune", _dispatch)


@contextlib.contextmanager
def remote_searches(executor, n_jobs: int | None):
    """Within this block, on this thread, doubleml's searches run as tasks on ``executor``."""
    _install()
    if getattr(_active, "runner", None) is not None:
        raise RuntimeError("tune() of a serverless model is already running on this thread")
    runner = RemoteSearches(executor, n_jobs)
    _active.runner = runner
    try:
        yield runner
        runner.close()
    finally:
        _active.runner = None


class RemoteTuning:
    """Mixin: ``tune()`` with its searches fanned out (see the module docstring); ``tune_ml_models`` is local."""

    def tune(self, param_grids, tune_on_folds=False, scoring_methods=None, n_folds_tune=5, search_mode="grid_search",
             n_iter_randomized_search=100, n_jobs_cv=None, set_as_params=True, return_tune_res=False):
        """doubleml's ``tune``, each (nuisance, fold, candidate) a task on the model's executor.

        Same arguments and result as doubleml's; ``n_jobs_cv`` is ignored. ``tune_res`` holds
        :class:`SearchResult` objects where doubleml's holds fitted ``GridSearchCV`` objects.
        ``tuning_requests`` afterwards is the number of tasks the call ran.
        """
        if isinstance(param_grids, dict):  # else doubleml's tune raises its own error below
            _warn_global_draws({k: v for k, v in self._learner.items() if v is not None and k in param_grids})
        executor, owned = self._executor_or_new()
        try:
            with remote_searches(executor, self.learner_n_jobs) as runner:
                result = super().tune(param_grids, tune_on_folds, scoring_methods, n_folds_tune, search_mode,
                                      n_iter_randomized_search, None, set_as_params, return_tune_res)
        finally:
            if owned:
                executor.shutdown()
        self.tuning_requests = runner.tasks
        return result


def _warn_global_draws(learners: dict) -> None:
    """tune() needs learners that leave numpy's global random state alone (see dml.randomness, strict)."""
    for name, learner in learners.items():
        sources = unseeded_sources(learner, strict=True)
        if sources:
            warnings.warn(
                f"Learner {name} ({type(learner).__name__}) draws from numpy's global random state when fitted: "
                f"{'; '.join(sources)}. doubleml's tune() shuffles each search's inner folds from that state, so "
                "after the first search the inner folds (and possibly the chosen parameters) differ from a local "
                "doubleml tune(). Set an integer random_state for results identical to doubleml.",
                UserWarning, stacklevel=3)
