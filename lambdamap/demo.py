"""A short tour of lambdamap on the embedded local backend: ``python -m lambdamap.demo``."""
from __future__ import annotations

import random
import time

from lambdamap import Executor


def estimate_pi(seed: int, draws: int = 200_000) -> float:
    """One Monte Carlo estimate of pi from ``draws`` points."""
    rng = random.Random(seed)
    inside = sum(rng.random() ** 2 + rng.random() ** 2 <= 1.0 for _ in range(draws))
    return 4.0 * inside / draws


def main() -> None:
    with Executor() as ex:
        start = time.perf_counter()
        squares = list(ex.map(lambda x: x * x, range(1000)))
        print(f"1,000 trivial calls: {time.perf_counter() - start:.2f} s, sum = {sum(squares)}")
        print("submit(pow, 2, 10) ->", ex.submit(pow, 2, 10).result())
        estimates = list(ex.map(estimate_pi, range(16), progress=True))
        print(f"pi ~ {sum(estimates) / len(estimates):.4f} from 16 calls")
        print(ex.metrics()[["call_id", "duration", "worker", "warm", "bytes_in", "bytes_out"]].tail())


if __name__ == "__main__":
    main()
