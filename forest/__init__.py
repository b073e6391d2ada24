"""Grove-based random forests on lambdamap, equal to scikit-learn's forests tree for tree.

    from forest import GroveForestClassifier
    clf = GroveForestClassifier(n_estimators=500, grove_size=10, random_state=0, executor=ex)
    clf.fit(X, y).predict(X_test)
    clf.to_sklearn()            # a plain, fitted RandomForestClassifier

See docs/forest.md.
"""
from .estimators import GroveForestClassifier, GroveForestRegressor
from .executors import InlineExecutor
from .persist import load
from .search import GroveGridSearchCV

__all__ = [
    "GroveForestClassifier", "GroveForestRegressor", "GroveGridSearchCV", "InlineExecutor", "load",
]
