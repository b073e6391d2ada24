"""Settings of the AWS backend and of ``lambdamap deploy``, and where they come from.

Each setting is resolved, first match wins, from

1. keyword arguments (``Executor(backend="aws", bucket=...)``, or the command-line options);
2. environment variables ``LAMBDAMAP_<NAME>`` (``LAMBDAMAP_BUCKET``, ``LAMBDAMAP_S3_ENDPOINT_URL``);
3. the ``[lambdamap]`` section of an INI file: ``$LAMBDAMAP_CONFIG``, else
   ``~/.config/lambdamap/config`` (``$XDG_CONFIG_HOME/lambdamap/config``) if it exists;
4. the defaults below.

Example file::

    [lambdamap]
    bucket = my-bucket
    region = eu-central-1
    memory = 2048

``lambdamap deploy`` writes ``signing_key`` into that file (mode 0600) the first time.
Endpoint URLs are settings like any other: pointing ``s3_endpoint_url``, ``lambda_endpoint_url``
and ``iam_endpoint_url`` at loopback servers (moto, the emulator) is how the tests run the
unchanged AWS path offline. AWS credentials are not settings: boto3 finds them as usual.
"""
from __future__ import annotations

import configparser
import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "LAMBDAMAP_"
SECTION = "lambdamap"
VERSION_CHECKS = ("strict", "warn")
_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True,
             "0": False, "false": False, "no": False, "off": False}


