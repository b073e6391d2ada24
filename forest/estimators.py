"""GroveForestClassifier and GroveForestRegressor: scikit-learn's random forests, grown in groves.

Each class *is* its scikit-learn forest (a subclass) with two more parameters, ``grove_size`` and
``executor``. ``fit`` is scikit-learn's own, run under lambdamap's joblib backend: the loop that
grows the trees fans out, one executor call per grove of ``grove_size`` trees, the training data
stored once. Everything after fitting (``predict``, ``predict_proba``, ``feature_importances_``,
OOB attributes, ``apply``, tags) is scikit-learn's own code running on the same trees, hence
equal to scikit-learn's results.
"""
from __future__ import annotations

import copy
from numbers import Integral
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.validation import check_is_fitted

from lambdamap.progress import wanted

from .executors import using_executor
from .grove import predict_grove
from .seeding import grove_slices, sklearn_requirement

_GROVE_PARAMS = ("grove_size", "executor", "progress")
_GROVE_CONSTRAINTS: dict = {
    "grove_size": [Interval(Integral, 1, None, closed="left")],
    "executor": [None, HasMethods(["map", "put"])],
    "progress": [None, "boolean"],
}


class GroveForestMixin:
    """What both grove forests add to their scikit-learn forest: grove fitting, distributed
    prediction, conversion to and from plain scikit-learn, saving and loading."""

    _sklearn_class: type  # RandomForestClassifier or RandomForestRegressor
    _tree_method: str  # per-tree output that the forest averages: "predict_proba" or "predict"

    def _init_grove(self, arguments: dict[str, Any]) -> None:
        """Keep the grove parameters; hand the forest's own to scikit-learn's ``__init__``."""
        arguments = {name: value for name, value in arguments.items() if name != "self"}
        self.grove_size = arguments.pop("grove_size")
        self.executor = arguments.pop("executor")
        self.progress = arguments.pop("progress")
        self._sklearn_class.__init__(self, **arguments)

    # ----------------------------------------------------------------------------- fitting

    def fit(self, X, y, sample_weight=None):
        """Build the forest from (X, y), one executor call per grove; returns self.

        This is scikit-learn's own ``fit``: its tree loop (a ``joblib.Parallel``) runs on
        lambdamap's joblib backend, which sends each grove of ``grove_size`` trees as one call
        and the training data once (see :mod:`lambdamap.joblib`). Before anything is invoked,
        the executor's runtime must have this client's scikit-learn (see :mod:`forest.seeding`).
        """
        from joblib import parallel_config

        from lambdamap.joblib import LambdamapBackend

        with using_executor(self.executor) as executor:
            backend = LambdamapBackend(executor=executor, tasks_per_call=self.grove_size,
                                       require_versions=sklearn_requirement(),
                                       progress=self.progress, progress_unit="tree")
            # n_jobs=-1 only names the fan-out in joblib's messages: groups ignore n_jobs.
            with parallel_config(backend=backend, n_jobs=-1):
                return super().fit(X, y, sample_weight=sample_weight)

    # --------------------------------------------------------------------------- predicting

    def predict(self, X, distributed: bool = False):
        """Predict for X; with ``distributed=True`` each grove predicts in its own call.

        Both ways give the same array: the client adds the per-tree outputs in tree order,
        as scikit-learn does.
        """
        if not distributed:
            return super().predict(X)
        return self._predict_from_mean(self._distributed_mean(X))

    def _predict_from_mean(self, mean_output):
        return mean_output  # regression: the mean prediction is the prediction

    def _distributed_mean(self, X) -> Any:
        """The trees' mean ``_tree_method`` output on X, computed one grove per call."""
        check_is_fitted(self)
        X = self._validate_X_predict(X)
        slices = grove_slices(len(self.estimators_), self.grove_size)
        total = None
        # lambdamap's bar counts groves; an executor without one is not asked for it
        bar = {"progress": True} if wanted(self.progress) else {}
        with using_executor(self.executor) as executor:
            x_ref = executor.put(X)
            outputs = executor.map(predict_grove, [x_ref] * len(slices),
                                   [executor.put(self.estimators_[s]) for s in slices],
                                   [self._tree_method] * len(slices), **bar)
            for grove_outputs in outputs:
                for output in grove_outputs:
                    # Multi-output classifiers give a list of arrays per tree.
                    parts = output if isinstance(output, list) else [output]
                    if total is None:
                        total = [np.zeros(part.shape, dtype=np.float64) for part in parts]
                    for running, part in zip(total, parts):
                        running += part
        for running in total:
            running /= len(self.estimators_)
        return total[0] if len(total) == 1 else total

    # ---------------------------------------------------------------- conversion and saving

    def to_sklearn(self):
        """The fitted forest as a plain scikit-learn forest (picklable without lambdamap)."""
        check_is_fitted(self)
        params = {k: v for k, v in self.get_params(deep=False).items() if k not in _GROVE_PARAMS}
        plain = self._sklearn_class(**params)
        _copy_fitted_state(self, plain)
        return plain

    @classmethod
    def from_sklearn(cls, fitted, *, grove_size: int = 10, executor: Any = None):
        """Wrap a fitted plain scikit-learn forest, e.g. to predict with it distributed."""
        if type(fitted) is not cls._sklearn_class:
            raise TypeError(f"expected a {cls._sklearn_class.__name__}, got {type(fitted).__name__}")
        check_is_fitted(fitted)
        model = cls(**fitted.get_params(deep=False), grove_size=grove_size, executor=executor)
        _copy_fitted_state(fitted, model)
        return model

    def save(self, uri: str) -> None:
        """Save to a local path or ``s3://bucket/key`` (see :func:`forest.persist.save`)."""
        from .persist import save

        save(self, uri)

    @classmethod
    def load(cls, uri: str, executor: Any = None):
        """Load a model saved by :meth:`save`; it must be an instance of this class."""
        from .persist import load

        model = load(uri, executor=executor)
        if not isinstance(model, cls):
            raise TypeError(f"{uri} holds a {type(model).__name__}, not a {cls.__name__}")
        return model

    # ------------------------------------------------- executors are shared, never copied

    def __sklearn_clone__(self):
        # A clone shares the executor: it owns processes and connections, so deep-copying it
        # (what sklearn.base.clone does to non-estimator parameters) would be wrong or fail.
        params = self.get_params(deep=False)
        executor = params.pop("executor")
        twin = type(self)(**{k: clone(v, safe=False) for k, v in params.items()},
                          executor=executor)
        if hasattr(self, "_metadata_request"):
            twin._metadata_request = copy.deepcopy(self._metadata_request)
        return twin

    def __getstate__(self):
        # A pickled model does not carry its executor (processes, connections); it is None.
        state = super().__getstate__()
        state["executor"] = None
        return state


