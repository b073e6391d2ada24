"""The ``DoubleML<Model>Serverless`` classes: doubleml models whose cross-fitting runs on an executor.

Each class is the doubleml model itself plus a serverless mixin. ``fit()`` computes every nuisance
prediction remotely with the model's own sample splits (:mod:`dml.crossfit`) and then runs
doubleml's own ``fit(external_predictions=...)``: scores, estimates, standard errors, bootstrap,
sensitivity analysis are doubleml's code on doubleml's objects. With seeded learners the result
equals a local doubleml fit bit for bit.

* :class:`ServerlessMixin`: one model (PLR, PLIV, PLPR, IRM, IIVM, APO, the DID family).
* :class:`ServerlessCompositeMixin`: the composites ``DoubleMLAPOS`` and ``DoubleMLDIDMulti``,
  whose sub-models (serverless themselves) are all cross-fitted in one wave of tasks.
* :class:`DoubleMLQTEServerless`: ``DoubleMLQTE``, whose PQ/LPQ/CVAR sub-models take no external
  predictions: each sub-model is fitted whole, remotely (the worker needs doubleml).

:data:`UNSUPPORTED` lists the other doubleml models and why.
"""
from __future__ import annotations

import copy
import time
import warnings
from typing import Any

import cloudpickle
import doubleml

from . import metrics as _metrics
from . import plans
from .compat import check_doubleml_version
from .crossfit import GRANULARITIES, CrossFit, CrossFitRun, Task, parallelism
from .randomness import unseeded_sources
from .tasks import fit_model
from .tuning import RemoteTuning


class _ServerlessBase:
    """What every serverless class shares: the executor settings, metrics, copies and pickles."""

    def _init_serverless(self, executor, granularity: str, learner_n_jobs: int | None,
                         memory_mb: float | None, arch: str | None, progress: bool | None = None) -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        self._executor = executor
        self.granularity = granularity
        self.learner_n_jobs = learner_n_jobs
        self.memory_mb = memory_mb
        self.arch = arch
        self.progress = progress  # a bar during fit: None shows it where someone watches
        self._metrics = None
        self._task_metrics = None

    def _executor_or_new(self):
        """(executor, owned): the given executor, or a fresh embedded one that the caller shuts down."""
        if self._executor is not None:
            return self._executor, False
        from lambdamap import Executor
        return Executor(), True

    def _cross_fit(self, models: list, external: list, store_models: bool) -> tuple[list[CrossFit], float, Any, dict]:
        """Cross-fit ``models`` in one wave of tasks and record ``task_metrics``.

        Returns (one CrossFit per model, seconds, the executor used or None, the run's details for
        :meth:`_record_metrics`).
        """
        start = time.perf_counter()
        run = CrossFitRun(models, external, n_jobs=self.learner_n_jobs, return_models=store_models)
        executor = None
        if run.parts:  # all predictions external: nothing to run, no executor to start
            executor, owned = self._executor_or_new()
            try:
                run.execute(executor, self.granularity, progress=getattr(self, "progress", None))
                self._task_metrics = _metrics.task_table(run.tasks, executor)
            finally:
                if owned:
                    executor.shutdown()
        else:
            self._task_metrics = _metrics.task_table([], None)
        details = dict(granularity=run.granularity, fit_seconds_estimate=run.fit_estimate,
                       parallelism=run.workers if run.parts else None, stored_bytes=sum(run.stored_bytes),
                       stored_objects=len(run._stored))
        return run.result(), time.perf_counter() - start, executor, details

    def _record_metrics(self, wall_seconds: float, remote_seconds: float, executor=None, **details) -> None:
        """``metrics`` of the last fit, from ``task_metrics`` and the run's details (granularity...)."""
        memory_mb, arch = _metrics.lambda_config(executor)
        self._metrics = _metrics.summary(self._task_metrics, wall_seconds, remote_seconds,
                                         self.memory_mb or memory_mb, self.arch or arch, **details)

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
        return self.fit(**kwargs)  # type: ignore[attr-defined]  # every class defines fit

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
        """One row per task of the last ``fit`` (model, nuisance, repetition, folds, duration, bytes, worker)."""
        return self._task_metrics

    @property
    def executor(self):
        """The executor given at construction (None: a fresh embedded one per fit)."""
        return self._executor

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


def _serverless_init(self, executor, granularity, learner_n_jobs, memory_mb, arch, init, args, kwargs):
    """The constructor of every class: version guard, doubleml's own checks, then dml's."""
    check_doubleml_version()
    progress = kwargs.pop("progress", None)  # dml's, not doubleml's
    # set before doubleml's constructor: a composite's builds its sub-models inside it
    self._init_serverless(executor, granularity, learner_n_jobs, memory_mb, arch, progress)
    init(*args, **kwargs)  # doubleml checks data, learners, scores first
    learners = {k: v for k, v in self._learner.items() if v is not None}
    _check_picklable(learners)
    _warn_unseeded(learners, getattr(self._dml_data, "n_obs", None))


