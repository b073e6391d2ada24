"""The Lambda emulator, driven as AWS is driven: through a real boto3 ``lambda`` client.

Most tests share one emulator (module scope) whose functions live in a small handler module
written to a temporary deployment package; every server listens on 127.0.0.1 port 0, and the
teardown checks that no worker process outlives the emulator. The last tests cover the moto
fault-injection helper (tests/fault_injection.py).
"""
from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile

import boto3
import cloudpickle
import psutil
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError

from conftest import FAKE_AWS_ENV
from fault_injection import faulty_moto_server  # noqa: F401 - a fixture
from lambdamap import wire
from lambdamap.collector import outcome
from lambdamap.emulator import FunctionSpec, LambdaEmulator
from lambdamap.storage import LocalStorage, S3Storage

HANDLERS = '''
import os, time

def echo(event, context):
    return {"event": event, "pid": os.getpid(), "worker": os.environ["AWS_LAMBDA_LOG_STREAM_NAME"],
            "function": context.function_name, "memory": context.memory_limit_in_mb,
            "remaining_ms": context.get_remaining_time_in_millis(),
            "arn": context.invoked_function_arn, "request_id": context.aws_request_id,
            "secret": os.environ.get("SECRET")}

def boom(event, context):
    raise ValueError("boom: " + str(event.get("why")))

def sleep(event, context):
    if event.get("marker"):
        open(event["marker"], "w").close()
    time.sleep(event.get("seconds", 0))
    return os.getpid()

def touch(event, context):
    with open(event["path"], "a") as f:
        f.write(context.aws_request_id + "\\n")
    if event.get("fail"):
        raise RuntimeError("asked to fail")
    return "ok"

def hog(event, context):
    blob = b"x" * (event["mb"] * 2**20)
    time.sleep(3)
    return len(blob)
'''


def _gone(pids, timeout: float = 10.0) -> bool:
    """Whether every process in ``pids`` has exited and been reaped (within ``timeout``)."""
    end = time.monotonic() + timeout
    while any(psutil.pid_exists(p) for p in pids):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def _lambda_client(endpoint_url: str, **config):
    return boto3.client("lambda", endpoint_url=endpoint_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(**config))