class GroveForestClassifier(GroveForestMixin, RandomForestClassifier):
    """A ``RandomForestClassifier`` grown in groves of ``grove_size`` trees on ``executor``.

    Parameters are ``RandomForestClassifier``'s (same names, same defaults, same meaning) plus:

    grove_size : int, default=10
        Trees per executor call; ``fit`` makes ``ceil(n_estimators / grove_size)`` calls.
    executor : lambdamap.Executor or None, default=None
        Runs the groves (anything with lambdamap's ``put`` and ``map``). None: a default
        ``lambdamap.Executor()`` is created for each fit or distributed predict and shut down.
    progress : bool or None, default=None
        A progress bar over the trees while fitting and the groves while predicting
        distributed; None shows it when someone watches (a terminal or a notebook, not CI).

    ``n_jobs`` only affects local prediction (threads), as trees are grown by the executor.
    With the same ``random_state`` the fitted trees equal ``RandomForestClassifier``'s.
    """

    _sklearn_class = RandomForestClassifier
    _tree_method = "predict_proba"
    _parameter_constraints: dict = {**RandomForestClassifier._parameter_constraints,
                                    **_GROVE_CONSTRAINTS}

    def __init__(self, n_estimators=100, *, criterion="gini", max_depth=None,
                 min_samples_split=2, min_samples_leaf=1, min_weight_fraction_leaf=0.0,
                 max_features="sqrt", max_leaf_nodes=None, min_impurity_decrease=0.0,
                 bootstrap=True, oob_score=False, n_jobs=None, random_state=None, verbose=0,
                 warm_start=False, class_weight=None, ccp_alpha=0.0, max_samples=None,
                 monotonic_cst=None, grove_size=10, executor=None, progress=None):
        self._init_grove(locals())

    def predict_proba(self, X, distributed: bool = False):
        """Class probabilities for X; ``distributed=True`` computes them one grove per call."""
        if not distributed:
            return super().predict_proba(X)
        return self._distributed_mean(X)

    def _predict_from_mean(self, proba):
        # The class with the highest mean probability, per output (as ForestClassifier.predict).
        if self.n_outputs_ == 1:
            return self.classes_.take(np.argmax(proba, axis=1), axis=0)
        predictions = np.empty((proba[0].shape[0], self.n_outputs_), dtype=self.classes_[0].dtype)
        for k in range(self.n_outputs_):
            predictions[:, k] = self.classes_[k].take(np.argmax(proba[k], axis=1), axis=0)
        return predictions


class GroveForestRegressor(GroveForestMixin, RandomForestRegressor):
    """A ``RandomForestRegressor`` grown in groves of ``grove_size`` trees on ``executor``.

    Parameters are ``RandomForestRegressor``'s plus ``grove_size``, ``executor`` and
    ``progress``, as for :class:`GroveForestClassifier`.
    """

    _sklearn_class = RandomForestRegressor
    _tree_method = "predict"
    _parameter_constraints: dict = {**RandomForestRegressor._parameter_constraints,
                                    **_GROVE_CONSTRAINTS}

    def __init__(self, n_estimators=100, *, criterion="squared_error", max_depth=None,
                 min_samples_split=2, min_samples_leaf=1, min_weight_fraction_leaf=0.0,
                 max_features=1.0, max_leaf_nodes=None, min_impurity_decrease=0.0,
                 bootstrap=True, oob_score=False, n_jobs=None, random_state=None, verbose=0,
                 warm_start=False, ccp_alpha=0.0, max_samples=None, monotonic_cst=None,
                 grove_size=10, executor=None, progress=None):
        self._init_grove(locals())


def _copy_fitted_state(source, target) -> None:
    """Copy the fitted attributes (everything that is not a parameter) from source to target.

    Lists are copied so that a later warm start of one forest cannot grow the other.
    """
    params = source.get_params(deep=False)
    for name, value in vars(source).items():
        if name not in params:
            setattr(target, name, list(value) if isinstance(value, list) else value)
