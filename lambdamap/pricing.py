"""Published AWS Lambda prices, to turn measured call durations into an estimated bill.

The constants are the on-demand prices of the first usage tier (the first 6 billion GB-seconds a
month) in us-east-1, as published on https://aws.amazon.com/lambda/pricing/. They exclude the free
tier, ephemeral storage above 512 MB, data transfer and the S3 requests that lambdamap makes. Update
them here if AWS changes its prices; nothing else in the project hard-codes a price.
"""
from __future__ import annotations

import math
from typing import Iterable

#: USD per GB-second of billed duration, by CPU architecture.
PRICE_PER_GB_SECOND = {"x86_64": 0.0000166667, "arm64": 0.0000133334}
#: USD per request (invocation): $0.20 per 1 million requests, the same for both architectures.
PRICE_PER_REQUEST = 0.20 / 1_000_000
#: Lambda bills duration rounded up to the next millisecond.
BILLING_GRANULARITY_S = 0.001


def billed_gb_seconds(durations_s: Iterable[float], memory_mb: float) -> float:
    """GB-seconds that Lambda bills for calls of these durations at ``memory_mb`` of configured memory."""
    billed_s = sum(math.ceil(round(d / BILLING_GRANULARITY_S, 6)) * BILLING_GRANULARITY_S for d in durations_s)
    return billed_s * memory_mb / 1024.0


def lambda_cost(durations_s: Iterable[float], memory_mb: float, arch: str = "x86_64") -> float:
    """Estimated USD cost of one invocation per duration: billed GB-seconds plus the request fee.

    >>> round(lambda_cost([1.0] * 1000, memory_mb=1024), 6)   # 1,000 one-second calls at 1 GB
    0.016867
    """
    if arch not in PRICE_PER_GB_SECOND:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(PRICE_PER_GB_SECOND)}")
    durations = list(durations_s)
    return billed_gb_seconds(durations, memory_mb) * PRICE_PER_GB_SECOND[arch] + len(durations) * PRICE_PER_REQUEST
