"""The whole AWS path, offline: ``lambdamap deploy`` into moto, then jobs through the emulator.

One stack per module: moto's server on 127.0.0.1 (S3, IAM and the Lambda control plane, behind
``fault_injection``'s S3 fault injector); ``lambdamap deploy`` builds the layer offline and
creates bucket, role, layer and function there; the Lambda emulator then runs the deployment
package exactly as built (the layer zip unpacked, the function's zip as task root, the deployed
environment, time-out and memory), in awslambdaric worker processes that see no host
site-packages. The executor reaches both through ``LAMBDAMAP_*_ENDPOINT_URL`` only: nothing in
boto3 or lambdamap is patched.
"""
from __future__ import annotations

import dataclasses
import base64
import hashlib
import threading
import time
import uuid
from types import SimpleNamespace

import pytest

from aws_stack import HANDLER_REQUIREMENTS, aws_environment, make_wheelhouse, offline_pip_args
from fault_injection import FAKE_AWS_ENV, FaultyMotoServer
from lambdamap import (CallTimeoutError, Executor, IntegrityError, LambdamapError,
                       PayloadTooLargeError, RuntimeMismatchError, WorkerLostError, cli, deploy, wire)
from lambdamap.backends.aws import MAX_EVENT_BYTES, AWSBackend, encode_event
from lambdamap.config import Settings
from lambdamap.errors import RemoteTraceback
from lambdamap.versions import RuntimeVersionWarning

FUNCTION_TIMEOUT = 5  # seconds: short, so that the time-out test is quick
# This stack's layer holds the handler's two imports only, so every client warns that numpy,
# scipy, pandas and scikit-learn are missing there (tests/test_deployed_runtime.py has the full one).
pytestmark = [pytest.mark.faults,
              pytest.mark.filterwarnings("ignore::lambdamap.versions.RuntimeVersionWarning")]


class RequestCounter:
    """WSGI middleware counting S3 requests per method for one bucket (client and workers)."""

    def __init__(self, app, bucket: str):
        self.app, self.prefix = app, f"/{bucket}"
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith(self.prefix):
            with self._lock:
                method = environ["REQUEST_METHOD"]
                self.counts[method] = self.counts.get(method, 0) + 1
        return self.app(environ, start_response)

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Deploy into moto, start the emulator on the deployed package; yields a namespace."""
    from lambdamap.emulator import FunctionSpec, LambdaEmulator

    tmp = tmp_path_factory.mktemp("aws")
    bucket, function = f"lm-{uuid.uuid4().hex[:10]}", "lambdamap-test"
    with pytest.MonkeyPatch.context() as mp, FaultyMotoServer() as moto:
        for name, value in {**FAKE_AWS_ENV, **aws_environment(moto.endpoint_url, bucket)}.items():
            mp.setenv(name, value)
        mp.setenv("LAMBDAMAP_LAMBDA_ENDPOINT_URL", moto.endpoint_url)  # the control plane
        mp.setenv("LAMBDAMAP_FUNCTION_NAME", function)
        mp.setenv("LAMBDAMAP_CONFIG", str(tmp / "config"))

        argv = ["deploy", "--timeout", str(FUNCTION_TIMEOUT), "--memory", "512",
                "--build-dir", str(tmp / "build")]
        argv += [f"--pip-arg={arg}" for arg in offline_pip_args(make_wheelhouse(tmp / "wheelhouse"))]
        for requirement in HANDLER_REQUIREMENTS:
            argv += ["--requirement", requirement]
        assert cli.main(argv) == 0

        # The package exactly as deployed: the code zip whose sha256 moto has, and the layer zip.
        settings = Settings.resolve()
        lam = deploy.Clients.create(settings).lambda_
        config = lam.get_function_configuration(FunctionName=function)
        variables = config["Environment"]["Variables"]
        code = deploy.function_code(variables["LAMBDAMAP_LAYER_SHA256"])
        assert _sha256_b64(code) == config["CodeSha256"]
        (tmp / "function.zip").write_bytes(code)
        layer_zip = tmp / "build" / "layer.zip"
        [published] = lam.list_layer_versions(LayerName=settings.layer)["LayerVersions"]
        assert published["Description"].endswith(variables["LAMBDAMAP_LAYER_SHA256"])
        assert lam.get_layer_version(LayerName=settings.layer, VersionNumber=published["Version"]
                                     )["Content"]["CodeSha256"] == _sha256_b64(layer_zip.read_bytes())

        spec = FunctionSpec(handler=config["Handler"], code_dir=tmp / "function.zip",
                            layer_dirs=[layer_zip], runtime=config["Runtime"],
                            timeout=config["Timeout"], memory_mb=config["MemorySize"],
                            environment={**variables, **FAKE_AWS_ENV})
        with LambdaEmulator({function: spec}, concurrency=2) as emulator:
            mp.setenv("LAMBDAMAP_LAMBDA_ENDPOINT_URL", emulator.endpoint_url)  # the data plane
            counter = RequestCounter(moto.faults.app, bucket)
            moto.faults.app = counter
            yield SimpleNamespace(moto=moto, emulator=emulator, bucket=bucket, function=function,
                                  counter=counter, settings=settings)


def _sha256_b64(data: bytes) -> str:
    """Lambda's CodeSha256: base64 of the zip's sha256."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def square(x):
    return x * x


