"""In-memory counters: the latency histogram next to the status classes."""

from __future__ import annotations

from gateway.counters import C2, C4, C5, REQ, TIMEOUTS, Counters, Row
from routing.health import LATENCY_BUCKETS, latency_bucket

KEY = (b"sp", b"svc", b"dep")


def test_record_counts_status_classes_and_one_latency_bucket_per_request() -> None:
    c = Counters()
    c.record(*KEY, 200, 10, 0.3, False)
    c.record(*KEY, 404, 10, 12.0, False)
    c.record(*KEY, 502, 10, 1.0, False)  # the gateway's own answer: an error of the deployment
    c.record(*KEY, 504, 10, 30_000.0, True)  # a timeout is answered 504: counted in 5xx
    row = c.pending[KEY]
    assert (row[REQ], row[C2], row[C4], row[C5], row[TIMEOUTS]) == (4, 1, 1, 2, 1)
    assert len(row.hist) == LATENCY_BUCKETS and sum(row.hist) == 4
    for ms in (0.3, 12.0, 1.0, 30_000.0):
        assert row.hist[latency_bucket(ms)] == 1


def test_rows_add_and_give_back_merge_histograms() -> None:
    a, b = Row(), Row()
    a.hist[3] = 2
    b.hist[3] = 5
    b.hist[40] = 1
    a.add(b)
    assert (a.hist[3], a.hist[40], sum(a.hist)) == (7, 1, 8)

    c = Counters()
    c.record(*KEY, 200, 1, 5.0, False)
    batch = c.take()
    c.record(*KEY, 200, 1, 5.0, False)
    c.give_back(batch)  # a failed flush: both counts kept, one row
    assert c.pending[KEY].hist[latency_bucket(5.0)] == 2
