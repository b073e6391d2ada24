"""Which versions of the packages results depend on: the same code must run on both sides.

cloudpickle needs the same Python minor version on client and runtime; numerical results need
the same numpy, scipy, pandas and scikit-learn. Both sides describe themselves with
:func:`installed_versions`. ``lambdamap deploy`` records what it built in the function's
environment (:data:`RECORD_ENV`, see :func:`parse_record`); the runtime answers a synchronous
probe with what it really has (:func:`describe_runtime`); :func:`compare` judges the difference and
:class:`Comparison` renders it as a table and raises or warns.

What a difference means (``compare``):

* Python minor version or wire format: an **error** always (nothing can run);
* cloudpickle: an **error** (functions pickled by one version need not load in another);
* numpy, scipy, pandas, scikit-learn: a **warning** naming both versions, an **error** where the
  major version differs (objects pickled here fail to unpickle there: a pandas 3 DataFrame in
  pandas 2 raises ``NotImplementedError``, a numpy 2 array in numpy 1 misses ``numpy._core``);
* lambdamap and packages the deployment added: a warning;
* a package the client has but the runtime lacks: a warning (calls that import it fail);
* the runtime's glibc older than the one its layer was built for: an error (compiled packages
  cannot load).

Errors raise :class:`~lambdamap.errors.RuntimeMismatchError` unless the client asked for
``version_check="warn"`` (Python and wire format raise regardless); warnings are
:class:`RuntimeVersionWarning`.
"""
from __future__ import annotations

import json
import platform
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Iterable, Mapping

#: Distributions whose versions decide whether results travel and agree.
RESULT_PACKAGES = ("cloudpickle", "numpy", "scipy", "pandas", "scikit-learn", "lambdamap")
#: The function environment variable in which ``lambdamap deploy`` records the runtime it built.
RECORD_ENV = "LAMBDAMAP_RUNTIME"
#: Packages whose objects travel pickled between the two sides: a different major version
#: makes them fail to unpickle, a different minor or patch version may change results.
_NUMERIC = ("numpy", "scipy", "pandas", "scikit-learn")
#: Differences that no setting can excuse.
_ALWAYS_FATAL = ("python", "wire format")
_UNKNOWN = ""  # in a Row: that side was not asked, or did not record the item


class RuntimeVersionWarning(UserWarning):
    """The runtime's packages differ from the client's where results may differ or fail."""


def installed_versions(names: Iterable[str] = RESULT_PACKAGES) -> dict[str, str | None]:
    """``{distribution: version}`` in this interpreter; None for a distribution not installed.

    ``lambdamap`` is the imported package's own version: the runtime layer holds a copy of the
    source tree without distribution metadata.

    Example::

        >>> installed_versions(["numpy"])            # doctest: +SKIP
        {'numpy': '2.4.6'}
    """
    versions: dict[str, str | None] = {}
    for name in names:
        if name == "lambdamap":
            from . import __version__

            versions[name] = __version__
            continue
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def glibc_version() -> str | None:
    """This machine's glibc, ``"2.26"``; None on another C library."""
    library, version = platform.libc_ver()
    return version or None if library == "glibc" else None


def describe(packages: Iterable[str] = ()) -> dict[str, Any]:
    """This interpreter: what the runtime answers the client's probe, and the client's side.

    ``packages`` are distributions to report besides :data:`RESULT_PACKAGES`. Reads distribution
    metadata only: nothing heavy is imported.
    """
    from . import wire

    names = list(dict.fromkeys([*RESULT_PACKAGES, *packages]))
    return {"python": wire.python_version(), "python_full": platform.python_version(),
            "wire_version": wire.WIRE_VERSION, "glibc": glibc_version(),
            "versions": installed_versions(names)}


# ---------------------------------------------------------------------------------------------
# the deployment's record


def make_record(*, python: str, versions: Mapping[str, str | None], glibc: str | None = None,
                drift: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What deploy stores in :data:`RECORD_ENV`: the runtime it built.

    ``versions`` maps each recorded distribution to its version in the runtime (None: absent);
    ``drift`` maps the distributions built at another version than the client's (deploy
    ``--allow-version-drift``) to the client's version at build time.
    """
    record: dict[str, Any] = {"python": python, "versions": dict(versions)}
    if glibc:
        record["glibc"] = glibc
    if drift:
        record["drift"] = dict(drift)
    return record


def encode_record(record: Mapping[str, Any]) -> str:
    """Compact JSON: the function's environment variables share 4 KB in all."""
    return json.dumps(record, separators=(",", ":"), sort_keys=True)


