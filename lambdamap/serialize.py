"""How functions, arguments and results travel: cloudpickle, with errors that name the object.

**What travels by value.** Every module the user wrote (its file lies outside the standard library
and site-packages, e.g. a script's helper module or a notebook's ``__main__``) travels by value,
so that the runtime need not have it. The decision is taken for every function, class and module
that the pickler meets, wherever it sits: the function itself, a ``functools.partial`` or bound
method around it, an argument's class, an object nested in a list. Installed packages (numpy,
scikit-learn, lambdamap itself) travel by reference and must be installed in the runtime (they are
in the Lambda layer). :func:`ship_module` overrides the decision for one module: by value (e.g. a
package installed in editable mode), or by reference (a module whose globals cannot be pickled,
installed in the runtime).

**Tracebacks.** Code sent by value keeps its file name and carries the source lines of its
functions, which the receiving process registers in :mod:`linecache`: a remote traceback shows
``File "/home/me/helpers.py", line 7, in fit`` and the line itself, as a local one would.
"""
from __future__ import annotations

import hashlib
import io
import linecache
import os
import pickle
import sys
import sysconfig
import types
from typing import Any, Callable

import cloudpickle

from .errors import InvocationDeadline, SerializationError

# Packages the runtime always has; never shipped by value even when installed in editable mode.
RUNTIME_PACKAGES = frozenset({"lambdamap", "runtime_layer", "dml", "forest"})
_INSTALLED_ROOTS = tuple(
    os.path.realpath(p) for p in {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    | {sys.prefix, sys.base_prefix, sys.exec_prefix}
)
# module name -> travels by value; the user's explicit choices (ship_module) are in _chosen
_decided: dict[str, bool] = {}
_chosen: dict[str, bool] = {}
# Files whose lines this process learnt from pickles (not from its own disk).
_received_sources: set[str] = set()


def ship_module(module: types.ModuleType | str, *, by_value: bool = True) -> None:
    """Choose how ``module`` (and its submodules) travels to the runtime.

    ``by_value=True`` sends its functions and classes with the pickle, so the runtime need not
    import it: what lambdamap does by itself for every module outside site-packages and the
    standard library; call it for a module that lambdamap takes for installed (e.g. an editable
    install). ``by_value=False`` sends them by name: the runtime imports the module, so it must be
    installed there. Use it for a module whose globals cannot be pickled (a module-level lock,
    connection or client that its functions use)::

        import lambdamap, mydb
        lambdamap.ship_module(mydb, by_value=False)   # mydb is installed in the Lambda layer
    """
    name = module if isinstance(module, str) else getattr(module, "__name__", None)
    if not isinstance(name, str):
        raise TypeError(f"ship_module takes a module or a module name, not {module!r}")
    if by_value and name not in sys.modules:
        raise ValueError(f"ship_module({name!r}): the module is not imported; import it first")
    _chosen[name] = by_value
    for known in [n for n in _decided if n == name or n.startswith(name + ".")]:
        del _decided[known]  # decided again, under the new choice, the next time it is met
    if by_value:
        _register(name)
    else:
        for registered in cloudpickle.list_registry_pickle_by_value():
            if registered == name or registered.startswith(name + "."):
                # cloudpickle keeps names; a stand-in module of that name unregisters it
                cloudpickle.unregister_pickle_by_value(types.ModuleType(registered))


def _register(name: str) -> None:
    if name not in cloudpickle.list_registry_pickle_by_value():
        cloudpickle.register_pickle_by_value(sys.modules[name])


def _choice(name: str) -> bool | None:
    """The user's explicit choice for ``name`` or its nearest parent package, if any."""
    while True:
        if name in _chosen:
            return _chosen[name]
        name, dot, _ = name.rpartition(".")
        if not dot:
            return None


def _is_user_module(name: str) -> bool:
    """A module the runtime cannot be expected to have: its file lies outside every install root."""
    if name == "__main__" or name.partition(".")[0] in RUNTIME_PACKAGES:
        return False  # cloudpickle already sends __main__ by value
    path = getattr(sys.modules.get(name), "__file__", None)
    return bool(path) and not os.path.realpath(path).startswith(_INSTALLED_ROOTS)


def _travels_by_value(name: str) -> bool:
    """Decide once per module; register it with cloudpickle when it travels by value."""
    decided = _decided.get(name)
    if decided is None:
        if name not in sys.modules:
            return False  # not a module here (cloudpickle then sends the object by value anyway)
        chosen = _choice(name)
        decided = _is_user_module(name) if chosen is None else chosen
        _decided[name] = decided
        if decided:
            _register(name)
    return decided


_CONTAINERS = frozenset({dict, list, tuple, set, frozenset, bytearray})


class _Pickler(cloudpickle.Pickler):
    """cloudpickle's pickler, which also decides for each module it meets how it travels.

    Every function, class and module passes through ``reducer_override`` before cloudpickle
    chooses between by-reference and by-value, wherever it sits in the object graph; that is where
    a user module is registered. Code objects of by-value functions keep their file name and
    carry their source lines (see :func:`_code_with_source`).
    """

    def __init__(self, file: io.BytesIO, buffer_callback: Callable | None = None, *,
                 ship_user_modules: bool = True):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL, buffer_callback=buffer_callback)
        self.ship_user_modules = ship_user_modules
        self.by_value: list[str] = []  # the user modules met, named when pickling fails
        self._copies: dict[int, types.CodeType] = {}  # code handed on to cloudpickle unchanged
        self._sources: dict[str, list[tuple[int, int]]] = {}  # line ranges already carried

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) in _CONTAINERS:
            return NotImplemented  # the bulk of most pickles: skip the checks below
        if isinstance(obj, (type, types.FunctionType)):
            self._meet(getattr(obj, "__module__", None))
        elif isinstance(obj, types.ModuleType):
            self._meet(obj.__name__)
        elif type(obj) is types.CodeType and id(obj) not in self._copies:
            return self._reduce_code(obj)
        return super().reducer_override(obj)

    def _meet(self, name: Any) -> None:
        if self.ship_user_modules and isinstance(name, str) and _travels_by_value(name) and name not in self.by_value:
            self.by_value.append(name)

    def _reduce_code(self, code: types.CodeType) -> tuple:
        # cloudpickle writes the copy with the file name "<dynamic-code>"; put the real one back
        # and send the lines of this code's source that no enclosing code has sent already.
        copy = code.replace()
        self._copies[id(copy)] = copy  # kept alive: the id must not be reused during this pickle
        first, last = code.co_firstlineno, _last_line(code)
        ranges = self._sources.setdefault(code.co_filename, [])
        lines: tuple[str, ...] = ()
        if not any(a <= first and last <= b for a, b in ranges):
            ranges.append((first, last))
            lines = tuple(linecache.getlines(code.co_filename)[first - 1:last])
        return _code_with_source, (copy, code.co_filename, first, lines)


