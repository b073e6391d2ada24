"""Helpers for the offline AWS tests: a layer built without the network, and deploy settings.

The layer is built by the real code path (``runtime_layer.build.build_layer``, pip included) but
offline: the pip-args hook adds ``--no-index --find-links WHEELHOUSE``, and the wheelhouse holds
wheels of the handler's two third-party imports (cloudpickle, tenacity) repacked from this
environment's installed copies. So the layer holds exactly what the universal handler needs
(the emulator's workers see no host site-packages, as on Lambda, where boto3 comes with the runtime).
"""
from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import zipfile
from pathlib import Path

from runtime_layer.build import LayerBuild, build_layer

HANDLER_REQUIREMENTS = ("cloudpickle", "tenacity")


def repack_wheel(name: str, wheelhouse: Path) -> Path:
    """A ``py3-none-any`` wheel made from the installed (pure-Python) distribution ``name``."""
    dist = importlib.metadata.distribution(name)
    meta_dir = next(str(f).split("/")[0] for f in dist.files if str(f).endswith(".dist-info/METADATA"))
    path = wheelhouse / f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for file in dist.files:
            rel = str(file)
            if "__pycache__" in rel or rel.startswith("..") or rel.endswith(
                    ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")):
                continue
            data = Path(dist.locate_file(file)).read_bytes()
            wheel.writestr(rel, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{rel},sha256={digest},{len(data)}")
        record.append(f"{meta_dir}/RECORD,,")
        wheel.writestr(f"{meta_dir}/RECORD", "\n".join(record) + "\n")
    return path


def make_wheelhouse(folder: Path) -> Path:
    """``folder`` filled with wheels of :data:`HANDLER_REQUIREMENTS`, for ``pip --find-links``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in HANDLER_REQUIREMENTS:
        repack_wheel(name, folder)
    return folder


def offline_pip_args(wheelhouse: Path) -> list[str]:
    """What makes pip install from ``wheelhouse`` only (also as ``lambdamap deploy --pip-arg``)."""
    return ["--no-index", f"--find-links={wheelhouse}"]


def offline_layer(out_dir: Path) -> LayerBuild:
    """The runtime layer with the project's packages plus the handler's requirements, offline."""
    wheelhouse = make_wheelhouse(out_dir / "wheelhouse")
    return build_layer(out_dir / "layer", requirements=HANDLER_REQUIREMENTS,
                       pip_args=lambda cmd: cmd + offline_pip_args(wheelhouse))


def aws_environment(endpoint: str, bucket: str) -> dict[str, str]:
    """``LAMBDAMAP_*`` variables that point every service at the loopback ``endpoint``."""
    return {"LAMBDAMAP_BUCKET": bucket, "LAMBDAMAP_REGION": "us-east-1",
            "LAMBDAMAP_S3_ENDPOINT_URL": endpoint, "LAMBDAMAP_IAM_ENDPOINT_URL": endpoint}
