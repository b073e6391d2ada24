"""Build the Lambda layer that every invocation runs: this project's packages plus their requirements.

The layer is a zip whose ``python/`` folder Lambda puts on ``sys.path`` (``/opt/python``). It holds

* this project's own packages (``lambdamap``, ``runtime_layer``, ``dml``, ``forest``), copied from
  the source tree, so the build needs neither a wheel of the project nor the network for them;
* the third-party requirements **at the versions installed on the client** (the client's
  environment, pinned ``==``, the requirements' own dependencies included), installed by pip *for
  the runtime's platform*, not this machine's::

      pip install --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 ... \
          --platform manylinux_2_26_x86_64 --only-binary=:all: --python-version 3.11 \
          --implementation cp --target python/ numpy==2.4.6 pandas==3.1.1 ...

  The platforms are every manylinux tag the runtime's glibc can load (:data:`LAMBDA_RUNTIMES`:
  python3.10 and 3.11 run on Amazon Linux 2, glibc 2.26; python3.12+ on Amazon Linux 2023,
  glibc 2.34); pip does not widen a ``manylinux_2_X`` tag to older ones by itself.
  ``pip_args`` may rewrite that command, e.g. to install from a local wheelhouse with
  ``--no-index --find-links`` (the tests do, to stay offline).

When a pinned version has no wheel for the runtime's platform (scikit-learn >= 1.8 has none for
Amazon Linux 2), the build stops before anything is built or uploaded and raises
:class:`UnavailableVersionsError`, which names each package, the client's version and the newest
one that exists there, and the ways out. ``allow_version_drift=True`` (``--allow-version-drift``)
builds the newest versions that exist instead and records the drift (:attr:`LayerBuild.drift`),
which ``lambdamap deploy`` stores with the function so that the client can warn or refuse.

Then it

1. checks the installed tree itself: every distribution's requirements, and this project's own
   (``setup.cfg``), are met inside the layer (pip's own check would compare against the client's
   environment instead, so it is off); a conflict fails the build (with drift allowed, a
   project requirement that the older versions miss is recorded instead);
2. strips what no import needs (tests, caches, stubs, sources of compiled code, and packages the
   Lambda Python runtime already has, such as boto3);
3. imports every requirement from the stripped tree in an isolated interpreter, when it can
   (same Python version and machine), so that stripping cannot silently break an import;
4. computes a content hash: the layer's identity (``lambdamap deploy`` publishes a new layer
   version only when it changes);
5. byte-compiles with hash-based ``.pyc`` files (``/opt`` is read-only, so Lambda could not
   cache them at cold start), unless that pushes the layer over Lambda's limit;
6. zips deterministically.

``python -m runtime_layer.build --out build/layer [--full] [--allow-version-drift]`` builds
``build/layer/layer.zip`` and prints the size and any drift.
"""
from __future__ import annotations

import argparse
import configparser
import hashlib
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

log = logging.getLogger(__name__)

#: The project's packages that the runtime needs (copied from the source tree).
PROJECT_PACKAGES = ("lambdamap", "runtime_layer", "dml", "forest")
#: Parts of them that only the client uses: the local Lambda emulator.
PROJECT_EXCLUDES = {"lambdamap": ("emulator",)}
#: What the universal handler itself imports: in every layer, whatever else is asked for.
HANDLER_REQUIREMENTS = ("cloudpickle>=3.0", "tenacity>=8.2")
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

#: Lambda's managed Python runtimes: ``{X.Y: (operating system, glibc)}``. The glibc decides which
#: ``manylinux`` wheels load there (manylinux2014 = glibc 2.17).
LAMBDA_RUNTIMES = {
    "3.10": ("Amazon Linux 2", "2.26"),
    "3.11": ("Amazon Linux 2", "2.26"),
    "3.12": ("Amazon Linux 2023", "2.34"),
    "3.13": ("Amazon Linux 2023", "2.34"),
    "3.14": ("Amazon Linux 2023", "2.34"),
}
#: Distributions the Lambda Python runtime provides, or that the build removes on purpose: a
#: requirement on them is met without the layer.
_PROVIDED = {"boto3", "botocore", "s3transfer", "jmespath", "urllib3", "mypy", "mypyc"}
_NOT_FOUND = re.compile(r"Could not find a version that satisfies the requirement (\S+) "
                        r"\(from versions: ([^)]*)\)")


