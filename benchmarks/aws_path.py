"""The AWS path through loopback stand-ins: how fast one client dispatches, and what S3 costs.

``python benchmarks/aws_path.py [--calls 1000] [--threads 8 32 64] [--chunksize 1 10] [--repeats 3]``

The "cloud" runs in a process of its own (as AWS would not share the client's interpreter):
moto's S3 server, counting the requests to the job bucket, and the Lambda emulator with two
functions: ``lambdamap`` (the universal handler from this environment, 2 awslambdaric workers)
and ``noop`` (returns at once). For each size of the client's invoke thread pool
(``invoke_threads``), median over repeats:

* **dispatch/s**: invocations one client gets accepted (HTTP 202) per second: ``AWSBackend``
  sending ``--calls`` real lambdamap events to ``noop``, from ``invoke`` until ``drain`` returns,
  and the client's CPU time per invocation (its bound on a core of its own: boto3's request
  building and signing, about 1 ms);
* **results/s**: a job of ``--calls`` trivial calls with ``Executor(backend="aws")``, from ``map``
  until the last result is in hand (bound here by 2 emulated workers and moto on 2 shared cores,
  not by the client);
* **S3 requests per call** of that job, counted at the server (client and workers, cleanup
  included), and the client's share (a botocore ``before-send`` hook on the executor's S3 client).

Writes ``benchmarks/results/aws_path.json`` and ``.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

FAKE_AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


# -- the cloud process ----------------------------------------------------------------------------


def serve_cloud(bucket: str, signing_key: str) -> None:
    """Run moto (counting S3 requests to ``bucket``) and the emulator; print endpoints; wait."""
    import boto3
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import WSGIRequestHandler, make_server

    from lambdamap.emulator import FunctionSpec, LambdaEmulator

    os.environ.update(FAKE_AWS_ENV)
    app, count, lock = DomainDispatcherApplication(create_backend_app), [0], threading.Lock()

    def counting(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/__requests":  # the benchmark's own question: how many so far?
            body = str(count[0]).encode()
            start_response("200 OK", [("Content-Length", str(len(body)))])
            return [body]
        if path.startswith(f"/{bucket}"):
            with lock:
                count[0] += 1
        return app(environ, start_response)

    class Quiet(WSGIRequestHandler):
        def log(self, *args) -> None:
            pass

    server = make_server("127.0.0.1", 0, counting, threaded=True, request_handler=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    s3_url = f"http://127.0.0.1:{server.server_address[1]}"
    boto3.client("s3", endpoint_url=s3_url).create_bucket(Bucket=bucket)

    noop_dir = tempfile.mkdtemp()
    Path(noop_dir, "noop.py").write_text("def handler(event, context):\n    return None\n")
    env = {**FAKE_AWS_ENV, "LAMBDAMAP_SIGNING_KEY": signing_key}
    functions = {"lambdamap": FunctionSpec(timeout=300, environment=env),
                 "noop": FunctionSpec(handler="noop.handler", code_dir=noop_dir, timeout=30)}
    with LambdaEmulator(functions, concurrency=2, enforce_memory=False) as emulator:
        print(json.dumps({"s3": s3_url, "lambda": emulator.endpoint_url}), flush=True)
        sys.stdin.read()  # until the benchmark closes our stdin
    server.shutdown()


class Cloud:
    """The cloud process, started and stopped by the benchmark."""

    def __init__(self, bucket: str, signing_key: str):
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", bucket, signing_key],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the cloud process did not start")
        self.endpoints = json.loads(line)

    def s3_requests(self) -> int:
        with urllib.request.urlopen(self.endpoints["s3"] + "/__requests") as response:
            return int(response.read())

    def stop(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- the client's measurements --------------------------------------------------------------------


def noop(x):
    return x


class _Listener:
    """An InvocationListener that only counts losses (there should be none)."""

    lost = 0

    def invocation_lost(self, event, cause, timed_out):
        self.lost += 1

    def wake(self, finished=None):
        pass


def dispatch_rate(n: int, threads: int) -> tuple[float, float]:
    """Invocations per second that one client gets accepted, sending real events to ``noop``,
    and the client's CPU milliseconds per invocation (what bounds it on a free core)."""
    from lambdamap import wire
    from lambdamap.backends.aws import AWSBackend
    from lambdamap.config import Settings

    backend = AWSBackend(Settings.resolve(function_name="noop", invoke_threads=threads))
    listener = _Listener()
    backend.start(listener)
    storage = {"type": "s3", "bucket": "b", "prefix": "lambdamap/", "region": "us-east-1",
               "endpoint_url": None}
    events = [wire.make_event(storage=storage, job_id=uuid.uuid4().hex[:24], fn="jobs/x/fn/" + "0" * 64,
                              args="jobs/x/args/00000000", byte_range=(i * 100, i * 100 + 100),
                              calls=[i], signed=True) for i in range(n)]
    try:
        start, cpu = time.perf_counter(), time.process_time()
        backend.invoke(events)
        backend.drain()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        backend.close()
    assert listener.lost == 0, f"{listener.lost} invocations were lost"
    return n / elapsed, 1000 * cpu / n


