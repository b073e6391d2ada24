"""The runtime ``lambdamap deploy`` ships, end to end, offline: the client's own packages on it.

The layer is built by the real build path (client pins, pip for the runtime's platform, the
checks, strip, byte-compile, zip) from a wheelhouse repacked from this environment: numpy, scipy,
pandas, scikit-learn and everything they need, at the client's versions, with their real platform
tags. It is deployed into moto; the Lambda emulator runs the deployed package in ``awslambdaric``
processes that see no host site-packages; one endpoint serves both (``aws_stack.LambdaRouter``),
so the client reads the function from moto and invokes the emulator, as on AWS.

This machine's Python is 3.11, whose Lambda runtime (Amazon Linux 2, glibc 2.26) takes no wheel of
today's numpy, scipy or scikit-learn: the real refusal is tested as such, and the runnable layer
is built for the emulator's platform (this machine's glibc, ``build_layer(glibc=...)``).
"""
from __future__ import annotations

import json
import re
import tempfile
import uuid
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from aws_stack import LambdaRouter, aws_environment, make_wheelhouse, offline_pip_args, repack_wheel
from fault_injection import FAKE_AWS_ENV, FaultyMotoServer
from lambdamap import Executor, RuntimeMismatchError, cli, deploy, versions
from lambdamap.config import Settings
from runtime_layer import build

pytestmark = pytest.mark.filterwarnings("ignore:Some inputs do not have OOB scores:UserWarning")
CLIENT = versions.installed_versions()


@pytest.fixture(scope="module")
def workdir():
    """Where the large files go (about 700 MB): removed when the module ends, not kept by pytest."""
    with tempfile.TemporaryDirectory(prefix="lambdamap-e2e-") as folder:
        yield Path(folder)


@pytest.fixture(scope="module")
def wheelhouse(workdir):
    """The client's runtime packages as wheels (about 250 MB, stored: a second to write)."""
    return make_wheelhouse(workdir / "wheelhouse", build.CORE_REQUIREMENTS)


@pytest.fixture(scope="module")
def stack(wheelhouse, workdir):
    """moto + emulator behind one endpoint; ``lambdamap`` deployed from the client's layer, and
    ``doctored``: the same deployment, then a layer added and its record edited by hand."""
    from lambdamap.emulator import FunctionSpec, LambdaEmulator

    tmp = workdir / "stack"
    bucket = f"lm-{uuid.uuid4().hex[:10]}"
    with pytest.MonkeyPatch.context() as mp, FaultyMotoServer() as moto:
        for name, value in {**FAKE_AWS_ENV, **aws_environment(moto.endpoint_url, bucket)}.items():
            mp.setenv(name, value)
        mp.setenv("LAMBDAMAP_LAMBDA_ENDPOINT_URL", moto.endpoint_url)
        mp.setenv("LAMBDAMAP_CONFIG", str(tmp / "config"))
        layer = build.build_layer(tmp / "build", pip_args=lambda cmd: cmd + offline_pip_args(wheelhouse),
                                  glibc=versions.glibc_version())
        deploy.deploy(Settings.resolve(), layer=layer, say=None)
        settings = Settings.resolve()  # now with the signing key deploy created
        # (the same layer: "unchanged", not uploaded again)
        deploy.deploy(settings.replace(function_name="doctored", layer_name=settings.layer),
                      layer=layer, say=None)
        lam = deploy.Clients.create(settings).lambda_

        # Behind deploy's back: a layer on top claims pandas 2.3.2; the record says scikit-learn 1.9.0.
        extra = tmp / "extra"
        info = extra / "python" / "pandas-2.3.2.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pandas\nVersion: 2.3.2\n")
        extra_zip = tmp / "extra.zip"
        with zipfile.ZipFile(extra_zip, "w") as z:
            z.write(info / "METADATA", "python/pandas-2.3.2.dist-info/METADATA")
        extra_arn = lam.publish_layer_version(LayerName="by-hand", Content={"ZipFile": extra_zip.read_bytes()},
                                              CompatibleRuntimes=["python3.11"])["LayerVersionArn"]
        doctored = lam.get_function_configuration(FunctionName="doctored")
        variables = doctored["Environment"]["Variables"]
        record = json.loads(variables[versions.RECORD_ENV])
        record["versions"]["scikit-learn"] = "1.9.0"
        variables[versions.RECORD_ENV] = versions.encode_record(record)
        lam.update_function_configuration(FunctionName="doctored", Environment={"Variables": variables},
                                          Layers=[doctored["Layers"][0]["Arn"], extra_arn])

        def spec(name: str, layers: list) -> FunctionSpec:
            config = lam.get_function_configuration(FunctionName=name)
            code = tmp / f"{name}.zip"
            code.write_bytes(deploy.function_code(config["Environment"]["Variables"]["LAMBDAMAP_LAYER_SHA256"]))
            return FunctionSpec(handler=config["Handler"], code_dir=code, layer_dirs=layers,
                                runtime=config["Runtime"], timeout=config["Timeout"],
                                memory_mb=config["MemorySize"],
                                environment={**config["Environment"]["Variables"], **FAKE_AWS_ENV})

        # The layer's folder, which holds what was zipped, byte for byte (tests/test_aws.py runs
        # the zip itself): unpacking 240 MB once more would only cost time.
        functions = {"lambdamap": spec("lambdamap", [layer.folder]),
                     "doctored": spec("doctored", [layer.folder, extra])}
        functions["doctored"].concurrency = 1
        with LambdaEmulator(functions, concurrency=2) as emulator:
            moto.faults.app = LambdaRouter(moto.faults.app, emulator.endpoint_url)
            yield SimpleNamespace(layer=layer, emulator=emulator, settings=settings, lam=lam, tmp=tmp)


