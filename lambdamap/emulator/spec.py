"""What a function is (:class:`FunctionSpec`) and how its deployment package is laid out on disk.

Lambda's Python runtime puts the code ("task root", ``/var/task``) first on ``sys.path``, then the
layers (``/opt/python/lib/pythonX.Y/site-packages`` and ``/opt/python``), then the runtime's own
directory with awslambdaric and boto3, then the standard library. :func:`prepare` reproduces that
order for a worker process:

* **Deployment mode** (``code_dir`` or ``layer_dirs`` given): zips are unpacked into the
  emulator's work folder, and the worker runs ``python -S`` with ``PYTHONPATH`` = task root, layers,
  then a *runtime directory* holding links to the host's awslambdaric, its dependencies and the
  boto3 stack (what Lambda's runtime provides). The host's site-packages are not on the path, so a
  dependency missing from the package fails to import here as it would on Lambda.
* **Host mode** (neither given): the worker sees whatever this interpreter sees (its ``sys.path``),
  with the current directory as the task root. Quick for tests; proves nothing about packaging.

Workers always run this interpreter, so a function whose ``runtime`` names another Python version
is refused: cloudpickled functions and compiled wheels do not travel across versions.
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
import zipfile
from dataclasses import dataclass, field
from typing import Mapping, Sequence

#: What Lambda's Python runtime directory provides besides the standard library.
RUNTIME_MODULES = ("awslambdaric", "runtime_client", "simplejson", "snapshot_restore_py",
                   "boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six", "urllib3")

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def host_runtime() -> str:
    """This interpreter as a Lambda runtime identifier, e.g. ``"python3.11"``."""
    return f"python{sys.version_info.major}.{sys.version_info.minor}"


@dataclass
class FunctionSpec:
    """One Lambda function as the emulator runs it.

    Args:
        handler: ``module.function`` that awslambdaric imports, as in Lambda's ``Handler`` setting.
        code_dir: the deployment package: a folder or a ``.zip`` (its root is the task root).
        layer_dirs: layers in Lambda's order: ``.zip`` files or folders with ``python/`` at their
            root (a folder without ``python/`` is used as a plain ``sys.path`` entry). A later
            layer's files win over an earlier one's, as when Lambda extracts them into ``/opt``.
        runtime: e.g. ``"python3.11"``; must match the host interpreter (default: it does).
        timeout: seconds one invocation may run before its worker is killed (Lambda: 1-900).
        memory_mb: ``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``; enforced on the worker's peak RSS when
            the emulator's ``enforce_memory`` is on.
        environment: extra environment variables, applied last (e.g. fake credentials for moto).
        async_retries: how often a failed Event invocation is run again (Lambda's
            ``MaximumRetryAttempts``, 0-2). Default 0, not Lambda's 2: lambdamap re-invokes
            lost work itself, and tests want a failure to stay a failure.
        concurrency: worker processes for this function (its reserved concurrency); default
            the emulator's ``concurrency``.
    """

    handler: str = "runtime_layer.handler.handler"
    code_dir: str | os.PathLike | None = None
    layer_dirs: Sequence[str | os.PathLike] = ()
    runtime: str = field(default_factory=host_runtime)
    timeout: float = 30.0
    memory_mb: int = 1024
    environment: Mapping[str, str] = field(default_factory=dict)
    async_retries: int = 0
    concurrency: int | None = None

    def check(self, name: str) -> None:
        """Raise ``ValueError`` naming what is wrong with this function called ``name``."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"invalid function name {name!r}: use 1-64 letters, digits, - or _")
        if self.runtime != host_runtime():
            raise ValueError(
                f"function {name!r} is for runtime {self.runtime!r}, but the emulator's workers "
                f"run this interpreter, {sys.executable} ({host_runtime()}); start the emulator "
                f"with a {self.runtime} interpreter or build the package for {host_runtime()}")
        if "." not in self.handler:
            raise ValueError(
                f"function {name!r}: handler {self.handler!r} is not 'module.function'")
        if not self.timeout > 0:
            raise ValueError(f"function {name!r}: timeout must be positive, got {self.timeout}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"function {name!r}: concurrency must be at least 1")
        if not 0 <= self.async_retries <= 2:
            raise ValueError(f"function {name!r}: async_retries must be 0, 1 or 2")
        for path in [self.code_dir, *self.layer_dirs]:
            if path is not None and not os.path.exists(path):
                raise ValueError(f"function {name!r}: {os.fspath(path)!r} does not exist")


@dataclass
class Deployment:
    """A function's files as a worker process sees them."""

    task_root: str          # the worker's working directory and LAMBDA_TASK_ROOT
    python_path: list[str]  # PYTHONPATH, in order
    isolated: bool          # True: run with ``python -S`` (no host site-packages)
    runtime_dir: str        # where awslambdaric comes from (LAMBDA_RUNTIME_DIR)


def prepare(name: str, spec: FunctionSpec, workdir: str, runtime_dir: str) -> Deployment:
    """Lay out ``spec``'s package under ``workdir`` (unpacking zips) and say how to run it."""
    if spec.code_dir is None and not spec.layer_dirs:
        ric = importlib.util.find_spec("awslambdaric")
        host_dir = os.path.dirname(list(ric.submodule_search_locations)[0]) if ric else ""
        return Deployment(task_root=os.getcwd(), isolated=False, runtime_dir=host_dir,
                          python_path=[p for p in sys.path if p and os.path.exists(p)])
    base = os.path.join(workdir, "functions", name)
    if spec.code_dir is None:
        task_root = os.path.join(base, "task")
        os.makedirs(task_root, exist_ok=True)
    else:
        task_root = _unpacked(spec.code_dir, os.path.join(base, "task"))
    layer_paths: list[str] = []
    for i, layer in enumerate(spec.layer_dirs):
        root = _unpacked(layer, os.path.join(base, f"layer{i}"))
        python = os.path.join(root, "python")
        entries = ([os.path.join(python, "lib", host_runtime(), "site-packages"), python]
                   if os.path.isdir(python) else [root])
        layer_paths = entries + layer_paths  # later layers first: their files "overwrite"
    return Deployment(task_root=task_root, isolated=True, runtime_dir=runtime_dir,
                      python_path=[task_root, *layer_paths, runtime_dir])


def build_runtime_dir(path: str) -> str:
    """A folder of links to the host's awslambdaric and boto3 stack: Lambda's ``/var/runtime``."""
    os.makedirs(path, exist_ok=True)
    for module in RUNTIME_MODULES:
        spec = importlib.util.find_spec(module)
        if spec is None:
            continue  # e.g. six, which newer botocore no longer needs
        if spec.submodule_search_locations:  # a package: link its folder
            source = list(spec.submodule_search_locations)[0]
        else:  # a single-file module (.py or a compiled extension)
            source = spec.origin
        target = os.path.join(path, os.path.basename(source))
        if not os.path.lexists(target):
            os.symlink(source, target)
    return path


def _unpacked(path: str | os.PathLike, target: str) -> str:
    """A folder with ``path``'s files: ``path`` itself, or ``target`` with the zip extracted."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return os.path.abspath(path)
    with zipfile.ZipFile(path) as archive:
        archive.extractall(target)
    return target
