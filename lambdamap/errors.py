"""Exceptions that lambdamap raises at the caller.

User exceptions are re-raised with their own type; these are for everything else.
"""
from __future__ import annotations

import concurrent.futures
import pickle


class LambdamapError(Exception):
    """Base class of every error lambdamap raises itself."""


class SerializationError(LambdamapError, pickle.PicklingError, TypeError):
    """A function, argument or result could not be pickled; the message names the object.

    Also a ``pickle.PicklingError``, as the stdlib's executors raise for the same mistake.
    """


class WorkerLostError(LambdamapError, concurrent.futures.BrokenExecutor):
    """The process or invocation running a call disappeared (killed, out of memory) too often.

    Also a ``concurrent.futures.BrokenExecutor``, the stdlib's error for a lost worker; unlike
    a broken stdlib pool, the executor goes on running the other calls.
    """


class CallTimeoutError(LambdamapError, TimeoutError):
    """A call ran past the function time-out and was stopped."""


class RuntimeMismatchError(LambdamapError):
    """Client and runtime disagree on the Python minor version or the wire-format version."""


class StorageError(LambdamapError):
    """The object store failed or is misconfigured (missing bucket, no credentials, ...)."""


class IntegrityError(LambdamapError):
    """A stored object failed authentication (HMAC) and was not unpickled."""


class ObjectRefError(LambdamapError, LookupError):
    """An :class:`~lambdamap.ObjectRef` used by another executor's calls or after its job ended."""


class PayloadTooLargeError(LambdamapError, ValueError):
    """An argument or result is larger than the configured limit."""


class RemoteError(LambdamapError):
    """Stands in for a remote exception that could not be pickled back.

    ``type_name`` is the original exception's qualified type name; the message and the
    remote traceback are kept.
    """

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message

    def __reduce__(self):
        return (type(self), (self.type_name, self.message))


class RemoteTraceback(Exception):
    """Carries the formatted remote traceback; set as ``__cause__`` of a re-raised exception."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class InvocationDeadline(BaseException):
    """Raised inside the runtime when an invocation reaches its time limit (never at the caller).

    A ``BaseException``, so that neither the user's ``except Exception`` nor lambdamap's own
    handling of a user object's failures can swallow it.
    """
