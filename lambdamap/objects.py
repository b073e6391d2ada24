"""Data by reference: large inputs go to the store once, calls carry only an :class:`ObjectRef`.

**Each call gets its own object.** A worker fetches and decodes an object once and keeps it
between calls (a warm Lambda container does too), but never hands out the cached object itself:
it keeps the object's pickle split in two (pickle protocol 5), the large buffers (numpy arrays,
the columns of a pandas frame) and the small rest, and every :meth:`ObjectRef.get` rebuilds the
object from the rest around *read-only* views of the buffers, as Ray's object store does. So no
call can change what another call receives: writing into a shared array raises ``ValueError:
assignment destination is read-only`` (copy it first: ``X = X.copy()``), and everything else
(lists, dicts, the frame around its columns) is a fresh copy. Arrays cost nothing to rebuild;
plain Python containers cost one unpickling per call (``benchmarks/isolation.py``).

References belong to the executor whose ``put`` made them, while it is open: a reference passed
to another executor's calls, or used after its executor shut down (which deletes the job's data),
raises :class:`~lambdamap.errors.ObjectRefError` saying so.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import pickle
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator

from . import serialize, signing
from .errors import IntegrityError, ObjectRefError, SerializationError
from .storage import storage_from_spec

_CACHE_LIMIT_BYTES = int(os.environ.get("LAMBDAMAP_OBJECT_CACHE_MB", "1024")) * 2**20


@dataclass(frozen=True)
class _Shared:
    """A decoded object as the cache keeps it: its pickle without its buffers, and the buffers."""

    skeleton: bytes
    buffers: tuple[memoryview, ...]  # read-only
    nbytes: int  # the stored blob's size, what the cache limit counts

    @classmethod
    def of(cls, payload: bytes) -> "_Shared":
        obj = serialize.loads(payload)
        buffers: list[pickle.PickleBuffer] = []
        try:
            skeleton = serialize.dumps(obj, "object", buffer_callback=buffers.append)
        except SerializationError:  # it unpickled but won't pickle again: copy it whole
            return cls(payload, (), len(payload))
        return cls(skeleton, tuple(map(_read_only, buffers)), len(payload))

    def copy(self) -> Any:
        return pickle.loads(self.skeleton, buffers=self.buffers)


def _read_only(buffer: pickle.PickleBuffer) -> memoryview:
    try:
        return buffer.raw().toreadonly()  # flat bytes: what numpy expects to rebuild from
    except BufferError:  # not contiguous: keep its shape
        return memoryview(buffer).toreadonly()


_cache: OrderedDict[str, _Shared] = OrderedDict()
_cache_bytes = 0
_cache_lock = threading.Lock()
# The job whose call this thread is running (set by the runtime): a reference of another job is
# then refused with a message instead of failing authentication or lookup.
_running_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("lambdamap_running_job",
                                                                          default=None)


@dataclass(frozen=True)
class ObjectRef:
    """A handle to an object stored once by content hash (see ``Executor.put``).

    Passed as a top-level argument of a call, it is replaced by the object itself in the worker;
    anywhere else (inside a list, a dict, an attribute) call :meth:`get`. Every call gets its
    own copy, its numpy arrays read-only (see :mod:`lambdamap.objects`).
    """

    key: str
    storage: dict
    nbytes: int

    @property
    def job_id(self) -> str:
        return self.key.split("/")[1]  # jobs/<job_id>/obj/<digest>

    def get(self) -> Any:
        """A fresh copy of the object (arrays: read-only views), from the cache or the store."""
        running = _running_job.get()
        if running is not None and running != self.job_id:
            raise ObjectRefError(
                f"{self.key} belongs to job {self.job_id}, but this call belongs to job {running}: "
                "a reference works only in calls of the executor whose put() made it. Call put() "
                "on the executor that runs the call, and pass the reference it returns")
        with _cache_lock:
            shared = _cache.get(self.key)
            if shared is not None:
                _cache.move_to_end(self.key)
        if shared is None:
            payload = self._fetch()
            if len(payload) > _CACHE_LIMIT_BYTES:
                return serialize.loads(payload)  # not kept: this object is the call's own
            shared = _Shared.of(payload)
            _remember(self.key, shared)
        return shared.copy()

    def _fetch(self) -> bytes:
        # A local store's folder that is gone went with its job (opening it would create it again).
        folder_gone = self.storage.get("type") == "local" and not os.path.isdir(self.storage["root"])
        try:
            if folder_gone:
                raise KeyError(self.key)
            blob = storage_from_spec(self.storage).get(self.key)
        except KeyError:
            raise ObjectRefError(
                f"{self.key} is no longer in the store: job {self.job_id} was cleaned up (an "
                "executor deletes its job's data when it shuts down, unless keep_data=True). Use a "
                "reference only while the executor whose put() made it is open") from None
        try:
            return signing.unseal(signing.key_for(self.job_id), self.key, blob)
        except IntegrityError as exc:
            raise IntegrityError(
                f"{exc}. If this reference was made by another executor (another signing key), "
                "put() the object on the executor that runs the call instead") from None


def _remember(key: str, shared: _Shared) -> None:
    """Put ``shared`` in the cache, evicting the least recently used beyond the size limit."""
    global _cache_bytes
    with _cache_lock:
        if key in _cache:
            return
        _cache[key] = shared
        _cache_bytes += shared.nbytes
        while _cache_bytes > _CACHE_LIMIT_BYTES:
            _, evicted = _cache.popitem(last=False)
            _cache_bytes -= evicted.nbytes


def forget_job(job_id: str) -> None:
    """Drop the cached objects of ``job_id`` (its executor shut down: nothing can use them)."""
    global _cache_bytes
    prefix = f"jobs/{job_id}/"
    with _cache_lock:
        for key in [k for k in _cache if k.startswith(prefix)]:
            _cache_bytes -= _cache.pop(key).nbytes


@contextlib.contextmanager
def running_job(job_id: str | None) -> Iterator[None]:
    """Within this block, references of jobs other than ``job_id`` are refused (the runtime's)."""
    token = _running_job.set(job_id)
    try:
        yield
    finally:
        _running_job.reset(token)


def resolve(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Replace top-level :class:`ObjectRef` arguments by their objects."""
    if any(isinstance(a, ObjectRef) for a in args):
        args = tuple(a.get() if isinstance(a, ObjectRef) else a for a in args)
    if any(isinstance(v, ObjectRef) for v in kwargs.values()):
        kwargs = {k: v.get() if isinstance(v, ObjectRef) else v for k, v in kwargs.items()}
    return args, kwargs
