"""The backend seam: something that starts invocations of the universal handler."""
from __future__ import annotations

import abc
from typing import Protocol, Sequence

from ..wire import Event


class InvocationListener(Protocol):
    """What a backend tells the executor, from its own threads."""

    def invocation_lost(self, event: Event, cause: str, timed_out: bool) -> None:
        """The invocation of ``event`` ended without running all its calls (process died, ...).

        ``timed_out``: it was stopped for running past the function time-out.
        """

    def wake(self, finished: Sequence[int] | None = None) -> None:
        """Something finished: look at the store now rather than at the next poll.

        ``finished`` may name the call ids known to have written their status, so that the
        collector reads their results directly instead of listing the store.
        """

    def live(self, event: Event) -> Event | None:
        """``event`` as it should be sent now: without calls cancelled or finished meanwhile;
        None if nothing is left to run. Backends ask just before they start an invocation."""


class Backend(abc.ABC):
    """Starts one invocation of ``runtime_layer.handler.handler`` per event, asynchronously.

    ``invoke`` returns as soon as the events are queued; results travel only through the store.
    ``function_timeout`` (seconds) is how long one invocation may run: the executor uses it to
    decide when a silent invocation is lost.
    """

    name: str = "backend"
    function_timeout: float | None = None
    #: True if the backend itself reports lost invocations (the local backend sees its workers
    #: die). Otherwise the executor treats an invocation as lost when its calls have not reported
    #: within ``function_timeout`` plus a margin.
    reports_losses: bool = False
    #: The memory of one invocation in MB, if the backend knows it (named when a call goes silent).
    memory_mb: int | None = None

    def signing_key(self) -> bytes | None:
        """The deployment's HMAC key (see :mod:`lambdamap.signing`); None runs jobs unsigned."""
        return None

    def runtime_versions(self) -> dict[str, str | None] | None:
        """The runtime's package versions (see :mod:`lambdamap.versions`), or None if unknown.

        Libraries whose results depend on a package version (``forest`` on scikit-learn) compare
        them with the client's before they invoke anything.
        """
        return None

    @property
    def capacity(self) -> int | None:
        """How many invocations can run at once (local workers, Lambda's concurrency), or None
        if unknown. ``n_jobs=-1`` of the joblib backend (:mod:`lambdamap.joblib`) means this."""
        return None

    def default_storage(self):
        """The store to use when the executor is given none (e.g. the deployment's bucket)."""
        return None

    def start(self, listener: InvocationListener) -> None:
        """Begin work; ``listener`` receives losses and wake-ups."""
        self.listener = listener

    @abc.abstractmethod
    def invoke(self, events: Sequence[Event]) -> None:
        """Queue one invocation per event."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop: release workers, threads and connections."""
