"""A local worker process: the stand-in for one warm Lambda container.

Started by :class:`~lambdamap.backends.local.LocalBackend` as ``python -m
lambdamap.backends.local_worker ADDRESS`` with the auth key on stdin. It connects back, then loops:
receive ``(seq, event)``, run the universal handler, answer ``seq``. Like a Lambda container it
knows nothing of the client's ``__main__``, working directory or ``sys.path`` additions: it imports
what is installed and the runtime's own packages, so that code that would fail to import on Lambda
fails here too.
"""
from __future__ import annotations

import importlib.machinery
import os
import sys
import sysconfig
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


class _RuntimePackages:
    """Import finder for lambdamap's own packages, from the source tree that holds them.

    Stands in for the source tree's ``sys.path`` entry, which would expose everything else in
    that folder too (as a client's working directory would).
    """

    def __init__(self, root: str, names: frozenset[str]):
        self.root, self.names = root, names

    def find_spec(self, name: str, path=None, target=None):
        if path is None and name in self.names:
            return importlib.machinery.PathFinder.find_spec(name, [self.root])
        return None


def _isolate_imports() -> None:
    """Drop the working directory and the source tree from ``sys.path`` (see the module doc).

    The backend starts the worker in a private empty folder with ``PYTHONPATH`` set to the folder
    holding ``lambdamap`` only; when that folder is not an install location (a source tree), its
    runtime packages stay importable through :class:`_RuntimePackages`, nothing else in it does.
    """
    from lambdamap.serialize import RUNTIME_PACKAGES

    root = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    dropped = {os.path.realpath(os.getcwd())}
    if root not in {os.path.realpath(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")}:
        dropped.add(root)
        sys.meta_path.append(_RuntimePackages(root, RUNTIME_PACKAGES))
    sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) not in dropped]
    os.environ.pop("PYTHONPATH", None)  # nor do the user's subprocesses inherit it


def main() -> None:
    _die_with_parent()
    _isolate_imports()
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
