"""Payload integrity: tampered arguments and results are refused, never unpickled."""
from __future__ import annotations

import dataclasses

import pickle

import cloudpickle
import pytest

from lambdamap import Executor, IntegrityError, serialize, signing, wire
from lambdamap.backends.local import LocalBackend
from lambdamap.collector import outcome
from lambdamap.storage import LocalStorage
from runtime_layer.handler import handler


class Evil:
    """Unpickling this creates a file: proof that a payload was (or was not) unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class TamperingBackend(LocalBackend):
    """Replaces the first argument batch with a forged one before the workers read it."""

    def __init__(self, marker):
        super().__init__(1)
        self.marker, self.done = marker, False

    def invoke(self, events):
        if not self.done:
            self.done = True
            first = events[0]
            store = LocalStorage(first.storage["root"])
            old = store.get(first.args)
            forged_batch = pickle.dumps([(cid, pickle.dumps(Evil(self.marker))) for cid in first.calls])
            forged = old[:signing.TAG_BYTES] + forged_batch  # a stolen tag does not fit the payload
            store.put(first.args, old + forged)  # the other batches stay where they were
            events = [dataclasses.replace(first, range=(len(old), len(old) + len(forged)))] + list(events[1:])
        super().invoke(events)


def test_tampered_argument_is_refused_by_the_handler(tmp_path):
    marker = tmp_path / "unpickled"
    with Executor(TamperingBackend(str(marker))) as ex:
        futures = ex.map_futures(lambda x: x + 1, range(6), chunksize=2)
        with pytest.raises(IntegrityError, match=r"args/\d+@\d+ failed authentication"):
            futures[0].result(timeout=60)
        assert isinstance(futures[1].exception(timeout=60), IntegrityError)
        assert [f.result(timeout=60) for f in futures[2:]] == [3, 4, 5, 6]
    assert not marker.exists()


class SilentBackend(LocalBackend):
    """Never runs call 0: a forged result written by someone else stays the first one."""

    def invoke(self, events):
        super().invoke([e.with_calls([c for c in e.calls if c != 0]) for e in events])


def test_forged_result_is_refused_by_the_client(tmp_path):
    marker = tmp_path / "unpickled"
    with Executor(SilentBackend(1)) as ex:
        forged = wire.CallRecord(call_id=0, ok=True, value_blob=pickle.dumps(Evil(str(marker))))
        ex.storage.put(wire.result_key(ex.job_id, 0), b"\0" * 32 + wire.encode_record(forged))
        ex.storage.put(wire.status_key(ex.job_id, 0), wire.encode_status({"ok": True}))
        futures = ex.map_futures(lambda x: x * 2, range(4))
        with pytest.raises(IntegrityError, match="result of call 0.*failed authentication"):
            futures[0].result(timeout=60)
        assert [f.result(timeout=60) for f in futures[1:]] == [2, 4, 6]
    assert not marker.exists()


def test_a_valid_result_moved_to_another_call_is_refused():
    with Executor(SilentBackend(1)) as ex:
        futures = ex.map_futures(lambda x: x * 2, range(3))
        assert futures[1].result(timeout=60) == 2
        ex.storage.put(wire.result_key(ex.job_id, 0), ex.storage.get(wire.result_key(ex.job_id, 1)))
        ex.storage.put(wire.status_key(ex.job_id, 0), b"{}")
        with pytest.raises(IntegrityError, match="result of call 0"):
            futures[0].result(timeout=60)


def _unsigned_job(store, signed):
    fn_key = wire.fn_key("jobX", serialize.digest(cloudpickle.dumps(abs)))
    store.put(fn_key, cloudpickle.dumps(abs))
    blob = wire.pack_batch([(0, cloudpickle.dumps(((-1,), {})))])
    store.put(wire.args_key("jobX", 0), blob)
    return wire.make_event(storage=store.spec(), job_id="jobX", fn=fn_key,
                           args=wire.args_key("jobX", 0), byte_range=(0, len(blob)), calls=[0],
                           signed=signed)


def test_runtime_with_a_key_refuses_unsigned_jobs(tmp_path, monkeypatch):
    key = signing.new_key()
    monkeypatch.setenv(signing.SIGNING_KEY_ENV, key.hex())
    store = LocalStorage(tmp_path)
    handler(_unsigned_job(store, signed=False))
    record = wire.decode_record(store.get(wire.result_key("jobX", 0)), key, wire.result_key("jobX", 0))
    _, error = outcome(record)
    assert isinstance(error, IntegrityError) and "refuses unsigned jobs" in str(error)


def test_signed_job_on_a_runtime_without_key_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv(signing.SIGNING_KEY_ENV, raising=False)
    store = LocalStorage(tmp_path)
    handler(_unsigned_job(store, signed=True))
    record = wire.decode_record(store.get(wire.result_key("jobX", 0)))
    _, error = outcome(record)
    assert isinstance(error, IntegrityError) and "runtime has no signing key" in str(error)


def test_every_stored_blob_of_a_job_is_sealed(tmp_path):
    store = LocalStorage(tmp_path)
    with Executor(workers=1, storage=store, keep_data=True) as ex:
        ref = ex.put([1, 2, 3])
        assert ex.submit(sum, ref).result(timeout=60) == 6
        key = ex.signing_key
    for stored in store.list(f"jobs/{ex.job_id}/"):
        if "/status/" in stored:
            continue  # statuses are plain JSON markers, never unpickled
        data = store.get(stored)
        if "/args/" in stored:
            signing.unseal(key, wire.batch_label(stored, 0), data[:])  # single batch at offset 0
        else:
            signing.unseal(key, stored, data)  # raises if not sealed with this key
        with pytest.raises(IntegrityError):
            signing.unseal(signing.new_key(), stored, data)
