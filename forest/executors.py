"""Which executor runs the groves: the caller's, lambdamap's default, or an in-process one."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any


@contextmanager
def using_executor(executor: Any | None) -> Iterator[Any]:
    """Yield ``executor``; if None, a default ``lambdamap.Executor()`` shut down on exit."""
    if executor is not None:
        yield executor
        return
    # Imported here, not at module level: a fitted forest (and ``import forest``) needs no lambdamap.
    from lambdamap import Executor

    with Executor() as default:
        yield default


class InlineExecutor:
    """Runs every call in this process, one after another; ``put`` returns the object itself.

    Same ``map``/``submit``/``put`` surface as ``lambdamap.Executor`` but nothing is pickled and
    no worker starts, which makes it the executor for scikit-learn's ``check_estimator`` (hundreds
    of tiny fits) and for debugging. It proves nothing about pickling; the real-executor tests do.
    """

    def put(self, obj: Any) -> Any:
        return obj

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1, progress: bool = False) -> Iterator[Any]:
        return iter([fn(*args) for args in zip(*iterables)])

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # a Future carries the exception, as a pool's would
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass

    def __enter__(self) -> InlineExecutor:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()