def parse_record(environment: Mapping[str, str]) -> dict[str, Any] | None:
    """The record in a function's environment variables, or None (deployed without one).

    Also reads the plain variables every lambdamap deploy sets (``LAMBDAMAP_PYTHON``,
    ``LAMBDAMAP_WIRE_VERSION``, ``LAMBDAMAP_VERSION``; they win over the JSON record), so that
    older deployments compare too.
    """
    raw = environment.get(RECORD_ENV)
    record: dict[str, Any] = {}
    if raw:
        try:
            record = json.loads(raw)
        except ValueError:
            record = {}
    if not isinstance(record, dict):
        record = {}
    if "LAMBDAMAP_PYTHON" in environment:
        record["python"] = environment["LAMBDAMAP_PYTHON"]
    if "LAMBDAMAP_WIRE_VERSION" in environment:
        record["wire_version"] = _int_or_text(environment["LAMBDAMAP_WIRE_VERSION"])
    if "LAMBDAMAP_VERSION" in environment:
        record.setdefault("versions", {})["lambdamap"] = environment["LAMBDAMAP_VERSION"]
    return record or None


def _int_or_text(value: str) -> int | str:
    try:
        return int(value)
    except ValueError:
        return value


# ---------------------------------------------------------------------------------------------
# comparing


@dataclass(frozen=True)
class Row:
    """One line of the comparison: what, on each side, and the verdict (ok, warning, error)."""

    name: str
    client: str | None
    deployed: str | None  # what the deployment recorded (_UNKNOWN: nothing recorded)
    runtime: str | None   # what the runtime reported (_UNKNOWN: not asked)
    level: str
    note: str = ""


@dataclass
class Comparison:
    """Client against runtime, row by row; renders as a table, then raises or warns."""

    rows: list[Row] = field(default_factory=list)
    probed: bool = False      # the runtime itself answered (else: the record alone)
    recorded: bool = False    # the deployment carried a record

    @property
    def errors(self) -> list[Row]:
        return [r for r in self.rows if r.level == "error"]

    @property
    def warnings(self) -> list[Row]:
        return [r for r in self.rows if r.level == "warning"]

    @property
    def fatal(self) -> bool:
        """Whether a difference no setting can excuse was found (Python, wire format)."""
        return any(r.name in _ALWAYS_FATAL for r in self.errors)

    def runtime_versions(self) -> dict[str, str | None] | None:
        """The runtime's distribution versions as best known (probe, else record)."""
        if not (self.probed or self.recorded):
            return None
        known = {r.name: (r.runtime if self.probed else r.deployed) for r in self.rows
                 if r.name not in ("python", "wire format", "glibc")}
        return {name: version for name, version in known.items() if version != _UNKNOWN}

    def table(self) -> str:
        """A fixed-width table with one row per compared item."""
        header = ("", "client", "deployed", "runtime", "verdict")
        lines = [header] + [(r.name, _show(r.client), _show(r.deployed), _show(r.runtime),
                             r.level.upper() if r.level != "ok" else "ok") for r in self.rows]
        widths = [max(len(line[i]) for line in lines) for i in range(4)]
        out = []
        for line, row in zip(lines, [None, *self.rows]):
            text = "  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[4]
            if row is not None and row.note:
                text += f": {row.note}"
            out.append(text.rstrip())
        return "\n".join(out)

    def enforce(self, what: str, *, strict: bool = True) -> None:
        """Raise on errors (on Python and wire format alone when not ``strict``); warn otherwise.

        ``what`` names the runtime in the messages, e.g. ``"function 'lambdamap'"``.
        """
        from .errors import RuntimeMismatchError

        blocking = [r for r in self.errors if strict or r.name in _ALWAYS_FATAL]
        if blocking:
            names = ", ".join(r.name for r in blocking)
            raise RuntimeMismatchError(
                f"{what} does not run what this client runs ({names}):\n{self.table()}\n"
                "Redeploy from this environment (`lambdamap deploy`), or run the client in the "
                "runtime's versions" + ("" if any(r.name in _ALWAYS_FATAL for r in blocking) else
                                        "; to run anyway, knowing which results fail or differ, "
                                        "pass version_check='warn'") + " (docs/aws.md)")
        if self.errors or self.warnings:
            names = ", ".join(f"{r.name} {_show(r.client)} here, {_show(_theirs(r))} there"
                              for r in self.errors + self.warnings)
            warnings.warn(RuntimeVersionWarning(
                f"{what} runs other package versions than this client ({names}); results may "
                f"differ or fail:\n{self.table()}"), stacklevel=3)


