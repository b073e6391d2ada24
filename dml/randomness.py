"""Which unseeded randomness in a learner can make a remote fit differ from a local one.

A remote fit equals doubleml's local fit only if everything random in it is seeded: a worker's
global random state is not the client's. The rule (:func:`unseeded_sources`), applied to the
learner and to every estimator and cross-validation splitter nested in it (pipeline steps,
``estimator=`` of a search, ``cv=`` of ``RidgeCV``, ``GridSearchCV``, ``LassoCV``...):

* an **estimator** whose ``random_state`` is ``None`` or a ``RandomState`` instance is a source,
  unless its settings make scikit-learn ignore ``random_state`` (:data:`IGNORES_RANDOM_STATE`:
  ``Lasso``/``ElasticNet`` with ``selection="cyclic"``, ``LogisticRegression`` without the
  ``sag``/``saga``/``liblinear`` solvers, ``Ridge`` without ``sag``/``saga``, ``SVC`` without
  ``probability=True``, ``LinearSVC`` with ``dual=False``, ``PCA`` with an exact solver,
  ``HistGradientBoosting*`` without early stopping or feature/bin subsampling);
* a **splitter** that shuffles (``KFold``/``StratifiedKFold``/``GroupKFold`` with
  ``shuffle=True``; ``ShuffleSplit``, ``RepeatedKFold`` and the other always-random splitters)
  with ``random_state`` ``None`` or a ``RandomState`` instance is a source. An integer ``cv`` or
  ``cv=None`` is an unshuffled ``KFold``/``StratifiedKFold``: deterministic.

A ``RandomState`` instance counts as unseeded: each task receives a copy in its initial state, so
its draws repeat across tasks where a local fit's continue. Randomness a learner draws from
``np.random`` without a ``random_state`` parameter cannot be seen and is not reported.

``strict=True`` (used by ``tune()``) also reports the estimators of :data:`IGNORES_RANDOM_STATE`:
with ``random_state=None`` their fits do not depend on the random state but still *draw* from
numpy's global one (scikit-learn's coordinate descent draws one number per ``Lasso`` fit), and
doubleml's ``tune`` shuffles each search's inner folds from that same global state: locally, the
draws of the fits shift the inner folds of later searches; remotely they happen in a worker.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

#: Estimators whose random_state scikit-learn ignores under the given settings (params -> bool).
IGNORES_RANDOM_STATE: dict[str, Callable[[dict, int | None], bool]] = {
    **{name: (lambda p, n: p.get("selection", "cyclic") == "cyclic")
       for name in ("Lasso", "ElasticNet", "LassoCV", "ElasticNetCV", "MultiTaskLasso", "MultiTaskElasticNet",
                    "MultiTaskLassoCV", "MultiTaskElasticNetCV")},
    **{name: (lambda p, n: p.get("solver", "lbfgs") not in ("sag", "saga", "liblinear"))
       for name in ("LogisticRegression", "LogisticRegressionCV")},
    **{name: (lambda p, n: p.get("solver", "auto") not in ("sag", "saga"))
       for name in ("Ridge", "RidgeClassifier")},
    **{name: (lambda p, n: not p.get("probability", False)) for name in ("SVC", "NuSVC")},
    **{name: (lambda p, n: p.get("dual", "auto") is False) for name in ("LinearSVC", "LinearSVR")},
    "PCA": lambda p, n: p.get("svd_solver", "auto") in ("full", "covariance_eigh"),
    # early stopping's validation split, feature subsampling, and the bin subsample (>2e5 rows) draw
    **{name: (lambda p, n: p.get("early_stopping", "auto") is False and p.get("max_features", 1.0) == 1.0
              and n is not None and n <= 200_000)
       for name in ("HistGradientBoostingRegressor", "HistGradientBoostingClassifier")},
}


def _unseeded(random_state: Any) -> bool:
    return random_state is None or isinstance(random_state, np.random.RandomState)


def _is_splitter(obj: Any) -> bool:
    return hasattr(obj, "split") and hasattr(obj, "get_n_splits") and not hasattr(obj, "fit")


def _splitter_source(path: str, splitter: Any) -> str | None:
    if _unseeded(getattr(splitter, "random_state", 0)):
        shuffles = getattr(splitter, "shuffle", True)  # ShuffleSplit, RepeatedKFold...: always random
        if shuffles:
            return f"{path or 'the learner'} = {splitter!r} shuffles without a seed"
    return None


def _estimator_source(path: str, estimator: Any, n_obs: int | None, strict: bool) -> str | None:
    params = estimator.get_params(deep=False)
    if "random_state" not in params or not _unseeded(params["random_state"]):
        return None
    ignores = IGNORES_RANDOM_STATE.get(type(estimator).__name__)
    if not strict and ignores is not None and ignores(params, n_obs):
        return None
    where = f"{path}__random_state" if path else "random_state"
    return f"{where}={params['random_state']!r} ({type(estimator).__name__})"


def unseeded_sources(learner: Any, n_obs: int | None = None, strict: bool = False) -> list[str]:
    """The unseeded randomness in ``learner`` (and everything nested in it) that can change its fits.

    ``n_obs`` is the data's size (some estimators draw only on large data); ``strict`` also reports
    estimators that draw from numpy's global random state without depending on it. Each source is
    described by its parameter path, e.g. ``"cv = KFold(n_splits=3, random_state=None, shuffle=True)
    shuffles without a seed"`` or ``"rf__random_state=None (RandomForestRegressor)"``.

    >>> from sklearn.linear_model import Lasso, RidgeCV
    >>> from sklearn.model_selection import KFold
    >>> unseeded_sources(Lasso())
    []
    >>> unseeded_sources(RidgeCV(cv=KFold(3, shuffle=True)))
    ['cv = KFold(n_splits=3, random_state=None, shuffle=True) shuffles without a seed']
    """
    sources = []
    items = [("", learner)]
    if hasattr(learner, "get_params"):
        items += list(learner.get_params(deep=True).items())
    seen: set[int] = set()
    for path, obj in items:
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if hasattr(obj, "get_params") and hasattr(obj, "fit"):
            source = _estimator_source(path, obj, n_obs, strict)
        elif _is_splitter(obj):
            source = _splitter_source(path, obj)
        else:
            source = None
        if source:
            sources.append(source)
    return sources
