"""Fan the cross-fitting of one or more doubleml models out through an executor and gather the predictions.

The steps, for models whose plans (:mod:`dml.plans`) list their nuisance functions:

1. Each array (features, targets, subgroup masks) and each repetition's sample splits go to the
   executor's store once (``executor.put``, content-addressed: the feature matrix that several
   nuisances or several sub-models of a composite share is stored once); tasks carry references,
   the learner, and fold numbers.
2. Tasks are cut at the chosen granularity: one per (repetition, fold, nuisance) or one per
   (repetition, nuisance) with all its folds; ``"auto"`` picks by expected duration (see
   :func:`choose_granularity`). All models of one call — the sub-models of a composite — are one
   wave of tasks.
3. Second-stage nuisances (``ml_g`` of the IV-type scores) are submitted for a repetition as soon
   as that repetition's first stage is complete (or at once, when the first stage was given as
   ``external_predictions``).
4. Predictions are assembled per model into doubleml's ``external_predictions`` layout; targets and
   (optionally) fitted models are kept so that diagnostics equal those of a local fit, and the
   checks doubleml runs on its own predictions can run on these (:meth:`CrossFit.check`).
"""
from __future__ import annotations

import concurrent.futures
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import clone

from lambdamap.progress import TaskBar

from .plans import Nuisance, check_predictions
from .tasks import fit_predict, train_test

log = logging.getLogger(__name__)

GRANULARITIES = ("auto", "fold", "rep")

#: Expected fixed cost (seconds) of one invocation, by backend name, for granularity="auto":
#: local worker processes hand over a call in milliseconds; a Lambda invocation costs an invoke
#: request, S3 reads/writes of arguments, results and status, and the collector's polling.
INVOCATION_OVERHEAD_S = {"local": 0.02, "aws": 0.25}
DEFAULT_OVERHEAD_S = 0.25

#: Training-set sizes of the two local probe fits that estimate one fold's fit time (auto).
PROBE_ROWS = (200, 400)

#: Parallelism assumed on AWS: Lambda's default concurrency limit per account and region.
LAMBDA_CONCURRENCY = 1000


@dataclass
class Task:
    """One invocation: nuisance ``name`` of treatment ``i_treat`` of model ``model_index``, ``folds`` of ``rep``."""

    model_index: int
    i_treat: int
    name: str
    rep: int
    folds: list[int]
    stage: int
    future: concurrent.futures.Future
    result: dict | None = None


@dataclass
class Part:
    """The nuisances of one treatment variable of one model, and what their tasks returned."""

    model_index: int
    i_treat: int
    d_col: str
    nuisances: list[Nuisance]
    smpls: list                          # the model's sample splits, per repetition
    external: dict[str, np.ndarray]      # the user's predictions for this treatment, (n_obs, n_rep)
    n_rep: int
    refs: dict[str, dict] = field(default_factory=dict)      # per nuisance: stored x, y, train_rows
    smpls_refs: list = field(default_factory=list)
    raw: dict[str, np.ndarray] = field(default_factory=dict)  # per nuisance: (rows, n_rep) predictions
    targets: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)       # rep -> nuisance -> target
    models: dict[int, dict[str, dict[int, Any]]] = field(default_factory=dict)    # rep -> nuisance -> fold -> model
    first_left: dict[int, int] = field(default_factory=dict)  # rep -> unfinished first-stage tasks

    def __post_init__(self):
        self.raw = {n.name: np.full((n.x.shape[0], self.n_rep), np.nan) for n in self.nuisances}
        self.targets = {r: {n.name: n.target for n in self.nuisances if n.target is not None} for r in range(self.n_rep)}

    @property
    def first_stage(self) -> list[Nuisance]:
        return [n for n in self.nuisances if n.second_stage is None]

    @property
    def second_stage(self) -> list[Nuisance]:
        return [n for n in self.nuisances if n.second_stage is not None]

    def rep_predictions(self, rep: int) -> dict[str, np.ndarray]:
        """One repetition's predictions as doubleml uses them: ours adjusted (PLPR cre_general), the user's as given.

        The user's (external) columns are n_obs long, which equals the rows of the models that
        have second stages (PLR, PLIV, PLPR; only DID subsets rows, and it has no second stage).
        """
        preds = {name: values[:, rep] for name, values in self.external.items()}
        for n in self.nuisances:
            column = self.raw[n.name][:, rep]
            preds[n.name] = n.adjust(column) if n.adjust is not None else column
        return preds


