"""A local worker process: the stand-in for one warm Lambda container.

Started by :class:`~lambdamap.backends.local.LocalBackend` as ``python -m
lambdamap.backends.local_worker ADDRESS`` with the auth key on stdin. It connects back, then loops:
receive ``(seq, event)``, run the universal handler, answer ``seq``. It knows nothing of the
client's ``__main__``, exactly like a Lambda container.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import traceback
import uuid
from multiprocessing.connection import Client


class LocalContext:
    """The parts of the Lambda context object that handlers use."""

    function_name = "lambdamap-local"
    memory_limit_in_mb = None

    def __init__(self, timeout: float | None):
        self.aws_request_id = uuid.uuid4().hex
        self._deadline = time.time() + timeout if timeout else None

    def get_remaining_time_in_millis(self) -> int:
        return int((self._deadline - time.time()) * 1000) if self._deadline else 2**31


def _die_with_parent() -> None:
    """Exit when the client process dies, even in the middle of a call: no worker outlives it.

    (``prctl(PR_SET_PDEATHSIG)`` would fire when the *thread* that started the worker ends,
    which is wrong for executors created in short-lived threads; polling the parent is not.)
    """
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="lambdamap-parent-watch").start()


def main() -> None:
    _die_with_parent()
    address, timeout = sys.argv[1], float(sys.argv[2]) or None
    authkey = bytes.fromhex(sys.stdin.readline().strip())
    os.environ["LAMBDAMAP_SIGNING_KEY"] = sys.stdin.readline().strip()  # the runtime's key
    from runtime_layer.handler import handler  # imported before connecting: start-up is "cold"

    conn = Client(address, authkey=authkey)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break  # the client went away: nothing left to do
        if message is None:
            break
        seq, event = message
        try:
            summary = handler(event, LocalContext(timeout))
            answer = ("done", seq, None, summary.get("not_run", []))
        except BaseException:  # the store itself failed: the invocation is lost, say why
            answer = ("done", seq, traceback.format_exc(), [])
        try:
            conn.send(answer)
        except OSError:
            break


if __name__ == "__main__":
    main()
