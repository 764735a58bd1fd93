"""RuntimeState: leases, strings and counter hashes behave the same in Redis and in-process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from routing.errors import StoreError
from routing.keys import Keys
from routing.redis_store import RedisRouteStore
from routing.runtime_state import (
    MemoryRuntimeState,
    RedisRuntimeState,
    RuntimeState,
    runtime_for,
)
from routing.store import MemoryRouteStore
from tests.support.net import free_port
from tests.support.redis_server import RedisServer


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def state(request: pytest.FixtureRequest) -> AsyncIterator[RuntimeState]:
    if request.param == "memory":
        yield MemoryRuntimeState(Keys("rt"))
        return
    url = request.getfixturevalue("redis_url")
    st = RedisRuntimeState(url, prefix="rt")
    try:
        yield st
    finally:
        await st.close()


async def test_lease_is_exclusive_renewable_and_released_only_by_its_owner(
    state: RuntimeState,
) -> None:
    key = state.keys.leader("publisher")
    assert await state.acquire_lease(key, "a", 10_000)
    assert not await state.acquire_lease(key, "b", 10_000)
    assert await state.acquire_lease(key, "a", 10_000)  # renewal
    assert await state.lease_holder(key) == "a"
    assert not await state.release_lease(key, "b")
    assert await state.lease_holder(key) == "a"
    assert await state.release_lease(key, "a")
    assert await state.lease_holder(key) is None
    assert await state.acquire_lease(key, "b", 10_000)


async def test_try_lease_tells_followers_when_the_holders_lease_runs_out(
    state: RuntimeState,
) -> None:
    key = state.keys.leader("publisher")
    first = await state.try_lease(key, "a", 5_000)
    assert first.held and first.remaining_ms == 5_000
    other = await state.try_lease(key, "b", 5_000)
    assert not other.held and 4_000 < other.remaining_ms <= 5_000
    await state.set(key, b"c")  # held without an expiry (not by Turnout): negative
    assert (await state.try_lease(key, "b", 5_000)).remaining_ms < 0


async def test_notifications_reach_every_subscriber(state: RuntimeState) -> None:
    channel = state.keys.notify("publish")
    got_a: list[bytes | None] = []
    got_b: list[bytes | None] = []
    sub_a = state.subscribe(channel, got_a.append)
    sub_b = state.subscribe(channel, got_b.append)
    got_other: list[bytes | None] = []
    other = state.subscribe(state.keys.notify("other"), got_other.append)
    try:
        for sub in (sub_a, sub_b, other):
            await sub.wait_subscribed()
        await asyncio.sleep(0)  # the in-process "subscribed" callbacks
        assert await state.notify(channel, b"one") == 2
        assert await state.notify(channel) == 2
        await _until(lambda: len(got_a) >= 3 and len(got_b) >= 3)
        # None first: "(re)subscribed, you may have missed messages".
        assert got_a == [None, b"one", b""] and got_b == [None, b"one", b""]
        assert got_other == [None]
        assert sub_a.received == 2
    finally:
        for sub in (sub_a, sub_b, other):
            await sub.close()
    assert await state.notify(channel, b"late") == 0


async def _until(probe: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not probe():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_subscription_survives_a_redis_restart(own_redis: RedisServer) -> None:
    st = RedisRuntimeState(own_redis.url, prefix="rt", connect_timeout=0.3)
    got: list[bytes | None] = []
    sub = st.subscribe(st.keys.notify("publish"), got.append)
    try:
        await sub.wait_subscribed()
        own_redis.shutdown_nosave()
        await _until(lambda: not sub.connected)
        assert await _notify_fails(st)
        own_redis.start()
        await sub.wait_subscribed(10)
        assert got.count(None) >= 2  # told again after resubscribing: look for yourself
        assert await st.notify(st.keys.notify("publish"), b"after") == 1
        await _until(lambda: got[-1] == b"after")
        assert sub.reconnects >= 1 and "subscribed" in repr(sub)
    finally:
        await sub.close()
        await st.close()


async def _notify_fails(st: RuntimeState) -> bool:
    try:
        await st.notify(st.keys.notify("publish"))
    except StoreError:
        return True
    return False


async def test_strings_set_get_delete_scan(state: RuntimeState) -> None:
    k1, k2 = state.keys.pod("sp1", "p1"), state.keys.pod("sp1", "p2")
    await state.set(k1, b"one")
    await state.set(k2, b"two")
    await state.set(state.keys.pod("sp2", "p1"), b"other")
    assert await state.get(k1) == b"one"
    assert await state.scan(state.keys.pod("sp1", "*")) == sorted([k1, k2])
    assert await state.delete(k1, k2, "rt-missing") == 2
    assert await state.get(k1) is None
    assert await state.delete() == 0


async def test_hashes_count_and_skip_non_integers(state: RuntimeState) -> None:
    key = state.keys.usage("sp1", "202612")
    await state.hincrby(key, {"wfp_requests": 3, "x": 1})
    await state.hincrby(key, {"wfp_requests": 4})
    assert await state.hgetall(key) == {"wfp_requests": 7, "x": 1}
    assert await state.hgetall(state.keys.usage("nobody", "202612")) == {}


async def test_many_hashes_in_one_round_trip(state: RuntimeState) -> None:
    keys = [state.keys.usage(f"sp{i}", "202612") for i in range(3)]
    await state.hincrby(keys[0], {"wfp_requests:w1": 5})
    await state.hincrby(keys[2], {"wfp_requests:w1": 1, "wfp_requests:w2": 2})
    assert await state.hgetall_many(keys) == [
        {"wfp_requests:w1": 5},
        {},
        {"wfp_requests:w1": 1, "wfp_requests:w2": 2},
    ]
    assert await state.hgetall_many([]) == []


async def test_memory_hset_sets_fields_and_expiry() -> None:
    clock = Clock()
    st = MemoryRuntimeState(clock=clock)
    st.hset_now("h", {"a": 5, "b": 1}, 10, clock.now)
    st.hset_now("h", {"a": 3}, 10, clock.now)  # set, not add
    assert await st.hgetall("h") == {"a": 3, "b": 1}
    clock.now += 11
    assert await st.hgetall("h") == {}


async def test_memory_expiry_follows_the_clock() -> None:
    clock = Clock()
    st = MemoryRuntimeState(clock=clock)
    key = st.keys.leader("x")
    assert await st.acquire_lease(key, "a", 1_000)
    await st.set("s", b"v", ttl_ms=500)
    await st.hincrby("h", {"n": 1}, ttl_s=2)
    clock.now += 0.6
    assert await st.get("s") is None
    assert not await st.acquire_lease(key, "b", 1_000)
    clock.now += 0.5  # the lease (1 s) expired: another owner may take it
    assert await st.acquire_lease(key, "b", 1_000)
    assert await st.hgetall("h") == {"n": 1}
    clock.now += 1
    assert await st.hgetall("h") == {}


async def test_redis_errors_surface_as_store_errors() -> None:
    st = RedisRuntimeState(f"redis://127.0.0.1:{free_port()}/0", prefix="rt", connect_timeout=0.2)
    try:
        with pytest.raises(StoreError):
            await st.get("x")
        with pytest.raises(StoreError):
            await st.acquire_lease(st.keys.leader("p"), "a", 1000)
    finally:
        await st.close()


async def test_runtime_for_shares_the_route_stores_client(redis_url: str) -> None:
    store = RedisRouteStore(redis_url, prefix="rt")
    try:
        st = runtime_for(store)
        assert isinstance(st, RedisRuntimeState) and st.redis is store.redis
        assert st.keys.prefix == "rt"
        await st.close()  # not owned: the store's client stays usable
        assert await store.get_epoch() is None
    finally:
        await store.close()
    assert isinstance(runtime_for(MemoryRouteStore()), MemoryRuntimeState)
