"""Futures of remote calls: plain ``concurrent.futures.Future`` objects with a few extras."""
from __future__ import annotations

import concurrent.futures


class CallFuture(concurrent.futures.Future):
    """The future of one call. ``wait`` and ``as_completed`` work on it unchanged.

    Once done it also carries what the call left behind:

    * ``stdout``, ``stderr``, ``logs``: what the call printed and logged, as text;
    * ``status``: its measurements (start/end, duration, peak memory, worker, warm, bytes);
    * ``remote_traceback``: the formatted traceback of a remote exception, or ``""``.

    The future stays *pending* until its result arrives, so ``cancel()`` succeeds until then;
    the call itself may still run remotely (its result is then ignored).
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
        self.on_collected = None

    def __repr__(self) -> str:
        return super().__repr__().replace("<Future", f"<CallFuture call={self.call_id}", 1)
