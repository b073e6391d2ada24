"""The ledger: which calls are outstanding, which invocations hold them, and what a loss means.

Pure bookkeeping — no I/O, no threads, no clock of its own (callers pass ``now``, monotonic
seconds) — so that the policy can be read and unit-tested on its own. The executor holds it under
its lock and carries out what it decides.

The policy, in one place:

* **Deadlines count from the start of an invocation.** The runtime writes a start marker when an
  invocation begins; the client learns of it with one listing now and then (:meth:`started`). A
  started invocation whose calls stay silent past ``function_timeout + lost_after_margin`` counts
  as lost (it timed out, ran out of memory, its container died). An invocation still waiting in
  the backend's queue is not lost however long the queue is: only when *no* invocation of the
  job has started for ``start_timeout`` seconds are the unstarted ones declared never delivered.
* **Every call gets the whole function time-out.** An invocation that hit the limit while running
  a call that was not its first hands that call back with the rest: it runs again, first in a new
  invocation. Only a call that was first in its invocation, and so had the whole budget, fails
  with :class:`CallTimeoutError`.
* **Bounded retries.** Calls of a batch run in order, so the first unfinished call of a lost
  invocation is the one that was running: it alone is charged a loss; after ``max_retries``
  losses it fails with :class:`WorkerLostError`, and the rest run again.
* **Cancelled calls are forgotten**: they are pruned from events not yet sent, and an event left
  with no call is not sent at all.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Iterable

from .errors import CallTimeoutError, WorkerLostError
from .wire import Event


@dataclass
class Invocation:
    """An event handed to the backend whose calls are not all resolved yet."""

    event: Event
    sent: float
    started: float | None = None


@dataclass
class Verdict:
    """What to do about a lost invocation: calls to fail (with their error), an event to send."""

    fail: list[tuple[int, BaseException]] = field(default_factory=list)
    resend: Event | None = None
    retried: int | None = None  # the call charged with a loss and run again, if any


class Ledger:
    """Outstanding calls and invocations of one executor, and the loss/retry policy.

    Args:
        max_retries: losses a call may suffer before it fails with ``WorkerLostError``.
        function_timeout: seconds one invocation may run (None: no limit, no deadlines).
        lost_after_margin: seconds past the time-out before a silent started invocation is lost.
        start_timeout: seconds without any invocation of the job starting after which the
            unstarted ones count as never delivered.
        watch_deadlines: False for backends that report their losses themselves.
        max_in_flight: cap on invocations handed to the backend at once (None: no cap).
    """

    def __init__(self, *, max_retries: int, function_timeout: float | None,
                 lost_after_margin: float, start_timeout: float, watch_deadlines: bool,
                 max_in_flight: int | None = None):
        self.max_retries = max_retries
        self.function_timeout = function_timeout
        self.lost_after_margin = lost_after_margin
        self.start_timeout = start_timeout
        self.watch_deadlines = watch_deadlines and function_timeout is not None
        self.max_in_flight = max_in_flight
        self.pending: set[int] = set()         # calls whose outcome has not arrived
        self.losses: collections.Counter[int] = collections.Counter()
        self.invocations: dict[str, Invocation] = {}  # by invocation id
        self._queue: collections.deque[Event] = collections.deque()  # waiting for a slot
        self._of_call: dict[int, str] = {}     # call -> the invocation that holds it
        self._last_start = 0.0  # when a start marker was last seen for the first time
        self._seen_starts: set[str] = set()

    # -- calls ---------------------------------------------------------------------------------

    def add(self, call_ids: Iterable[int]) -> None:
        self.pending.update(call_ids)

    def resolve(self, call_id: int) -> bool:
        """The call's outcome arrived (or it was cancelled); False if it was not outstanding."""
        if call_id not in self.pending:
            return False
        self.pending.discard(call_id)
        name = self._of_call.pop(call_id, None)
        invocation = self.invocations.get(name) if name else None
        if invocation is not None and not any(c in self.pending for c in invocation.event.calls):
            del self.invocations[name]
        return True

    def cancel(self, call_id: int) -> tuple[bool, Event | None]:
        """Forget a cancelled call. Returns whether an invocation already sent holds it, and
        that invocation's event if the call was its last outstanding one (it need not run)."""
        name = self._of_call.get(call_id)
        holder = self.invocations.get(name) if name else None
        if not self.resolve(call_id):
            return False, None
        emptied = holder.event if holder is not None and name not in self.invocations else None
        return holder is not None, emptied

    def lowest_pending(self) -> int | None:
        return min(self.pending) if self.pending else None

    # -- invocations ---------------------------------------------------------------------------

    def queue(self, events: Iterable[Event]) -> None:
        """Events to send, in order, as slots allow (see :meth:`take`)."""
        self._queue.extend(events)

    def take(self, now: float) -> list[Event]:
        """The queued events to hand to the backend now, pruned of cancelled calls."""
        out = []
        while self._queue and (self.max_in_flight is None
                               or len(self.invocations) < self.max_in_flight):
            event = self.live(self._queue.popleft())
            if event is not None:
                self.sent(event, now)
                out.append(event)
        return out

    def queued(self) -> int:
        return len(self._queue)

    def sent(self, event: Event, now: float) -> None:
        self.invocations[event.invocation] = Invocation(event, now)
        for call_id in event.calls:
            self._of_call[call_id] = event.invocation

    def live(self, event: Event) -> Event | None:
        """``event`` without its resolved or cancelled calls; None if none is left."""
        calls = [c for c in event.calls if c in self.pending]
        if not calls:
            self.invocations.pop(event.invocation, None)
            return None
        return event if len(calls) == len(event.calls) else event.with_calls(calls)

    def started(self, invocation: str, now: float) -> None:
        """The runtime's start marker of ``invocation`` was seen (again, perhaps)."""
        if invocation in self._seen_starts:
            return
        self._seen_starts.add(invocation)
        self._last_start = max(self._last_start, now)
        found = self.invocations.get(invocation)
        if found is not None and found.started is None:
            found.started = now

    def unstarted(self) -> list[str]:
        """Watched invocations whose start has not been seen, sorted (for listing the markers)."""
        if not self.watch_deadlines:
            return []
        return sorted(name for name, inv in self.invocations.items() if inv.started is None)

    def in_flight(self) -> list[Event]:
        return [inv.event for inv in self.invocations.values()]

    def expired(self, now: float) -> list[tuple[Event, str]]:
        """Invocations to declare lost now, each with the reason, and forget their deadlines."""
        if not self.watch_deadlines:
            return []
        run_limit = self.function_timeout + self.lost_after_margin
        out = []
        for name, inv in list(self.invocations.items()):
            if inv.started is not None:
                if now - inv.started > run_limit:
                    out.append((inv.event, (
                        f"no report within {self.function_timeout} s (the function time-out) plus "
                        f"{self.lost_after_margin} s of its start: the invocation probably timed out,"
                        " ran out of memory or its container died")))
            elif now - max(inv.sent, self._last_start) > self.start_timeout:
                out.append((inv.event, (
                    f"it never started: no invocation of the job began within start_timeout="
                    f"{self.start_timeout} s, so the event was probably never delivered")))
        for event, _ in out:
            self.invocations.pop(event.invocation, None)
        return out

    def lost(self, event: Event, cause: str, *, timed_out: bool, finished: Iterable[int] = (),
             job_id: str = "", sender: str = "") -> Verdict:
        """Decide the fate of the unfinished calls of a lost invocation.

        ``finished`` are calls the caller found finished in the store after all (their outcome
        is on its way). Returns the calls to fail and the event to send again, if any.
        """
        self.invocations.pop(event.invocation, None)
        finished = set(finished)
        unfinished = [c for c in event.calls if c in self.pending and c not in finished]
        verdict = Verdict()
        if not unfinished:
            return verdict
        culprit = unfinished[0]
        self.losses[culprit] += 1
        whole_budget = culprit == event.calls[0]
        again = unfinished
        if timed_out and whole_budget:
            verdict.fail.append((culprit, CallTimeoutError(
                f"call {culprit} of job {job_id} did not finish: {cause}")))
            again = unfinished[1:]
        elif self.losses[culprit] > self.max_retries:
            error_type = CallTimeoutError if timed_out else WorkerLostError
            verdict.fail.append((culprit, error_type(
                f"call {culprit} of job {job_id} was lost {self.losses[culprit]} times "
                f"(max_retries={self.max_retries}); last cause: {cause}")))
            again = unfinished[1:]
        else:
            verdict.retried = culprit
        if again:
            verdict.resend = event.retry(again, sender)
        return verdict
