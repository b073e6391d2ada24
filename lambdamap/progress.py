"""Progress bars where a person watches: on by default in a terminal or a notebook, off in CI and
when output goes to a file or a pipe.

``progress=None`` (the default of ``dml``'s models and ``forest``'s estimators) means "if someone
watches" (:func:`interactive`); ``True`` and ``False`` force it. Bars are ``tqdm.auto`` bars (a
widget in a notebook, text in a terminal) that count failures and always close: when the work
is done, when it fails, and at once when there is none.
"""
from __future__ import annotations

import os
import sys
import threading
from typing import Any

#: Environment variables whose presence (with a true value) means "running in CI".
CI_VARIABLES = ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "JENKINS_URL", "TF_BUILD")


def interactive() -> bool:
    """Whether a person is likely watching: not CI, and a notebook or a terminal on stderr."""
    for name in CI_VARIABLES:
        if os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no"):
            return False
    if _in_notebook():
        return True
    stream = sys.stderr  # where tqdm writes
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


def wanted(progress: bool | None) -> bool:
    """``progress`` as given, or :func:`interactive` for None."""
    if progress is None:
        return interactive()
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None (automatic), not {progress!r}")
    return progress


class TaskBar:
    """A ``tqdm.auto`` bar over tasks whose number may grow, or nothing when not wanted.

    Thread-safe; :meth:`close` is idempotent and ``with`` closes it however the block ends::

        with TaskBar(progress, total=len(tasks), desc="cross-fitting", unit="task") as bar:
            for future in as_completed(futures):
                bar.done(failed=future.exception() is not None)
    """

    def __init__(self, progress: bool | None, total: int = 0, desc: str = "",
                 unit: str = "task"):
        self.enabled = wanted(progress)
        self.desc, self.unit = desc, unit
        self.total, self.failed = total, 0
        self._bar: Any = None  # made at the first task: no bar for empty work
        self._closed = False
        self._lock = threading.Lock()
        if self.enabled and total:
            self._open()

    def add(self, n: int = 1) -> None:
        """``n`` more tasks to do."""
        with self._lock:
            self.total += n
            if not self.enabled or self._closed:
                return
            if self._bar is None:
                self._open()
            else:
                self._bar.total = self.total
                self._bar.refresh()

    def done(self, n: int = 1, failed: bool = False) -> None:
        """``n`` tasks finished (``failed``: they raised)."""
        with self._lock:
            if self._bar is None or self._closed:
                return
            if failed:
                self.failed += n
                self._bar.set_postfix(failed=self.failed, refresh=False)
            self._bar.update(n)

    def close(self) -> None:
        with self._lock:
            if self._bar is not None and not self._closed:
                self._bar.close()
            self._closed = True

    def __enter__(self) -> TaskBar:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _open(self) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=self.total, desc=self.desc, unit=self.unit)


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ipython = shell.get_ipython()
    except Exception:  # noqa: BLE001 - an unusual IPython: assume no notebook
        return False
    return type(ipython).__name__ == "ZMQInteractiveShell"
