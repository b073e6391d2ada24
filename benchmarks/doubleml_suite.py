"""doubleml's own shipped tests, run with dml's serverless classes swapped in for doubleml's models.

    .venv/bin/python benchmarks/doubleml_suite.py [--label after] [--executor lambdamap|threads]
                                                  [--dml-path DIR] [--classes ...] [-k EXPR] [--quick]

doubleml ships its test suite inside the package (``doubleml/**/tests/test_*.py``). This script
picks the test files that mention a model the swapped-in ``dml`` supports, runs them with pytest
and ``benchmarks/doubleml_suite_plugin.py`` (which rebinds ``doubleml.DoubleMLPLR`` etc. to the
serverless classes, all sharing one executor, and by default makes scikit-learn's default
``random_state`` 0 so that doubleml's unseeded test learners are seeded alike locally and remotely),
and records passes and failures — grouped by the
exception that ended each failing test — under ``--label`` in
``benchmarks/results/doubleml_suite.json``.

``--dml-path`` puts another source tree first on the path (e.g. the code before a change:
``git archive <commit> | tar -x -C /tmp/dml_before`` and ``--dml-path /tmp/dml_before``). Export
the whole tree, not only ``dml/``: local workers import ``dml.tasks`` from the tree that holds the
``lambdamap`` the client imported.
``--classes`` selects the files by other class names than the swapped-in ``dml`` supports (to
compare two versions on the same files). The run takes long (hours on 2 busy cores with the
lambdamap executor): it is a benchmark, not part of ``make test``.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "doubleml_suite.json"


def doubleml_dir() -> Path:
    import doubleml

    return Path(doubleml.__file__).parent


def supported_classes(dml_path: str | None) -> list[str]:
    """The doubleml class names that the dml on ``dml_path`` (or this checkout's) swaps in."""
    code = ("import json, dml; print(json.dumps(sorted(next(c for c in cls.__mro__ "
            "if c.__module__.startswith('doubleml.')).__name__ for cls in dml.SUPPORTED.values())))")
    out = subprocess.run([sys.executable, "-c", code], env=_env(dml_path), check=True,  # cwd: not this checkout
                         capture_output=True, text=True, cwd=tempfile.gettempdir()).stdout
    return json.loads(out.strip().splitlines()[-1])


def select_files(classes: list[str]) -> list[Path]:
    """doubleml's test files that mention one of ``classes`` as a whole word."""
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, classes)) + r")\b")
    files = sorted(doubleml_dir().rglob("test_*.py"))
    return [f for f in files if pattern.search(f.read_text())]


def _env(dml_path: str | None, executor: str = "lambdamap", seeded: bool = True) -> dict:
    env = dict(os.environ)
    path = [str(ROOT / "benchmarks"), str(ROOT)]
    if dml_path:
        path.insert(0, dml_path)
    env["PYTHONPATH"] = os.pathsep.join(path + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["DML_SUITE_EXECUTOR"] = executor
    env["DML_SUITE_SEED_LEARNERS"] = "1" if seeded else "0"
    return env


def classify(message: str) -> str:
    """A failure's category: its exception type and the message's first line, with numbers elided."""
    first = (message or "").strip().splitlines()[0] if message else "(no message)"
    first = re.sub(r"0x[0-9a-f]+", "0x…", first)
    first = re.sub(r"\d+(\.\d+)?(e-?\d+)?", "N", first)
    return first[:160]


def run(files: list[Path], dml_path: str | None, executor: str, k: str | None, timeout: int, seeded: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "doubleml_suite_plugin", "-p", "no:cacheprovider",
               "-c", os.devnull, "--rootdir", tmp, "-o", "junit_family=xunit1", f"--junitxml={xml}", f"--timeout={timeout}",
               "-W", "ignore::DeprecationWarning", "-W", "ignore::FutureWarning",
               "--continue-on-collection-errors"]
        if k:
            cmd += ["-k", k]
        cmd += [str(f) for f in files]
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=_env(dml_path, executor, seeded), cwd=tmp, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if not xml.exists():
            raise RuntimeError(f"pytest wrote no report (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        tree = ET.parse(xml)
    counts = collections.Counter()
    categories = collections.Counter()
    by_file = collections.defaultdict(collections.Counter)
    examples = {}
    collection_errors = []
    for case in tree.iter("testcase"):
        file = Path(case.get("file") or "?").name
        if not case.get("name"):  # a file that could not be imported (a missing optional package, network)
            collection_errors.append(f"{case.get('classname')}: {classify(next(iter(case)).get('message', ''))}")
            continue
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                category = classify(child.get("message", ""))
                categories[category] += 1
                examples.setdefault(category, f"{file}::{case.get('name')}")
            elif child.tag == "skipped":
                outcome = "skipped"
        counts[outcome] += 1
        by_file[file][outcome] += 1
    return {
        "tests": sum(counts.values()), "passed": counts["passed"], "failed": counts["failed"],
        "errors": counts["error"], "skipped": counts["skipped"], "seconds": round(seconds, 1),
        "pytest_exit": proc.returncode, "collection_errors": collection_errors,
        "failure_categories": [{"count": n, "category": c, "example": examples[c]} for c, n in categories.most_common()],
        "by_file": {f: dict(c) for f, c in sorted(by_file.items())},
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="after", help="the key this run is stored under in the JSON")
    parser.add_argument("--executor", choices=("lambdamap", "threads"), default="lambdamap")
    parser.add_argument("--dml-path", help="source tree (with dml and lambdamap) to test (default: this checkout)")
    parser.add_argument("--classes", help="comma-separated doubleml class names that select the test files")
    parser.add_argument("-k", help="pytest -k expression")
    parser.add_argument("--timeout", type=int, default=600, help="per-test timeout (s)")
    parser.add_argument("--unseeded", action="store_true",
                        help="leave doubleml's unseeded learners unseeded (default: default random_state 0)")
    parser.add_argument("--quick", action="store_true", help="only test_plr.py-like files (smoke test)")
    args = parser.parse_args(argv)
    import doubleml

    swapped = supported_classes(args.dml_path)
    classes = args.classes.split(",") if args.classes else swapped
    files = select_files(classes)
    if args.quick:
        files = [f for f in files if f.name in ("test_plr.py", "test_plr_external_predictions.py")]
    print(f"{len(files)} test files of doubleml {doubleml.__version__} mention {', '.join(classes)}", flush=True)
    result = run(files, args.dml_path, args.executor, args.k, args.timeout, not args.unseeded)
    result.update({
        "label": args.label, "swapped_classes": swapped, "selected_by": classes, "files": len(files),
        "executor": args.executor, "seeded_learners": not args.unseeded, "dml_path": args.dml_path or str(ROOT), "k": args.k,
        "doubleml": doubleml.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M"),
    })
    if not args.quick:
        recorded = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        recorded[args.label] = result
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(recorded, indent=1) + "\n")
    print(f"{result['tests']} tests: {result['passed']} passed, {result['failed']} failed, "
          f"{result['errors']} errors, {result['skipped']} skipped in {result['seconds']:.0f} s; "
          f"{len(result['collection_errors'])} files not collected: {result['collection_errors']}")
    for cat in result["failure_categories"][:25]:
        print(f"{cat['count']:6d}  {cat['category']}   (e.g. {cat['example']})")
    return result


if __name__ == "__main__":
    main()
