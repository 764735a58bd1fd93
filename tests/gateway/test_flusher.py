"""Counter flushing: exact counts in a real Redis, health/usage layout, failure and recovery.

Usage is written as each worker's cumulative count under its own field (``gateway/usage.py``),
so the tests read it with :func:`usage_in`, the sum over ``wfp_requests:<writer>`` fields."""

from __future__ import annotations

import asyncio
import calendar
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.counters import C2, C5, REQ, Counters, epoch_minute, field_args, health_fields
from gateway.flusher import (
    HEALTH_TTL,
    USAGE_METER,
    CounterFlusher,
    MemoryCounterSink,
    RedisCounterSink,
    plan_writes,
    plan_writes_sliced,
    usage_month,
    usage_sums,
)
from gateway.usage import USAGE_TTL, UsageLedger
from routing.health import LATENCY_FIELDS, latency_bucket
from routing.keys import Keys
from routing.runtime_state import RedisRuntimeState
from tests.support.net import free_port
from tests.support.redis_server import RedisServer

KEYS = Keys()
# 2024-02-29 23:59:30 UTC: a leap day, 30 s before the month turns.
NOW = float(calendar.timegm((2024, 2, 29, 23, 59, 30)))

ClientFactory = Callable[[str], aioredis.Redis]


@pytest.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    """Redis clients with short timeouts and no retries; all closed after the test."""
    made: list[aioredis.Redis] = []

    def factory(url: str) -> aioredis.Redis:
        client = aioredis.Redis.from_url(
            url, socket_connect_timeout=0.5, socket_timeout=2.0, retry=None
        )
        made.append(client)
        return client

    yield factory
    for client in made:
        await client.aclose()


def fixed_clock(t: float = NOW) -> Callable[[], float]:
    return lambda: t


def record_n(counters: Counters, n: int, *, space: bytes = b"sp-1", dep: bytes = b"dep-1") -> None:
    """n requests: every 4th a 503 with a timeout, every 5th a 404, the rest 200; 10.4 ms each."""
    for i in range(n):
        if i % 4 == 0:
            status, timeout = 503, True
        elif i % 5 == 0:
            status, timeout = 404, False
        else:
            status, timeout = 200, False
        counters.record(space, b"svc-1", dep, status, 100, 10.4, timeout)


def expected_health(n: int) -> dict[bytes, bytes]:
    c5 = len(range(0, n, 4))
    c4 = sum(1 for i in range(n) if i % 4 and i % 5 == 0)
    fields = {
        b"total": n,
        b"2xx": n - c5 - c4,
        b"4xx": c4,
        b"5xx": c5,
        b"timeouts": c5,
        b"latency_ms_sum": round(10.4 * n),
        LATENCY_FIELDS[latency_bucket(10.4)].encode(): n,  # lat_22: [10.4, 12.0) ms
    }
    return {k: str(v).encode() for k, v in fields.items() if v or k == b"total"}


def usage_key(space: str = "sp-1", now: float = NOW) -> str:
    return KEYS.usage(space, usage_month(now))


def health_key(dep: str = "dep-1", now: float = NOW) -> str:
    return KEYS.health(dep, epoch_minute(now))


async def usage_in(r: aioredis.Redis, key: str) -> int:
    """Requests counted in a usage hash: the sum of every writer's cumulative field."""
    fields = await r.hgetall(key)
    return sum(int(v) for f, v in fields.items() if f.decode().startswith(f"{USAGE_METER}:"))


# ---------------------------------------------------------------------- pure planning


def test_usage_month_is_utc_yyyymm() -> None:
    assert usage_month(NOW) == "202402"
    assert usage_month(NOW + 30) == "202403"  # midnight UTC, whatever the local zone
    assert usage_month(0) == "197001"


