"""The pod API beyond the scenarios: every error code, validation with field paths, leases,
re-parenting, the reaper, audit and idempotency, the in-process mirror, a lost mirror store."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from admin.db import audit_log, idempotency_keys
from admin.framework import openapi
from admin.pods.schema import pods
from admin.settings import Settings
from routing.runtime_state import MemoryRuntimeState, RedisRuntimeState
from tests.admin.conftest import assert_error, auth, make_user
from tests.admin.pods_harness import (  # noqa: F401
    R,
    W,
    World,
    dev_world_fixture,
    make_world,
    world_fixture,
)
from tests.support.redis_server import RedisServer

TTL = 30


# ------------------------------------------------------------------------------ validation


BAD_RULES: list[tuple[Any, str, str]] = [
    ({"target": "/src/*.py", "permission": "write"}, "target", "globs"),
    ({"target": "/src/../etc", "permission": "write"}, "target", "'..'"),
    ({"target": "src/core", "permission": "write"}, "target", "absolute"),
    ({"target": "/src", "permission": "admin"}, "permission", "'read' or 'write'"),
    ({"target": "/src", "permission": "write", "recursive": "yes"}, "recursive", "bool"),
    ({"target": "/src", "permission": "write", "mode": 1}, "mode", "Extra inputs"),
    ({"permission": "write"}, "target", "Field required"),
]


@pytest.mark.parametrize(("rule", "field", "says"), BAD_RULES, ids=lambda v: str(v)[:30])
def test_malformed_rules_are_422_with_the_field_path(
    world: World, rule: Any, field: str, says: str
) -> None:
    bodies = {
        "body.scope.allow[1]": ("", {"name": "p", "scope": {"allow": [W("/ok"), rule]}}),
        "body.scope.deny[0]": ("", {"name": "p", "scope": {"allow": [W("/ok")], "deny": [rule]}}),
        "body.grant[0]": ("", {"name": "p", "scope": {"allow": [W("/ok")]}, "grant": [rule]}),
    }
    for prefix, (path, body) in bodies.items():
        err = w_error(world, path, body)
        paths = [f["path"] for f in err["details"]["fields"]]
        assert f"{prefix}.{field}" in paths, (prefix, err)
        assert says.lower() in str(err["details"]["fields"]).lower(), err
    world.create("parent", [W("/ok")], grant=[W("/ok")])
    err = w_error(world, "/parent/children", {"name": "c", "rules": [rule]})
    assert f"body.rules[0].{field}" in [f["path"] for f in err["details"]["fields"]]
    assert world.sql(sa.select(pods.c.name)) == [("parent",)]


def w_error(w: World, path: str, body: Any) -> dict[str, Any]:
    return w.error(path, body, 422, "validation_failed")


def test_other_malformed_bodies(world: World) -> None:
    w = world
    cases = [
        ("", {"name": "p", "scope": {"allow": []}}, "body.scope.allow"),  # empty allow
        ("", {"name": "p", "scope": {"allow": [W("/a")]}, "extra": 1}, "body.extra"),
        ("", {"scope": {"allow": [W("/a")]}}, "body.name"),
        ("", {"name": "", "scope": {"allow": [W("/a")]}}, "body.name"),
        ("", {"name": "a/b", "scope": {"allow": [W("/a")]}}, "body.name"),
        ("", {"name": "..", "scope": {"allow": [W("/a")]}}, "body.name"),
        ("", {"name": "x" * 129, "scope": {"allow": [W("/a")]}}, "body.name"),
        ("", {"name": "tab\there", "scope": {"allow": [W("/a")]}}, "body.name"),
        (
            "",
            {"name": "p", "scope": {"allow": [W(f"/a{i}") for i in range(65)]}},
            "body.scope.allow",
        ),
    ]
    for path, body, field in cases:
        err = w_error(w, path, body)
        assert field in [f["path"] for f in err["details"]["fields"]], (body, err)
    w.create("p", [W("/a")], grant=[W("/a")])
    w.attach("p")
    assert field_of(w_error(w, "/p/children", {"name": "c", "rules": []})) == "body.rules"
    assert field_of(w_error(w, "/p/check", {"path": "a/b", "permission": "write"})) == "body.path"
    assert (
        field_of(w_error(w, "/p/check", {"path": "/a", "permission": "exec"})) == "body.permission"
    )
    assert field_of(w_error(w, "/p/attach", {"segment_id": ""})) == "body.segment_id"
    assert field_of(w_error(w, "/p/heartbeat", {})) == "body.lease_id"
    assert field_of(w.error("/p/attach", None, 422, "validation_failed")) == "body"
    # Names that are unusual but valid, and paths that normalise.
    w.create("agent: build #1 ü", [W("//a//b/")])
    assert w.get(quote("agent: build #1 ü"))["scope"]["allow"] == [W("/a/b")]
    assert w.check("p", "/a//x/")["path"] == "/a/x"


def field_of(err: dict[str, Any]) -> str:
    return str(err["details"]["fields"][0]["path"])


# ------------------------------------------------------------------------------ error codes


def test_pod_missing_on_every_pod_endpoint(world: World) -> None:
    w = world
    for path, body in [
        ("/nope/attach", {}),
        ("/nope/heartbeat", {"lease_id": "lse_x"}),
        ("/nope/release", {}),
        ("/nope/compact", None),
        ("/nope/fork", None),
        ("/nope/children", {"name": "c", "rules": [W("/a")]}),
        ("/nope/children/c/stop", None),
        ("/nope/shutdown", None),
        ("/nope/check", {"path": "/a", "permission": "read"}),
    ]:
        err = w.error(path, body, 404, "pod_missing")
        assert "nope" in err["message"], path
    assert_error(w.client.get(f"{w.base}/nope", headers=auth(w.token)), 404, "pod_missing")
    w.create("p", [W("/a")])
    assert "ghost" in w.error("/p/children/ghost/stop", None, 404, "pod_missing")["message"]


def test_pod_exists(world: World) -> None:
    w = world
    w.create("p", [W("/a")], grant=[W("/a")])
    w.error("", {"name": "p", "scope": {"allow": [W("/b")]}}, 409, "pod_exists")
    w.spawn("p", "c", [W("/a/c")])
    err = w.error("/p/children", {"name": "c", "rules": [W("/a/d")]}, 409, "pod_exists")
    assert "c" in err["message"]
    err = w.error(
        "", {"name": "p", "scope": {"allow": [W("/a")]}, "grant": [W("/b")]}, 422, "not_subset"
    )
    assert err["details"]["fields"][0]["path"] == "body.grant[0]"


def test_pod_inactive_pending_and_snapshot_corrupt(world: World) -> None:
    w = world
    w.create("p", [W("/a")])
    # An interrupted fork (an older runtime, a restore from backup) left a session without
    # its first segment: attach and compact answer pod_pending; the pod is listed as pending.
    w.sql_exec(sa.update(pods).where(pods.c.name == "p").values(segment_id=None))
    err = w.error("/p/attach", {}, 409, "pod_pending")
    assert err["details"]["pod"] == "p" and "no first segment" in err["message"]
    w.error("/p/fork", None, 409, "pod_pending")
    assert w.get("p")["state"] == "pending"
    # The pointer cleared altogether: pod_inactive.
    w.sql_exec(sa.update(pods).where(pods.c.name == "p").values(session_id=None))
    w.error("/p/attach", {}, 409, "pod_inactive")
    w.error("/p/compact", None, 409, "pod_inactive")
    assert w.get("p")["state"] == "inactive"
    # A pointer naming a segment SQL does not hold, and a scope that does not decode.
    w.create("q", [W("/q")])
    w.sql_exec(sa.update(pods).where(pods.c.name == "q").values(segment_id="seg_gone"))
    err = w.error("/q/attach", {}, 409, "snapshot_corrupt")
    assert "seg_gone" in err["message"]
    w.create("r", [W("/r")])
    bad = {"base_allow": "[{", "version": pods.c.version + 1}  # as any write, it moves the version
    w.sql_exec(sa.update(pods).where(pods.c.name == "r").values(**bad))
    for path, body in [("/r/attach", {}), ("/r/check", {"path": "/r", "permission": "read"})]:
        err = w.error(path, body, 409, "snapshot_corrupt")
        assert err["details"] == {"pod": "r", "field": "scope.allow"}
    assert_error(w.client.get(f"{w.base}/r", headers=auth(w.token)), 409, "snapshot_corrupt")
    w.error("/nope/attach", {"segment_id": "seg_nope"}, 404, "pod_missing")
    w.create("s", [W("/s")])
    err = w.error("/s/attach", {"segment_id": "seg_nope"}, 404, "segment_missing")
    assert err["details"] == {"segment_id": "seg_nope"}


def test_leases_heartbeat_release_and_their_errors(world: World) -> None:
    w = world
    w.create("p", [W("/a")])
    first = w.attach("p")["lease"]
    assert first["expires_at"] - first["created_at"] == TTL * 1000
    w.clock.advance(20)
    beat = w.heartbeat("p", first["id"])["lease"]
    assert beat["expires_at"] == w.clock.ms + TTL * 1000 and beat["status"] == "live"
    second = w.attach("p")["lease"]  # a restart supersedes the old lease
    err = w.error("/p/heartbeat", {"lease_id": first["id"]}, 409, "lease_mismatch")
    assert "superseded" in err["message"]
    w.error("/p/heartbeat", {"lease_id": "lse_unknown"}, 409, "lease_mismatch")
    w.error("/p/release", {"lease_id": first["id"]}, 409, "lease_mismatch")
    w.clock.advance(TTL + 1)
    err = w.error("/p/heartbeat", {"lease_id": second["id"]}, 409, "lease_expired")
    assert "expired" in err["message"]
    third = w.attach("p")["lease"]
    released = w.ok("/p/release", {"lease_id": third["id"]})
    assert released["released"] and released["lease"]["end_reason"] == "released"
    assert w.ok("/p/release", {})["released"] is False  # nothing to release: a no-op
    err = w.error("/p/heartbeat", {"lease_id": third["id"]}, 409, "lease_expired")
    assert "released" in err["message"]
    assert w.get("p")["lease"]["status"] == "ended" and not w.get("p")["live"]


def test_not_a_child(world: World) -> None:
    w = world
    w.create("p", [W("/a")], grant=[W("/a")])
    w.create("q", [W("/b")])
    w.spawn("p", "c", [W("/a/c")])
    err = w.error("/q/children/c/stop", None, 409, "not_a_child")
    assert "held by p" in err["message"]
    err = w.error("/p/children/q/stop", None, 409, "not_a_child")
    assert "root pod" in err["message"]
    err = w.error("/p/shutdown", None, 409, "not_a_child")
    assert "release" in err["message"]


# ------------------------------------------------------------------------------ re-parenting


def test_reclaiming_a_middle_pod_reparents_its_children(world: World) -> None:
    w = world
    w.create("p", [W("/src")], grant=[W("/src")])
    w.attach("p")
    w.spawn("p", "c", [W("/src/core")], grant=[W("/src/core")])
    w.spawn("c", "g", [W("/src/core/x")])
    assert [d["child"] for d in w.get("c")["effective"]["deny"]] == ["g"]
    stopped = w.ok("/p/children/c/stop")
    assert stopped["reclaimed"][0]["reparented"] == 1
    p = w.get("p")
    assert [(d["target"], d["child"]) for d in p["effective"]["deny"]] == [("/src/core/x", "g")]
    assert w.allowed("p", "/src/core/y") and not w.allowed("p", "/src/core/x/z")
    g = w.get("g")
    assert g["parent"] == "p" and g["delegation"]["delegated_by"] == "c"
    assert g["delegation"]["reparented_at"] is not None and g["lease"]["parent"] == "p"
    assert w.allowed("g", "/src/core/x/z")
    err = w.error("/c/children/g/stop", None, 409, "not_a_child")
    assert "held by p" in err["message"]
    err = w.error("/c/children", {"name": "g2", "rules": [W("/src/core/y")]}, 409, "pod_inactive")
    assert "reclaimed" in err["message"]
    w.ok("/p/children/g/stop")
    assert w.get("p")["effective"]["deny"] == []


def test_release_moves_live_allocations_but_keeps_delegations(world: World) -> None:
    w = world
    w.create("p", [W("/src")], grant=[W("/src")])
    w.attach("p")
    w.spawn("p", "c", [W("/src/core")], grant=[W("/src/core")])
    c_lease = w.attach("c")["lease"]
    w.spawn("c", "g", [W("/src/core/x")])
    w.ok("/c/release", {"lease_id": c_lease["id"]})
    assert w.get("g")["lease"]["parent"] == "p", "the live allocation skips the released pod"
    assert w.get("g")["parent"] == "c", "the delegation is still c's"
    assert not w.allowed("c", "/src/core/x"), "a restore of c must not regain g's region"
    assert [r["child"] for r in w.attach("c")["reclaimed"]] == []


# ------------------------------------------------------------------------------ the reaper


def test_the_reaper_ends_expired_leases_and_reclaims_children(world: World) -> None:
    w = world
    w.create("p", [W("/src")], grant=[W("/src")])
    w.create("solo", [W("/solo")])
    w.attach("solo")
    w.attach("p")
    w.spawn("p", "c", [W("/src/core")])
    assert w.reap() == {"spaces": 0, "leases_ended": [], "reclaimed": []}
    w.clock.advance(TTL + 1)
    report = w.reap()
    assert sorted(e["pod"] for e in report["leases_ended"]) == ["c", "p", "solo"]
    assert [(r["child"], r["reason"]) for r in report["reclaimed"]] == [("c", "lease_expired")]
    assert w.get("solo")["lease"]["end_reason"] == "expired"
    assert w.get("c")["state"] == "retired" and w.allowed("p", "/src/core/x")
    assert w.mirror("c").record is not None and w.mirror("c").record.state == "retired"
    assert w.reap()["leases_ended"] == []
    stats = w.state.loops.stats["pod-reaper"]
    assert stats.runs == 3 and stats.failures == 0
    assert "turnout_admin_pod_leases_reaped_total 3" in w.client.get("/metrics").text


def test_reaper_settings_come_from_the_environment() -> None:
    env = {"TURNOUT_POD_LEASE_TTL": "12.5", "TURNOUT_POD_REAP_INTERVAL": "0.5"}
    settings = Settings.from_env(env)
    assert settings.pod_lease_seconds == 12.5 and settings.pod_reap_interval == 0.5
    assert Settings.from_env({}).pod_lease_seconds == 30.0
    for bad in ("zero", "0", "99999"):
        with pytest.raises(SystemExit, match="TURNOUT_POD_LEASE_TTL"):
            Settings.from_env({"TURNOUT_POD_LEASE_TTL": bad})


# ------------------------------------------------------------------------------ framework


def test_check_is_a_read_only_post_and_mutations_are_audited(world: World) -> None:
    w = world
    w.create("p", [W("/a")], grant=[W("/a")])
    key = {"idempotency-key": "k-check"}
    for _ in range(3):
        r = w.client.post(
            f"{w.base}/p/check",
            json={"path": "/a", "permission": "read"},
            headers={**auth(w.token), **key},
        )
        assert r.status_code == 200 and "idempotent-replay" not in r.headers
    actions = [
        a.action
        for a in w.sql(sa.select(audit_log.c.action).where(audit_log.c.space_id == w.space))
    ]
    assert "create_pod" in actions and "check_pod" not in actions
    assert w.sql(sa.select(idempotency_keys).where(idempotency_keys.c.key == "k-check")) == []
    op = openapi()["paths"]["/api/spaces/{space}/pods/{name}/check"]["post"]
    assert op["x-turnout-read-only"] is True
    assert "Idempotency-Key" not in [p["name"] for p in op["parameters"]]
    # A refused spawn is audited with its code.
    w.error("/p/children", {"name": "c", "rules": [W("/b")]}, 422, "not_subset")
    outcomes = [
        a.outcome for a in w.sql(sa.select(audit_log).where(audit_log.c.action == "spawn_child"))
    ]
    assert outcomes == ["not_subset"]


def test_an_idempotent_spawn_replays_instead_of_spawning_twice(world: World) -> None:
    w = world
    w.create("p", [W("/a")], grant=[W("/a")])
    body = {"name": "c", "rules": [W("/a/c")]}
    headers = {**auth(w.token), "idempotency-key": "spawn-1"}
    first = w.client.post(f"{w.base}/p/children", json=body, headers=headers)
    again = w.client.post(f"{w.base}/p/children", json=body, headers=headers)
    assert first.status_code == again.status_code == 201 and again.content == first.content
    assert again.headers["idempotent-replay"] == "true"
    assert len(w.sql(sa.select(pods.c.id))) == 2


def test_viewers_read_and_check_editors_operate(world: World) -> None:
    w = world
    w.create("p", [W("/a")], grant=[W("/a")])
    viewer = make_user(w.client, w.token, "viewer", w.space, "viewer")
    editor = make_user(w.client, w.token, "editor", w.space, "editor")
    assert w.client.get(f"{w.base}/p", headers=auth(viewer)).status_code == 200
    assert w.post("/p/check", {"path": "/a", "permission": "read"}, viewer).status_code == 200
    assert_error(w.post("/p/attach", {}, viewer), 403, "forbidden")
    assert w.post("/p/attach", {}, editor).status_code == 200
    assert w.post("/p/children", {"name": "c", "rules": [W("/a/c")]}, editor).status_code == 201
    reader = make_user(w.client, w.token, "reader", w.space, "owner", ["pods:read"])
    assert_error(w.post("/p/release", {}, reader), 403, "forbidden")


def test_list_is_paged(world: World) -> None:
    w = world
    for i in range(5):
        w.create(f"p{i}", [W(f"/p{i}")])
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = w.client.get(w.base, params=params, headers=auth(w.token)).json()
        seen += [p["name"] for p in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"p{i}" for i in range(5)]
    item = w.client.get(w.base, headers=auth(w.token)).json()["items"][0]
    assert item["effective"] == {"allow": [W("/p0")], "deny": []} and item["state"] == "active"


# ------------------------------------------------------------------------------ the mirror store


def test_turnout_dev_keeps_mirrors_in_process(dev_world: World) -> None:
    w = dev_world
    w.create("p", [W("/src")], grant=[W("/src")])
    w.attach("p")
    w.spawn("p", "c", [W("/src/core")])
    assert w.check("p", "/src/core/x")["source"] == "mirror"
    w.set_mirror_raw("p", b"junk")
    assert w.check("p", "/src/core/x")["source"] == "sql"
    assert w.check("p", "/src/core/x")["source"] == "mirror"
    assert w.rebuild()["mirrors"]["checked"] == 2


def test_a_lost_mirror_store_never_fails_an_operation_or_decides_a_check(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    runtime = RedisRuntimeState(own_redis.url, connect_timeout=0.3, socket_timeout=0.5)
    with make_world(tmp_path, runtime, None) as w:
        w.create("p", [W("/src")], grant=[W("/src")])
        w.attach("p")
        own_redis.stop()
        spawned = w.spawn("p", "c", [W("/src/core")])  # committed: SQL is the authority
        assert spawned["child"]["name"] == "c"
        verdict = w.check("p", "/src/core/x")
        assert verdict["source"] == "sql" and not verdict["allowed"]
        assert w.state.pods.counts["mirror_write_failures"] >= 2
        assert_error(w.post(":rebuild"), 503, "unavailable")
        own_redis.start()
        assert w.check("p", "/src/core/x")["source"] == "sql"  # the stale mirror is repaired
        assert w.check("p", "/src/core/x")["source"] == "mirror"
        assert w.rebuild()["mirrors"]["rewritten"] == 1  # c's mirror was never written


def test_a_rebuild_of_a_consistent_space_changes_nothing(world: World) -> None:
    w = world
    for i in range(2):
        w.create(f"r{i}", [W(f"/r{i}")], grant=[W(f"/r{i}")])
        for j in range(4):
            w.spawn(f"r{i}", f"r{i}-c{j}", [W(f"/r{i}/c{j}")])
    deny = [d["child"] for d in w.get("r0")["effective"]["deny"]]
    assert deny == [f"r0-c{j}" for j in range(4)], "deny layers in delegation order"
    report = w.rebuild()
    assert report["pods"] == 10 and report["reclaimed"] == [] and report["leases_ended"] == []
    assert report["mirrors"] == {"checked": 10, "rewritten": 0, "deleted": 0, "problems": {}}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "flow.db")
    url: str = request.getfixturevalue("postgres_url")
    return url


def test_the_pod_flow_on_both_sql_backends(tmp_path: Path, any_db: str) -> None:
    """Every statement kind the authority uses (the space-lock upsert, the partial unique lease
    index, LIKE with escapes, the recursive lineage CTE) on SQLite and PostgreSQL."""
    with make_world(tmp_path, MemoryRuntimeState(), None, any_db) as w:
        w.create("p", [W("/src_%")], grant=[W("/src_%")])
        w.attach("p")
        w.spawn("p", "c", [W("/src_%/core")], grant=[W("/src_%/core")])
        w.spawn("c", "g", [W("/src_%/core/x")])
        w.create("x", [W("/src_%/core/x/y")], grant=[W("/src_%/core/x/y")])
        err = w.error("/x/attach", {}, 409, "write_conflict")
        assert err["details"]["competitor"] == "g"
        w.ok("/p/compact")
        w.ok("/p/fork")
        assert [s["kind"] for s in w.get("p")["lineage"]] == ["fork", "compact", "root"]
        w.clock.advance(TTL + 1)
        restored = w.attach("p")
        # c is dead, and so is g, which reclaiming c re-parents to p: both go.
        assert [r["child"] for r in restored["reclaimed"]] == ["c", "g"]
        assert restored["effective"]["deny"] == []
        assert w.get("g")["parent"] == "p" and w.get("g")["state"] == "retired"
        assert w.rebuild()["reclaimed"] == []
        assert w.allowed("p", "/src_%/core/x/z")
        assert not w.allowed("p", "/srcX%/core")
