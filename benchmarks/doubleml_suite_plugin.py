"""pytest plugin: doubleml's own tests with dml's serverless classes in place of doubleml's models.

Loaded by ``benchmarks/doubleml_suite.py`` (``pytest -p doubleml_suite_plugin``) before doubleml's
test modules are imported. For every doubleml model that ``dml`` supports, the name is rebound in
``doubleml``, its subpackage (``doubleml.plm``...) and its defining module to a subclass of the
serverless class that is *named like doubleml's class* (error messages and ``__str__`` headers
that print the class name stay doubleml's) and defaults ``executor=`` to one shared executor.

Environment:

* ``DML_SUITE_EXECUTOR``: ``lambdamap`` (default: ``lambdamap.Executor(workers=DML_SUITE_WORKERS)``,
  local worker processes, the user's path) or ``threads`` (a ``ThreadPoolExecutor``: no pickling,
  faster, same dml code).
* ``DML_SUITE_WORKERS``: worker count (default 2).
* ``DML_SUITE_GRANULARITY``: passed as ``granularity=`` (default: dml's default, ``"auto"``).
* ``DML_SUITE_SEED_LEARNERS``: ``1`` (default) makes every scikit-learn estimator's default
  ``random_state`` 0 instead of None, so that the learners doubleml's tests build without a seed are
  seeded — the same way for doubleml's local reference fits and for the remote ones, and invisibly
  (``repr`` omits defaults, so messages that print a learner are unchanged). ``0`` leaves them.
"""
from __future__ import annotations

import atexit
import concurrent.futures
import importlib
import os

_EXECUTOR = None


def shared_executor():
    """The session's executor, started on first use and shut down at exit."""
    global _EXECUTOR
    if _EXECUTOR is None:
        workers = int(os.environ.get("DML_SUITE_WORKERS", "2"))
        if os.environ.get("DML_SUITE_EXECUTOR", "lambdamap") == "threads":
            _EXECUTOR = concurrent.futures.ThreadPoolExecutor(workers)
        else:
            from lambdamap import Executor
            _EXECUTOR = Executor(workers=workers)
        atexit.register(_EXECUTOR.shutdown)
    return _EXECUTOR


def _swapped(serverless: type, doubleml_cls: type) -> type:
    """A subclass of ``serverless`` named like ``doubleml_cls``, with the shared executor as default."""
    granularity = os.environ.get("DML_SUITE_GRANULARITY")

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("executor", shared_executor())
        if granularity:
            kwargs.setdefault("granularity", granularity)
        serverless.__init__(self, *args, **kwargs)

    cls = type(doubleml_cls.__name__, (serverless,), {"__init__": __init__, "__doc__": serverless.__doc__})
    cls.__qualname__ = doubleml_cls.__qualname__
    return cls


def swap_classes() -> dict[str, type]:
    """Rebind doubleml's names of every supported model; returns {doubleml name: swapped class}."""
    import dml

    swapped = {}
    for serverless in list(dml.SUPPORTED.values()):
        base = next(c for c in serverless.__mro__ if c.__module__.startswith("doubleml."))
        cls = _swapped(serverless, base)
        swapped[base.__name__] = cls
        subpackage = base.__module__.rsplit(".", 1)[0]
        for module_name in {"doubleml", subpackage, base.__module__}:
            module = importlib.import_module(module_name)
            if getattr(module, base.__name__, None) is base:
                setattr(module, base.__name__, cls)
    return swapped


def seed_learners(seed: int = 0) -> list[str]:
    """Make ``seed`` the default ``random_state`` of every scikit-learn estimator whose default is None."""
    from sklearn.utils import all_estimators

    seeded = []
    for name, cls in all_estimators():
        defaults = getattr(cls.__init__, "__kwdefaults__", None) or {}
        if "random_state" in defaults and defaults["random_state"] is None:
            defaults["random_state"] = seed  # the function's own dict: sklearn reads defaults from the signature
            seeded.append(name)
    return seeded


def pytest_configure(config):
    if os.environ.get("DML_SUITE_SEED_LEARNERS", "1") == "1":
        seed_learners()
    swapped = swap_classes()
    config._dml_swapped = swapped


def pytest_report_header(config):
    import dml

    names = ", ".join(sorted(getattr(config, "_dml_swapped", {})))
    return [f"dml serverless classes swapped in ({dml.__file__}): {names}",
            f"executor: {os.environ.get('DML_SUITE_EXECUTOR', 'lambdamap')}, "
            f"seeded learners: {os.environ.get('DML_SUITE_SEED_LEARNERS', '1')}"]
