"""``lambdamap deploy/status/destroy`` against moto's server (S3, IAM, Lambda control plane).

Nothing inside boto3 or lambdamap is patched: the CLI runs with ``LAMBDAMAP_*_ENDPOINT_URL``
pointing at moto on 127.0.0.1, and the layer is built offline by the real build code (see
``aws_stack.offline_layer``).
"""
from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import io
import json
import re
import stat
import uuid
import zipfile
from pathlib import Path

import boto3
import pytest

from aws_stack import HANDLER_REQUIREMENTS, aws_environment, offline_layer, offline_pip_args
from lambdamap import Executor, __version__, cli, deploy, versions, wire
from lambdamap.backends.aws import AWSBackend
from lambdamap.config import Settings
from runtime_layer import build


@pytest.fixture(scope="module")
def layer(tmp_path_factory):
    return offline_layer(tmp_path_factory.mktemp("layer"))


@pytest.fixture
def env(moto_server, monkeypatch, tmp_path):
    """Fresh names and every endpoint at moto; yields the resolved Settings."""
    bucket = f"lm-{uuid.uuid4().hex[:10]}"
    for name, value in aws_environment(moto_server, bucket).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LAMBDAMAP_LAMBDA_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("LAMBDAMAP_FUNCTION_NAME", f"fn-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("LAMBDAMAP_CONFIG", str(tmp_path / "config"))  # deploy writes the key here
    return Settings.resolve()


def clients(settings: Settings):
    return deploy.Clients.create(settings)


def cli_deploy(layer, *extra: str) -> int:
    """``lambdamap deploy`` building the offline layer (pip from the local wheelhouse)."""
    args = ["deploy", "--build-dir", str(layer.folder.parent / "cli-build")]
    args += [f"--pip-arg={arg}" for arg in offline_pip_args(layer.folder.parent / "wheelhouse")]
    for requirement in HANDLER_REQUIREMENTS:
        args += ["--requirement", requirement]
    return cli.main(args + list(extra))


# -- the layer build ------------------------------------------------------------------------------


def test_pip_command_targets_the_runtimes_platform(tmp_path):
    cmd = build.pip_command(tmp_path, ["numpy"], "3.11", "x86_64")
    platforms = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--platform"]
    # python3.11 is Amazon Linux 2, glibc 2.26: every manylinux tag up to 2_26, and pip does not
    # widen a manylinux_2_X tag to older ones by itself.
    assert platforms == ["manylinux2014_x86_64"] + [f"manylinux_2_{m}_x86_64" for m in range(17, 27)]
    assert "--only-binary=:all:" in cmd and cmd[cmd.index("--python-version") + 1] == "3.11"
    assert cmd[cmd.index("--target") + 1] == str(tmp_path) and "--no-warn-conflicts" in cmd
    arm = build.pip_command(tmp_path, ["numpy"], "3.12", "arm64")  # Amazon Linux 2023, glibc 2.34
    assert "manylinux_2_28_aarch64" in arm and "manylinux_2_34_aarch64" in arm and "manylinux_2_35_aarch64" not in arm
    with pytest.raises(ValueError, match="no python3.9 runtime"):
        build.pip_command(tmp_path, ["numpy"], "3.9", "x86_64")


def test_the_build_pins_the_clients_versions_with_their_dependencies():
    environment = build.target_environment(wire.python_version(), "x86_64")
    pins = build.client_pins(["scikit-learn", "pandas==0.1", "not-installed-anywhere>=1"], environment)
    installed = importlib.metadata.version
    assert f"scikit-learn=={installed('scikit-learn')}" in pins
    assert f"scipy=={installed('scipy')}" in pins and f"joblib=={installed('joblib')}" in pins
    assert "pandas==0.1" in pins  # the user asked for another version than the client's: kept
    assert "not-installed-anywhere>=1" in pins


def test_offline_layer_holds_the_runtime_and_is_reproducible(layer, tmp_path):
    names = {info.filename.split("/")[1] for info in zipfile.ZipFile(layer.zip_path).infolist()}
    assert {"lambdamap", "runtime_layer", "dml", "forest", "cloudpickle", "tenacity"} <= names
    files = [i.filename for i in zipfile.ZipFile(layer.zip_path).infolist()]
    assert all(f.startswith("python/") for f in files)
    assert not any("/tests/" in f for f in files)
    assert any(f.endswith(".pyc") for f in files)  # compiled for faster cold starts
    assert layer.fits and layer.unzipped_bytes < 5 * 2**20
    again = offline_layer(tmp_path)
    assert again.content_hash == layer.content_hash
    assert again.zip_path.read_bytes() == layer.zip_path.read_bytes()


def test_strip_removes_what_no_import_needs(tmp_path):
    for rel in ["pkg/__init__.py", "pkg/tests/test_x.py", "pkg/__pycache__/a.pyc", "pkg/mod.pyi",
                "boto3/__init__.py", "boto3-1.0.dist-info/METADATA", "bin/tool", "pkg-1.0.dist-info/RECORD",
                "pkg/core/tests/_helper.py", "pkg/core/tests/__init__.py", "pkg/core/tests/test_big.py"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    # Like numpy.testing, which imports numpy._core.tests._natype: that tests folder must stay.
    (tmp_path / "pkg" / "testing.py").write_text("from pkg.core.tests._helper import x\n")
    build.strip(tmp_path)
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["pkg-1.0.dist-info/RECORD", "pkg/__init__.py", "pkg/core/tests/__init__.py",
                    "pkg/core/tests/_helper.py", "pkg/testing.py"]


def test_a_stripped_layer_that_cannot_import_its_requirements_is_refused(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "__init__.py").write_text("from broken.tests import helper\n")
    with pytest.raises(RuntimeError, match="cannot import broken"):
        build.check_imports(tmp_path, ["broken"])
    assert build.import_names(["scikit-learn>=1.4", "python-dateutil<3", "tqdm"]) == ["sklearn", "dateutil", "tqdm"]


# -- deploy, status, destroy ----------------------------------------------------------------------


def test_deploy_creates_everything_and_a_second_run_changes_nothing(env, layer, capsys):
    assert cli_deploy(layer) == 0
    first = capsys.readouterr().out
    assert "bucket" in first and "created" in first and "published" in first
    c = clients(env)
    c.s3.head_bucket(Bucket=env.bucket)

    policy = c.iam.get_role_policy(RoleName=env.role, PolicyName=deploy.POLICY_NAME)["PolicyDocument"]
    statements = {s["Sid"]: s for s in policy["Statement"]}
    assert statements["JobObjects"]["Resource"] == f"arn:aws:s3:::{env.bucket}/lambdamap/*"
    assert statements["ListJobPrefix"]["Condition"] == {"StringLike": {"s3:prefix": ["lambdamap/*"]}}
    assert all(r.split(":")[5:7] == ["log-group", f"/aws/lambda/{env.function_name}"]
               for r in statements["OwnLogGroup"]["Resource"])
    assert len(policy["Statement"]) == 3  # nothing else

    config = c.lambda_.get_function_configuration(FunctionName=env.function_name)
    assert config["Runtime"] == f"python{wire.python_version()}"
    assert config["Handler"] == "runtime_layer.handler.handler"
    assert (config["Timeout"], config["MemorySize"], config["Architectures"]) == (300, 1024, ["x86_64"])
    assert config["Environment"]["Variables"]["LAMBDAMAP_VERSION"] == __version__
    assert config["Environment"]["Variables"]["LAMBDAMAP_WIRE_VERSION"] == str(wire.WIRE_VERSION)
    [layer_version] = c.lambda_.list_layer_versions(LayerName=env.layer)["LayerVersions"]
    assert config["Layers"][0]["Arn"] == layer_version["LayerVersionArn"]
    assert layer_version["Description"].endswith(f"sha256:{layer.content_hash}")

    assert cli_deploy(layer) == 0  # the same content again: nothing to do
    second = capsys.readouterr().out
    steps = [line for line in second.splitlines()
             if line.split()[0] in ("key", "bucket", "role", "layer", "function")]
    assert len(steps) == 5 and all(line.endswith("unchanged") for line in steps), second
    assert len(c.lambda_.list_layer_versions(LayerName=env.layer)["LayerVersions"]) == 1


def test_signing_key_is_created_once_kept_private_and_given_to_the_function(env, layer, tmp_path):
    deploy.deploy(env, layer=layer, say=None)
    key = Settings.resolve().signing_key  # now in the config file
    assert key and len(bytes.fromhex(key)) == 32 and key not in repr(Settings.resolve())
    assert stat.S_IMODE((tmp_path / "config").stat().st_mode) == 0o600
    config = clients(env).lambda_.get_function_configuration(FunctionName=env.function_name)
    assert config["Environment"]["Variables"]["LAMBDAMAP_SIGNING_KEY"] == key
    assert AWSBackend.from_settings().signing_key() == bytes.fromhex(key)
    assert not deploy.deploy(Settings.resolve(), layer=layer, say=None).changed


def test_changed_settings_update_only_what_changed(env, layer):
    deploy.deploy(env, layer=layer, say=None)
    report = deploy.deploy(Settings.resolve(memory=2048, timeout=60), layer=layer, say=None)
    assert [(what, action) for what, _, action in report.steps] == [
        ("key", "unchanged"), ("bucket", "unchanged"), ("role", "unchanged"), ("layer", "unchanged"),
        ("function", "updated configuration (MemorySize, Timeout)")]
    config = clients(env).lambda_.get_function_configuration(FunctionName=env.function_name)
    assert (config["MemorySize"], config["Timeout"]) == (2048, 60)


def test_the_function_code_is_the_manifest_deploy_uploaded(env, layer):
    deploy.deploy(env, layer=layer, say=None)
    config = clients(env).lambda_.get_function_configuration(FunctionName=env.function_name)
    code = deploy.function_code(layer.content_hash)
    assert config["CodeSha256"] == base64.b64encode(hashlib.sha256(code).digest()).decode()
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(code)).read(deploy.MANIFEST))
    assert manifest["LAMBDAMAP_PYTHON"] == wire.python_version()


