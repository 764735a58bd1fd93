"""Counter flushing: exact counts in a real Redis, health/usage layout, failure and recovery."""

from __future__ import annotations

import asyncio
import calendar
import logging
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from gateway.counters import C2, C5, REQ, Counters, epoch_minute
from gateway.flusher import (
    HEALTH_TTL,
    CounterFlusher,
    MemoryCounterSink,
    RedisCounterSink,
    plan_writes,
    usage_month,
)
from routing.health import LATENCY_FIELDS, latency_bucket
from routing.keys import Keys
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
    plan = {p.key: p for p in plan_writes(c.take(), NOW, KEYS)}

    assert plan[usage_key("sp-1")].fields == {"wfp_requests": 2}
    assert plan[usage_key("sp-2")].fields == {"wfp_requests": 1}
    assert plan[usage_key("sp-1")].ttl is None
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
    assert plan[health_key("dep-2")].fields == {
        "total": 1,
        "5xx": 1,
        "latency_ms_sum": 2,
        "lat_14": 1,  # 2.4 ms: [2.4, 2.8)
    }
    assert len(plan) == 4


# ---------------------------------------------------------------------- Redis


async def test_n_recorded_are_exactly_n_in_redis(
    redis_url: str, make_client: ClientFactory
) -> None:
    r = make_client(redis_url)
    counters = Counters()
    flusher = CounterFlusher(counters, RedisCounterSink(r, KEYS), clock=fixed_clock())
    record_n(counters, 1000)
    record_n(counters, 7, space=b"sp-2", dep=b"dep-2")

    assert await flusher.flush() is True

    assert counters.pending == {}
    assert flusher.flushes == 1 and flusher.flush_errors == 0
    assert flusher.last_flush_seconds > 0
    assert await r.hgetall(usage_key("sp-1")) == {b"wfp_requests": b"1000"}
    assert await r.hgetall(usage_key("sp-2")) == {b"wfp_requests": b"7"}
    assert await r.hgetall(health_key("dep-1")) == expected_health(1000)
    assert await r.hgetall(health_key("dep-2")) == expected_health(7)
    for key in (health_key("dep-1"), health_key("dep-2")):
        assert HEALTH_TTL - 10 <= await r.ttl(key) <= HEALTH_TTL
    assert await r.ttl(usage_key("sp-1")) == -1  # usage is cumulative: never expires
    assert usage_key("sp-1") == "{turnout}:usage:sp-1:202402"
    assert health_key("dep-1") == f"{{turnout}}:health:dep-1:{int(NOW // 60)}"

    # Nothing pending: a flush writes nothing and counts nothing.
    assert await flusher.flush() is True
    assert flusher.flushes == 1

    # Increments accumulate across flushes.
    record_n(counters, 3)
    assert await flusher.flush() is True
    assert await r.hget(usage_key("sp-1"), "wfp_requests") == b"1003"


