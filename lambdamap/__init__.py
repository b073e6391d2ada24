"""lambdamap: a serverless ``map`` for Python.

``Executor().map(fn, items)`` runs each call as an invocation of one universal handler: on AWS
Lambda with S3 as the store, or on local worker processes with a folder as the store (the
embedded default, no account needed).
"""
from .errors import (CallTimeoutError, IntegrityError, LambdamapError, ObjectRefError,
                     PayloadTooLargeError, RemoteError, RuntimeMismatchError, SerializationError,
                     StorageError, WorkerLostError)
from .executor import Executor
from .futures import CallFuture, collect_results
from .objects import ObjectRef
from .serialize import ship_module

__version__ = "0.1.0"

__all__ = ["Executor", "CallFuture", "collect_results", "ObjectRef", "ship_module", "LambdamapError",
           "SerializationError", "WorkerLostError", "CallTimeoutError", "RuntimeMismatchError",
           "StorageError", "PayloadTooLargeError", "RemoteError", "IntegrityError", "ObjectRefError",
           "__version__"]