@dataclass
class CrossFit:
    """Everything the remote cross-fitting produced for one model."""

    parts: dict[int, Part]           # by treatment index
    n_obs: int
    tasks: list[Task]
    granularity: str
    fit_seconds_estimate: float | None
    stored_bytes: int = 0
    parallelism: int = 1

    @property
    def predictions(self) -> dict[str, dict[str, np.ndarray]]:
        """``{d_col: {nuisance: (n_obs, n_rep)}}``: doubleml's ``external_predictions`` layout."""
        out: dict[str, dict[str, np.ndarray]] = {}
        for part in self.parts.values():
            for nuis in part.nuisances:
                preds = np.column_stack([part.rep_predictions(r)[nuis.name] for r in range(part.n_rep)])
                out.setdefault(part.d_col, {})[nuis.name] = _scatter(preds, nuis.positions, self.n_obs)
        return out

    def targets(self, i_treat: int, rep: int) -> dict[str, np.ndarray]:
        """What doubleml records as each remote nuisance's target (n_obs long) in repetition ``rep``."""
        part = self.parts.get(i_treat)
        if part is None:
            return {}
        positions = {n.name: n.positions for n in part.nuisances}
        return {name: _scatter(t, positions[name], self.n_obs) for name, t in part.targets[rep].items()
                if name in positions}

    def models(self, i_treat: int, rep: int) -> dict[str, list]:
        """The fitted per-fold models of each remote nuisance (``return_models=True``)."""
        part = self.parts.get(i_treat)
        per_name = part.models.get(rep, {}) if part is not None else {}
        return {name: [fits[f] for f in sorted(fits)] for name, fits in per_name.items()}

    def check(self, model, i_treat: int, rep: int) -> None:
        """doubleml's checks of its own predictions, on the remote ones of (treatment, repetition)."""
        part = self.parts.get(i_treat)
        if part is None:
            return
        preds = part.rep_predictions(rep)
        for nuis in part.nuisances:
            check_predictions(model, nuis, preds[nuis.name], part.smpls[rep])


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
    return INVOCATION_OVERHEAD_S.get(name, DEFAULT_OVERHEAD_S) if isinstance(name, str) else DEFAULT_OVERHEAD_S


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


def estimate_fit_seconds(nuisances: list[Nuisance], learners: dict, smpls: list, n_jobs: int | None) -> float | None:
    """Seconds of one fold's fit+predict, mean over nuisances, from two small local probe fits.

    Each learner is fitted on ``PROBE_ROWS`` training rows (a fixed random subset, so the global
    random state is untouched) and the time is extrapolated linearly to the fold's training size.
    A probe that fails (e.g. a class absent from its rows) is left out; ``None`` if all fail.
    """
    rng = np.random.default_rng(0)
    estimates = []
    for nuis in nuisances:
        train, _ = train_test(smpls[0], 0, nuis.train_rows)
        n_train = len(train)
        sizes = [s for s in PROBE_ROWS if s < n_train] or [n_train]
        order = rng.permutation(train)
        times = []
        try:
            for size in sizes:
                rows = np.sort(order[:size])
                estimator = clone(learners[nuis.learner])
                if n_jobs is not None and "n_jobs" in estimator.get_params(deep=False):
                    estimator.set_params(n_jobs=n_jobs)
                start = time.perf_counter()
                estimator.fit(nuis.x[rows], nuis.y[rows])  # type: ignore[index]  # first stages have y
                getattr(estimator, nuis.method)(nuis.x[rows])
                times.append(time.perf_counter() - start)
        except Exception as exc:  # noqa: BLE001 - a probe's failure only means no estimate
            log.info("granularity probe of %s failed (%s: %s); left out", nuis.name, type(exc).__name__, exc)
            continue
        if len(times) == 1:
            estimates.append(times[0] * n_train / sizes[0])
        else:
            slope = max(times[1] - times[0], 0.0) / (sizes[1] - sizes[0])
            estimates.append(max(times[1] + slope * (n_train - sizes[1]), times[1]))
    return float(np.mean(estimates)) if estimates else None


def plan_treatments(model, skip: dict[str, set]) -> dict[int, list[Nuisance]]:
    """The plan of each treatment variable, set up as doubleml's ``fit`` sets it up.

    ``skip`` names, per treatment column, the nuisances the user gave as external predictions:
    they are not fitted, nor are those that doubleml skips because of them.
    """
    data, d_cols = model._dml_data, list(model._dml_data.d_cols)
    plan = type(model)._plan
    plans = {}
    try:
        for i_treat, d_col in enumerate(d_cols):
            model._i_treat = i_treat
            if data.n_treat > 1:  # as doubleml's fit: the other treatments become covariates
                data.set_x_d(d_col)
            given = skip.get(d_col, set())
            plans[i_treat] = [n for n in plan(model) if n.name not in given and not given & set(n.skipped_with)]
    finally:
        if data.n_treat > 1:
            data.set_x_d(d_cols[0])
        model._i_treat = None
    return plans


