"""The usage log's latency histogram: fixed log-spaced buckets, merged by adding, read as percentiles.

Bucket i (0..BUCKETS-1) holds latencies in [LOW_MS * R**i, LOW_MS * R**(i+1)) with R = 10**(1/20): 20
buckets a decade from 0.1 ms to 1,000 s (140 buckets); below 0.1 ms counts in bucket 0, above 1,000 s in the
last. A percentile is read by nearest rank over the counts (the rank's bucket is exact) and reported as the
bucket's geometric midpoint, clamped to the lowest and highest latency seen: for a latency inside the range
the relative error is at most sqrt(R) - 1 = 5.9 % (high) or 1 - 1/sqrt(R) = 5.6 % (low).
Stored sparse, as {bucket index: count}: a minute of one key's calls to one service touches a few buckets.
"""
from __future__ import annotations

import math
from collections import Counter

LOW_MS = 0.1             # the lowest bucket's lower bound
PER_DECADE = 20          # buckets per factor of 10: R = 10**(1/20) = 1.122
BUCKETS = 7 * PER_DECADE   # 0.1 ms .. 1,000 s (past any reply timeout)
RATIO = 10 ** (1 / PER_DECADE)
MAX_ERROR = math.sqrt(RATIO) - 1   # 0.0593: the bound on a percentile's relative error (docs/API.md)


def bucket_of(latency_ms: float) -> int:
    """The bucket a latency counts in (out-of-range latencies in the first or last bucket)."""
    if not latency_ms > LOW_MS:   # also NaN and negatives
        return 0
    return min(BUCKETS - 1, int(math.floor(PER_DECADE * math.log10(latency_ms / LOW_MS))))


def bounds(index: int) -> tuple[float, float]:
    """The bucket's lower and upper bound in ms."""
    return LOW_MS * RATIO ** index, LOW_MS * RATIO ** (index + 1)


def midpoint(index: int) -> float:
    """The value a percentile in this bucket reports: its geometric midpoint."""
    return LOW_MS * RATIO ** (index + 0.5)


def percentile(hist: Counter | dict, q: float, low: float | None = None, high: float | None = None) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty histogram, clamped to [low, high] when known."""
    total = sum(hist.values())
    if total <= 0:
        raise ValueError("percentile of an empty histogram")
    rank = max(1, math.ceil(q / 100 * total))
    seen = 0
    for index in sorted(hist):
        seen += hist[index]
        if seen >= rank:
            value = midpoint(index)
            break
    if low is not None:
        value = max(value, low)
    if high is not None:
        value = min(value, high)
    return value


def to_attr(hist: Counter) -> dict:
    """The DynamoDB map attribute of a histogram (empty buckets left out)."""
    return {"M": {str(i): {"N": str(n)} for i, n in sorted(hist.items()) if n}}


def from_attr(attr: dict) -> Counter:
    """A histogram from its DynamoDB map attribute (bucket indexes out of range are ignored)."""
    out: Counter = Counter()
    for key, value in attr.get("M", {}).items():
        if key.isdigit() and int(key) < BUCKETS:
            out[int(key)] += int(value["N"])
    return out
