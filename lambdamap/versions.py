"""Which versions of the packages results depend on: the same code must run on both sides.

cloudpickle needs the same Python minor version on client and runtime; numerical results need
the same numpy, scipy, pandas and scikit-learn. Both sides describe themselves with
:func:`installed_versions`; deployments and runtimes record it so that the client can compare.
"""
from __future__ import annotations

from importlib import metadata
from typing import Iterable

#: Distributions whose versions decide whether results travel and agree.
RESULT_PACKAGES = ("cloudpickle", "numpy", "scipy", "pandas", "scikit-learn", "lambdamap")


def installed_versions(names: Iterable[str] = RESULT_PACKAGES) -> dict[str, str | None]:
    """``{distribution: version}`` in this interpreter; None for a distribution not installed.

    Example::

        >>> installed_versions(["numpy"])            # doctest: +SKIP
        {'numpy': '2.4.6'}
    """
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
