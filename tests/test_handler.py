"""The universal handler on its own: one event in, one result and one status per call out."""
from __future__ import annotations

import dataclasses
import json

import cloudpickle
import pytest

from lambdamap import RuntimeMismatchError, serialize, wire
from lambdamap.collector import outcome
from lambdamap.storage import LocalStorage
from runtime_layer.handler import handler


def make_job(storage, calls, fn=lambda x: x + 1):
    fn_blob = cloudpickle.dumps(fn)
    fn_key = wire.fn_key("job1", serialize.digest(fn_blob))  # content-addressed, as the client does
    storage.put(fn_key, fn_blob)
    blob = wire.pack_batch([(cid, cloudpickle.dumps(((x,), {}))) for cid, x in calls])
    storage.put(wire.args_key("job1", 0), blob)
    return wire.make_event(storage=storage.spec(), job_id="job1", fn=fn_key,
                           args=wire.args_key("job1", 0), byte_range=(0, len(blob)),
                           calls=[cid for cid, _ in calls])


def records(storage):
    return {wire.call_id_of(k): wire.decode_record(storage.get(k))
            for k in storage.list("jobs/job1/result/")}


def test_event_is_small_json_with_keys_not_data(tmp_path):
    event = make_job(LocalStorage(tmp_path), [(0, "x" * 100_000)], fn=len)
    assert len(json.dumps(event.to_json())) < 1000
    assert event.to_json()["wire_version"] == wire.WIRE_VERSION
    assert wire.Event.from_json(json.loads(json.dumps(event.to_json()))) == event


def test_handler_writes_result_and_status_per_call(tmp_path):
    store = LocalStorage(tmp_path)
    summary = handler(make_job(store, [(0, 1), (1, 2), (2, 3)]))
    assert summary["calls"] == 3
    recs = records(store)
    assert [outcome(recs[i])[0] for i in range(3)] == [2, 3, 4]
    status = wire.decode_status(store.get(wire.status_key("job1", 1)))
    for field in ("started", "finished", "duration", "peak_memory_mb", "worker", "warm",
                  "bytes_in", "bytes_out", "attempt"):
        assert field in status
    assert status["ok"] is True and status["finished"] >= status["started"]


def test_same_batch_delivered_twice_keeps_exactly_one_result(tmp_path):
    store = LocalStorage(tmp_path)
    event = make_job(store, [(0, 1), (1, 2)])
    handler(event)
    first = records(store)
    handler(event)  # at-least-once delivery: a duplicate
    second = records(store)
    assert {k: r.status for k, r in first.items()} == {k: r.status for k, r in second.items()}
    assert len(store.list("jobs/job1/status/")) == 2


@pytest.mark.parametrize("field,value,message", [
    ("python", "2.7", r"client runs Python 2\.7, this runtime runs Python 3\.\d+"),
    ("wire_version", 999, rf"client sent version 999, this runtime speaks version {wire.WIRE_VERSION}"),
])
def test_handler_refuses_a_mismatched_client_naming_both_versions(tmp_path, field, value, message):
    store = LocalStorage(tmp_path)
    event = dict(make_job(store, [(0, 1), (1, 2)]).to_json(), **{field: value})
    handler(event)
    recs = records(store)
    assert set(recs) == {0, 1}
    for rec in recs.values():
        _, error = outcome(rec)
        assert isinstance(error, RuntimeMismatchError)
        assert error.args and __import__("re").search(message, str(error))


class ShortContext:
    """A Lambda-like context with one second left."""

    def __init__(self, seconds):
        self.end = __import__("time").time() + seconds

    def get_remaining_time_in_millis(self):
        return int((self.end - __import__("time").time()) * 1000)


def test_handler_stops_a_call_before_the_invocation_times_out(tmp_path):
    import time

    from lambdamap import CallTimeoutError

    store = LocalStorage(tmp_path)
    # Call 1 is stopped but was not first: the budget was partly its predecessor's, so it is
    # handed back with call 2, to run again first in a new invocation.
    event = make_job(store, [(0, 0.2), (1, 30.0), (2, 0.0)], fn=lambda s: time.sleep(s) or s)
    started = time.monotonic()
    summary = handler(event, ShortContext(1.0))
    assert time.monotonic() - started < 5
    assert summary["not_run"] == [1, 2]  # handed back, not lost
    recs = records(store)
    assert outcome(recs[0])[0] == 0.2 and set(recs) == {0}

    # First in its invocation, it had the whole budget: now the time-out is its own.
    event = dataclasses.replace(event, calls=(1, 2), invocation="00000000.00000.1.x", attempt=1)
    summary = handler(event, ShortContext(1.0))
    assert summary["not_run"] == [2]
    _, error = outcome(records(store)[1])
    assert isinstance(error, CallTimeoutError) and "call 1 ran past the function time-out" in str(error)


def test_a_late_duplicate_for_a_cleaned_up_job_writes_nothing(tmp_path):
    store = LocalStorage(tmp_path)
    event = dataclasses.replace(make_job(store, [(0, 1)]), manifest="jobs/job1/manifest/00000000")
    store.delete("jobs/job1/args/")  # cleaned up: arguments and manifest are gone
    handler(event)
    assert store.list("jobs/job1/result/") == [] and store.list("jobs/job1/status/") == []


def test_missing_arguments_of_a_live_job_are_reported_not_skipped(tmp_path):
    store = LocalStorage(tmp_path)
    event = dataclasses.replace(make_job(store, [(0, 1)]), manifest="jobs/job1/manifest/00000000")
    store.put("jobs/job1/manifest/00000000", b"[]")  # the job still exists
    store.delete("jobs/job1/args/")
    handler(event)
    _, error = outcome(records(store)[0])
    assert isinstance(error, KeyError)  # the caller learns at once instead of waiting
