"""Build the Lambda layer that every invocation runs: this project's packages plus their requirements.

The layer is a zip whose ``python/`` folder Lambda puts on ``sys.path`` (``/opt/python``). It holds

* this project's own packages (``lambdamap``, ``runtime_layer``, ``dml``, ``forest``), copied from
  the source tree, so the build needs neither a wheel of the project nor the network for them;
* the third-party requirements, installed by pip *for Lambda's platform*, not this machine's::

      pip install --platform manylinux2014_x86_64 --only-binary=:all: --python-version 3.11 \\
          --implementation cp --target python/ cloudpickle numpy pandas ...

  (``manylinux2014_aarch64`` for ``arm64``; ``manylinux_2_28`` too for Python 3.12+).
  ``pip_args`` may rewrite that command, e.g. to install from a local wheelhouse with
  ``--no-index --find-links`` (the tests do, to stay offline).

Then it

1. strips what no import needs (tests, caches, stubs, sources of compiled code, and packages the
   Lambda Python runtime already has, such as boto3);
2. imports every requirement from the stripped tree in an isolated interpreter, when it can
   (same Python version and machine), so that stripping cannot silently break an import;
3. computes a content hash: the layer's identity (``lambdamap deploy`` publishes a new layer
   version only when it changes);
4. byte-compiles with hash-based ``.pyc`` files (``/opt`` is read-only, so Lambda could not
   cache them at cold start), unless that pushes the layer over Lambda's limit;
5. zips deterministically.

``python -m runtime_layer.build --out build/layer [--full]`` builds and prints the size.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

#: The project's packages that the runtime needs (copied from the source tree).
PROJECT_PACKAGES = ("lambdamap", "runtime_layer", "dml", "forest")
#: Parts of them that only the client uses: the local Lambda emulator.
PROJECT_EXCLUDES = {"lambdamap": ("emulator",)}
#: Third-party requirements of the handler and of ``forest`` (scikit-learn); they fit a layer.
#: python-dateutil is held below 3 because the Lambda runtime's botocore requires it and the
#: layer comes first on ``sys.path``.
CORE_REQUIREMENTS = ("cloudpickle>=3.0", "numpy", "pandas", "scikit-learn", "tenacity>=8.2",
                     "tqdm", "python-dateutil>=2.8.2,<3")
#: Everything, including doubleml for ``dml``: doubleml imports statsmodels, matplotlib, plotly,
#: seaborn and optuna, and the whole does not fit a layer (docs/aws.md): use the container image.
FULL_REQUIREMENTS = CORE_REQUIREMENTS + ("doubleml",)
DEFAULT_REQUIREMENTS = CORE_REQUIREMENTS
#: Top-level names removed after pip: the Lambda Python runtime ships boto3 and its dependencies,
#: and ``mypy`` (with ``mypyc``) is a declared dependency of doubleml that nothing imports at run
#: time; it is the largest single package of the tree.
EXCLUDED_TOP_LEVEL = ("boto3", "botocore", "s3transfer", "jmespath", "mypy", "mypyc")
#: Lambda's limit for the unzipped function code plus all its layers.
LAMBDA_UNZIPPED_LIMIT_BYTES = 250 * 2**20
#: Lambda's limit for a zip uploaded inline (larger ones go through S3).
LAMBDA_INLINE_ZIP_LIMIT_BYTES = 50 * 2**20

_STRIP_DIRS = {"__pycache__", "tests"}
_STRIP_SUFFIXES = (".pyc", ".pyi", ".pyx", ".pxd", ".pxi", ".c", ".cpp")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # a fixed timestamp: the same tree gives the same zip bytes

_MACHINE = {"x86_64": "x86_64", "arm64": "aarch64"}  # Lambda's names -> the wheels' platform tags
_IMPORT_NAMES = {"scikit-learn": "sklearn", "python-dateutil": "dateutil"}


@dataclass
class LayerBuild:
    """What :func:`build_layer` made."""

    folder: Path          # holds python/, i.e. the layer unpacked
    zip_path: Path
    content_hash: str     # sha256 over the stripped tree (paths and bytes, before byte-compiling)
    python_version: str
    architecture: str
    unzipped_bytes: int
    zipped_bytes: int

    @property
    def fits(self) -> bool:
        """Whether the layer leaves room in Lambda's 250 MB (unzipped) for function and layers."""
        return self.unzipped_bytes <= LAMBDA_UNZIPPED_LIMIT_BYTES

    def summary(self) -> str:
        return (f"layer {self.zip_path}: {self.unzipped_bytes / 2**20:.1f} MB unzipped "
                f"(limit {LAMBDA_UNZIPPED_LIMIT_BYTES / 2**20:.0f} MB), "
                f"{self.zipped_bytes / 2**20:.1f} MB zipped, sha256 {self.content_hash[:16]}…")


