"""What travels and what comes back: user code by value, isolated inputs, logs, memory, errors.

``user_module`` and ``user_module_with_lock`` (next to this file) are importable here but not by
the local workers, which see only what a Lambda container would.
"""
from __future__ import annotations

import concurrent.futures
import functools
import gc
import importlib.util
import io
import json
import linecache
import logging
import multiprocessing
import operator
import os
import re
import subprocess
import sys
import textwrap
import types
import weakref

import cloudpickle
import numpy as np
import pytest

import user_module
import user_module_with_lock
from lambdamap import Executor, ObjectRefError, SerializationError, objects, serialize, ship_module
from runtime_layer.handler import _LogCapture


@pytest.fixture(scope="module")
def ex():
    with Executor(workers=1) as executor:
        yield executor


@pytest.fixture
def fresh_decisions(monkeypatch):
    """Which modules travel by value is decided once per process: start from none decided."""
    monkeypatch.setattr(serialize, "_decided", {})
    monkeypatch.setattr(serialize, "_chosen", {})
    registered = cloudpickle.list_registry_pickle_by_value()
    for name in registered:
        cloudpickle.unregister_pickle_by_value(types.ModuleType(name))
    yield
    for name in cloudpickle.list_registry_pickle_by_value():
        cloudpickle.unregister_pickle_by_value(types.ModuleType(name))
    for name in registered:
        if name in sys.modules:
            cloudpickle.register_pickle_by_value(sys.modules[name])


# -- user code travels, wherever it sits ------------------------------------------------------


CASES = {
    "partial": (lambda: functools.partial(user_module.add, 5), (1,), 6),
    "bound method": (lambda: user_module.Scaler(3).scale, (2,), 6),
    "bound classmethod": (lambda: user_module.Scaler.doubling, (4,), 8),
    "argument's class": (lambda: operator.methodcaller("scale", 5), (user_module.Scaler(2),), 10),
    "nested argument": (lambda: len, ([("x", user_module.Scaler(7)), user_module.Scaler(8)],), 2),
}


@pytest.mark.parametrize("case", CASES)
def test_user_code_travels_by_value_wherever_it_sits(ex, fresh_decisions, case):
    make_fn, args, expected = CASES[case]
    assert ex.submit(make_fn(), *args).result(timeout=60) == expected


def test_user_class_instances_come_back_as_the_users_class(ex, fresh_decisions):
    scaler = ex.submit(lambda factor: user_module.Scaler(factor), 4).result(timeout=60)
    assert type(scaler) is user_module.Scaler and scaler.scale(2) == 8


def test_dml_with_a_learner_class_from_a_user_module(ex, fresh_decisions):
    import doubleml
    from doubleml.plm.datasets import make_plr_CCDDHNR2018

    from dml import DoubleMLPLRServerless

    data = make_plr_CCDDHNR2018(n_obs=60, dim_x=3)
    np.random.seed(3)  # the same sample splits for both
    model = DoubleMLPLRServerless(data, user_module.MeanLearner(), user_module.MeanLearner(),
                                  n_folds=2, executor=ex).fit()
    np.random.seed(3)
    local = doubleml.DoubleMLPLR(data, user_module.MeanLearner(), user_module.MeanLearner(), n_folds=2).fit()
    assert np.array_equal(model.coef, local.coef)


def test_unpicklable_module_global_names_the_switch_and_by_reference_names_the_module(ex, fresh_decisions):
    with pytest.raises(SerializationError, match=r"ship_module\(user_module_with_lock, by_value=False\)"):
        ex.submit(user_module_with_lock.locked_add, 1, 2)
    ship_module(user_module_with_lock, by_value=False)
    blob = serialize.dumps(user_module_with_lock.locked_add, "function")
    assert serialize.loads(blob) is user_module_with_lock.locked_add  # by name: importable here
    # ...but not in the worker, which says which module it misses and how to ship it
    with pytest.raises(ModuleNotFoundError, match=r"'user_module_with_lock'.*ship_module\(user_module_with_lock\)"):
        ex.submit(user_module_with_lock.locked_add, 1, 2).result(timeout=60)
    ship_module(user_module_with_lock)  # back to by value: the same error as at first
    with pytest.raises(SerializationError, match="cannot pickle '_thread.lock'"):
        ex.submit(user_module_with_lock.locked_add, 1, 2)


