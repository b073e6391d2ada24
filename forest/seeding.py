"""scikit-learn's random scheme for forests, in one place.

A grove forest equals scikit-learn's forest tree for tree only if every tree gets the seed that
``BaseForest.fit`` would give it, and grows on the bootstrap sample that ``_parallel_build_trees``
would draw for it. Rather than re-implement that scheme we call scikit-learn's own private helpers,
which are the scheme by definition. Private helpers change without notice, so this module

* imports them once, here, and nowhere else;
* states the scikit-learn versions whose scheme we have read and tested (``SKLEARN_VERSIONS``);
* refuses to fit (:func:`check_sklearn_version` raises) on any other version, instead of silently
  growing a different forest.

The scheme, as of scikit-learn 1.9 (``sklearn/ensemble/_forest.py``):

1. ``random_state = check_random_state(self.random_state)``; with ``warm_start``, first burn
   ``random_state.randint(MAX_INT, size=len(existing_trees))``.
2. One seed per new tree, in tree order: ``_make_estimator`` -> ``_set_random_states`` draws
   ``random_state.randint(MAX_INT)`` for each ``*random_state`` parameter of the tree (a
   decision tree has exactly one) and stores the integer as the tree's ``random_state``.
3. Each tree draws its bootstrap indices from its own seed, independently of the others
   (``_generate_sample_indices``: ``randint`` without sample weights, ``choice(p=weights)``
   with them; 1.9 introduced the weighted draw, which is why 1.8 and earlier differ).

Step 3 depends only on the tree's seed, so trees can grow in any process, in any grouping, and
still be the same trees: that is what makes groves exact.
"""
from __future__ import annotations

import re
from typing import Any

import sklearn
from sklearn.utils import check_random_state

# Versions whose scheme was read and tested: [first, last) as (major, minor).
# 1.8 and earlier draw bootstraps without sample weights and fit differently (see module doc).
SKLEARN_VERSIONS: tuple[tuple[int, int], tuple[int, int]] = ((1, 9), (1, 10))

try:  # scikit-learn's private helpers; see the module docstring for why and how they are guarded
    from sklearn.base import _fit_context
    from sklearn.ensemble._bootstrap import _get_n_samples_bootstrap
    from sklearn.ensemble._forest import MAX_INT, _parallel_build_trees
    from sklearn.utils.validation import _check_sample_weight, validate_data

    _IMPORT_ERROR: ImportError | None = None
except ImportError as exc:  # pragma: no cover - only on unsupported versions
    _IMPORT_ERROR = exc
    # Keep ``import forest`` working (a saved model still loads); check_sklearn_version raises.
    MAX_INT = _get_n_samples_bootstrap = _parallel_build_trees = None  # type: ignore[assignment]
    _check_sample_weight = validate_data = None  # type: ignore[assignment]

    def _fit_context(**_kwargs):  # type: ignore[no-redef]
        return lambda fit: fit


class UnsupportedSklearnVersion(RuntimeError):
    """The installed scikit-learn's forest scheme is not one this package knows to reproduce."""


def _minor_version(version: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise UnsupportedSklearnVersion(f"cannot parse scikit-learn version {version!r}")
    return int(match.group(1)), int(match.group(2))


def check_sklearn_version(version: str | None = None) -> None:
    """Raise :class:`UnsupportedSklearnVersion` unless ``version`` (default: installed) is known."""
    version = sklearn.__version__ if version is None else version
    first, last = SKLEARN_VERSIONS
    if not first <= _minor_version(version) < last or _IMPORT_ERROR is not None:
        raise UnsupportedSklearnVersion(
            f"forest reproduces scikit-learn's forests exactly only for scikit-learn "
            f">={first[0]}.{first[1]},<{last[0]}.{last[1]}; found {version}"
            + (f" ({_IMPORT_ERROR})" if _IMPORT_ERROR else "")
            + ". Install a supported version, or read sklearn/ensemble/_forest.py of this one "
            "and extend forest/seeding.py.")


def draw_trees(forest: Any, n_existing: int, n_new: int) -> list:
    """The ``n_new`` unfitted trees scikit-learn would grow next, each carrying its seed.

    ``forest`` is a scikit-learn forest with ``estimator_`` validated; ``n_existing`` trees were
    grown before (warm start). Mirrors the seed part of ``BaseForest.fit``.
    """
    random_state = check_random_state(forest.random_state)
    if n_existing:
        # scikit-learn burns these draws to continue the seed sequence of a warm start.
        random_state.randint(MAX_INT, size=n_existing)
    return [forest._make_estimator(append=False, random_state=random_state) for _ in range(n_new)]


def grove_slices(n_trees: int, grove_size: int) -> list[slice]:
    """Consecutive slices of at most ``grove_size`` trees: ``ceil(n_trees / grove_size)`` groves."""
    return [slice(start, min(start + grove_size, n_trees)) for start in range(0, n_trees, grove_size)]

