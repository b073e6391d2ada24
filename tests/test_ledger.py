"""The loss/retry/cancellation policy, on its own: no store, no processes, a clock we move."""
from __future__ import annotations

import pytest

from lambdamap import CallTimeoutError, WorkerLostError, wire
from lambdamap.ledger import Ledger


def event(calls, index=0, attempt=0):
    return wire.Event(storage={}, job_id="j", fn="f", args="a", range=(0, 1), calls=tuple(calls),
                      invocation=wire.invocation_id(0, index, attempt, "s"), attempt=attempt)


def ledger(**kw):
    options = dict(max_retries=1, function_timeout=10.0, lost_after_margin=5.0,
                   start_timeout=60.0, watch_deadlines=True)
    options.update(kw)
    return Ledger(**options)


def sent(led, ev, now=0.0):
    led.add(ev.calls)
    led.queue([ev])
    assert led.take(now) == [ev]
    return ev


def test_a_queued_invocation_is_never_lost_while_others_start():
    led = ledger()
    waiting = sent(led, event([1], 1))
    for now in range(10, 300, 10):  # other invocations of the job keep starting: progress
        led.started(f"other.{now}", float(now))
        led.started("other.10", float(now))  # listed again: not news
        assert led.expired(float(now)) == []
    [(lost, cause)] = led.expired(290.0 + 61)  # then nothing started for start_timeout
    assert lost == waiting and "never started" in cause


def test_deadlines_count_from_the_start_not_from_dispatch():
    led = ledger()
    ev = sent(led, event([0, 1]))
    led.started("other", 50.0)
    assert led.expired(100.0) == []            # queued for 100 s behind others: fine
    led.started(ev.invocation, 100.0)
    assert led.expired(114.9) == []            # 10 s time-out + 5 s margin from its start
    [(lost, cause)] = led.expired(115.1)
    assert lost == ev and "of its start" in cause
    assert led.expired(200.0) == []            # declared once


def test_an_event_that_never_starts_is_lost_after_the_start_timeout_without_progress():
    led = ledger()
    ev = sent(led, event([0]))
    assert led.expired(59.0) == []
    [(lost, cause)] = led.expired(61.0)
    assert lost == ev and "never started" in cause


def test_losses_blame_the_running_call_and_retry_the_rest():
    led = ledger(max_retries=1)
    ev = sent(led, event([0, 1, 2]))
    led.resolve(0)
    verdict = led.lost(ev, "killed", timed_out=False, sender="s")
    assert verdict.fail == [] and verdict.retried == 1
    assert verdict.resend.calls == (1, 2) and verdict.resend.attempt == 1
    assert verdict.resend.invocation != ev.invocation
    again = sent(led, verdict.resend)
    verdict = led.lost(again, "killed", timed_out=False, sender="s")
    [(call, error)] = verdict.fail
    assert call == 1 and isinstance(error, WorkerLostError) and "lost 2 times" in str(error)
    assert verdict.resend.calls == (2,)


def test_a_time_out_fails_only_a_call_that_had_the_whole_budget():
    led = ledger(max_retries=5)
    ev = sent(led, event([0, 1, 2]))
    led.resolve(0)
    verdict = led.lost(ev, "ran past the time-out", timed_out=True, sender="s")
    assert verdict.fail == [] and verdict.resend.calls == (1, 2)  # 1 was not first: run again
    verdict = led.lost(sent(led, verdict.resend), "ran past the time-out", timed_out=True, sender="s")
    [(call, error)] = verdict.fail
    assert call == 1 and isinstance(error, CallTimeoutError)
    assert verdict.resend.calls == (2,)


def test_calls_found_finished_are_not_blamed():
    led = ledger()
    ev = sent(led, event([0, 1]))
    verdict = led.lost(ev, "late", timed_out=False, finished=[0, 1], sender="s")
    assert verdict.fail == [] and verdict.resend is None


def test_cancelled_calls_are_pruned_and_an_emptied_event_is_not_sent():
    led = ledger(max_in_flight=1)
    a, b = event([0, 1], 0), event([2, 3], 1)
    led.add([0, 1, 2, 3])
    led.queue([a, b])
    assert led.take(0.0) == [a]                 # the cap holds b back
    assert led.cancel(1) == (True, None)        # a still runs call 0
    assert led.cancel(0) == (True, a)           # now a has nothing left: it may be stopped
    led.cancel(2)
    [pruned] = led.take(0.0)
    assert pruned.calls == (3,) and pruned.invocation == b.invocation
    led.cancel(3)
    assert led.live(pruned) is None and led.pending == set()


def test_the_in_flight_cap_releases_a_slot_when_an_invocation_resolves():
    led = ledger(max_in_flight=2)
    events = [event([i], i) for i in range(5)]
    led.add(range(5))
    led.queue(events)
    assert led.take(0.0) == events[:2]
    led.resolve(0)
    assert led.take(0.0) == [events[2]]
    assert led.take(0.0) == []


def test_backends_that_report_losses_have_no_deadlines():
    led = ledger(watch_deadlines=False)
    sent(led, event([0]))
    assert led.unstarted() == [] and led.expired(10_000.0) == []
