"""Benchmark: per-task overhead of lambdamap's local backend vs ProcessPoolExecutor and Lithops.

    .venv/bin/python benchmarks/overhead.py [--repeats 5] [--cpu-repeats 3]
                                            [--lithops-repeats N] [--lithops-version {1,2}]
                                            [--skip-lithops] [--quick]

What it measures, in one run, on this machine:

* trivial tasks, ``return x + 1``, N=100 and N=1000, chunksize=1: wall time of one whole ``map``
  divided by N, i.e. milliseconds of overhead per task;
* a CPU-bound case: 40 tasks of ~60 ms of numpy work each (the work size is calibrated once at
  start so that one task takes ~60 ms in this process, and every peer gets the same work);

for three peers, each with two workers:

* ``lambdamap``: ``Executor(workers=2)`` on the embedded local backend, created once (its creation
  time is reported separately as the cold start) and warmed up before timing;
* ``ProcessPoolExecutor``: ``concurrent.futures.ProcessPoolExecutor(2)``, also warmed up;
* ``Lithops``: Lithops' localhost backend and storage, configured in code (no config file),
  localhost implementation version 1 by default (``--lithops-version 2`` for Lithops 3.8's
  default, which starts one process per call: see ``LithopsPeer``). Lithops is not a dependency
  of the project: it lives in its own virtualenv, ``benchmarks/.venv-lithops`` (made here on first
  use, with ``pip install lithops numpy``), and runs in a child process of that interpreter that
  gets the workload as a small script and answers each measurement with one JSON line.

The machine is shared and noisy, so the peers are interleaved (A B C, B C A, C A B, ...: each
repeat starts with the next peer), every measurement is repeated, and the report uses medians and
ratios of medians taken in the same run. Results go to ``benchmarks/results/overhead.json`` (machine
info, versions, raw times, medians, ratios, goals) and ``overhead.png``; a Markdown table for the
README is printed. ``--quick`` is a smoke test: fewer repeats and tasks, and it writes to
``benchmarks/results/scratch/`` instead of overwriting the real results.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import inspect
import json
import math
import multiprocessing
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
SCRATCH = os.path.join(RESULTS, "scratch")
LITHOPS_VENV = os.path.join(HERE, ".venv-lithops")
LITHOPS_PYTHON = os.path.join(LITHOPS_VENV, "bin", "python")

WORKERS = 2
CPU_TASK_SECONDS = 0.060
# Per-measurement limits: a hang in any peer must end the run with a report, never block it.
MEASURE_TIMEOUT = 300.0
LITHOPS_START_TIMEOUT = 300.0
LITHOPS_INSTALL_TIMEOUT = 600.0

# Goals, checked against the medians of this run.
GOAL_LAMBDAMAP_MS_PER_TASK = 1.0      # trivial, N=1000, chunksize=1
GOAL_VS_LITHOPS = 25.0                # lambdamap at least this many times faster
GOAL_VS_POOL_TRIVIAL = 3.0            # at most this many times ProcessPoolExecutor's time
GOAL_VS_POOL_CPU = 1.10               # CPU-bound wall time within 10% of ProcessPoolExecutor's


# -- the workload: the same source runs in every peer (the Lithops child gets it as text) -----

def trivial(x: int) -> int:
    return x + 1


def cpu_work(reps: int) -> float:
    # Element-wise ufuncs, not BLAS: one task stays on one core, so two workers use two cores
    # without a BLAS thread pool oversubscribing them.
    a = np.linspace(0.0, 1.0, 100_000)
    total = 0.0
    for _ in range(reps):
        total += float(np.sin(a).sum())
    return total


def calibrate(target: float = CPU_TASK_SECONDS) -> tuple[int, float]:
    """Return (reps, seconds): the ``cpu_work`` size that takes ~``target`` here, and its time."""
    cpu_work(5)  # warm the caches and numpy's first-call paths
    reps = 20
    # Scale and re-measure a few times: on a shared machine one probe can be off by 2x.
    for _ in range(4):
        seconds = statistics.median(_timed(cpu_work, reps) for _ in range(3))
        if abs(seconds / target - 1) < 0.05:
            break
        reps = max(1, round(reps * target / seconds))
    return reps, statistics.median(_timed(cpu_work, reps) for _ in range(5))


def _timed(fn: Callable, *args: Any) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


@dataclass
class Case:
    name: str
    label: str
    fn: Callable
    items: list
    expected: list

    @property
    def n(self) -> int:
        return len(self.items)


def make_cases(cpu_reps: int, cpu_tasks: int) -> list[Case]:
    cpu_result = cpu_work(cpu_reps)
    cases = [Case(f"trivial_{n}", f"trivial, N={n}", trivial, list(range(n)),
                  [x + 1 for x in range(n)]) for n in (100, 1000)]
    cases.append(Case(f"cpu_{cpu_tasks}", f"CPU, {cpu_tasks} x ~{CPU_TASK_SECONDS * 1e3:.0f} ms",
                      cpu_work, [cpu_reps] * cpu_tasks, [cpu_result] * cpu_tasks))
    return cases


def check(case: Case, results: Sequence) -> None:
    """Raise unless ``results`` are the case's expected results (a fast wrong answer is no win)."""
    ok = len(results) == case.n and all(
        math.isclose(r, e, rel_tol=1e-9) for r, e in zip(results, case.expected))
    if not ok:
        raise AssertionError(f"{case.name}: wrong results (first: {list(results[:3])!r})")