def test_local_workers_see_neither_the_clients_working_directory_nor_its_path(tmp_path, monkeypatch):
    cwd, extra = tmp_path / "cwd", tmp_path / "pythonpath"
    for folder, module in ((cwd, "mod_in_client_cwd"), (extra, "mod_on_client_pythonpath")):
        folder.mkdir()
        (folder / f"{module}.py").write_text("VALUE = 1\n")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("PYTHONPATH", str(extra))
    monkeypatch.syspath_prepend(str(extra))

    def look():
        find = importlib.util.find_spec
        return (os.getcwd(), [name for name in ("mod_in_client_cwd", "mod_on_client_pythonpath",
                                                "lambdamap", "runtime_layer", "dml", "forest") if find(name)])

    with Executor(workers=1) as executor:
        worker_cwd, importable = executor.submit(look).result(timeout=60)
    assert worker_cwd != str(cwd)
    assert not os.path.exists(worker_cwd)  # a private folder, gone with the workers
    assert importable == ["lambdamap", "runtime_layer", "dml", "forest"]


# -- isolated inputs --------------------------------------------------------------------------


def scale_in_place(X, i):
    X *= i
    return int(X.sum())


def scale_a_copy(X, i):
    X = X.copy()
    X *= i
    return int(X.sum())


def append_to(d, i):
    d["rows"].append(i)
    return len(d["rows"])


def test_no_call_changes_what_another_call_receives(ex):
    X_ref = ex.put(np.ones(9))
    futures = ex.map_futures(scale_in_place, [X_ref] * 6, range(6))
    for future in futures:
        with pytest.raises(ValueError, match="read-only"):
            future.result(timeout=60)
    assert list(ex.map(scale_a_copy, [X_ref] * 6, range(6))) == [0, 9, 18, 27, 36, 45]
    d_ref = ex.put({"rows": [1, 2, 3]})
    assert list(ex.map(append_to, [d_ref] * 4, range(4))) == [4, 4, 4, 4]
    assert ex.submit(lambda d: [d["x"].get()["rows"], d["x"].get() is d["x"].get()],
                     {"x": d_ref}).result(timeout=60) == [[1, 2, 3], False]


def test_put_objects_are_not_kept_by_the_client(tmp_path):
    with Executor(workers=1, storage=str(tmp_path)) as executor:
        X = np.ones(1000)
        alive = weakref.ref(X)
        ref = executor.put(X)
        del X
        gc.collect()
        assert alive() is None  # the store has it; the client does not keep the caller's object
        assert ref.get().sum() == 1000  # read from the store (and cached) ...
        assert any(key.startswith(f"jobs/{executor.job_id}/") for key in objects._cache)
    assert not any(key.startswith(f"jobs/{executor.job_id}/") for key in objects._cache)  # ... until shutdown


# -- errors say what happened -------------------------------------------------------------------


def test_a_reference_of_another_executor_says_so(ex):
    with Executor(workers=1) as other:
        foreign = other.put([1, 2, 3])
        with pytest.raises(ObjectRefError, match=f"belongs to job {other.job_id}.*job {ex.job_id}.*put"):
            ex.submit(sum, foreign).result(timeout=60)


def test_a_reference_used_after_its_executor_shut_down_says_so(tmp_path):
    for storage in (str(tmp_path), None):  # a folder of the caller's, the executor's own temporary one
        with Executor(workers=1, storage=storage) as executor:
            ref = executor.put([1, 2, 3])
            root = executor.storage.root
        with pytest.raises(ObjectRefError, match=f"job {executor.job_id} was cleaned up.*shuts down"):
            ref.get()
        if storage is None:
            assert not os.path.exists(root)  # asking did not create the folder again


def _user_frames(text: str, filename: str) -> list[tuple[str, ...]]:
    """(line, function, source line) of each frame of ``filename`` in a formatted traceback."""
    frame = re.compile(r'  File "(.+?)", line (\d+), in (\S+)\n    (.+)\n')
    return [m.groups()[1:] for m in frame.finditer(text) if m.group(1) == filename]


