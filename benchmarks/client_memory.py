"""Client memory across rounds: does a long-lived client's RSS stay flat?

``load.py`` measures one job's peak; this measures growth over a client's life:

* **results**: one long-lived ``Executor(workers=2)``; each round submits 100 calls that each
  return a 2 MB ``bytes``, reads every result and drops the futures (``submit`` rounds, then
  ``map`` rounds on the same executor);
* **put, same executor**: then, on that executor, each round ``ref = ex.put(X)`` of a fresh
  ~150 MB array, one call that reads it, then ``del X, ref``;
* **put, fresh executors**: the same rounds, each in a new ``Executor(workers=2)`` shut down
  at the end of the round, in a second client process (so that one phase's leftovers cannot
  hide the other's growth).

After every round: ``gc.collect()``, then the client's RSS (psutil), its RSS once glibc's
``malloc_trim`` has handed freed heap pages back (what the process still holds, without the
allocator's retained free memory) and the machine's load (``os.getloadavg()``). The goal is a
flat line: the client keeps only a metrics row per call and releases ``put`` objects. Reported
per phase: the first and last round, the growth and the least-squares slope (MB per round).

    .venv/bin/python benchmarks/client_memory.py [--rounds 6] [--put-mb 150]

Writes benchmarks/results/client_memory.json and client_memory.png (~1-2 minutes).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import time

import numpy as np
import psutil

from lambdamap import Executor

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
RESULT_BYTES = 2 * 2**20
CALLS_PER_ROUND = 100
#: Growth below this over a phase (last round minus first) counts as flat: a fraction of one
#: round's results (200 MB) or of one put object.
FLAT_MB = 25.0


def two_megabytes(i: int) -> bytes:
    return bytes([i % 251]) * RESULT_BYTES


def total(X: np.ndarray) -> float:
    return float(X[:1000].sum())


def rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def trimmed_rss_mb() -> float | None:
    """RSS after glibc returns its free heap pages to the system (``malloc_trim``): what the
    process still *uses*, without the allocator's retained free memory; None off glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return rss_mb()


def client_object_cache_mb() -> float | None:
    """The size of lambdamap's in-process cache of ``put`` objects (a private detail, read for
    diagnosis only; None if it is not there)."""
    from lambdamap import objects

    size = getattr(objects, "_cache_bytes", None)
    return None if size is None else round(size / 2**20, 1)


def results_round(ex: Executor, use_map: bool) -> None:
    if use_map:
        for i, value in enumerate(ex.map(two_megabytes, range(CALLS_PER_ROUND))):
            assert len(value) == RESULT_BYTES and value[0] == i % 251
        return
    futures = [ex.submit(two_megabytes, i) for i in range(CALLS_PER_ROUND)]
    for i, future in enumerate(futures):
        value = future.result()
        assert len(value) == RESULT_BYTES and value[0] == i % 251
    del futures, future, value