def project_root() -> Path:
    """The source tree that holds :data:`PROJECT_PACKAGES` (the parent of this file's folder)."""
    return Path(__file__).resolve().parent.parent


def pip_command(target: Path, requirements: Sequence[str], python_version: str,
                architecture: str) -> list[str]:
    """The pip command that installs ``requirements`` for Lambda's platform into ``target``."""
    if architecture not in _MACHINE:
        raise ValueError(f"unknown architecture {architecture!r}: use one of {sorted(_MACHINE)}")
    platforms = ["--platform", f"manylinux2014_{_MACHINE[architecture]}"]
    if tuple(map(int, python_version.split("."))) >= (3, 12):
        # python3.12+ runtimes run on Amazon Linux 2023 (glibc 2.34); 3.11 on Amazon Linux 2 (2.26).
        platforms += ["--platform", f"manylinux_2_28_{_MACHINE[architecture]}"]
    return [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
            *platforms, "--only-binary=:all:",
            "--python-version", python_version, "--implementation", "cp",
            "--no-compile", "--target", str(target), *requirements]


def build_layer(out_dir: str | os.PathLike, *, requirements: Sequence[str] = DEFAULT_REQUIREMENTS,
                python_version: str | None = None, architecture: str = "x86_64",
                pip_args: Callable[[list[str]], list[str]] | None = None,
                source: str | os.PathLike | None = None) -> LayerBuild:
    """Build the layer into ``out_dir`` (``python/`` and ``layer.zip``); return what was made.

    Args:
        requirements: third-party requirements for pip; empty skips pip (project packages only).
        python_version: the Lambda runtime's ``X.Y``; default this interpreter's (the client's).
        architecture: ``x86_64`` or ``arm64``.
        pip_args: receives the pip command (a list) and returns the one to run.
        source: the source tree with the project's packages (default: this one).
    """
    python_version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    out = Path(out_dir).resolve()
    site = out / "python"
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(parents=True)

    if requirements:
        cmd = pip_command(site, requirements, python_version, architecture)
        cmd = pip_args(cmd) if pip_args else cmd
        subprocess.run(cmd, check=True)
    root = Path(source) if source else project_root()
    for package in PROJECT_PACKAGES:
        if (root / package).is_dir():
            shutil.copytree(root / package, site / package, ignore=shutil.ignore_patterns(
                "__pycache__", "*.pyc", "tests", *PROJECT_EXCLUDES.get(package, ())))

    strip(site)
    content_hash = tree_hash(site)
    same_python = python_version == f"{sys.version_info.major}.{sys.version_info.minor}"
    if same_python and _MACHINE[architecture] == platform.machine():
        # What was stripped must not be missed: import it all, as Lambda would.
        check_imports(site, ["runtime_layer.handler", *import_names(requirements)])
    if same_python:  # .pyc files are only valid for the Python that wrote them
        byte_compile(site)
        if tree_size(site) > LAMBDA_UNZIPPED_LIMIT_BYTES:
            remove_bytecode(site)  # they save seconds per cold start, but fitting comes first
    zip_path = out / "layer.zip"
    write_zip(out, ["python"], zip_path)
    return LayerBuild(folder=out, zip_path=zip_path, content_hash=content_hash,
                      python_version=python_version, architecture=architecture,
                      unzipped_bytes=tree_size(site), zipped_bytes=zip_path.stat().st_size)


def byte_compile(site: Path) -> None:
    """Hash-based ``.pyc`` files: no writable cache needed, independent of file times.

    A fresh interpreter with a fixed hash seed writes them: marshal's output depends on the
    process's state (interned strings, set order), and the zip should depend on the sources only.
    """
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "1", "-d", "/opt/python",
                    "--invalidation-mode", "unchecked-hash", str(site)], check=True,
                   stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONHASHSEED="0"))


def remove_bytecode(site: Path) -> None:
    for cache in list(site.rglob("__pycache__")):
        shutil.rmtree(cache)


def strip(site: Path) -> None:
    """Remove from an installed tree what nothing imports at run time.

    ``tests`` folders go, except the modules in them that code outside them imports:
    numpy.testing imports ``numpy._core.tests._natype``, and scipy imports numpy.testing.
    """
    keep = _imported_test_modules(site)
    for name in os.listdir(site):
        top = name.split("-")[0].split(".")[0].lower()
        if top in EXCLUDED_TOP_LEVEL or "__mypyc." in name:  # mypy's compiled core sits at the top
            path = site / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if (site / "bin").is_dir():  # console scripts of the requirements: never run in Lambda
        shutil.rmtree(site / "bin")
    for folder, dirs, files in os.walk(site):
        for d in [d for d in dirs if d in _STRIP_DIRS]:
            dirs.remove(d)
            _strip_tests(Path(folder, d), keep)
        for f in files:
            if f.endswith(_STRIP_SUFFIXES):
                os.unlink(os.path.join(folder, f))


