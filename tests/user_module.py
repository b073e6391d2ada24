"""A user's helper module for tests/test_serialization.py.

The test process imports it (pytest puts ``tests/`` on ``sys.path``); local workers cannot, as a
Lambda container could not import a script's helper module: whatever of it a call needs must
travel by value.
"""
from __future__ import annotations

import logging

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin


def add(a, b):
    return a + b


class Scaler:
    def __init__(self, factor):
        self.factor = factor

    def scale(self, x):
        return self.factor * x

    @classmethod
    def doubling(cls, x):
        return cls(2).scale(x)


def boom(x):
    y = x + 1
    raise ValueError(f"boom {y}")


def log_some(x):
    log = logging.getLogger("user.module")
    log.debug("a debug record %s", x)
    log.info("an info record %s", x)
    log.warning("a warning record %s", x)
    return logging.getLogger().level


class MeanLearner(RegressorMixin, BaseEstimator):
    """A user-defined learner (for dml): predicts the training mean."""

    def fit(self, X, y):
        self.mean_ = float(np.mean(y))
        return self

    def predict(self, X):
        return np.full(len(X), self.mean_)
