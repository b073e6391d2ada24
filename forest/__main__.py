"""Command-line demo: train a grove forest on scikit-learn's digits and save it.

    python -m forest train NAME [--trees 500] [--grove 10] [--predict] [--workers 2]
                                [--models models] [--seed 0]

Holds out a quarter of digits (stratified), grows ``--trees`` trees in groves of ``--grove`` on a
local lambdamap Executor with joblib's progress messages, prints the held-out accuracy, the grove count and
timings, and saves the model as ``<models>/NAME.pkl`` (``--models`` may be ``s3://bucket/prefix``).
``--predict`` also predicts the held-out set distributed (one call per grove) and checks that it
equals the local prediction.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .estimators import GroveForestClassifier
from .seeding import grove_slices


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m forest", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train on digits with a held-out split and save")
    train.add_argument("name", help="model name: saved as <models>/NAME.pkl")
    train.add_argument("--trees", type=int, default=500, help="number of trees (default 500)")
    train.add_argument("--grove", type=int, default=10, help="trees per call (default 10)")
    train.add_argument("--predict", action="store_true",
                       help="also predict the held-out set distributed, one call per grove")
    train.add_argument("--workers", type=int, default=2, help="local worker processes (default 2)")
    train.add_argument("--models", default="models",
                       help="folder or s3://bucket/prefix for saved models (default ./models)")
    train.add_argument("--seed", type=int, default=0, help="random_state of split and forest")
    return parser


def train(args: argparse.Namespace) -> None:
    from lambdamap import Executor

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, stratify=y, random_state=args.seed)
    n_groves = len(grove_slices(args.trees, args.grove))
    print(f"digits: {len(X_train)} train / {len(X_test)} held-out samples, {X.shape[1]} features; "
          f"{args.trees} trees in {n_groves} groves of <= {args.grove}")
    with Executor(workers=args.workers) as executor:
        model = GroveForestClassifier(n_estimators=args.trees, grove_size=args.grove,
                                      random_state=args.seed, executor=executor, verbose=1)
        started = time.perf_counter()
        model.fit(X_train, y_train)
        fit_seconds = time.perf_counter() - started
        model.set_params(verbose=0)  # the messages were for fitting; keep joblib quiet predicting

        started = time.perf_counter()
        predicted = model.predict(X_test)
        predict_seconds = time.perf_counter() - started
        print(f"accuracy {np.mean(predicted == y_test):.4f} on the held-out set")
        print(f"fit {fit_seconds:.2f} s ({n_groves} grove calls), "
              f"predict {predict_seconds:.3f} s (local)")
        if args.predict:
            started = time.perf_counter()
            remote = model.predict(X_test, distributed=True)
            seconds = time.perf_counter() - started
            same = "equal to" if np.array_equal(remote, predicted) else "DIFFERENT FROM"
            print(f"distributed predict {seconds:.2f} s ({n_groves} grove calls), {same} local")
        calls = executor.metrics()
        if len(calls):
            print(f"calls: {len(calls)}, median duration {calls['duration'].median():.2f} s, "
                  f"peak worker memory {calls['peak_memory_mb'].max():.0f} MB")

    uri = f"{args.models.rstrip('/')}/{args.name}.pkl"
    started = time.perf_counter()
    model.save(uri)
    print(f"saved {uri} in {time.perf_counter() - started:.2f} s")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "train":
        train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
