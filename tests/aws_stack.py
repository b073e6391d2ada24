"""Helpers for the offline AWS tests: layers built without the network, deploy settings, routing.

Layers are built by the real code path (``runtime_layer.build.build_layer``, pip included) but
offline: pip installs from a local wheelhouse (``--no-index --find-links WHEELHOUSE``) whose wheels
are repacked from this environment's installed distributions, with their own versions and
platform tags (``cp311-cp311-manylinux_2_27_x86_64...`` for numpy), so pip's choice for a
runtime platform is the real one. :func:`make_wheelhouse` fills it for any requirements;
:func:`offline_layer` is the small layer with the handler's two imports (cloudpickle, tenacity).
:func:`repack_wheel` can also forge another version or platform tag: an "older" wheel for the
version-drift tests.

:class:`LambdaRouter` sits in front of moto's server so that one endpoint serves Lambda as AWS
does: the control plane from moto, ``Invoke`` from the Lambda emulator.
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import importlib.metadata
import platform
import re
import zipfile
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

from lambdamap.wire import python_version
from runtime_layer.build import LayerBuild, build_layer, client_pins, target_environment

HANDLER_REQUIREMENTS = ("cloudpickle", "tenacity")


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _installed_tag(dist: importlib.metadata.Distribution) -> str:
    """The compressed tag set of the wheel ``dist`` was installed from (its WHEEL file)."""
    tags = [line.split(":", 1)[1].strip().split("-")
            for line in (dist.read_text("WHEEL") or "").splitlines() if line.startswith("Tag:")]
    if not tags:
        return "py3-none-any"
    return "-".join(".".join(sorted({t[i] for t in tags})) for i in range(3))


def repack_wheel(name: str, wheelhouse: Path, *, version: str | None = None,
                 tag: str | None = None) -> Path:
    """A wheel of the installed distribution ``name``, as it was installed (files, tags).

    ``version`` and ``tag`` (``python-abi-platform``) forge another version or platform: the
    files stay those installed here, the metadata says otherwise. Stored, not deflated: pip
    unpacks it once, so compressing would only cost time.
    """
    dist = importlib.metadata.distribution(name)
    dist_name = re.sub(r"[-_.]+", "_", dist.metadata["Name"]).lower()
    old_info = next(str(f).split("/")[0] for f in dist.files if str(f).endswith(".dist-info/METADATA"))
    new_version = version or dist.version
    new_info = f"{dist_name}-{new_version}.dist-info"
    new_tag = tag or _installed_tag(dist)
    path = wheelhouse / f"{dist_name}-{new_version}-{new_tag}.whl"
    record = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as wheel:
        for file in dist.files:
            rel = str(file)
            if "__pycache__" in rel or rel.startswith("..") or rel.endswith(
                    ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")):
                continue
            data = Path(dist.locate_file(file)).read_bytes()
            if rel.startswith(old_info + "/"):
                rel = new_info + rel[len(old_info):]
                if rel.endswith("/METADATA") and version:
                    data = re.sub(rb"(?m)^Version: .*$", f"Version: {version}".encode(), data, count=1)
                if rel.endswith("/WHEEL") and tag:
                    lines = [line for line in data.decode().splitlines() if not line.startswith("Tag:")]
                    data = ("\n".join(lines + [f"Tag: {tag}"]) + "\n").encode()
            wheel.writestr(rel, data)
            record.append(f"{rel},sha256={_digest(data)},{len(data)}")
        record.append(f"{new_info}/RECORD,,")
        wheel.writestr(f"{new_info}/RECORD", "\n".join(record) + "\n")
    return path


def make_wheelhouse(folder: Path, requirements: Sequence[str] = HANDLER_REQUIREMENTS) -> Path:
    """``folder`` filled with wheels of ``requirements`` and all they need, as installed here."""
    folder.mkdir(parents=True, exist_ok=True)
    environment = target_environment(python_version(), platform.machine().replace("aarch64", "arm64"))
    for pin in client_pins(requirements, environment):
        repack_wheel(pin.split("==")[0].split("[")[0], folder)
    return folder


def offline_pip_args(*wheelhouses: Path) -> list[str]:
    """What makes pip install from ``wheelhouses`` only (also as ``lambdamap deploy --pip-arg``)."""
    return ["--no-index", *(f"--find-links={w}" for w in wheelhouses)]


def offline_layer(out_dir: Path) -> LayerBuild:
    """The runtime layer with the project's packages plus the handler's requirements, offline."""
    wheelhouse = make_wheelhouse(out_dir / "wheelhouse")
    return build_layer(out_dir / "layer", requirements=HANDLER_REQUIREMENTS,
                       pip_args=lambda cmd: cmd + offline_pip_args(wheelhouse))


def aws_environment(endpoint: str, bucket: str) -> dict[str, str]:
    """``LAMBDAMAP_*`` variables that point every service at the loopback ``endpoint``."""
    return {"LAMBDAMAP_BUCKET": bucket, "LAMBDAMAP_REGION": "us-east-1",
            "LAMBDAMAP_S3_ENDPOINT_URL": endpoint, "LAMBDAMAP_IAM_ENDPOINT_URL": endpoint}


_INVOKE = re.compile(r"/2015-03-31/functions/[^/]+/invocations/?")


class LambdaRouter:
    """WSGI middleware: Lambda ``Invoke`` requests go to ``invoke_endpoint``, the rest to ``app``.

    moto serves Lambda's control plane but cannot run a function without Docker; the emulator runs
    functions but has no control plane. Behind this router one endpoint does both, as AWS does.
    """

    def __init__(self, app, invoke_endpoint: str):
        self.app = app
        url = urlsplit(invoke_endpoint)
        self.host, self.port = url.hostname, url.port

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if environ["REQUEST_METHOD"] != "POST" or not _INVOKE.fullmatch(path):
            return self.app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        headers = {key[5:].replace("_", "-").title(): value for key, value in environ.items()
                   if key.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        query = environ.get("QUERY_STRING")
        connection = http.client.HTTPConnection(self.host, self.port, timeout=300)
        try:
            connection.request("POST", path + (f"?{query}" if query else ""), body, headers)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        start_response(f"{response.status} {response.reason}",
                       [(k, v) for k, v in response.getheaders()
                        if k.lower() not in ("transfer-encoding", "connection", "content-length")]
                       + [("Content-Length", str(len(data)))])
        return [data]