class ServerlessMixin(_ServerlessBase, RemoteTuning):
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
    """

    _plan: Any = None  # the model's nuisance plan, a function of dml.plans

    def __init__(self, *args, executor=None, granularity: str = "auto", learner_n_jobs: int | None = 1,
                 memory_mb: float | None = None, arch: str | None = None, **kwargs):
        self._crossfit: CrossFit | None = None  # set during fit only
        self._prefit: CrossFit | None = None    # set by a composite that cross-fitted this sub-model
        _serverless_init(self, executor, granularity, learner_n_jobs, memory_mb, arch, super().__init__, args, kwargs)

    @classmethod
    def doubleml_class(cls) -> type:
        """The doubleml model this class makes serverless."""
        return next(c for c in cls.__mro__ if c.__module__.startswith("doubleml."))

    def fit(self, n_jobs_cv=None, store_predictions=True, external_predictions=None, store_models=False):
        """Estimate the model: cross-fitting through the executor, then doubleml's own ``fit``.

        Same arguments as doubleml's ``fit``; ``n_jobs_cv`` is ignored (the executor parallelizes).
        ``external_predictions`` given here are used as is: those nuisances (and any that doubleml
        then skips) are not fitted remotely.
        """
        self._check_fit(n_jobs_cv, store_predictions, external_predictions, store_models)  # fail before invoking
        start = time.perf_counter()
        prefit, self._prefit = self._prefit, None
        if prefit is None:
            (crossfit,), remote_seconds, executor, details = self._cross_fit([self], [external_predictions], store_models)
        else:  # a composite ran this sub-model's tasks in its wave and keeps the metrics
            crossfit, remote_seconds = prefit, None
        merged = crossfit.predictions
        for d_col, preds in (external_predictions or {}).items():
            merged[d_col] = {**merged.get(d_col, {}), **preds}
        self._crossfit = crossfit
        try:
            super().fit(n_jobs_cv=None, store_predictions=store_predictions, external_predictions=merged or None,
                        store_models=store_models)
        finally:
            self._crossfit = None
        if remote_seconds is not None:
            self._record_metrics(time.perf_counter() - start, remote_seconds, executor, **details)
        return self

    def _nuisance_est(self, smpls, n_jobs_cv, external_predictions, return_models=False):
        # doubleml checks only its own predictions for finite values (and some for binary labels):
        # run those checks on ours. It records no targets (and no models) for external predictions:
        # give it ours, so that nuisance_loss, nuisance_targets and evaluate_learners() are a local fit's.
        crossfit = self._crossfit
        if crossfit is not None:
            crossfit.check(self, self._i_treat, self._i_rep)
        psi_elements, preds = super()._nuisance_est(smpls, n_jobs_cv, external_predictions, return_models)
        if crossfit is not None:
            for name, target in crossfit.targets(self._i_treat, self._i_rep).items():
                if name in preds["targets"] and preds["targets"][name] is None:
                    preds["targets"][name] = target
            for name, fitted in crossfit.models(self._i_treat, self._i_rep).items():
                if preds["models"].get(name) is None:
                    preds["models"][name] = fitted
        return psi_elements, preds


class ServerlessCompositeMixin(_ServerlessBase):
    """Runs a doubleml composite's sub-model fits (APOS: one per treatment level; DIDMulti: one per
    (g, t) cell) as one wave of tasks through a lambdamap executor.

    Same extra keyword arguments as :class:`ServerlessMixin`. The sub-models in ``modellist`` are
    the serverless classes of doubleml's sub-models; ``fit`` submits every (sub-model, repetition,
    fold, nuisance) fit at once, then runs doubleml's composite ``fit``, whose sub-model fits use
    those predictions. Aggregation, ``summary``, ``confint``, ``sensitivity_analysis``, plots are
    doubleml's. ``n_jobs_models`` and ``n_jobs_cv`` are ignored (the executor parallelizes).
    """

    def __init__(self, *args, executor=None, granularity: str = "auto", learner_n_jobs: int | None = 1,
                 memory_mb: float | None = None, arch: str | None = None, **kwargs):
        _serverless_init(self, executor, granularity, learner_n_jobs, memory_mb, arch, super().__init__, args, kwargs)

    @classmethod
    def doubleml_class(cls) -> type:
        """The doubleml composite this class makes serverless."""
        return next(c for c in cls.__mro__ if c.__module__.startswith("doubleml."))

    def _initialize_models(self):
        # doubleml builds its own sub-model classes; make each the serverless class of the same model
        modellist = super()._initialize_models()
        for model in modellist:
            model.__class__ = SERVERLESS_BY_DOUBLEML[type(model)]
            model._crossfit = model._prefit = None
            model._init_serverless(self._executor, self.granularity, self.learner_n_jobs, self.memory_mb, self.arch)
        return modellist

    def _submodel_keys(self) -> list:
        """The keys of doubleml's composite ``external_predictions``, one per sub-model."""
        raise NotImplementedError

    def fit(self, n_jobs_models=None, n_jobs_cv=None, store_predictions=True, store_models=False,
            external_predictions=None):
        """Estimate all sub-models: one wave of remote cross-fitting, then doubleml's composite ``fit``."""
        external = [None] * len(self.modellist)
        if external_predictions is not None:  # doubleml's checks and layout, before invoking
            self._check_external_predictions(external_predictions)
            renamed = self._rename_external_predictions(external_predictions)
            external = [renamed.get(key) for key in self._submodel_keys()]
        start = time.perf_counter()
        crossfits, remote_seconds, executor, details = self._cross_fit(self.modellist, external, store_models)
        for model, crossfit in zip(self.modellist, crossfits):
            model._prefit = crossfit
        try:
            super().fit(n_jobs_models=None, n_jobs_cv=None, store_predictions=store_predictions,
                        store_models=store_models, external_predictions=external_predictions)
        finally:
            for model in self.modellist:
                model._prefit = None
        self._record_metrics(time.perf_counter() - start, remote_seconds, executor, **details)
        return self


