"""The publisher with several admin instances: pokes to the lease holder, and repairing a route
store that lost acknowledged writes (a Sentinel failover, a restart from disk)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from admin.app import create_app
from admin.crypto import KeyRing
from admin.db import route_versions
from admin.settings import Settings
from routing.redis_store import RedisRouteStore
from routing.store import MemoryRouteStore
from routing.table import RouteTable
from tests.admin.conftest import TEST_KEYS, auth, bootstrap, call, create_space, rows, state_of

BASE = "turnout.localhost"


def manifest(app: str, upstream: str = "http://127.0.0.1:9") -> dict[str, Any]:
    """One service named after the app (service names are unique per space): ``<app>.<app>``."""
    return {
        "apiVersion": "turnout/v1",
        "kind": "App",
        "metadata": {"name": app},
        "spec": {
            "services": {app: {"type": "http", "upstreams": [upstream]}},
            "routes": [{"service": app}],
        },
    }


def deploy(client: TestClient, token: str, space: str, doc: dict[str, Any]) -> None:
    r = client.post(f"/api/spaces/{space}/app-deployments", json=doc, headers=auth(token))
    assert r.status_code == 201, r.text


def wait(probe: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not probe():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout}s"
        time.sleep(0.002)
    return time.monotonic() - started


@pytest.mark.postgres
def test_a_write_on_a_non_holder_is_published_within_one_drain(
    postgres_url: str, redis_url: str
) -> None:
    """Two admins on one PostgreSQL database and one Redis. The retry timer is 30 s, so only
    the poke (follower → ``{p}:notify:publish`` → holder) can publish the follower's commit
    quickly; a route table tailing Redis (what a gateway runs) sees it."""

    def settings() -> Settings:
        return Settings(
            db_url=postgres_url,
            redis_url=redis_url,
            redis_prefix="poke",
            keys=KeyRing.parse(TEST_KEYS),
            publish_retry_seconds=30.0,
            reconcile_interval=30.0,
        )

    with TestClient(create_app(settings())) as holder:
        a = state_of(holder)
        wait(lambda: a.loops.lease.holding, 10, "the first admin takes the lease")
        with TestClient(create_app(settings())) as follower:
            b = state_of(follower)
            assert not b.loops.lease.holding
            token = bootstrap(holder)
            space = create_space(follower, token, "team")
            table = RouteTable(RedisRouteStore(redis_url, prefix="poke"))
            call(holder, table.start)
            try:
                delays = []
                for i in range(5):
                    host = f"app{i}.app{i}.{BASE}".encode()
                    deploy(follower, token, space, manifest(f"app{i}"))
                    committed = time.monotonic()  # the answer comes after the commit
                    wait(lambda h=host: table.lookup(h) is not None, 5, "visible at the table")
                    delays.append(time.monotonic() - committed)
                print(
                    f"follower commit -> visible at a route table: {[round(d, 4) for d in delays]}"
                )
                assert max(delays) < 1.0, delays  # ≪ the 30 s retry timer: one drain, poked
                # (The holder counts a publish after it cleared the outbox row: just after.)
                wait(lambda: a.publisher.published >= 5, 5, "the holder counts its publishes")
                assert b.publisher.pokes_sent >= 5 and b.publisher.published == 0
                assert a.publisher.pokes_received >= 5
                metrics = follower.get("/metrics").text
                assert 'turnout_admin_publish_pokes_total{direction="sent"}' in metrics
                assert follower.get("/readyz").json()["leader"] is False
                assert holder.get("/readyz").json()["leader"] is True
            finally:
                call(holder, table.stop)
                call(holder, table.store.close)


def test_repair_republishes_what_a_promoted_replica_lacks(client: TestClient) -> None:
    """A failover to a replica that missed the last writes: same epoch, older data, another
    server. The reconciler notices the server changed and republishes exactly what is behind."""
    state = state_of(client)
    store = state.store
    assert isinstance(store, MemoryRouteStore)
    token = bootstrap(client)
    space = create_space(client, token, "team")
    deploy(client, token, space, manifest("one"))
    call(client, state.publisher.drain)
    wait(lambda: call(client, store.get_epoch) is not None, 5, "first resync")
    assert call(client, state.publisher.reconcile) is False  # same server: nothing to do
    replica = store.checkpoint()
    deploy(client, token, space, manifest("one", "http://127.0.0.1:10"))  # changed
    deploy(client, token, space, manifest("two"))  # new
    call(client, state.publisher.drain)
    sql_versions = {r.host: r.version for r in rows(client, sa.select(route_versions))}
    assert call(client, store.versions) == sql_versions

    store.fail_over_to(replica)
    behind = call(client, store.versions)
    assert behind != sql_versions and f"two.two.{BASE}" not in behind
    ident = call(client, store.identity)
    assert ident.moved and ident.epoch is not None
    before = state.publisher.repairs
    assert call(client, state.publisher.reconcile) is True
    assert state.publisher.repairs - before == 2  # one.one (older) and two.two (missing)
    now = call(client, store.versions)
    fresh = {r.host: r.version for r in rows(client, sa.select(route_versions))}
    assert now == fresh and now[f"one.one.{BASE}"] > sql_versions[f"one.one.{BASE}"]
    assert not call(client, store.identity).moved
    assert call(client, state.publisher.reconcile) is False
    assert call(client, store.get_epoch) == ident.epoch  # no full resync: gateways keep going
    assert "turnout_admin_repaired_total 2" in client.get("/metrics").text