def test_remote_traceback_shows_the_users_files_and_lines_like_process_pool(ex, tmp_path, monkeypatch):
    path = tmp_path / "traceback_user_mod.py"
    path.write_text(textwrap.dedent("""\
        def check(value):
            if value > 2:
                raise ValueError(f"too big: {value}")
            return value


        def run(values):
            return [check(v) for v in values]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import traceback_user_mod

    try:
        spawn = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
            with pytest.raises(ValueError) as local:
                pool.submit(traceback_user_mod.run, [1, 5]).result(timeout=60)
        expected = _user_frames(local.value.__cause__.tb, str(path))
        assert {"run", "check"} <= {function for _, function, _ in expected}

        # The runtime cannot read the client's file (here: gone), the lines travel with the code.
        linecache.getlines(str(path))
        path.unlink()
        with pytest.raises(ValueError, match="too big: 5") as remote:
            ex.submit(traceback_user_mod.run, [1, 5]).result(timeout=60)
        assert _user_frames(remote.value.__cause__.tb, str(path)) == expected
        assert "<dynamic-code>" not in remote.value.__cause__.tb
    finally:
        sys.modules.pop("traceback_user_mod", None)


# -- what a call leaves behind: logs and memory -----------------------------------------------------


def test_logs_hold_the_calls_info_records(ex, fresh_decisions):
    future = ex.submit(user_module.log_some, 5)
    assert future.result(timeout=60) == logging.INFO  # the root level while the call ran
    assert "INFO:user.module:an info record 5" in future.logs
    assert "WARNING:user.module:a warning record 5" in future.logs
    assert "debug" not in future.logs


def test_log_capture_keeps_other_handlers_as_they_were():
    root = logging.getLogger()
    seen = io.StringIO()
    other = logging.StreamHandler(seen)
    saved = root.level
    root.setLevel(logging.WARNING)
    root.addHandler(other)
    try:
        captured = io.StringIO()
        with _LogCapture().capturing(captured):
            logging.getLogger("user.module").info("info only for the call")
            logging.getLogger("user.module").warning("a warning for both")
        assert "info only for the call" in captured.getvalue()
        assert seen.getvalue() == "a warning for both\n"
        assert root.level == logging.WARNING and other.filters == []
    finally:
        root.removeHandler(other)
        root.setLevel(saved)


def allocate(megabytes):
    block = b"x" * (megabytes * 2**20)  # written, so resident
    return len(block)


def test_peak_memory_is_the_calls_own():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        expected_scope = "call"
    except OSError:
        expected_scope = "process"
    with Executor(workers=1) as executor:
        big = executor.submit(allocate, 200)
        big.result(timeout=60)
        small = executor.submit(allocate, 1)
        small.result(timeout=60)
    assert big.status["peak_memory_scope"] == small.status["peak_memory_scope"] == expected_scope
    if expected_scope == "call":
        assert big.status["peak_memory_mb"] > small.status["peak_memory_mb"] + 150
    else:  # the worker's lifetime peak: the big call's allocation is in the small one's too
        assert small.status["peak_memory_mb"] >= big.status["peak_memory_mb"]



def test_a_worker_run_from_a_source_tree_imports_only_the_runtime_packages_from_it(tmp_path):
    """Without an install (``python -S``: no site-packages, no editable finder), the worker finds
    lambdamap, runtime_layer, dml and forest in the source tree, and nothing else there."""
    import sysconfig

    root = os.path.dirname(os.path.dirname(os.path.abspath(serialize.__file__)))
    probe = textwrap.dedent("""
        import importlib.util, json, sys
        from lambdamap.backends import local_worker
        local_worker._isolate_imports()
        print(json.dumps({name: getattr(importlib.util.find_spec(name), "origin", None)
                          for name in ("runtime_layer", "dml", "forest", "tests", "benchmarks")}))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, sysconfig.get_paths()["purelib"]]))
    out = subprocess.run([sys.executable, "-S", "-c", probe], cwd=root, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    origins = json.loads(out.stdout)
    assert all(origins[name].startswith(root) for name in ("runtime_layer", "dml", "forest"))
    assert origins["tests"] is None and origins["benchmarks"] is None