def _check_picklable(learners: dict) -> None:
    """Learners travel to workers by cloudpickle: fail now, naming the learner, rather than mid-fit."""
    for name, learner in learners.items():
        try:
            cloudpickle.dumps(learner)
        except Exception as exc:  # noqa: BLE001 - pickling raises many types
            raise TypeError(f"Invalid learner provided for {name}: {learner!r} cannot be pickled "
                            f"({type(exc).__name__}: {exc}). Learners are sent to remote workers with "
                            "cloudpickle; remove unpicklable attributes (locks, open files, clients).") from exc


def _warn_unseeded(learners: dict, n_obs: int | None) -> None:
    """Warn about each learner with randomness a worker cannot reproduce (the rule: :mod:`dml.randomness`)."""
    for name, learner in learners.items():
        sources = unseeded_sources(learner, n_obs)
        if sources:
            warnings.warn(
                f"Learner {name} ({type(learner).__name__}) has unseeded randomness: {'; '.join(sources)}. "
                "Each remote fit draws from its worker's own random state, so the estimates are valid but "
                "will not equal a local doubleml fit and will change from run to run. Set an integer "
                "random_state for reproducible results identical to doubleml.",
                UserWarning, stacklevel=4)


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


class DoubleMLAPOSServerless(ServerlessCompositeMixin, doubleml.DoubleMLAPOS):
    """:class:`doubleml.DoubleMLAPOS`: the APO sub-models of all treatment levels cross-fitted in one wave.

    Example::

        apos = DoubleMLAPOSServerless(data, ml_g, ml_m, treatment_levels=[0, 1, 2], executor=Executor())
        apos.fit()
        print(apos.summary, apos.causal_contrast(reference_levels=0).summary)
    """

    def _submodel_keys(self) -> list:
        return list(self.treatment_levels)


class DoubleMLDIDMultiServerless(ServerlessCompositeMixin, doubleml.did.DoubleMLDIDMulti):
    """:class:`doubleml.did.DoubleMLDIDMulti`: the DID sub-models of all (g, t_pre, t_eval) cells in one wave.

    Example::

        did = DoubleMLDIDMultiServerless(panel_data, ml_g, ml_m, gt_combinations="standard", executor=Executor())
        did.fit()
        print(did.summary, did.aggregate("group").summary)
    """

    def _submodel_keys(self) -> list:
        return list(self.gt_labels)