async def test_failed_flush_keeps_counts_until_a_later_flush_writes_them_once(
    redis_url: str, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    dead = make_client(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    live = make_client(redis_url)
    counters = Counters()
    flusher = CounterFlusher(counters, RedisCounterSink(dead, KEYS), clock=fixed_clock())
    record_n(counters, 40)

    with caplog.at_level(logging.WARNING, logger="turnout.gateway.flusher"):
        assert await flusher.flush() is False
        record_n(counters, 2)
        assert await flusher.flush() is False  # second failure within 10 s: not logged again

    assert flusher.flush_errors == 2 and flusher.flushes == 0
    assert counters.pending[(b"sp-1", b"svc-1", b"dep-1")][REQ] == 42
    warnings = [r for r in caplog.records if r.name == "turnout.gateway.flusher"]
    assert len(warnings) == 1 and "counter flush failed" in warnings[0].getMessage()

    flusher.sink = RedisCounterSink(live, KEYS)
    assert await flusher.flush() is True
    assert await flusher.flush() is True
    assert flusher.flushes == 1 and counters.pending == {}
    assert await live.hgetall(usage_key()) == {b"wfp_requests": b"42"}
    assert (await live.hgetall(health_key()))[b"total"] == b"42"


async def test_flush_survives_redis_going_away_and_coming_back(
    own_redis: RedisServer, make_client: ClientFactory
) -> None:
    r = make_client(own_redis.url)
    counters = Counters()
    flusher = CounterFlusher(counters, RedisCounterSink(r, KEYS), clock=fixed_clock())
    record_n(counters, 5)
    assert await flusher.flush() is True

    own_redis.stop()
    record_n(counters, 10)
    assert await flusher.flush() is False
    assert await flusher.flush() is False
    assert counters.pending[(b"sp-1", b"svc-1", b"dep-1")][REQ] == 10

    own_redis.start()  # empty again (no persistence): only what was not yet written arrives
    assert await flusher.flush() is True
    assert await r.hgetall(usage_key()) == {b"wfp_requests": b"10"}
    assert await r.hgetall(health_key()) == expected_health(10)
    assert flusher.flush_errors == 2 and flusher.flushes == 2


async def test_partial_write_is_counted_and_not_retried(
    redis_url: str, make_client: ClientFactory
) -> None:
    r = make_client(redis_url)
    await r.set(usage_key(), "not a hash")  # WRONGTYPE for the usage HINCRBY only
    counters = Counters()
    flusher = CounterFlusher(counters, RedisCounterSink(r, KEYS), clock=fixed_clock())
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
        counters, RedisCounterSink(r, KEYS), interval=0.02, clock=fixed_clock()
    )
    flusher.start()
    try:
        assert flusher.running
        with pytest.raises(RuntimeError):
            flusher.start()
        for round_ in range(1, 4):
            record_n(counters, 10)
            for _ in range(200):
                if await r.hget(usage_key(), "wfp_requests") == str(10 * round_).encode():
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
        counters, RedisCounterSink(r, KEYS), interval=3600, clock=fixed_clock()
    )
    flusher.start()
    await asyncio.sleep(0)
    record_n(counters, 25)

    await flusher.stop()

    assert await r.hgetall(usage_key()) == {b"wfp_requests": b"25"}
    assert counters.pending == {}
    await flusher.stop()  # idempotent


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

    assert sink.hgetall(usage_key("sp-1")) == {"wfp_requests": 100}
    assert sink.hgetall(usage_key("sp-2")) == {"wfp_requests": 3}
    health = sink.hgetall(health_key())
    assert health == {k.decode(): int(v) for k, v in expected_health(103).items()}
    assert health["total"] == 103 and health["2xx"] + health["4xx"] + health["5xx"] == 103
    assert sink.ttl(health_key()) == HEALTH_TTL
    assert sink.ttl(usage_key()) is None

    # Same minute: increments add up. Past the TTL: health keys are gone, usage stays.
    counters.record(b"sp-1", b"svc-1", b"dep-1", 200, 1, 1.0, False)
    assert await flusher.flush() is True
    assert sink.hgetall(health_key())["total"] == 104
    now[0] += HEALTH_TTL + 1
    assert sink.hgetall(health_key(now=NOW)) == {}
    assert sink.hgetall(usage_key("sp-1")) == {"wfp_requests": 101}
    assert sink.writes == 2 and "writes=2" in repr(sink)


def test_invalid_interval_is_refused() -> None:
    with pytest.raises(ValueError):
        CounterFlusher(Counters(), MemoryCounterSink(), interval=0)


def test_record_n_helper_is_consistent() -> None:
    c = Counters()
    record_n(c, 20)
    row = c.pending[(b"sp-1", b"svc-1", b"dep-1")]
    assert row[REQ] == 20 and row[C2] == {k: int(v) for k, v in expected_health(20).items()}[b"2xx"]
