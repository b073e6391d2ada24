"""Fan a doubleml model's cross-fitting out through an executor and gather the predictions.

The steps, for a model whose plan (:mod:`dml.plans`) lists its nuisance functions:

1. Each treatment's arrays (features, targets, subgroup masks) and each repetition's sample splits
   go to the executor's store once (``executor.put``, content-addressed); tasks carry only the two
   references, the learner, and fold numbers.
2. Tasks are cut at the chosen granularity: one per (repetition, fold, nuisance) or one per
   (repetition, nuisance) with all its folds; ``"auto"`` picks by expected duration (see
   :func:`choose_granularity`).
3. Second-stage nuisances (``ml_g`` of the IV-type scores) are submitted for a repetition as soon
   as that repetition's first stage is complete.
4. Predictions are assembled into doubleml's ``external_predictions`` layout; the targets and
   (optionally) the fitted models are kept so that diagnostics equal those of a local fit.
"""
from __future__ import annotations

import concurrent.futures
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from sklearn.base import clone

from lambdamap.progress import TaskBar

from .plans import Nuisance
from .tasks import fit_predict, train_test

GRANULARITIES = ("auto", "fold", "rep")

#: Expected fixed cost (seconds) of one invocation, by backend name, for granularity="auto":
#: local worker processes hand over a call in milliseconds; a Lambda invocation costs an invoke
#: request, S3 reads/writes of arguments, results and status, and the collector's polling.
INVOCATION_OVERHEAD_S = {"local": 0.02, "aws": 0.25}
DEFAULT_OVERHEAD_S = 0.25

#: Training-set sizes of the two local probe fits that estimate one fold's fit time (auto).
PROBE_ROWS = (200, 400)


@dataclass
class Task:
    """One invocation: nuisance ``name`` of treatment ``i_treat``, repetition ``rep``, ``folds``."""

    i_treat: int
    name: str
    rep: int
    folds: list[int]
    stage: int
    future: concurrent.futures.Future
    result: dict | None = None


@dataclass
class CrossFit:
    """Everything the remote cross-fitting produced for one ``fit``."""

    predictions: dict[str, dict[str, np.ndarray]]        # {d_col: {nuisance: (n_obs, n_rep)}}
    targets: dict[tuple[int, int], dict[str, np.ndarray]]  # {(i_treat, i_rep): {nuisance: target}}
    models: dict[tuple[int, int], dict[str, list]]        # {(i_treat, i_rep): {nuisance: [per fold]}}
    tasks: list[Task]
    granularity: str
    fit_seconds_estimate: float | None
    stored_bytes: int = 0
    parallelism: int = 1
    stored_objects: int = 0


#: Parallelism assumed on AWS: Lambda's default concurrency limit per account and region.
LAMBDA_CONCURRENCY = 1000