def test_deploy_waits_for_a_fresh_role_to_become_assumable(env, layer):
    """Lambda refuses a role IAM created seconds ago: injected at botocore's HTTP layer, twice."""
    calls = []

    def role_not_ready_yet(**kwargs):
        calls.append(1)
        if len(calls) <= 2:
            error = {"Error": {"Code": "InvalidParameterValueException",
                               "Message": "The role defined for the function cannot be assumed by Lambda."}}
            return _HttpStatus(400), error
        return None  # from the third attempt on: the real request

    session = boto3.session.Session()
    session.events.register("before-call.lambda.CreateFunction", role_not_ready_yet)
    report = deploy.deploy(env, layer=layer, session=session, say=None)
    assert len(calls) == 3
    assert ("function", env.function_name, "created") in report.steps


class _HttpStatus:
    def __init__(self, status_code: int):
        self.status_code, self.headers, self.content = status_code, {}, b""


def test_status_shows_versions_and_mismatches(env, layer, capsys):
    assert cli.main(["status"]) == 1
    assert "not deployed" in capsys.readouterr().out
    deploy.deploy(env, layer=layer, say=None)
    assert cli.main(["status"]) == 0  # moto cannot run the function: the record alone decides
    out = capsys.readouterr().out
    assert "client against deploy's record only (could not ask" in out or "does not answer" in out
    assert re.search(rf"python +{wire.python_version()} +{wire.python_version()} +- +ok", out)
    assert re.search(r"cloudpickle +(\S+) +\1 +- +ok", out)
    assert re.search(r"numpy +\S+ +\(none\) +- +WARNING: not installed in the runtime", out)
    variables = clients(env).lambda_.get_function_configuration(
        FunctionName=env.function_name)["Environment"]["Variables"]
    clients(env).lambda_.update_function_configuration(
        FunctionName=env.function_name, Environment={"Variables": dict(variables, LAMBDAMAP_PYTHON="3.8")})
    assert cli.main(["status", "--no-probe"]) == 1
    out = capsys.readouterr().out
    assert "not probed: --no-probe" in out
    assert re.search(r"python +\S+ +3\.8 +- +ERROR: cloudpickle does not travel", out)