def fails_on_three(x):
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x


def overruns(x):
    """Calls 2 and 3 run past the function time-out; 3 also blocks the handler's alarm signal."""
    if x == 3:
        import signal

        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    if x in (2, 3):
        time.sleep(60)
    return x


def aws_executor(**options) -> Executor:
    return Executor(backend="aws", poll_interval=(0.02, 0.2), **options)


def async_invocations(stack) -> int:
    """Event invocations the emulator ran (the client's version probe is a synchronous one)."""
    return sum(not record.sync for record in stack.emulator.records())


def test_a_map_of_200_calls_runs_on_the_deployed_package(stack):
    before, records = stack.counter.total(), async_invocations(stack)
    methods = dict(stack.counter.counts)
    with aws_executor() as ex:
        assert ex.backend.function_timeout == FUNCTION_TIMEOUT  # read from the function
        assert list(ex.map(square, range(200), chunksize=4)) == [x * x for x in range(200)]
        m = ex.metrics()
        cost = ex.cost()
    assert async_invocations(stack) - records == 50  # one invocation per batch
    assert m["ok"].all() and m["worker"].nunique() <= 2
    # The cost estimate's S3 requests against those the server counted (client and workers):
    # PUTs and GETs (LISTs are GETs on the wire; the executor counts its own on S3).
    counted = {k: v - methods.get(k, 0) for k, v in stack.counter.counts.items()}
    assert (cost.memory_mb, cost.invocations, cost.s3_put) == (512, 50, counted["PUT"])
    assert cost.s3_get + cost.s3_list == pytest.approx(counted["GET"], abs=3), (cost, counted)
    requests = stack.counter.total() - before
    assert requests / 200 <= 4, stack.counter.counts  # put args shared, results fetched, list amortized
    assert not ex.storage.list(wire.job_prefix(ex.job_id))  # cleaned up


def test_user_exceptions_come_home_with_the_remote_traceback(stack):
    with aws_executor() as ex:
        future = ex.submit(fails_on_three, 3)
        with pytest.raises(ValueError, match="bad item 3") as info:
            future.result(timeout=60)
        assert isinstance(info.value.__cause__, RemoteTraceback)
        assert "fails_on_three" in future.remote_traceback
        assert list(ex.map(fails_on_three, [1, 2])) == [1, 2]


def test_throttled_invocations_are_retried_and_every_result_arrives(stack):
    with aws_executor() as ex:
        stack.emulator.inject_throttles(12)  # after the start-up probe: for the job's invocations
        assert list(ex.map(square, range(200))) == [x * x for x in range(200)]
        assert ex.metrics()["attempt"].max() == 0  # retried while sending: no call was lost


def test_throttled_beyond_the_retries_fails_naming_the_call(stack):
    with aws_executor(invoke_attempts=2, max_retries=1) as ex:
        stack.emulator.inject_throttles(4)  # 2 attempts per send, 2 sends (max_retries=1)
        with pytest.raises(WorkerLostError, match=r"call 0 of job .* throttled"):
            ex.submit(square, 3).result(timeout=60)
        assert ex.submit(square, 4).result(timeout=60) == 16  # the throttling is over


def test_s3_slowdowns_and_resets_are_retried_on_both_sides(stack):
    moto = stack.moto
    moto.inject(6, method="PUT", path_regex=rf"^/{stack.bucket}/", kind="slowdown")
    moto.inject(3, method="GET", path_regex=rf"^/{stack.bucket}/", kind="reset")
    with aws_executor() as ex:
        assert list(ex.map(square, range(200), chunksize=2)) == [x * x for x in range(200)]
    assert moto.remaining() == 0
    assert {kind for kind, _, _ in moto.faults.injected} == {"slowdown", "reset"}


def test_a_duplicated_event_still_gives_each_future_one_result(stack):
    records = async_invocations(stack)
    stack.emulator.duplicate_next(20)
    with aws_executor() as ex:
        futures = ex.map_futures(square, range(200), chunksize=2)
        assert [f.result(timeout=60) for f in futures] == [x * x for x in range(200)]
        assert stack.emulator.wait_idle(timeout=30)
        assert len(ex.storage.list(f"{wire.job_prefix(ex.job_id)}result/")) == 200
    assert async_invocations(stack) - records == 120  # every duplicate ran