def job(calls: int, threads: int, chunksize: int, cloud: Cloud) -> dict:
    """One job of trivial calls: results per second and S3 requests per call."""
    from lambdamap import Executor

    before = cloud.s3_requests()
    client_requests = []
    start = time.perf_counter()
    with Executor(backend="aws", invoke_threads=threads, poll_interval=(0.02, 0.5)) as ex:
        ex.storage.client.meta.events.register("before-send.s3", lambda **_: client_requests.append(1))
        results = list(ex.map(noop, range(calls), chunksize=chunksize))
        collected = time.perf_counter() - start
    assert results == list(range(calls))
    total = cloud.s3_requests() - before  # after shutdown: the cleanup counts too
    return {"results_per_s": calls / collected, "s3_per_call": total / calls,
            "s3_client_per_call": len(client_requests) / calls,
            "s3_worker_per_call": (total - len(client_requests)) / calls}


def run(calls: int, thread_counts: list[int], chunksizes: list[int], repeats: int,
        dispatch_only: bool = False) -> dict:
    from lambdamap import signing

    bucket, key = f"bench-{uuid.uuid4().hex[:8]}", signing.new_key().hex()
    load_before = os.getloadavg()[0]
    cloud = Cloud(bucket, key)
    try:
        os.environ.update(FAKE_AWS_ENV, LAMBDAMAP_BUCKET=bucket, LAMBDAMAP_SIGNING_KEY=key,
                          LAMBDAMAP_S3_ENDPOINT_URL=cloud.endpoints["s3"],
                          LAMBDAMAP_LAMBDA_ENDPOINT_URL=cloud.endpoints["lambda"],
                          LAMBDAMAP_CONFIG=os.devnull)
        job(50, 8, 1, cloud)  # warm the workers
        rows = []
        for threads in thread_counts:
            rates, cpu_ms = zip(*(dispatch_rate(calls, threads) for _ in range(repeats)))
            if dispatch_only:
                rows.append({"threads": threads, "dispatch_per_s": round(statistics.median(rates), 1),
                             "client_cpu_ms_per_invocation": round(statistics.median(cpu_ms), 3)})
                print(json.dumps(rows[-1]), flush=True)
                continue
            for chunksize in chunksizes:
                runs = [job(calls, threads, chunksize, cloud) for _ in range(repeats)]
                row = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
                row.update(threads=threads, chunksize=chunksize,
                           dispatch_per_s=round(statistics.median(rates), 1),
                           client_cpu_ms_per_invocation=round(statistics.median(cpu_ms), 3))
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        cloud.stop()
    return {"calls": calls, "repeats": repeats, "machine_cores": os.cpu_count(),
            "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "emulator_workers": 2, "rows": rows,
            "note": "medians over repeats; the cloud (moto + emulator) runs in a separate process "
                    "on the same 2 cores; dispatch = invocations accepted per second by one client; "
                    "client_cpu_ms_per_invocation = the client's CPU time per invocation sent"}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    threads = sorted({r["threads"] for r in rows})
    chunksizes = sorted({r["chunksize"] for r in rows})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    dispatch = [next(r["dispatch_per_s"] for r in rows if r["threads"] == t) for t in threads]
    left.plot(threads, dispatch, "o-", label="invocations dispatched/s (one client)")
    cpu = [next(r["client_cpu_ms_per_invocation"] for r in rows if r["threads"] == t) for t in threads]
    left.plot(threads, [1000 / c for c in cpu], "^:", label="client bound: 1 / client CPU per invocation")
    for c in chunksizes:
        left.plot(threads, [next(r["results_per_s"] for r in rows if r["threads"] == t and r["chunksize"] == c)
                            for t in threads], "s--", label=f"results/s, chunksize {c}")
    left.axhline(500, color="grey", linestyle=":", label="goal: 500 invocations/s")
    left.set(xlabel="invoke threads", ylabel="per second", xscale="log",
             title=f"One client, {result['calls']} calls (median of {result['repeats']})")
    left.minorticks_off()
    left.set_xticks(threads, [str(t) for t in threads])
    left.legend(fontsize=7)
    labels = [f"{r['threads']} thr\nchunk {r['chunksize']}" for r in rows]
    client = [r["s3_client_per_call"] for r in rows]
    right.bar(labels, client, color="tab:blue", label="client")
    right.bar(labels, [r["s3_worker_per_call"] for r in rows], bottom=client, color="tab:orange",
              label="workers")
    right.axhline(4, color="grey", linestyle=":", label="goal: 4")
    right.set(ylabel="S3 requests per call", title="S3 requests per call")
    right.tick_params(axis="x", labelsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--threads", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--chunksize", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "aws_path.json")
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG from the JSON")
    parser.add_argument("--dispatch-only", action="store_true",
                        help="measure dispatch only; print, write nothing")
    parser.add_argument("--serve", nargs=2, metavar=("BUCKET", "KEY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve_cloud(*args.serve)
        return 0
    if args.replot:
        plot(json.loads(args.out.read_text()), args.out.with_suffix(".png"))
        return 0
    result = run(args.calls, args.threads, args.chunksize, args.repeats, args.dispatch_only)
    if args.dispatch_only:
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
