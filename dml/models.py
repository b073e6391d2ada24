"""The ``DoubleML<Model>Serverless`` classes: doubleml models whose cross-fitting runs on an executor.

Each class is the doubleml model itself plus :class:`ServerlessMixin`. ``fit()`` computes every
nuisance prediction remotely with the model's own sample splits (:func:`dml.crossfit.cross_fit`)
and then runs doubleml's own ``fit(external_predictions=...)``: scores, estimates, standard errors,
bootstrap, sensitivity analysis are doubleml's code on doubleml's objects. With learners that have
an integer ``random_state`` the result equals a local doubleml fit bit for bit.

Supported are the models whose nuisance fits are plain per-fold fit+predict and that accept
``external_predictions`` (see :data:`UNSUPPORTED` for the others and why).
"""
from __future__ import annotations

import copy
import time
import warnings

import cloudpickle
import doubleml
import numpy as np

from . import metrics as _metrics
from . import plans
from .crossfit import GRANULARITIES, CrossFit, cross_fit


class ServerlessMixin:
    """Runs a doubleml model's cross-fitting through a lambdamap executor (mix in before the model).

    Extra keyword arguments (everything else is the doubleml model's own):

    * ``executor``: a ``lambdamap.Executor`` (or any ``concurrent.futures.Executor``); default: a
      fresh embedded local ``lambdamap.Executor()`` per ``fit``, shut down afterwards.
    * ``granularity``: ``"fold"`` (one task per repetition, fold and nuisance), ``"rep"`` (one per
      repetition and nuisance, all folds) or ``"auto"`` (see :func:`dml.crossfit.choose_granularity`).
    * ``learner_n_jobs``: ``n_jobs`` set on learners inside tasks (default 1: the executor is the
      parallelism; ``None`` leaves the learners as they are). It does not change forest results.
    * ``memory_mb``, ``arch``: the Lambda configuration for the cost estimate in ``metrics``
      (default: the AWS executor's function, else 1,769 MB and x86_64).
    * ``progress``: a progress bar over the tasks during ``fit``: None (default) shows it when
      someone watches (a terminal or a notebook, not CI), True/False force it.
    """

    _plan = None  # the model's nuisance plan, a function of dml.plans

    def __init__(self, *args, executor=None, granularity: str = "auto", learner_n_jobs: int | None = 1,
                 memory_mb: float | None = None, arch: str | None = None,
                 progress: bool | None = None, **kwargs):
        super().__init__(*args, **kwargs)  # doubleml checks data, learners, scores first
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        _check_picklable(self._learner)
        _warn_unseeded(self._learner)
        self._executor = executor
        self.granularity = granularity
        self.learner_n_jobs = learner_n_jobs
        self.memory_mb = memory_mb
        self.arch = arch
        self.progress = progress
        self._crossfit: CrossFit | None = None  # set during fit only
        self._metrics = None
        self._task_metrics = None

    def fit(self, n_jobs_cv=None, store_predictions=True, external_predictions=None, store_models=False):
        """Estimate the model: cross-fitting through the executor, then doubleml's own ``fit``.

        Same arguments as doubleml's ``fit``; ``n_jobs_cv`` is ignored (the executor parallelizes).
        ``external_predictions`` given here are used as is: those nuisances are not fitted remotely.
        """
        self._check_fit(n_jobs_cv, store_predictions, external_predictions, store_models)  # fail before invoking
        skip = {d: set(p) for d, p in (external_predictions or {}).items()}
        executor, owned = self._executor, self._executor is None
        if owned:
            from lambdamap import Executor
            executor = Executor()
        start = time.perf_counter()
        try:
            crossfit = cross_fit(self, type(self)._plan, executor, self.granularity, skip=skip,
                                 n_jobs=self.learner_n_jobs, return_models=store_models,
                                 progress=self.progress)
            tasks = _metrics.task_table(crossfit, executor)
        finally:
            if owned:
                executor.shutdown()
        merged = copy.copy(crossfit.predictions)
        for d_col, preds in (external_predictions or {}).items():
            merged[d_col] = {**merged.get(d_col, {}), **preds}
        remote_seconds = time.perf_counter() - start
        self._crossfit = crossfit
        try:
            super().fit(n_jobs_cv=None, store_predictions=store_predictions, external_predictions=merged,
                        store_models=store_models)
        finally:
            self._crossfit = None
        memory_mb, arch = _metrics.lambda_config(executor)
        self._task_metrics = tasks
        self._metrics = _metrics.summary(tasks, crossfit, time.perf_counter() - start, remote_seconds,
                                         self.memory_mb or memory_mb, self.arch or arch)
        return self

    def fit_aws_lambda(self, n_lambdas_cv: str | None = None, **kwargs):
        """:meth:`fit` under DoubleML-Serverless's name.

        Its ``n_lambdas_cv`` sets the granularity: ``"n_folds * n_rep"`` is ``"fold"``, ``"n_rep"``
        is ``"rep"``.
        """
        if n_lambdas_cv is not None:
            choices = {"n_folds * n_rep": "fold", "n_rep": "rep"}
            if n_lambdas_cv not in choices:
                raise ValueError(f'n_lambdas_cv must be "n_folds * n_rep" or "n_rep", got {n_lambdas_cv!r}')
            self.granularity = choices[n_lambdas_cv]
        return self.fit(**kwargs)

    @property
    def metrics(self):
        """Summary of the last ``fit``'s remote work: requests, durations, cost, memory, bytes, wall time."""
        return self._metrics

    @property
    def aws_lambda_metrics(self):
        """Alias of :attr:`metrics` (DoubleML-Serverless's name)."""
        return self._metrics

    @property
    def task_metrics(self):
        """One row per task of the last ``fit`` (nuisance, repetition, folds, duration, bytes, worker)."""
        return self._task_metrics

    @property
    def executor(self):
        """The executor given at construction (None: a fresh embedded one per fit)."""
        return self._executor

    def _nuisance_est(self, smpls, n_jobs_cv, external_predictions, return_models=False):
        # doubleml records no targets (and no models) for external predictions: give it ours, so that
        # nuisance_loss, nuisance_targets and evaluate_learners() are those of a local fit
        psi_elements, preds = super()._nuisance_est(smpls, n_jobs_cv, external_predictions, return_models)
        if self._crossfit is not None:
            key = (self._i_treat, self._i_rep)
            for name, target in self._crossfit.targets.get(key, {}).items():
                if name in preds["targets"] and preds["targets"][name] is None:
                    preds["targets"][name] = target
            for name, fitted in self._crossfit.models.get(key, {}).items():
                if preds["models"].get(name) is None:
                    preds["models"][name] = fitted
        return psi_elements, preds

    # The executor owns processes and connections: copies of the model share it, pickles drop it.
    def __deepcopy__(self, memo):
        memo[id(self._executor)] = self._executor
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            setattr(new, key, copy.deepcopy(value, memo))
        return new

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_executor"] = None
        return state


