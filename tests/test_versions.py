"""lambdamap.versions: how client and runtime are compared, row by row (no servers needed)."""
from __future__ import annotations

import pytest

from lambdamap import RuntimeMismatchError, versions

CLIENT = {"python": "3.11", "wire_version": 1, "glibc": "2.36",
          "versions": {"cloudpickle": "3.1.3", "numpy": "2.4.6", "scipy": "1.17.1", "pandas": "3.1.1",
                       "scikit-learn": "1.9.1", "lambdamap": "0.1.0"}}


def runtime(python: str = "3.11", glibc: str = "2.36", **changed: str | None) -> dict:
    names = {k.replace("_", "-"): v for k, v in changed.items()}
    return dict(CLIENT, python=python, glibc=glibc, versions={**CLIENT["versions"], **names})


def verdicts(comparison: versions.Comparison) -> dict[str, str]:
    return {row.name: row.level for row in comparison.rows if row.level != "ok"}


@pytest.mark.parametrize("changed, expected", [
    ({}, {}),
    ({"numpy": "2.4.5"}, {"numpy": "warning"}),
    ({"numpy": "1.26.4"}, {"numpy": "error"}),
    ({"pandas": "2.3.2"}, {"pandas": "error"}),
    ({"scikit_learn": "1.7.2"}, {"scikit-learn": "warning"}),
    ({"scipy": None}, {"scipy": "warning"}),
    ({"cloudpickle": "3.0.0"}, {"cloudpickle": "error"}),
    ({"lambdamap": "0.2.0"}, {"lambdamap": "warning"}),
], ids=str)
def test_what_each_difference_means(changed, expected):
    assert verdicts(versions.compare(CLIENT, None, runtime(**changed))) == expected


def test_python_and_wire_format_refuse_even_when_told_to_warn():
    comparison = versions.compare(CLIENT, None, runtime(python="3.12", pandas="2.3.2"))
    assert comparison.fatal and verdicts(comparison) == {"python": "error", "pandas": "error"}
    with pytest.raises(RuntimeMismatchError, match=r"runs \(python\):") as info:
        comparison.enforce("function 'f'", strict=False)
    assert "version_check='warn'" not in str(info.value)  # no setting excuses another Python


def test_errors_warn_instead_when_told_to_and_ok_runtimes_say_nothing(recwarn):
    comparison = versions.compare(CLIENT, None, runtime(pandas="2.3.2", numpy="2.4.5"))
    with pytest.raises(RuntimeMismatchError, match="pass version_check='warn'"):
        comparison.enforce("function 'f'")
    with pytest.warns(versions.RuntimeVersionWarning, match=r"pandas 3.1.1 here, 2.3.2 there, "
                                                            r"numpy 2.4.6 here, 2.4.5 there"):
        comparison.enforce("function 'f'", strict=False)
    versions.compare(CLIENT, None, runtime()).enforce("function 'f'")
    assert not recwarn.list


def test_the_record_decides_without_a_probe_and_a_runtime_unlike_its_record_is_flagged():
    record = versions.make_record(python="3.11", glibc="2.36", versions=runtime(numpy="2.4.5")["versions"],
                                  drift={"numpy": "2.4.6"})
    from_record = versions.compare(CLIENT, record, None)
    assert verdicts(from_record) == {"numpy": "warning"} and not from_record.probed
    assert from_record.runtime_versions()["numpy"] == "2.4.5"
    both = versions.compare(CLIENT, record, runtime())  # the runtime has 2.4.6 after all
    [row] = [r for r in both.rows if r.name == "numpy"]
    assert (row.level, row.deployed, row.runtime) == ("warning", "2.4.5", "2.4.6")
    assert "not what deploy recorded (2.4.5)" in row.note and "--allow-version-drift" in row.note


def test_a_runtime_with_an_older_glibc_than_its_layer_cannot_load_it():
    record = versions.make_record(python="3.11", glibc="2.36", versions=CLIENT["versions"])
    assert verdicts(versions.compare(CLIENT, record, runtime(glibc="2.26"))) == {"glibc": "error"}


def test_the_record_is_compact_and_read_back_with_the_plain_variables():
    record = versions.make_record(python="3.11", versions={"numpy": "2.4.6"})
    environment = {versions.RECORD_ENV: versions.encode_record(record), "LAMBDAMAP_WIRE_VERSION": "1",
                   "LAMBDAMAP_VERSION": "0.1.0"}
    assert " " not in environment[versions.RECORD_ENV]
    assert versions.parse_record(environment) == {"python": "3.11", "wire_version": 1,
                                                  "versions": {"numpy": "2.4.6", "lambdamap": "0.1.0"}}
    assert versions.parse_record({}) is None


def test_the_handler_answers_the_probe_with_what_this_interpreter_runs():
    from runtime_layer.handler import handler

    answer = handler({"lambdamap_probe": 1, "packages": ["tenacity"]})
    assert answer == versions.describe(["tenacity"]) and answer["versions"]["tenacity"]
