"""The doubleml versions dml has read and tested, and the guard that refuses the others.

dml hands doubleml its remote predictions through the public ``fit(external_predictions=...)``,
but to make the result *equal* to a local fit it also relies on doubleml internals: each model's
``_nuisance_est`` (overridden to record targets and fitted models, and to run doubleml's prediction
checks), its ``_learner``, ``_predict_method``, ``_params``, ``_dml_data`` subsets and
``id_positions``, the composites' ``_initialize_models``, ``_fit_model``, ``_fit_quantile``,
``_check_external_predictions`` and ``_rename_external_predictions``, the check functions of
``doubleml.utils._checks``, and ``_dml_tune`` for fanned-out tuning. These change between doubleml
releases (its main branch has merged a large refactor for the next one), so a model refuses to
be built on a version outside :data:`DOUBLEML_VERSIONS` instead of silently computing something
else.

Override, at your own risk (e.g. to try a new release): set the environment variable
``DML_ALLOW_UNTESTED_DOUBLEML=1``; models are then built with a ``UserWarning``. Run
``tests/test_dml.py`` (and ``benchmarks/doubleml_suite.py``) on that version before trusting it.
"""
from __future__ import annotations

import os
import re
import warnings

import doubleml

#: [first, last) as (major, minor): the doubleml versions read and tested (tested on 0.11.4).
DOUBLEML_VERSIONS: tuple[tuple[int, int], tuple[int, int]] = ((0, 11), (0, 12))

#: Environment variable that turns the refusal into a warning.
OVERRIDE_ENV = "DML_ALLOW_UNTESTED_DOUBLEML"


class UnsupportedDoubleMLVersion(RuntimeError):
    """The installed doubleml is not a version dml has read and tested."""


def _minor_version(version: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def check_doubleml_version(version: str | None = None) -> None:
    """Raise :class:`UnsupportedDoubleMLVersion` unless ``version`` (default: installed) is supported.

    With ``DML_ALLOW_UNTESTED_DOUBLEML=1`` in the environment, warn instead.
    """
    version = doubleml.__version__ if version is None else version
    first, last = DOUBLEML_VERSIONS
    minor = _minor_version(version)
    if minor is not None and first <= minor < last:
        return
    message = (f"dml was read and tested against doubleml >={first[0]}.{first[1]},<{last[0]}.{last[1]} "
               f"(it relies on doubleml internals that change between releases); found doubleml {version}. "
               f"Install a supported version (pip install 'doubleml>={first[0]}.{first[1]},<{last[0]}.{last[1]}'), "
               f"or set {OVERRIDE_ENV}=1 to proceed with a warning and check the results against doubleml.")
    if os.environ.get(OVERRIDE_ENV, "") not in ("", "0"):
        warnings.warn(message, UserWarning, stacklevel=3)
    else:
        raise UnsupportedDoubleMLVersion(message)
