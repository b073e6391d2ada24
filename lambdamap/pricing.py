"""Published AWS prices, to turn what a job did into an estimated bill (:mod:`lambdamap.cost`).

The constants are the on-demand prices in us-east-1: Lambda's first usage tier (the first 6
billion GB-seconds a month), as published on https://aws.amazon.com/lambda/pricing/, and S3
Standard's request prices, as published on https://aws.amazon.com/s3/pricing/. They exclude the
free tiers, S3 storage (a job's objects live minutes), ephemeral storage above 512 MB and data
transfer (free between Lambda and S3 in one region). Update them here if AWS changes its prices;
nothing else in the project hard-codes a price.
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
#: Since August 1, 2025 Lambda bills the INIT phase of a cold start (a new execution environment)
#: as duration at the function's memory, like the invocation itself, for every runtime and
#: package type (https://aws.amazon.com/blogs/compute/aws-lambda-standardizes-billing-for-init-phase/).
#: lambdamap's runtime measures its own start-up; this many seconds are assumed for a cold start
#: it did not measure (a Python runtime importing numpy and friends takes about that long).
INIT_SECONDS_ESTIMATE = 1.0

#: USD per S3 PUT (also COPY and POST) request: $0.005 per 1,000.
PRICE_PER_S3_PUT = 0.005 / 1000
#: USD per S3 LIST request: $0.005 per 1,000, as PUT.
PRICE_PER_S3_LIST = 0.005 / 1000
#: USD per S3 GET request (and HEAD, and every other kind not named here): $0.0004 per 1,000.
#: DELETE requests are free.
PRICE_PER_S3_GET = 0.0004 / 1000


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