def _show(value: str | None) -> str:
    """A cell: ``-`` for unknown, ``(none)`` for not installed."""
    if value == _UNKNOWN:
        return "-"
    return "(none)" if value is None else str(value)


def _theirs(row: Row) -> str | None:
    return row.runtime if row.runtime != _UNKNOWN else row.deployed


def compare(client: Mapping[str, Any], record: Mapping[str, Any] | None,
            probe: Mapping[str, Any] | None) -> Comparison:
    """Judge ``client`` (:func:`describe`) against the runtime.

    ``record`` is the deployment's (:func:`parse_record`), ``probe`` the runtime's own answer
    (:func:`describe` run there); either may be None. Where both are known the runtime's answer
    decides, and a runtime that differs from its record is flagged: it changed behind deploy's
    back.
    """
    record, probe = record or {}, probe or {}
    result = Comparison(probed=bool(probe), recorded=bool(record))
    drift = record.get("drift") or {}

    def add(name: str, ours: Any, recorded: Any, reported: Any, judge) -> None:
        theirs = reported if probe else recorded
        if theirs == _UNKNOWN:
            level, note = "ok", "not recorded"
        else:
            level, note = judge(name, ours, theirs)
        notes = [note] if note else []
        if probe and recorded not in (_UNKNOWN, reported):
            level = "error" if level == "error" else "warning"
            notes.append(f"the runtime is not what deploy recorded ({_show(recorded)})")
        if name in drift:
            notes.append(f"deployed with --allow-version-drift (client had {drift[name]})")
        result.rows.append(Row(name, ours, recorded, reported, level, "; ".join(notes)))

    def field(side: Mapping[str, Any], key: str) -> Any:
        if not side or key not in side:
            return _UNKNOWN
        return None if side[key] is None else str(side[key])

    add("python", client.get("python"), field(record, "python"), field(probe, "python"), _judge_exact)
    add("wire format", str(client.get("wire_version")), field(record, "wire_version"),
        field(probe, "wire_version"), _judge_exact)
    recorded_versions = record.get("versions") or {}
    reported_versions = probe.get("versions") or {}
    names = list(dict.fromkeys([*RESULT_PACKAGES, *recorded_versions, *reported_versions]))
    ours = {**installed_versions([n for n in names if n not in (client.get("versions") or {})]),
            **(client.get("versions") or {})}
    for name in names:
        add(name, ours.get(name), field(recorded_versions, name) if record else _UNKNOWN,
            field(reported_versions, name) if probe else _UNKNOWN, _judge_package)
    needs, has = record.get("glibc"), probe.get("glibc")
    if needs and has:
        ok = _version_key(has) >= _version_key(needs)
        result.rows.append(Row("glibc", _UNKNOWN, needs, has, "ok" if ok else "error", "" if ok else
                               f"the layer was built for glibc {needs}, this runtime has {has}: "
                               "its compiled packages cannot load"))
    return result


def _judge_exact(name: str, ours: str | None, theirs: str | None) -> tuple[str, str]:
    if ours == theirs:
        return "ok", ""
    why = ("cloudpickle does not travel across Python versions" if name == "python"
           else "client and runtime cannot read each other's jobs")
    return "error", why


def _judge_package(name: str, ours: str | None, theirs: str | None) -> tuple[str, str]:
    if ours == theirs:
        return "ok", ""
    if theirs is None:
        return "warning", "not installed in the runtime: calls that import it fail"
    if ours is None:
        return "ok", "not installed here"
    if name == "cloudpickle":
        return "error", "functions pickled by one version need not load in the other"
    if name in _NUMERIC:
        if _major(ours) != _major(theirs):
            return "error", (f"major versions differ: {name} objects pickled on one side fail "
                             "to unpickle on the other")
        return "warning", "results may differ" + (
            "; fitted estimators may not unpickle, and forest needs equal versions"
            if name == "scikit-learn" else "")
    return "warning", "differs"


def _major(version: str) -> str:
    return version.split(".", 1)[0]


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())