# -- peers: each is created and warmed up once, then runs one case per ``run`` ----------------

class Peer:
    name: str
    cold_start: float | None = None   # seconds to create the executor (workers started)
    warmup: float | None = None       # seconds of the untimed warm-up maps

    def run(self, case: Case) -> float:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LambdamapPeer(Peer):
    name = "lambdamap"

    def __init__(self) -> None:
        from lambdamap import Executor  # here: the Lithops child never imports lambdamap

        start = time.perf_counter()
        self.ex = Executor(workers=WORKERS)
        self.cold_start = time.perf_counter() - start
        self.warmup = _warm_up(self)

    def run(self, case: Case) -> float:
        start = time.perf_counter()
        results = list(self.ex.map(case.fn, case.items, chunksize=1, timeout=MEASURE_TIMEOUT))
        elapsed = time.perf_counter() - start
        check(case, results)
        return elapsed

    def close(self) -> None:
        self.ex.shutdown(wait=True, cancel_futures=True)


class PoolPeer(Peer):
    name = "ProcessPoolExecutor"

    def __init__(self) -> None:
        # spawn, not fork: this process already runs lambdamap's threads, and forking a threaded
        # process can deadlock the child (and forkserver would leave its server process running).
        # Only start-up differs; the per-task path (pickles over pipes) is the same.
        context = multiprocessing.get_context("spawn")
        start = time.perf_counter()
        self.pool = concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=context)
        self.cold_start = time.perf_counter() - start  # workers start lazily: see warmup
        self.warmup = _warm_up(self)

    def run(self, case: Case) -> float:
        start = time.perf_counter()
        results = list(self.pool.map(case.fn, case.items, chunksize=1, timeout=MEASURE_TIMEOUT))
        elapsed = time.perf_counter() - start
        check(case, results)
        return elapsed

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _warm_up(peer: Peer) -> float:
    """Run small untimed maps so that every worker is up and has imported numpy."""
    start = time.perf_counter()
    warm = [Case("warm", "", trivial, list(range(4 * WORKERS)), list(range(1, 4 * WORKERS + 1))),
            Case("warm_cpu", "", cpu_work, [1] * 2 * WORKERS, [cpu_work(1)] * 2 * WORKERS)]
    for case in warm:
        peer.run(case)
    return time.perf_counter() - start


