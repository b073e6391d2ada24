"""Scratch folders owned by one client process, and the sweep of those whose owner died.

The embedded store lives in RAM (``/dev/shm``) and the local backend needs a folder for its
socket. A client that exits normally removes both; one killed hard (SIGKILL, out of memory) cannot.
So each folder records its owner (pid and process start time, which tells a reused pid apart), and
every new executor sweeps the folders of owners that are gone — except those marked *kept*
(``keep_data=True``: a job kept on purpose, e.g. for ``Executor.attach``).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile

log = logging.getLogger(__name__)

OWNER_FILE = ".lambdamap-owner"
KEEP_FILE = ".lambdamap-keep"


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, Linux), or None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_alive(owner: dict) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return True  # unreadable: leave it alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    started = _process_start(pid)
    return started is None or owner.get("start") in (None, started)


def make_owned_dir(prefix: str, parent: str | None = None) -> str:
    """A new folder under ``parent`` (default: the system's temp folder) owned by this process."""
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    with open(os.path.join(path, OWNER_FILE), "w") as f:
        json.dump({"pid": os.getpid(), "start": _process_start(os.getpid())}, f)
    return path


def mark_kept(path: str) -> None:
    """Exempt ``path`` from sweeping (its data was kept on purpose)."""
    open(os.path.join(path, KEEP_FILE), "w").close()


def _owners(prefix: str, parent: str | None) -> list[tuple[str, dict | None]]:
    """``(path, owner record)`` of the ``prefix*`` folders under ``parent`` (None: unreadable)."""
    parent = parent or tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(parent) if n.startswith(prefix)]
    except OSError:
        return []
    found = []
    for name in names:
        path = os.path.join(parent, name)
        try:
            with open(os.path.join(path, OWNER_FILE)) as f:
                found.append((path, json.load(f)))
        except (OSError, ValueError):
            found.append((path, None))
    return found


def sweep(prefix: str, parent: str | None = None) -> list[str]:
    """Remove the ``prefix*`` folders under ``parent`` whose owner process is gone; return them.

    Folders without an owner record, kept ones and those of live owners are left alone.
    """
    removed = []
    for path, owner in _owners(prefix, parent):
        if owner is None or os.path.exists(os.path.join(path, KEEP_FILE)) or _owner_alive(owner):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        log.info("lambdamap: removed %d scratch folder(s) left by clients that died: %s",
                 len(removed), removed)
    return removed


def owned_by(pid: int, prefix: str, parent: str | None = None) -> list[str]:
    """The ``prefix*`` folders under ``parent`` owned by process ``pid`` (for tests and tools)."""
    return [path for path, owner in _owners(prefix, parent) if owner and owner.get("pid") == pid]
