"""In-memory request counters; flushed to Redis in batches by :mod:`gateway.flusher`.

Counting is a few dict operations on the request's own thread of control: no locks (one event
loop per worker), no I/O, never blocks a request.
"""

from __future__ import annotations

import time
from typing import Final

from routing.compiled import CompiledTarget
from routing.health import LATENCY_BUCKETS, LATENCY_FIELDS, latency_bucket

# (space, service, deployment) -> Row: requests, 2xx, 4xx, 5xx, other, timeouts, bytes, latency_ms
# (+ the latency histogram, routing/health.py)
N_FIELDS: Final = 8
REQ, C2, C4, C5, COTHER, TIMEOUTS, BYTES, LAT = range(N_FIELDS)

Key = tuple[bytes, bytes, bytes]


class Row:
    """One key's counts. Attributes, not a list: compiled, the ints and the float are stored
    unboxed, so counting a request allocates nothing. ``row[i]`` reads field ``i`` (REQ …).
    ``hist`` counts requests per latency bucket (:func:`routing.health.latency_bucket`)."""

    __slots__ = (
        "bytes",
        "c2",
        "c4",
        "c5",
        "cother",
        "hist",
        "latency_ms",
        "requests",
        "timeouts",
        "token",
    )

    def __init__(self, token: object = None) -> None:
        self.token = token  # the Counters batch this row is pending in (see Counters.count)
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
        "token",
    )

    def __init__(self, max_keys: int = 100_000) -> None:
        self.pending: dict[Key, Row] = {}
        self.token = object()  # a new one with every batch taken: rows of older batches are stale
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
        _add(self._row(space, service, deployment), status, nbytes, latency_ms, timeout)

    def count(
        self,
        target: CompiledTarget,
        space: bytes,
        service: bytes,
        status: int,
        nbytes: int,
        latency_ms: float,
        timeout: bool,
    ) -> None:
        """:meth:`record` for a compiled route's target (the hot path): the row is remembered
        on the target while its batch is pending, so counting a request is no key lookup.
        ``space`` and ``service`` are the target's route's (a target never changes route)."""
        row = target.counted
        if not isinstance(row, Row) or row.token is not self.token:
            row = self._row(space, service, target.deployment_b)
            target.counted = row
        _add(row, status, nbytes, latency_ms, timeout)

    def _row(self, space: bytes, service: bytes, deployment: bytes) -> Row:
        key = (space, service, deployment)
        row = self.pending.get(key)
        if row is None:
            row = self.pending[key] = Row(self.token)
        return row

    def answered(self, status: int, timeout: bool = False) -> None:
        """Every answer the gateway sends (forwarded or its own), for /metrics."""
        self.requests_total += 1
        self.by_class[status // 100 if 100 <= status < 600 else 0] += 1
        if timeout:
            self.timeouts_total += 1

    def take(self) -> dict[Key, Row]:
        batch, self.pending = self.pending, {}
        self.token = object()
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
                row.token = self.token  # pending again: targets may count in it
                pending[key] = row
            else:
                cur.add(row)

    def __repr__(self) -> str:
        return f"Counters(pending={len(self.pending)}, total={self.requests_total})"


def _add(row: Row, status: int, nbytes: int, latency_ms: float, timeout: bool) -> None:
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


def epoch_minute(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // 60)


def health_fields(batch: dict[Key, Row]) -> dict[bytes, dict[str, int]]:
    """Each deployment's health increments for one flush, in the order deployments first appear
    in ``batch``: ``total`` always, ``2xx``, ``4xx``, ``5xx``, ``timeouts`` and
    ``latency_ms_sum`` (rounded integer ms) when not zero, then the non-empty ``lat_<i>``
    histogram buckets (the format: :mod:`routing.health`). Rows without a deployment are skipped.

    Compiled, because a flush runs it on the event loop once a second for every active
    deployment: in pure Python the 80-bucket histograms of 2 000 deployments cost ~25 ms of
    stalled loop per flush. The batch's rows are never changed (a failed flush gives them back):
    a deployment seen under two keys is summed into a new row.
    """
    merged: dict[bytes, Row] = {}
    copies: set[bytes] = set()
    for key, row in batch.items():
        deployment = key[2]
        if not deployment:
            continue
        acc = merged.get(deployment)
        if acc is None:
            merged[deployment] = row
            continue
        if deployment not in copies:
            copy = Row()
            copy.add(acc)
            merged[deployment] = acc = copy
            copies.add(deployment)
        acc.add(row)
    out: dict[bytes, dict[str, int]] = {}
    for deployment, r in merged.items():
        fields: dict[str, int] = {"total": r.requests}
        if r.c2:
            fields["2xx"] = r.c2
        if r.c4:
            fields["4xx"] = r.c4
        if r.c5:
            fields["5xx"] = r.c5
        if r.timeouts:
            fields["timeouts"] = r.timeouts
        lat = round(r.latency_ms)
        if lat:
            fields["latency_ms_sum"] = lat
        hist = r.hist
        for i in range(LATENCY_BUCKETS):
            n = hist[i]
            if n:
                fields[LATENCY_FIELDS[i]] = n
        out[deployment] = fields
    return out


def add_fields(into: dict[bytes, dict[str, int]], more: dict[bytes, dict[str, int]]) -> None:
    """Sum :func:`health_fields` of another part of a batch into ``into`` (new deployments are
    appended; a deployment already there gets each field added)."""
    for deployment, fields in more.items():
        cur = into.get(deployment)
        if cur is None:
            into[deployment] = fields
            continue
        for name, n in fields.items():
            cur[name] = cur.get(name, 0) + n


def field_args(fields: dict[str, int]) -> list[str]:
    """``[field, value, field, value, ...]`` as strings: a hash write's arguments."""
    args: list[str] = []
    for name, value in fields.items():
        args.append(name)
        args.append(str(value))
    return args
