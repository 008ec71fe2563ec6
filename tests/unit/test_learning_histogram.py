"""Latency histograms: bucket placement, record, merge and nearest-rank quantiles."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from antifragile.learning.histogram import bucket_index, merge, quantile_ms, record, total
from antifragile.models.learning import LATENCY_BUCKETS, LatencyHistogram, latency_bounds_ms

BOUNDS = latency_bounds_ms()


@pytest.mark.parametrize(
    ("value_ms", "index"),
    [
        (0.0, 0),
        (0.05, 0),
        (BOUNDS[0], 0),  # a bound belongs to its own bucket (upper bounds are inclusive)
        (math.nextafter(BOUNDS[0], 1.0), 1),
        (BOUNDS[10], 10),
        (math.nextafter(BOUNDS[10], 1e9), 11),
        (BOUNDS[-1], LATENCY_BUCKETS - 1),
        (1e12, LATENCY_BUCKETS - 1),  # slower than the last bound: the last bucket
    ],
)
def test_bucket_index(value_ms: float, index: int) -> None:
    assert bucket_index(value_ms) == index


@pytest.mark.parametrize("bad", [-0.001, math.nan, math.inf])
def test_bucket_index_refuses_impossible_latencies(bad: float) -> None:
    with pytest.raises(ValueError, match="latency"):
        bucket_index(bad)


def test_record_returns_a_new_histogram() -> None:
    empty = LatencyHistogram()
    one = record(empty, 1.0)
    assert empty.counts == []
    assert total(one) == 1 and one.counts[bucket_index(1.0)] == 1
    assert record(one, 1.0, count=3).counts[bucket_index(1.0)] == 4
    with pytest.raises(ValueError, match="count"):
        record(empty, 1.0, count=-1)


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([], []),
        ([[]], []),
        ([[1, 2], [0, 0, 3]], [1, 2, 3]),
        ([[0, 0, 0], [0]], []),  # trailing empty buckets are dropped
        ([[5], [1, 0, 0, 0]], [6]),
    ],
)
def test_merge(parts: list[list[int]], expected: list[int]) -> None:
    assert merge(LatencyHistogram(counts=c) for c in parts).counts == expected


@pytest.mark.parametrize(
    ("counts", "q", "expected_bucket"),
    [
        ([1], "0.5", 0),  # a single value: every quantile is its bucket
        ([1], "0", 0),
        ([1], "1", 0),
        ([0, 0, 1], "0.999", 2),
        # 100 values: p99 is the 99th smallest (rank ceil(0.99 × 100) = 99) ...
        ([98, 1, 1], "0.99", 1),
        # ... and p99.9 the 100th (rank ceil(99.9) = 100): exact fractions, no float drift.
        ([98, 1, 1], "0.999", 2),
        ([50, 50], "0.5", 0),  # rank 50 exactly at the end of bucket 0: tie stays low
        ([50, 50], "0.51", 1),
    ],
)
def test_quantile_is_the_upper_bound_of_the_rank_s_bucket(
    counts: list[int], q: str, expected_bucket: int
) -> None:
    assert quantile_ms(LatencyHistogram(counts=counts), q) == BOUNDS[expected_bucket]


def test_quantile_of_nothing_is_none_and_q_is_checked() -> None:
    assert quantile_ms(LatencyHistogram(), "0.5") is None
    with pytest.raises(ValueError, match="quantile"):
        quantile_ms(LatencyHistogram(counts=[1]), Fraction(3, 2))


def test_a_float_quantile_means_its_decimal() -> None:
    # 0.999 as a float is 0.99899999999999999911...: read as 999/1000, rank 1000 of 1000.
    h = LatencyHistogram(counts=[999, 1])
    assert quantile_ms(h, 0.999) == BOUNDS[0]
    assert quantile_ms(h, 1.0) == BOUNDS[1]


def test_quantile_is_conservative_within_one_bucket() -> None:
    for value in (0.3, 7.0, 123.4, 5000.0):
        estimate = quantile_ms(record(LatencyHistogram(), value), "0.5")
        assert estimate is not None
        assert value <= estimate <= value * 2 ** (1 / 4) * (1 + 1e-12)


def test_describe_gives_the_three_quantiles_or_a_dash() -> None:
    from antifragile.learning.histogram import describe

    assert describe(LatencyHistogram()) == "-"
    one = record(LatencyHistogram(), 0.05)
    assert describe(one) == "p50 ≤0.1 ms p99 ≤0.1 ms p99.9 ≤0.1 ms (1 calls)"
