"""dml: DoubleML whose cross-fitting fans out through lambdamap, with estimates identical to doubleml.

Example::

    from lambdamap import Executor
    from sklearn.ensemble import RandomForestRegressor
    from dml import DoubleMLPLRServerless, load_bonus

    model = DoubleMLPLRServerless(load_bonus(), RandomForestRegressor(500, random_state=1),
                                  RandomForestRegressor(500, random_state=2), n_folds=5, n_rep=100,
                                  executor=Executor())
    model.fit()
    print(model.summary)
    print(model.metrics)

See docs/dml.md for the supported models, the granularity rule and the guarantees.

Modules: :mod:`dml.plans` (what each doubleml model fits), :mod:`dml.tasks` (the remote
fit+predict), :mod:`dml.crossfit` (fan-out and assembly), :mod:`dml.models` (the classes),
:mod:`dml.metrics` (cost and usage), :mod:`dml.data` (bonus data, S3 data), :mod:`dml.demo`,
:mod:`dml.randomness` (which unseeded randomness warns), :mod:`dml.tuning` (``tune`` fanned out),
:mod:`dml.compat` (the doubleml versions read and tested).
"""
import importlib

# Names are imported on first use: a worker unpickling dml.tasks.fit_predict imports this package,
# and should not pay for importing doubleml and pandas (about a second of every cold start).
_EXPORTS = {
    "DoubleMLDataS3": "dml.data", "load_bonus": "dml.data",
    "ServerlessMixin": "dml.models", "SUPPORTED": "dml.models", "UNSUPPORTED": "dml.models",
    "DoubleMLPLRServerless": "dml.models", "DoubleMLPLIVServerless": "dml.models",
    "DoubleMLPLPRServerless": "dml.models", "DoubleMLIRMServerless": "dml.models",
    "DoubleMLIIVMServerless": "dml.models", "DoubleMLAPOServerless": "dml.models",
    "DoubleMLDIDServerless": "dml.models", "DoubleMLDIDCSServerless": "dml.models",
    "DoubleMLDIDBinaryServerless": "dml.models", "DoubleMLDIDCSBinaryServerless": "dml.models",
    "DoubleMLAPOSServerless": "dml.models", "DoubleMLDIDMultiServerless": "dml.models",
    "DoubleMLQTEServerless": "dml.models", "ServerlessCompositeMixin": "dml.models",
    "DOUBLEML_VERSIONS": "dml.compat", "UnsupportedDoubleMLVersion": "dml.compat",
    "check_doubleml_version": "dml.compat", "unseeded_sources": "dml.randomness",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dml' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
