"""Payload integrity: nothing is unpickled unless it carries a valid HMAC-SHA256 tag.

A pickle-based executor runs whatever bytes it finds in the store, so every blob the client
writes (function, arguments, objects, manifests) and every result a worker writes is sealed:
``tag = HMAC-SHA256(key, label + NUL + payload)`` is prepended, where ``label`` is the blob's
storage key (plus the byte offset for an argument batch). Binding the label means a valid blob
cannot be moved to another call or job either. The key belongs to the deployment:

* the local backend makes a random key per executor and hands it to its workers on stdin;
* on AWS, ``lambdamap deploy`` creates a key, keeps it in the client's config and gives it to the
  function in its environment (``LAMBDAMAP_SIGNING_KEY``, hex).

A job without a key runs unsigned; a runtime that has a key refuses unsigned jobs.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from .errors import IntegrityError

SIGNING_KEY_ENV = "LAMBDAMAP_SIGNING_KEY"
TAG_BYTES = 32

_client_keys: dict[str, bytes] = {}  # job id -> key, for the executors of this process


def new_key() -> bytes:
    """A fresh random 256-bit key."""
    return secrets.token_bytes(32)


def runtime_key() -> bytes | None:
    """The key this process was given in its environment, if any."""
    value = os.environ.get(SIGNING_KEY_ENV)
    if not value:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise IntegrityError(f"{SIGNING_KEY_ENV} must be a hex string") from None


def register_job(job_id: str, key: bytes | None) -> None:
    """Remember the key of a job started by this process (a client)."""
    if key is not None:
        _client_keys[job_id] = key


def forget_job(job_id: str) -> None:
    _client_keys.pop(job_id, None)


def key_for(job_id: str) -> bytes | None:
    """The key for ``job_id``: the client's own, or else this runtime's."""
    return _client_keys.get(job_id) or runtime_key()


def _tag(key: bytes, label: str, payload: bytes) -> bytes:
    return hmac.new(key, label.encode() + b"\0" + payload, hashlib.sha256).digest()


def seal(key: bytes | None, label: str, payload: bytes) -> bytes:
    """``payload`` with its tag in front (unchanged when there is no key)."""
    if key is None:
        return payload
    return _tag(key, label, payload) + payload


def unseal(key: bytes | None, label: str, data: bytes) -> bytes:
    """The payload of a sealed blob; raise :class:`IntegrityError` if the tag does not match."""
    if key is None:
        return data
    tag, payload = data[:TAG_BYTES], data[TAG_BYTES:]
    if len(tag) < TAG_BYTES or not hmac.compare_digest(tag, _tag(key, label, payload)):
        raise IntegrityError(
            f"{label} failed authentication (HMAC-SHA256): it was altered, moved or written "
            "with another key; refusing to unpickle it")
    return payload
