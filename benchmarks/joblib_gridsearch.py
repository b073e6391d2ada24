"""Benchmark: scikit-learn's GridSearchCV through joblib, under loky, Dask and lambdamap.

    .venv/bin/python benchmarks/joblib_gridsearch.py [--repeats 5] [--quick]

The workload: ``GridSearchCV(SVC(), 10 C x 5 gamma = 50 candidates, cv=5)`` on scikit-learn's
digits (1797 x 64, shipped with scikit-learn; scaled to [0, 1]), i.e. 250 fits and the refit,
with ``n_jobs=2``. Peers, 2 workers each, all created once and warmed up with an untimed search:

* **loky**: joblib's default backend;
* **dask**: Dask's joblib backend on a ``distributed.LocalCluster`` (2 worker processes, one
  thread each);
* **lambdamap**: ``lambdamap.joblib``'s backend on ``Executor(workers=2)`` (local backend);
* **lambdamap, no dedup**: the same with ``dedup_bytes=None``: every call carries its arguments.

The peers run interleaved (the order rotates every repeat) since the machine is shared; each run
records the load average before it and the CPU seconds that this process and all its descendants
(the peers' workers) spent during it, a measure that the other jobs on the machine disturb less
than wall time. Reported: median wall time of ``fit`` per peer, the paired per-repeat ratio to
loky (median), the median CPU seconds, whether ``cv_results_`` (scores, ranks) and ``best_params_``
equal loky's exactly, and the bytes lambdamap's client sent with and without dedup (the calls'
pickled arguments plus the stored objects). Goals (issue 12): within 1.2x of loky, and less data
moved with dedup than without. Writes benchmarks/results/joblib_gridsearch.json and .png
(``--quick``: a 2 x 2 grid, one repeat, into benchmarks/results/scratch/).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
SCORE_KEYS = ("test_score",)  # cv_results_ keys ending so are compared; timings are not


def workload(quick: bool) -> tuple[Any, Any, dict, int]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    if quick:
        grid = {"C": [1.0, 10.0], "gamma": [0.01, 0.05]}
    else:
        grid = {"C": list(np.logspace(-1, 3, 10)), "gamma": list(np.logspace(-3, -1, 5))}
    return X / 16.0, y, grid, 5


def search(X, y, grid: dict, folds: int):
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    return GridSearchCV(SVC(), grid, cv=folds, n_jobs=2).fit(X, y)


class Peer:
    """One way to run joblib: a context that sets the backend, and its startup cost."""

    name = ""

    def context(self):
        raise NotImplementedError

    def transfer(self) -> dict | None:
        return None

    def close(self) -> None:
        pass


class Loky(Peer):
    name = "loky"

    def context(self):
        from joblib import parallel_config

        return parallel_config(backend="loky", n_jobs=2)


class Dask(Peer):
    name = "dask"

    def __init__(self) -> None:
        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                    dashboard_address=None)
        self.client = Client(self.cluster)

    def context(self):
        from joblib import parallel_config

        return parallel_config(backend="dask", client=self.client)

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


class Lambdamap(Peer):
    def __init__(self, executor, dedup: bool) -> None:
        self.executor, self.dedup = executor, dedup
        self.name = "lambdamap" if dedup else "lambdamap, no dedup"
        self.last = None

    def context(self):
        from joblib import parallel_config

        from lambdamap.joblib import DEDUP_BYTES, LambdamapBackend

        self.last = LambdamapBackend(self.executor,
                                     dedup_bytes=DEDUP_BYTES if self.dedup else None)
        return parallel_config(backend=self.last)

    def transfer(self) -> dict:
        t = self.last.transfer
        return {"calls": t.calls, "tasks": t.tasks, "objects": t.objects,
                "object_bytes": t.object_bytes, "argument_bytes": t.argument_bytes,
                "sent_bytes": t.sent_bytes, "result_bytes": t.result_bytes}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live descendants (the workers)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def same_results(ours, theirs) -> bool:
    keys = [k for k in theirs.cv_results_ if k.endswith(SCORE_KEYS)]
    return (all(np.array_equal(ours.cv_results_[k], theirs.cv_results_[k]) for k in keys)
            and ours.best_params_ == theirs.best_params_)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per peer (default 5)")
    parser.add_argument("--quick", action="store_true", help="tiny grid, one repeat, scratch output")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    out_dir = os.path.join(RESULTS, "scratch") if args.quick else RESULTS
    os.makedirs(out_dir, exist_ok=True)

    import dask
    import joblib
    import sklearn

    import lambdamap
    from lambdamap import Executor

    X, y, grid, folds = workload(args.quick)
    warm_X, warm_y, warm_grid = X[:300], y[:300], {"C": [1.0], "gamma": [0.01]}
    begun, load_start = time.time(), os.getloadavg()
    startup: dict[str, float] = {}
    # Startup: creating the pool (both lambdamap peers share one executor) + a warm-up search.
    executor_start, executor = timed(lambda: Executor(workers=2))
    startup["lambdamap"] = startup["lambdamap, no dedup"] = executor_start
    startup["dask"], dask_peer = timed(Dask)
    peers: list[Peer] = [Loky(), dask_peer, Lambdamap(executor, True), Lambdamap(executor, False)]
    for peer in peers:  # start pools, import scikit-learn in the workers
        with peer.context():
            seconds, _ = timed(lambda: search(warm_X, warm_y, warm_grid, 2))
        startup[peer.name] = startup.get(peer.name, 0.0) + seconds

    runs: list[dict] = []
    reference = None
    try:
        for repeat in range(repeats):
            order = peers[repeat % len(peers):] + peers[:repeat % len(peers)]
            for peer in order:
                load, cpu = os.getloadavg()[0], cpu_seconds()
                with peer.context():
                    seconds, fitted = timed(lambda: search(X, y, grid, folds))
                cpu = cpu_seconds() - cpu
                if reference is None and peer.name == "loky":
                    reference = fitted
                runs.append({"repeat": repeat, "peer": peer.name, "seconds": seconds,
                             "cpu_seconds": cpu, "loadavg_1min_before": load, "fitted": fitted,
                             "transfer": peer.transfer()})
                print(f"repeat {repeat} {peer.name:22s} {seconds:7.2f} s  cpu {cpu:6.2f} s  "
                      f"(load {load:.1f})", flush=True)
    finally:
        dask_peer.close()
        executor.shutdown()

    names = [p.name for p in peers]
    loky_of = {r["repeat"]: r["seconds"] for r in runs if r["peer"] == "loky"}
    loky_cpu = {r["repeat"]: r["cpu_seconds"] for r in runs if r["peer"] == "loky"}
    summary: dict[str, dict] = {}
    for name in names:
        mine = [r for r in runs if r["peer"] == name]
        summary[name] = {
            "median_seconds": statistics.median(r["seconds"] for r in mine),
            "seconds": [round(r["seconds"], 3) for r in mine],
            "ratio_to_loky_paired_median": statistics.median(
                r["seconds"] / loky_of[r["repeat"]] for r in mine),
            "median_cpu_seconds": statistics.median(r["cpu_seconds"] for r in mine),
            "cpu_ratio_to_loky_paired_median": statistics.median(
                r["cpu_seconds"] / loky_cpu[r["repeat"]] for r in mine),
            "equal_to_loky": all(same_results(r["fitted"], reference) for r in mine),
            "startup_seconds": round(startup[name], 2),
        }
        transfers = [r["transfer"] for r in mine if r["transfer"]]
        if transfers:
            summary[name]["transfer_last_run"] = transfers[-1]
    for run in runs:
        del run["fitted"]
    sent = {name: summary[name]["transfer_last_run"]["sent_bytes"]
            for name in ("lambdamap", "lambdamap, no dedup")}
    ratio = summary["lambdamap"]["ratio_to_loky_paired_median"]
    result = {
        "benchmark": "joblib_gridsearch",
        "command": " ".join([os.path.relpath(sys.argv[0])] + (argv or sys.argv[1:])),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(begun)),
        "duration_s": round(time.time() - begun, 1),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "loadavg_at_start": load_start, "loadavg_at_end": os.getloadavg()},
        "versions": {"python": platform.python_version(), "scikit-learn": sklearn.__version__,
                     "joblib": joblib.__version__, "dask": dask.__version__,
                     "lambdamap": lambdamap.__version__, "numpy": np.__version__},
        "workload": {"data": f"digits {X.shape[0]} x {X.shape[1]} (/16)", "estimator": "SVC()",
                     "candidates": int(np.prod([len(v) for v in grid.values()])),
                     "folds": folds, "n_jobs": 2, "workers": 2},
        "repeats": repeats,
        "peers": summary,
        "runs": runs,
        "bytes_sent_by_lambdamap": sent,
        "goals": {"within_1.2x_of_loky": ratio <= 1.2,
                  "less_data_with_dedup": sent["lambdamap"] < sent["lambdamap, no dedup"],
                  "all_equal_to_loky": all(s["equal_to_loky"] for s in summary.values())},
    }
    path = os.path.join(out_dir, "joblib_gridsearch.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    plot(result, os.path.join(out_dir, "joblib_gridsearch.png"))
    print(markdown(result))
    print(f"wrote {path}")
    return 0


def markdown(result: dict) -> str:
    lines = ["| peer | median fit (s) | wall ratio to loky | median CPU (s) | CPU ratio to loky "
             "| equal to loky | startup (s) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, s in result["peers"].items():
        lines.append(f"| {name} | {s['median_seconds']:.2f} | {s['ratio_to_loky_paired_median']:.2f}"
                     f" | {s['median_cpu_seconds']:.1f} | {s['cpu_ratio_to_loky_paired_median']:.2f}"
                     f" | {'yes' if s['equal_to_loky'] else 'NO'} | {s['startup_seconds']:.1f} |")
    sent = result["bytes_sent_by_lambdamap"]
    lines.append("")
    lines.append(f"bytes sent by lambdamap's client per search: {sent['lambdamap'] / 2**20:.2f} MiB "
                 f"with dedup, {sent['lambdamap, no dedup'] / 2**20:.2f} MiB without")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = result["peers"]
    names = list(peers)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2),
                                      gridspec_kw={"width_ratios": [2, 1]})
    medians = [peers[n]["median_seconds"] for n in names]
    low = [max(0.0, m - min(peers[n]["seconds"])) for m, n in zip(medians, names)]
    high = [max(0.0, max(peers[n]["seconds"]) - m) for m, n in zip(medians, names)]
    bars = left.bar(names, medians, yerr=[low, high], capsize=4,
                    color=["#888888", "#d08c3a", "#3a7dd0", "#9cc0ea"])
    for bar, name in zip(bars, names):  # above the range bar: wall and CPU ratios to loky
        left.annotate(f"{peers[name]['ratio_to_loky_paired_median']:.2f}x wall\n"
                      f"{peers[name]['cpu_ratio_to_loky_paired_median']:.2f}x CPU",
                      (bar.get_x() + bar.get_width() / 2, max(peers[name]["seconds"])),
                      ha="center", va="bottom", xytext=(0, 3), textcoords="offset points",
                      fontsize=9)
    w = result["workload"]
    left.set_ylabel("fit wall time (s), median and range")
    left.set_ylim(0, max(max(p["seconds"]) for p in peers.values()) * 1.25)
    left.set_title(f"GridSearchCV: {w['candidates']} candidates x {w['folds']} folds, "
                   f"2 workers ({result['repeats']} repeats)", fontsize=10)
    sent = result["bytes_sent_by_lambdamap"]
    right.bar(["dedup", "no dedup"], [sent["lambdamap"] / 2**20, sent["lambdamap, no dedup"] / 2**20],
              color=["#3a7dd0", "#9cc0ea"])
    right.set_ylabel("MiB sent by the client per search")
    right.set_title("lambdamap: arguments + stored objects", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
