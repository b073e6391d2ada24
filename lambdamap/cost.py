"""What a job costs on AWS: Lambda requests, billed GB-seconds (INIT included), S3 requests.

:func:`estimate` turns a metrics table (``Executor.metrics()``, or ``dml``'s task metrics) into a
:class:`CostEstimate` at the published prices of :mod:`lambdamap.pricing`; ``Executor.cost()``
calls it with the function's memory and architecture. For a job that ran on the local backend
it answers "what would this cost on Lambda" (at ``lambdamap deploy``'s default memory unless
told otherwise)::

    with Executor() as ex:
        ex.map(work, items)
        print(ex.cost())        # requests, GB-seconds, S3 requests, dollars

**Lambda.** One request per invocation. Each is billed from its handler's start
(``invocation_started``) to its last call's end, rounded up to the millisecond (a call's own
``duration`` where the start is unknown), plus, for a cold start, the INIT phase: the runtime's
measured start-up (``init_duration``), else :data:`~lambdamap.pricing.INIT_SECONDS_ESTIMATE`.

**S3**, counted from what the wire format (:mod:`lambdamap.wire`) does:

* the runtime, per invocation: PUT its start marker, GET its argument batch, GET the function on
  a cold start, and, for an invocation of several calls, GET the control record at most once a
  second after its first call; per call: PUT the result and PUT the status; per stored object
  (``Executor.put``): one GET by each worker (an upper bound: a worker caches what it read);
* the client: PUT the control record, each function, each object, and per argument blob the blob
  and its manifest; GET each result; LIST the status prefix once per poll and the start markers
  every 2 s while an invocation has not started (counted by an executor on S3; otherwise
  modelled: the collector's polls replayed over the finish times at its S3 intervals, each
  taking :data:`POLL_SECONDS`), and LIST the job's keys (1 per 1,000) to delete them. DELETE
  requests are free.

Not counted: invocations lost without a report (Lambda bills them up to the time-out; their
calls ran again and count then), the client's runtime probe (one short synchronous invocation
per function revision and process), the free tiers, and the HEAD requests made when an
invocation is lost.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from . import pricing

if TYPE_CHECKING:
    import pandas as pd

#: The collector's poll interval (min, max) seconds on S3: the executor's default there.
S3_POLL_INTERVAL = (0.05, 2.0)
#: Seconds one poll takes on S3 besides the wait (a LIST, and the GETs of what it found), assumed
#: when the polls are modelled.
POLL_SECONDS = 0.03
#: Keys per S3 LIST page (and per DeleteObjects request).
LIST_PAGE_KEYS = 1000


@dataclass(frozen=True)
class CostEstimate:
    """An estimated AWS bill of one job, and what it is made of (see the module doc)."""

    memory_mb: float
    arch: str
    calls: int
    invocations: int
    billed_seconds: float   # invocations' billed duration, INIT excluded
    cold_starts: int
    init_seconds: float     # billed INIT phase of the cold starts
    s3_put: int
    s3_get: int
    s3_list: int

    @property
    def gb_seconds(self) -> float:
        """Billed GB-seconds, the INIT phase included."""
        return (self.billed_seconds + self.init_seconds) * self.memory_mb / 1024.0

    @property
    def s3_requests(self) -> int:
        """S3 requests of every kind."""
        return self.s3_put + self.s3_get + self.s3_list

    @property
    def lambda_usd(self) -> float:
        """Lambda's part: requests and billed GB-seconds."""
        return (self.gb_seconds * pricing.PRICE_PER_GB_SECOND[self.arch]
                + self.invocations * pricing.PRICE_PER_REQUEST)

    @property
    def s3_usd(self) -> float:
        """S3's part: its requests."""
        return (self.s3_put * pricing.PRICE_PER_S3_PUT + self.s3_get * pricing.PRICE_PER_S3_GET
                + self.s3_list * pricing.PRICE_PER_S3_LIST)

    @property
    def total_usd(self) -> float:
        """The estimated bill, USD."""
        return self.lambda_usd + self.s3_usd

    def summary(self) -> dict[str, Any]:
        """The figures under readable names, in order (a table's rows)."""
        return {
            "Lambda requests": self.invocations,
            "billed seconds (invocations)": round(self.billed_seconds, 3),
            "cold starts": self.cold_starts,
            "billed INIT seconds": round(self.init_seconds, 3),
            "memory size (MB)": self.memory_mb,
            "billed GB-seconds": round(self.gb_seconds, 3),
            "S3 PUT requests": self.s3_put,
            "S3 GET requests": self.s3_get,
            "S3 LIST requests": self.s3_list,
            "Lambda cost (USD)": self.lambda_usd,
            "S3 cost (USD)": self.s3_usd,
            "estimated cost (USD)": self.total_usd,
        }

    def to_dict(self) -> dict[str, Any]:
        """The fields and the derived figures, under their attribute names."""
        return {**asdict(self), "gb_seconds": self.gb_seconds, "s3_requests": self.s3_requests,
                "lambda_usd": self.lambda_usd, "s3_usd": self.s3_usd, "total_usd": self.total_usd}

    def __str__(self) -> str:
        return (f"{self.invocations} Lambda requests ({self.calls} calls), "
                f"{self.gb_seconds:.3f} GB-s at {self.memory_mb:g} MB {self.arch} "
                f"({self.cold_starts} cold starts, {self.init_seconds:.2f} s INIT), "
                f"{self.s3_requests} S3 requests ({self.s3_put} PUT, {self.s3_get} GET, "
                f"{self.s3_list} LIST): ${self.total_usd:.6f} "
                f"(Lambda ${self.lambda_usd:.6f}, S3 ${self.s3_usd:.6f})")


