"""Benchmark: GroveForestClassifier on lambdamap's local backend vs RandomForestClassifier(n_jobs=2).

    .venv/bin/python benchmarks/forest.py [--trees 500] [--grove 10] [--repeats 3] [--copy-rev REV]

Two data sets: digits (1797 x 64, 10 classes) and make_classification(20_000, 40), each split
75/25. Every (data set, implementation, repeat) runs in a fresh subprocess, which reports

* fit seconds: wall time of ``fit``; for the grove forest with the executor's two worker
  processes started and scikit-learn imported in them, which is reported as ``startup``
  (the scikit-learn process, too, has imported scikit-learn before its timer starts),
* peak client RSS: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of that process, i.e. the
  client only (scikit-learn's threads are in it; lambdamap's worker processes are not),

and saves its held-out ``predict_proba`` so that the parent can check the two are equal.
Medians over the repeats go to benchmarks/results/forest.json and forest.png. Goals: equal
predictions, fit time <= 1.1x and peak client RSS <= 1.5x scikit-learn's.

``--copy-rev REV`` adds a third implementation, ``grove-copy``: the grove forest of git revision
REV (its forest/ and lambdamap/, exported into a scratch folder and put first on PYTHONPATH, for
the client and the workers). With REV a revision whose ``fit`` copied scikit-learn's
``BaseForest.fit`` (e.g. 4e2be43), this measures what running scikit-learn's own ``fit`` through
the joblib backend costs or saves against the copy.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
# Run as a script, this file's folder comes first on sys.path and this file would shadow the
# forest package: drop that folder.
sys.path = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]
RESULTS = os.path.join(HERE, "results")
DATASETS = ("digits", "classification_20000x40")
IMPLEMENTATIONS = ["sklearn", "grove"]  # + "grove-copy" with --copy-rev


def load(dataset: str):
    from sklearn.datasets import load_digits, make_classification
    from sklearn.model_selection import train_test_split

    if dataset == "digits":
        X, y = load_digits(return_X_y=True)
    else:
        X, y = make_classification(n_samples=20_000, n_features=40, n_informative=20,
                                   random_state=0)
    return train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)


def _import_forest(_: int) -> None:
    """Runs in a worker: import forest and scikit-learn there before fit is timed, as the
    scikit-learn process has imported scikit-learn before its timer starts."""
    import forest.grove  # noqa: F401

    time.sleep(0.5)  # stay busy, so that the other call starts the other worker


def child(implementation: str, dataset: str, trees: int, grove: int, out: str) -> None:
    """One measurement, in a fresh process; prints one JSON line."""
    X_train, X_test, y_train, _ = load(dataset)
    report = {"startup": 0.0}
    if implementation == "sklearn":
        from sklearn.ensemble import RandomForestClassifier

        model = RandomForestClassifier(n_estimators=trees, n_jobs=2, random_state=0)
        executor = None
    else:  # "grove", or "grove-copy" (the same code path of another revision, see --copy-rev)
        from lambdamap import Executor

        import forest
        from forest import GroveForestClassifier

        if implementation == "grove-copy":  # the exported revision, not this checkout
            assert forest.__file__.startswith(os.environ["PYTHONPATH"].split(os.pathsep)[0])
        started = time.perf_counter()
        executor = Executor(workers=2)
        list(executor.map(_import_forest, [0, 1]))
        report["startup"] = time.perf_counter() - started
        model = GroveForestClassifier(n_estimators=trees, grove_size=grove, random_state=0,
                                      executor=executor)
    started = time.perf_counter()
    model.fit(X_train, y_train)
    report["fit"] = time.perf_counter() - started
    started = time.perf_counter()
    proba = model.predict_proba(X_test)
    report["predict"] = time.perf_counter() - started
    if executor is not None:
        executor.shutdown()
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    np.save(out, proba)
    print(json.dumps(report))


def measure(implementation: str, dataset: str, args, out: str, copy_src: str | None) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", implementation, dataset,
               "--trees", str(args.trees), "--grove", str(args.grove), "--out", out]
    env, cwd = dict(os.environ), None
    if implementation == "grove-copy":
        # Workers run ``python -m``, which puts their working folder first on sys.path.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [copy_src, env.get("PYTHONPATH")]))
        cwd = copy_src
    run = subprocess.run(command, capture_output=True, text=True, check=True, env=env, cwd=cwd)
    return json.loads(run.stdout.strip().splitlines()[-1])


def export_revision(rev: str, folder: str) -> str:
    """forest/ and lambdamap/ of git revision ``rev``, unpacked under ``folder``."""
    repo = os.path.dirname(HERE)
    os.makedirs(folder)
    archive = subprocess.run(["git", "-C", repo, "archive", rev, "forest", "lambdamap"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return folder


def plot(summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.76 / len(IMPLEMENTATIONS)
    for ax, metric, label in ((axes[0], "fit", "fit wall time (s)"),
                              (axes[1], "peak_rss_mb", "peak client RSS (MB)")):
        for offset, implementation in enumerate(IMPLEMENTATIONS):
            values = [summary[d][implementation][metric] for d in DATASETS]
            positions = np.arange(len(DATASETS)) + (offset - (len(IMPLEMENTATIONS) - 1) / 2) * width
            bars = ax.bar(positions, values, width, label=implementation)
            ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ratio_key = "fit_time_ratio" if metric == "fit" else "peak_rss_ratio"
        ax.set_xticks(np.arange(len(DATASETS)),
                      [f"{d}\ngrove / sklearn = {summary[d][ratio_key]:.2f}" for d in DATASETS])
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle(f"GroveForest (local backend, 2 workers) vs RandomForest(n_jobs=2): "
                 f"{summary['trees']} trees, medians of {summary['repeats']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trees", type=int, default=500)
    parser.add_argument("--grove", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--copy-rev", metavar="REV",
                        help="also run the grove forest of this git revision (see module doc)")
    parser.add_argument("--child", nargs=2, metavar=("IMPLEMENTATION", "DATASET"))
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.trees, args.grove, args.out)
        return
    if args.copy_rev:
        IMPLEMENTATIONS.append("grove-copy")

    summary: dict = {"trees": args.trees, "grove_size": args.grove, "repeats": args.repeats,
                     "command": "python benchmarks/forest.py " + " ".join(sys.argv[1:]),
                     # Other work on the machine skews timings: record how busy it was.
                     "loadavg_1min_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as scratch:
        copy_src = export_revision(args.copy_rev, os.path.join(scratch, "copy")) if args.copy_rev \
            else None
        for dataset in DATASETS:
            runs: dict[str, list[dict]] = {name: [] for name in IMPLEMENTATIONS}
            equal = True
            for repeat in range(args.repeats):
                for implementation in IMPLEMENTATIONS:  # alternate, so drift hits both alike
                    out = os.path.join(scratch, f"{implementation}.npy")
                    runs[implementation].append(measure(implementation, dataset, args, out, copy_src))
                    print(dataset, implementation, repeat, runs[implementation][-1], flush=True)
                equal &= all(np.array_equal(np.load(os.path.join(scratch, f"{name}.npy")),
                                            np.load(os.path.join(scratch, "sklearn.npy")))
                             for name in IMPLEMENTATIONS)
            summary[dataset] = {
                name: {key: statistics.median(r[key] for r in results) for key in results[0]}
                for name, results in runs.items()}
            summary[dataset]["runs"] = runs
            summary[dataset]["equal_predictions"] = equal
            grove, plain = summary[dataset]["grove"], summary[dataset]["sklearn"]
            summary[dataset]["fit_time_ratio"] = grove["fit"] / plain["fit"]
            summary[dataset]["peak_rss_ratio"] = grove["peak_rss_mb"] / plain["peak_rss_mb"]
            # Runs are paired (back to back): the median of per-repeat ratios is less sensitive
            # to load that changes during the benchmark.
            summary[dataset]["fit_time_ratio_paired"] = statistics.median(
                g["fit"] / s["fit"] for g, s in zip(runs["grove"], runs["sklearn"]))
            if args.copy_rev:  # scikit-learn's own fit through the backend / the copied fit
                summary[dataset]["fit_time_ratio_to_copy_paired"] = statistics.median(
                    g["fit"] / c["fit"] for g, c in zip(runs["grove"], runs["grove-copy"]))

    summary["loadavg_1min_end"] = os.getloadavg()[0]
    summary["copy_rev"] = args.copy_rev
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "forest.json"), "w") as file:
        json.dump(summary, file, indent=2)
    plot(summary, os.path.join(RESULTS, "forest.png"))
    print(f"{'data set':26} {'sklearn fit':>11} {'grove fit':>9} {'ratio':>6} "
          f"{'paired':>6} {'sklearn MB':>10} {'grove MB':>8} {'ratio':>6} equal")
    for dataset in DATASETS:
        s = summary[dataset]
        print(f"{dataset:26} {s['sklearn']['fit']:11.2f} {s['grove']['fit']:9.2f} "
              f"{s['fit_time_ratio']:6.2f} {s['fit_time_ratio_paired']:6.2f} "
              f"{s['sklearn']['peak_rss_mb']:10.0f} "
              f"{s['grove']['peak_rss_mb']:8.0f} {s['peak_rss_ratio']:6.2f} "
              f"{s['equal_predictions']}")
    if args.copy_rev:
        for dataset in DATASETS:
            s = summary[dataset]
            print(f"{dataset}: grove-copy@{args.copy_rev} fit {s['grove-copy']['fit']:.2f} s, "
                  f"grove / grove-copy (paired) {s['fit_time_ratio_to_copy_paired']:.2f}")


if __name__ == "__main__":
    main()
