"""Writing a job into the store: the function once, arguments packed in batches, manifests.

A batch of ``chunksize`` calls becomes one invocation :class:`~lambdamap.wire.Event`; batches are
concatenated into argument blobs of about ``ARGS_BLOB_BYTES``, each with a manifest that lists its
events (so that ``Executor.attach`` can find every call again). Everything written is sealed with
the job's key (:mod:`lambdamap.signing`).
"""
from __future__ import annotations

import json
import threading
from typing import Any, Callable, Iterator

from . import serialize, signing, wire
from .errors import PayloadTooLargeError, SerializationError
from .objects import ObjectRef
from .storage import Storage

# Argument batches are uploaded in blobs of about this size; one blob serves many invocations.
ARGS_BLOB_BYTES = 8 * 2**20


class JobWriter:
    """Puts one job's function, arguments and objects in ``storage``; builds its events.

    ``options`` travel in every event (limits the runtime enforces); ``sender`` tells this client's
    invocation ids apart from another's (a client that attached to the job later).
    """

    def __init__(self, storage: Storage, job_id: str, key: bytes | None, *, options: dict,
                 sender: str, max_argument_bytes: int):
        self.storage, self.job_id, self.key = storage, job_id, key
        self.options, self.sender = options, sender
        self.max_argument_bytes = max_argument_bytes
        self.spec = storage.spec()
        self._uploaded: set[str] = set()
        self._lock = threading.Lock()
        self.next_blob = 0
        self._control_written = False

    def function(self, fn: Callable) -> str:
        """Upload ``fn`` once (content-addressed); return its key."""
        blob = serialize.dumps(fn, f"function {getattr(fn, '__qualname__', fn)!r}:")
        key = wire.fn_key(self.job_id, serialize.digest(blob))
        self._upload_once(key, blob)
        return key

    def put_object(self, obj: Any) -> ObjectRef:
        """Upload ``obj`` once (content-addressed); return its reference."""
        blob = serialize.dumps(obj, "object")
        key = wire.obj_key(self.job_id, serialize.digest(blob))
        self._upload_once(key, blob)
        return ObjectRef(key, self.spec, len(blob))

    def uploads(self) -> tuple[int, int]:
        """How many functions and objects this writer stored (for the cost estimate)."""
        keys = list(self._uploaded)  # one copy under the GIL: uploads may run meanwhile
        functions = sum("/fn/" in key for key in keys)
        return functions, len(keys) - functions

    def _upload_once(self, key: str, blob: bytes) -> None:
        if key not in self._uploaded:
            self.storage.put(key, signing.seal(self.key, key, blob))
            self._uploaded.add(key)

    def arguments(self, fn: Callable, calls: list[tuple[tuple, dict]], first: int) -> list[bytes]:
        """Pickle every call's arguments, before anything is invoked: a bad one fails early."""
        payloads = [_dump_arguments(fn, args, kwargs, first + i)
                    for i, (args, kwargs) in enumerate(calls)]
        for i, payload in enumerate(payloads):
            if len(payload) > self.max_argument_bytes:
                raise PayloadTooLargeError(
                    f"the arguments of call {first + i} pickle to {_mb(len(payload))}, above "
                    f"max_argument_bytes={_mb(self.max_argument_bytes)}: pass large data by "
                    "reference (ref = ex.put(data)) or raise the limit; nothing was submitted")
        return payloads

    def batches(self, fn_key: str, payloads: list[bytes], first: int,
                chunksize: int) -> Iterator[tuple[bytes, list[wire.Event]]]:
        """Pack the calls ``first, first+1, ...`` into argument blobs and their events.

        Yields ``(blob, events)`` as each blob fills up; :meth:`write` stores one.
        """
        blob, events, blob_no = bytearray(), [], None
        for start in range(0, len(payloads), chunksize):
            if blob_no is None:
                with self._lock:
                    blob_no, self.next_blob = self.next_blob, self.next_blob + 1
            ids = range(first + start, first + min(start + chunksize, len(payloads)))
            args = wire.args_key(self.job_id, blob_no)
            packed = wire.pack_batch([(cid, payloads[cid - first]) for cid in ids], self.key,
                                     wire.batch_label(args, len(blob)))
            events.append(wire.Event(
                storage=self.spec, job_id=self.job_id, fn=fn_key, args=args,
                range=(len(blob), len(blob) + len(packed)), calls=tuple(ids),
                invocation=wire.invocation_id(blob_no, len(events), 0, self.sender),
                options=self.options, signed=self.key is not None,
                manifest=wire.manifest_key(self.job_id, blob_no)))
            blob += packed
            if len(blob) >= ARGS_BLOB_BYTES:
                yield bytes(blob), events
                blob, events, blob_no = bytearray(), [], None
        if events:
            yield bytes(blob), events

    def write(self, blob: bytes, events: list[wire.Event]) -> None:
        """Store one argument blob, then its manifest (the events that read it).

        Before the job's first blob, an empty control record: running invocations read it now
        and then, and take its absence to mean the job was cleaned up.
        """
        if not self._control_written:
            self.write_control([])
            self._control_written = True
        self.storage.put(events[0].args, blob)
        manifest = events[0].manifest  # the blob's events all name the same manifest
        body = json.dumps([e.to_json() for e in events]).encode()
        self.storage.put(manifest, signing.seal(self.key, manifest, body))

    def read_manifests(self) -> list[wire.Event]:
        """Every event of the job, from its manifests (for ``Executor.attach``)."""
        keys = self.storage.list(f"{wire.job_prefix(self.job_id)}manifest/")
        events = [wire.Event.from_json(e) for key in keys
                  for e in json.loads(signing.unseal(self.key, key, self.storage.get(key)))]
        if keys:
            self.next_blob = int(keys[-1].rsplit("/", 1)[1]) + 1
            self._control_written = True
        return events

    def cancel_invocation(self, event: wire.Event) -> bool:
        """Stop ``event`` from ever running; False if it has already begun."""
        key = wire.start_key(self.job_id, event.invocation)
        return self.storage.put(key, signing.seal(self.key, key, wire.CANCELLED_MARK), if_absent=True)

    def write_control(self, cancelled: list[int] | str) -> None:
        """Tell running invocations which calls to skip (``"all"``: every call)."""
        key = wire.control_key(self.job_id)
        body = json.dumps({"cancelled": cancelled}).encode()
        self.storage.put(key, signing.seal(self.key, key, body))


def _dump_arguments(fn: Callable, args: tuple, kwargs: dict, call_id: int) -> bytes:
    try:
        return serialize.dumps((args, kwargs), "arguments")
    except SerializationError:
        pass
    # Slow path, only on failure: find the argument to name in the message.
    named = [(f"argument {i}", a) for i, a in enumerate(args)] + \
            [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in named:
        serialize.dumps(value, f"{label} of call {call_id} to {getattr(fn, '__qualname__', fn)}:")
    raise SerializationError(f"cannot serialize the arguments of call {call_id}")


def _mb(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"
