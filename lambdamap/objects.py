"""Data by reference: large inputs go to the store once, calls carry only an :class:`ObjectRef`.

A worker keeps decoded objects in an in-process cache between calls (a warm Lambda container does
too), so a 100 MB training matrix is fetched and unpickled once per worker, not once per call.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from . import serialize, signing
from .storage import storage_from_spec

_CACHE_LIMIT_BYTES = int(os.environ.get("LAMBDAMAP_OBJECT_CACHE_MB", "1024")) * 2**20
_cache: OrderedDict[str, tuple[Any, int]] = OrderedDict()
_cache_bytes = 0
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class ObjectRef:
    """A handle to an object stored once by content hash (see ``Executor.put``).

    Passed as a top-level argument of a call, it is replaced by the object itself in the worker;
    anywhere else (inside a list, a dict, an attribute) call :meth:`get`.
    """

    key: str
    storage: dict
    nbytes: int

    def get(self) -> Any:
        """The object, from this process's cache or else from the store."""
        with _cache_lock:
            hit = _cache.get(self.key)
            if hit is not None:
                _cache.move_to_end(self.key)
                return hit[0]
        job_id = self.key.split("/")[1]  # jobs/<job_id>/obj/<digest>
        blob = storage_from_spec(self.storage).get(self.key)
        obj = serialize.loads(signing.unseal(signing.key_for(job_id), self.key, blob))
        remember(self.key, obj, self.nbytes)
        return obj


def remember(key: str, obj: Any, nbytes: int) -> None:
    """Put ``obj`` in the cache, evicting the least recently used beyond the size limit."""
    global _cache_bytes
    if nbytes > _CACHE_LIMIT_BYTES:
        return
    with _cache_lock:
        if key in _cache:
            return
        _cache[key] = (obj, nbytes)
        _cache_bytes += nbytes
        while _cache_bytes > _CACHE_LIMIT_BYTES:
            _, (_, size) = _cache.popitem(last=False)
            _cache_bytes -= size


def resolve(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Replace top-level :class:`ObjectRef` arguments by their objects."""
    if any(isinstance(a, ObjectRef) for a in args):
        args = tuple(a.get() if isinstance(a, ObjectRef) else a for a in args)
    if any(isinstance(v, ObjectRef) for v in kwargs.values()):
        kwargs = {k: v.get() if isinstance(v, ObjectRef) else v for k, v in kwargs.items()}
    return args, kwargs