class LithopsPeer(Peer):
    """Lithops' localhost backend, driven in a child process of the Lithops virtualenv.

    The child runs ``lithops_child.py`` (written to results/scratch/ so a failure can be rerun by
    hand): it creates one FunctionExecutor, warms it up, then answers each JSON request line on
    its stdin with one JSON line on its stdout.

    ``version`` picks Lithops' localhost implementation. Version 1 starts one runner process per
    map that runs the calls in a pool of ``worker_processes``; version 2 (Lithops 3.8's default)
    starts one Python process per call, which on this machine costs 10-20x more per task and, in
    our runs, sometimes hung on a map issued right after the previous one finished. Version 1 is
    the default here: it is the faster peer, so the comparison is the stricter one.
    """

    name = "Lithops"

    def __init__(self, version: int = 1) -> None:
        ensure_lithops_venv()
        os.makedirs(SCRATCH, exist_ok=True)
        script = os.path.join(SCRATCH, "lithops_child.py")
        with open(script, "w") as f:
            f.write(lithops_child_source())
        # Lithops keeps its storage, job files and runner under $TMPDIR/lithops-$USER: point
        # TMPDIR at a folder of our own so nothing is shared with other users and it can be removed.
        self.tmpdir = os.path.join(SCRATCH, "lithops-tmp")
        os.makedirs(self.tmpdir, exist_ok=True)
        config = {
            "lithops": {"backend": "localhost", "storage": "localhost", "log_level": "WARNING",
                        # The default 2 s status poll would dominate a 100-task map; lambdamap
                        # polls a local store every 2-100 ms, so give Lithops a comparable 0.1 s.
                        "monitoring_interval": 0.1},
            # An absolute interpreter path: the default, "python", would be whatever is first on
            # PATH, not this virtualenv's interpreter that has Lithops installed.
            "localhost": {"runtime": LITHOPS_PYTHON, "worker_processes": WORKERS,
                          "version": version},
        }
        self.lithops_localhost_version = version
        env = dict(os.environ, TMPDIR=self.tmpdir, PYTHONUNBUFFERED="1")
        env.pop("LITHOPS_CONFIG_FILE", None)  # the config above, never one from the environment
        env.pop("LITHOPS_CONFIG", None)
        self.stderr_path = os.path.join(SCRATCH, "lithops_child.stderr")
        self._stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen([LITHOPS_PYTHON, script, json.dumps(config)], cwd=SCRATCH,
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True, start_new_session=True)
        # A reader thread turns the child's stdout into a queue, so every wait has a timeout.
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            ready = self._receive(LITHOPS_START_TIMEOUT)
        except BaseException:
            self.close()
            raise
        self.cold_start, self.warmup = ready["create_s"], ready["warmup_s"]
        self.version = ready["lithops_version"]

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _receive(self, timeout: float) -> dict:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"Lithops child gave no answer within {timeout:.0f} s "
                               f"(see {self.stderr_path})") from None
        if line is None:
            raise RuntimeError(f"Lithops child exited with {self.proc.wait()} "
                               f"(see {self.stderr_path}): {_tail(self.stderr_path)}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"Lithops child: {reply['error']}")
        return reply

    def run(self, case: Case) -> float:
        self.proc.stdin.write(json.dumps({"fn": case.fn.__name__, "items": case.items}) + "\n")
        self.proc.stdin.flush()
        reply = self._receive(MEASURE_TIMEOUT)
        check(case, reply["results"])
        return reply["seconds"]

    def close(self) -> None:
        # Lithops starts its runner and task processes in sessions of their own, so neither
        # killpg nor the child's exit reaches them: note the child's descendants first.
        descendants = _descendants(self.proc.pid)
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        _terminate(descendants + _descendants(self.proc.pid))
        self._stderr.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _terminate(processes: list) -> None:
    """Stop these processes (psutil checks each is still the process it was, not a reused pid)."""
    import psutil

    alive = [p for p in processes if p.is_running()]
    for p in alive:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def ensure_lithops_venv() -> None:
    """Create benchmarks/.venv-lithops with Lithops in it, unless it already imports Lithops."""
    # find_spec, not import: importing Lithops creates folders under the shared /tmp.
    probe = ("import importlib.util as u, sys; "
             "sys.exit(not (u.find_spec('lithops') and u.find_spec('numpy')))")
    if os.path.exists(LITHOPS_PYTHON) and subprocess.run(
            [LITHOPS_PYTHON, "-c", probe], capture_output=True).returncode == 0:
        return
    print(f"creating {LITHOPS_VENV} (pip install lithops numpy) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", LITHOPS_VENV], check=True)
    subprocess.run([LITHOPS_PYTHON, "-m", "pip", "install", "-q", "lithops", "numpy"], check=True,
                   timeout=LITHOPS_INSTALL_TIMEOUT)


def lithops_child_source() -> str:
    """The script the Lithops interpreter runs: the workload's own source plus a request loop."""
    workload = "\n\n".join(inspect.getsource(fn) for fn in (trivial, cpu_work))
    return LITHOPS_CHILD.replace("# WORKLOAD #", workload)


