"""Turning the executor's arguments into a backend and a store (names, paths, URIs).

The embedded store is a fresh folder owned by this process (see :mod:`lambdamap.scratch`), in
RAM when the machine has room there.
"""
from __future__ import annotations

import os
from typing import Any

from . import scratch
from .backends.base import Backend
from .storage import LocalStorage, S3Storage, Storage

#: Folder-name prefix of the embedded stores (swept when their owner died).
STORE_PREFIX = "lambdamap-store-"


def default_store_dir() -> str | None:
    """Where the embedded store's temporary folder goes.

    ``$LAMBDAMAP_STORE_DIR`` if set; else ``/dev/shm`` (RAM-backed: creating a small file there
    takes ~20 µs against ~600 µs on a disk with ``discard``) when it is writable with at least
    1 GiB free; else the system's temporary folder (None).
    """
    chosen = os.environ.get("LAMBDAMAP_STORE_DIR")
    if chosen:
        return chosen
    shm = "/dev/shm"
    try:
        stats = os.statvfs(shm)
        if os.access(shm, os.W_OK) and stats.f_bavail * stats.f_frsize >= 2**30:
            return shm
    except OSError:
        pass
    return None


def embedded_store() -> LocalStorage:
    """A new embedded store, after sweeping those left by clients that died."""
    parent = default_store_dir()
    scratch.sweep(STORE_PREFIX, parent)
    return LocalStorage(scratch.make_owned_dir(STORE_PREFIX, parent))


def make_storage(storage: Storage | str) -> Storage:
    """A :class:`Storage` from a store, a folder path or an ``s3://bucket/prefix`` URI."""
    if isinstance(storage, Storage):
        return storage
    if isinstance(storage, str) and storage.startswith("s3://"):
        bucket, _, prefix = storage[5:].partition("/")
        s3 = S3Storage(bucket, prefix)
        s3.check()
        return s3
    if isinstance(storage, (str, os.PathLike)):
        return LocalStorage(storage)
    raise TypeError(f"storage must be a Storage, a folder path or an s3:// URI, not {storage!r}")


def make_backend(backend: str | Backend, *, workers: int | None,
                 function_timeout: float | None, **options: Any) -> Backend:
    """A :class:`Backend` from ``"local"``, ``"aws"`` or an instance (then without options)."""
    if isinstance(backend, Backend):
        if options or workers is not None:
            raise TypeError(f"unexpected options {sorted(options)} with a Backend instance: "
                            "configure the instance itself")
        return backend
    if backend == "local":
        from .backends.local import LocalBackend

        signing_key = options.pop("signing_key", None)
        if options:
            raise TypeError(f"unexpected options {sorted(options)} for the local backend")
        return LocalBackend(workers, function_timeout=function_timeout, signing_key=signing_key)
    if backend == "aws":
        from .backends.aws import AWSBackend

        if workers is not None:
            raise TypeError("workers= sets the local backend's processes; on AWS use "
                            "max_workers= to cap the invocations in flight")
        return AWSBackend.from_settings(function_timeout=function_timeout, **options)
    raise ValueError(f"unknown backend {backend!r}: use 'local', 'aws', a Backend instance, or "
                     "an int for the number of local workers")