def _wait_for(path, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def code_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("package")
    (folder / "fns.py").write_text(HANDLERS)
    return folder


@pytest.fixture(scope="module")
def emulator(code_dir):
    def fn(handler, **options):
        return FunctionSpec(handler=f"fns.{handler}", code_dir=code_dir, **options)

    emu = LambdaEmulator({
        "echo": fn("echo", environment={"SECRET": "s3cr3t"}, memory_mb=256),
        "boom": fn("boom", concurrency=1),
        "sleepy": fn("sleep", timeout=1.0, concurrency=1),
        "slow": fn("sleep", timeout=20.0, concurrency=1),
        "touch": fn("touch", concurrency=1),
        "retry": fn("touch", concurrency=1, async_retries=1),
        "hog": fn("hog", memory_mb=64, concurrency=1),
        # lambdamap's universal handler, from the host environment (no package given)
        "lambdamap": FunctionSpec(environment=FAKE_AWS_ENV, timeout=60.0),
    }, concurrency=2)
    emu.start()
    try:
        yield emu
    finally:
        pids = set(emu.worker_pids()) | {r.pid for r in emu.records() if r.pid}
        emu.stop()
    assert pids and _gone(pids, timeout=0), "worker processes outlived the emulator"


@pytest.fixture(scope="module")
def client(emulator):
    """boto3 with its retries off, so that each error surfaces as Lambda sent it."""
    return _lambda_client(emulator.endpoint_url, retries={"mode": "standard",
                                                          "total_max_attempts": 1})


def _invoke(client, name, event=None, **kwargs):
    response = client.invoke(FunctionName=name, Payload=json.dumps(event or {}), **kwargs)
    body = response["Payload"].read()
    return response, (json.loads(body) if body else None)


# -- Invoke: the answers Lambda gives -------------------------------------------------------


def test_request_response_answers_200_with_the_handler_result(client):
    response, body = _invoke(client, "echo", {"a": 1}, LogType="Tail")
    assert response["StatusCode"] == 200 and "FunctionError" not in response
    assert response["ExecutedVersion"] == "$LATEST"
    assert body["event"] == {"a": 1}
    assert body["function"] == "echo" and body["memory"] == "256" and body["secret"] == "s3cr3t"
    assert 25_000 < body["remaining_ms"] <= 30_000
    assert body["request_id"] == response["ResponseMetadata"]["RequestId"]
    tail = base64.b64decode(response["LogResult"]).decode()
    assert f"START RequestId: {body['request_id']}" in tail and "REPORT RequestId" in tail


def test_function_may_be_named_by_arn_and_qualifier(client):
    arn = "arn:aws:lambda:us-east-1:123456789012:function:echo"
    _, body = _invoke(client, f"{arn}:$LATEST")
    assert body["arn"] == f"{arn}:$LATEST"
    _, body = _invoke(client, "echo", Qualifier="$LATEST")
    assert body["function"] == "echo"


def test_workers_are_warm_processes_with_their_own_log_streams(emulator, client):
    seen = [_invoke(client, "echo")[1] for _ in range(4)]
    pids = {b["pid"] for b in seen}
    assert pids <= set(emulator.worker_pids("echo"))  # reused, not started per invocation
    assert len({b["worker"] for b in seen}) == len(pids)  # one log stream (worker id) each


def test_event_answers_202_and_the_handler_runs(emulator, client, tmp_path):
    path = tmp_path / "touched"
    response, body = _invoke(client, "touch", {"path": str(path)}, InvocationType="Event")
    assert response["StatusCode"] == 202 and body is None
    assert emulator.wait_idle(timeout=20)
    assert path.read_text().split() == [response["ResponseMetadata"]["RequestId"]]


def test_event_runs_lambdamaps_universal_handler(emulator, client, tmp_path):
    store = LocalStorage(tmp_path)
    store.put(wire.fn_key("job1", "f"), cloudpickle.dumps(lambda x: x * 10))
    blob = wire.pack_batch([(cid, cloudpickle.dumps(((cid,), {}))) for cid in (0, 1, 2)])
    store.put(wire.args_key("job1", 0), blob)
    event = wire.make_event(storage=store.spec(), job_id="job1", fn=wire.fn_key("job1", "f"),
                            args=wire.args_key("job1", 0), byte_range=(0, len(blob)),
                            calls=[0, 1, 2])
    response, _ = _invoke(client, "lambdamap", event.to_json(), InvocationType="Event")
    assert response["StatusCode"] == 202
    assert emulator.wait_idle(timeout=30)
    records = {wire.call_id_of(k): wire.decode_record(store.get(k))
               for k in store.list("jobs/job1/result/")}
    assert {cid: outcome(rec)[0] for cid, rec in records.items()} == {0: 0, 1: 10, 2: 20}
    worker = records[0].status["worker"]
    assert "[$LATEST]" in worker  # the handler's worker id is the log stream name


def test_unknown_function_raises_resource_not_found(client):
    with pytest.raises(client.exceptions.ResourceNotFoundException, match="Function not found"):
        client.invoke(FunctionName="no-such-function", Payload=b"{}")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.invoke(FunctionName="arn:aws:lambda:us-east-1:123456789012:function:nope")


def test_injected_throttles_raise_too_many_requests(emulator, client):
    emulator.inject_throttles(2)
    for _ in range(2):
        with pytest.raises(client.exceptions.TooManyRequestsException) as caught:
            client.invoke(FunctionName="echo", InvocationType="Event", Payload=b"{}")
        assert caught.value.response["Error"]["Code"] == "TooManyRequestsException"
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert client.invoke(FunctionName="echo", InvocationType="Event")["StatusCode"] == 202
    # boto3's default retry mode retries 429s, as it does against Lambda
    emulator.inject_throttles(2)
    assert _lambda_client(emulator.endpoint_url).invoke(FunctionName="echo")["StatusCode"] == 200


def test_sync_invoke_beyond_the_concurrency_is_throttled(client, tmp_path):
    marker = tmp_path / "started"
    busy = threading.Thread(target=_invoke, args=(client, "slow"),
                            kwargs={"event": {"seconds": 1.5, "marker": str(marker)}})
    busy.start()
    try:
        _wait_for(marker)
        with pytest.raises(client.exceptions.TooManyRequestsException):
            client.invoke(FunctionName="slow", Payload=b"{}")  # its only worker is busy
    finally:
        busy.join()


def test_handler_exception_is_an_unhandled_function_error(client):
    response, body = _invoke(client, "boom", {"why": "testing"})
    assert response["StatusCode"] == 200 and response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "ValueError" and body["errorMessage"] == "boom: testing"
    assert any("raise ValueError" in line for line in body["stackTrace"])


def test_dry_run_and_malformed_requests(client):
    assert client.invoke(FunctionName="echo", InvocationType="DryRun")["StatusCode"] == 204
    with pytest.raises(client.exceptions.InvalidRequestContentException):
        client.invoke(FunctionName="echo", Payload=b"{not json")
    with pytest.raises(client.exceptions.InvalidParameterValueException):
        client.invoke(FunctionName="echo", InvocationType="Sometimes")


def test_get_function_configuration(client):
    config = client.get_function_configuration(FunctionName="echo")
    assert config["Handler"] == "fns.echo" and config["MemorySize"] == 256
    assert config["Timeout"] == 30 and config["Environment"]["Variables"] == {"SECRET": "s3cr3t"}
    assert client.get_function(FunctionName="sleepy")["Configuration"]["Timeout"] == 1


# -- failures: time-outs, crashes, memory, duplicates, retries ------------------------------


def test_timeout_kills_and_replaces_the_worker(emulator, client):
    _, before = _invoke(client, "sleepy")
    started = time.monotonic()
    response, body = _invoke(client, "sleepy", {"seconds": 30})
    assert time.monotonic() - started < 10
    assert response["FunctionError"] == "Unhandled" and body["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in body["errorMessage"]
    assert _gone([before])
    _, after = _invoke(client, "sleepy")
    assert after != before and after in emulator.worker_pids("sleepy")


def test_sigkilled_worker_fails_its_invocation_and_is_replaced(emulator, client, tmp_path):
    _, pid = _invoke(client, "slow")
    marker, result = tmp_path / "started", {}
    busy = threading.Thread(target=lambda: result.update(answer=_invoke(
        client, "slow", {"seconds": 30, "marker": str(marker)})))
    busy.start()
    _wait_for(marker)
    os.kill(pid, signal.SIGKILL)
    busy.join(timeout=15)
    response, body = result["answer"]
    assert response["FunctionError"] == "Unhandled" and body["errorType"] == "Runtime.ExitError"
    assert "signal: killed" in body["errorMessage"]
    assert _gone([pid])
    _, new_pid = _invoke(client, "slow")
    assert new_pid != pid
    # an idle worker that dies is replaced too
    os.kill(new_pid, signal.SIGKILL)
    assert _gone([new_pid])
    assert _invoke(client, "slow")[1] not in (pid, new_pid)


def test_worker_over_its_memory_size_is_killed(client):
    response, body = _invoke(client, "hog", {"mb": 200})
    assert response["FunctionError"] == "Unhandled" and body["errorType"] == "Runtime.OutOfMemory"


def test_duplicate_delivery_runs_an_event_twice(emulator, client, tmp_path):
    emulator.duplicate_next(1)
    twice, once = tmp_path / "twice", tmp_path / "once"
    response, _ = _invoke(client, "touch", {"path": str(twice)}, InvocationType="Event")
    _invoke(client, "touch", {"path": str(once)}, InvocationType="Event")
    assert emulator.wait_idle(timeout=20)
    request_id = response["ResponseMetadata"]["RequestId"]
    assert twice.read_text().split() == [request_id, request_id]  # same request id, as on Lambda
    assert len(once.read_text().split()) == 1


def test_failed_event_is_retried_only_when_configured(emulator, client, tmp_path):
    for name, runs in (("touch", 1), ("retry", 2)):
        path = tmp_path / name
        _invoke(client, name, {"path": str(path), "fail": True}, InvocationType="Event")
        assert emulator.wait_idle(timeout=20)
        assert len(path.read_text().split()) == runs
    attempts = [r.attempt for r in emulator.records("retry")]
    assert attempts == [0, 1] and not any(r.ok for r in emulator.records("retry"))


# -- deployment packages, configuration, lifecycle -------------------------------------------


APP = '''
import sys
import which

def handler(event, context):
    try:
        import cloudpickle  # installed on the host, not in the package
        host_visible = True
    except ImportError:
        host_visible = False
    import boto3  # provided by the runtime, as on Lambda
    return {"which": which.NAME, "host_visible": host_visible, "path0": sys.path[0]}
'''


def _zip(path, files: dict[str, str]):
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


def test_deployment_package_runs_as_built(tmp_path):
    code = _zip(tmp_path / "code.zip", {"app.py": APP})
    first = _zip(tmp_path / "first.zip", {"python/which.py": "NAME = 'first'\n"})
    second = tmp_path / "second"  # a folder laid out like a layer zip
    (second / "python").mkdir(parents=True)
    (second / "python" / "which.py").write_text("NAME = 'second'\n")
    functions = {"app": FunctionSpec(handler="app.handler", code_dir=code,
                                     layer_dirs=[first, second], concurrency=1),
                 "broken": FunctionSpec(handler="missing.handler", code_dir=code, concurrency=1)}
    with LambdaEmulator(functions) as emu:
        client = _lambda_client(emu.endpoint_url)
        _, body = _invoke(client, "app")
        assert body["which"] == "second"  # the later layer wins, as when Lambda extracts them
        assert body["host_visible"] is False
        for _ in range(2):  # the slot restarts on demand, and fails the same way
            response, body = _invoke(client, "broken")
            assert response["FunctionError"] == "Unhandled"
            assert body["errorType"] == "Runtime.ImportModuleError"
        pids = emu.worker_pids() + [r.pid for r in emu.records()]
    assert _gone(pids, timeout=0)


def test_runtime_other_than_the_host_interpreter_is_refused():
    with pytest.raises(ValueError, match=r"python3\.99.*start the emulator with a python3\.99"):
        LambdaEmulator({"f": FunctionSpec(runtime="python3.99")})


def test_stop_ends_invocations_in_flight_and_every_worker(code_dir):
    emu = LambdaEmulator({"slow": FunctionSpec(handler="fns.sleep", code_dir=code_dir)},
                         concurrency=2).start()
    pids, answer = emu.worker_pids(), {}
    busy = threading.Thread(target=lambda: answer.update(r=emu.invoke("slow", b'{"seconds": 60}')))
    busy.start()
    time.sleep(0.5)
    emu.stop()
    busy.join(timeout=10)
    assert answer["r"].function_error == "Unhandled"
    assert _gone(pids, timeout=0)


def test_cli_serves_until_sigterm_and_cleans_up(code_dir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "lambdamap.emulator", "--function-name", "echo", "--handler",
         "fns.echo", "--code", str(code_dir), "--concurrency", "1", "--env", "SECRET=cli"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        endpoint = None
        for line in proc.stdout:
            if "LAMBDAMAP_LAMBDA_ENDPOINT_URL=" in line:
                endpoint = line.split("=", 1)[1].strip()
                break
        assert endpoint and endpoint.startswith("http://127.0.0.1:")
        _, body = _invoke(_lambda_client(endpoint), "echo")
        assert body["secret"] == "cli"
        workers = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert body["pid"] in workers
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert _gone(workers)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- the AWS backend end to end ----------------------------------------------------------------


def _square(x):
    return x * x


def test_executor_runs_on_the_aws_backend_through_the_emulator(emulator, s3_bucket):
    pytest.importorskip("lambdamap.backends.aws")
    from lambdamap import Executor

    endpoint, bucket = s3_bucket
    with Executor(backend="aws", function_name="lambdamap", bucket=bucket, region="us-east-1",
                  s3_endpoint_url=endpoint, lambda_endpoint_url=emulator.endpoint_url) as ex:
        assert list(ex.map(_square, range(12), chunksize=3)) == [x * x for x in range(12)]
        workers = set(ex.metrics()["worker"])
    assert workers and all("[$LATEST]" in w for w in workers)


# -- fault injection for moto's S3 server (tests/fault_injection.py) --------------------------


def _s3(endpoint, **config):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        config=Config(**config))


def test_injected_slowdown_reaches_botocore_as_s3_error(faulty_moto_server):
    server = faulty_moto_server
    s3 = _s3(server.endpoint_url, retries={"mode": "standard", "total_max_attempts": 1})
    s3.create_bucket(Bucket="faulty")
    server.inject(2, method="PUT", path_regex=r"^/faulty/")
    for _ in range(2):
        with pytest.raises(ClientError) as caught:
            s3.put_object(Bucket="faulty", Key="k", Body=b"data")
        assert caught.value.response["Error"]["Code"] == "SlowDown"
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    s3.put_object(Bucket="faulty", Key="k", Body=b"data")
    assert server.remaining() == 0
    server.inject(1, method="GET", kind="reset")
    with pytest.raises(ConnectionClosedError):
        s3.get_object(Bucket="faulty", Key="k")
    assert s3.get_object(Bucket="faulty", Key="k")["Body"].read() == b"data"


def test_s3_storage_retries_through_injected_slowdowns(faulty_moto_server):
    server = faulty_moto_server
    _s3(server.endpoint_url).create_bucket(Bucket="retrying")
    store = S3Storage("retrying", endpoint_url=server.endpoint_url)
    server.inject(3, method="PUT")
    assert store.put("a", b"1")
    server.inject(3, method="GET")
    assert store.get("a") == b"1"
    assert server.remaining() == 0


def test_s3_storage_retries_through_a_reset_connection(faulty_moto_server):
    server = faulty_moto_server
    _s3(server.endpoint_url).create_bucket(Bucket="resets")
    store = S3Storage("resets", endpoint_url=server.endpoint_url)
    server.inject(3, method="PUT", kind="reset")
    assert store.put("a", b"1")
    assert server.remaining() == 0
