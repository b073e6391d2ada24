"""Projecting measured per-fit times to AWS Lambda: the stated assumptions and the arithmetic.

Shared by the dml benchmarks (``dml_bonus.py``, ``dml_composite.py``). No AWS account is used: the
numbers below are assumptions, written into each benchmark's JSON next to the projection.
"""
from __future__ import annotations

import math

from lambdamap.pricing import lambda_cost

# AWS Lambda, x86_64, 1,769 MB = one full vCPU, Python 3.11 with a numpy/scikit-learn layer.
LAMBDA = {
    "concurrency": 1000,              # the default regional account limit
    "memory_mb": 1769,                # one vCPU: what a single-threaded fit uses
    "cpu_speed_vs_this_machine": 1.0, # a Lambda vCPU taken as fast as one core here
    "cold_start_s": 3.0,              # runtime init + importing numpy/scikit-learn/lambdamap (all cold)
    "launch_rate_per_s": 1000.0,      # asynchronous invokes from the client's thread pool
    "io_per_task_s": 0.3,             # S3: event args, data object (once per container), result, status
    "collect_latency_s": 1.0,         # the collector's polling of S3 for finished calls
}


def remote_wall_seconds(fits: int, slowest_fit_s: float, assumptions: dict = LAMBDA) -> float:
    """Wall time of ``fits`` one-fit invocations: launch, cold start, waves of the slowest fit, collection."""
    waves = math.ceil(fits / assumptions["concurrency"])
    return (fits / assumptions["launch_rate_per_s"] + assumptions["cold_start_s"]
            + waves * (slowest_fit_s + assumptions["io_per_task_s"]) + assumptions["collect_latency_s"])


def cost_usd(fits: int, mean_fit_s: float, assumptions: dict = LAMBDA) -> float:
    """The bill of ``fits`` cold invocations (AWS bills the init phase since August 2025)."""
    billed = [assumptions["cold_start_s"] + mean_fit_s + assumptions["io_per_task_s"]] * fits
    return lambda_cost(billed, assumptions["memory_mb"])
