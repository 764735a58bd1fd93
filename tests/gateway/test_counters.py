"""In-memory counters: the latency histogram next to the status classes."""

from __future__ import annotations

from gateway.counters import C2, C4, C5, REQ, TIMEOUTS, Counters, Row
from routing.compiled import CompiledTarget
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


def _target(deployment: bytes = b"dep") -> CompiledTarget:
    return CompiledTarget(deployment, "active", 10_000, ())


def test_count_by_target_lands_on_the_key_record_uses() -> None:
    c = Counters()
    t = _target()
    c.count(t, b"sp", b"svc", 200, 10, 1.0, False)
    c.record(*KEY, 500, 10, 1.0, False)
    c.count(t, b"sp", b"svc", 404, 10, 1.0, True)
    assert list(c.pending) == [KEY]
    row = c.pending[KEY]
    assert (row[REQ], row[C2], row[C4], row[C5], row[TIMEOUTS]) == (3, 1, 1, 1, 1)
    assert t.counted is row


def test_a_taken_batch_is_never_counted_into_again() -> None:
    """The row a target remembers belongs to one batch: once the flusher took it, the next
    request starts a new row, and the taken one (being written) does not change."""
    c = Counters()
    t = _target()
    c.count(t, b"sp", b"svc", 200, 10, 1.0, False)
    batch = c.take()
    c.count(t, b"sp", b"svc", 200, 10, 1.0, False)
    c.count(t, b"sp", b"svc", 200, 10, 1.0, False)
    assert batch[KEY][REQ] == 1
    assert c.pending[KEY][REQ] == 2 and c.pending[KEY] is not batch[KEY]


def test_rows_given_back_are_counted_into_again() -> None:
    c = Counters()
    t = _target()
    c.count(t, b"sp", b"svc", 200, 10, 1.0, False)
    batch = c.take()
    c.give_back(batch)  # the write failed: the row is pending again
    c.count(t, b"sp", b"svc", 200, 10, 1.0, False)
    assert c.pending[KEY] is batch[KEY] and c.pending[KEY][REQ] == 2
    assert t.counted is batch[KEY]


def test_two_counters_sharing_a_target_keep_their_own_rows() -> None:
    a, b = Counters(), Counters()
    t = _target()
    a.count(t, b"sp", b"svc", 200, 10, 1.0, False)
    b.count(t, b"sp", b"svc", 200, 10, 1.0, False)
    a.count(t, b"sp", b"svc", 200, 10, 1.0, False)
    assert a.pending[KEY][REQ] == 2 and b.pending[KEY][REQ] == 1