LITHOPS_CHILD = textwrap.dedent('''\
    """Lithops localhost peer of benchmarks/overhead.py: argv[1] is the Lithops config (JSON);
    each stdin line {"fn": name, "items": [...]} is answered on stdout with
    {"seconds": wall time of map + get_result, "results": [...]}; {"cmd": "quit"} ends it."""
    import json
    import os
    import sys
    import time
    import traceback

    # Answers go over a private copy of stdout; fd 1 becomes stderr, so nothing that Lithops or
    # its task processes print can corrupt them.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    import numpy as np
    import lithops


    # WORKLOAD #


    def answer(**message):
        answers.write(json.dumps(message) + "\\n")


    def run(fexec, fn, items):
        return fexec.get_result(fexec.map(fn, items, chunksize=1), show_progressbar=False)


    def main():
        config = json.loads(sys.argv[1])
        start = time.perf_counter()
        fexec = lithops.FunctionExecutor(backend="localhost", storage="localhost", config=config,
                                         log_level="WARNING")
        created = time.perf_counter() - start
        with fexec:
            start = time.perf_counter()
            run(fexec, trivial, list(range(8)))
            run(fexec, cpu_work, [1] * 4)
            answer(create_s=created, warmup_s=time.perf_counter() - start,
                   lithops_version=lithops.__version__, python=sys.executable)
            for line in sys.stdin:
                request = json.loads(line)
                if request.get("cmd") == "quit":
                    break
                try:
                    start = time.perf_counter()
                    results = run(fexec, globals()[request["fn"]], request["items"])
                    answer(seconds=time.perf_counter() - start, results=results)
                except Exception:
                    answer(error=traceback.format_exc())


    if __name__ == "__main__":
        try:
            main()
        except Exception:
            answer(error=traceback.format_exc())
            raise
    ''')


def _tail(path: str, lines: int = 5) -> str:
    try:
        with open(path) as f:
            return " | ".join(f.read().strip().splitlines()[-lines:])
    except OSError:
        return ""


# -- the run: interleaved repeats, then medians, ratios and goals -----------------------------

@dataclass
class Measurements:
    raw: dict[str, dict[str, list[float]]] = field(default_factory=dict)   # peer -> case -> s
    errors: dict[str, str] = field(default_factory=dict)                   # peer -> what failed

    def add(self, peer: str, case: str, seconds: float) -> None:
        self.raw.setdefault(peer, {}).setdefault(case, []).append(seconds)

    def median(self, peer: str, case: str) -> float | None:
        times = self.raw.get(peer, {}).get(case)
        return statistics.median(times) if times else None


def start_peers(args: argparse.Namespace, measurements: Measurements) -> list[Peer]:
    peers: list[Peer] = []
    makers: list[tuple[str, Callable[[], Peer]]] = [
        (LambdamapPeer.name, LambdamapPeer), (PoolPeer.name, PoolPeer)]
    if not args.skip_lithops:
        makers.append((LithopsPeer.name, lambda: LithopsPeer(args.lithops_version)))
    for name, make in makers:
        print(f"starting {name} ...", file=sys.stderr)
        try:
            peers.append(make())
        except Exception as e:  # a peer that cannot start is reported, not fatal
            measurements.errors[name] = f"start: {type(e).__name__}: {e}"
            print(f"  {name} failed to start: {e}", file=sys.stderr)
    return peers


def measure(peers: list[Peer], cases: list[Case], repeats: dict[str, int],
            measurements: Measurements) -> None:
    """Interleave: every repeat runs each case on each peer, starting with the next peer."""
    alive = list(peers)
    for r in range(max(repeats.values())):
        for case in cases:
            order = alive[r % len(alive):] + alive[:r % len(alive)] if alive else []
            for peer in order:
                if r >= repeats.get(f"{peer.name}/{case.name}", repeats[case.name]):
                    continue
                try:
                    seconds = peer.run(case)
                except Exception as e:
                    # A failed peer is dropped from the run and reported; the others go on.
                    measurements.errors[peer.name] = (f"{case.name} repeat {r}: "
                                                      f"{type(e).__name__}: {e}")
                    print(f"  {peer.name} failed: {e}", file=sys.stderr)
                    alive.remove(peer)
                    continue
                measurements.add(peer.name, case.name, seconds)
                print(f"  repeat {r} {case.name:<13} {peer.name:<20} {seconds * 1e3 / case.n:8.3f}"
                      f" ms/task  ({seconds:.3f} s)", file=sys.stderr)