def aws_executor(**options) -> Executor:
    return Executor(backend="aws", poll_interval=(0.02, 0.2), **options)


def test_the_layer_holds_the_clients_versions_and_deploy_records_them(stack):
    layer = stack.layer
    assert {n: layer.versions.get(n) for n in CLIENT} == CLIENT and not layer.drift and layer.fits
    config = stack.lam.get_function_configuration(FunctionName="lambdamap")
    record = versions.parse_record(config["Environment"]["Variables"])
    assert record["versions"] == {**CLIENT, "tenacity": layer.versions["tenacity"], "tqdm": layer.versions["tqdm"],
                                  "python-dateutil": layer.versions["python-dateutil"]}
    assert record["python"] == versions.describe()["python"] and record["glibc"] == versions.glibc_version()


def test_the_client_asks_the_runtime_and_finds_its_own_versions(stack, capsys):
    probes = len([r for r in stack.emulator.records("lambdamap") if r.sync])
    with warnings.catch_warnings():
        warnings.simplefilter("error", versions.RuntimeVersionWarning)
        for _ in range(2):
            with aws_executor() as ex:
                assert ex.backend.versions.probed
                assert {n: ex.backend.runtime_versions()[n] for n in CLIENT} == CLIENT
    # asked once: the answer is kept for the function's revision (RevisionId, from moto)
    assert len([r for r in stack.emulator.records("lambdamap") if r.sync]) == probes + 1
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    assert "client against the runtime's own answer" in out
    assert "WARNING" not in out and "ERROR" not in out
    assert re.search(rf"pandas +{CLIENT['pandas']} +{CLIENT['pandas']} +{CLIENT['pandas']} +ok", out)