def _check_picklable(learners: dict) -> None:
    """Learners travel to workers by cloudpickle: fail now, naming the learner, rather than mid-fit."""
    for name, learner in learners.items():
        try:
            cloudpickle.dumps(learner)
        except Exception as exc:  # noqa: BLE001 - pickling raises many types
            raise TypeError(f"Invalid learner provided for {name}: {learner!r} cannot be pickled "
                            f"({type(exc).__name__}: {exc}). Learners are sent to remote workers with "
                            "cloudpickle; remove unpicklable attributes (locks, open files, clients).") from exc


def _warn_unseeded(learners: dict) -> None:
    """Warn about learners whose results depend on a random state that a worker cannot reproduce."""
    for name, learner in learners.items():
        params = learner.get_params(deep=True) if hasattr(learner, "get_params") else {}
        unseeded = [k for k, v in params.items()
                    if k.endswith("random_state") and (v is None or isinstance(v, np.random.RandomState))]
        if unseeded:
            warnings.warn(
                f"Learner {name} ({type(learner).__name__}) has {', '.join(unseeded)} None or a RandomState "
                "instance: each remote fit draws from its worker's own random state, so the estimates are "
                "valid but will not equal a local doubleml fit and will change from run to run. Set an "
                "integer random_state for reproducible results identical to doubleml.",
                UserWarning, stacklevel=3)


# -- the classes ---------------------------------------------------------------------------------
# One per supported doubleml model: the mixin, the model, and the model's nuisance plan.


class DoubleMLPLRServerless(ServerlessMixin, doubleml.DoubleMLPLR):
    """:class:`doubleml.DoubleMLPLR` with cross-fitting through a lambdamap executor."""
    _plan = staticmethod(plans.plr)


