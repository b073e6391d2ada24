"""A job's timeline: each call on its worker over time, and concurrency over time.

:func:`plot` draws one PNG from a metrics table — ``Executor.metrics()`` (or ``ex.plot(path)``),
``dml``'s ``model.task_metrics``, the executor that grew a ``forest`` — in two panels sharing the
time axis (seconds since the first call was submitted):

* **calls per worker**: a lane per worker (process or Lambda execution environment), a bar per
  call from its start to its end, blue if it returned and red if it raised, after a thin grey
  bar for its invocation's start-up (reading the function and arguments: on a cold worker, the
  imports); a triangle marks a cold start (the worker's first call) and the top lane ticks each
  submission;
* **concurrency**: how many calls ran, and how many were submitted but not yet started.

:func:`segments` and :func:`concurrency` are the numbers drawn, as tables. matplotlib is needed
for :func:`plot` only (``pip install lambdamap[plot]``).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

#: Above this many workers the lanes are not labelled one by one.
MAX_LABELLED_LANES = 24


def segments(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per call that ran: ``call_id``, ``worker``, ``lane`` (0 for the worker that
    started first), ``submitted``, ``start``, ``end`` (seconds since the first submission, or
    the first start if submission times are unknown), ``setup_start`` (for the first call of an
    invocation: when the invocation began, before it read the function and arguments; else
    NaN), ``cold`` and ``failed``."""
    import numpy as np
    import pandas as pd

    frame = _check(metrics)
    origin = _origin(frame)
    ran = frame[frame["started"].notna() & frame["finished"].notna()].sort_values("started")
    workers = ran["worker"].fillna("?").astype(str) if "worker" in ran else pd.Series(
        "?", index=ran.index)
    lanes = {name: i for i, name in enumerate(dict.fromkeys(workers))}
    submitted = (ran["submitted"].astype(float) - origin if "submitted" in ran
                 else pd.Series(np.nan, index=ran.index))
    ok = ran["ok"] if "ok" in ran else pd.Series(True, index=ran.index)
    setup = pd.Series(np.nan, index=ran.index)
    if "invocation_started" in ran and "invocation" in ran:
        first = ~ran["invocation"].duplicated() | ran["invocation"].isna()  # sorted by start
        setup[first] = ran.loc[first, "invocation_started"].astype(float) - origin
    out = pd.DataFrame({
        "call_id": ran["call_id"] if "call_id" in ran else ran.index,
        "worker": workers,
        "lane": workers.map(lanes).astype(int),
        "submitted": submitted,
        "start": ran["started"].astype(float) - origin,
        "end": ran["finished"].astype(float) - origin,
        "setup_start": setup,
        "cold": _cold(ran),
        "failed": [v is False or v == 0 for v in ok],
    })
    return out.reset_index(drop=True)


def concurrency(metrics: pd.DataFrame) -> pd.DataFrame:
    """A step function: at each ``time`` (seconds, as in :func:`segments`) how many calls are
    ``running`` and how many are ``waiting`` (submitted, not started), until the next row."""
    import pandas as pd

    seg = segments(metrics)
    changes = ([(t, 1, 0) for t in seg["start"]] + [(t, -1, 0) for t in seg["end"]]
               + [(t, 0, 1) for t in seg["submitted"].dropna()]
               + [(t, 0, -1) for t, s in zip(seg["start"], seg["submitted"]) if s == s])
    if not changes:
        return pd.DataFrame({"time": [], "running": [], "waiting": []})
    steps = pd.DataFrame(changes, columns=["time", "running", "waiting"])
    steps = steps.groupby("time", sort=True).sum().cumsum().reset_index()
    return steps.astype({"running": int, "waiting": int})


