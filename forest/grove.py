"""What runs remotely besides scikit-learn's own tree fitting: predicting with one grove.

A plain module-level function of an installed package, so lambdamap sends it by reference; the
runtime imports ``forest`` (it is one of lambdamap's runtime packages).
"""
from __future__ import annotations

from typing import Any


def predict_grove(X: Any, trees: list, method: str) -> list:
    """Each tree's ``method`` ("predict" or "predict_proba") on validated ``X``, in tree order.

    Per-tree outputs, not their sum, come back so that the caller can add them in scikit-learn's
    order: floating-point addition is not associative, and we want equal, not nearly equal.
    """
    return [getattr(tree, method)(X, check_input=False) for tree in trees]