def _last_line(code: types.CodeType) -> int:
    """The last source line of ``code`` and of the functions nested in it."""
    last = max((line for _, _, line in code.co_lines() if line is not None), default=code.co_firstlineno)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            last = max(last, _last_line(const))
    return last


def _code_with_source(code: types.CodeType, filename: str, first: int, lines: tuple[str, ...]):
    """Unpickling side: the code under its own file name, its source lines known to linecache.

    A file that exists here is left to linecache (the local backend's workers share the disk);
    other files get an entry with no modification time, which linecache never invalidates.
    """
    if lines and (filename in _received_sources or not os.path.exists(filename)):
        entry = linecache.cache.get(filename)
        known = list(entry[2]) if filename in _received_sources and entry and len(entry) == 4 else []
        end = first - 1 + len(lines)
        known.extend("\n" for _ in range(end - len(known)))
        known[first - 1:end] = lines
        linecache.cache[filename] = (sum(map(len, known)), None, known, filename)
        _received_sources.add(filename)
    return code.replace(co_filename=filename)


def _in_runtime() -> bool:
    """Whether this process is a runtime (a Lambda container or a local worker), not a client."""
    return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME") or os.environ.get(RUNTIME_PROCESS_ENV))


#: Set by the local backend in its workers' environment (Lambda sets AWS_LAMBDA_FUNCTION_NAME).
RUNTIME_PROCESS_ENV = "LAMBDAMAP_RUNTIME_PROCESS"


def dumps(obj: Any, what: str, buffer_callback: Callable | None = None, *,
          ship_user_modules: bool | None = None) -> bytes:
    """cloudpickle ``obj``; on failure raise :class:`SerializationError` naming ``what``.

    With ``buffer_callback``, large buffers (numpy arrays) are handed to it instead of being
    copied into the pickle (protocol 5 out-of-band data: pass them to ``pickle.loads(buffers=)``).
    ``ship_user_modules`` (default: True in a client, False in a runtime) registers user modules
    by value as they are met. A runtime sends nothing by value that the client lacks, and its
    installed packages may lie outside the install roots (a Lambda layer in ``/opt/python``):
    they must never travel by value.
    """
    if ship_user_modules is None:
        ship_user_modules = not _in_runtime()
    buffer = io.BytesIO()
    pickler = _Pickler(buffer, buffer_callback, ship_user_modules=ship_user_modules)
    try:
        pickler.dump(obj)
    except InvocationDeadline:
        raise
    except BaseException as exc:  # noqa: BLE001 - a user's __reduce__ may raise even SystemExit
        raise SerializationError(_failure_message(obj, what, exc, pickler.by_value)) from exc
    return buffer.getvalue()


def _failure_message(obj: Any, what: str, exc: BaseException, by_value: list[str]) -> str:
    text = repr(obj)
    if len(text) > 200:
        text = text[:200] + "..."
    message = (f"cannot serialize {what} {text}: {type(exc).__name__}: {exc}. Everything sent to a "
               "worker must be picklable by cloudpickle: create locks, open files, connections and "
               "clients inside the function instead of capturing them")
    if by_value:
        names = ", ".join(by_value)
        message += (f". Sent by value with their globals: {names}; a module whose globals cannot be "
                    f"pickled can travel by reference instead: lambdamap.ship_module({by_value[-1]}, "
                    "by_value=False), with the module installed in the runtime")
    return message


def loads(data: bytes) -> Any:
    """Unpickle ``data``; a missing module is reported with the way to ship it."""
    try:
        return pickle.loads(data)
    except ModuleNotFoundError as exc:
        name = exc.name or "?"
        raise ModuleNotFoundError(
            f"No module named {name!r} in {sys.executable}: the pickle refers to it by name, so "
            "this process must import it, and a runtime imports only what is installed in it. Call "
            f"lambdamap.ship_module({name.partition('.')[0]}) on the client to send it by value, or "
            "install it in the runtime (the Lambda layer or image) if it must travel by reference",
            name=name) from exc


def digest(data: bytes) -> str:
    """Content address of a blob (sha256 hex)."""
    return hashlib.sha256(data).hexdigest()