def test_plan_aggregates_usage_per_space_and_health_per_deployment() -> None:
    c = Counters()
    c.record(b"sp-1", b"svc-a", b"dep-1", 200, 10, 1.4, False)
    c.record(b"sp-1", b"svc-b", b"dep-2", 500, 10, 2.4, False)
    c.record(b"sp-2", b"svc-c", b"dep-1", 404, 10, 3.4, True)
    c.record(b"", b"svc-x", b"dep-2", 200, 10, 0.0, False)  # no owner: health only
    batch = c.take()
    ledger = UsageLedger(writer="w1")
    assert usage_sums(batch) == {"sp-1": 2, "sp-2": 1}
    staged = ledger.stage(usage_sums(batch), usage_month(NOW), NOW)
    plan = {p.key: p for p in plan_writes(batch, NOW, KEYS, staged)}

    assert plan[usage_key("sp-1")].fields == {"wfp_requests:w1": 2}
    assert plan[usage_key("sp-2")].fields == {"wfp_requests:w1": 1}
    assert plan[usage_key("sp-1")].ttl == USAGE_TTL and plan[usage_key("sp-1")].set
    dep1 = plan[health_key("dep-1")]
    assert dep1.fields == {
        "total": 2,
        "2xx": 1,
        "4xx": 1,
        "timeouts": 1,
        "latency_ms_sum": 5,
        "lat_11": 1,  # 1.4 ms: [1.4, 1.6)
        "lat_16": 1,  # 3.4 ms: [3.2, 4.0)
    }
    assert dep1.ttl == HEALTH_TTL == 1800
    assert not dep1.set
    assert plan[health_key("dep-2")].fields == {
        "total": 2,
        "2xx": 1,
        "5xx": 1,
        "latency_ms_sum": 2,
        "lat_0": 1,  # 0.0 ms
        "lat_14": 1,  # 2.4 ms: [2.4, 2.8)
    }
    assert len(plan) == 4
    assert [p.key for p in plan_writes(batch, NOW, KEYS)] == [health_key(), health_key("dep-2")]


def test_health_fields_merge_a_deployment_without_changing_the_batch() -> None:
    """A deployment counted under two keys is summed into a new row: the batch's own rows stay
    as they were (a failed flush gives them back to the counters, and they must not count
    twice), and the fields come in the documented order with zeros left out."""
    c = Counters()
    c.record(b"sp-1", b"svc-a", b"dep-1", 200, 10, 0.05, False)
    c.record(b"sp-1", b"svc-b", b"dep-1", 503, 10, 250.0, True)
    c.record(b"sp-1", b"svc-a", b"dep-2", 200, 10, 1.4, False)
    c.record(b"sp-1", b"svc-a", b"", 200, 10, 1.4, False)  # no deployment: no health
    batch = c.take()
    before = {k: (r.values(), list(r.hist)) for k, r in batch.items()}
    fields = health_fields(batch)
    assert list(fields) == [b"dep-1", b"dep-2"]
    assert list(fields[b"dep-1"].items()) == [
        ("total", 2),
        ("2xx", 1),
        ("5xx", 1),
        ("timeouts", 1),
        ("latency_ms_sum", 250),
        (LATENCY_FIELDS[latency_bucket(0.05)], 1),
        (LATENCY_FIELDS[latency_bucket(250.0)], 1),
    ]
    assert fields[b"dep-2"] == {"total": 1, "2xx": 1, "latency_ms_sum": 1, "lat_11": 1}
    assert {k: (r.values(), list(r.hist)) for k, r in batch.items()} == before
    assert health_fields({}) == {}
    assert field_args({"total": 2, "lat_3": 1}) == ["total", "2", "lat_3", "1"]


def test_health_fields_round_the_latency_sum_and_skip_a_zero_one() -> None:
    c = Counters()
    c.record(b"sp", b"svc", b"dep", 200, 0, 0.2, False)
    c.record(b"sp", b"svc", b"dep", 200, 0, 0.2, False)  # 0.4 ms in all: rounds to 0
    assert health_fields(c.take())[b"dep"] == {"total": 2, "2xx": 2, "lat_2": 2}