class DoubleMLPLIVServerless(ServerlessMixin, doubleml.DoubleMLPLIV):
    """:class:`doubleml.DoubleMLPLIV` (partialX) with cross-fitting through a lambdamap executor."""
    _plan = staticmethod(plans.pliv)


class DoubleMLPLPRServerless(ServerlessMixin, doubleml.DoubleMLPLPR):
    """:class:`doubleml.DoubleMLPLPR` with cross-fitting through a lambdamap executor."""
    _plan = staticmethod(plans.plpr)


class DoubleMLIRMServerless(ServerlessMixin, doubleml.DoubleMLIRM):
    """:class:`doubleml.DoubleMLIRM` with cross-fitting through a lambdamap executor."""
    _plan = staticmethod(plans.irm)


class DoubleMLIIVMServerless(ServerlessMixin, doubleml.DoubleMLIIVM):
    """:class:`doubleml.DoubleMLIIVM` with cross-fitting through a lambdamap executor."""
    _plan = staticmethod(plans.iivm)


class DoubleMLAPOServerless(ServerlessMixin, doubleml.DoubleMLAPO):
    """:class:`doubleml.DoubleMLAPO` with cross-fitting through a lambdamap executor."""
    _plan = staticmethod(plans.apo)


class DoubleMLDIDServerless(ServerlessMixin, doubleml.DoubleMLDID):
    """:class:`doubleml.DoubleMLDID` (deprecated in doubleml) with cross-fitting through a lambdamap executor."""
    _plan = staticmethod(plans.did)


class DoubleMLDIDCSServerless(ServerlessMixin, doubleml.DoubleMLDIDCS):
    """:class:`doubleml.DoubleMLDIDCS` (deprecated in doubleml) with cross-fitting through a lambdamap executor."""
    _plan = staticmethod(plans.didcs)


class DoubleMLDIDBinaryServerless(ServerlessMixin, doubleml.did.DoubleMLDIDBinary):
    """:class:`doubleml.did.DoubleMLDIDBinary` with cross-fitting through a lambdamap executor."""
    _plan = staticmethod(plans.did_binary)


class DoubleMLDIDCSBinaryServerless(ServerlessMixin, doubleml.did.DoubleMLDIDCSBinary):
    """:class:`doubleml.did.DoubleMLDIDCSBinary` with cross-fitting through a lambdamap executor."""
    _plan = staticmethod(plans.did_cs_binary)


SUPPORTED = {cls.__name__: cls for cls in (
    DoubleMLPLRServerless, DoubleMLPLIVServerless, DoubleMLPLPRServerless, DoubleMLIRMServerless,
    DoubleMLIIVMServerless, DoubleMLAPOServerless, DoubleMLDIDServerless, DoubleMLDIDCSServerless,
    DoubleMLDIDBinaryServerless, DoubleMLDIDCSBinaryServerless)}

#: doubleml models without a Serverless class, and why (doubleml 0.11.4).
UNSUPPORTED = {
    "DoubleMLLPLR": "nested (double) cross-fitting for ml_M and ml_a, whose predictions weight ml_m's fit; "
                    "external predictions must include every inner fold",
    "DoubleMLPQ": "per-fold nested preliminary fits (propensity on half the training fold, a quantile "
                  "estimate) define the outcome nuisance's target: not plain fit+predict",
    "DoubleMLLPQ": "as DoubleMLPQ, with instrument-stratified preliminary fits",
    "DoubleMLCVAR": "as DoubleMLPQ (preliminary quantile per fold); no external_predictions",
    "DoubleMLQTE": "a composite of DoubleMLPQ/LPQ/CVAR models",
    "DoubleMLSSM": "doubleml takes no external_predictions for it (the nonignorable score also nests "
                   "preliminary fits inside each training fold)",
    "DoubleMLAPOS": "a composite of DoubleMLAPO models: fit DoubleMLAPOServerless per treatment level",
    "DoubleMLDIDMulti": "a composite of DoubleMLDIDBinary models: fit DoubleMLDIDBinaryServerless per "
                        "(g, t) combination",
    "DoubleMLPLIV (partialZ, partialXZ)": "no external_predictions in doubleml; partialXZ's ml_m has "
                                          "fold-specific targets",
    "RDFlex": "not a DoubleML subclass; iterative kernel-weighted fits (bandwidth re-estimated between "
              "iterations), no external_predictions",
}
