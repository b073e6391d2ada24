"""Settings resolution: keyword arguments, then LAMBDAMAP_* variables, then the config file."""
from __future__ import annotations

import pytest

from lambdamap.config import Settings, config_path, save_setting


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No LAMBDAMAP_* variable and no real config file leak into these tests."""
    import os

    for name in [n for n in os.environ if n.startswith("LAMBDAMAP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def write_config(path, **values):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[lambdamap]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))
    return path


def test_defaults():
    s = Settings.resolve()
    assert (s.function_name, s.prefix, s.bucket, s.memory, s.timeout) == ("lambdamap", "lambdamap", None, 1024, 300)
    assert s.role == "lambdamap-role" and s.layer == "lambdamap-runtime"


def test_precedence_arguments_then_environment_then_file(monkeypatch, tmp_path):
    write_config(tmp_path / "xdg" / "lambdamap" / "config", bucket="from-file", region="eu-west-1",
                 memory="2048", prefix="file-prefix")
    monkeypatch.setenv("LAMBDAMAP_BUCKET", "from-env")
    monkeypatch.setenv("LAMBDAMAP_MEMORY", "512")
    s = Settings.resolve(memory=3008)
    assert s.memory == 3008                 # argument beats environment and file
    assert s.bucket == "from-env"           # environment beats file
    assert s.region == "eu-west-1"          # file beats default
    assert s.prefix == "file-prefix"
    assert Settings.resolve(memory=None).memory == 512  # None means "not given"


def test_endpoint_urls_are_settings_like_any_other(monkeypatch):
    monkeypatch.setenv("LAMBDAMAP_LAMBDA_ENDPOINT_URL", "http://127.0.0.1:9001")
    monkeypatch.setenv("LAMBDAMAP_S3_ENDPOINT_URL", "http://127.0.0.1:9002")
    s = Settings.resolve()
    assert (s.lambda_endpoint_url, s.s3_endpoint_url) == ("http://127.0.0.1:9001", "http://127.0.0.1:9002")


def test_config_file_named_by_environment(monkeypatch, tmp_path):
    path = write_config(tmp_path / "elsewhere.ini", function_name="other", invoke_threads="8")
    monkeypatch.setenv("LAMBDAMAP_CONFIG", str(path))
    assert config_path() == path
    s = Settings.resolve()
    assert (s.function_name, s.invoke_threads, s.role) == ("other", 8, "other-role")
    monkeypatch.setenv("LAMBDAMAP_CONFIG", str(tmp_path / "missing.ini"))
    assert Settings.resolve().function_name == "lambdamap"  # not there yet: deploy creates it


def test_save_setting_keeps_the_rest_and_is_owner_only(monkeypatch, tmp_path):
    import stat

    path = write_config(tmp_path / "config", bucket="b")
    monkeypatch.setenv("LAMBDAMAP_CONFIG", str(path))
    save_setting("signing_key", "ab" * 32)
    s = Settings.resolve()
    assert (s.bucket, s.signing_key) == ("b", "ab" * 32)
    assert "ab" * 32 not in repr(s)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_bad_values_fail_clearly(monkeypatch):
    with pytest.raises(TypeError, match="unknown lambdamap setting.*'bukcet'"):
        Settings.resolve(bukcet="x")
    monkeypatch.setenv("LAMBDAMAP_TIMEOUT", "soon")
    with pytest.raises(ValueError, match=r"timeout from \$LAMBDAMAP_TIMEOUT must be an integer"):
        Settings.resolve()
    with pytest.raises(ValueError, match="architecture"):
        Settings.resolve(architecture="sparc", timeout=10)
    with pytest.raises(ValueError, match="1..900"):
        Settings.resolve(timeout=901)


def test_missing_bucket_message_says_where_to_set_it():
    with pytest.raises(ValueError, match="LAMBDAMAP_BUCKET"):
        Settings.resolve().require_bucket()


def test_version_check_settings(monkeypatch):
    assert (Settings.resolve().runtime_probe, Settings.resolve().version_check) == (True, "strict")
    monkeypatch.setenv("LAMBDAMAP_RUNTIME_PROBE", "off")
    monkeypatch.setenv("LAMBDAMAP_VERSION_CHECK", "warn")
    assert (Settings.resolve().runtime_probe, Settings.resolve().version_check) == (False, "warn")
    assert Settings.resolve(runtime_probe=True).runtime_probe is True
    monkeypatch.setenv("LAMBDAMAP_RUNTIME_PROBE", "maybe")
    with pytest.raises(ValueError, match="runtime_probe from \\$LAMBDAMAP_RUNTIME_PROBE must be true or false"):
        Settings.resolve()
    with pytest.raises(ValueError, match="version_check must be one of"):
        Settings.resolve(runtime_probe=False, version_check="loose")
