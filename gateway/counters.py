"""In-memory request counters; flushed to Redis in batches by :mod:`gateway.flusher`.

Counting is a few dict operations on the request's own thread of control: no locks (one event
loop per worker), no I/O, never blocks a request.
"""

from __future__ import annotations

import time
from typing import Final

from routing.health import LATENCY_BUCKETS, latency_bucket

# (space, service, deployment) -> Row: requests, 2xx, 4xx, 5xx, other, timeouts, bytes, latency_ms
# (+ the latency histogram, routing/health.py)
N_FIELDS: Final = 8
REQ, C2, C4, C5, COTHER, TIMEOUTS, BYTES, LAT = range(N_FIELDS)

Key = tuple[bytes, bytes, bytes]


class Row:
    """One key's counts. Attributes, not a list: compiled, the ints and the float are stored
    unboxed, so counting a request allocates nothing. ``row[i]`` reads field ``i`` (REQ …).
    ``hist`` counts requests per latency bucket (:func:`routing.health.latency_bucket`)."""

    __slots__ = ("bytes", "c2", "c4", "c5", "cother", "hist", "latency_ms", "requests", "timeouts")

    def __init__(self) -> None:
        self.requests = 0
        self.c2 = 0
        self.c4 = 0
        self.c5 = 0
        self.cother = 0
        self.timeouts = 0
        self.bytes = 0
        self.latency_ms = 0.0
        self.hist = [0] * LATENCY_BUCKETS

    def values(self) -> list[float]:
        """The fields in index order (REQ, C2, C4, C5, COTHER, TIMEOUTS, BYTES, LAT)."""
        return [
            float(self.requests),
            float(self.c2),
            float(self.c4),
            float(self.c5),
            float(self.cother),
            float(self.timeouts),
            float(self.bytes),
            self.latency_ms,
        ]

    def __getitem__(self, index: int) -> float:
        return self.values()[index]

    def add(self, other: Row) -> None:
        self.requests += other.requests
        self.c2 += other.c2
        self.c4 += other.c4
        self.c5 += other.c5
        self.cother += other.cother
        self.timeouts += other.timeouts
        self.bytes += other.bytes
        self.latency_ms += other.latency_ms
        hist = self.hist
        for i, n in enumerate(other.hist):
            if n:
                hist[i] += n

    def __repr__(self) -> str:
        return f"Row({self.values()})"


class Counters:
    """Per-worker counters. ``record`` is on the hot path; ``take`` swaps the batch out."""

    __slots__ = (
        "by_class",
        "connect_errors",
        "dropped",
        "max_keys",
        "pending",
        "requests_total",
        "timeouts_total",
    )

    def __init__(self, max_keys: int = 100_000) -> None:
        self.pending: dict[Key, Row] = {}
        self.max_keys = max_keys
        self.by_class = [0, 0, 0, 0, 0, 0]  # index = status // 100 (0 = no response)
        self.requests_total = 0
        self.timeouts_total = 0
        self.connect_errors = 0
        self.dropped = 0  # batches' keys dropped because the store stayed down too long

    def record(
        self,
        space: bytes,
        service: bytes,
        deployment: bytes,
        status: int,
        nbytes: int,
        latency_ms: float,
        timeout: bool,
    ) -> None:
        """Count one forwarded request (one that reached a deployment's runtime or tried to)."""
        key = (space, service, deployment)
        row = self.pending.get(key)
        if row is None:
            row = self.pending[key] = Row()
        row.requests += 1
        cls = status // 100
        if cls == 2:
            row.c2 += 1
        elif cls == 5:
            row.c5 += 1
        elif cls == 4:
            row.c4 += 1
        else:
            row.cother += 1
        if timeout:
            row.timeouts += 1
        row.bytes += nbytes
        row.latency_ms += latency_ms
        row.hist[latency_bucket(latency_ms)] += 1

    def answered(self, status: int, timeout: bool = False) -> None:
        """Every answer the gateway sends (forwarded or its own), for /metrics."""
        self.requests_total += 1
        self.by_class[status // 100 if 100 <= status < 600 else 0] += 1
        if timeout:
            self.timeouts_total += 1

    def take(self) -> dict[Key, Row]:
        batch, self.pending = self.pending, {}
        return batch

    def give_back(self, batch: dict[Key, Row]) -> None:
        """A flush failed: merge the batch back, bounded so memory cannot grow without end."""
        pending = self.pending
        for key, row in batch.items():
            cur = pending.get(key)
            if cur is None:
                if len(pending) >= self.max_keys:
                    self.dropped += 1
                    continue
                pending[key] = row
            else:
                cur.add(row)

    def __repr__(self) -> str:
        return f"Counters(pending={len(self.pending)}, total={self.requests_total})"


def epoch_minute(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // 60)