def summarize(peers: list[Peer], cases: list[Case], m: Measurements) -> dict:
    medians = {p: {c.name: m.median(p, c.name) for c in cases} for p in m.raw}
    ms_per_task = {p: {c.name: v * 1e3 / c.n for c in cases if (v := medians[p][c.name])}
                   for p in medians}
    trivial_n, cpu = cases[1].name, cases[2].name

    def ratio(a: str, b: str, case: str) -> float | None:
        x, y = m.median(a, case), m.median(b, case)
        return x / y if x and y else None

    def paired(a: str, b: str, case: str) -> float | None:
        # Median of per-repeat ratios: neighbours in time share the machine's load of the moment.
        xs, ys = m.raw.get(a, {}).get(case, []), m.raw.get(b, {}).get(case, [])
        pairs = [x / y for x, y in zip(xs, ys)]
        return statistics.median(pairs) if pairs else None

    ratios = {}
    for case in cases:
        ratios[case.name] = {
            "lambdamap_over_pool": ratio("lambdamap", "ProcessPoolExecutor", case.name),
            "lambdamap_over_pool_paired": paired("lambdamap", "ProcessPoolExecutor", case.name),
            "lithops_over_lambdamap": ratio("Lithops", "lambdamap", case.name),
            "lithops_over_lambdamap_paired": paired("Lithops", "lambdamap", case.name),
        }
    lm_ms = ms_per_task.get("lambdamap", {}).get(trivial_n)

    def goal(value: float | None, ok: Callable[[float], bool], target: str) -> dict:
        return {"target": target, "value": value,
                "status": "not measured" if value is None else ("pass" if ok(value) else "FAIL")}

    goals = {
        "lambdamap_ms_per_task_n1000": goal(lm_ms, lambda v: v <= GOAL_LAMBDAMAP_MS_PER_TASK,
                                            f"<= {GOAL_LAMBDAMAP_MS_PER_TASK} ms/task"),
        "faster_than_lithops_n1000": goal(ratios[trivial_n]["lithops_over_lambdamap"],
                                          lambda v: v >= GOAL_VS_LITHOPS, f">= {GOAL_VS_LITHOPS}x"),
        "vs_pool_trivial_n1000": goal(ratios[trivial_n]["lambdamap_over_pool"],
                                      lambda v: v <= GOAL_VS_POOL_TRIVIAL,
                                      f"<= {GOAL_VS_POOL_TRIVIAL}x ProcessPoolExecutor"),
        "vs_pool_cpu_wall": goal(ratios[cpu]["lambdamap_over_pool"],
                                 lambda v: v <= GOAL_VS_POOL_CPU,
                                 f"<= {GOAL_VS_POOL_CPU}x ProcessPoolExecutor"),
    }
    return {
        "cases": {c.name: {"label": c.label, "n": c.n} for c in cases},
        "raw_seconds": m.raw,
        "median_seconds": medians,
        "median_ms_per_task": ms_per_task,
        # max/min over the repeats: how much the shared machine moved this measurement
        "spread_max_over_min": {p: {c: max(t) / min(t) for c, t in cs.items()}
                                for p, cs in m.raw.items()},
        "startup_seconds": {p.name: {"cold_start": p.cold_start, "warmup": p.warmup}
                            for p in peers},
        "ratios": ratios,
        "goals": goals,
        "errors": m.errors,
    }


def leftover_children(grace: float = 10.0) -> list[str]:
    """Child processes still alive after every peer was closed (should be none), then ended."""
    import psutil

    # multiprocessing's resource tracker (started for the spawn pool's semaphores) is meant to
    # live until this interpreter exits: it is no peer's leftover.
    children = [p for p in psutil.Process().children(recursive=True)
                if "resource_tracker" not in " ".join(_cmdline(p))]
    _, alive = psutil.wait_procs(children, timeout=grace)
    described = []
    for p in alive:
        described.append(f"{p.pid}: {' '.join(_cmdline(p))[:200]}")
    _terminate(alive)
    return described


def _cmdline(process) -> list[str]:
    import psutil

    try:
        return process.cmdline()
    except psutil.Error:
        return []


def machine_info() -> dict:
    import psutil

    model = next((line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo")
                  if line.startswith("model name")), platform.processor())
    return {"platform": platform.platform(), "cpu": model, "cpu_count": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "loadavg_at_start": os.getloadavg()}


def versions(peers: list[Peer]) -> dict:
    import cloudpickle
    import lambdamap

    try:
        commit = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = None
    lithops = next((p.version for p in peers if isinstance(p, LithopsPeer)), None)
    return {"python": platform.python_version(), "numpy": np.__version__,
            "cloudpickle": cloudpickle.__version__,
            "lambdamap": getattr(lambdamap, "__version__", None), "lambdamap_git": commit,
            "lithops": lithops}