async def test_the_sliced_plan_writes_what_the_plan_writes() -> None:
    """Slices of 2 keys: dep-1 is counted in the first slice and the last one, so its fields
    are summed across slices; every key gets the same values, TTL and kind."""
    c = Counters()
    c.record(b"sp-1", b"svc-a", b"dep-1", 200, 10, 1.4, False)
    c.record(b"sp-1", b"svc-a", b"dep-2", 500, 10, 2.4, False)
    c.record(b"sp-2", b"svc-b", b"dep-3", 200, 10, 0.2, False)
    c.record(b"sp-2", b"svc-c", b"dep-4", 404, 10, 9.0, True)
    c.record(b"sp-3", b"svc-d", b"dep-1", 503, 10, 250.0, True)
    batch = c.take()
    staged = UsageLedger(writer="w1").stage(usage_sums(batch), usage_month(NOW), NOW)
    whole = plan_writes(batch, NOW, KEYS, staged)
    sliced = await plan_writes_sliced(batch, NOW, KEYS, staged, size=2)
    assert [p.key for p in sliced] == [p.key for p in whole]
    assert [(p.fields, p.ttl, p.set) for p in sliced] == [(p.fields, p.ttl, p.set) for p in whole]
    assert {p.key: p for p in sliced}[health_key("dep-1")].fields["total"] == 2
    assert await plan_writes_sliced({}, NOW, KEYS) == []


# ---------------------------------------------------------------------- Redis


async def test_n_recorded_are_exactly_n_in_redis(
    redis_url: str, make_client: ClientFactory
) -> None:
    r = make_client(redis_url)
    counters = Counters()
    sink = RedisCounterSink(RedisRuntimeState(r, prefix=KEYS.prefix), KEYS)
    flusher = CounterFlusher(counters, sink, clock=fixed_clock())
    record_n(counters, 1000)
    record_n(counters, 7, space=b"sp-2", dep=b"dep-2")

    assert await flusher.flush() is True

    assert counters.pending == {}
    assert flusher.flushes == 1 and flusher.flush_errors == 0
    assert flusher.last_flush_seconds > 0
    field = sink.usage.field.encode()
    assert field.startswith(b"wfp_requests:") and len(field) == len(b"wfp_requests:") + 12
    assert await r.hgetall(usage_key("sp-1")) == {field: b"1000"}
    assert await r.hgetall(usage_key("sp-2")) == {field: b"7"}
    assert await r.hgetall(health_key("dep-1")) == expected_health(1000)
    assert await r.hgetall(health_key("dep-2")) == expected_health(7)
    for key in (health_key("dep-1"), health_key("dep-2")):
        assert HEALTH_TTL - 10 <= await r.ttl(key) <= HEALTH_TTL
    assert USAGE_TTL - 10 <= await r.ttl(usage_key("sp-1")) <= USAGE_TTL
    assert usage_key("sp-1") == "{turnout}:usage:sp-1:202402"
    assert health_key("dep-1") == f"{{turnout}}:health:dep-1:{int(NOW // 60)}"

    # Nothing pending: a flush writes nothing and counts nothing.
    assert await flusher.flush() is True
    assert flusher.flushes == 1

    # The field holds the cumulative count; a second worker has a field of its own.
    record_n(counters, 3)
    assert await flusher.flush() is True
    assert await r.hget(usage_key("sp-1"), field) == b"1003"
    other = Counters()
    record_n(other, 5)
    assert await CounterFlusher(
        other, RedisCounterSink(RedisRuntimeState(r, prefix=KEYS.prefix), KEYS), clock=fixed_clock()
    ).flush()
    assert await usage_in(r, usage_key("sp-1")) == 1008
    assert len(await r.hgetall(usage_key("sp-1"))) == 2


