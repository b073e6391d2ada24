"""A local AWS Lambda for lambdamap (``lambdamap emulate``): the real Invoke API on 127.0.0.1,
each function run by a warm pool of real ``awslambdaric`` processes through the Lambda Runtime API.

Point boto3 (or lambdamap's AWS backend, via ``LAMBDAMAP_LAMBDA_ENDPOINT_URL``) at
:attr:`LambdaEmulator.endpoint_url` and the deployment runs as on Lambda, offline::

    from lambdamap.emulator import FunctionSpec, LambdaEmulator

    spec = FunctionSpec(handler="runtime_layer.handler.handler", layer_dirs=["build/layer.zip"],
                        timeout=60, environment={"AWS_ACCESS_KEY_ID": "testing"})
    with LambdaEmulator({"lambdamap": spec}, concurrency=4) as emu:
        print(emu.endpoint_url)

Modules, in the order a request travels: :mod:`.invoke_api` (HTTP front end) -> :mod:`.core`
(Invoke semantics, fault injection) -> :mod:`.pool` (worker processes, queue, time-outs) ->
:mod:`.runtime_api` (what each awslambdaric process talks to). :mod:`.spec` describes functions
and lays out their packages; :mod:`.cli` is ``lambdamap emulate``. See docs/emulator.md.
"""
from .cli import cli_main
from .core import InvokeResult, LambdaEmulator
from .errors import ApiError
from .pool import InvocationRecord
from .spec import FunctionSpec

__all__ = ["LambdaEmulator", "FunctionSpec", "InvokeResult", "InvocationRecord", "ApiError",
           "cli_main"]
