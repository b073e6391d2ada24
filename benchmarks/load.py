"""Client memory and time under load: one job of N trivial calls on the local backend.

Each N runs in a fresh process, so ``ru_maxrss`` is that job's peak resident memory of the
client (imports included). Reports how the peak grows from 2,000 to 20,000 calls, per call.

    .venv/bin/python benchmarks/load.py [--sizes 2000 5000 10000 20000] [--repeats 3]

Writes benchmarks/results/load.json and load.png.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

ONE_RUN = r"""
import json, resource, sys, time
from lambdamap import Executor
n = int(sys.argv[1])
with Executor(workers=2) as ex:
    list(ex.map(abs, range(50)))                     # warm the workers
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    results = list(ex.map(lambda x: x + 1, range(n)))
    wall = time.perf_counter() - start
    assert results == [x + 1 for x in range(n)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"n": n, "wall_s": wall, "peak_rss_mb": peak, "rss_before_mb": before}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 5000, 10000, 20000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    runs: dict[int, list[dict]] = {n: [] for n in args.sizes}
    for _ in range(args.repeats):
        for n in args.sizes:  # interleaved, so that machine noise spreads over all sizes
            out = subprocess.run([sys.executable, "-c", ONE_RUN, str(n)], capture_output=True,
                                 text=True, timeout=600, check=True)
            runs[n].append(json.loads(out.stdout.strip().splitlines()[-1]))

    rows = []
    for n in args.sizes:
        rows.append({
            "n": n,
            "wall_s_median": statistics.median(r["wall_s"] for r in runs[n]),
            "ms_per_call_median": statistics.median(r["wall_s"] for r in runs[n]) / n * 1000,
            "peak_rss_mb_median": statistics.median(r["peak_rss_mb"] for r in runs[n]),
            "rss_before_mb_median": statistics.median(r["rss_before_mb"] for r in runs[n]),
        })
    small, large = rows[0], rows[-1]
    growth_kb_per_call = ((large["peak_rss_mb_median"] - small["peak_rss_mb_median"]) * 1024
                          / (large["n"] - small["n"]))
    report = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
              "when": time.strftime("%Y-%m-%d %H:%M:%S"), "repeats": args.repeats, "rows": rows,
              "peak_rss_growth_kb_per_call": growth_kb_per_call, "raw": runs}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "load.json"), "w") as f:
        json.dump(report, f, indent=2)

    print("| calls | wall (s) | ms/call | client peak RSS (MB) |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']:,} | {r['wall_s_median']:.2f} | {r['ms_per_call_median']:.3f} | "
              f"{r['peak_rss_mb_median']:.0f} |")
    print(f"\npeak RSS grows {growth_kb_per_call:.2f} KB per call from {small['n']:,} to {large['n']:,} calls")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["n"] for r in rows], [r["peak_rss_mb_median"] for r in rows], "o-")
    ax.set_xlabel("calls in one job")
    ax.set_ylabel("client peak RSS (MB)")
    ax.set_title("lambdamap local backend: client memory under load")
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "load.png"), dpi=120)


if __name__ == "__main__":
    main()
