"""The storage seam: :class:`Storage` and its two implementations, plus two factories.

* :func:`storage_from_spec` rebuilds a store from the small dict that travels in events.
* :func:`storage_for_uri` opens ``s3://bucket/key`` or a local path for one object.
"""
from __future__ import annotations

import os

from .base import Storage
from .local import LocalStorage
from .s3 import S3Storage

__all__ = ["Storage", "LocalStorage", "S3Storage", "storage_from_spec", "storage_for_uri"]

_BY_SPEC: dict[tuple, Storage] = {}


def storage_from_spec(spec: dict) -> Storage:
    """The store that ``spec`` (from :meth:`Storage.spec`) describes; cached per process."""
    cache_key = tuple(sorted((k, str(v)) for k, v in spec.items()))
    storage = _BY_SPEC.get(cache_key)
    if storage is None:
        kind = spec.get("type")
        if kind == "local":
            storage = LocalStorage(spec["root"])
        elif kind == "s3":
            storage = S3Storage(spec["bucket"], spec.get("prefix", ""), region=spec.get("region"),
                                endpoint_url=spec.get("endpoint_url"))
        else:
            raise ValueError(f"unknown storage type {kind!r} in {spec!r}")
        _BY_SPEC[cache_key] = storage
    return storage


def storage_for_uri(uri: str, *, endpoint_url: str | None = None) -> tuple[Storage, str]:
    """Split a URI into a store and a key: ``s3://bucket/a/b.pkl`` or ``/path/b.pkl``.

    Example::

        storage, key = storage_for_uri("s3://my-bucket/models/forest.pkl")
        storage.put(key, blob)
    """
    if uri.startswith("s3://"):
        bucket, _, key = uri[5:].partition("/")
        if not bucket or not key:
            raise ValueError(f"expected s3://bucket/key, got {uri!r}")
        return S3Storage(bucket, endpoint_url=endpoint_url), key
    if "://" in uri:
        raise ValueError(f"unsupported URI scheme in {uri!r}: use s3://bucket/key or a local path")
    path = os.path.abspath(os.path.expanduser(uri))
    return LocalStorage(os.path.dirname(path)), os.path.basename(path)
