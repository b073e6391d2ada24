"""What a remote cross-fitting cost: requests, durations, bytes, memory and the estimated AWS bill.

Per-task numbers come from lambdamap (each call's status record: duration, peak memory, bytes out;
``executor.metrics()``: bytes in). With a plain ``concurrent.futures`` executor only the durations
measured inside the task are available. The dollar estimate applies the published AWS Lambda prices
(:mod:`lambdamap.pricing`) to the measured durations at ``memory_mb`` of configured memory, whatever
backend actually ran the tasks: for the local backend it answers "what would this cost on Lambda".
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lambdamap.cost import estimate

#: The columns of :func:`task_table` (also of the empty table of a fit that ran no task).
TASK_COLUMNS = ["model", "treatment", "nuisance", "rep", "folds", "stage", "call_id", "duration", "fit_seconds",
                "peak_memory_mb", "bytes_in", "bytes_out", "worker", "warm", "submitted", "started", "finished",
                "invocation", "invocation_started", "init_duration"]

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


def task_table(tasks: list, executor=None) -> pd.DataFrame:
    """One row per task (:class:`dml.crossfit.Task`): what it computed and what it measured."""
    calls = None
    if tasks and executor is not None and hasattr(executor, "metrics"):
        calls = executor.metrics().set_index("call_id")
    rows = []
    for task in tasks:
        status = getattr(task.future, "status", None) or {}
        call_id = getattr(task.future, "call_id", None)
        seconds = (task.result or {}).get("seconds")
        seconds = np.nan if seconds is None else seconds
        row = {
            "model": task.model_index, "treatment": task.i_treat, "nuisance": task.name, "rep": task.rep,
            "folds": len(task.folds), "stage": task.stage, "call_id": call_id,
            "duration": status.get("duration", seconds), "fit_seconds": seconds,
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
    return pd.DataFrame(rows, columns=TASK_COLUMNS)


def summary(tasks: pd.DataFrame, wall_seconds: float, remote_seconds: float, memory_mb: float = DEFAULT_MEMORY_MB,
            arch: str = "x86_64", granularity: str | None = None, fit_seconds_estimate: float | None = None,
            parallelism: int | None = None, stored_bytes: int = 0, stored_objects: int = 0) -> pd.DataFrame:
    """The one-column table shown as ``model.metrics``.

    ``wall_seconds`` is the whole ``fit``; ``remote_seconds`` its remote part (the rest is doubleml's
    estimation from the predictions, on the client). A fit whose predictions were all external ran
    no task: zero requests and costs.
    """
    durations = tasks["duration"].astype(float).to_numpy()
    durations = durations[~np.isnan(durations)]
    n_folds = int(tasks["folds"].sum())
    cost = estimate(tasks, memory_mb=memory_mb, arch=arch, objects=stored_objects) if len(tasks) else None
    values = {
        "requests": len(tasks),
        "granularity": granularity,
        "fits": n_folds,
        "parallelism": parallelism,
        "estimated fit seconds (auto)": fit_seconds_estimate,
        "total duration (s)": float(durations.sum()),
        "mean duration (s)": float(durations.mean()) if len(durations) else np.nan,
        "max duration (s)": float(durations.max()) if len(durations) else np.nan,
        "mean seconds per fold fit": float(tasks["fit_seconds"].sum() / n_folds) if n_folds else np.nan,
        "memory size (MB, assumed)": memory_mb,
        "cold starts": cost.cold_starts if cost else 0,
        "billed GB-seconds": cost.gb_seconds if cost else 0.0,
        "S3 requests": cost.s3_requests if cost else 0,
        "estimated cost (USD)": cost.total_usd if cost else 0.0,
        "peak memory (MB)": float(tasks["peak_memory_mb"].max()) if len(tasks) else np.nan,
        "mean bytes in per task": float(tasks["bytes_in"].mean()) if len(tasks) else np.nan,
        "mean bytes out per task": float(tasks["bytes_out"].mean()) if len(tasks) else np.nan,
        "bytes put to the store (data, splits)": stored_bytes,
        "cross-fitting wall time (s)": remote_seconds,
        "wall-clock time (s)": wall_seconds,
    }
    return pd.DataFrame({"value": pd.Series(values, dtype=object)})
