"""The ``lambdamap`` console script: ``deploy``, ``status``, ``logs``, ``destroy`` and ``emulate``.

::

    lambdamap deploy --bucket my-bucket --region eu-central-1      # build the layer, create/update all
    lambdamap deploy --bucket my-bucket --image 1234.dkr.ecr.../lambdamap:3.11   # container image
    lambdamap status                                               # what runs, do versions match?
    lambdamap status --no-probe                                    # ... from deploy's record alone
    lambdamap logs JOB [CALL] [--since 3d]                         # a job's invocations' logs
    lambdamap destroy [--delete-bucket]
    lambdamap emulate ...                                          # the local Lambda emulator

Options not given fall back to ``LAMBDAMAP_*`` variables and the config file
(:mod:`lambdamap.config`). ``deploy`` checks credentials, region, bucket and read access
before it builds anything, and builds the client's own package versions: where one has no wheel
for the runtime, it stops, names them and the ways out (``--allow-version-drift`` among them).
The exit code is 0 on success, 1 when ``status`` finds nothing deployed or versions that would
make results fail (warnings alone exit 0), when an AWS request or the build fails, 2 on usage
errors.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from .config import Settings

_SETTING_OPTIONS = {  # option -> (Settings field, type, help)
    "--function-name": ("function_name", str, "Lambda function name (default lambdamap)"),
    "--bucket": ("bucket", str, "S3 bucket for job data"),
    "--prefix": ("prefix", str, "key prefix in the bucket (default lambdamap)"),
    "--region": ("region", str, "AWS region"),
    "--role-name": ("role_name", str, "IAM role name (default FUNCTION-role)"),
    "--layer-name": ("layer_name", str, "layer name (default FUNCTION-runtime)"),
}
_DEPLOY_OPTIONS = {
    "--memory": ("memory", int, "function memory in MB (default 1024)"),
    "--timeout": ("timeout", int, "function time-out in seconds (default 300)"),
    "--architecture": ("architecture", str, "x86_64 (default) or arm64"),
}


def _add(parser: argparse.ArgumentParser, options: dict) -> None:
    for flag, (dest, kind, text) in options.items():
        parser.add_argument(flag, dest=dest, type=kind, default=None, help=text)


def _settings(args: argparse.Namespace) -> Settings:
    names = [dest for dest, _, _ in {**_SETTING_OPTIONS, **_DEPLOY_OPTIONS}.values()]
    return Settings.resolve(**{n: getattr(args, n) for n in names if hasattr(args, n)})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lambdamap", description="Run lambdamap on AWS Lambda.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log boto3 and build details")
    commands = parser.add_subparsers(dest="command", required=True)

    deploy = commands.add_parser("deploy", help="build the runtime; create or update bucket, role, "
                                                "layer and function (idempotent)")
    _add(deploy, _SETTING_OPTIONS)
    _add(deploy, _DEPLOY_OPTIONS)
    deploy.add_argument("--image", metavar="URI", help="deploy a container image (built from "
                        "runtime_layer/Dockerfile and pushed to ECR) instead of the layer")
    deploy.add_argument("--full", action="store_true",
                        help="put doubleml in the layer too (larger than Lambda allows today)")
    deploy.add_argument("--requirement", action="append", dest="requirements", metavar="REQ",
                        help="third-party requirement for the layer (repeatable; replaces the default list)")
    deploy.add_argument("--no-deps", action="store_true",
                        help="layer with this project's packages only (no pip; offline)")
    deploy.add_argument("--pip-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for pip, e.g. --pip-arg=--index-url=URL (repeatable)")
    deploy.add_argument("--build-dir", type=Path, default=None,
                        help="where to build the layer (default ~/.cache/lambdamap/layer-PY-ARCH)")
    deploy.add_argument("--allow-version-drift", action="store_true",
                        help="where this environment's version of a package has no wheel for the "
                             "runtime, build the newest that has one and record the difference "
                             "(the client then warns, or refuses where results would fail)")

    status = commands.add_parser("status", help="show what is deployed and whether it matches")
    _add(status, _SETTING_OPTIONS)
    status.add_argument("--no-probe", action="store_true",
                        help="do not invoke the function to ask what it runs; compare with what "
                             "deploy recorded only")

    logs = commands.add_parser("logs", help="print the CloudWatch logs of a job's invocations "
                                            "(of one call's, with CALL)")
    _add(logs, _SETTING_OPTIONS)
    logs.add_argument("job", help="the job id (Executor.job_id; named in the errors of lost calls)")
    logs.add_argument("call", nargs="?", type=int, default=None,
                      help="a call id: only the invocations that ran it (every attempt)")
    logs.add_argument("--since", default="1d",
                      help="how far back to search the function's log group: 90m, 24h, 3d "
                           "(default 1d)")

    destroy = commands.add_parser("destroy", help="remove function, layer versions and role")
    _add(destroy, _SETTING_OPTIONS)
    destroy.add_argument("--delete-bucket", action="store_true",
                         help="also delete the bucket and EVERY object in it")

    commands.add_parser("emulate", help="run the local Lambda emulator (lambdamap.emulator)",
                        add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["emulate"]:  # everything after it belongs to the emulator's own parser
        from .emulator import cli_main  # lazily: the emulator needs awslambdaric

        return cli_main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        settings = _settings(args)
        commands = {"deploy": _deploy, "status": _status, "logs": _logs, "destroy": _destroy}
        return commands[args.command](args, settings)
    except (ValueError, TypeError, FileNotFoundError) as exc:  # the user's input: say what is wrong
        print(f"lambdamap {args.command}: {exc}", file=sys.stderr)
        return 2
    except (BotoCoreError, ClientError, RuntimeError) as exc:  # AWS said no, or a build failed
        print(f"lambdamap {args.command} failed: {exc}", file=sys.stderr)
        return 1


def _deploy(args: argparse.Namespace, settings: Settings) -> int:
    from . import deploy

    checked = deploy.preflight(settings, image=args.image is not None)  # before the long build
    print(f"checked   {checked.summary()}")
    layer = None
    if args.image is None:
        layer = _build(args, settings)
        print(f"built     {layer.summary()}")
        for line in layer.drift_report():
            print(line)
    deploy.deploy(settings, layer=layer, image_uri=args.image, checked=checked)
    print(f"deployed: Executor(backend='aws', function_name={settings.function_name!r}, "
          f"bucket={settings.bucket!r}" + (f", region={settings.region!r})" if settings.region else ")"))
    return 0


def _build(args: argparse.Namespace, settings: Settings):
    from runtime_layer import build

    from .wire import python_version

    if args.no_deps:
        requirements: Sequence[str] = ()
    else:
        requirements = args.requirements or (build.FULL_REQUIREMENTS if args.full
                                             else build.CORE_REQUIREMENTS)
    out = args.build_dir or Path(os.path.expanduser("~/.cache/lambdamap")) / \
        f"layer-{python_version()}-{settings.architecture}"
    return build.build_layer(out, requirements=requirements, architecture=settings.architecture,
                             pip_args=(lambda cmd: cmd + args.pip_arg) if args.pip_arg else None,
                             allow_version_drift=args.allow_version_drift)


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from . import deploy

    info = deploy.status(settings, probe=not args.no_probe)
    fn = info["function"]
    if fn is None:
        print(f"function  {settings.function_name}: not deployed (run `lambdamap deploy`)")
    else:
        print(f"function  {fn['FunctionArn']}: {fn['State']}, {fn.get('PackageType')}, "
              f"{fn.get('Runtime') or 'image'}, {fn['MemorySize']} MB, {fn['Timeout']} s, "
              f"{','.join(fn.get('Architectures') or [])}")
        for layer in fn["Layers"]:
            print(f"layer     {layer}")
        comparison = info["versions"]
        source = ("the runtime's own answer" if comparison.probed else
                  f"deploy's record only ({info['probe_error'] or 'not probed: --no-probe'})")
        print(f"versions  client against {source}:")
        for line in comparison.table().splitlines():
            print(f"          {line}")
    print(f"role      {info['role'] or settings.role + ': absent'}")
    print(f"bucket    {info['bucket'] or (settings.bucket or '(none configured)') + ': absent'}")
    print(f"layers    {len(info['layers'])} version(s) of {settings.layer}")
    return 0 if fn is not None and info["matches"] else 1


def _logs(args: argparse.Namespace, settings: Settings) -> int:
    from botocore.exceptions import ClientError

    from . import logs

    group = logs.function_log_group(settings.function_name)
    since = logs.parse_since(args.since)
    try:
        found = logs.read_job(args.job, args.call, group=group, since=since,
                              client=logs.logs_client(settings))
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code == "ResourceNotFoundException":
            raise RuntimeError(f"no log group {group}: function {settings.function_name!r} has "
                               "not run yet, or pass its name with --function-name") from None
        if code in ("AccessDeniedException", "AccessDenied"):
            raise RuntimeError(f"reading {group} was denied: the reader needs logs:FilterLogEvents "
                               "and logs:GetLogEvents on it (docs/aws.md)") from None
        raise
    if not found:
        what = f"call {args.call} of job {args.job}" if args.call is not None else f"job {args.job}"
        print(f"lambdamap logs: no invocation of {what} in log group {group} in the last "
              f"{args.since}: check the job id, the function (--function-name) and --since",
              file=sys.stderr)
        return 1
    for inv in found:
        print(f"== invocation {inv.invocation} (attempt {inv.attempt}), calls "
              f"{logs.format_calls(inv.calls)}: {inv.location.describe()}")
        for event in inv.events:
            print(logs.format_event(event))
    return 0


def _destroy(args: argparse.Namespace, settings: Settings) -> int:
    from . import deploy

    deploy.destroy(settings, delete_bucket=args.delete_bucket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
