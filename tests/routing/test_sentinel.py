"""Clients built from a ``redis+sentinel://`` URL follow the primary: the route store, a route
table tailing it, the runtime state's leases and notifications — across a crash of the primary
and across a manual failover that demotes a live primary (``READONLY`` answers)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from redis.exceptions import RedisError

from routing.errors import StoreError
from routing.redis_store import RedisRouteStore
from routing.runtime_state import RedisRuntimeState
from routing.table import RouteTable
from tests.routing.store_support import make_record
from tests.support.sentinel import SentinelCluster

T = TypeVar("T")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    with SentinelCluster(tmp_path_factory.mktemp("sentinel"), password="pw-routing") as c:
        yield c


async def retry(op: Callable[[], Awaitable[T]], timeout: float = 20.0) -> tuple[T, float]:
    """``op()`` until it stops raising store/connection errors; its result and the wait."""
    started = time.monotonic()
    while True:
        try:
            return await op(), time.monotonic() - started
        except (StoreError, RedisError, OSError) as exc:
            if time.monotonic() - started > timeout:
                raise AssertionError(f"still failing after {timeout}s: {exc!r}") from exc
            await asyncio.sleep(0.05)


async def until(probe: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not probe():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_store_table_leases_and_notifications_follow_the_primary(
    cluster: SentinelCluster, tmp_path: Path
) -> None:
    url = cluster.url
    store = RedisRouteStore(url, connect_timeout=0.5)
    table = RouteTable(RedisRouteStore(url, connect_timeout=0.5), block_ms=200)
    runtime = RedisRuntimeState(url, connect_timeout=0.5)
    pokes: list[bytes | None] = []
    sub = runtime.subscribe(runtime.keys.notify("publish"), pokes.append)
    try:
        await store.replace_all([make_record("a.example.com", 1)])
        assert await table.start(wait=5)
        await sub.wait_subscribed()
        assert await runtime.acquire_lease(runtime.keys.leader("p"), "me", 60_000)

        # 1. The primary crashes: the Sentinels promote the replica; nobody restarts.
        old = cluster.primary()
        cluster.kill(old)
        new = await asyncio.to_thread(cluster.wait_for_failover, old)
        _, waited = await retry(lambda: store.publish(make_record("a.example.com", 2)))
        print(f"first write accepted {waited:.2f}s after the failover was visible")
        await until(lambda: _version(table, "a.example.com") == 2, 10, "the table follows")
        # The lease key was replicated; it is still ours on the new primary.
        assert await runtime.lease_holder(runtime.keys.leader("p")) == "me"
        await until(lambda: sub.connected, 10, "the subscription is back")
        before = len(pokes)
        assert await runtime.notify(runtime.keys.notify("publish"), b"after-crash") >= 1
        await until(lambda: b"after-crash" in pokes[before:], 5, "notification delivered")
        assert None in pokes[1:]  # told "(re)subscribed: look for yourself"
        await asyncio.to_thread(cluster.start_node, old, replica_of=new)

        # 2. A manual failover demotes a live primary: writes there answer READONLY, and the
        #    client reconnects through the Sentinels instead of failing for good.
        await asyncio.to_thread(cluster.manual_failover)
        _, waited = await retry(lambda: store.publish(make_record("a.example.com", 3)))
        await until(lambda: _version(table, "a.example.com") == 3, 10, "the table follows again")
        assert await runtime.acquire_lease(runtime.keys.leader("p"), "me", 60_000)
        assert "pw-routing" not in repr(store) + repr(runtime) + repr(table.store)
    finally:
        await sub.close()
        await runtime.close()
        await table.stop()
        await table.store.close()
        await store.close()


def _version(table: RouteTable, host: str) -> int:
    route: Any = table.lookup(host.encode())
    return 0 if route is None else int(route.version)
