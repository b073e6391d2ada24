"""Benchmark: what isolated ``put`` inputs cost (each call gets its own copy of the object).

    .venv/bin/python benchmarks/isolation.py [--repeats 7] [--quick]

A worker decodes a ``put`` object once and keeps it; since no call may change what another call
receives, each call gets a copy. lambdamap keeps the object's pickle split (protocol 5): large
buffers (numpy arrays, pandas columns, a fitted model's arrays) are handed out as read-only views,
the rest is unpickled again per call (``lambdamap/objects.py``). This script measures, in this
process, the per-call price of that against the alternatives, for objects of ~100 MB:

* ``shared``: the cached object itself, what workers did before (no isolation: a call that
  changes its argument changes what later calls receive);
* ``lambdamap``: read-only views of the buffers + a fresh rest (``objects._Shared.copy``);
* ``unpickle``: unpickle the cached bytes again for every call;
* ``deepcopy``: ``copy.deepcopy`` of the cached object for every call;

plus the one-time cost per worker of decoding the object (``first fetch``: before, one unpickling;
now one unpickling and one out-of-band pickling); then, end to end on ``Executor(workers=1)``, the
median duration of a call that receives a 100 MB array by reference against one that receives a
small argument; and the client's RSS after rounds of ``put(X)`` (200 MB), ``del X``, shutdown
(the issue measured 916 MB after three rounds when the client cached put objects).

Results go to ``benchmarks/results/isolation.json`` and ``isolation.png``; a Markdown table for the
README is printed. ``--quick`` uses 10 MB objects and writes to ``benchmarks/results/scratch/``.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import pickle
import platform
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
SCRATCH = os.path.join(RESULTS, "scratch")
sys.path.insert(0, os.path.dirname(HERE))

from lambdamap import Executor, objects, serialize  # noqa: E402


def make_objects(megabytes: int) -> dict[str, Any]:
    """Arrays of about ``megabytes`` MB; at 100 MB a list of 1M floats and a dict of 100k items."""
    import pandas as pd
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(0)
    n = megabytes * 2**20 // 8
    X = rng.random((n // 10, 10))
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(10)])
    forest = RandomForestRegressor(n_estimators=20, random_state=0).fit(X[:20_000], X[:20_000, 0])
    return {
        "numpy array": X,
        "pandas DataFrame": frame,
        "fitted RandomForest": forest,
        "list of floats": X.ravel()[: megabytes * 10_000].tolist(),  # 1M floats at 100 MB
        "dict str->float": {f"k{i}": float(v) for i, v in enumerate(X.ravel()[: megabytes * 1_000])},
    }


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def per_call_costs(objs: dict[str, Any], repeats: int) -> dict[str, dict]:
    out = {}
    for name, obj in objs.items():
        payload = serialize.dumps(obj, "object")
        decoded = pickle.loads(payload)
        first_before = median_seconds(lambda: pickle.loads(payload), max(3, repeats // 2))
        first_now = median_seconds(lambda: objects._Shared.of(payload), max(3, repeats // 2))
        shared = objects._Shared.of(payload)
        strategies = {
            "shared": lambda: decoded,
            "lambdamap": shared.copy,
            "unpickle": lambda: pickle.loads(payload),
            "deepcopy": lambda: copy.deepcopy(decoded),
        }
        times = {key: median_seconds(fn, repeats) for key, fn in strategies.items()}
        out[name] = {"nbytes": len(payload), "first_fetch_before_s": first_before,
                     "first_fetch_now_s": first_now, "per_call_s": times,
                     "skeleton_bytes": len(shared.skeleton), "buffers": len(shared.buffers)}
        print(f"  {name}: " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in times.items()), flush=True)
        del decoded, shared
        gc.collect()
    return out


def shape_of(X) -> int:
    return X.shape[0]


def end_to_end(megabytes: int, calls: int) -> dict:
    """Median call duration on a warm worker: a put 100 MB array against a small argument."""
    X = np.random.default_rng(1).random(megabytes * 2**20 // 8)
    with Executor(workers=1) as ex:
        X_ref = ex.put(X)
        small = np.zeros(1)
        list(ex.map(shape_of, [X_ref] * 3))  # the worker fetches and decodes it once
        list(ex.map(shape_of, [small] * 3))
        start = len(ex.metrics())
        list(ex.map(shape_of, [X_ref] * calls))
        by_ref = ex.metrics()["duration"].iloc[start:].median()
        start = len(ex.metrics())
        list(ex.map(shape_of, [small] * calls))
        inline = ex.metrics()["duration"].iloc[start:].median()
    return {"calls": calls, "array_mb": megabytes, "median_call_by_ref_s": float(by_ref),
            "median_call_small_arg_s": float(inline)}


def client_rss_rounds(megabytes: int, rounds: int) -> list[float]:
    import psutil

    process, rss = psutil.Process(), []
    for _ in range(rounds):
        X = np.random.default_rng(2).random(megabytes * 2**20 // 8)
        ex = Executor(workers=1)
        ex.put(X)
        del X
        ex.shutdown()
        gc.collect()
        rss.append(process.memory_info().rss / 2**20)
    return rss


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["per_call"])
    strategies = ["shared", "lambdamap", "unpickle", "deepcopy"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.2
    for i, strategy in enumerate(strategies):
        values = [max(results["per_call"][n]["per_call_s"][strategy] * 1e3, 1e-4) for n in names]
        ax.bar([j + i * width for j in range(len(names))], values, width, label=strategy)
    ax.set_xticks([j + 1.5 * width for j in range(len(names))], names, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(5e-5, 1e4)
    ax.set_ylabel("per-call cost (ms, log)")
    ax.set_title("Handing a put() object to a call on a warm worker")
    ax.legend(ncol=4, loc="upper center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="10 MB objects; write to results/scratch/")
    args = parser.parse_args()
    megabytes = 10 if args.quick else 100
    out_dir = SCRATCH if args.quick else RESULTS
    os.makedirs(out_dir, exist_ok=True)

    print(f"per-call cost, objects of ~{megabytes} MB, median of {args.repeats}:", flush=True)
    results = {
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "object_mb": megabytes,
        "per_call": per_call_costs(make_objects(megabytes), args.repeats),
        "end_to_end": end_to_end(megabytes, calls=10 if args.quick else 30),
        "client_rss_mb_after_rounds": client_rss_rounds(2 * megabytes, rounds=3),
    }
    with open(os.path.join(out_dir, "isolation.json"), "w") as f:
        json.dump(results, f, indent=2)
    plot(results, os.path.join(out_dir, "isolation.png"))

    print("\n| object | pickled | first fetch before / now | per call: shared | lambdamap | unpickle | deepcopy |")
    print("|---|---|---|---|---|---|---|")
    for name, row in results["per_call"].items():
        t = row["per_call_s"]
        print(f"| {name} | {row['nbytes'] / 2**20:.1f} MB | {row['first_fetch_before_s'] * 1e3:.0f} / "
              f"{row['first_fetch_now_s'] * 1e3:.0f} ms | {t['shared'] * 1e6:.1f} µs | "
              f"{t['lambdamap'] * 1e3:.2f} ms | {t['unpickle'] * 1e3:.1f} ms | {t['deepcopy'] * 1e3:.1f} ms |")
    e2e = results["end_to_end"]
    print(f"\nend to end, warm worker: median call with a {megabytes} MB array by reference "
          f"{e2e['median_call_by_ref_s'] * 1e3:.2f} ms, with a small argument "
          f"{e2e['median_call_small_arg_s'] * 1e3:.2f} ms")
    print("client RSS after rounds of put/del/shutdown (MB): "
          + ", ".join(f"{v:.0f}" for v in results["client_rss_mb_after_rounds"]))


if __name__ == "__main__":
    main()