class DoubleMLQTEServerless(_ServerlessBase, doubleml.DoubleMLQTE):
    """:class:`doubleml.DoubleMLQTE` with each of its 2 x n_quantiles sub-model fits run remotely.

    Its sub-models (``DoubleMLPQ``, ``DoubleMLLPQ`` or ``DoubleMLCVAR``, one per quantile and
    treatment 0/1) nest preliminary fits inside each training fold and take no external
    predictions, so each is fitted whole in one task (all its repetitions, folds and nuisances):
    **the worker needs doubleml** (on AWS, a runtime that holds it). The fitted sub-models come back
    and doubleml's ``fit`` assembles them. ``executor``, ``memory_mb`` and ``arch`` as for the other
    classes; there is no ``granularity`` (a task is a sub-model) and learners keep their ``n_jobs``.

    Example::

        qte = DoubleMLQTEServerless(data, ml_g, ml_m, quantiles=[0.25, 0.5, 0.75], executor=Executor())
        qte.fit()
        print(qte.summary)
    """

    def __init__(self, *args, executor=None, memory_mb: float | None = None, arch: str | None = None, **kwargs):
        self._prefitted = None
        _serverless_init(self, executor, "auto", None, memory_mb, arch, super().__init__, args, kwargs)

    @classmethod
    def doubleml_class(cls) -> type:
        """The doubleml model this class makes serverless."""
        return doubleml.DoubleMLQTE

    def fit(self, n_jobs_models=None, n_jobs_cv=None, store_predictions=True, store_models=False,
            external_predictions=None):
        """Fit every sub-model remotely (one task each), then doubleml's ``fit`` assembles them."""
        if external_predictions is not None:
            raise NotImplementedError(f"External predictions not implemented for {self.__class__.__name__}.")
        start = time.perf_counter()
        executor, owned = self._executor_or_new()
        subs = [(i, 0, m) for i, m in enumerate(self.modellist_0)] + [(i, 1, m) for i, m in enumerate(self.modellist_1)]
        fit_args = {"store_predictions": store_predictions, "store_models": store_models}
        try:
            put = getattr(executor, "put", None)
            data = put(self._dml_data) if put is not None else self._dml_data
            tasks = []
            for i_quant, treatment, model in subs:
                future = executor.submit(fit_model, _without_data(model), data, fit_args)
                tasks.append(Task(len(tasks), treatment, f"{type(model).__name__}(quantile={model.quantile})",
                                  None, [], 1, future))
            fitted = {}
            for (i_quant, treatment, model), task in zip(subs, tasks):
                task.result = task.future.result()
                remote = task.result.pop("model")
                remote._dml_data = self._dml_data
                fitted.setdefault(i_quant, [None, None])[treatment] = remote
            self._task_metrics = _metrics.task_table(tasks, executor)
        finally:
            if owned:
                executor.shutdown()
        remote_seconds = time.perf_counter() - start
        self._prefitted = {i: tuple(pair) for i, pair in fitted.items()}
        try:
            super().fit(n_jobs_models=None, n_jobs_cv=None, store_predictions=store_predictions,
                        store_models=store_models)
        finally:
            self._prefitted = None
        self._record_metrics(time.perf_counter() - start, remote_seconds, executor, granularity="model",
                             parallelism=parallelism(executor), stored_bytes=getattr(data, "nbytes", 0))
        return self

    def _fit_quantile(self, i_quant, n_jobs_cv=None, store_predictions=True, store_models=False):
        if self._prefitted is not None:
            return self._prefitted[i_quant]
        return super()._fit_quantile(i_quant, n_jobs_cv, store_predictions, store_models)


def _without_data(model):
    """A shallow copy of ``model`` without its data, which travels once, by reference."""
    light = copy.copy(model)
    light._dml_data = None
    return light


SUPPORTED = {cls.__name__: cls for cls in (
    DoubleMLPLRServerless, DoubleMLPLIVServerless, DoubleMLPLPRServerless, DoubleMLIRMServerless,
    DoubleMLIIVMServerless, DoubleMLAPOServerless, DoubleMLDIDServerless, DoubleMLDIDCSServerless,
    DoubleMLDIDBinaryServerless, DoubleMLDIDCSBinaryServerless, DoubleMLAPOSServerless,
    DoubleMLDIDMultiServerless, DoubleMLQTEServerless)}

#: doubleml sub-model class -> its serverless class (for the composites' sub-models)
SERVERLESS_BY_DOUBLEML = {cls.doubleml_class(): cls for cls in SUPPORTED.values()}

#: doubleml models without a Serverless class, and why (doubleml 0.11).
UNSUPPORTED = {
    "DoubleMLLPLR": "nested (double) cross-fitting for ml_M and ml_a, whose predictions weight ml_m's fit; "
                    "external predictions must include every inner fold",
    "DoubleMLPQ": "per-fold nested preliminary fits (propensity on half the training fold, a quantile "
                  "estimate) define the outcome nuisance's target: not plain fit+predict. Alone it would be "
                  "one remote task; DoubleMLQTEServerless fans its PQ sub-models out, one task each",
    "DoubleMLLPQ": "as DoubleMLPQ, with instrument-stratified preliminary fits (in DoubleMLQTEServerless: "
                   "one task per sub-model)",
    "DoubleMLCVAR": "as DoubleMLPQ (preliminary quantile per fold); no external_predictions (in "
                    "DoubleMLQTEServerless: one task per sub-model)",
    "DoubleMLSSM": "doubleml takes no external_predictions for it (the nonignorable score also nests "
                   "preliminary fits inside each training fold)",
    "DoubleMLPLIV (partialZ, partialXZ)": "no external_predictions in doubleml; partialXZ's ml_m has "
                                          "fold-specific targets",
    "RDFlex": "not a DoubleML subclass; iterative kernel-weighted fits (bandwidth re-estimated between "
              "iterations), no external_predictions",
}
