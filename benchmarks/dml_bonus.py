"""Benchmark: DoubleML PLR on the bonus data, lambdamap's local backend vs doubleml's ``fit(n_jobs_cv=2)``.

    .venv/bin/python benchmarks/dml_bonus.py [--repeats 3] [--variants auto,fold,rep]

Both sides fit the same learners (random forests, 100 trees, integer seeds, ``n_jobs=1`` inside
each fit) on the same sample splits (5 folds x 10 repetitions = 100 fits), with two processes each:
doubleml's joblib pool (``n_jobs_cv=2``, parallel over the folds of one nuisance at a time) and two
lambdamap workers (parallel over everything: repetitions, learners and folds). ``n_jobs`` does not
change a forest's result, so the estimates must be identical; the script checks it. Each side runs
once untimed (worker pools start, imports happen), then the timed repeats rotate the order. Writes
benchmarks/results/dml_bonus.json and .png.

It also projects the full case study (500 trees, n_rep=100: 1,000 fits) on AWS Lambda with 1,000
concurrent invocations from the per-fit durations measured here; the assumptions are in the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import doubleml  # noqa: E402
from sklearn.ensemble import RandomForestRegressor  # noqa: E402

import dml  # noqa: E402
from lambdamap import Executor  # noqa: E402
from lambda_projection import LAMBDA, cost_usd, remote_wall_seconds  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
N_FOLDS, N_REP, TREES = 5, 10, 100
FULL_TREES, FULL_REP = 500, 100  # the full case study, projected
WORKERS = 2

def learners(trees: int) -> tuple[RandomForestRegressor, RandomForestRegressor]:
    return (RandomForestRegressor(trees, random_state=1, n_jobs=1),
            RandomForestRegressor(trees, random_state=2, n_jobs=1))


def run_doubleml(data, smpls):
    model = doubleml.DoubleMLPLR(data, *learners(TREES), n_folds=N_FOLDS, n_rep=N_REP, draw_sample_splitting=False)
    model.set_sample_splitting(smpls)
    start = time.perf_counter()
    model.fit(n_jobs_cv=WORKERS)
    return time.perf_counter() - start, model


def run_lambdamap(data, smpls, executor, granularity):
    model = dml.DoubleMLPLRServerless(data, *learners(TREES), n_folds=N_FOLDS, n_rep=N_REP,
                                      draw_sample_splitting=False, executor=executor, granularity=granularity)
    model.set_sample_splitting(smpls)
    start = time.perf_counter()
    model.fit()
    return time.perf_counter() - start, model


def identical(a, b) -> bool:
    return (np.array_equal(a.coef, b.coef) and np.array_equal(a.se, b.se) and np.array_equal(a.all_coef, b.all_coef)
            and all(np.array_equal(a.predictions[k], b.predictions[k]) for k in a.predictions))


def time_full_fit(data, smpls, repeats: int = 2) -> list[float]:
    """Seconds of one fold's fit+predict with the full case study's 500-tree forest (a cross-check)."""
    train, test = smpls[0][0]
    times = []
    for seed in range(repeats):
        forest = RandomForestRegressor(FULL_TREES, random_state=seed, n_jobs=1)
        start = time.perf_counter()
        forest.fit(data.x[train], data.y[train])
        forest.predict(data.x[test])
        times.append(time.perf_counter() - start)
    return times


def project(per_fit_100: list[float], client_seconds_per_rep: float, full_fit_500: list[float]) -> dict:
    """Wall time and cost of the full case study on Lambda, one invocation per fold fit."""
    scale = FULL_TREES / TREES  # forest fit time grows linearly with the number of trees
    speed = LAMBDA["cpu_speed_vs_this_machine"]
    fits = N_FOLDS * FULL_REP * 2
    mean_fit = statistics.mean(per_fit_100) * scale / speed
    slowest_fit = max(per_fit_100) * scale / speed
    waves = -(-fits // LAMBDA["concurrency"])
    remote = remote_wall_seconds(fits, slowest_fit)
    client = client_seconds_per_rep * FULL_REP
    return {
        "fits": fits, "granularity": "fold (what auto picks with 1,000 workers)", "waves": waves,
        "mean_fit_s_500_trees (scaled from 100)": mean_fit, "slowest_fit_s_500_trees (scaled)": slowest_fit,
        "measured_fit_s_500_trees (cross-check)": statistics.mean(full_fit_500),
        "remote_wall_s": remote, "client_doubleml_estimation_s": client,
        "projected_wall_s": remote + client,
        "projected_local_2_cores_s": fits * mean_fit * speed / WORKERS,
        "projected_cost_usd": cost_usd(fits, mean_fit),
        "assumptions": LAMBDA,
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    names = list(results["times"])
    medians = [results["medians"][n] for n in names]
    lows = [m - min(results["times"][n]) for n, m in zip(names, medians)]
    highs = [max(results["times"][n]) - m for n, m in zip(names, medians)]
    colors = ["#888888"] + ["#1f77b4"] * (len(names) - 1)
    ax1.bar(names, medians, yerr=[lows, highs], color=colors, capsize=4)
    for i, m in enumerate(medians):
        ax1.text(i, m / 2, f"{m:.1f} s\n{m / medians[0]:.2f}x", ha="center", color="white", fontsize=9)
    ax1.set_ylabel("wall time (s), median of repeats, min-max bars")
    ax1.set_title(f"PLR, bonus data, RF {TREES} trees, {N_FOLDS} folds x {N_REP} reps, 2 processes", fontsize=9)
    ax1.tick_params(axis="x", labelsize=8)
    p = results["projection"]
    labels = ["local, 2 cores\n(projected)", f"Lambda, {LAMBDA['concurrency']} concurrent\n(projected)"]
    values = [p["projected_local_2_cores_s"], p["projected_wall_s"]]
    ax2.bar(labels, values, color=["#888888", "#ff7f0e"])
    for i, v in enumerate(values):
        ax2.text(i, v, f"{v:.0f} s", ha="center", va="bottom", fontsize=9)
    ax2.set_yscale("log")
    ax2.set_title(f"Full case study: RF {FULL_TREES} trees, n_rep={FULL_REP} (1,000 fits)", fontsize=9)
    ax2.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="auto,fold,rep", help="lambdamap granularities to time")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]

    data = dml.load_bonus()
    np.random.seed(3141)
    smpls = doubleml.DoubleMLPLR(data, *learners(1), n_folds=N_FOLDS, n_rep=N_REP).smpls
    names = ["doubleml n_jobs_cv=2"] + [f"lambdamap local ({v})" for v in variants]
    times: dict[str, list[float]] = {n: [] for n in names}
    same, last = True, {}
    with Executor(workers=WORKERS) as executor:
        runners = {names[0]: lambda: run_doubleml(data, smpls)}
        for name, v in zip(names[1:], variants):
            runners[name] = (lambda v=v: run_lambdamap(data, smpls, executor, v))
        print("warm-up (untimed): worker pools, imports, data in the store")
        reference = runners[names[0]]()[1]
        runners[names[1]]()
        for r in range(args.repeats):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                seconds, model = runners[name]()
                times[name].append(seconds)
                last[name] = model
                if name != names[0]:
                    same &= identical(model, reference)
                print(f"repeat {r + 1}/{args.repeats}  {name:28s} {seconds:6.2f} s")
        full_fit_500 = time_full_fit(data, smpls)

    medians = {n: statistics.median(t) for n, t in times.items()}
    auto = last[names[1]]
    tasks = auto.task_metrics
    per_fit = list((tasks["fit_seconds"] / tasks["folds"]).repeat(tasks["folds"]))
    m = auto.metrics["value"]
    client_per_rep = (m["wall-clock time (s)"] - m["cross-fitting wall time (s)"]) / N_REP
    results = {
        "command": "python benchmarks/dml_bonus.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "config": {"model": "DoubleMLPLR", "data": "bonus (5,099 rows, 15 covariates)", "trees": TREES,
                   "n_folds": N_FOLDS, "n_rep": N_REP, "processes": WORKERS, "repeats": args.repeats},
        "identical_estimates": bool(same),
        "coef": float(reference.coef[0]), "se": float(reference.se[0]),
        "times": times, "medians": medians,
        "ratio_vs_doubleml": {n: medians[n] / medians[names[0]] for n in names},
        "auto_granularity": m["granularity"], "auto_requests": int(m["requests"]),
        "auto_mean_bytes_in_per_task": float(m["mean bytes in per task"]),
        "auto_mean_bytes_out_per_task": float(m["mean bytes out per task"]),
        "measured_mean_fit_s_100_trees": statistics.mean(per_fit),
        "projection": project(per_fit, client_per_rep, full_fit_500),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dml_bonus.json").write_text(json.dumps(results, indent=2, default=float))
    plot(results, RESULTS / "dml_bonus.png")
    print(json.dumps({k: results[k] for k in ("identical_estimates", "medians", "ratio_vs_doubleml")}, indent=2))
    p = results["projection"]
    print(f"projected full case study on Lambda: {p['projected_wall_s']:.0f} s wall, ${p['projected_cost_usd']:.2f} "
          f"(local 2 cores: {p['projected_local_2_cores_s']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