def estimate(metrics: pd.DataFrame, *, memory_mb: float, arch: str = "x86_64",
             functions: int = 1, objects: int = 0,
             poll_interval: tuple[float, float] | None = None,
             client_lists: int | None = None) -> CostEstimate:
    """The estimated AWS bill of the calls in ``metrics`` (see the module doc for what counts).

    ``metrics`` has a row per call with the columns of ``Executor.metrics()``; missing columns
    count as unknown (e.g. a table with ``duration`` only: one invocation per row, no S3
    polling). ``functions`` and ``objects`` are how many functions and stored objects the job
    uploaded; ``client_lists`` the LIST requests the client made while the job ran, if counted
    (else they are modelled with the collector's ``poll_interval``, default its S3 default).
    """
    import numpy as np

    if arch not in pricing.PRICE_PER_GB_SECOND:
        raise ValueError(f"unknown architecture {arch!r}; expected one of "
                         f"{sorted(pricing.PRICE_PER_GB_SECOND)}")
    if not memory_mb or memory_mb <= 0:
        raise ValueError(f"memory_mb must be a positive number of MB, got {memory_mb!r}")
    frame = metrics.reset_index(drop=True)
    column = lambda name: frame[name] if name in frame else np.full(len(frame), np.nan)  # noqa: E731
    finished = _floats(column("finished"))
    duration = _floats(column("duration"))
    # A row with a record: it ran (or the client recorded its failure). Without finish times
    # (a plain executor's table), every row with a duration ran.
    ran = ~np.isnan(finished) if "finished" in frame else ~np.isnan(duration)
    client_side = (column("worker") == "client") if "worker" in frame else np.zeros(len(frame), bool)
    remote = ran & ~np.asarray(client_side, bool)

    invocation = [inv if isinstance(inv, str) and inv else f"row{i}"
                  for i, inv in enumerate(column("invocation"))]
    started = _floats(column("invocation_started"))
    call_started = _floats(column("started"))
    init = _floats(column("init_duration"))
    cold = _cold(frame)

    groups: dict[str, list[int]] = {}
    for i in np.flatnonzero(remote):
        groups.setdefault(invocation[i], []).append(i)
    billed = init_s = 0.0
    cold_starts = control_gets = fn_gets = 0
    for rows in groups.values():
        begin = np.nanmin(started[rows]) if not np.all(np.isnan(started[rows])) else np.nan
        end = np.nanmax(finished[rows]) if not np.all(np.isnan(finished[rows])) else np.nan
        seconds = end - begin if not np.isnan(begin + end) else float(np.nansum(duration[rows]))
        billed += _billed(seconds)
        if cold[rows].any():
            cold_starts += 1
            fn_gets += 1
            measured = init[rows][~np.isnan(init[rows])]
            init_s += _billed(measured[0] if len(measured) else pricing.INIT_SECONDS_ESTIMATE)
        # The control record: before each call but the first and after each call, once a second
        # at most, counted from the invocation's start.
        span = seconds if not np.isnan(seconds) else 0.0
        control_gets += min(2 * len(rows) - 1, int(span // _control_check_seconds()))

    calls = int(ran.sum())
    invocations = len(groups)
    workers = column("worker")[remote] if "worker" in frame else []
    n_workers = len(set(workers)) if len(workers) else min(invocations, 1)
    blobs = _blobs(invocation, remote) or invocations
    runtime_put = invocations + 2 * int(remote.sum())
    runtime_get = invocations + fn_gets + control_gets + objects * n_workers
    control = 1 if len(frame) else 0  # written before the job's first invocation
    client_put = control + functions + objects + 2 * blobs + 2 * int((ran & ~remote).sum())
    client_get = calls
    keys = control + functions + objects + 2 * blobs + invocations + 2 * calls
    if client_lists is None:
        client_lists = (_polls(_floats(column("submitted")), finished[ran], call_started,
                               poll_interval or S3_POLL_INTERVAL)
                        + _start_lists(_floats(column("submitted")), started, call_started))
    client_list = client_lists + math.ceil(keys / LIST_PAGE_KEYS)
    return CostEstimate(memory_mb=float(memory_mb), arch=arch, calls=calls,
                        invocations=invocations, billed_seconds=billed, cold_starts=cold_starts,
                        init_seconds=init_s, s3_put=runtime_put + client_put,
                        s3_get=runtime_get + client_get, s3_list=client_list)


def function_config(backend: Any) -> tuple[float, str]:
    """(memory MB, architecture) of the backend's Lambda function; for a backend without one
    (local), ``lambdamap deploy``'s defaults: what the job would cost if deployed as is."""
    from .config import Settings

    deployed = getattr(backend, "function_config", None) or {}
    settings = getattr(backend, "settings", None)
    memory = deployed.get("MemorySize") or getattr(settings, "memory", None) or Settings.memory
    arch = ((deployed.get("Architectures") or [None])[0] or getattr(settings, "architecture", None)
            or Settings.architecture)
    return float(memory), arch


# -- the parts -------------------------------------------------------------------------------


def _floats(values) -> Any:
    import numpy as np

    return np.asarray(
        [np.nan if v is None else v for v in values], dtype=float)


def _cold(frame) -> Any:
    import numpy as np

    if "cold" in frame:
        values = frame["cold"]
    elif "warm" in frame:
        values = frame["warm"].map({True: False, False: True})
    else:
        return np.zeros(len(frame), bool)
    return np.asarray([v is True or v == 1 for v in values], bool)


def _billed(seconds: float) -> float:
    """Seconds as Lambda bills them: rounded up to the millisecond."""
    granularity = pricing.BILLING_GRANULARITY_S
    return math.ceil(round(max(seconds, 0.0) / granularity, 6)) * granularity


def _blobs(invocations: list[str], remote) -> int:
    """Argument blobs: the first field of the invocation ids (``blob.index.attempt.sender``)."""
    return len({inv.split(".", 1)[0] for inv, r in zip(invocations, remote)
                if r and not inv.startswith("row")})


def _polls(submitted, finished, started, interval: tuple[float, float]) -> int:
    """LISTs of the status prefix: the collector's adaptive polling, replayed over the finish
    times (a poll that finds results keeps the minimum interval, an idle one doubles it)."""
    import numpy as np

    times = np.sort(finished[~np.isnan(finished)])
    origin = np.concatenate([submitted[~np.isnan(submitted)], started[~np.isnan(started)]])
    if not len(times) or not len(origin):
        return 0
    low, high = interval
    t, wait, polls, i = float(origin.min()), low, 0, 0
    while i < len(times):
        step = high + POLL_SECONDS
        if wait >= high and times[i] - t > step:  # idle at the maximum: skip ahead in one step
            skipped = int((times[i] - t) // step)
            t += skipped * step
            polls += skipped
            continue
        t += wait + POLL_SECONDS
        polls += 1
        found = int(np.searchsorted(times, t, side="right")) - i
        i += max(found, 0)
        wait = low if found > 0 else min(wait * 2, high)
    return polls


def _start_lists(submitted, invocation_started, started) -> int:
    """LISTs of the start markers: every START_LIST_INTERVAL while an invocation has not begun."""
    import numpy as np

    from .executor import START_LIST_INTERVAL

    begun = invocation_started[~np.isnan(invocation_started)]
    if not len(begun):
        begun = started[~np.isnan(started)]
    origin = submitted[~np.isnan(submitted)]
    if not len(begun) or not len(origin):
        return 0
    return 1 + int(max(begun.max() - origin.min(), 0.0) // START_LIST_INTERVAL)


def _control_check_seconds() -> float:
    from runtime_layer.handler import CONTROL_CHECK_SECONDS

    return CONTROL_CHECK_SECONDS