def test_deploy_records_the_runtime_and_the_client_compares_without_invoking(env, layer):
    deploy.deploy(env, layer=layer, say=None)
    config = clients(env).lambda_.get_function_configuration(FunctionName=env.function_name)
    record = versions.parse_record(config["Environment"]["Variables"])
    assert record["python"] == wire.python_version() and record["glibc"] == "2.26"
    assert record["versions"]["cloudpickle"] == importlib.metadata.version("cloudpickle")
    assert record["versions"]["numpy"] is None and "drift" not in record  # this layer has no numpy
    with pytest.warns(versions.RuntimeVersionWarning, match=r"numpy \S+ here, \(none\) there"):
        with Executor(backend="aws", runtime_probe=False) as ex:
            assert ex.backend.runtime_versions()["numpy"] is None
            assert not ex.backend.versions.probed


def test_a_missing_bucket_is_reported_before_the_build(env, layer, monkeypatch, capsys):
    monkeypatch.delenv("LAMBDAMAP_BUCKET")
    build_dir = layer.folder.parent / "never-built"
    assert cli.main(["deploy", "--build-dir", str(build_dir)]) == 2
    assert "no S3 bucket configured" in capsys.readouterr().err
    assert not build_dir.exists()


def test_missing_credentials_are_reported_before_the_build(env, layer, monkeypatch, capsys, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata request
    for name in ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    build_dir = layer.folder.parent / "never-built"
    assert cli.main(["deploy", "--build-dir", str(build_dir)]) == 1
    assert "no AWS credentials found" in capsys.readouterr().err
    assert not build_dir.exists()


def test_a_zip_deploy_over_an_image_function_is_refused_before_the_build(env, layer, capsys):
    deploy.deploy(env, image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/lambdamap:py3.11", say=None)
    build_dir = layer.folder.parent / "never-built"
    assert cli.main(["deploy", "--build-dir", str(build_dir)]) == 1
    assert "is a Image function; Lambda cannot change it to Zip" in capsys.readouterr().err
    assert not build_dir.exists()


def test_an_environment_over_lambdas_4_kb_is_refused_before_anything_is_made(env, layer):
    many = build.LayerBuild(**{**layer.__dict__, "requested": tuple(f"package-{i}" for i in range(300))})
    with pytest.raises(ValueError, match=r"environment would be [\d,]+ bytes, over Lambda's 4,096"):
        deploy.deploy(env, layer=many, say=None)
    assert deploy.status(env, probe=False)["bucket"] is None


def test_a_layer_that_misses_the_projects_own_requirements_fails_unless_drift_is_allowed(tmp_path, layer):
    """The project asks for cloudpickle>=99: the build refuses, or records it with drift allowed."""
    source = tmp_path / "source"
    source.mkdir()
    for package in build.PROJECT_PACKAGES:
        (source / package).symlink_to(build.project_root() / package)
    (source / "setup.cfg").write_text("[options]\ninstall_requires =\n    cloudpickle>=99\n    boto3>=1\n")
    wheelhouse = layer.folder.parent / "wheelhouse"
    options = dict(requirements=HANDLER_REQUIREMENTS, source=source,
                   pip_args=lambda cmd: cmd + offline_pip_args(wheelhouse))
    with pytest.raises(RuntimeError, match=r"lambdamap requires cloudpickle>=99; the layer has "
                                           r"cloudpickle \S+\n\(pass --allow-version-drift"):
        build.build_layer(tmp_path / "strict", **options)
    drifted = build.build_layer(tmp_path / "drift", allow_version_drift=True, **options)
    assert drifted.notes == [f"lambdamap requires cloudpickle>=99; the layer has cloudpickle "
                             f"{importlib.metadata.version('cloudpickle')}"]
    assert drifted.drift_report() == [f"drift: {drifted.notes[0]}"]


def test_destroy_removes_what_deploy_made(env, layer):
    deploy.deploy(env, layer=layer, say=None)
    assert cli.main(["destroy"]) == 0
    c = clients(env)
    info = deploy.status(env)
    assert info["function"] is None and info["role"] is None and info["layers"] == []
    c.s3.head_bucket(Bucket=env.bucket)  # kept without --delete-bucket
    assert cli.main(["destroy", "--delete-bucket"]) == 0
    assert deploy.status(env)["bucket"] is None


def test_a_layer_too_large_is_refused_with_the_way_out(env, layer):
    huge = build.LayerBuild(**{**layer.__dict__, "unzipped_bytes": 300 * 2**20})
    with pytest.raises(ValueError, match=r"too large.*--image"):
        deploy.deploy(env, layer=huge, say=None)


def test_a_layer_over_the_inline_limit_goes_through_s3_and_destroy_removes_it(env, layer):
    big = build.LayerBuild(**{**layer.__dict__, "zipped_bytes": build.LAMBDA_INLINE_ZIP_LIMIT_BYTES + 1})
    report = deploy.deploy(env, layer=big, say=None)
    assert ("layer", f"{env.layer}:1", "published") in report.steps
    s3 = clients(env).s3
    [uploaded] = s3.list_objects_v2(Bucket=env.bucket, Prefix="lambdamap/_deploy/")["Contents"]
    assert s3.get_object(Bucket=env.bucket, Key=uploaded["Key"])["Body"].read() == layer.zip_path.read_bytes()
    deploy.destroy(Settings.resolve(), say=None)
    assert "Contents" not in s3.list_objects_v2(Bucket=env.bucket, Prefix="lambdamap/_deploy/")


def test_image_deploy_creates_an_image_function(env):
    uri = "123456789012.dkr.ecr.us-east-1.amazonaws.com/lambdamap:py3.11"
    report = deploy.deploy(env, image_uri=uri, say=None)
    assert report.steps[-1] == ("function", env.function_name, "created")
    config = clients(env).lambda_.get_function_configuration(FunctionName=env.function_name)
    assert config["PackageType"] == "Image"
    assert deploy.deploy(Settings.resolve(), image_uri=uri, say=None).changed is False


def test_the_sam_template_grants_the_same_permissions():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # CloudFormation tags
    path = Path(build.project_root()) / "runtime_layer" / "template.yaml"
    template = yaml.load(path.read_text(), Loader=Loader)
    resources = template["Resources"]
    role = next(r for r in resources.values() if r["Type"] == "AWS::IAM::Role")
    [policy] = role["Properties"]["Policies"]
    actions = {a for s in policy["PolicyDocument"]["Statement"] for a in _as_list(s["Action"])}
    expected = deploy.role_policy("b", "p", "arn:aws:logs:r:1:log-group:/aws/lambda/f")
    assert actions == {a for s in expected["Statement"] for a in _as_list(s["Action"])}
    function = next(r for r in resources.values() if r["Type"] == "AWS::Serverless::Function")
    assert function["Properties"]["Handler"] == deploy.HANDLER


def _as_list(value):
    return value if isinstance(value, list) else [value]
