"""Benchmark: doubleml's composite models, lambdamap's local backend vs doubleml's ``fit(n_jobs_models=2)``.

    .venv/bin/python benchmarks/dml_composite.py [--repeats 3] [--trees 50] [--quick]

Two composites, each fitted by both sides on the same sample splits with the same seeded random
forests (``n_jobs=1`` inside each fit), two processes each:

* ``DoubleMLAPOS``: 5 treatment levels (2,000 rows, ``make_irm_data_discrete_treatments``),
  5 folds x 2 repetitions: 5 sub-models x 3 nuisances x 10 = 150 fits;
* ``DoubleMLDIDMulti``: 12 (g, t_pre, t_eval) cells (1,000 units x 5 periods, ``make_did_CS2021``),
  5 folds: 12 sub-models x 3 nuisances x 5 = 180 fits.

doubleml's ``fit(n_jobs_models=2)`` runs the sub-models in a joblib pool of 2 (each sub-model's
fits in sequence); ``DoubleML<...>Serverless`` with ``lambdamap.Executor(workers=2)`` submits all
fits of all sub-models as one wave. Estimates must be equal (``==``); the script checks. One
untimed warm-up each, then timed repeats in rotated order; the machine's load average is recorded
before each timed fit. A projection to AWS Lambda at 1,000 concurrent invocations uses the per-fit
times measured here (assumptions in ``benchmarks/lambda_projection.py`` and the JSON). Writes
benchmarks/results/dml_composite.json and .png (``--quick``: results/scratch/).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import doubleml  # noqa: E402
from doubleml.did.datasets import make_did_CS2021  # noqa: E402
from doubleml.irm.datasets import make_irm_data_discrete_treatments  # noqa: E402
from lambda_projection import LAMBDA, cost_usd, remote_wall_seconds  # noqa: E402
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor  # noqa: E402

import dml  # noqa: E402
from lambdamap import Executor  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
WORKERS = 2
SEED = 3141


def learners(trees: int) -> dict:
    return {"ml_g": RandomForestRegressor(trees, max_depth=8, random_state=1, n_jobs=1),
            "ml_m": RandomForestClassifier(trees, max_depth=8, random_state=2, n_jobs=1)}


def cases(trees: int, quick: bool) -> dict:
    """name -> (doubleml class, serverless class, data, constructor kwargs, fits)."""
    scale = 4 if quick else 1
    disc = make_irm_data_discrete_treatments(n_obs=2000 // scale, n_levels=4, random_state=1)
    apo_data = doubleml.DoubleMLData.from_arrays(disc["x"], disc["y"], disc["d"])
    levels = sorted(np.unique(disc["d"]))
    np.random.seed(1)
    df = make_did_CS2021(n_obs=1000 // scale, dgp_type=1, time_type="float")
    did_data = doubleml.DoubleMLPanelData(df, y_col="y", d_cols="d", id_col="id", t_col="t",
                                          x_cols=["Z1", "Z2", "Z3", "Z4"])
    return {
        "DoubleMLAPOS (5 levels)": (doubleml.DoubleMLAPOS, dml.DoubleMLAPOSServerless, apo_data,
                                    dict(treatment_levels=levels, n_folds=5, n_rep=2, **learners(trees)),
                                    len(levels) * 3 * 5 * 2),
        "DoubleMLDIDMulti (12 cells)": (doubleml.did.DoubleMLDIDMulti, dml.DoubleMLDIDMultiServerless, did_data,
                                        dict(gt_combinations="standard", n_folds=5, **learners(trees)), 12 * 3 * 5),
    }


def fit(cls, data, kwargs, **fit_kwargs):
    np.random.seed(SEED)  # the same sample splits on both sides (drawn at construction)
    model = cls(data, **kwargs)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    model.fit(**fit_kwargs)
    return time.perf_counter() - start, model, load


def equal(a, b) -> bool:
    return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("coef", "se", "all_coef", "all_se"))


def project(model, fits: int) -> dict:
    """The same fits on Lambda, one invocation per fit, from the per-fit times measured in the workers."""
    tasks = model.task_metrics
    per_fit = list((tasks["fit_seconds"] / tasks["folds"]).repeat(tasks["folds"]))
    m = model.metrics["value"]
    speed = LAMBDA["cpu_speed_vs_this_machine"]
    mean_fit, slowest_fit = statistics.mean(per_fit) / speed, max(per_fit) / speed
    remote = remote_wall_seconds(fits, slowest_fit)
    client = m["wall-clock time (s)"] - m["cross-fitting wall time (s)"]
    return {"fits": fits, "measured_fits": len(per_fit), "mean_fit_s": mean_fit, "slowest_fit_s": slowest_fit,
            "remote_wall_s": remote, "client_doubleml_estimation_s": client, "projected_wall_s": remote + client,
            "projected_local_2_cores_s": sum(per_fit) / WORKERS + client,
            "projected_cost_usd": cost_usd(fits, mean_fit), "assumptions": LAMBDA}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["cases"])
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4.2 * (len(names) + 1), 4.2))
    for ax, name in zip(axes, names):
        case = results["cases"][name]
        sides = list(case["times"])
        medians = [case["medians"][s] for s in sides]
        lows = [m - min(case["times"][s]) for s, m in zip(sides, medians)]
        highs = [max(case["times"][s]) - m for s, m in zip(sides, medians)]
        ax.bar([s.replace(" ", "\n", 1) for s in sides], medians, yerr=[lows, highs], capsize=4,
               color=["#888888", "#1f77b4"])
        for i, m in enumerate(medians):
            ax.text(i, m / 2, f"{m:.1f} s\n{m / medians[0]:.2f}x", ha="center", color="white", fontsize=9)
        ax.set_title(f"{name}: {case['fits']} fits, 2 processes", fontsize=9)
        ax.set_ylabel("wall time (s), median, min-max bars")
        ax.tick_params(axis="x", labelsize=8)
    ax = axes[-1]
    labels, values = [], []
    for name in names:
        p = results["cases"][name]["projection"]
        labels += [f"{name.split()[0][8:]}\nlocal 2 cores", f"{name.split()[0][8:]}\nLambda 1,000"]
        values += [p["projected_local_2_cores_s"], p["projected_wall_s"]]
    ax.bar(labels, values, color=["#888888", "#ff7f0e"] * len(names))
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.0f} s", ha="center", va="bottom", fontsize=8)
    ax.set_title("projection from measured per-fit times", fontsize=9)
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trees", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="smaller data, 1 repeat, results/scratch/")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    warnings.simplefilter("ignore")  # doubleml's and pandas' deprecation notices, here and in worker processes
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    out_dir = RESULTS / "scratch" if args.quick else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "command": "python benchmarks/dml_composite.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": {"doubleml": doubleml.__version__, "sklearn": __import__("sklearn").__version__},
        "config": {"trees": args.trees, "max_depth": 8, "processes": WORKERS, "repeats": repeats},
        "cases": {},
    }
    with Executor(workers=WORKERS) as executor:
        for name, (base, serverless, data, kwargs, fits) in cases(args.trees, args.quick).items():
            sides = {"doubleml n_jobs_models=2": lambda: fit(base, data, kwargs, n_jobs_models=WORKERS),
                     "lambdamap local (auto)": lambda: fit(serverless, data, dict(kwargs, executor=executor))}
            names = list(sides)
            print(f"{name}: warm-up (untimed)", flush=True)
            reference = sides[names[0]]()[1]
            sides[names[1]]()
            times = {n: [] for n in names}
            loads = {n: [] for n in names}
            same, last = True, None
            for r in range(repeats):
                for side in names[r % 2:] + names[:r % 2]:
                    seconds, model, load = sides[side]()
                    times[side].append(seconds)
                    loads[side].append(load)
                    if side != names[0]:
                        same &= equal(model, reference)
                        last = model
                    print(f"  repeat {r + 1}/{repeats}  {side:26s} {seconds:7.2f} s  (load {load:.1f})", flush=True)
            medians = {n: statistics.median(t) for n, t in times.items()}
            m = last.metrics["value"]
            results["cases"][name] = {
                "fits": fits, "identical_estimates": bool(same), "times": times, "medians": medians,
                "ratio_vs_doubleml": medians[names[1]] / medians[names[0]], "load_average_1min": loads,
                "requests": int(m["requests"]), "granularity": m["granularity"],
                "mean_bytes_in_per_task": float(m["mean bytes in per task"]),
                "bytes_put_to_the_store": int(m["bytes put to the store (data, splits)"]),
                "coef": reference.coef.tolist(), "projection": project(last, fits),
            }
            print(f"  identical: {same}; ratio {results['cases'][name]['ratio_vs_doubleml']:.2f}", flush=True)
    (out_dir / "dml_composite.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    plot(results, out_dir / "dml_composite.png")
    for name, case in results["cases"].items():
        p = case["projection"]
        print(f"{name}: doubleml {case['medians']['doubleml n_jobs_models=2']:.1f} s, lambdamap "
              f"{case['medians']['lambdamap local (auto)']:.1f} s, ratio {case['ratio_vs_doubleml']:.2f}, identical "
              f"{case['identical_estimates']}; Lambda projection {p['projected_wall_s']:.1f} s, ${p['projected_cost_usd']:.3f}")
    return results


if __name__ == "__main__":
    main()