def cross_fit(
    models: list,
    executor,
    granularity: str = "auto",
    external: list[dict | None] | None = None,
    n_jobs: int | None = 1,
    return_models: bool = False,
) -> list[CrossFit]:
    """Compute every nuisance prediction of ``models`` (all treatments, repetitions, folds) remotely, in one wave.

    ``external`` gives, per model, the user's ``external_predictions`` (``{d_col: {nuisance:
    (n_obs, n_rep)}}``): those nuisances are not fitted, and second stages use them.
    """
    run = CrossFitRun(models, external, n_jobs, return_models)
    run.execute(executor, granularity)
    return run.result()


class CrossFitRun:
    """One cross-fitting of one or more models: plans on construction; stores, submits and gathers in :meth:`execute`.

    ``parts`` is empty when every prediction was given as external: then nothing needs an executor.
    """

    def __init__(self, models: list, external: list[dict | None] | None = None, n_jobs: int | None = 1,
                 return_models: bool = False):
        self.models = models
        self.n_jobs, self.return_models = n_jobs, return_models
        self.executor: Any = None  # set by execute()
        self.stored_bytes = [0] * len(models)
        self._stored: dict[int, tuple[Any, Any]] = {}  # id(object) -> (object, reference)
        self.parts: list[Part] = []
        for k, (model, ext) in enumerate(zip(models, external or [None] * len(models))):
            ext = ext or {}
            d_cols = list(model._dml_data.d_cols)
            skip = {d: set(p) for d, p in ext.items()}
            for i_treat, nuisances in plan_treatments(model, skip).items():
                if nuisances:
                    self.parts.append(Part(k, i_treat, d_cols[i_treat], nuisances, model.smpls,
                                           dict(ext.get(d_cols[i_treat], {})), model.n_rep))
        self.granularity: str | None = None  # set by execute(); None: nothing ran
        self.fit_estimate: float | None = None
        self.workers: int = 1
        self.tasks: list[Task] = []
        self.by_future: dict[concurrent.futures.Future, tuple[Part, Task]] = {}
        self.pending: set = set()

    def execute(self, executor, granularity: str = "auto", progress: bool | None = None) -> None:
        """Store the data, submit every task (second stages as their first stages finish), gather the results.

        ``progress``: a bar over the tasks (None: if someone watches, see :mod:`lambdamap.progress`).
        """
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        if not self.parts:
            return
        self.executor = executor
        self.workers = parallelism(executor)
        for part in self.parts:  # the data go to the store once; a task needs only its repetition's splits
            part.refs = {n.name: {"x": self.store(n.x, part), "y": self.store(n.y, part),
                                  "train_rows": self.store(n.train_rows, part), "method": n.method}
                         for n in part.nuisances}
            part.smpls_refs = [self.store(folds, part) for folds in part.smpls]
        self.choose_granularity(granularity)
        self.submit_first_stage()
        with TaskBar(progress, self.expected_tasks(), desc="cross-fitting", unit="task") as bar:
            self.collect(bar)

    def expected_tasks(self) -> int:
        """Tasks of the whole cross-fitting, second stages included (known once granularity is)."""
        return sum(len(part.nuisances) * (len(folds) if self.granularity == "fold" else 1)
                   for part in self.parts for folds in part.smpls)

    def store(self, obj, part: Part):
        """A reference to ``obj`` in the executor's store (once per object); ``obj`` itself without one."""
        put = getattr(self.executor, "put", None)
        if obj is None or put is None:  # a plain concurrent.futures executor: objects travel inline
            return obj
        if id(obj) not in self._stored:
            ref = put(obj)
            self._stored[id(obj)] = (obj, ref)  # the object is kept so that its id is not reused
            self.stored_bytes[part.model_index] += ref.nbytes
        return self._stored[id(obj)][1]

    def choose_granularity(self, granularity: str) -> None:
        if granularity == "auto":
            probe = next((p for p in self.parts if p.first_stage), self.parts[0])
            self.fit_estimate = estimate_fit_seconds(probe.first_stage, self.models[probe.model_index].learner,
                                                     probe.smpls, self.n_jobs)
            if self.fit_estimate is None:  # no probe could fit: one task per fold is always right
                granularity = "fold"
            else:
                n_fits = sum(len(folds) * len(p.nuisances) for p in self.parts for folds in p.smpls)
                n_folds = max(len(folds) for p in self.parts for folds in p.smpls)
                granularity = choose_granularity(self.fit_estimate, n_fits, n_folds, self.workers,
                                                 invocation_overhead(self.executor))
        self.granularity = granularity

    def submit(self, part: Part, nuis: Nuisance, rep: int, stage: int, y_ref=None) -> None:
        model = self.models[part.model_index]
        params = model._params[nuis.name][part.d_col][rep]  # None or one dict per fold
        folds = list(range(len(part.smpls[rep])))
        assert nuis.second_stage is None or y_ref is not None, "a second stage needs its target"
        for group in ([[f] for f in folds] if self.granularity == "fold" else [folds]):
            units = [(f, None if params is None else params[f]) for f in group]
            future = self.executor.submit(fit_predict, part.refs[nuis.name], part.smpls_refs[rep],
                                          model.learner[nuis.learner], nuis.name, units, y=y_ref,
                                          n_jobs=self.n_jobs, return_models=self.return_models)
            task = Task(part.model_index, part.i_treat, nuis.name, rep, group, stage, future)
            self.tasks.append(task)
            self.by_future[future] = (part, task)
            self.pending.add(future)
            if stage == 1:
                part.first_left[rep] = part.first_left.get(rep, 0) + 1

    def submit_second_stage(self, part: Part, rep: int) -> None:
        for nuis in part.second_stage:
            assert nuis.second_stage is not None
            y2 = nuis.second_stage(part.rep_predictions(rep))
            part.targets[rep][nuis.name] = y2
            self.submit(part, nuis, rep, stage=2, y_ref=self.store(y2, part))

    def submit_first_stage(self) -> None:
        # repetition-major order: a repetition's first stage completes early, so its second starts early
        for rep in range(max(p.n_rep for p in self.parts)):
            for part in self.parts:
                for nuis in part.first_stage:
                    self.submit(part, nuis, rep, stage=1)
                if not part.first_stage:  # the whole first stage is external: the second can start now
                    self.submit_second_stage(part, rep)

    def collect(self, bar: TaskBar | None = None) -> None:
        try:
            while self.pending:
                done, self.pending = concurrent.futures.wait(self.pending,
                                                             return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    if bar is not None:
                        bar.done(failed=future.cancelled() or future.exception() is not None)
                    part, task = self.by_future[future]
                    self.on_done(part, task, future.result())  # a remote exception re-raises here
        except BaseException:
            for future in self.pending:
                future.cancel()
            raise

    def on_done(self, part: Part, task: Task, result: dict) -> None:
        task.result = result
        column = part.raw[task.name][:, task.rep]
        for fold, pred in zip(task.folds, result["preds"]):
            test = part.smpls[task.rep][fold][1]
            pred = np.asarray(pred)
            if pred.shape != (len(test),):
                learner = self.models[part.model_index].learner[next(n.learner for n in part.nuisances
                                                                     if n.name == task.name)]
                raise ValueError(f"Predictions from learner {learner} for {task.name} have shape {pred.shape} "
                                 f"on fold {fold} of repetition {task.rep}; expected ({len(test)},): one "
                                 "value per test row.")
            column[test] = pred
        if self.return_models:
            part.models.setdefault(task.rep, {}).setdefault(task.name, {}).update(zip(task.folds, result["models"]))
        if task.stage == 1:
            part.first_left[task.rep] -= 1
            if part.first_left[task.rep] == 0:
                self.submit_second_stage(part, task.rep)

    def result(self) -> list[CrossFit]:
        return [CrossFit({p.i_treat: p for p in self.parts if p.model_index == k}, model.n_obs,
                         [t for t in self.tasks if t.model_index == k], self.granularity or "none", self.fit_estimate,
                         stored_bytes=self.stored_bytes[k], parallelism=self.workers)
                for k, model in enumerate(self.models)]


def _scatter(values: np.ndarray, positions: np.ndarray | None, n_obs: int) -> np.ndarray:
    """Rows of a model's data subset -> its n_obs-long vectors (NaN elsewhere), as doubleml's DID does."""
    if positions is None:
        return values
    out = np.full((n_obs,) + values.shape[1:], np.nan)
    out[positions] = values
    return out
