"""Log-bucketed latency histograms: record, merge, quantiles.

Buckets are those of :func:`antifragile.models.learning.latency_bounds_ms`: bucket ``i``
holds the latencies ``v`` with ``bounds[i-1] < v <= bounds[i]`` (bucket 0 everything up to
0.1 ms, the last bucket everything above its lower bound, ~88 s included).

**Quantile estimate.** :func:`quantile_ms` uses the nearest-rank definition (the
``ceil(q × n)``-th smallest value; Hyndman & Fan 1996, definition 1 - the one
HdrHistogram and Prometheus-style bucket reports use) and returns the *upper bound of the
bucket holding that rank*. The true quantile lies in that bucket, so the estimate is never
below it and at most one bucket ratio (2^(1/4), +19 %) above it: conservative, which is
what a timeout derived from it needs (a timeout set a little high costs a slower failure;
one set low fails healthy calls). Interpolating inside a bucket would assume a shape the
histogram does not record.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable
from fractions import Fraction
from functools import cache

from antifragile.models.learning import LATENCY_BUCKETS, LatencyHistogram, latency_bounds_ms


@cache
def _bounds() -> tuple[float, ...]:
    return tuple(latency_bounds_ms())


def bucket_index(value_ms: float) -> int:
    """The bucket a latency of ``value_ms`` milliseconds falls in (0 .. LATENCY_BUCKETS-1).

    Raises:
        ValueError: ``value_ms`` is negative or not finite (NaN, infinity).
    """
    if not math.isfinite(value_ms) or value_ms < 0:
        raise ValueError(f"a latency is a finite number of ms >= 0, got {value_ms!r}")
    return min(bisect_left(_bounds(), value_ms), LATENCY_BUCKETS - 1)


def record(histogram: LatencyHistogram, value_ms: float, count: int = 1) -> LatencyHistogram:
    """A new histogram: ``histogram`` plus ``count`` latencies of ``value_ms`` ms.

    Raises:
        ValueError: ``value_ms`` is negative or not finite, or ``count`` is negative.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    index = bucket_index(value_ms)
    counts = list(histogram.counts)
    if len(counts) <= index:
        counts.extend([0] * (index + 1 - len(counts)))
    counts[index] += count
    return LatencyHistogram(counts=counts)


def merge(histograms: Iterable[LatencyHistogram]) -> LatencyHistogram:
    """The bucket-wise sum of ``histograms`` (an empty histogram for none).

    Trailing empty buckets are dropped, so equal contents give equal models.
    """
    counts: list[int] = []
    for histogram in histograms:
        if len(counts) < len(histogram.counts):
            counts.extend([0] * (len(histogram.counts) - len(counts)))
        for i, c in enumerate(histogram.counts):
            counts[i] += c
    while counts and counts[-1] == 0:
        counts.pop()
    return LatencyHistogram(counts=counts)


def total(histogram: LatencyHistogram) -> int:
    """Number of latencies recorded."""
    return sum(histogram.counts)


def _fraction(q: float | str | Fraction) -> Fraction:
    if isinstance(q, float):
        # The decimal the float stands for (0.999, not 0.99899999999999999911).
        return Fraction(format(q, ".15g"))
    return Fraction(q)


def quantile_ms(histogram: LatencyHistogram, q: float | str | Fraction) -> float | None:
    """The ``q``-quantile of the recorded latencies, in ms: a conservative bucket bound.

    Nearest rank: rank ``r = max(1, ceil(q × n))`` computed exactly (``q`` as a fraction;
    a float is read as the decimal it stands for), then the upper bound of the first
    bucket whose cumulative count reaches ``r``. For the last bucket (open above) its
    upper bound ~88 s is returned: a lower bound of the true value.

    Args:
        histogram: The latencies.
        q: The quantile, 0 <= q <= 1 (``"0.999"`` or ``Fraction(999, 1000)`` for p99.9).

    Returns:
        The estimate in ms, or None when the histogram is empty.

    Raises:
        ValueError: ``q`` is outside [0, 1].
    """
    fraction = _fraction(q)
    if not 0 <= fraction <= 1:
        raise ValueError(f"a quantile is in [0, 1], got {q!r}")
    n = total(histogram)
    if n == 0:
        return None
    rank = max(1, math.ceil(fraction * n))
    seen = 0
    for i, c in enumerate(histogram.counts):
        seen += c
        if seen >= rank:
            return _bounds()[i]
    raise AssertionError("unreachable: the rank is at most the total")  # pragma: no cover


def describe(histogram: LatencyHistogram) -> str:
    """One line for people: ``p50 ≤X ms p99 ≤Y ms p99.9 ≤Z ms (N calls)``, or ``-``.

    Each quantile as :func:`quantile_ms` gives it (a bucket's upper bound, hence ``≤``).
    """
    marks = [("p50", "0.5"), ("p99", "0.99"), ("p99.9", "0.999")]
    found = [(name, quantile_ms(histogram, q)) for name, q in marks]
    if any(value is None for _, value in found):
        return "-"
    calls = sum(histogram.counts)
    return f"{' '.join(f'{n} ≤{v:g} ms' for n, v in found)} ({calls:,} calls)"
