"""Futures of remote calls: plain ``concurrent.futures.Future`` objects with a few extras."""
from __future__ import annotations

import concurrent.futures
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    from .logs import LogLocation


class CallFuture(concurrent.futures.Future):
    """The future of one call. ``wait`` and ``as_completed`` work on it unchanged.

    Once done it also carries what the call left behind:

    * ``stdout``, ``stderr``, ``logs``: what the call printed and logged, as text;
    * ``status``: its measurements (start/end, duration, peak memory, worker, warm, bytes);
    * ``remote_traceback``: the formatted traceback of a remote exception, or ``""``;
    * ``logs_location``: on AWS, where the call's invocation logged (CloudWatch log group,
      stream and request id, a :class:`~lambdamap.logs.LogLocation`); None elsewhere.

    The future stays *pending* until its result arrives, so ``cancel()`` succeeds until then —
    also while the call runs remotely (unlike the stdlib's futures, which cannot be cancelled
    once running): waiters are told at once, an invocation not yet sent never runs it, and one
    already running skips it if it has not started it. A call already under way may finish;
    its result is then dropped.
    """

    def __init__(self, call_id: int):
        super().__init__()
        self.call_id = call_id
        self.stdout = ""
        self.stderr = ""
        self.logs = ""
        self.status: dict = {}
        self.remote_traceback = ""
        # Called by the collector just before the future is resolved (progress bars use it: a
        # done-callback would run only after waiters have already been woken).
        self.on_collected: Callable[[CallFuture], None] | None = None
        # Set by the executor: told when the future is cancelled, to stop the remote call.
        self.on_cancel: Callable[[CallFuture], None] | None = None

    def cancel(self) -> bool:
        """Cancel the call unless its result has arrived; True if it is now cancelled."""
        if not super().cancel():
            return False
        # Notify waiters now: a stdlib executor does this when a worker picks the call up,
        # which for a remote call may be never.
        try:
            self.set_running_or_notify_cancel()
        except RuntimeError:
            pass  # another thread notified first
        if self.on_cancel is not None:
            self.on_cancel(self)
        return True

    @property
    def logs_location(self) -> LogLocation | None:
        """Where the call's invocation logged on AWS (``.events()`` reads them), or None."""
        from .logs import LogLocation

        return LogLocation.of(self.status.get("log_location"))

    def __repr__(self) -> str:
        return super().__repr__().replace(" at 0x", f" call={self.call_id} at 0x", 1)


def collect_results(futures: Iterable[concurrent.futures.Future],
                    timeout: float | None = None) -> list[Any]:
    """The results of ``futures`` in their order; on the first failure, cancel the rest and raise.

    Unlike ``[f.result() for f in futures]``, a failure (or ``timeout``, or Ctrl-C) surfaces as
    soon as it happens, not when its turn comes, and the calls still outstanding are cancelled::

        results = collect_results(ex.submit(fit, fold) for fold in folds)
    """
    futures = list(futures)
    try:
        done, not_done = concurrent.futures.wait(
            futures, timeout, return_when=concurrent.futures.FIRST_EXCEPTION)
        if not_done:
            failed = [f for f in done if not f.cancelled() and f.exception() is not None]
            if not failed:
                raise concurrent.futures.TimeoutError(
                    f"{len(not_done)} of {len(futures)} calls unfinished after {timeout} s")
        return [f.result() for f in futures]
    except BaseException:
        for future in futures:
            future.cancel()
        raise
