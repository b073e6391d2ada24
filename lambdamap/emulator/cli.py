"""``lambdamap emulate``: run the Lambda emulator in the foreground until Ctrl-C or SIGTERM."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from .spec import FunctionSpec


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lambdamap emulate",
        description="A local AWS Lambda on 127.0.0.1: the Invoke API, each invocation run by a "
                    "warm pool of awslambdaric worker processes.")
    p.add_argument("--port", type=int, default=0, help="Invoke API port (default: any free one)")
    p.add_argument("--function-name", default="lambdamap")
    p.add_argument("--handler", default="runtime_layer.handler.handler")
    p.add_argument("--code", metavar="PATH_OR_ZIP",
                   help="deployment package (task root); default: the current environment")
    p.add_argument("--layer", action="append", default=[], metavar="PATH_OR_ZIP",
                   help="a layer (zip or folder with python/ at its root); repeat, in order")
    p.add_argument("--concurrency", type=int, default=os.cpu_count() or 2,
                   help="worker processes (default: one per core)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="function time-out in seconds (default: lambdamap deploy's, 300)")
    p.add_argument("--memory", type=int, default=1024, help="memory size in MB")
    p.add_argument("--no-memory-limit", action="store_true",
                   help="do not kill workers whose peak RSS exceeds --memory")
    p.add_argument("--env", action="append", default=[], metavar="K=V",
                   help="environment variable for the workers; K alone copies it from here")
    p.add_argument("--region", default=os.environ.get("AWS_REGION")
                   or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
    p.add_argument("--async-retries", type=int, default=0, choices=(0, 1, 2),
                   help="times a failed Event invocation runs again (Lambda's default is 2)")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print the workers' output")
    return p


def _environment(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            if key not in os.environ:
                raise SystemExit(f"lambdamap emulate: --env {key}: not set in this environment")
            value = os.environ[key]
        env[key] = value
    return env


def cli_main(argv: list[str]) -> int:
    """Run ``lambdamap emulate`` with ``argv`` (the arguments after ``emulate``); exit status."""
    from .core import LambdaEmulator

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.quiet:
        logging.getLogger("lambdamap.emulator.output").setLevel(logging.WARNING)
    spec = FunctionSpec(handler=args.handler, code_dir=args.code, layer_dirs=args.layer,
                        timeout=args.timeout, memory_mb=args.memory,
                        environment=_environment(args.env), async_retries=args.async_retries)
    try:
        emulator = LambdaEmulator({args.function_name: spec}, concurrency=args.concurrency,
                                  port=args.port, region=args.region,
                                  enforce_memory=not args.no_memory_limit)
    except ValueError as exc:
        print(f"lambdamap emulate: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with emulator:
            url = emulator.endpoint_url
            print(f"Lambda emulator: function {args.function_name!r} ({args.handler}, "
                  f"{args.concurrency} workers, timeout {args.timeout:g} s, {args.memory} MB)\n"
                  f"  endpoint:  {url}\n"
                  f"  lambdamap: export LAMBDAMAP_LAMBDA_ENDPOINT_URL={url}\n"
                  f"  boto3:     boto3.client('lambda', endpoint_url='{url}', "
                  f"region_name='{args.region}')\n"
                  "Ctrl-C to stop.", flush=True)
            while not stop.wait(0.5):  # a timed wait, so that Ctrl-C is seen at once
                pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("Lambda emulator stopped.", flush=True)
    return 0
