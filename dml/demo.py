"""The bonus case study on the embedded backend: ``python -m dml.demo`` (``make demo``).

DoubleML's getting-started example (the Pennsylvania reemployment bonus experiment, PLR with random
forests), with its cross-fitting fanned out over local worker processes by lambdamap. DoubleML's
published result for one repetition is -0.0756 (se 0.0354); with repetitions the median estimate
stays near it. About a minute on 2 cores with the defaults.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time

import numpy as np
from sklearn.ensemble import RandomForestRegressor

from lambdamap import Executor

from .data import load_bonus
from .models import DoubleMLPLRServerless


def main(argv: list[str] | None = None, executor: Executor | None = None) -> DoubleMLPLRServerless:
    """Fit the case study and print the summary table and the metrics (on ``executor`` if given)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-rep", type=int, default=10, help="repeated sample splits (default 10)")
    parser.add_argument("--n-folds", type=int, default=5)
    parser.add_argument("--trees", type=int, default=500, help="trees per random forest (default 500)")
    parser.add_argument("--workers", type=int, default=None, help="local worker processes (default: one per core)")
    parser.add_argument("--granularity", default="auto", choices=["auto", "fold", "rep"])
    parser.add_argument("--timeline", metavar="PNG", default=os.path.join(tempfile.gettempdir(), "dml-demo-timeline.png"),
                        help="where to draw the fit's timeline (default: in the temp folder; '' for none)")
    args = parser.parse_args(argv)

    data = load_bonus()
    # the getting-started learner, with integer seeds so that the result is reproducible
    def forest(seed: int) -> RandomForestRegressor:
        return RandomForestRegressor(n_estimators=args.trees, max_features="sqrt", max_depth=5, random_state=seed)

    print(f"Bonus experiment: {data.n_obs} rows, y = {data.y_col}, d = {data.d_cols[0]}, {len(data.x_cols)} covariates")
    print(f"PLR, random forests ({args.trees} trees), {args.n_folds} folds x {args.n_rep} repetitions: "
          f"{2 * args.n_folds * args.n_rep} fits")
    with (contextlib.nullcontext(executor) if executor else Executor(workers=args.workers)) as executor:
        np.random.seed(3141)  # the sample splits, as in DoubleML's getting-started example
        model = DoubleMLPLRServerless(data, forest(1), forest(2), n_folds=args.n_folds, n_rep=args.n_rep,
                                      executor=executor, granularity=args.granularity)
        start = time.perf_counter()
        model.fit()
        print(f"fitted in {time.perf_counter() - start:.1f} s\n")
    print(model.summary.round(4).to_string())
    print("\nRemote work (cost: Lambda and S3 at the published AWS prices, x86, at the assumed memory size):")
    print(model.metrics.to_string())
    if args.timeline:
        from lambdamap.timeline import plot

        plot(model.task_metrics, args.timeline, title="dml demo: cross-fitting tasks per worker")
        print(f"\ntimeline of the fit (tasks per worker, concurrency): {args.timeline}")
    return model


if __name__ == "__main__":
    main()