class UnavailableVersionsError(RuntimeError):
    """The client's versions of some packages have no wheel for the runtime's platform.

    ``missing`` maps each package to ``(client's version, versions that exist there)``.
    """

    def __init__(self, missing: Mapping[str, tuple[str, list[str]]], python_version: str,
                 glibc: str, architecture: str):
        self.missing = dict(missing)
        self.python_version, self.glibc, self.architecture = python_version, glibc, architecture
        system = LAMBDA_RUNTIMES.get(python_version, ("a custom base",))[0]
        width = max(len(f"{n} {v}") for n, (v, _) in self.missing.items())
        lines = [f"  {f'{name} {version}':<{width}}  newest there: {_newest(found) or 'none'}"
                 for name, (version, found) in sorted(self.missing.items())]
        ways = []
        if _version_key(glibc) < (2, 28):
            ways.append("run the client on Python 3.12 or newer: Lambda's python3.12+ runtimes run "
                        "on Amazon Linux 2023 (glibc 2.34), which loads manylinux_2_28 wheels, and "
                        "deploy from there")
        ways.append("deploy a container image that installs these versions (`lambdamap deploy "
                    "--image URI`, docs/aws.md" + ("; Lambda's own python3.10/3.11 base images are "
                                                     "Amazon Linux 2 too, so use a base with glibc "
                                                     ">= 2.28)" if _version_key(glibc) < (2, 28) else ")"))
        ways.append("or build the newest versions that exist there and record the drift: "
                    "`lambdamap deploy --allow-version-drift` (or `python -m runtime_layer.build "
                    "--allow-version-drift`); the client then warns about each difference, and "
                    "refuses where results would fail")
        super().__init__(
            f"the client's versions of {', '.join(sorted(self.missing))} have no wheel for "
            f"python{python_version} on {system} (glibc {glibc}, {architecture}):\n"
            + "\n".join(lines) + "\nNothing was built or uploaded. Ways out:\n"
            + "\n".join(f"  * {way}" for way in ways))


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
    #: The glibc it was built for (its wheels' manylinux tags load there and on newer ones).
    glibc: str = ""
    #: Every distribution in the layer: ``{name: version}`` (``lambdamap``: the source's).
    versions: dict[str, str] = field(default_factory=dict)
    #: Distributions at another version than the client's: ``{name: client's version}``.
    drift: dict[str, str] = field(default_factory=dict)
    #: Requirements of this project that the layer misses (built with drift allowed).
    notes: list[str] = field(default_factory=list)
    #: The requirements asked for (names): recorded with :data:`lambdamap.versions.RESULT_PACKAGES`.
    requested: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        """Whether the layer leaves room in Lambda's 250 MB (unzipped) for function and layers."""
        return self.unzipped_bytes <= LAMBDA_UNZIPPED_LIMIT_BYTES

    def summary(self) -> str:
        return (f"layer {self.zip_path}: {self.unzipped_bytes / 2**20:.1f} MB unzipped "
                f"(limit {LAMBDA_UNZIPPED_LIMIT_BYTES / 2**20:.0f} MB), "
                f"{self.zipped_bytes / 2**20:.1f} MB zipped, sha256 {self.content_hash[:16]}…")

    def drift_report(self) -> list[str]:
        """One line per package built at another version than the client's, then the notes."""
        return [f"drift: {name} {self.versions.get(name)} in the layer, {client} on the client"
                for name, client in sorted(self.drift.items())] + \
               [f"drift: {note}" for note in self.notes]

    def record(self) -> dict[str, Any]:
        """What ``lambdamap deploy`` stores with the function (:func:`lambdamap.versions.make_record`)."""
        from lambdamap import versions

        names = list(dict.fromkeys([*versions.RESULT_PACKAGES, *self.requested]))
        recorded = set(names)
        return versions.make_record(
            python=self.python_version, glibc=self.glibc,
            versions={name: self.versions.get(name) for name in names},
            drift={name: client for name, client in self.drift.items() if name in recorded})


