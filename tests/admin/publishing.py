"""Helpers for tests of services, hostnames and resync: the outbox, the publisher, the store.

The app's publisher drains the outbox in the background right after each commit, so asserting on
``publish_queue`` rows is only deterministic with the publisher paused (:func:`pause_publisher`);
:func:`drain` then publishes by hand, and :func:`versions` / :func:`store_log` show what went out.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.testclient import TestClient

from admin.db import (
    deployments,
    new_id,
    now_ms,
    publish_queue,
    route_versions,
    service_routes,
    services,
    snapshots,
)
from routing.store import ZERO_ID, LogEntry
from tests.admin.conftest import auth, call, rows, sql, state_of


def wait_for_epoch(client: TestClient, timeout: float = 5.0) -> str:
    """The publisher's first reconcile gives the empty store an epoch with a full resync; wait
    until that resync has finished (it sets the epoch before it clears the outbox and counts)."""
    state = state_of(client)
    deadline = time.monotonic() + timeout
    while True:
        epoch = call(client, state.store.get_epoch)
        if epoch is not None and state.publisher.resyncs >= 1:
            return epoch
        assert time.monotonic() < deadline, "the publisher never gave the store an epoch"
        time.sleep(0.01)


def pause_publisher(client: TestClient) -> None:
    """Stop the background publisher (after its start-up reconcile): the outbox keeps rows."""
    wait_for_epoch(client)
    call(client, state_of(client).publisher.stop)


def drain(client: TestClient) -> int:
    """Publish everything in the outbox now (waits for a drain already running)."""
    return call(client, state_of(client).publisher.drain)


def queued(client: TestClient) -> set[str]:
    return {r.host for r in rows(client, sa.select(publish_queue.c.host))}


def versions(client: TestClient) -> dict[str, int]:
    """Last published route version per host (the publisher bumps it on every publish)."""
    return {
        r.host: int(r.version)
        for r in rows(client, sa.select(route_versions.c.host, route_versions.c.version))
    }


def store_log(client: TestClient, host: str) -> list[LogEntry]:
    store = state_of(client).store

    async def read() -> list[LogEntry]:
        return await store.read_log(ZERO_ID, 100_000, 0)

    return [e for e in call(client, read) if e.host == host]


def store_get(client: TestClient, host: str) -> dict[str, Any] | None:
    store = state_of(client).store

    async def get() -> bytes | None:
        return await store.get(host)

    data = call(client, get)
    return None if data is None else dict(orjson.loads(data))


def create_service(client: TestClient, token: str, space: str, name: str = "web") -> dict[str, Any]:
    r = client.post(f"/api/spaces/{space}/services", json={"name": name}, headers=auth(token))
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def add_host(client: TestClient, token: str, space: str, service: str, host: str) -> Any:
    return client.post(
        f"/api/spaces/{space}/services/{service}/hostnames",
        json={"host": host},
        headers=auth(token),
    )


def routed_deployment(client: TestClient, service_id: str, upstream: str) -> str:
    """A successful deployment routed at 100 % (what the deployments API would write), and one
    route for every hostname of the service (``/``, every method)."""

    async def insert(conn: AsyncConnection) -> str:
        now = now_ms()
        snap, dep = new_id("snp"), new_id("dep")
        await conn.execute(
            sa.insert(snapshots).values(
                id=snap,
                service_id=service_id,
                config=orjson.dumps({"upstreams": [upstream], "policy": {}}).decode(),
                secrets="{}",
                created_at=now,
            )
        )
        await conn.execute(
            sa.insert(deployments).values(
                id=dep,
                service_id=service_id,
                snapshot_id=snap,
                number=1,
                status="success",
                routing_status="active",
                routing_weight=10000,
                created_at=now,
                updated_at=now,
            )
        )
        await conn.execute(
            sa.insert(service_routes).values(
                id=new_id("rte"), service_id=service_id, host=None, path_prefix="/", methods="[]"
            )
        )
        await conn.execute(
            sa.update(services).where(services.c.id == service_id).values(status="deployed")
        )
        return dep

    return sql(client, insert)