def test_calls_past_the_function_timeout_fail_naming_them_and_the_others_complete(stack):
    """Call 2 is stopped by the handler's own alarm; call 3 blocks it, so the emulator kills the
    invocation at the time-out and only the executor's deadline can tell: both fail clearly."""
    # While calls 2 and 3 hold both emulated workers for the time-out, the other 198 invocations
    # wait in the queue: deadlines count from each invocation's start, so that costs nothing.
    with aws_executor(max_retries=0, lost_after_margin=3.0) as ex:
        futures = ex.map_futures(overruns, range(200))
        start = time.monotonic()
        logs = rf"its logs: CloudWatch log group /aws/lambda/{stack.function}, stream \S+, request id "
        with pytest.raises(CallTimeoutError, match=rf"call 2 ran past the function time-out.*{logs}"):
            futures[2].result(timeout=60)
        with pytest.raises(WorkerLostError, match=rf"call 3 of job .*no report within {FUNCTION_TIMEOUT}"
                                                  rf".*{logs}.*`lambdamap logs {ex.job_id} 3`"):
            futures[3].result(timeout=60)
        assert futures[0].logs_location.group == f"/aws/lambda/{stack.function}"
        assert time.monotonic() - start < FUNCTION_TIMEOUT + 3.0 + 15
        assert [f.result(timeout=60) for i, f in enumerate(futures) if i not in (2, 3)] == \
            [i for i in range(200) if i not in (2, 3)]


class OtherPythonClient(AWSBackend):
    """A client that claims another Python version (as an old laptop would), in its events."""

    def invoke(self, events):
        super().invoke([dataclasses.replace(event, python="3.6") for event in events])


def test_the_handler_refuses_a_client_of_another_python_naming_both(stack):
    with Executor(OtherPythonClient(Settings.resolve())) as ex:
        with pytest.raises(RuntimeMismatchError, match=rf"client runs Python 3.6.*runs Python {wire.python_version()}"):
            ex.submit(square, 2).result(timeout=60)


def test_a_runtime_that_cannot_be_asked_leaves_the_record_to_decide(stack):
    """The start-up probe throttled on every attempt: the client warns and goes on."""
    stack.emulator.inject_throttles(2)
    with pytest.warns(RuntimeVersionWarning, match="could not ask function 'lambdamap-test' which "
                                                   "versions it runs.*TooManyRequests"):
        with aws_executor(invoke_attempts=2) as ex:
            assert not ex.backend.versions.probed and ex.backend.versions.recorded
            assert ex.submit(square, 5).result(timeout=60) == 25


def test_a_client_without_the_deployments_key_is_stopped_at_once(stack, monkeypatch):
    monkeypatch.setenv("LAMBDAMAP_SIGNING_KEY", "00" * 32)
    with pytest.raises(IntegrityError, match="another signing key"):
        Executor(backend="aws")


def test_a_function_that_is_not_deployed_fails_at_once_with_what_to_do(stack):
    with pytest.raises(LambdamapError, match=r"'nope' does not exist.*lambdamap deploy"):
        Executor(backend="aws", function_name="nope")


def test_an_oversize_event_is_refused_before_anything_is_sent():
    event = wire.make_event(storage={"type": "s3"}, job_id="j", fn="f", args="a",
                            byte_range=(0, 1), calls=list(range(60_000)))
    with pytest.raises(PayloadTooLargeError, match=f"over Lambda's asynchronous limit of {MAX_EVENT_BYTES:,}.*chunksize"):
        encode_event(event)


def test_lambdamap_emulate_dispatches_to_the_emulator(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["emulate", "--help"])
    assert info.value.code == 0 and "lambdamap emulate" in capsys.readouterr().out


def killed_once(x, marker_dir):
    """SIGKILLs its own Lambda worker mid-call the first time it sees x % 40 == 7."""
    import os
    import signal

    marker = os.path.join(marker_dir, str(x))
    if x % 40 == 7 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


def test_a_worker_killed_mid_call_is_re_invoked_and_nothing_is_lost(stack, tmp_path):
    """A killed Lambda leaves no status: the executor's deadline re-invokes the silent calls."""
    with aws_executor(lost_after_margin=1.0) as ex:
        results = list(ex.map(killed_once, range(200), [str(tmp_path)] * 200, chunksize=4))
        m = ex.metrics()
    assert results == [x * x for x in range(200)]
    assert len(list(tmp_path.iterdir())) == 5  # five calls were killed once each
    assert (m["attempt"] > 0).sum() >= 5


