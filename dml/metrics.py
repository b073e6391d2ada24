"""What a remote cross-fitting cost: requests, durations, bytes, memory and the estimated AWS bill.

Per-task numbers come from lambdamap (each call's status record: times, duration, peak memory, bytes
out, its invocation; ``executor.metrics()``: submission time, bytes in). With a plain
``concurrent.futures`` executor only the durations measured inside the task are available. The
dollar estimate is lambdamap's (:mod:`lambdamap.cost`: Lambda requests, GB-seconds with the INIT
phase of cold starts, S3 requests, at the published prices) at ``memory_mb`` of configured memory,
whatever backend actually ran the tasks: for the local backend it answers "what would this cost on
Lambda". The task table is also a timeline's input (:func:`lambdamap.timeline.plot`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lambdamap.cost import estimate

from .crossfit import CrossFit

#: Memory assumed for the cost estimate when the executor does not say: 1,769 MB is where Lambda
#: allocates one full vCPU, which is what a single-threaded fit (n_jobs=1) uses.
DEFAULT_MEMORY_MB = 1769


def lambda_config(executor) -> tuple[float, str]:
    """(memory MB, architecture) of the executor's Lambda function, else the defaults."""
    backend = getattr(executor, "backend", None)
    deployed = getattr(backend, "function_config", None) or {}   # AWS backend: the live configuration
    settings = getattr(backend, "settings", None)                # AWS backend: the deploy settings
    memory = deployed.get("MemorySize") or getattr(settings, "memory", None) or DEFAULT_MEMORY_MB
    arch = (deployed.get("Architectures") or [None])[0] or getattr(settings, "architecture", None) or "x86_64"
    return memory, arch


def task_table(crossfit: CrossFit, executor=None) -> pd.DataFrame:
    """One row per task: what it computed and what it measured."""
    calls = None
    if executor is not None and hasattr(executor, "metrics"):
        calls = executor.metrics().set_index("call_id")
    rows = []
    for task in crossfit.tasks:
        status = getattr(task.future, "status", None) or {}
        call_id = getattr(task.future, "call_id", None)
        row = {
            "treatment": task.i_treat, "nuisance": task.name, "rep": task.rep, "folds": len(task.folds),
            "stage": task.stage, "call_id": call_id,
            "duration": status.get("duration", task.result["seconds"] if task.result else np.nan),
            "fit_seconds": task.result["seconds"] if task.result else np.nan,
            "peak_memory_mb": status.get("peak_memory_mb", np.nan),
            "bytes_in": np.nan, "bytes_out": status.get("bytes_out", np.nan),
            "worker": status.get("worker"), "warm": status.get("warm"),
            "submitted": np.nan, "started": status.get("started", np.nan),
            "finished": status.get("finished", np.nan), "invocation": status.get("invocation"),
            "invocation_started": status.get("invocation_started", np.nan),
            "init_duration": status.get("init_duration", np.nan),
        }
        if calls is not None and call_id in calls.index:
            row["bytes_in"] = calls.at[call_id, "bytes_in"]
            row["submitted"] = calls.at[call_id, "submitted"]
        rows.append(row)
    return pd.DataFrame(rows)


def summary(tasks: pd.DataFrame, crossfit: CrossFit, wall_seconds: float, remote_seconds: float,
            memory_mb: float = DEFAULT_MEMORY_MB, arch: str = "x86_64") -> pd.DataFrame:
    """The one-column table shown as ``model.metrics``.

    ``wall_seconds`` is the whole ``fit``; ``remote_seconds`` its cross-fitting part (the rest is
    doubleml's estimation from the predictions, on the client).
    """
    durations = tasks["duration"].astype(float).to_numpy()
    cost = estimate(tasks, memory_mb=memory_mb, arch=arch, objects=crossfit.stored_objects)
    values = {
        "requests": len(tasks),
        "granularity": crossfit.granularity,
        "fits": int(tasks["folds"].sum()),
        "parallelism": crossfit.parallelism,
        "estimated fit seconds (auto)": crossfit.fit_seconds_estimate,
        "total duration (s)": float(np.nansum(durations)),
        "mean duration (s)": float(np.nanmean(durations)) if len(durations) else np.nan,
        "max duration (s)": float(np.nanmax(durations)) if len(durations) else np.nan,
        "mean seconds per fold fit": float(tasks["fit_seconds"].sum() / max(tasks["folds"].sum(), 1)),
        "memory size (MB, assumed)": memory_mb,
        "cold starts": cost.cold_starts,
        "billed GB-seconds": cost.gb_seconds,
        "S3 requests": cost.s3_requests,
        "estimated cost (USD)": cost.total_usd,
        "peak memory (MB)": float(tasks["peak_memory_mb"].max()),
        "mean bytes in per task": float(tasks["bytes_in"].mean()),
        "mean bytes out per task": float(tasks["bytes_out"].mean()),
        "bytes put to the store (data, splits)": crossfit.stored_bytes,
        "cross-fitting wall time (s)": remote_seconds,
        "wall-clock time (s)": wall_seconds,
    }
    return pd.DataFrame({"value": pd.Series(values, dtype=object)})