def _strip_tests(folder: Path, keep: set[Path]) -> None:
    """Remove a tests folder, or all of it but the kept modules (and their ``__init__.py``)."""
    kept = {k for k in keep if k == folder or folder in k.parents}
    if folder in kept:
        return
    if not kept:
        shutil.rmtree(folder)
        return
    for path in sorted(folder.rglob("*"), reverse=True):  # files before their folders
        if path.is_dir():
            if not any(path.iterdir()):
                path.rmdir()
        elif path not in kept and not (path.name == "__init__.py"
                                       and any(path.parent in k.parents for k in kept)):
            path.unlink()


_TESTS_IMPORT = re.compile(r"^\s*(?:from|import)\s+([A-Za-z_][\w.]*\.tests(?:\.\w+)*)", re.MULTILINE)


def _imported_test_modules(site: Path) -> set[Path]:
    """Modules (files) or packages (folders) in ``tests`` folders that non-test code imports."""
    keep = set()
    for folder, dirs, files in os.walk(site):
        dirs[:] = [d for d in dirs if d not in _STRIP_DIRS]
        for f in files:
            if f.endswith(".py"):
                text = Path(folder, f).read_text(errors="replace")
                if ".tests" not in text:
                    continue
                for module in _TESTS_IMPORT.findall(text):
                    path = site.joinpath(*module.split("."))
                    if path.with_suffix(".py").is_file():
                        keep.add(path.with_suffix(".py"))
                    elif path.is_dir():
                        keep.add(path)
    return keep


def check_imports(site: Path, modules: Sequence[str]) -> None:
    """Import ``modules`` from ``site`` alone (``python -S``), as Lambda would; raise if one fails.

    Only possible when the layer was built for this interpreter and machine.
    """
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    result = subprocess.run([sys.executable, "-S", "-c", code, *modules], capture_output=True,
                            text=True, env=dict(os.environ, PYTHONPATH=str(site)))
    if result.returncode:
        raise RuntimeError(f"the layer in {site} cannot import {', '.join(modules)}:\n"
                           f"{result.stderr[-3000:]}")


def import_names(requirements: Sequence[str]) -> list[str]:
    """The modules that requirements like ``scikit-learn>=1.4`` provide (``sklearn``)."""
    names = [re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].strip().lower() for r in requirements]
    return [_IMPORT_NAMES.get(n, n.replace("-", "_")) for n in names if n]


def _files(top: Path) -> list[Path]:
    return sorted(p for p in top.rglob("*") if p.is_file() or p.is_symlink())


def tree_hash(top: Path) -> str:
    """sha256 over the relative paths and contents of every file below ``top``."""
    digest = hashlib.sha256()
    for path in _files(top):
        digest.update(path.relative_to(top).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def tree_size(top: Path) -> int:
    return sum(p.stat().st_size for p in _files(top))


def write_zip(base: Path, folders: Sequence[str], zip_path: Path) -> None:
    """Zip ``base/folder`` trees with sorted entries and fixed times: same tree, same bytes."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for folder in folders:
            for path in _files(base / folder):
                info = zipfile.ZipInfo(path.relative_to(base).as_posix(), _ZIP_DATE)
                info.external_attr = (0o755 if os.access(path, os.X_OK) else 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, path.read_bytes())


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """A deterministic zip of ``{name: content}`` in memory (e.g. the function's own small code)."""
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, _ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, files[name])
    return buffer.getvalue()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runtime_layer.build", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="build/layer", help="output folder (default build/layer)")
    parser.add_argument("--python-version", default=None, help="X.Y (default: this interpreter's)")
    parser.add_argument("--architecture", default="x86_64", choices=sorted(_MACHINE))
    parser.add_argument("--full", action="store_true", help="include doubleml (does not fit a layer)")
    parser.add_argument("--requirement", action="append", dest="requirements", default=None,
                        help="a requirement for pip (repeatable; default: the runtime's own list)")
    args = parser.parse_args(argv)
    default = FULL_REQUIREMENTS if args.full else CORE_REQUIREMENTS
    build = build_layer(args.out, requirements=args.requirements or default,
                        python_version=args.python_version, architecture=args.architecture)
    print(build.summary())
    if not build.fits:
        print("too large for a layer: deploy the container image instead (docs/aws.md)")


if __name__ == "__main__":
    main()