@dataclass(frozen=True)
class Settings:
    """Where the deployment lives and how the client talks to it."""

    #: The Lambda function that runs the universal handler.
    function_name: str = "lambdamap"
    #: The S3 bucket for job data (required to run on AWS).
    bucket: str | None = None
    #: Key prefix in the bucket; the function may touch nothing outside it.
    prefix: str = "lambdamap"
    #: AWS region; default boto3's (``AWS_REGION``/``AWS_DEFAULT_REGION``/profile).
    region: str | None = None
    #: Deploy: the function's memory in MB (Lambda gives CPU in proportion: 1769 MB = 1 vCPU).
    memory: int = 1024
    #: Deploy: the function's time-out in seconds (at most 900).
    timeout: int = 300
    #: Deploy: ``x86_64`` or ``arm64`` (about 20 % cheaper per GB-second).
    architecture: str = "x86_64"
    #: Deploy: IAM role of the function (default ``<function_name>-role``).
    role_name: str | None = None
    #: Deploy: layer name (default ``<function_name>-runtime``).
    layer_name: str | None = None
    #: Client: threads that send invocations (each one request at a time).
    invoke_threads: int = 32
    #: Client: attempts per invocation on throttling/transient errors before it counts as lost.
    invoke_attempts: int = 8
    #: Client: at start, invoke the function once synchronously to learn the package versions it
    #: really runs (one short invocation, remembered per function revision in this process);
    #: off: trust what ``lambdamap deploy`` recorded in the function's environment.
    runtime_probe: bool = True
    #: Client: ``strict`` refuses a runtime whose packages would make results fail (a different
    #: major numpy/scipy/pandas/scikit-learn, another cloudpickle); ``warn`` only warns. A
    #: different Python or wire format is refused either way (:mod:`lambdamap.versions`).
    version_check: str = "strict"
    #: Endpoints; None means AWS's own.
    s3_endpoint_url: str | None = None
    lambda_endpoint_url: str | None = None
    iam_endpoint_url: str | None = None
    #: CloudWatch Logs, for ``lambdamap logs``.
    logs_endpoint_url: str | None = None
    #: The deployment's HMAC key, hex (:mod:`lambdamap.signing`): ``lambdamap deploy`` creates it
    #: and stores it in the config file; the function has it in ``LAMBDAMAP_SIGNING_KEY``.
    signing_key: str | None = field(default=None, repr=False)

    @property
    def role(self) -> str:
        return self.role_name or f"{self.function_name}-role"

    @property
    def layer(self) -> str:
        return self.layer_name or f"{self.function_name}-runtime"

    @classmethod
    def resolve(cls, config_file: str | os.PathLike | None = None, **options: Any) -> Settings:
        """Settings from ``options`` (None means unset), then the environment, then the file."""
        names = {f.name: f for f in fields(cls)}
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise TypeError(f"unknown lambdamap setting(s) {unknown}; known: {sorted(names)}")
        from_file = _read_file(config_file)
        values: dict[str, Any] = {}
        for name, field in names.items():
            env = os.environ.get(ENV_PREFIX + name.upper())
            for raw, origin in ((options.get(name), "argument"), (env, f"${ENV_PREFIX}{name.upper()}"),
                                (from_file.get(name), "config file")):
                if raw is not None and raw != "":
                    values[name] = _coerce(field, raw, origin)
                    break
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.architecture not in ("x86_64", "arm64"):
            raise ValueError(f"architecture must be x86_64 or arm64, not {self.architecture!r}")
        if not 1 <= self.timeout <= 900:
            raise ValueError(f"timeout must be 1..900 seconds (Lambda's limit), not {self.timeout}")
        if not 128 <= self.memory <= 10240:
            raise ValueError(f"memory must be 128..10240 MB (Lambda's limits), not {self.memory}")
        if self.version_check not in VERSION_CHECKS:
            raise ValueError(f"version_check must be one of {VERSION_CHECKS}, not {self.version_check!r}")
        if self.invoke_threads < 1 or self.invoke_attempts < 1:
            raise ValueError("invoke_threads and invoke_attempts must be at least 1")
        if self.signing_key is not None:
            try:
                bytes.fromhex(self.signing_key)
            except ValueError:
                raise ValueError("signing_key must be a hex string") from None

    def require_bucket(self) -> str:
        if not self.bucket:
            raise ValueError(
                "no S3 bucket configured: pass bucket=..., set LAMBDAMAP_BUCKET, or add "
                f"`bucket = ...` to the [{SECTION}] section of {config_path()}")
        return self.bucket

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def config_path() -> Path:
    """The config file consulted: ``$LAMBDAMAP_CONFIG`` or ``~/.config/lambdamap/config``."""
    explicit = os.environ.get(ENV_PREFIX + "CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "lambdamap" / "config"


def save_setting(name: str, value: str, path: str | os.PathLike | None = None) -> Path:
    """Write ``name = value`` into the config file's section, keeping the rest; owner-only."""
    if name not in {f.name for f in fields(Settings)}:
        raise TypeError(f"unknown lambdamap setting {name!r}")
    path = Path(path) if path else config_path()
    parser = configparser.ConfigParser()
    if path.is_file():
        parser.read(path)
    if not parser.has_section(SECTION):
        parser.add_section(SECTION)
    parser[SECTION][name] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it may hold the key
    with os.fdopen(fd, "w") as f:
        parser.write(f)
    os.chmod(path, 0o600)
    return path


def _read_file(path: str | os.PathLike | None) -> dict[str, str]:
    path = Path(path) if path else config_path()
    if not path.is_file():  # none yet: `lambdamap deploy` creates it to store the signing key
        return {}
    parser = configparser.ConfigParser()
    parser.read(path)
    return dict(parser[SECTION]) if parser.has_section(SECTION) else {}


def _coerce(field: dataclasses.Field, raw: Any, origin: str) -> Any:
    """Turn a string from the environment or the file into the field's type."""
    if isinstance(raw, (bytes, bytearray)):  # a key given as bytes (Executor(signing_key=...))
        return bytes(raw).hex()
    if "bool" in str(field.type):
        if isinstance(raw, bool):
            return raw
        if str(raw).strip().lower() in _BOOLEANS:
            return _BOOLEANS[str(raw).strip().lower()]
        raise ValueError(f"setting {field.name} from {origin} must be true or false, not {raw!r}")
    if not isinstance(raw, str) or "int" not in str(field.type):
        return raw
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"setting {field.name} from {origin} must be an integer, not {raw!r}") from None
