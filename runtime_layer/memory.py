"""The peak memory of one call, reported as ``peak_memory_mb`` in its status.

On Linux, writing ``5`` to ``/proc/self/clear_refs`` resets the high-water mark of the process's
resident set (``VmHWM`` in ``/proc/self/status``, Linux >= 4.0). The runtime resets it before each
call and reads it after, so that a call's peak is its own: the most the process held *while that
call ran* (including what it held already: the interpreter, libraries, cached objects), not the
most since the worker started. Where the reset is refused or there is no ``/proc`` (macOS), the
peak is the process's lifetime maximum (``ru_maxrss``, like Lambda's "Max Memory Used"). The
status says which in ``peak_memory_scope``: ``"call"`` or ``"process"``. Both cost ~20 µs a call.
"""
from __future__ import annotations

import resource
import sys

CALL, PROCESS = "call", "process"


class PeakMemory:
    """Resets and reads this process's peak resident memory (one instance per process)."""

    def __init__(self) -> None:
        self.scope = PROCESS  # until a reset succeeds

    def reset(self) -> None:
        """Start a new peak (if the system lets us); ``scope`` says whether it did."""
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.scope = PROCESS
        else:
            self.scope = CALL

    def peak_mb(self) -> float:
        """The peak in MiB since the last successful :meth:`reset` (else the lifetime peak)."""
        if self.scope == CALL:
            try:
                with open("/proc/self/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            return int(line.split()[1]) / 1024  # kB
            except OSError:
                pass
            self.scope = PROCESS
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes there, KiB here