async def test_failed_flush_keeps_counts_until_a_later_flush_writes_them_once(
    redis_url: str, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    dead = make_client(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    live = make_client(redis_url)
    counters = Counters()
    flusher = CounterFlusher(
        counters,
        RedisCounterSink(RedisRuntimeState(dead, prefix=KEYS.prefix), KEYS),
        clock=fixed_clock(),
    )
    record_n(counters, 40)

    with caplog.at_level(logging.WARNING, logger="turnout.gateway.flusher"):
        assert await flusher.flush() is False
        record_n(counters, 2)
        assert await flusher.flush() is False  # second failure within 10 s: not logged again

    assert flusher.flush_errors == 2 and flusher.flushes == 0
    assert counters.pending[(b"sp-1", b"svc-1", b"dep-1")][REQ] == 42
    warnings = [r for r in caplog.records if r.name == "turnout.gateway.flusher"]
    assert len(warnings) == 1 and "counter flush failed" in warnings[0].getMessage()

    flusher.sink = RedisCounterSink(RedisRuntimeState(live, prefix=KEYS.prefix), KEYS)
    assert await flusher.flush() is True
    assert await flusher.flush() is True
    assert flusher.flushes == 1 and counters.pending == {}
    assert await usage_in(live, usage_key()) == 42
    assert (await live.hgetall(health_key()))[b"total"] == b"42"


async def test_flush_survives_redis_going_away_and_coming_back(
    own_redis: RedisServer, make_client: ClientFactory
) -> None:
    r = make_client(own_redis.url)
    counters = Counters()
    flusher = CounterFlusher(
        counters,
        RedisCounterSink(RedisRuntimeState(r, prefix=KEYS.prefix), KEYS),
        clock=fixed_clock(),
    )
    record_n(counters, 5)
    assert await flusher.flush() is True

    own_redis.stop()
    record_n(counters, 10)
    assert await flusher.flush() is False
    assert await flusher.flush() is False
    assert counters.pending[(b"sp-1", b"svc-1", b"dep-1")][REQ] == 10

    own_redis.start()  # empty again (no persistence)
    assert await flusher.flush() is True
    # Usage is the worker's cumulative count, so what Redis lost comes back with it; health
    # increments are per minute and only what was not yet written arrives.
    assert await usage_in(r, usage_key()) == 15
    assert await r.hgetall(health_key()) == expected_health(10)
    assert flusher.flush_errors == 2 and flusher.flushes == 2


async def test_partial_write_is_counted_and_not_retried(
    redis_url: str, make_client: ClientFactory
) -> None:
    r = make_client(redis_url)
    await r.set(usage_key(), "not a hash")  # WRONGTYPE for the usage HINCRBY only
    counters = Counters()
    flusher = CounterFlusher(
        counters,
        RedisCounterSink(RedisRuntimeState(r, prefix=KEYS.prefix), KEYS),
        clock=fixed_clock(),
    )
    record_n(counters, 4)

    assert await flusher.flush() is False

    assert flusher.flush_errors == 1
    assert counters.pending == {}  # the health part was applied: retrying would double it
    assert (await r.hgetall(health_key()))[b"total"] == b"4"


async def test_background_loop_flushes_every_interval(
    redis_url: str, make_client: ClientFactory
) -> None:
    r = make_client(redis_url)
    counters = Counters()
    flusher = CounterFlusher(
        counters,
        RedisCounterSink(RedisRuntimeState(r, prefix=KEYS.prefix), KEYS),
        interval=0.02,
        clock=fixed_clock(),
    )
    flusher.start()
    try:
        assert flusher.running
        with pytest.raises(RuntimeError):
            flusher.start()
        for round_ in range(1, 4):
            record_n(counters, 10)
            for _ in range(200):
                if await usage_in(r, usage_key()) == 10 * round_:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError(f"round {round_} never reached Redis")
        assert flusher.flushes >= 3
    finally:
        await flusher.stop()
    assert not flusher.running


async def test_stop_does_a_final_flush(redis_url: str, make_client: ClientFactory) -> None:
    r = make_client(redis_url)
    counters = Counters()
    flusher = CounterFlusher(
        counters,
        RedisCounterSink(RedisRuntimeState(r, prefix=KEYS.prefix), KEYS),
        interval=3600,
        clock=fixed_clock(),
    )
    flusher.start()
    await asyncio.sleep(0)
    record_n(counters, 25)

    await flusher.stop()

    assert await usage_in(r, usage_key()) == 25
    assert counters.pending == {}
    await flusher.stop()  # idempotent


class LostReplySink(RedisCounterSink):
    """Redis applies the script, then the connection drops before the reply (once)."""

    __slots__ = ("drop",)

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        super().__init__(RedisRuntimeState(redis, prefix=keys.prefix), keys)
        self.drop = True

    async def _run(self, plan: list[Any]) -> bytes:
        epoch = await super()._run(plan)
        if self.drop:
            self.drop = False
            raise ConnectionError("connection reset before the reply")
        return epoch


async def test_a_write_whose_reply_was_lost_is_not_counted_twice(
    redis_url: str, make_client: ClientFactory
) -> None:
    r = make_client(redis_url)
    counters = Counters()
    sink = LostReplySink(r, KEYS)
    flusher = CounterFlusher(counters, sink, clock=fixed_clock())
    record_n(counters, 30)
    assert await flusher.flush() is False  # applied in Redis, but the flusher cannot know
    assert await usage_in(r, usage_key()) == 30
    record_n(counters, 4)
    assert await flusher.flush() is True  # the 30 again (given back) and 4 more
    assert await usage_in(r, usage_key()) == 34  # HINCRBY would have made this 64
    assert (await r.hgetall(health_key()))[b"total"] == b"64"  # health: at-least-once


async def test_an_epoch_change_rewrites_every_usage_total(
    own_redis: RedisServer, make_client: ClientFactory
) -> None:
    r = make_client(own_redis.url)
    await r.set(KEYS.epoch, "e1")
    counters = Counters()
    flusher = CounterFlusher(
        counters,
        RedisCounterSink(RedisRuntimeState(r, prefix=KEYS.prefix), KEYS),
        clock=fixed_clock(NOW - 7200),
    )
    record_n(counters, 7, space=b"sp-quiet")
    record_n(counters, 5)
    assert await flusher.flush() is True

    own_redis.shutdown_nosave()
    own_redis.start()  # empty, no epoch: Redis lost its data
    await r.connection_pool.disconnect()  # the old connections died with the server
    await r.set(usage_key("sp-other"), "unrelated")  # the restart is all the sink can see
    # Far past the re-assertion window, so only the epoch tells the sink to write sp-quiet.
    flusher.clock = fixed_clock(NOW)
    record_n(counters, 1)
    assert await flusher.flush() is True
    assert await usage_in(r, usage_key("sp-1")) == 6
    assert await usage_in(r, usage_key("sp-quiet")) == 7
    assert not flusher.sink.usage.is_lost  # type: ignore[attr-defined]

    # The admin republishes under a new epoch: written again, still the same totals.
    await r.set(KEYS.epoch, "e2")
    record_n(counters, 1)
    assert await flusher.flush() is True
    assert await usage_in(r, usage_key("sp-quiet")) == 7
    assert await usage_in(r, usage_key("sp-1")) == 7


async def test_an_expired_usage_key_is_restored_by_the_next_write(
    redis_url: str, make_client: ClientFactory
) -> None:
    r = make_client(redis_url)
    counters = Counters()
    sink = RedisCounterSink(RedisRuntimeState(r, prefix=KEYS.prefix), KEYS)
    now = [NOW - 3600]  # the same month throughout
    flusher = CounterFlusher(counters, sink, clock=lambda: now[0])
    record_n(counters, 9)
    assert await flusher.flush() is True

    await r.delete(usage_key())  # expired (or evicted) before anyone read it
    now[0] += 10  # within the re-assertion window: restored without new traffic
    record_n(counters, 1, space=b"sp-2")
    assert await flusher.flush() is True
    assert await usage_in(r, usage_key()) == 9

    await r.delete(usage_key())
    now[0] += 60  # past the window: restored with the space's next request
    record_n(counters, 1, space=b"sp-2")
    assert await flusher.flush() is True
    assert await r.exists(usage_key()) == 0
    record_n(counters, 1)
    assert await flusher.flush() is True
    assert await usage_in(r, usage_key()) == 10


class SlowSink:
    """A sink that takes ``delay`` seconds per write; records what it received."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.seen: list[float] = []

    async def write(self, batch: dict[tuple[bytes, bytes, bytes], list[float]], now: float) -> None:
        await asyncio.sleep(self.delay)
        self.seen.append(sum(row[REQ] for row in batch.values()))


async def test_stop_waits_for_an_inflight_write_and_keeps_counts_on_timeout() -> None:
    counters = Counters()
    sink = SlowSink(0.05)
    flusher = CounterFlusher(counters, sink, interval=0.01)
    record_n(counters, 3)
    flusher.start()
    await asyncio.sleep(0.03)  # the loop is now inside the slow write
    record_n(counters, 2)
    await flusher.stop(timeout=2.0)
    assert sink.seen == [3, 2]  # the loop's write was not abandoned; the final one followed

    slow = CounterFlusher(counters, SlowSink(10.0), interval=3600)
    record_n(counters, 6)
    await slow.stop(timeout=0.05)
    assert counters.pending[(b"sp-1", b"svc-1", b"dep-1")][REQ] == 6  # given back, not lost


async def test_write_errors_of_any_kind_keep_counts() -> None:
    class Broken:
        async def write(self, batch: object, now: float) -> None:
            raise OSError("disk on fire")

    counters = Counters()
    flusher = CounterFlusher(counters, Broken())
    record_n(counters, 3)
    assert await flusher.flush() is False
    assert counters.pending[(b"sp-1", b"svc-1", b"dep-1")][C5] == 1
    assert flusher.flush_errors == 1
    assert "flush_errors=1" in repr(flusher)


# ---------------------------------------------------------------------- memory sink


async def test_memory_sink_keeps_the_same_hashes() -> None:
    now = [NOW]
    sink = MemoryCounterSink(clock=lambda: now[0])
    counters = Counters()
    flusher = CounterFlusher(counters, sink, clock=lambda: now[0])
    record_n(counters, 100)
    record_n(counters, 3, space=b"sp-2")
    assert await flusher.flush() is True

    field = sink.usage.field
    assert sink.hgetall(usage_key("sp-1")) == {field: 100}
    assert sink.hgetall(usage_key("sp-2")) == {field: 3}
    health = sink.hgetall(health_key())
    assert health == {k.decode(): int(v) for k, v in expected_health(103).items()}
    assert health["total"] == 103 and health["2xx"] + health["4xx"] + health["5xx"] == 103
    assert sink.ttl(health_key()) == HEALTH_TTL
    assert sink.ttl(usage_key()) == USAGE_TTL

    # Same minute: increments add up. Past the TTL: health keys are gone, usage stays.
    counters.record(b"sp-1", b"svc-1", b"dep-1", 200, 1, 1.0, False)
    assert await flusher.flush() is True
    assert sink.hgetall(health_key())["total"] == 104
    now[0] += HEALTH_TTL + 1
    assert sink.hgetall(health_key(now=NOW)) == {}
    assert sink.hgetall(usage_key("sp-1")) == {field: 101}
    assert sink.writes == 2 and "writes=2" in repr(sink)


def test_invalid_interval_is_refused() -> None:
    with pytest.raises(ValueError):
        CounterFlusher(Counters(), MemoryCounterSink(), interval=0)


def test_record_n_helper_is_consistent() -> None:
    c = Counters()
    record_n(c, 20)
    row = c.pending[(b"sp-1", b"svc-1", b"dep-1")]
    assert row[REQ] == 20 and row[C2] == {k: int(v) for k, v in expected_health(20).items()}[b"2xx"]


async def test_a_server_refusing_every_write_keeps_the_whole_batch(
    own_redis: RedisServer, make_client: ClientFactory
) -> None:
    """OOM (like READONLY on a demoted primary) refuses the script's first write: that is not a
    partial write; the batch is kept and written once when the server accepts writes again."""
    r = make_client(own_redis.url)
    counters = Counters()
    flusher = CounterFlusher(
        counters,
        RedisCounterSink(RedisRuntimeState(r, prefix=KEYS.prefix), KEYS),
        clock=fixed_clock(),
    )
    await r.config_set("maxmemory-policy", "noeviction")
    await r.config_set("maxmemory", "1")
    record_n(counters, 7)
    try:
        assert await flusher.flush() is False
        assert counters.pending[(b"sp-1", b"svc-1", b"dep-1")][REQ] == 7
    finally:
        await r.config_set("maxmemory", "0")
    assert await flusher.flush() is True
    assert await usage_in(r, usage_key()) == 7
    assert await r.hgetall(health_key()) == expected_health(7)