def parallelism(executor) -> int:
    """How many calls the executor runs at once: local workers, Lambda's concurrency, a pool's size."""
    backend = getattr(executor, "backend", None)
    if getattr(backend, "name", None) == "aws":
        return LAMBDA_CONCURRENCY
    for owner, attr in ((backend, "workers"), (executor, "_max_workers")):
        value = getattr(owner, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return os.cpu_count() or 1


def invocation_overhead(executor) -> float:
    """The fixed cost assumed per invocation on this executor's backend (seconds)."""
    name = getattr(getattr(executor, "backend", None), "name", None)
    return INVOCATION_OVERHEAD_S.get(name, DEFAULT_OVERHEAD_S)


def choose_granularity(fit_seconds: float, n_fits: int, n_folds: int, workers: int, overhead: float) -> str:
    """``"rep"`` or ``"fold"``: the one with the smaller predicted makespan.

    A task of ``k`` fits takes ``k * fit_seconds + overhead``; ``n_fits / k`` tasks on ``workers``
    run in ``ceil(tasks / workers)`` waves. Bundling the folds of a repetition (``k = n_folds``)
    wins when fits are short against the overhead and there are enough tasks to fill the workers;
    ties go to ``"rep"``, which makes fewer requests (cheaper on Lambda).
    """
    def makespan(k: int) -> float:
        tasks = math.ceil(n_fits / k)
        return math.ceil(tasks / workers) * (k * fit_seconds + overhead)
    return "rep" if makespan(n_folds) <= makespan(1) else "fold"


def estimate_fit_seconds(nuisances: list[Nuisance], learners: dict, smpls: list, n_jobs: int | None) -> float:
    """Seconds of one fold's fit+predict, mean over nuisances, from two small local probe fits.

    Each learner is fitted on ``PROBE_ROWS`` training rows (a fixed random subset, so the global
    random state is untouched) and the time is extrapolated linearly to the fold's training size.
    """
    rng = np.random.default_rng(0)
    estimates = []
    for nuis in nuisances:
        train, _ = train_test(smpls[0], 0, nuis.train_rows)
        n_train = len(train)
        sizes = [s for s in PROBE_ROWS if s < n_train] or [n_train]
        order = rng.permutation(train)
        times = []
        for size in sizes:
            rows = np.sort(order[:size])
            estimator = clone(learners[nuis.learner])
            if n_jobs is not None and "n_jobs" in estimator.get_params(deep=False):
                estimator.set_params(n_jobs=n_jobs)
            y = nuis.y if nuis.y is not None else nuis.x[:, 0]  # second stage: any numeric target
            start = time.perf_counter()
            estimator.fit(nuis.x[rows], y[rows])
            getattr(estimator, nuis.method)(nuis.x[rows])
            times.append(time.perf_counter() - start)
        if len(times) == 1:
            estimates.append(times[0] * n_train / sizes[0])
        else:
            slope = max(times[1] - times[0], 0.0) / (sizes[1] - sizes[0])
            estimates.append(max(times[1] + slope * (n_train - sizes[1]), times[1]))
    return float(np.mean(estimates)) if estimates else 0.0


def cross_fit(
    model,
    plan: Callable[[Any], list[Nuisance]],
    executor,
    granularity: str = "auto",
    skip: dict[str, set] | None = None,
    n_jobs: int | None = 1,
    return_models: bool = False,
    progress: bool | None = None,
) -> CrossFit:
    """Compute every nuisance prediction of ``model`` (all treatments, repetitions, folds) remotely.

    ``skip`` names, per treatment column, nuisances that need no fit (the caller has predictions).
    ``progress``: a bar over the tasks (None: if someone watches, see :mod:`lambdamap.progress`).
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    run = _Run(model, plan_treatments(model, plan, skip or {}), executor, n_jobs, return_models)
    run.choose_granularity(granularity)
    run.submit_first_stage()
    with TaskBar(progress, run.expected_tasks(), desc="cross-fitting", unit="task") as bar:
        run.collect(bar)
    return run.result()


def plan_treatments(model, plan: Callable[[Any], list[Nuisance]], skip: dict[str, set]) -> dict[int, list[Nuisance]]:
    """The plan of each treatment variable, set up as doubleml's ``fit`` sets it up."""
    data, d_cols = model._dml_data, list(model._dml_data.d_cols)
    plans = {}
    try:
        for i_treat, d_col in enumerate(d_cols):
            model._i_treat = i_treat
            if data.n_treat > 1:  # as doubleml's fit: the other treatments become covariates
                data.set_x_d(d_col)
            plans[i_treat] = [n for n in plan(model) if n.name not in skip.get(d_col, ())]
    finally:
        if data.n_treat > 1:
            data.set_x_d(d_cols[0])
        model._i_treat = None
    return plans


class _Run:
    """One cross-fitting: stores the inputs, submits tasks, gathers what they return."""

    def __init__(self, model, plans: dict[int, list[Nuisance]], executor, n_jobs, return_models):
        self.model, self.plans, self.executor = model, plans, executor
        self.n_jobs, self.return_models = n_jobs, return_models
        self.d_cols = list(model._dml_data.d_cols)
        self.smpls = model.smpls
        self.stored_bytes = 0
        self.stored_objects = 0
        # the data go to the store once; a task needs only its own repetition's splits
        self.data_refs = {i: self.store({n.name: {"x": n.x, "y": n.y, "train_rows": n.train_rows, "method": n.method}
                                         for n in nuisances})
                          for i, nuisances in plans.items()}
        self.smpls_refs = [self.store(folds) for folds in self.smpls]
        self.first_stage = [(i, n) for i, ns in plans.items() for n in ns if n.second_stage is None]
        self.second_stage = [(i, n) for i, ns in plans.items() for n in ns if n.second_stage is not None]
        self.granularity, self.fit_estimate = "rep", None
        self.workers = parallelism(executor)
        # predictions per (treatment, nuisance): rows of the nuisance's data x repetitions
        self.raw = {(i, n.name): np.full((n.x.shape[0], model.n_rep), np.nan) for i, ns in plans.items() for n in ns}
        self.targets = {(i, r): {n.name: n.target for n in plans[i] if n.target is not None}
                        for i in plans for r in range(model.n_rep)}
        self.models: dict[tuple[int, int], dict[str, dict]] = {}
        self.tasks: list[Task] = []
        self.by_future: dict[concurrent.futures.Future, Task] = {}
        self.pending: set = set()
        self.first_left: dict[tuple[int, int], int] = {}  # unfinished first-stage tasks per (treatment, rep)

    def store(self, obj):
        put = getattr(self.executor, "put", None)
        if put is None:  # a plain concurrent.futures executor: objects travel inline
            return obj
        ref = put(obj)
        self.stored_bytes += ref.nbytes
        self.stored_objects += 1
        return ref

    def choose_granularity(self, granularity: str) -> None:
        if granularity == "auto":
            self.fit_estimate = estimate_fit_seconds([n for i, n in self.first_stage if i == 0], self.model.learner,
                                                     self.smpls, self.n_jobs)
            n_fits = sum(len(folds) for folds in self.smpls) * (len(self.first_stage) + len(self.second_stage))
            granularity = choose_granularity(self.fit_estimate, n_fits, max(len(f) for f in self.smpls),
                                             self.workers, invocation_overhead(self.executor))
        self.granularity = granularity

    def submit(self, i_treat: int, nuis: Nuisance, rep: int, stage: int, y_ref=None) -> None:
        params = self.model._params[nuis.name][self.d_cols[i_treat]][rep]  # None or one dict per fold
        folds = list(range(len(self.smpls[rep])))
        for group in ([[f] for f in folds] if self.granularity == "fold" else [folds]):
            units = [(f, None if params is None else params[f]) for f in group]
            future = self.executor.submit(fit_predict, self.data_refs[i_treat], self.smpls_refs[rep],
                                          self.model.learner[nuis.learner], nuis.name, units, y=y_ref,
                                          n_jobs=self.n_jobs, return_models=self.return_models)
            task = Task(i_treat, nuis.name, rep, group, stage, future)
            self.tasks.append(task)
            self.by_future[future] = task
            self.pending.add(future)
            if stage == 1:
                self.first_left[(i_treat, rep)] = self.first_left.get((i_treat, rep), 0) + 1

    def submit_first_stage(self) -> None:
        # repetition-major order: a repetition's first stage completes early, so its second starts early
        for rep in range(self.model.n_rep):
            for i_treat, nuis in self.first_stage:
                self.submit(i_treat, nuis, rep, stage=1)

    def expected_tasks(self) -> int:
        """Tasks of the whole cross-fitting, second stages included (known once granularity is)."""
        nuisances = len(self.first_stage) + len(self.second_stage)
        return sum(nuisances * (len(folds) if self.granularity == "fold" else 1) for folds in self.smpls)

    def collect(self, bar: TaskBar | None = None) -> None:
        try:
            while self.pending:
                done, self.pending = concurrent.futures.wait(self.pending,
                                                             return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    if bar is not None:
                        bar.done(failed=future.cancelled() or future.exception() is not None)
                    self.on_done(self.by_future[future], future.result())  # a remote exception re-raises here
        except BaseException:
            for future in self.pending:
                future.cancel()
            raise

    def on_done(self, task: Task, result: dict) -> None:
        task.result = result
        column = self.raw[(task.i_treat, task.name)][:, task.rep]
        for fold, pred in zip(task.folds, result["preds"]):
            column[self.smpls[task.rep][fold][1]] = pred
        if self.return_models:
            per_fold = self.models.setdefault((task.i_treat, task.rep), {}).setdefault(task.name, {})
            per_fold.update(zip(task.folds, result["models"]))
        if task.stage == 1:
            key = (task.i_treat, task.rep)
            self.first_left[key] -= 1
            if self.first_left[key] == 0:
                for i_treat, nuis in self.second_stage:
                    if i_treat == task.i_treat:
                        y2 = nuis.second_stage(self.rep_predictions(i_treat, task.rep))
                        self.targets[key][nuis.name] = y2
                        self.submit(i_treat, nuis, task.rep, stage=2, y_ref=self.store(y2))

    def rep_predictions(self, i_treat: int, rep: int) -> dict[str, np.ndarray]:
        """One repetition's predictions, adjusted as doubleml adjusts its own (PLPR cre_general)."""
        preds = {}
        for n in self.plans[i_treat]:
            column = self.raw[(i_treat, n.name)][:, rep]
            preds[n.name] = n.adjust(column) if n.adjust is not None else column
        return preds

    def result(self) -> CrossFit:
        n_obs, n_rep = self.model.n_obs, self.model.n_rep
        predictions: dict[str, dict[str, np.ndarray]] = {}
        for i_treat, nuisances in self.plans.items():
            for nuis in nuisances:
                preds = np.column_stack([self.rep_predictions(i_treat, r)[nuis.name] for r in range(n_rep)])
                predictions.setdefault(self.d_cols[i_treat], {})[nuis.name] = _scatter(preds, nuis.positions, n_obs)
                for r in range(n_rep):
                    targets = self.targets[(i_treat, r)]
                    if nuis.name in targets:
                        targets[nuis.name] = _scatter(targets[nuis.name], nuis.positions, n_obs)
        models = {key: {name: [fits[f] for f in sorted(fits)] for name, fits in per_name.items()}
                  for key, per_name in self.models.items()}
        return CrossFit(predictions, self.targets, models, self.tasks, self.granularity, self.fit_estimate,
                        stored_bytes=self.stored_bytes, parallelism=self.workers,
                        stored_objects=self.stored_objects)


def _scatter(values: np.ndarray, positions: np.ndarray | None, n_obs: int) -> np.ndarray:
    """Rows of a model's data subset -> its n_obs-long vectors (NaN elsewhere), as doubleml's DID does."""
    if positions is None:
        return values
    out = np.full((n_obs,) + values.shape[1:], np.nan)
    out[positions] = values
    return out
