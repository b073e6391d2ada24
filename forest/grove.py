"""What runs remotely: growing one grove, and predicting with one grove.

Both functions are plain module-level functions of an installed package, so lambdamap sends them
by reference; the runtime imports ``forest`` (it is one of lambdamap's runtime packages).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .seeding import _parallel_build_trees


@dataclass(frozen=True)
class TrainingSet:
    """Everything every grove of one fit needs; uploaded once per fit with ``executor.put``.

    The arrays are already what scikit-learn's ``BaseForest.fit`` hands its trees: ``X`` as
    float32 (CSC if sparse), ``y`` encoded as contiguous float64 of shape (n_samples, n_outputs),
    ``sample_weight`` the user's weights times the expanded class weights (or None).
    """

    X: Any
    y: np.ndarray
    sample_weight: np.ndarray | None
    missing_values_in_feature_mask: np.ndarray | None
    bootstrap: bool
    class_weight: Any
    n_samples_bootstrap: int | None
    n_trees: int  # trees grown in this fit, for scikit-learn's verbose messages
    verbose: int = 0


def grow_grove(data: TrainingSet, trees: list, first: int) -> list:
    """Fit ``trees`` (unfitted, seeded; tree indices ``first, first+1, ...``) and return them.

    Each tree is grown by scikit-learn's own ``_parallel_build_trees``, which draws the tree's
    bootstrap sample from the tree's seed: the grouping into groves cannot change any tree.
    """
    for index, tree in enumerate(trees, start=first):
        _parallel_build_trees(
            tree, data.bootstrap, data.X, data.y, data.sample_weight, index, data.n_trees,
            verbose=data.verbose, class_weight=data.class_weight,
            n_samples_bootstrap=data.n_samples_bootstrap,
            missing_values_in_feature_mask=data.missing_values_in_feature_mask,
        )
    return trees


def predict_grove(X: Any, trees: list, method: str) -> list:
    """Each tree's ``method`` ("predict" or "predict_proba") on validated ``X``, in tree order.

    Per-tree outputs, not their sum, come back so that the caller can add them in scikit-learn's
    order: floating-point addition is not associative, and we want equal, not nearly equal.
    """
    return [getattr(tree, method)(X, check_input=False) for tree in trees]
