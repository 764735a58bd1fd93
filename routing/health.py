"""The per-deployment health hash: its fields, the latency histogram, and how to read them.

The gateway writes one hash per deployment per minute (``{p}:health:<deployment>:<minute>``,
:mod:`gateway.flusher`); the admin's rollout gate reads them (:mod:`admin.rollouts.gate`). Both
sides take the format from here, so they cannot disagree on it.

Fields: ``total``, ``2xx``, ``4xx``, ``5xx``, ``timeouts`` and ``latency_ms_sum`` (integer ms),
plus ``lat_<i>``: the number of requests whose latency fell into bucket ``i`` of the histogram
below. Absent fields mean zero. A key expires :data:`HEALTH_TTL` seconds after its last write.

What is an error: a 5xx answer, whether the upstream sent it or the gateway did (502 when the
upstream could not be reached or broke off mid-response, 503 without a healthy replica, 504 on
a timeout). A timeout is answered 504, so ``timeouts`` is a subset of ``5xx``, never added to
it. 4xx answers are the client's problem, not the deployment's.

Latency histogram
-----------------
Latency (request start to the end of the response, as the gateway saw it) is counted in 100 µs
units ``v``. Buckets 0..3 are linear (0, 0.1, 0.2, 0.3 ms wide 0.1 ms); from 0.4 ms on every
power of two is split into 4 equal sub-buckets (HdrHistogram with 2 significant bits): ``v`` in
``[2^(e-1), 2^e)`` lands in ``4·e − 8 + (the two bits after v's leading one)``. So finding the
bucket is a multiply, ``int()``, ``bit_length()``, a shift and a mask — no search, no floats
kept — and a bucket is never wider than 25 % of its lower edge. 80 buckets reach 183.5 s; the
last one also takes everything slower.

:func:`quantile_ms` estimates a quantile the way Prometheus' ``histogram_quantile`` does: find
the bucket holding the rank-⌈q·n⌉ sample and interpolate linearly inside it. The true value lies
in the same bucket, so the estimate is off by less than one bucket width: under 25 % of the true
value at or above 0.4 ms, under 0.1 ms below (and for the overflow bucket the estimate is its
lower edge, 183.5 s: "at least").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

HEALTH_TTL: Final = 30 * 60  # seconds; spec: health keys expire after 30 min

LATENCY_BUCKETS: Final = 80
LATENCY_FIELDS: Final[tuple[str, ...]] = tuple(f"lat_{i}" for i in range(LATENCY_BUCKETS))
_FIELD_INDEX: Final[dict[str, int]] = {name: i for i, name in enumerate(LATENCY_FIELDS)}


def latency_bucket(latency_ms: float) -> int:
    """The histogram bucket of one request's latency (hot path: a few integer operations)."""
    v = int(latency_ms * 10.0)  # 100 µs units
    if v < 4:
        return v if v > 0 else 0
    e = v.bit_length()
    i = 4 * e - 8 + ((v >> (e - 3)) & 3)
    return i if i < LATENCY_BUCKETS else LATENCY_BUCKETS - 1


def bucket_bounds(i: int) -> tuple[float, float]:
    """``(lower, upper)`` edge of bucket ``i`` in ms; the last bucket's upper edge is infinite."""
    if not 0 <= i < LATENCY_BUCKETS:
        raise ValueError(f"no latency bucket {i}")
    if i < 4:
        return i / 10, (i + 1) / 10
    step = 1 << (i // 4 - 1)  # 2^(e-3) with e = i // 4 + 2
    sub = i % 4
    upper = math.inf if i == LATENCY_BUCKETS - 1 else (5 + sub) * step / 10
    return (4 + sub) * step / 10, upper


def quantile_ms(hist: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0 < q ≤ 1) of a histogram in ms, or None when it is empty."""
    n = sum(hist)
    if n <= 0:
        return None
    rank = max(1, math.ceil(q * n))
    below = 0
    for i, count in enumerate(hist):
        if count > 0 and below + count >= rank:
            lo, hi = bucket_bounds(i)
            if math.isinf(hi):
                return lo
            return lo + (hi - lo) * (rank - below) / count
        below += count
    return bucket_bounds(len(hist) - 1)[0]  # unreachable unless counts are negative


@dataclass(slots=True)
class Health:
    """The counts of one or more health hashes added up (:meth:`add`)."""

    total: int = 0
    ok: int = 0  # 2xx
    client_errors: int = 0  # 4xx
    errors: int = 0  # 5xx, gateway 502/503/504 and timeouts included
    timeouts: int = 0
    latency_ms_sum: int = 0
    hist: list[int] = field(default_factory=lambda: [0] * LATENCY_BUCKETS)

    def add(self, fields: Mapping[str, int]) -> None:
        """Add one hash as :meth:`routing.runtime_state.RuntimeState.hgetall` returns it."""
        self.total += fields.get("total", 0)
        self.ok += fields.get("2xx", 0)
        self.client_errors += fields.get("4xx", 0)
        self.errors += fields.get("5xx", 0)
        self.timeouts += fields.get("timeouts", 0)
        self.latency_ms_sum += fields.get("latency_ms_sum", 0)
        for name, count in fields.items():
            i = _FIELD_INDEX.get(name)
            if i is not None:
                self.hist[i] += count

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.total if self.total > 0 else None

    @property
    def latency_samples(self) -> int:
        return sum(self.hist)

    def p99_ms(self) -> float | None:
        return quantile_ms(self.hist, 0.99)


def sum_health(hashes: Iterable[Mapping[str, int]]) -> Health:
    out = Health()
    for fields in hashes:
        out.add(fields)
    return out
