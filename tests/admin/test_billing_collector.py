"""The usage collector: exactly-once folding of the gateway's cumulative counters, and request
quota enforcement through the outbox.

The counters are written by the gateway's own code (``Counters`` → ``CounterFlusher`` →
``MemoryCounterSink``) into the admin's in-process runtime state, exactly as ``turnout dev``
shares them; the Redis flavour of the same store is covered by tests/routing and the end-to-end
tests (tests/e2e/test_billing_e2e.py).
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from admin.billing.collector import UsageCollector
from admin.billing.meters import period_of
from admin.billing.schema import billing_ledger, usage_checkpoints, usage_rollups
from admin.db import audit_log
from admin.settings import Settings
from gateway.counters import Counters
from gateway.flusher import CounterFlusher, MemoryCounterSink
from routing.runtime_state import MemoryRuntimeState
from tests.admin.conftest import (
    assert_error,
    auth,
    bootstrap,
    call,
    create_space,
    rows,
    state_of,
)
from tests.admin.publishing import drain, store_get, wait_for_epoch

T0 = float(calendar.timegm((2026, 3, 10, 12, 0, 0)))
MONTH_END = float(calendar.timegm((2026, 3, 31, 23, 59, 59)))
MANIFEST = {
    "apiVersion": "turnout/v1",
    "kind": "App",
    "metadata": {"name": "shop"},
    "spec": {
        "services": {"web": {"type": "http", "upstreams": ["http://127.0.0.1:9"]}},
        "routes": [{"service": "web"}],
    },
}


class Killed(Exception):
    """Stands in for SIGKILL inside a test process."""


class Gateway:
    """One gateway worker's counting path, flushing into the admin's runtime state."""

    def __init__(self, runtime: Any, clock: list[float]) -> None:
        self.counters = Counters()
        self.sink = MemoryCounterSink(state=runtime, clock=lambda: clock[0])
        self.flusher = CounterFlusher(self.counters, self.sink, clock=lambda: clock[0])

    def requests(self, space: str, n: int) -> None:
        for _ in range(n):
            self.counters.record(space.encode(), b"svc", b"dep", 200, 10, 1.0, False)


class World:
    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.token = bootstrap(client)
        self.state = state_of(client)
        self.clock = [T0]
        self.state.billing.clock = lambda: self.clock[0]
        self.runtime = self.state.runtime
        assert isinstance(self.runtime, MemoryRuntimeState)
        self.runtime.clock = lambda: self.clock[0]  # counter keys expire by the same clock

    @property
    def collector(self) -> UsageCollector:
        return self.state.billing.collector

    def gateway(self) -> Gateway:
        return Gateway(self.runtime, self.clock)

    def flush(self, *gateways: Gateway) -> None:
        for gw in gateways:
            assert call(self.client, gw.flusher.flush) is True

    def collect(self) -> dict[str, int]:
        result: dict[str, int] = call(self.client, self.collector.run)
        return result

    def space(self, name: str = "tenant") -> str:
        return create_space(self.client, self.token, name)

    def rollup(self, space: str, period: str | None = None) -> tuple[int, int] | None:
        found = rows(
            self.client,
            sa.select(usage_rollups.c.units, usage_rollups.c.cost_cents).where(
                usage_rollups.c.space_id == space,
                usage_rollups.c.meter == "wfp_requests",
                usage_rollups.c.period == (period or period_of(self.clock[0])),
            ),
        )
        return (int(found[0].units), int(found[0].cost_cents)) if found else None

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return self.client.request(method, path, json=body, headers=auth(self.token))

    def account(self, space: str) -> dict[str, Any]:
        r = self.api("GET", f"/api/spaces/{space}/billing")
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out


@pytest.fixture
def world(client: TestClient) -> Iterator[World]:
    yield World(client)


# ------------------------------------------------------------------------------ folding


def test_two_writers_fold_exactly_once(world: World) -> None:
    a, b = world.space("a"), world.space("b")
    gw1, gw2 = world.gateway(), world.gateway()
    gw1.requests(a, 7)
    gw2.requests(a, 5)
    gw2.requests(b, 3)
    world.flush(gw1, gw2)
    assert world.collect()["folded"] == 15
    assert world.rollup(a) == (12, 0) and world.rollup(b) == (3, 0)
    assert world.collect()["folded"] == 0  # nothing new: nothing folded twice
    gw1.requests(a, 4)
    world.flush(gw1, gw2)  # gw2 re-asserts its unchanged totals: still nothing twice
    assert world.collect()["folded"] == 4
    assert world.rollup(a) == (16, 0)
    cps = rows(
        world.client,
        sa.select(usage_checkpoints.c.writer, usage_checkpoints.c.value).where(
            usage_checkpoints.c.space_id == a
        ),
    )
    assert sorted((c.writer, int(c.value)) for c in cps) == sorted(
        [(gw1.sink.usage.writer, 11), (gw2.sink.usage.writer, 5)]
    )
    assert world.collector.folded == {"wfp_requests": 19}


def test_a_collector_that_dies_before_commit_folds_the_delta_once_later(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = world.space()
    gw = world.gateway()
    gw.requests(space, 9)
    world.flush(gw)
    original = UsageCollector._fold

    async def die_after_writing(self: UsageCollector, *args: Any) -> Any:
        await original(self, *args)  # rollup and checkpoint written in the transaction...
        raise Killed("before commit")  # ...which never commits

    monkeypatch.setattr(UsageCollector, "_fold", die_after_writing)
    with pytest.raises(Killed):
        world.collect()
    assert world.rollup(space) is None
    assert rows(world.client, sa.select(usage_checkpoints)) == []
    monkeypatch.setattr(UsageCollector, "_fold", original)
    gw.requests(space, 1)
    world.flush(gw)
    assert world.collect()["folded"] == 10
    assert world.collect()["folded"] == 0
    assert world.rollup(space) == (10, 0)


@pytest.mark.parametrize("existing", [False, True], ids=["new-checkpoint", "moved-checkpoint"])
def test_two_collectors_racing_fold_a_delta_once(world: World, existing: bool) -> None:
    space = world.space()
    gw = world.gateway()
    gw.requests(space, 3)
    world.flush(gw)
    if existing:
        world.collect()
        gw.requests(space, 4)
        world.flush(gw)
    other = UsageCollector(
        world.state.engine,
        world.runtime,
        clock=lambda: world.clock[0],
        kick=lambda: None,
        warnings=world.state.billing.warnings,
    )
    period = period_of(world.clock[0])

    engine = world.state.engine

    async def race() -> tuple[int, type[Exception]]:
        # The stalled instance reads Redis and the checkpoints (its lease expired meanwhile)...
        async with engine.begin() as conn:
            plan = await other._plan(conn, await other.read(period), period)
        assert sum(plan.deltas.values()) == (4 if existing else 3)
        result = await world.collector.run()  # ...the new leader folds the same delta...
        try:  # ...and the stalled one wakes up and writes what it had planned.
            async with engine.begin() as conn:
                await other._apply(conn, plan)
        except (sa.exc.IntegrityError, Exception) as exc:
            return result["folded"], type(exc)
        raise AssertionError("the stale fold committed")

    folded, error = call(world.client, race)
    assert folded == (4 if existing else 3)
    assert error.__name__ == ("Raced" if existing else "IntegrityError")
    assert world.rollup(space) == ((7, 0) if existing else (3, 0))
    # The same interleaving through fold(): the chunk rolls back and counts as a race.
    gw.requests(space, 2)
    world.flush(gw)

    async def race_again() -> dict[str, int]:
        async with engine.begin() as conn:
            plan = await other._plan(conn, await other.read(period), period)
        await world.collector.run()

        async def stale_plan(*_args: Any) -> Any:
            return plan

        other._plan = stale_plan  # type: ignore[method-assign]
        return await other.fold(await other.read(period), period)

    assert call(world.client, race_again) == {}
    assert other.races == 1 and other.pending_units == 0
    assert world.rollup(space) == ((9, 0) if existing else (5, 0))


def test_lost_and_expired_counter_keys_come_back_with_the_writer(world: World) -> None:
    space = world.space()
    gw = world.gateway()
    gw.requests(space, 6)
    world.flush(gw)
    world.collect()
    key = world.runtime.keys.usage(space, "202603")
    call(world.client, lambda: world.runtime.delete(key))  # expired, evicted, Redis restarted
    assert world.collect()["folded"] == 0
    world.clock[0] += 120  # past the gateway's re-assertion window
    gw.requests(space, 2)
    world.flush(gw)  # the writer's next write carries its whole total
    assert world.collect()["folded"] == 2
    assert world.rollup(space) == (8, 0)
    # A value below the checkpoint (a writer that lost its own total) folds nothing.
    world.runtime.hset_now(key, {gw.sink.usage.field: 3}, None, world.clock[0])
    assert world.collect()["folded"] == 0
    cp = rows(world.client, sa.select(usage_checkpoints.c.value))
    assert [int(c.value) for c in cp] == [8]


def test_foreign_fields_old_months_and_deleted_spaces_are_skipped(world: World) -> None:
    space, gone = world.space(), world.space("gone")
    runtime = world.runtime
    key = runtime.keys.usage(space, "202603")
    runtime.hset_now(
        key,
        {"wfp_requests": 5, "bogus:w1": 5, "wfp_requests:": 5, "wfp_requests:w1": 10**13},
        None,
        T0,
    )
    runtime.hset_now(runtime.keys.usage(space, "202511"), {"wfp_requests:w1": 5}, None, T0)
    runtime.hset_now(runtime.keys.usage(space, "2026xx"), {"wfp_requests:w1": 5}, None, T0)
    runtime.hset_now(runtime.keys.usage(gone, "202603"), {"wfp_requests:w1": 5}, None, T0)
    assert world.api("DELETE", f"/api/spaces/{gone}").status_code == 204
    runtime.hset_now(runtime.keys.usage(space, "202512"), {"wfp_requests:w2": 2}, None, T0)
    result = world.collect()
    assert result["folded"] == 2  # only December (within four months)
    assert world.rollup(space, "2025-12") == (2, 0)
    assert world.collector.ignored_fields == 4


def test_checkpoints_older_than_the_fold_window_are_pruned(world: World) -> None:
    space = world.space()
    world.runtime.hset_now(
        world.runtime.keys.usage(space, "202512"), {"wfp_requests:w1": 2}, None, T0
    )
    world.collect()
    assert len(rows(world.client, sa.select(usage_checkpoints))) == 1
    world.clock[0] = float(calendar.timegm((2026, 4, 2, 0, 0, 0)))  # December leaves the window
    world.collect()
    assert rows(world.client, sa.select(usage_checkpoints)) == []
    assert world.rollup(space, "2025-12") == (2, 0)  # the rollup stays


# ------------------------------------------------------------------------------ enforcement


def deploy(world: World, space: str) -> str:
    r = world.client.post(
        f"/api/spaces/{space}/app-deployments", json=MANIFEST, headers=auth(world.token)
    )
    assert r.status_code == 201, r.text
    host: str = r.json()["services"][0]["hostnames"][0]
    return host


def record(world: World, host: str) -> dict[str, Any]:
    drain(world.client)
    rec = store_get(world.client, host)
    assert rec is not None
    return rec


def test_over_the_request_quota_the_hostnames_are_published_blocked(world: World) -> None:
    wait_for_epoch(world.client)
    space = world.space()
    host = deploy(world, space)
    assert record(world, host)["blocked"] is None
    gw = world.gateway()
    gw.requests(space, 99)
    world.flush(gw)
    assert world.collect()["blocked"] == 0
    assert world.account(space)["status"] == "active"
    gw.requests(space, 1)  # the 100th: no request may follow it
    world.flush(gw)
    assert world.collect()["blocked"] == 1
    assert world.account(space)["status"] == "blocked"
    assert record(world, host)["blocked"] == "payment_required"
    assert world.collector.blocked_spaces == 1
    audit = rows(
        world.client,
        sa.select(audit_log.c.action, audit_log.c.request_id).where(
            audit_log.c.action.like("billing_%")
        ),
    )
    assert [(a.action, a.request_id) for a in audit] == [("billing_block", "usage-collector")]
    # Raising the plan unblocks at once (the API re-decides), not only on the next cycle.
    r = world.api("PATCH", f"/api/spaces/{space}/billing", {"plan": "plan_plus"})
    assert r.status_code == 200 and r.json()["status"] == "active"
    assert record(world, host)["blocked"] is None
    assert world.collect()["unblocked"] == 0
    # Down again to Free: blocked again at once; a new month unblocks on the next cycle.
    r = world.api("PATCH", f"/api/spaces/{space}/billing", {"plan": "plan_free"})
    assert r.json()["status"] == "blocked"
    assert record(world, host)["blocked"] == "payment_required"
    world.clock[0] = MONTH_END
    assert world.collect()["unblocked"] == 0
    world.clock[0] = MONTH_END + 1
    assert world.collect()["unblocked"] == 1
    assert record(world, host)["blocked"] is None
    assert world.collector.blocked_spaces == 0


def test_payg_requests_are_charged_and_block_when_the_balance_runs_out(world: World) -> None:
    space = world.space()
    assert (
        world.api("PATCH", f"/api/spaces/{space}/billing", {"plan": "plan_payg"}).json()["status"]
        == "blocked"
    )  # no balance: not even one request at 1 cent
    r = world.api(
        "POST", f"/api/spaces/{space}/billing/credit", {"amount_cents": 50, "idempotency_key": "k"}
    )
    assert r.status_code == 201
    assert world.account(space)["status"] == "active"  # the credit unblocked at once
    gw = world.gateway()
    gw.requests(space, 60)  # ten more than the balance pays for: one cycle's overshoot
    world.flush(gw)
    assert world.collect()["blocked"] == 1
    account = world.account(space)
    assert account["balance_cents"] == -10 and account["status"] == "blocked"
    assert world.rollup(space) == (60, 60)
    debits = rows(
        world.client,
        sa.select(
            billing_ledger.c.amount_cents, billing_ledger.c.units, billing_ledger.c.principal_id
        ).where(billing_ledger.c.kind == "debit"),
    )
    assert [(int(d.amount_cents), int(d.units), d.principal_id) for d in debits] == [
        (-60, 60, None)
    ]
    r = world.api(
        "POST", f"/api/spaces/{space}/billing/credit", {"amount_cents": 10, "idempotency_key": "k2"}
    )
    assert world.account(space)["status"] == "blocked"  # back to 0: still cannot pay 1 cent
    r = world.api(
        "POST", f"/api/spaces/{space}/billing/credit", {"amount_cents": 1, "idempotency_key": "k3"}
    )
    assert r.status_code == 201 and world.account(space)["status"] == "active"


def test_a_plan_without_a_request_rate_or_quota_blocks_fail_closed(world: World) -> None:
    space = world.space()
    quotas = {m: {"quota": 1000} for m in world.api("GET", "/api/plans/plan_plus").json()["quotas"]}
    quotas["wfp_requests"] = {"quota": 0}
    r = world.api("POST", "/api/plans", {"id": "plan_norequests", "name": "No", "quotas": quotas})
    assert r.status_code == 201, r.text
    r = world.api("PATCH", f"/api/spaces/{space}/billing", {"plan": "plan_norequests"})
    assert r.json()["status"] == "blocked"  # quota 0: no request at all, before any traffic
    world.api("PATCH", "/api/plans/plan_norequests", {"quotas": {"wfp_requests": {"quota": 10}}})
    assert world.collect()["unblocked"] == 1  # a plan edit takes effect on the next cycle
    assert world.account(space)["status"] == "active"


def test_collector_metrics_on_the_admin(world: World) -> None:
    space = world.space()
    gw = world.gateway()
    gw.requests(space, 100)
    world.flush(gw)
    world.collect()
    world.clock[0] += 2.5
    text = world.client.get("/metrics").text
    assert 'turnout_admin_usage_folded_units_total{meter="wfp_requests"} 100' in text
    assert "turnout_admin_usage_collector_lag_seconds 2.500" in text
    assert "turnout_admin_billing_blocked_spaces 1" in text
    assert "turnout_admin_usage_collector_pending_units 0" in text
    assert 'turnout_admin_leader_job_runs_total{job="usage-collector"}' in text


def test_the_collector_is_a_leader_job_on_usage_interval(world: World) -> None:
    st = world.state.loops.stats["usage-collector"]
    assert st.interval == world.state.settings.usage_interval == 10.0
    env = {"TURNOUT_USAGE_INTERVAL": "0.3"}
    assert Settings.from_env(env).usage_interval == 0.3
    for bad in ("fast", "0", "7200"):
        with pytest.raises(SystemExit, match="TURNOUT_USAGE_INTERVAL"):
            Settings.from_env({"TURNOUT_USAGE_INTERVAL": bad})
    # Via the job runner, as the lease holder does it.
    result = call(world.client, lambda: world.state.loops.run_once("usage-collector"))
    assert result is not None and result["folded"] == 0


def test_a_store_that_cannot_be_read_fails_the_run_and_the_lag_grows(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from routing.errors import StoreError

    world.collect()
    read_at = world.collector.last_read_at

    async def broken(*_a: Any, **_k: Any) -> list[str]:
        raise StoreError("redis scan failed: connection refused")

    monkeypatch.setattr(world.runtime, "scan", broken)
    world.clock[0] += 30
    with pytest.raises(StoreError):
        world.collect()
    assert world.collector.last_read_at == read_at
    assert "turnout_admin_usage_collector_lag_seconds 30.000" in world.client.get("/metrics").text
    assert_error(world.api("GET", "/api/spaces/nope/billing"), 404)
