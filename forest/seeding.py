"""scikit-learn's random scheme for forests, and what keeps groves exact.

A grove forest equals scikit-learn's forest tree for tree because it *is* scikit-learn's
``BaseForest.fit``: only the ``joblib.Parallel`` loop that grows the trees runs elsewhere, on
lambdamap's joblib backend, one call per grove (see forest/estimators.py). Nothing of the scheme
is re-implemented here; it is worth knowing why the grouping cannot change a tree. As of
scikit-learn 1.9 (``sklearn/ensemble/_forest.py``):

1. ``random_state = check_random_state(self.random_state)``; with ``warm_start``, first burn
   ``random_state.randint(MAX_INT, size=len(existing_trees))``.
2. One seed per new tree, in tree order, drawn in the client before the loop:
   ``_make_estimator`` -> ``_set_random_states`` stores ``random_state.randint(MAX_INT)`` as the
   tree's ``random_state``.
3. Each tree draws its bootstrap indices from its own seed, independently of the others
   (``_parallel_build_trees`` -> ``_generate_sample_indices``), wherever it runs; joblib returns
   the trees in task order.

So the trees can grow in any process, in any grouping, and still be the same trees, *provided
the process runs the same scikit-learn*: the tree code, the bootstrap draw and the splitter are
scikit-learn's, and they change between versions (1.9 introduced the weighted bootstrap draw,
for instance). Rather than silently growing a different forest, a fit

* refuses on the client, before anything is invoked, when the executor's runtime reports another
  scikit-learn (``Backend.runtime_versions()``; an in-process executor is this process);
* checks again on the worker, before the trees are unpickled, and fails with a
  ``lambdamap.RuntimeMismatchError`` that names both versions (this also covers a runtime whose
  versions are unknown to the client, or that changed behind the deployment's back).
"""
from __future__ import annotations

from importlib import metadata


def sklearn_requirement() -> dict[str, str]:
    """``{"scikit-learn": <this client's version>}``: what a runtime must have to grow our trees."""
    return {"scikit-learn": metadata.version("scikit-learn")}


def grove_slices(n_trees: int, grove_size: int) -> list[slice]:
    """Consecutive slices of at most ``grove_size`` trees: ``ceil(n_trees / grove_size)`` groves."""
    return [slice(start, min(start + grove_size, n_trees)) for start in range(0, n_trees, grove_size)]
