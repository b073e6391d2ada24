"""Saving and loading grove forests, to a local path or ``s3://bucket/key``.

A saved model is one pickle of a plain dict holding the plain scikit-learn forest
(:meth:`to_sklearn`) and the grove settings, so it unpickles with scikit-learn alone::

    {"format": "forest/1", "class": "GroveForestClassifier", "grove_size": 10,
     "sklearn_version": "1.9.1", "forest": RandomForestClassifier(...)}

Bytes go through lambdamap's storage layer (``storage_for_uri``), which picks local files or S3
(honouring ``LAMBDAMAP_S3_ENDPOINT_URL``). Like any pickle, only load models you trust.
"""
from __future__ import annotations

import pickle
from typing import Any

import sklearn

FORMAT = "forest/1"


def save(model: Any, uri: str) -> None:
    """Write a fitted grove forest to ``uri`` (a local path or ``s3://bucket/key``)."""
    from lambdamap.storage import storage_for_uri

    payload = {"format": FORMAT, "class": type(model).__name__, "grove_size": model.grove_size,
               "sklearn_version": sklearn.__version__, "forest": model.to_sklearn()}
    storage, key = storage_for_uri(uri)
    storage.put(key, pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))


def load(uri: str, executor: Any = None) -> Any:
    """Read a model written by :func:`save`; ``executor`` is set on the returned estimator."""
    from lambdamap.storage import storage_for_uri

    from .estimators import GroveForestClassifier, GroveForestRegressor

    storage, key = storage_for_uri(uri)
    payload = pickle.loads(storage.get(key))
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{uri} is not a model saved by forest (format {FORMAT})")
    classes = {cls.__name__: cls for cls in (GroveForestClassifier, GroveForestRegressor)}
    return classes[payload["class"]].from_sklearn(
        payload["forest"], grove_size=payload["grove_size"], executor=executor)
