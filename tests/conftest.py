"""Shared fixtures: a moto S3 server on 127.0.0.1 (port 0), started once and stopped after."""
from __future__ import annotations

import os
import uuid

import pytest

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def moto_server():
    """moto's server on loopback; yields its endpoint URL. Fake credentials for the session."""
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in FAKE_AWS_ENV}
    os.environ.update(FAKE_AWS_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(moto_server):
    """A fresh bucket on the moto server; yields (endpoint_url, bucket name)."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=name)
    return moto_server, name


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind():
    """The suite leaves no store or worker folder of its own in /dev/shm or $TMPDIR."""
    from lambdamap import scratch
    from lambdamap.backends.local import WORKERS_PREFIX
    from lambdamap.factories import STORE_PREFIX, default_store_dir

    def ours() -> list[str]:
        return (scratch.owned_by(os.getpid(), STORE_PREFIX, default_store_dir())
                + scratch.owned_by(os.getpid(), WORKERS_PREFIX))

    before = set(ours())
    yield
    import gc

    gc.collect()
    left = sorted(set(ours()) - before)
    assert not left, f"the test suite left scratch folders behind: {left}"
