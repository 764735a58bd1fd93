"""Staged rollouts through the admin API and the reconciler, in process.

The admin app runs on a SQLite file with the in-process route store and runtime state; the
gateway's part is played by writing its health hashes into that runtime state (the format of
``routing/health.py``, as the flusher writes it). The reconciler's clock is a fake the tests
move; everything a rollout records (stage start, decisions, history) uses that clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from admin.app import create_app
from admin.db import deployments
from admin.rollouts.reconciler import RolloutReconciler, reconciler_of
from admin.rollouts.schema import rollout_events, rollout_services
from routing.errors import StoreError
from routing.health import HEALTH_TTL, LATENCY_FIELDS, latency_bucket
from routing.models import decode_record
from routing.runtime_state import MemoryRuntimeState
from routing.store import MemoryRouteStore
from tests.admin.conftest import (
    admin_settings,
    assert_error,
    auth,
    bootstrap,
    call,
    create_space,
    make_user,
    rows,
    state_of,
)

BASE = "turnout.localhost"
T0 = 1_800_000_000.0  # the fake clock's start (epoch seconds, a minute boundary + 0)
MINUTE = 60.0


class FlakyRuntime(MemoryRuntimeState):
    """The in-process runtime state, able to fail like an unreachable Redis."""

    down = False

    async def hgetall_many(self, keys: list[str]) -> list[dict[str, int]]:
        if self.down:
            raise StoreError("redis hgetall failed: connection refused")
        return await super().hgetall_many(keys)


def manifest(
    upstream: str,
    *,
    strategy: str = "direct",
    stages: list[dict[str, int]] | None = None,
    health_check: dict[str, Any] | None = None,
    auto_promote: bool | None = None,
    services: tuple[str, ...] = ("web",),
) -> dict[str, Any]:
    rollout: dict[str, Any] = {"strategy": strategy}
    if stages is not None:
        rollout["stages"] = stages
    if health_check is not None:
        rollout["health_check"] = health_check
    if auto_promote is not None:
        rollout["auto_promote"] = auto_promote
    return {
        "apiVersion": "turnout/v1",
        "kind": "App",
        "metadata": {"name": "shop"},
        "spec": {
            "services": {s: {"type": "http", "upstreams": [upstream]} for s in services},
            "routes": [{"service": s} for s in services],
            "rollout": rollout,
        },
    }


STAGES = [{"weight": 1, "pause_minutes": 5}, {"weight": 5, "pause_minutes": 10}]
GATE = {"error_rate_threshold": 0.05, "min_requests": 100, "window_minutes": 5}


@dataclass
class Rig:
    client: TestClient
    token: str
    space: str
    runtime: FlakyRuntime
    clock: list[float] = field(default_factory=lambda: [T0])

    @property
    def reconciler(self) -> RolloutReconciler:
        return reconciler_of(state_of(self.client))

    def now(self) -> float:
        return self.clock[0]

    def advance(self, seconds: float) -> None:
        self.clock[0] += seconds

    def deploy(self, doc: dict[str, Any], token: str | None = None) -> httpx2.Response:
        r: httpx2.Response = self.client.post(
            f"/api/spaces/{self.space}/app-deployments",
            content=orjson.dumps(doc),
            headers={**auth(token or self.token), "content-type": "application/json"},
        )
        self.settle()
        return r

    def deploy_ok(self, doc: dict[str, Any]) -> dict[str, Any]:
        r = self.deploy(doc)
        assert r.status_code == 201, r.text
        out: dict[str, Any] = r.json()
        return out

    def start(self, **kw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """v1 direct, then v2 staged: (v1's service result, the staged app deployment)."""
        services = kw.pop("services", ("web",))
        v1 = self.deploy_ok(manifest("http://127.0.0.1:9001", services=services))
        kw.setdefault("stages", STAGES)
        kw.setdefault("health_check", GATE)
        v2 = self.deploy_ok(
            manifest("http://127.0.0.1:9002", strategy="staged", services=services, **kw)
        )
        return v1, v2

    def url(self, app_id: str, action: str | None = None) -> str:
        base = f"/api/spaces/{self.space}/app-deployments/{app_id}/rollout"
        return f"{base}/{action}" if action else base

    def get(self, app_id: str, token: str | None = None) -> httpx2.Response:
        r: httpx2.Response = self.client.get(self.url(app_id), headers=auth(token or self.token))
        return r

    def doc(self, app_id: str) -> dict[str, Any]:
        r = self.get(app_id)
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    def act(
        self,
        app_id: str,
        action: str,
        body: Any = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx2.Response:
        r: httpx2.Response = self.client.post(
            self.url(app_id, action),
            json={} if body is None else body,
            headers={**auth(token or self.token), **(headers or {})},
        )
        self.settle()
        return r

    def traffic(self, dep_id: str, total: int, *, errors: int = 0, latency_ms: float = 2.0) -> None:
        """What a gateway flush writes for ``total`` requests to ``dep_id`` at the clock's now."""
        key = self.runtime.keys.health(dep_id, int(self.now() // 60))
        fields = {"total": total, "2xx": total - errors, "5xx": errors}
        fields[LATENCY_FIELDS[latency_bucket(latency_ms)]] = total
        self.runtime.incr_now(key, fields, HEALTH_TTL, self.now())

    def reconcile(self) -> dict[str, int]:
        out: dict[str, int] = call(self.client, self.reconciler.run)
        self.settle()
        return out

    def settle(self) -> None:
        call(self.client, state_of(self.client).publisher.drain)

    def routing(self, service_id: str) -> dict[int, tuple[str, int]]:
        found = rows(
            self.client, sa.select(deployments).where(deployments.c.service_id == service_id)
        )
        return {d.number: (d.routing_status, d.routing_weight) for d in found}

    def targets(self, host: str = f"web.shop.{BASE}") -> list[tuple[str, int, str]]:
        state = state_of(self.client)
        data = call(self.client, lambda: state.store.get(host))
        assert data is not None, f"nothing published for {host}"
        record = decode_record(data)
        return [(t.deployment_id, t.weight, t.status) for t in record.endpoints[0].targets]


@pytest.fixture
def rig(db_path: Path) -> Iterator[Rig]:
    runtime = FlakyRuntime()
    app = create_app(admin_settings(str(db_path)), store=MemoryRouteStore(), runtime=runtime)
    with TestClient(app) as client:
        token = bootstrap(client)
        space = create_space(client, token, "team")
        rig = Rig(client, token, space, runtime)
        reconciler_of(state_of(client)).clock = rig.now
        yield rig


def ids(v1: dict[str, Any], v2: dict[str, Any], i: int = 0) -> tuple[str, str, str]:
    """(service id, v1 deployment id, v2 deployment id) of service ``i``."""
    s1, s2 = v1["services"][i], v2["services"][i]
    return s1["service_id"], s1["deployment_id"], s2["deployment_id"]


# ------------------------------------------------------------------------------ starting


def test_a_staged_deploy_starts_a_rollout_at_the_first_stage(rig: Rig) -> None:
    v1, v2 = rig.start()
    sid, d1, d2 = ids(v1, v2)
    assert v2["strategy"] == "staged"
    assert v2["services"][0]["strategy_applied"] == "staged"
    assert (v2["services"][0]["routing_status"], v2["services"][0]["routing_weight"]) == (
        "canary",
        100,
    )
    ref = v2["rollout"]
    assert ref["id"].startswith("rol_") and (ref["state"], ref["stage"], ref["weight"]) == (
        "in_progress",
        1,
        1,
    )
    assert rig.routing(sid) == {1: ("active", 9900), 2: ("canary", 100)}
    assert rig.targets() == [(d1, 9900, "active"), (d2, 100, "canary")]

    r = rig.get(v2["id"])
    assert r.status_code == 200, r.text
    doc = r.json()
    assert r.headers["etag"] == doc["etag"]
    assert (doc["state"], doc["stage"], doc["weight"], doc["app"]) == ("in_progress", 1, 1, "shop")
    assert doc["stages"] == [*STAGES, {"weight": 100, "pause_minutes": 0}]
    assert doc["health_check"] == {**GATE, "p99_latency_ms": None}
    assert doc["auto_promote"] is True
    assert doc["stage_started_at"] == doc["pause_started_at"] == int(T0 * 1000)
    assert doc["next_decision_at"] == int((T0 + 5 * MINUTE) * 1000)
    assert (doc["waiting"], doc["fail_reason"], doc["finished_at"]) == (None, None, None)
    assert doc["services"] == [
        {
            "service_id": sid,
            "service": "web",
            "canary_deployment_id": d2,
            "baseline_deployment_id": d1,
            "canary_weight": 100,
            "baseline_weight": 9900,
        }
    ]
    gate = doc["gate"]
    assert gate["verdict"] == "insufficient" and "0 of the 100 requests" in gate["reason"]
    assert gate["services"][0]["deployment_id"] == d2
    [event] = doc["history"]
    assert (event["action"], event["from_state"], event["to_state"]) == (
        "initiate",
        None,
        "in_progress",
    )
    assert (event["to_stage"], event["to_weight"], event["actor"]) == (1, 1, "principal")
    assert event["principal_id"] and event["request_id"] and event["inputs"] is None


def test_while_a_rollout_runs_other_deploys_and_rollbacks_are_409(rig: Rig) -> None:
    v1, v2 = rig.start()
    sid = v1["services"][0]["service_id"]
    before = rig.routing(sid)
    for strategy in ("staged", "direct", "canary"):
        doc = manifest("http://127.0.0.1:9003", strategy=strategy)
        if strategy == "canary":
            doc["spec"]["rollout"]["canary_weight"] = 10
        err = assert_error(rig.deploy(doc), 409, "rollout_in_progress")
        assert "service web is in staged rollout" in err["message"]
        assert err["details"]["rollout_id"] == v2["rollout"]["id"]
    r = rig.client.post(
        f"/api/spaces/{rig.space}/services/web/rollback", json={}, headers=auth(rig.token)
    )
    err = assert_error(r, 409, "rollout_in_progress")
    assert "abort" in err["message"]
    assert rig.routing(sid) == before  # nothing was written
    # Once it ended, deploying is free again.
    assert rig.act(v2["id"], "abort").status_code == 200
    assert rig.deploy(manifest("http://127.0.0.1:9003")).status_code == 201


# ------------------------------------------------------------------------------ reconciler


def test_a_healthy_canary_walks_every_stage_and_is_promoted(rig: Rig) -> None:
    v1, v2 = rig.start()
    sid, d1, d2 = ids(v1, v2)
    app = v2["id"]

    # Inside the first stage's 5 min pause nothing moves, even with evidence.
    rig.traffic(d2, 500)
    assert rig.reconcile() == {"waiting": 1}
    assert rig.routing(sid) == {1: ("active", 9900), 2: ("canary", 100)}

    # Pause over: advance to 5 % with the measured inputs in the history.
    rig.advance(5 * MINUTE)
    rig.traffic(d2, 120)
    assert rig.reconcile() == {"advance": 1}
    assert rig.routing(sid) == {1: ("active", 9500), 2: ("canary", 500)}
    assert rig.targets() == [(d1, 9500, "active"), (d2, 500, "canary")]
    doc = rig.doc(app)
    assert (doc["stage"], doc["weight"]) == (2, 5)
    assert doc["stage_started_at"] == doc["pause_started_at"] == int(rig.now() * 1000)
    advance = doc["history"][-1]
    assert (advance["action"], advance["actor"], advance["principal_id"]) == (
        "advance",
        "reconciler",
        None,
    )
    assert (advance["from_stage"], advance["to_stage"], advance["from_weight"]) == (1, 2, 1)
    assert advance["to_weight"] == 5
    leg = advance["inputs"]["services"][0]
    # the window (5 min) clipped to the stage: only the 120 requests since it began
    assert (leg["requests"], leg["errors"], leg["error_rate"], leg["verdict"]) == (
        120,
        0,
        0.0,
        "pass",
    )
    assert leg["p99_ms"] is not None and 2.0 <= leg["p99_ms"] <= 2.4
    assert advance["reason"].startswith("gate passed: web: error rate 0.00 % (0 of 120")

    # Stage 2 pauses 10 min; then the next stage is the final 100 % without pause: promote.
    rig.advance(10 * MINUTE)
    rig.traffic(d2, 100)
    assert rig.reconcile() == {"promote": 1}
    assert rig.routing(sid) == {1: ("archived", 0), 2: ("active", 10000)}
    assert rig.targets() == [(d2, 10000, "active")]
    doc = rig.doc(app)
    assert (doc["state"], doc["weight"], doc["next_decision_at"], doc["gate"]) == (
        "completed",
        100,
        None,
        None,
    )
    assert doc["finished_at"] == int(rig.now() * 1000)
    assert [e["action"] for e in doc["history"]] == ["initiate", "advance", "promote"]
    assert rig.reconcile() == {}  # nothing in progress any more
    legs = rows(rig.client, sa.select(rollout_services))
    assert [leg.active_service_id for leg in legs] == [None]


def test_below_min_requests_the_rollout_never_advances(rig: Rig) -> None:
    v1, v2 = rig.start()
    sid, _d1, d2 = ids(v1, v2)
    rig.advance(5 * MINUTE)
    for _ in range(10):
        rig.traffic(d2, 9)  # 9 a minute: never 100 within the 5 min window
        assert rig.reconcile() == {"waiting": 1}
        rig.advance(MINUTE)
    doc = rig.doc(v2["id"])
    assert (doc["state"], doc["stage"]) == ("in_progress", 1)
    assert doc["waiting"].startswith("waiting for evidence: web: 45 of the 100 requests")
    assert doc["next_decision_at"] == int((rig.now() - MINUTE) * 1000) + 60_000
    assert rig.routing(sid)[2] == ("canary", 100)
    assert [e["action"] for e in doc["history"]] == ["initiate"]


def test_an_error_rate_above_the_threshold_reverts_and_fails(rig: Rig) -> None:
    v1, v2 = rig.start()
    sid, d1, d2 = ids(v1, v2)
    rig.traffic(d2, 500, errors=100)  # 20 %: fails even inside the pause
    assert rig.reconcile() == {"fail": 1}
    assert rig.routing(sid) == {1: ("active", 10000), 2: ("archived", 0)}
    assert rig.targets() == [(d1, 10000, "active")]
    doc = rig.doc(v2["id"])
    assert (doc["state"], doc["weight"]) == ("failed", 0)
    assert doc["fail_reason"] == (
        "web: error rate 20.00 % (100 of 500 requests in 1 min) is above the threshold 5.00 %"
    )
    fail = doc["history"][-1]
    assert (fail["action"], fail["to_state"], fail["actor"]) == ("fail", "failed", "reconciler")
    assert fail["inputs"]["services"][0]["error_rate"] == 0.2
    assert fail["inputs"]["verdict"] == "error_rate"
    assert_error(rig.act(v2["id"], "resume"), 409, "illegal_transition")


def test_a_slow_canary_is_reverted_by_the_latency_gate(rig: Rig) -> None:
    v1, v2 = rig.start(health_check={**GATE, "p99_latency_ms": 250})
    sid, _d1, d2 = ids(v1, v2)
    rig.advance(5 * MINUTE)
    rig.traffic(d2, 300, latency_ms=302.0)
    assert rig.reconcile() == {"fail": 1}
    assert rig.routing(sid) == {1: ("active", 10000), 2: ("archived", 0)}
    doc = rig.doc(v2["id"])
    assert doc["state"] == "failed"
    assert doc["fail_reason"].startswith("web: p99 latency 30")
    assert "is above the limit 250.0 ms" in doc["fail_reason"]
    assert doc["history"][-1]["inputs"]["verdict"] == "latency"


def test_evidence_from_before_the_stage_does_not_count(rig: Rig) -> None:
    v1, v2 = rig.start(
        stages=[{"weight": 1, "pause_minutes": 0}, {"weight": 5, "pause_minutes": 0}]
    )
    _sid, _d1, d2 = ids(v1, v2)
    rig.traffic(d2, 200)  # in minute T0, at stage 1
    rig.advance(MINUTE)
    assert rig.reconcile() == {"advance": 1}  # stage 2 begins in minute T0 + 1
    rig.advance(MINUTE)
    assert rig.reconcile() == {"waiting": 1}  # the 200 are stage 1's: no evidence for stage 2
    doc = rig.doc(v2["id"])
    assert doc["stage"] == 2 and doc["gate"]["services"][0]["requests"] == 0


def test_counters_that_cannot_be_read_hold_the_rollout(rig: Rig) -> None:
    v1, v2 = rig.start(stages=[{"weight": 1, "pause_minutes": 0}])
    _sid, _d1, d2 = ids(v1, v2)
    rig.traffic(d2, 500)
    rig.runtime.down = True
    assert rig.reconcile() == {"waiting": 1}
    doc = rig.doc(v2["id"])  # readable, not a 500
    assert doc["gate"]["verdict"] == "unavailable"
    assert "counters unavailable: redis hgetall failed" in doc["waiting"]
    rig.runtime.down = False
    assert rig.reconcile() == {"promote": 1}


def test_two_reconcilers_never_take_the_same_step_twice(rig: Rig) -> None:
    """Two leaders overlapping (a stalled lease holder and its successor): one step only."""
    v1, v2 = rig.start(
        stages=[{"weight": 1, "pause_minutes": 0}, {"weight": 5, "pause_minutes": 0}]
    )
    _sid, _d1, d2 = ids(v1, v2)
    rig.traffic(d2, 200)
    state = state_of(rig.client)
    other = RolloutReconciler(
        state.engine, state.runtime, state.publisher, interval=60, clock=rig.now
    )
    rid = v2["rollout"]["id"]

    async def both() -> list[str]:
        return list(await asyncio.gather(rig.reconciler.reconcile(rid), other.reconcile(rid)))

    outcomes = call(rig.client, both)
    assert sorted(outcomes) == ["advance", "changed"], outcomes
    events = rows(rig.client, sa.select(rollout_events.c.action))
    assert sorted(e.action for e in events) == ["advance", "initiate"]


def test_an_app_with_two_services_moves_both_and_fails_on_either(rig: Rig) -> None:
    v1, v2 = rig.start(
        services=("api", "web"),
        stages=[{"weight": 10, "pause_minutes": 0}, {"weight": 50, "pause_minutes": 0}],
    )
    api_sid, _a1, a2 = ids(v1, v2, 0)
    web_sid, _w1, w2 = ids(v1, v2, 1)
    rig.traffic(a2, 200)
    assert rig.reconcile() == {"waiting": 1}  # web has no evidence yet: the worst leg decides
    rig.traffic(w2, 200)
    assert rig.reconcile() == {"advance": 1}
    assert rig.routing(api_sid)[2] == rig.routing(web_sid)[2] == ("canary", 5000)
    rig.traffic(w2, 200, errors=200)
    assert rig.reconcile() == {"fail": 1}
    assert (
        rig.routing(api_sid) == rig.routing(web_sid) == {1: ("active", 10000), 2: ("archived", 0)}
    )
    doc = rig.doc(v2["id"])
    assert doc["fail_reason"].startswith("web: error rate 50.00 %")
    assert [s["service"] for s in doc["services"]] == ["api", "web"]


def test_a_rollout_whose_services_were_deleted_is_aborted(rig: Rig) -> None:
    _v1, v2 = rig.start()
    r = rig.client.delete(f"/api/spaces/{rig.space}/services/web", headers=auth(rig.token))
    assert r.status_code == 204, r.text
    assert rig.reconcile() == {"abort": 1}
    doc = rig.doc(v2["id"])
    assert (doc["state"], doc["services"]) == ("aborted", [])
    assert doc["history"][-1]["reason"] == "its services were deleted"


# ------------------------------------------------------------------------------ operator


def test_pause_resume_abort_and_illegal_transitions(rig: Rig) -> None:
    v1, v2 = rig.start(
        stages=[{"weight": 1, "pause_minutes": 0}, {"weight": 5, "pause_minutes": 3}]
    )
    sid, d1, d2 = ids(v1, v2)
    app = v2["id"]
    rig.traffic(d2, 300)
    r = rig.act(app, "pause", {"reason": "checking dashboards"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert (doc["state"], doc["weight"], doc["next_decision_at"]) == ("paused", 1, None)
    assert r.headers["etag"] == doc["etag"]
    pause = doc["history"][-1]
    assert (pause["action"], pause["actor"], pause["reason"]) == (
        "pause",
        "principal",
        "checking dashboards",
    )
    assert pause["inputs"]["services"][0]["requests"] == 300  # what the gate saw then
    assert rig.routing(sid) == {1: ("active", 9900), 2: ("canary", 100)}  # weights unchanged

    err = assert_error(rig.act(app, "pause"), 409, "illegal_transition")
    assert "is paused" in err["message"] and err["details"]["state"] == "paused"
    assert rig.reconcile() == {}  # a paused rollout is left alone, healthy or not

    rig.advance(MINUTE)
    doc = rig.act(app, "resume").json()
    assert doc["state"] == "in_progress"
    assert doc["pause_started_at"] == int(rig.now() * 1000)  # the pause restarts ...
    assert doc["stage_started_at"] == int((rig.now() - MINUTE) * 1000)  # ... the stage does not
    assert doc["history"][-1]["reason"].startswith("resume requested by ")
    rig.traffic(d2, 300)
    assert rig.reconcile() == {"advance": 1}
    assert rig.doc(app)["next_decision_at"] == int((rig.now() + 3 * MINUTE) * 1000)

    doc = rig.act(app, "abort").json()
    assert (doc["state"], doc["weight"]) == ("aborted", 0)
    assert rig.routing(sid) == {1: ("active", 10000), 2: ("archived", 0)}
    assert rig.targets() == [(d1, 10000, "active")]
    for action in ("pause", "resume", "abort", "promote"):
        err = assert_error(rig.act(app, action), 409, "illegal_transition")
        assert "is aborted" in err["message"]
    assert [e["action"] for e in rig.doc(app)["history"]] == [
        "initiate",
        "pause",
        "resume",
        "advance",
        "abort",
    ]


def test_promote_from_paused_and_if_match(rig: Rig) -> None:
    v1, v2 = rig.start(auto_promote=False)
    sid, _d1, _d2 = ids(v1, v2)
    app = v2["id"]
    stale = rig.doc(app)["etag"]
    assert rig.act(app, "pause").status_code == 200
    r = rig.act(app, "promote", headers={"if-match": stale})
    assert_error(r, 412, "precondition_failed")
    current = rig.doc(app)["etag"]
    r = rig.act(app, "promote", headers={"if-match": current})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "completed"
    assert rig.routing(sid) == {1: ("archived", 0), 2: ("active", 10000)}


def test_without_auto_promote_the_walk_stops_before_100_percent(rig: Rig) -> None:
    v1, v2 = rig.start(stages=[{"weight": 20, "pause_minutes": 0}], auto_promote=False)
    sid, _d1, d2 = ids(v1, v2)
    rig.traffic(d2, 300)
    assert rig.reconcile() == {"waiting": 1}
    doc = rig.doc(v2["id"])
    assert doc["waiting"].startswith("awaiting promotion")
    assert rig.routing(sid)[2] == ("canary", 2000)
    rig.traffic(d2, 300, errors=300)  # it still guards while it waits
    assert rig.reconcile() == {"fail": 1}


def test_roles_viewer_reads_editor_cannot_act(rig: Rig) -> None:
    _v1, v2 = rig.start()
    viewer = make_user(rig.client, rig.token, "v", rig.space, "viewer")
    editor = make_user(rig.client, rig.token, "e", rig.space, "editor")
    assert rig.get(v2["id"], token=viewer).status_code == 200
    assert_error(rig.act(v2["id"], "pause", token=editor), 403, "forbidden")
    scoped = make_user(rig.client, rig.token, "a", rig.space, "admin", ["deployments:read"])
    assert_error(rig.act(v2["id"], "pause", token=scoped), 403, "forbidden")


@pytest.mark.parametrize(
    ("body", "path", "fragment"),
    [
        ({"reason": "x" * 501}, "body.reason", "at most 500"),
        ({"reason": 5}, "body.reason", "string"),
        ({"why": "no"}, "body.why", "Extra inputs"),
        ([], "body", "valid dictionary"),
    ],
)
def test_bad_action_bodies_are_422_naming_the_field(
    rig: Rig, body: Any, path: str, fragment: str
) -> None:
    _v1, v2 = rig.start()
    err = assert_error(rig.act(v2["id"], "pause", body), 422)
    assert err["details"]["fields"][0]["path"] == path
    assert fragment in err["details"]["fields"][0]["message"]
    assert rig.doc(v2["id"])["state"] == "in_progress"  # nothing changed


def test_missing_or_unparsable_bodies_are_422(rig: Rig) -> None:
    _v1, v2 = rig.start()
    for content in (b"", b"{nope"):
        r = rig.client.post(rig.url(v2["id"], "pause"), content=content, headers=auth(rig.token))
        assert assert_error(r, 422)["details"]["fields"][0]["path"] == "body"


def test_unknown_app_deployments_and_other_spaces_are_404(rig: Rig) -> None:
    v1, v2 = rig.start()
    assert "has no rollout" in assert_error(rig.get(v1["id"]), 404, "not_found")["message"]
    assert_error(rig.get("app_00000000000000000000000000"), 404, "not_found")
    assert_error(rig.act("app_00000000000000000000000000", "abort"), 404, "not_found")
    other = create_space(rig.client, rig.token, "other")
    r = rig.client.get(
        f"/api/spaces/{other}/app-deployments/{v2['id']}/rollout", headers=auth(rig.token)
    )
    assert_error(r, 404, "not_found")
