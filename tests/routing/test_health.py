"""The health hash format: latency buckets, their bounds, the p99 estimate and its error bound."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.health import (
    HEALTH_TTL,
    LATENCY_BUCKETS,
    LATENCY_FIELDS,
    Health,
    bucket_bounds,
    latency_bucket,
    quantile_ms,
    sum_health,
)


def test_buckets_tile_the_line_without_gaps_or_overlaps() -> None:
    assert bucket_bounds(0) == (0.0, 0.1)
    upper = 0.0
    for i in range(LATENCY_BUCKETS):
        lo, hi = bucket_bounds(i)
        assert math.isclose(lo, upper, abs_tol=1e-9), (i, lo, upper)
        assert hi > lo
        if i >= 4 and not math.isinf(hi):
            assert (hi - lo) / lo <= 0.25 + 1e-12, i  # never wider than 25 % of its lower edge
        upper = hi
    assert math.isinf(upper)
    assert bucket_bounds(LATENCY_BUCKETS - 1)[0] == pytest.approx(183_500.8)
    with pytest.raises(ValueError):
        bucket_bounds(LATENCY_BUCKETS)


@pytest.mark.parametrize(
    ("ms", "bucket"),
    [
        (-1.0, 0),
        (0.0, 0),
        (0.05, 0),
        (0.1, 1),
        (0.39, 3),
        (0.4, 4),
        (0.79, 7),
        (0.8, 8),
        (1.0, 9),
        (10.4, 22),
        (300.0, 41),
        (1e9, LATENCY_BUCKETS - 1),
    ],
)
def test_known_buckets(ms: float, bucket: int) -> None:
    assert latency_bucket(ms) == bucket
    lo, hi = bucket_bounds(bucket)
    if ms >= 0:
        assert lo <= ms < hi or (bucket == 0 and ms < 0.1)


@given(st.floats(min_value=0.0, max_value=1e7, allow_nan=False))
def test_every_latency_lands_in_the_bucket_that_contains_it(ms: float) -> None:
    i = latency_bucket(ms)
    lo, hi = bucket_bounds(i)
    # Bucketing works on whole 100 µs units: compare in those units.
    v = int(ms * 10.0) / 10.0
    assert lo - 1e-9 <= v < hi + 1e-9


def test_buckets_never_decrease_with_latency() -> None:
    last = 0
    for tenth in range(0, 3_000_000, 7):
        b = latency_bucket(tenth / 10)
        assert b >= last
        last = b


def test_fields_and_ttl() -> None:
    assert LATENCY_FIELDS[0] == "lat_0" and LATENCY_FIELDS[-1] == f"lat_{LATENCY_BUCKETS - 1}"
    assert HEALTH_TTL == 1800


def test_quantile_of_empty_and_single_bucket() -> None:
    assert quantile_ms([0] * LATENCY_BUCKETS, 0.99) is None
    hist = [0] * LATENCY_BUCKETS
    hist[latency_bucket(300.0)] = 100  # all in [256, 307.2)
    p99 = quantile_ms(hist, 0.99)
    assert p99 is not None and 256.0 <= p99 <= 307.2
    hist = [0] * LATENCY_BUCKETS
    hist[-1] = 5
    assert quantile_ms(hist, 0.99) == bucket_bounds(LATENCY_BUCKETS - 1)[0]  # "at least"


@settings(max_examples=200)
@given(
    st.lists(st.floats(min_value=0.4, max_value=100_000.0, allow_nan=False), min_size=1),
    st.sampled_from([0.5, 0.9, 0.99, 1.0]),
)
def test_quantile_estimate_is_within_one_bucket_of_the_truth(
    samples: list[float], q: float
) -> None:
    hist = [0] * LATENCY_BUCKETS
    for s in samples:
        hist[latency_bucket(s)] += 1
    estimate = quantile_ms(hist, q)
    assert estimate is not None
    truth = sorted(int(s * 10) / 10 for s in samples)[max(1, math.ceil(q * len(samples))) - 1]
    # The documented bound: off by less than a bucket width, under 25 % of the true value.
    assert abs(estimate - truth) <= 0.25 * truth + 1e-9, (estimate, truth)


def test_health_sums_hashes_and_ignores_unknown_fields() -> None:
    h = sum_health(
        [
            {"total": 10, "2xx": 7, "4xx": 1, "5xx": 2, "timeouts": 1, "lat_9": 10, "x": 5},
            {"total": 5, "5xx": 5, "latency_ms_sum": 1500, "lat_41": 5},
            {},
        ]
    )
    assert (h.total, h.ok, h.client_errors, h.errors, h.timeouts) == (15, 7, 1, 7, 1)
    assert h.latency_ms_sum == 1500
    assert h.error_rate == pytest.approx(7 / 15)
    assert h.latency_samples == 15
    assert h.hist[9] == 10 and h.hist[41] == 5
    p99 = h.p99_ms()
    assert p99 is not None and 256.0 <= p99 <= 307.2
    assert Health().error_rate is None and Health().p99_ms() is None
