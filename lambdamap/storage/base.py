"""The storage seam: a tiny key/value interface that the client and the runtime share."""
from __future__ import annotations

import abc


class Storage(abc.ABC):
    """A flat store of byte blobs under ``/``-separated keys.

    Every implementation keeps these promises, which the wire format relies on:

    * ``put`` is atomic: a reader sees the old blob, the new blob, or no blob, never a part.
    * ``put(..., if_absent=True)`` writes only if the key does not exist yet and says whether it
      did, so that a call delivered twice still has exactly one result.
    * ``list(prefix, start_after)`` returns keys in lexicographic order.
    """

    @abc.abstractmethod
    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        """Store ``data`` under ``key``; return False only if ``if_absent`` and the key existed."""

    @abc.abstractmethod
    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        """Return the blob (or bytes ``[start, end)`` of it); raise ``KeyError`` if absent."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` holds a blob."""

    @abc.abstractmethod
    def list(self, prefix: str, start_after: str | None = None) -> list[str]:
        """Keys that start with ``prefix`` (and sort after ``start_after``), sorted."""

    @abc.abstractmethod
    def delete(self, prefix: str) -> int:
        """Delete every key that starts with ``prefix``; return how many were deleted."""

    @abc.abstractmethod
    def spec(self) -> dict:
        """A small JSON-able description from which :func:`storage_from_spec` rebuilds it.

        It travels in every invocation event, so that a worker reaches the same store.
        """

    def close(self) -> None:
        """Release resources (connections); the default does nothing."""