def project_root() -> Path:
    """The source tree that holds :data:`PROJECT_PACKAGES` (the parent of this file's folder)."""
    return Path(__file__).resolve().parent.parent


def runtime_glibc(python_version: str) -> str:
    """The glibc of Lambda's ``python{X.Y}`` runtime; ValueError for a runtime Lambda lacks."""
    if python_version not in LAMBDA_RUNTIMES:
        raise ValueError(
            f"Lambda has no python{python_version} runtime that lambdamap knows (it knows "
            f"{', '.join('python' + v for v in LAMBDA_RUNTIMES)}); use a client of one of those "
            "Pythons, or give the runtime's glibc explicitly (--glibc) for a custom base")
    return LAMBDA_RUNTIMES[python_version][1]


def platform_tags(glibc: str, architecture: str) -> list[str]:
    """Every ``manylinux`` platform tag whose wheels load on ``glibc`` (2.17 upwards).

    >>> platform_tags("2.19", "x86_64")
    ['manylinux2014_x86_64', 'manylinux_2_17_x86_64', 'manylinux_2_18_x86_64', 'manylinux_2_19_x86_64']
    """
    if architecture not in _MACHINE:
        raise ValueError(f"unknown architecture {architecture!r}: use one of {sorted(_MACHINE)}")
    major, minor = _version_key(glibc)[:2]
    if (major, minor) < (2, 17):
        raise ValueError(f"glibc {glibc} is older than manylinux2014 (2.17): no wheels to choose")
    machine = _MACHINE[architecture]
    return [f"manylinux2014_{machine}"] + [f"manylinux_2_{m}_{machine}" for m in range(17, minor + 1)]


def pip_command(target: Path, requirements: Sequence[str], python_version: str,
                architecture: str, glibc: str | None = None, *, dry_run: bool = False) -> list[str]:
    """The pip command that installs ``requirements`` for the runtime's platform into ``target``.

    ``glibc`` defaults to that of Lambda's runtime for ``python_version``. pip's check of the
    result against the *client's* installed packages is off (``--no-warn-conflicts``): it
    compares the wrong environment; :func:`check_requirements` checks the layer itself.
    ``dry_run`` resolves without installing or dependencies (to find which pins have no wheel).
    """
    glibc = glibc or runtime_glibc(python_version)
    platforms = [arg for tag in platform_tags(glibc, architecture) for arg in ("--platform", tag)]
    return [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
            *platforms, "--only-binary=:all:",
            "--python-version", python_version, "--implementation", "cp",
            "--no-compile", "--no-warn-conflicts", "--target", str(target),
            *(["--dry-run", "--no-deps"] if dry_run else []), *requirements]


def target_environment(python_version: str, architecture: str) -> dict[str, str]:
    """PEP 508 marker values of the runtime (Linux, CPython ``python_version``, its machine)."""
    from packaging.markers import default_environment

    env = dict(default_environment())
    env.update(python_version=python_version, python_full_version=f"{python_version}.0",
               sys_platform="linux", platform_system="Linux", os_name="posix",
               platform_machine=_MACHINE[architecture], implementation_name="cpython",
               platform_python_implementation="CPython")
    return env