def put_round(ex: Executor, seed: int, put_mb: int) -> None:
    X = np.random.default_rng(seed).random(put_mb * 2**20 // 8)  # fresh content: no dedup
    ref = ex.put(X)
    assert ex.submit(total, ref).result() == float(X[:1000].sum())
    del X, ref


class _Rounds:
    """RSS (and the rest) after each round of each phase."""

    def __init__(self):
        self.phases: dict[str, list[dict]] = {}

    def record(self, phase: str, started: float) -> None:
        seconds = time.perf_counter() - started
        rss, trimmed = rss_mb(), trimmed_rss_mb()
        rows = self.phases.setdefault(phase, [])
        rows.append({"round": len(rows) + 1, "rss_mb": round(rss, 1),
                     "rss_after_malloc_trim_mb": None if trimmed is None else round(trimmed, 1),
                     "put_cache_mb": client_object_cache_mb(), "seconds": round(seconds, 2),
                     "loadavg": os.getloadavg()[0]})
        row = rows[-1]
        print(f"{phase:>22} round {row['round']}: RSS {row['rss_mb']:7.1f} MB, after "
              f"malloc_trim {row['rss_after_malloc_trim_mb']} MB, put cache "
              f"{row['put_cache_mb']} MB ({row['seconds']:.1f} s, load {row['loadavg']:.1f})",
              file=sys.stderr, flush=True)


def long_lived_client(rounds: int, put_mb: int) -> dict:
    """Results rounds, then put rounds, on one executor; RSS after its shutdown."""
    log = _Rounds()
    before = rss_mb()
    ex = Executor(workers=2)
    list(ex.map(abs, range(10)))  # start the workers
    baseline = rss_mb()
    for phase, use_map in (("results (submit)", False), ("results (map)", True)):
        for _ in range(rounds):
            started = time.perf_counter()
            results_round(ex, use_map)
            log.record(phase, started)
    for seed in range(rounds):
        started = time.perf_counter()
        put_round(ex, seed, put_mb)
        log.record("put, same executor", started)
    ex.shutdown()
    del ex
    return {"rss_mb_before_executor": round(before, 1), "baseline_rss_mb": round(baseline, 1),
            "after_shutdown": {"rss_mb": round(rss_mb(), 1),
                               "put_cache_mb": client_object_cache_mb()},
            "phases": log.phases}


def fresh_executors_client(rounds: int, put_mb: int) -> dict:
    """Put rounds, each on a new executor shut down at the end of the round. Run in a process
    of its own, so that the long-lived client's leftovers cannot hide (or cause) growth."""
    log = _Rounds()
    before = rss_mb()
    for seed in range(rounds):
        started = time.perf_counter()
        with Executor(workers=2) as fresh:
            put_round(fresh, 1000 + seed, put_mb)
        log.record("put, fresh executors", started)
    return {"rss_mb_before_executor": round(before, 1),
            "after_shutdown": {"rss_mb": round(rss_mb(), 1),
                               "put_cache_mb": client_object_cache_mb()},
            "phases": log.phases}


def measure(rounds: int, put_mb: int) -> dict:
    long_lived = long_lived_client(rounds, put_mb)
    child = subprocess.run([sys.executable, os.path.abspath(__file__), "--fresh-executors",
                            "--rounds", str(rounds), "--put-mb", str(put_mb)],
                           stdout=subprocess.PIPE, text=True, check=True, timeout=1800)
    fresh = json.loads(child.stdout.strip().splitlines()[-1])
    phases = {**long_lived.pop("phases"), **fresh.pop("phases")}
    summary = {}
    for phase, rows in phases.items():
        summary[phase] = {"rss": _trend([r["rss_mb"] for r in rows])}
        trimmed = [r["rss_after_malloc_trim_mb"] for r in rows]
        if None not in trimmed:
            summary[phase]["rss_after_malloc_trim"] = _trend(trimmed)
        # The verdict goes by what the process holds: raw RSS also counts the free memory glibc
        # keeps from a round's peak (here up to one round's 200 MB of results), which moves in
        # steps from round to round without growing with their number.
        held = summary[phase].get("rss_after_malloc_trim", summary[phase]["rss"])
        summary[phase]["flat"] = held["flat"]
    return {"long_lived_client": long_lived, "fresh_executors_client": fresh,
            "baseline_rss_mb": long_lived["baseline_rss_mb"], "phases": phases,
            "summary": summary}


def _trend(values: list[float]) -> dict:
    slope = float(np.polyfit(range(len(values)), values, 1)[0])
    return {"first_mb": values[0], "last_mb": values[-1],
            "growth_mb": round(values[-1] - values[0], 1), "slope_mb_per_round": round(slope, 2),
            "flat": values[-1] - values[0] < FLAT_MB}


def plot(report: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for phase, rows in report["phases"].items():
        rounds = [r["round"] for r in rows]
        line, = ax.plot(rounds, [r["rss_mb"] for r in rows], "o-", label=f"{phase}: RSS")
        if None not in (trimmed := [r["rss_after_malloc_trim_mb"] for r in rows]):
            ax.plot(rounds, trimmed, "x--", color=line.get_color(), alpha=0.6,
                    label=f"{phase}: after malloc_trim")
    ax.axhline(report["baseline_rss_mb"], color="grey", ls=":", label="after start-up")
    ax.set_xlabel("round")
    ax.set_ylabel("client RSS after the round (MB)")
    ax.set_title(f"lambdamap client memory: {CALLS_PER_ROUND} x 2 MB results or one "
                 f"{report['put_mb']} MB put per round", fontsize=9)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds per phase (default 6)")
    parser.add_argument("--put-mb", type=int, default=150, help="size of each put array (MB)")
    parser.add_argument("--out", default=RESULTS, help="folder for the JSON and PNG")
    parser.add_argument("--fresh-executors", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (a slope needs two points)")
    if args.fresh_executors:  # the child process of measure()
        print(json.dumps(fresh_executors_client(args.rounds, args.put_mb)))
        return

    load_before = os.getloadavg()
    started = time.time()
    report = {"when": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": "python benchmarks/client_memory.py " + " ".join(sys.argv[1:]),
              "rounds": args.rounds, "calls_per_round": CALLS_PER_ROUND,
              "result_mb": RESULT_BYTES / 2**20, "put_mb": args.put_mb, "flat_below_mb": FLAT_MB}
    report.update(measure(args.rounds, args.put_mb))
    report["wall_s"] = round(time.time() - started, 1)
    report["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                         "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "client_memory.json"), "w") as f:
        json.dump(report, f, indent=2)
    plot(report, os.path.join(args.out, "client_memory.png"))

    print(f"\nbaseline RSS {report['baseline_rss_mb']:.0f} MB; load "
          f"{load_before[0]:.1f} -> {report['machine']['loadavg_after'][0]:.1f}\n")
    print("| phase | measure | first round (MB) | last round (MB) | growth (MB) | "
          "slope (MB/round) | flat |")
    print("|---|---|---:|---:|---:|---:|---|")
    for phase, measures in report["summary"].items():
        for measure_name, t in measures.items():
            if measure_name == "flat":
                continue
            print(f"| {phase} | {measure_name} | {t['first_mb']:.0f} | {t['last_mb']:.0f} | "
                  f"{t['growth_mb']:+.0f} | {t['slope_mb_per_round']:+.1f} | "
                  f"{'yes' if t['flat'] else 'NO'} |")
    print("\nflat (by the memory held, after malloc_trim): " + ", ".join(
        f"{phase}: {'yes' if m['flat'] else 'NO'}" for phase, m in report["summary"].items()))
    for client in ("long_lived_client", "fresh_executors_client"):
        after = report[client]["after_shutdown"]
        print(f"{client}: after its last executor's shutdown RSS {after['rss_mb']:.0f} MB "
              f"(before its first executor {report[client]['rss_mb_before_executor']:.0f} MB), "
              f"put cache {after['put_cache_mb']} MB")


if __name__ == "__main__":
    main()
