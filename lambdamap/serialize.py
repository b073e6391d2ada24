"""How functions, arguments and results travel: cloudpickle, with errors that name the object.

Modules travel **by value** when the runtime cannot be expected to import them: every module the
user wrote (its file lies outside the standard library and site-packages, e.g. a script's helper
module or a notebook's ``__main__``) is registered with ``cloudpickle.register_pickle_by_value`` the
first time one of its functions is sent. Installed packages (numpy, scikit-learn, lambdamap itself)
travel by reference and must be installed in the runtime (they are in the Lambda layer).
Call :func:`ship_module` to force a module to travel by value, e.g. one installed in editable mode.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import sys
import sysconfig
import types
from typing import Any

import cloudpickle

from .errors import InvocationDeadline, SerializationError

# Packages the runtime always has; never shipped by value even when installed in editable mode.
_RUNTIME_PACKAGES = {"lambdamap", "runtime_layer", "dml", "forest"}
_INSTALLED_ROOTS = tuple(
    os.path.realpath(p) for p in {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    | {sys.prefix, sys.base_prefix, sys.exec_prefix}
)
_checked_modules: dict[str, bool] = {}


def ship_module(module: types.ModuleType) -> None:
    """Send ``module``'s functions and classes by value, so the runtime need not import it."""
    try:
        cloudpickle.register_pickle_by_value(module)
    except ValueError:
        pass  # already registered
    _checked_modules[module.__name__] = True


def _is_user_module(name: str) -> bool:
    """A module the runtime cannot be expected to have: its file lies outside every install root."""
    if name == "__main__" or name.partition(".")[0] in _RUNTIME_PACKAGES:
        return False  # cloudpickle already sends __main__ by value
    path = getattr(sys.modules.get(name), "__file__", None)
    return bool(path) and not os.path.realpath(path).startswith(_INSTALLED_ROOTS)


def _module_names_in(namespace: dict) -> set[str]:
    names = set()
    for value in list(namespace.values()):
        if isinstance(value, types.ModuleType):
            names.add(value.__name__)
        else:
            module = getattr(value, "__module__", None)
            if isinstance(module, str):
                names.add(module)
    return names


def _ship_user_modules_of(obj: Any) -> None:
    """Register by value the user modules that ``obj`` comes from, and those they use in turn."""
    todo = {getattr(obj, "__module__", None)} | _module_names_in(getattr(obj, "__globals__", {}))
    while todo:
        name = todo.pop()
        if not isinstance(name, str) or name in _checked_modules:
            continue
        _checked_modules[name] = _is_user_module(name)
        if _checked_modules[name]:
            ship_module(sys.modules[name])
            todo |= _module_names_in(vars(sys.modules[name]))


def dumps(obj: Any, what: str) -> bytes:
    """cloudpickle ``obj``; on failure raise :class:`SerializationError` naming ``what``."""
    if callable(obj):
        _ship_user_modules_of(obj)
    try:
        return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except InvocationDeadline:
        raise
    except BaseException as exc:  # noqa: BLE001 - a user's __reduce__ may raise even SystemExit
        text = repr(obj)
        if len(text) > 200:
            text = text[:200] + "..."
        raise SerializationError(
            f"cannot serialize {what} {text}: {type(exc).__name__}: {exc}. Everything sent to a "
            "worker must be picklable by cloudpickle: create locks, open files, connections and "
            "clients inside the function instead of capturing them") from exc


def loads(data: bytes) -> Any:
    return pickle.loads(data)


def digest(data: bytes) -> str:
    """Content address of a blob (sha256 hex)."""
    return hashlib.sha256(data).hexdigest()