def plot(metrics: pd.DataFrame, path: str | os.PathLike | None = None, *,
         title: str | None = None, dpi: int = 110):
    """Draw the timeline of ``metrics`` and save it as a PNG at ``path`` (if given); returns
    the matplotlib ``Figure``.

    Example::

        with Executor() as ex:
            list(ex.map(work, range(100)))
        ex.plot("timeline.png")          # = lambdamap.timeline.plot(ex.metrics(), "timeline.png")
    """
    Figure = _matplotlib_figure()
    from matplotlib.ticker import MaxNLocator

    seg = segments(metrics)
    steps = concurrency(metrics)
    lanes = int(seg["lane"].max()) + 1 if len(seg) else 0
    workers = list(dict.fromkeys(seg["worker"]))
    figure = Figure(figsize=(11, 6.5), dpi=dpi, layout="constrained")
    calls_ax, load_ax = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1.3])

    setup = seg[seg["setup_start"] < seg["start"]]
    if len(setup):
        calls_ax.barh(setup["lane"], setup["start"] - setup["setup_start"],
                      left=setup["setup_start"], height=0.35, color="0.75",
                      label="invocation start-up (function, arguments)")
    for failed, color, label in ((False, "tab:blue", "call"), (True, "tab:red", "call failed")):
        part = seg[seg["failed"] == failed]
        if len(part):
            calls_ax.barh(part["lane"], part["end"] - part["start"], left=part["start"],
                          height=0.7, color=color, edgecolor="white", linewidth=0.3, label=label)
    cold = seg[seg["cold"]]
    if len(cold):  # at the invocation's start where known: a cold start's cost is paid there
        calls_ax.scatter(cold["setup_start"].fillna(cold["start"]), cold["lane"], marker=">",
                         color="tab:orange", s=28, zorder=3, label="cold start")
    submitted = seg["submitted"].dropna()
    if len(submitted):  # a lane of its own above the workers'
        calls_ax.eventplot([submitted.to_numpy()], lineoffsets=-1, linelengths=0.7,
                           colors="0.45", linewidths=0.6)
    ticks = ([-1] if len(submitted) else []) + list(range(lanes))
    names = [_short(w) for w in workers] if lanes <= MAX_LABELLED_LANES else [""] * lanes
    calls_ax.set_yticks(ticks, (["submitted"] if len(submitted) else []) + names)
    calls_ax.set_ylim(max(lanes - 1, 0) + 0.7, min(ticks, default=0) - 0.7)  # lane 0 on top
    calls_ax.set_ylabel(f"worker ({len(workers)})")
    calls_ax.grid(axis="x", alpha=0.3)
    if len(seg):
        calls_ax.legend(loc="upper right", fontsize="small", framealpha=0.9)
    n_failed, n_cold = int(seg["failed"].sum()), int(seg["cold"].sum())
    calls_ax.set_title(title or (f"{len(seg)} calls on {len(workers)} workers, {n_cold} cold "
                                 f"starts, {n_failed} failed"
                                 + _not_run(metrics, len(seg))))

    if len(steps):
        load_ax.step(steps["time"], steps["running"], where="post", color="tab:blue",
                     label="running")
        if steps["waiting"].any():
            load_ax.step(steps["time"], steps["waiting"], where="post", color="0.5",
                         linestyle="--", label="waiting (submitted, not started)")
        load_ax.legend(loc="upper right", fontsize="small", framealpha=0.8)
    load_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    load_ax.set_ylabel("calls")
    load_ax.set_xlabel("seconds since the first submission")
    load_ax.set_ylim(bottom=0)
    load_ax.grid(alpha=0.3)
    if path is not None:
        figure.savefig(os.fspath(path))
    return figure


# -- helpers ------------------------------------------------------------------------------------


def _matplotlib_figure():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("lambdamap's timeline plot needs matplotlib: "
                          "pip install 'lambdamap[plot]' (or pip install matplotlib)") from None
    return Figure


def _check(metrics: pd.DataFrame) -> pd.DataFrame:
    missing = {"started", "finished"} - set(getattr(metrics, "columns", ()))
    if missing:
        raise ValueError(f"a timeline needs per-call 'started' and 'finished' times (epoch "
                         f"seconds), as in Executor.metrics(); missing: {sorted(missing)}")
    return metrics


def _origin(frame: pd.DataFrame) -> float:
    import numpy as np

    times = [frame[c].astype(float).min() for c in ("submitted", "started") if c in frame]
    times = [t for t in times if not np.isnan(t)]
    return min(times) if times else 0.0


def _cold(frame: pd.DataFrame) -> list[bool]:
    if "cold" in frame:
        return [v is True or v == 1 for v in frame["cold"]]
    if "warm" in frame:
        return [v is False or v == 0 for v in frame["warm"]]
    return [False] * len(frame)


def _not_run(metrics: pd.DataFrame, ran: int) -> str:
    left = len(metrics) - ran
    return f", {left} never ran" if left else ""


def _short(worker: Any) -> str:
    """A worker id short enough for a label: a Lambda log stream's tail, a process's pid."""
    text = str(worker)
    if "]" in text:  # 2025/01/01/[$LATEST]0123456789abcdef
        return text.rsplit("]", 1)[1][:8]
    return text.rsplit(":", 1)[-1][:12]
