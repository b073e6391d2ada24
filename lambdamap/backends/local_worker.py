"""A local worker process: the stand-in for one warm Lambda container.

Started by :class:`~lambdamap.backends.local.LocalBackend` as ``python -m
lambdamap.backends.local_worker ADDRESS`` with the auth key on stdin. It connects back, then loops:
receive ``(seq, event)``, run the universal handler, answer ``seq``. It knows nothing of the
client's ``__main__``, exactly like a Lambda container.
"""
from __future__ import annotations

import os
import sys
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


def main() -> None:
    address, timeout = sys.argv[1], float(sys.argv[2]) or None
    authkey = bytes.fromhex(sys.stdin.readline().strip())
    from runtime_layer.handler import handler  # imported before connecting: start-up is "cold"

    conn = Client(address, authkey=authkey)
    conn.send(("ready", os.getpid()))
    while True:
        message = conn.recv()
        if message is None:
            break
        seq, event = message
        try:
            handler(event, LocalContext(timeout))
            conn.send(("done", seq, None))
        except BaseException:  # the store itself failed: the invocation is lost, say why
            conn.send(("done", seq, traceback.format_exc()))


if __name__ == "__main__":
    main()