def client_pins(requirements: Sequence[str], environment: Mapping[str, str]) -> list[str]:
    """``requirements`` and everything they need, pinned ``==`` to the versions on the client.

    A requirement the client does not have, or whose specifier the client's version does not
    meet (the user asked for another version), is kept as given. Markers are evaluated for the
    runtime (``environment``); packages the Lambda runtime provides are left to it.
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    queue = [(Requirement(r), True) for r in requirements]
    while queue:
        requirement, direct = queue.pop(0)
        name = canonicalize_name(requirement.name)
        if name in pins or name in _PROVIDED:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if direct:
                pins[name] = str(requirement)
            continue
        if not requirement.specifier.contains(dist.version, prereleases=True):
            if direct:
                pins[name] = str(requirement)
            continue
        extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
        pins[name] = f"{name}{extras}=={dist.version}"
        for raw in dist.requires or []:
            dependency = Requirement(raw)
            if dependency.marker is None or any(
                    dependency.marker.evaluate(dict(environment, extra=extra))
                    for extra in ("", *requirement.extras)):
                queue.append((dependency, False))
    return list(pins.values())


def build_layer(out_dir: str | os.PathLike, *, requirements: Sequence[str] = DEFAULT_REQUIREMENTS,
                python_version: str | None = None, architecture: str = "x86_64",
                pip_args: Callable[[list[str]], list[str]] | None = None,
                source: str | os.PathLike | None = None, glibc: str | None = None,
                allow_version_drift: bool = False) -> LayerBuild:
    """Build the layer into ``out_dir`` (``python/`` and ``layer.zip``); return what was made.

    Args:
        requirements: third-party requirements for pip, pinned to the client's installed
            versions (:func:`client_pins`), plus :data:`HANDLER_REQUIREMENTS` if missing; empty
            skips pip (project packages only).
        python_version: the Lambda runtime's ``X.Y``; default this interpreter's (the client's).
        architecture: ``x86_64`` or ``arm64``.
        pip_args: receives each pip command (a list) and returns the one to run.
        source: the source tree with the project's packages (default: this one).
        glibc: the runtime's glibc, ``X.Y``; default Lambda's for ``python_version``
            (:data:`LAMBDA_RUNTIMES`). Another value builds for another base: a container image,
            or the local Lambda emulator (this machine's glibc); ``deploy`` warns about a layer
            built for a newer glibc than its runtime has.
        allow_version_drift: where the client's version has no wheel for the runtime, install
            the newest that has one and record it, instead of raising
            :class:`UnavailableVersionsError`.
    """
    python_version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    glibc = glibc or runtime_glibc(python_version)
    platform_tags(glibc, architecture)  # refuse a bad architecture or glibc before any work
    out = Path(out_dir).resolve()
    site = out / "python"
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(parents=True)
    root = Path(source) if source else project_root()
    environment = target_environment(python_version, architecture)

    notes: list[str] = []
    if requirements:
        asked = set(_names(requirements))
        requirements = [*requirements, *(r for r in HANDLER_REQUIREMENTS if _name(r) not in asked)]
        run_pip = _PipRunner(site, python_version, architecture, glibc, pip_args)
        missing = run_pip.install(client_pins(requirements, environment), requirements,
                                  allow_version_drift)
        if missing:
            raise UnavailableVersionsError(missing, python_version, glibc, architecture)
        dependency_problems, project_problems = check_requirements(
            site, environment, project_requirements(root, requirements))
        if dependency_problems or (project_problems and not allow_version_drift):
            raise RuntimeError("the layer's packages do not meet their requirements:\n  "
                               + "\n  ".join(dependency_problems + project_problems)
                               + ("" if dependency_problems else
                                  "\n(pass --allow-version-drift to build it anyway)"))
        notes = project_problems
    for package in PROJECT_PACKAGES:
        if (root / package).is_dir():
            shutil.copytree(root / package, site / package, ignore=shutil.ignore_patterns(
                "__pycache__", "*.pyc", "tests", *PROJECT_EXCLUDES.get(package, ())))

    versions = layer_versions(site, root)
    drift = _drift(versions)
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
                      unzipped_bytes=tree_size(site), zipped_bytes=zip_path.stat().st_size,
                      glibc=glibc, versions=versions, drift=drift, notes=notes,
                      requested=tuple(_names(requirements)))


class _PipRunner:
    """Runs pip for one layer: pinned first; on a missing wheel, finds every missing pin."""

    def __init__(self, site: Path, python_version: str, architecture: str, glibc: str,
                 pip_args: Callable[[list[str]], list[str]] | None):
        self.site, self.python_version, self.architecture, self.glibc = (
            site, python_version, architecture, glibc)
        self.pip_args = pip_args

    def run(self, requirements: Sequence[str], dry_run: bool = False) -> subprocess.CompletedProcess:
        cmd = pip_command(self.site, requirements, self.python_version, self.architecture,
                          self.glibc, dry_run=dry_run)
        cmd = self.pip_args(cmd) if self.pip_args else cmd
        log.info("pip: %s", " ".join(cmd))
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode == 0 and re.search(r"^ERROR", result.stderr, re.MULTILINE):
            raise RuntimeError(f"pip reported errors while building the layer:\n{result.stderr[-3000:]}")
        return result

    def install(self, pins: list[str], requirements: Sequence[str],
                allow_drift: bool) -> dict[str, tuple[str, list[str]]]:
        """Install ``pins``; return the pins that have no wheel there (unless drift is allowed).

        With drift allowed, the missing pins are replaced by the newest versions that exist (the
        requirement as given, for a direct one); should that not resolve, all of
        ``requirements`` are installed at their newest.
        """
        result = self.run(pins)
        if result.returncode == 0:
            return {}
        missing = self.missing_pins(pins, result.stderr)
        if not missing:
            raise RuntimeError(f"pip failed to install the layer's requirements:\n{result.stderr[-3000:]}")
        if not allow_drift:
            return missing
        direct = {_name(r): r for r in requirements}
        relaxed = [direct.get(_name(p), "") if _name(p) in missing else p for p in pins]
        for attempt in ([r for r in relaxed if r], list(requirements)):
            shutil.rmtree(self.site)
            self.site.mkdir()
            result = self.run(attempt)
            if result.returncode == 0:
                return {}
        raise RuntimeError(f"pip found no versions of the layer's requirements for "
                           f"python{self.python_version} (glibc {self.glibc}):\n{result.stderr[-3000:]}")

    def missing_pins(self, pins: list[str], stderr: str) -> dict[str, tuple[str, list[str]]]:
        """Every pin without a wheel for the platform, with the versions that do exist there.

        pip names one failure per run (``stderr`` is the failed install's): this drops the pin it
        named and resolves the rest alone (``--dry-run --no-deps``), until they resolve.
        """
        missing: dict[str, tuple[str, list[str]]] = {}
        left = list(pins)
        for _ in range(len(pins)):
            found = _NOT_FOUND.search(stderr)
            if found is None or "==" not in found[1]:  # not one of the client's pins: pip's error stands
                break
            failed = found[1]
            name, version = _name(failed), failed.partition("==")[2]
            missing[name] = (version, [v.strip() for v in found[2].split(",")
                                       if v.strip() and v.strip() != "none"])
            left = [p for p in left if _name(p) != name]
            if not left:
                break
            result = self.run(left, dry_run=True)
            if result.returncode == 0:
                break
            stderr = result.stderr
        return missing


def _name(requirement: str) -> str:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    return canonicalize_name(Requirement(requirement).name)


def _names(requirements: Sequence[str]) -> list[str]:
    return [_name(r) for r in requirements]


def _newest(versions: Sequence[str]) -> str | None:
    from packaging.version import InvalidVersion, Version

    valid = []
    for v in versions:
        try:
            valid.append((Version(v), v))
        except InvalidVersion:
            continue
    return max(valid)[1] if valid else None


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def layer_versions(site: Path, source: Path) -> dict[str, str]:
    """``{distribution: version}`` of every distribution installed in ``site``, plus lambdamap."""
    from packaging.utils import canonicalize_name

    versions = {canonicalize_name(d.metadata["Name"]): d.version
                for d in metadata.distributions(path=[str(site)])}
    init = source / "lambdamap" / "__init__.py"
    if init.is_file():
        found = re.search(r"^__version__\s*=\s*[\"']([^\"']+)", init.read_text(), re.MULTILINE)
        if found:
            versions["lambdamap"] = found[1]
    return versions


def _drift(layer: Mapping[str, str]) -> dict[str, str]:
    """The layer's distributions that the client has at another version: ``{name: client's}``."""
    from lambdamap.versions import installed_versions

    client = installed_versions(list(layer))
    return {name: client[name] for name, version in layer.items()
            if client[name] is not None and client[name] != version}


def project_requirements(source: Path, requirements: Sequence[str]) -> list[str]:
    """This project's own requirements (``setup.cfg``) on packages the layer is asked to hold."""
    setup = source / "setup.cfg"
    if setup.is_file():
        parser = configparser.ConfigParser()
        parser.read(setup)
        raw = parser.get("options", "install_requires", fallback="").splitlines()
    else:
        try:
            raw = metadata.requires("lambdamap") or []
        except metadata.PackageNotFoundError:
            raw = []
    lines = [line.strip() for line in raw if line.strip() and "extra ==" not in line]
    return [line for line in lines if _name(line) not in _PROVIDED]


def check_requirements(site: Path, environment: Mapping[str, str],
                       project: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """What the installed tree in ``site`` misses: (its distributions' needs, ``project``'s).

    A project requirement on a distribution the layer does not hold is skipped (doubleml is
    there only with ``--full``); one the Lambda runtime provides is always met.
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    dists = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions(path=[str(site)])}

    def problem(requirement: Requirement, who: str, required: bool) -> str | None:
        name = canonicalize_name(requirement.name)
        if name in _PROVIDED:
            return None
        if requirement.marker is not None and not requirement.marker.evaluate(dict(environment, extra="")):
            return None
        have = dists.get(name)
        if have is None:
            return f"{who} requires {requirement}, which is not in the layer" if required else None
        if not requirement.specifier.contains(have.version, prereleases=True):
            return f"{who} requires {requirement}; the layer has {name} {have.version}"
        return None

    dependency_problems = [p for name, dist in sorted(dists.items())
                           for raw in dist.requires or []
                           if (p := problem(Requirement(raw), f"{name} {dist.version}", True))]
    project_problems = [p for raw in project if (p := problem(Requirement(raw), "lambdamap", False))]
    return dependency_problems, project_problems


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime_layer.build", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="build/layer", help="output folder (default build/layer)")
    parser.add_argument("--python-version", default=None, help="X.Y (default: this interpreter's)")
    parser.add_argument("--architecture", default="x86_64", choices=sorted(_MACHINE))
    parser.add_argument("--glibc", default=None, metavar="X.Y",
                        help="the runtime's glibc (default: Lambda's for that Python: 2.26 for "
                             "python3.10/3.11, 2.34 for python3.12+); another for a custom base")
    parser.add_argument("--full", action="store_true", help="include doubleml (does not fit a layer)")
    parser.add_argument("--requirement", action="append", dest="requirements", default=None,
                        help="a requirement for pip (repeatable; default: the runtime's own list); "
                             "pinned to the version installed here unless it says otherwise")
    parser.add_argument("--allow-version-drift", action="store_true",
                        help="where this environment's version has no wheel for the runtime, build "
                             "the newest that has one and record the difference")
    args = parser.parse_args(argv)
    default = FULL_REQUIREMENTS if args.full else CORE_REQUIREMENTS
    try:
        build = build_layer(args.out, requirements=args.requirements or default,
                            python_version=args.python_version, architecture=args.architecture,
                            glibc=args.glibc, allow_version_drift=args.allow_version_drift)
    except (RuntimeError, ValueError) as exc:
        print(f"python -m runtime_layer.build: {exc}", file=sys.stderr)
        return 1
    print(build.summary())
    for line in build.drift_report():
        print(line)
    if not build.fits:
        print("too large for a layer: deploy the container image instead (docs/aws.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
