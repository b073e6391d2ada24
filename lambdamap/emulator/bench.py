"""Measure the emulator's per-invoke overhead: ``python -m lambdamap.emulator.bench [-n 300]``.

The function is an echo handler in a throw-away deployment package, so every number is the
emulator's own cost (plus awslambdaric's), not the handler's:

* ``DryRun via boto3``: boto3 and the Invoke API alone (no worker involved);
* ``RequestResponse via boto3``: the whole round trip a client sees;
* ``RequestResponse, in-process``: ``LambdaEmulator.invoke`` without HTTP: the Runtime API hop
  and the worker;
* ``Event``: throughput of queued invocations through all workers.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

ECHO = "def handler(event, context):\n    return event\n"


def _timed(fn, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def _summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {"median_ms": round(statistics.median(ordered), 3),
            "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 3),
            "mean_ms": round(statistics.fmean(ordered), 3)}


def run(n: int = 300, concurrency: int = 2) -> dict:
    """Run the measurements; return them as a dict."""
    import boto3
    from botocore.config import Config

    from .core import LambdaEmulator
    from .spec import FunctionSpec

    with tempfile.TemporaryDirectory() as code:
        with open(f"{code}/echo.py", "w") as f:
            f.write(ECHO)
        started = time.perf_counter()
        emulator = LambdaEmulator({"echo": FunctionSpec(handler="echo.handler", code_dir=code)},
                                  concurrency=concurrency, enforce_memory=False)
        with emulator:
            client = boto3.client("lambda", endpoint_url=emulator.endpoint_url,
                                  region_name="us-east-1", aws_access_key_id="testing",
                                  aws_secret_access_key="testing",
                                  config=Config(retries={"total_max_attempts": 1}))
            client.invoke(FunctionName="echo", Payload=b"{}")
            cold = (time.perf_counter() - started) * 1000
            payload = b'{"x": 1}'
            results = {
                "cold_start_ms": round(cold, 1),
                "dryrun_boto3": _summary(_timed(lambda: client.invoke(
                    FunctionName="echo", InvocationType="DryRun", Payload=payload), n)),
                "sync_boto3": _summary(_timed(lambda: client.invoke(
                    FunctionName="echo", Payload=payload)["Payload"].read(), n)),
                "sync_in_process": _summary(_timed(lambda: emulator.invoke("echo", payload), n)),
            }
            start = time.perf_counter()
            for _ in range(n):
                client.invoke(FunctionName="echo", InvocationType="Event", Payload=payload)
            emulator.wait_idle(timeout=120)
            elapsed = time.perf_counter() - start
            results["event_per_s"] = round(n / elapsed, 1)
    results.update(n=n, concurrency=concurrency)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lambdamap.emulator.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=300, help="invocations per measurement")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print JSON only")
    args = p.parse_args(argv)
    results = run(args.n, args.concurrency)
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"cold start (start() to first answer): {results['cold_start_ms']} ms")
    for key, label in (("dryrun_boto3", "DryRun via boto3 (no worker)"),
                       ("sync_boto3", "RequestResponse via boto3"),
                       ("sync_in_process", "RequestResponse, in-process (no HTTP front end)")):
        r = results[key]
        print(f"{label:50s} median {r['median_ms']:.2f} ms  p90 {r['p90_ms']:.2f} ms")
    print(f"{'Event, ' + str(args.concurrency) + ' workers':50s} {results['event_per_s']} "
          "invocations/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