ATTACH_CLIENT = """
import sys, time
from lambdamap import Executor

def slow_square(x):
    time.sleep(0.02)
    return x * x

ex = Executor(backend="aws", keep_data=True, poll_interval=(0.02, 0.2))
print(ex.job_id, flush=True)
ex.map_futures(slow_square, range(200), chunksize=2)
time.sleep(600)  # killed long before
"""


def test_a_client_restarted_mid_job_recovers_every_result_with_attach(stack):
    import subprocess
    import sys

    client = subprocess.Popen([sys.executable, "-c", ATTACH_CLIENT], stdout=subprocess.PIPE, text=True)
    job_id = client.stdout.readline().strip()
    store = AWSBackend(Settings.resolve()).default_storage()
    deadline = time.time() + 60
    while time.time() < deadline and len(store.list(wire.status_prefix(job_id))) < 20:
        time.sleep(0.1)
    client.kill()
    client.wait()
    assert 20 <= len(store.list(wire.status_prefix(job_id))) < 200
    with Executor.attach(job_id, backend="aws", poll_interval=(0.02, 0.2)) as ex:
        assert [f.result(timeout=120) for f in ex.futures] == [x * x for x in range(200)]
        # The dead client's own invocations are still queued (at-least-once: they run too, and
        # lose to the results already written); let them drain so none is in flight at cleanup.
        assert stack.emulator.wait_idle(timeout=60)
    assert not store.list(wire.job_prefix(job_id))  # cleaned up by the attached executor


def test_a_result_larger_than_lambdas_response_limit_still_arrives_through_s3(stack):
    """A synchronous Lambda response is capped at 6 MB; results never travel in it."""
    with aws_executor() as ex:
        blob = ex.submit(bytes, 7 * 2**20).result(timeout=60)
    assert len(blob) == 7 * 2**20


def test_a_function_timeout_beyond_lambdas_15_minutes_is_refused():
    with pytest.raises(ValueError, match="15 minutes"):
        AWSBackend(Settings.resolve(), function_timeout=1000)


# -- losses counted from the start of an invocation (more invocations than concurrency) -----------


def nap(x):
    time.sleep(0.1)
    return x


def dies(x):
    if x == 0:
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)  # the container dies mid-call (out of memory, ...)
    return x


@pytest.mark.faults
def test_a_queue_longer_than_the_deadline_loses_nothing_and_reinvokes_nothing(stack):
    """40 invocations of 0.5 s on 2 emulated workers queue for ~10 s, past the 5 s time-out
    plus 1 s margin: a deadline counted from dispatch would declare healthy calls lost."""
    records = async_invocations(stack)
    with aws_executor(lost_after_margin=1.0, max_retries=0) as ex:
        start = time.monotonic()
        assert list(ex.map(nap, range(200), chunksize=5)) == list(range(200))
        assert time.monotonic() - start > FUNCTION_TIMEOUT + 1.0  # the queue did outlive it
        m = ex.metrics()
    assert m["ok"].all() and (m["attempt"] == 0).all()
    assert async_invocations(stack) - records == 40  # not one re-invocation


@pytest.mark.faults
def test_a_killed_invocation_is_detected_within_the_deadline_of_its_start(stack):
    with aws_executor(lost_after_margin=1.0, max_retries=0) as ex:
        futures = ex.map_futures(dies, range(200), chunksize=10)
        start = time.monotonic()
        with pytest.raises(WorkerLostError, match=r"call 0 .*of its start"):
            futures[0].result(timeout=60)
        assert time.monotonic() - start < FUNCTION_TIMEOUT + 1.0 + 6  # + list interval, polls
        assert [f.result(timeout=60) for f in futures[1:]] == list(range(1, 200))


class DroppingAWSBackend(AWSBackend):
    """Loses the first event it is asked to send, as Lambda's asynchronous queue may."""

    dropped = 0

    def invoke(self, events):
        if not self.dropped and events:
            self.dropped = 1
            events = list(events)[1:]
        super().invoke(events)


@pytest.mark.faults
def test_a_never_delivered_event_is_run_again_after_the_never_started_bound(stack):
    backend = DroppingAWSBackend(Settings.resolve())
    with Executor(backend, poll_interval=(0.02, 0.2), lost_after_margin=1.0, start_timeout=3.0) as ex:
        start = time.monotonic()
        assert list(ex.map(square, range(200), chunksize=10)) == [x * x for x in range(200)]
        m = ex.metrics()
    assert backend.dropped == 1
    assert (m["attempt"] == 1).sum() == 10 and (m["attempt"] == 0).sum() == 190
    assert time.monotonic() - start < 3.0 + 20