def frame_summary(frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Runs on the worker: a pandas computation on a DataFrame that the client pickled."""
    return frame.groupby("group").agg(total=("x", "sum"), n=("x", "size")), pd.__version__


def test_a_dataframe_argument_and_result_travel(stack):
    frame = pd.DataFrame({"group": list("abcab"), "x": np.arange(5.0)})
    with aws_executor() as ex:
        remote, version = ex.submit(frame_summary, frame).result(timeout=120)
    local, _ = frame_summary(frame)
    assert version == pd.__version__
    pd.testing.assert_frame_equal(remote, local)


def test_dml_plr_and_irm_on_the_deployed_runtime_equal_doubleml(stack):
    import doubleml
    from doubleml.irm.datasets import make_irm_data
    from doubleml.plm.datasets import make_plr_CCDDHNR2018
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    import dml

    def reg(seed):
        return RandomForestRegressor(n_estimators=5, max_depth=3, random_state=seed)

    np.random.seed(3)
    cases = [(doubleml.DoubleMLPLR, dml.DoubleMLPLRServerless, make_plr_CCDDHNR2018(n_obs=120, dim_x=4),
              lambda: dict(ml_l=reg(1), ml_m=reg(2))),
             (doubleml.DoubleMLIRM, dml.DoubleMLIRMServerless, make_irm_data(n_obs=120, dim_x=4),
              lambda: dict(ml_g=reg(1), ml_m=RandomForestClassifier(n_estimators=5, max_depth=3, random_state=2)))]
    with aws_executor() as ex:
        for local_cls, serverless_cls, data, learners in cases:
            np.random.seed(7)
            local = local_cls(data, n_folds=2, n_rep=1, **learners()).fit()
            np.random.seed(7)
            remote = serverless_cls(data, n_folds=2, n_rep=1, executor=ex, **learners()).fit()
            assert np.array_equal(remote.coef, local.coef) and np.array_equal(remote.se, local.se)
            for name in local.predictions:
                assert np.array_equal(remote.predictions[name], local.predictions[name], equal_nan=True)


def test_forest_on_the_deployed_runtime_equals_sklearn_tree_for_tree(stack):
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier

    from forest import GroveForestClassifier

    X, y = load_digits(return_X_y=True)
    X, y = X[:300], y[:300]
    with aws_executor() as ex:
        grove = GroveForestClassifier(n_estimators=6, grove_size=2, random_state=0, executor=ex).fit(X, y)
        assert np.array_equal(grove.predict_proba(X), RandomForestClassifier(
            n_estimators=6, random_state=0).fit(X, y).predict_proba(X))
    plain = RandomForestClassifier(n_estimators=6, random_state=0).fit(X, y)
    assert len(grove.estimators_) == len(plain.estimators_) == 6
    for ours, theirs in zip(grove.estimators_, plain.estimators_):
        for attribute in ("feature", "threshold", "children_left", "children_right", "value"):
            assert np.array_equal(getattr(ours.tree_, attribute), getattr(theirs.tree_, attribute))


def test_a_doctored_record_warns_naming_both_versions_without_invoking(stack):
    records = len(stack.emulator.records("doctored"))
    with pytest.warns(versions.RuntimeVersionWarning,
                      match=rf"scikit-learn {CLIENT['scikit-learn']} here, 1\.9\.0 there"):
        with aws_executor(function_name="doctored", runtime_probe=False) as ex:
            assert ex.backend.runtime_versions()["scikit-learn"] == "1.9.0"
    assert len(stack.emulator.records("doctored")) == records  # no probe was sent


def test_a_runtime_changed_behind_deploys_back_is_refused_and_warn_lets_it_run(stack, capsys):
    with pytest.raises(RuntimeMismatchError, match=r"(?s)\(pandas\).*pandas +3\.\S+ +3\.\S+ +2\.3\.2 +ERROR: "
                                                   r"major versions differ.*not what deploy recorded"):
        aws_executor(function_name="doctored")
    with pytest.warns(versions.RuntimeVersionWarning, match=r"pandas 3\.\S+ here, 2\.3\.2 there"):
        with aws_executor(function_name="doctored", version_check="warn") as ex:
            assert ex.submit(len, "abc").result(timeout=120) == 3
    assert cli.main(["status", "--function-name", "doctored"]) == 1
    out = capsys.readouterr().out
    assert "scikit-learn" in out and "not what deploy recorded (1.9.0)" in out and "ERROR" in out


def test_deploy_for_python311_refuses_versions_without_a_wheel_before_anything_is_made(
        stack, wheelhouse, monkeypatch, capsys):
    """Lambda's python3.11 is Amazon Linux 2 (glibc 2.26): today's numpy, scipy and scikit-learn
    have no wheel there (their wheels here are manylinux_2_27/2_28); pandas 3 has (2_24)."""
    monkeypatch.setenv("LAMBDAMAP_BUCKET", bucket := f"lm-{uuid.uuid4().hex[:10]}")
    monkeypatch.setenv("LAMBDAMAP_FUNCTION_NAME", "refused")
    argv = ["deploy", "--build-dir", str(stack.tmp / "refused")]
    argv += [f"--pip-arg={arg}" for arg in offline_pip_args(wheelhouse)]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    for name in ("numpy", "scipy", "scikit-learn"):
        assert f"{name} {CLIENT[name]}" in err
    assert "pandas" not in err.split("Ways out")[0]
    assert "python3.11 on Amazon Linux 2 (glibc 2.26" in err and "Nothing was built or uploaded" in err
    assert "Python 3.12" in err and "--image" in err and "--allow-version-drift" in err
    info = deploy.status(Settings.resolve(), probe=False)
    assert info["function"] is None and info["layers"] == [] and info["bucket"] is None


def test_allow_version_drift_builds_what_exists_and_the_client_warns(stack, wheelhouse, workdir,
                                                                    monkeypatch, capsys):
    """An older numpy that has a manylinux2014 wheel (forged from this one: files of this numpy,
    metadata of 2.2.6) stands in for the real 2.2.6 on PyPI."""
    older = workdir / "older"
    older.mkdir()
    repack_wheel("numpy", older, version="2.2.6", tag="cp311-cp311-manylinux2014_x86_64")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip reads its options from the environment too
    monkeypatch.setenv("PIP_FIND_LINKS", f"{wheelhouse} {older}")
    out = workdir / "drift"
    assert build.main(["--out", str(out), "--requirement", "numpy"]) == 1
    assert f"numpy {CLIENT['numpy']}  newest there: 2.2.6" in capsys.readouterr().err
    assert not (out / "layer.zip").exists()

    assert cli.main(["deploy", "--function-name", "drifted", "--build-dir", str(out),
                     "--requirement", "numpy", "--allow-version-drift"]) == 0
    assert f"drift: numpy 2.2.6 in the layer, {CLIENT['numpy']} on the client" in capsys.readouterr().out
    assert "python/numpy-2.2.6.dist-info/METADATA" in zipfile.ZipFile(out / "layer.zip").namelist()
    with pytest.warns(versions.RuntimeVersionWarning, match=rf"numpy {CLIENT['numpy']} here, 2\.2\.6 there"):
        with aws_executor(function_name="drifted", runtime_probe=False) as ex:
            table = ex.backend.versions.table()
    assert "deployed with --allow-version-drift" in table
    assert re.search(r"scikit-learn +\S+ +\(none\) +- +WARNING: not installed in the runtime", table)


def test_the_build_command_writes_the_zip_under_out(wheelhouse, workdir, monkeypatch, capsys):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheelhouse))
    out = workdir / "cli"
    assert build.main(["--out", str(out), "--requirement", "cloudpickle", "--glibc", "2.28"]) == 0
    assert str(out / "layer.zip") in capsys.readouterr().out
    assert "python/runtime_layer/handler.py" in zipfile.ZipFile(out / "layer.zip").namelist()