def _read_lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.readlines()
    except OSError:
        return []


# -- output: Markdown table, JSON, chart ------------------------------------------------------

PEER_ORDER = ("lambdamap", "ProcessPoolExecutor", "Lithops")


def markdown(report: dict) -> str:
    cases = report["cases"]
    names = list(cases)
    head = (["peer"] + [f"{cases[c]['label']}: ms/task" for c in names[:2]]
            + [f"{cases[names[2]]['label']}: wall s", "creation s", "creation + warm-up s"])
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for peer in PEER_ORDER:
        if peer not in report["median_seconds"]:
            continue
        med, ms = report["median_seconds"][peer], report["median_ms_per_task"][peer]
        start = report["startup_seconds"].get(peer, {})
        first_use = (start["cold_start"] + start["warmup"]) if start.get("warmup") else None
        cells = [peer] + [_fmt(ms.get(c)) for c in names[:2]] + [
            _fmt(med.get(names[2])), _fmt(start.get("cold_start")), _fmt(first_use)]
        rows.append("| " + " | ".join(cells) + " |")
    repeats = report["repeats"]
    note = (f"\n{report['workers']} workers each, chunksize=1; medians of interleaved repeats "
            f"({repeats[names[1]]} trivial, {repeats[names[2]]} CPU")
    capped = [v for k, v in repeats.items() if k.startswith("Lithops/")]
    note += f", Lithops {max(capped)} at most)" if capped else ")"
    note += (f"; CPU task {report['cpu_task']['calibrated_seconds'] * 1e3:.0f} ms in-process, "
             f"ideal wall {report['cpu_task']['ideal_wall_seconds']:.2f} s")
    if report["versions"]["lithops"]:
        note += (f"; Lithops {report['versions']['lithops']} localhost "
                 f"v{report['lithops_config']['localhost.version']}")
    rows.append(note + ".")
    rows += ["", "| goal | target | measured | result |", "|---|---|---|---|"]
    for name, g in report["goals"].items():
        rows.append(f"| {name} | {g['target']} | {_fmt(g['value'])} | {g['status']} |")
    return "\n".join(rows)


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display here
    import matplotlib.pyplot as plt

    cases = report["cases"]
    peers = [p for p in PEER_ORDER if p in report["median_ms_per_task"]]
    fig, (ax, ax_start) = plt.subplots(1, 2, figsize=(12, 4.8),
                                       gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / max(1, len(peers))
    for i, peer in enumerate(peers):
        values = [report["median_ms_per_task"][peer].get(c, float("nan")) for c in cases]
        xs = [j + (i - (len(peers) - 1) / 2) * width for j in range(len(cases))]
        label = peer if peer != "Lithops" else \
            f"Lithops (localhost v{report['lithops_config']['localhost.version']})"
        bars = ax.bar(xs, values, width, label=label)
        ax.bar_label(bars, labels=[_fmt(v) if v == v else "" for v in values], fontsize=8)
    ax.set_xticks(range(len(cases)), [c["label"] for c in cases.values()])
    ax.set_yscale("log")  # Lithops is ~100x the others: only a log axis shows all three
    ax.set_ylabel("ms per task (median wall time / N), log scale")
    ax.set_title(f"Per-task time, {WORKERS} workers, chunksize=1")
    ax.legend()
    # Creation alone flatters executors that start their workers lazily (ProcessPoolExecutor,
    # Lithops): stack the untimed warm-up on top, i.e. the time until workers are ready.
    colors = [f"C{i}" for i in range(len(peers))]
    creation = [report["startup_seconds"].get(p, {}).get("cold_start") or 0.0 for p in peers]
    warmup = [report["startup_seconds"].get(p, {}).get("warmup") or 0.0 for p in peers]
    ax_start.bar(range(len(peers)), creation, color=colors, label="creation")
    bars = ax_start.bar(range(len(peers)), warmup, bottom=creation, color=colors, alpha=0.4,
                        hatch="//", label="+ warm-up maps")
    ax_start.bar_label(bars, labels=[f"{c:.2f} + {w:.2f}" for c, w in zip(creation, warmup)],
                       fontsize=8)
    ax_start.set_xticks(range(len(peers)), [p.replace("ProcessPoolExecutor", "ProcessPool")
                                            for p in peers], fontsize=8)
    ax_start.set_ylabel("seconds")
    ax_start.set_title("Start-up: creation + warm-up")
    ax_start.legend(fontsize=8)
    fig.suptitle(f"lambdamap overhead benchmark ({report['machine']['cpu_count']} cores, "
                 f"{time.strftime('%Y-%m-%d', time.localtime(report['started']))})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- main ---------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the trivial cases")
    parser.add_argument("--cpu-repeats", type=int, default=3, help="repeats of the CPU case")
    parser.add_argument("--lithops-repeats", type=int, default=None,
                        help="cap Lithops' repeats of every case (it is ~50x slower per task)")
    parser.add_argument("--skip-lithops", action="store_true", help="measure only the local peers")
    parser.add_argument("--lithops-version", type=int, choices=(1, 2), default=1,
                        help="Lithops localhost implementation (default 1: see LithopsPeer)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 2 repeats, 1 CPU/Lithops repeat, 10 CPU tasks; "
                             "writes to results/scratch/")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.cpu_repeats, args.lithops_repeats = 2, 1, 1
    if min(args.repeats, args.cpu_repeats, args.lithops_repeats or 1) < 1:
        parser.error("repeats must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = SCRATCH if args.quick else RESULTS
    os.makedirs(out_dir, exist_ok=True)
    started = time.time()
    machine = machine_info()

    cpu_reps, cpu_task_s = calibrate()
    print(f"calibrated CPU task: cpu_work({cpu_reps}) = {cpu_task_s * 1e3:.1f} ms in-process",
          file=sys.stderr)
    cases = make_cases(cpu_reps, cpu_tasks=10 if args.quick else 40)
    repeats = {cases[0].name: args.repeats, cases[1].name: args.repeats,
               cases[2].name: args.cpu_repeats}
    if args.lithops_repeats and not args.skip_lithops:
        repeats.update({f"Lithops/{c.name}": min(args.lithops_repeats, repeats[c.name])
                        for c in cases})

    measurements = Measurements()
    peers: list[Peer] = []
    try:
        peers = start_peers(args, measurements)
        measure(peers, cases, repeats, measurements)
    finally:
        # Close in reverse order of creation; one failing close must not leave the others running.
        for peer in reversed(peers):
            try:
                peer.close()
            except Exception as e:
                measurements.errors.setdefault(peer.name, f"close: {type(e).__name__}: {e}")
    leftovers = leftover_children()

    machine["loadavg_at_end"] = os.getloadavg()
    report = {
        "benchmark": "overhead",
        "command": " ".join([os.path.relpath(sys.executable, ROOT), "benchmarks/overhead.py"]
                            + list(sys.argv[1:] if argv is None else argv)),
        "started": started, "duration_s": time.time() - started,
        "machine": machine, "versions": versions(peers), "workers": WORKERS,
        "cpu_task": {"reps": cpu_reps, "calibrated_seconds": cpu_task_s,
                     "target_seconds": CPU_TASK_SECONDS,
                     # N tasks of the in-process time on WORKERS cores, with zero overhead
                     "ideal_wall_seconds": cases[2].n * cpu_task_s / WORKERS},
        "repeats": repeats,
        "lithops_config": {"backend": "localhost", "storage": "localhost",
                           "localhost.version": args.lithops_version,
                           "localhost.runtime": os.path.relpath(LITHOPS_PYTHON, ROOT),
                           "localhost.worker_processes": WORKERS,
                           "monitoring_interval_s": 0.1, "chunksize": 1},
        "leftover_processes_after_close": leftovers,
        **summarize(peers, cases, measurements),
    }
    json_path, png_path = (os.path.join(out_dir, f"overhead.{ext}") for ext in ("json", "png"))
    with open(json_path, "w") as f:
        json.dump(report, f, indent=2)
    plot(report, png_path)
    print(markdown(report))
    if measurements.errors:
        print("\nerrors:", json.dumps(measurements.errors, indent=2), file=sys.stderr)
    if leftovers:
        print("\nprocesses left running after close (now ended):", *leftovers, sep="\n  ",
              file=sys.stderr)
    print(f"\nwrote {os.path.relpath(json_path, ROOT)} and {os.path.relpath(png_path, ROOT)}",
          file=sys.stderr)
    return 1 if measurements.errors else 0


if __name__ == "__main__":
    sys.exit(main())
