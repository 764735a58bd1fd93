"""The publish outbox never loses a change that commits while its host is being published."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from admin import publisher as publisher_module
from admin.db import publish_queue
from admin.publisher import LeaseHeld, Publisher, _next_version
from admin.routes import compute_record
from routing.models import RouteRecord
from routing.redis_store import RedisRouteStore
from tests.admin.conftest import auth, bootstrap, call, create_space, rows, state_of
from tests.admin.publishing import pause_publisher, store_log
from tests.admin.test_deployments import BASE, manifest, published, targets_of


def test_change_committed_during_a_publish_is_published_later(client: TestClient) -> None:
    """Publisher reads the queue row and computes the record (deploy 1); deploy 2 commits;
    the publisher then publishes its (old) record and clears the rows it covered. The row for
    deploy 2 must survive that, so the next drain publishes the canary."""
    st = state_of(client)
    pause_publisher(client)
    token = bootstrap(client)
    space = create_space(client, token, "t")
    host = f"web.shop.{BASE}"
    _deploy(client, token, space, manifest())
    [seen] = [r for r in rows(client, sa.select(publish_queue)) if r.host == host]

    async def compute() -> RouteRecord | None:
        async with st.engine.begin() as conn:
            version = await _next_version(conn, host)
            return await compute_record(conn, host, version)

    stale = call(client, compute)
    assert stale is not None
    _deploy(client, token, space, manifest(strategy="canary", canary_weight=20))

    async def finish_old_publish() -> None:
        await st.store.publish(stale)
        async with st.engine.begin() as conn:
            await conn.execute(
                sa.delete(publish_queue).where(
                    publish_queue.c.host == host,
                    publish_queue.c.enqueued_at <= seen.enqueued_at,
                )
            )

    call(client, finish_old_publish)
    assert host in {r.host for r in rows(client, sa.select(publish_queue))}
    call(client, st.publisher.drain)
    record = published(client, host)
    assert record is not None
    assert len(targets_of(record)) == 2  # the canary went out


def _deploy(client: TestClient, token: str, space: str, body: dict[str, Any]) -> None:
    """Deploy without letting the publisher run (it is paused)."""
    r = client.post(
        f"/api/spaces/{space}/app-deployments",
        content=orjson.dumps(body),
        headers={**auth(token), "content-type": "application/json"},
    )
    assert r.status_code == 201, r.text


def test_one_failing_host_does_not_hold_back_the_others(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = state_of(client)
    pause_publisher(client)
    real = publisher_module.compute_record

    async def flaky(conn: Any, host: str, version: int) -> RouteRecord | None:
        if host == "bad.example.com":
            raise KeyError("upstreams")  # e.g. a snapshot config written by a broken release
        return await real(conn, host, version)

    monkeypatch.setattr(publisher_module, "compute_record", flaky)

    async def enqueue() -> None:
        async with st.engine.begin() as conn:
            await conn.execute(
                sa.insert(publish_queue),
                [
                    {"host": "bad.example.com", "enqueued_at": 1},  # first in line
                    {"host": "good.example.com", "enqueued_at": 2},
                ],
            )

    call(client, enqueue)
    assert call(client, st.publisher.drain) == 1
    assert {r.host for r in rows(client, sa.select(publish_queue))} == {"bad.example.com"}
    assert store_log(client, "good.example.com")  # its tombstone went out
    assert st.publisher.failures >= 1 and "bad.example.com" in (st.publisher.last_error or "")


def test_only_the_lease_holder_publishes(client: TestClient, redis_url: str) -> None:
    """Two admin instances on one Redis: only the publisher-lease holder drains and resyncs,
    so a resync can never swap in records older than the other instance's publish."""
    st = state_of(client)
    pause_publisher(client)

    async def scenario() -> None:
        s1 = RedisRouteStore(redis_url, prefix="lease")
        s2 = RedisRouteStore(redis_url, prefix="lease")
        p1, p2 = Publisher(st.engine, s1), Publisher(st.engine, s2)

        async def enqueue(host: str, at: int) -> None:
            async with st.engine.begin() as conn:
                await conn.execute(sa.insert(publish_queue).values(host=host, enqueued_at=at))

        try:
            await enqueue("x.example.com", 10)
            assert await p1.drain() == 1  # p1 takes the lease
            await enqueue("y.example.com", 11)
            assert await p2.drain() == 0  # p2 leaves the row to the lease holder
            with pytest.raises(LeaseHeld):
                await p2.resync()
            assert await p1.drain() == 1
        finally:
            await s1.close()
            await s2.close()

    call(client, scenario)
