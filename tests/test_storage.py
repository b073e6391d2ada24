"""One suite, run against every Storage implementation: LocalStorage and S3Storage (moto)."""
from __future__ import annotations

import os

import pytest

from lambdamap.errors import StorageError
from lambdamap.storage import LocalStorage, S3Storage, storage_for_uri, storage_from_spec


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    endpoint, bucket = request.getfixturevalue("s3_bucket")
    return S3Storage(bucket, prefix="some/prefix", endpoint_url=endpoint)


def test_put_get_roundtrip(storage):
    assert storage.put("a/b/c", b"hello") is True
    assert storage.get("a/b/c") == b"hello"
    storage.put("a/b/c", b"again")
    assert storage.get("a/b/c") == b"again"


def test_get_byte_range(storage):
    storage.put("blob", bytes(range(100)))
    assert storage.get("blob", (10, 20)) == bytes(range(10, 20))


def test_missing_key_raises_key_error(storage):
    with pytest.raises(KeyError):
        storage.get("nope/nothing")
    assert storage.exists("nope/nothing") is False


def test_put_if_absent_first_writer_wins(storage):
    assert storage.put("once", b"first", if_absent=True) is True
    assert storage.put("once", b"second", if_absent=True) is False
    assert storage.get("once") == b"first"


def test_list_is_sorted_and_honours_prefix_and_start_after(storage):
    for i in (3, 1, 2, 10):
        storage.put(f"job/status/{i:08d}", b"x")
    storage.put("job/other/1", b"x")
    storage.put("jobx/status/1", b"x")
    keys = storage.list("job/status/")
    assert keys == [f"job/status/{i:08d}" for i in (1, 2, 3, 10)]
    assert storage.list("job/status/", start_after="job/status/00000002") == \
        ["job/status/00000003", "job/status/00000010"]
    assert storage.list("job/") == ["job/other/1"] + keys


def test_delete_prefix_removes_everything_under_it(storage):
    for i in range(5):
        storage.put(f"job1/x/{i}", b"x")
    storage.put("job2/keep", b"x")
    assert storage.delete("job1/") == 5
    assert storage.list("job1/") == []
    assert storage.list("job2/") == ["job2/keep"]


def test_spec_rebuilds_an_equivalent_store(storage):
    storage.put("k", b"v")
    assert storage_from_spec(storage.spec()).get("k") == b"v"


def test_local_storage_writes_atomically_no_temp_files_left(tmp_path):
    store = LocalStorage(tmp_path)
    store.put("a/b", b"1")
    store.put("a/b", b"2", if_absent=True)
    assert sorted(os.listdir(tmp_path / "a")) == ["b"]


def test_missing_bucket_has_a_clear_error(moto_server):
    store = S3Storage("no-such-bucket-here", endpoint_url=moto_server)
    with pytest.raises(StorageError, match="no-such-bucket-here.*does not exist"):
        store.check()
    with pytest.raises(StorageError, match="does not exist"):
        store.put("k", b"v")


def test_no_credentials_has_a_clear_error(monkeypatch, moto_server, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageError, match="no AWS credentials"):
        S3Storage("any-bucket", endpoint_url=moto_server).put("k", b"v")


def test_storage_for_uri(tmp_path, s3_bucket):
    store, key = storage_for_uri(str(tmp_path / "models" / "m.pkl"))
    assert isinstance(store, LocalStorage) and key == "m.pkl"
    store.put(key, b"model")
    assert (tmp_path / "models" / "m.pkl").read_bytes() == b"model"
    endpoint, bucket = s3_bucket
    store, key = storage_for_uri(f"s3://{bucket}/models/m.pkl", endpoint_url=endpoint)
    assert isinstance(store, S3Storage) and key == "models/m.pkl"
    store.put(key, b"model")
    assert store.get(key) == b"model"
    with pytest.raises(ValueError, match="unsupported URI scheme"):
        storage_for_uri("gs://bucket/key")
