"""The eleven regression scenarios of shared/spec/pod-scope.md, each its own test, through the
HTTP API of a real admin on a real SQLite file with its runtime mirrors in a real Redis.

Scenario 11 (concurrency) runs two admin instances on one database: on SQLite (one file) and
on PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from admin.app import create_app
from admin.pods.schema import pod_edges, pod_leases, pods
from routing.runtime_state import MemoryRuntimeState
from routing.store import MemoryRouteStore
from tests.admin.conftest import assert_error, auth, bootstrap, create_space
from tests.admin.pods_harness import R, W, World, pod_settings, world_fixture  # noqa: F401

TTL = 30  # the default pod lease TTL (s)


def family(w: World) -> dict[str, Any]:
    """P (write /src, may delegate /src) attached, and its live child C holding /src/core."""
    w.create("p", [W("/src")], grant=[W("/src")])
    p = w.attach("p")
    c = w.spawn("p", "c", [W("/src/core")])
    return {"p_lease": p["lease"]["id"], "c_lease": c["lease"]["id"]}


def denied_to_p(w: World) -> dict[str, Any]:
    return {
        "allow": [W("/src")],
        "deny": [
            {**W("/src/core"), "origin": "delegated", "edge_id": edge_id(w, "c"), "child": "c"}
        ],
    }


def edge_id(w: World, child: str) -> str:
    delegation = w.get(child)["delegation"]
    assert delegation is not None
    return str(delegation["id"])


def effective(w: World, name: str) -> dict[str, Any]:
    eff: dict[str, Any] = w.get(name)["effective"]
    return eff


# ------------------------------------------------------------------------------ 1


def test_1_restore_does_not_over_restore(world: World) -> None:
    w = world
    family(w)
    restored = w.attach("p")  # P restarts and restores by name
    assert restored["reclaimed"] == []
    assert restored["effective"] == denied_to_p(w)
    assert w.allowed("p", "/src/lib/a.py")
    assert w.allowed("p", "/src/core/x", "read"), "read stays with the parent"
    verdict = w.check("p", "/src/core/x", "write")
    assert not verdict["allowed"] and verdict["access"] == "read"
    assert verdict["rule"]["origin"] == "delegated" and verdict["rule"]["child"] == "c"
    assert w.allowed("c", "/src/core/x")
    assert not w.allowed("c", "/src/lib/a.py")


# ------------------------------------------------------------------------------ 2


def test_2_compact_or_fork_then_restore_keeps_the_effective_scope(world: World) -> None:
    w = world
    family(w)
    before = effective(w, "p")
    root = w.get("p")["segment_id"]
    compacted = w.ok("/p/compact")
    assert compacted["effective"] == before
    assert w.attach("p")["effective"] == before
    forked = w.ok("/p/fork")
    assert forked["effective"] == before
    after = w.attach("p")
    assert after["effective"] == before and after["segment_id"] == forked["segment_id"]
    assert after["session_id"] == forked["session_id"] != compacted["session_id"]
    lineage = w.get("p")["lineage"]
    assert [(s["kind"], s["id"]) for s in lineage] == [
        ("fork", forked["segment_id"]),
        ("compact", compacted["segment_id"]),
        ("root", root),
    ]
    assert w.get("p")["lease"]["segment_id"] == forked["segment_id"]
    assert not w.allowed("p", "/src/core/x") and w.allowed("p", "/src/x")


# ------------------------------------------------------------------------------ 3


def test_3_restore_prunes_only_dead_children(world: World) -> None:
    w = world
    leases = family(w)
    alive = w.attach("p")
    assert alive["reclaimed"] == [] and not w.allowed("p", "/src/core/x")
    # C stops heartbeating; P keeps its lease alive, then restarts after C's lease expired.
    w.clock.advance(TTL / 2)
    w.heartbeat("p", alive["lease"]["id"])
    w.clock.advance(TTL / 2 + 1)
    assert w.get("c")["lease"]["status"] == "expired"
    restored = w.attach("p")
    assert [(r["child"], r["reason"]) for r in restored["reclaimed"]] == [("c", "restore_prune")]
    assert restored["effective"] == {"allow": [W("/src")], "deny": []}
    assert w.allowed("p", "/src/core/x")
    child = w.get("c")
    assert child["state"] == "retired" and child["delegation"]["reason"] == "restore_prune"
    assert child["lease"]["id"] == leases["c_lease"] and child["lease"]["end_reason"] == "reclaimed"
    assert not w.allowed("c", "/src/core/x")
    w.error("/c/attach", {}, 409, "pod_inactive")
    assert_surfaces_agree(w, "restore_prune")


# ------------------------------------------------------------------------------ 4


def _reclaim(w: World, how: str, leases: dict[str, Any]) -> dict[str, Any] | None:
    if how == "stop":
        return w.ok("/p/children/c/stop")
    if how == "shutdown":
        return w.ok("/c/shutdown")
    # lease expiry / rebuild: C goes silent past its TTL while P keeps heartbeating
    w.clock.advance(TTL - 5)
    w.heartbeat("p", leases["p_lease"])
    w.clock.advance(10)
    if how == "lease_expired":
        report = w.reap()
        assert [r["child"] for r in report["reclaimed"]] == ["c"]
        assert [e["pod"] for e in report["leases_ended"]] == ["c"]
        return None
    report = w.rebuild()
    assert [(r["child"], r["reason"]) for r in report["reclaimed"]] == [("c", "rebuild_prune")]
    return report


def assert_surfaces_agree(w: World, reason: str) -> None:
    """SQL edge, P's effective scope, C's lease and the Redis mirrors say the same thing."""
    (edge,) = w.sql(sa.select(pod_edges))
    assert (edge.state, edge.reason) == ("reclaimed", reason)
    p = w.get("p")
    assert p["effective"] == {"allow": [W("/src")], "deny": []}
    assert [h["reason"] for h in p["reclaim_history"]] == [reason]
    assert [(ch["state"], ch["live"]) for ch in p["children"]] == [("reclaimed", False)]
    open_c = w.sql(
        sa.select(pod_leases).where(
            pod_leases.c.pod_id == edge.child_pod_id, pod_leases.c.ended_at.is_(None)
        )
    )
    assert open_c == []
    c = w.get("c")
    assert c["state"] == "retired" and c["effective"] == {"allow": [], "deny": []}
    assert c["lease"]["status"] == "ended"
    for name, view in (("p", p), ("c", c)):
        read = w.mirror(name)
        assert read.problem is None and read.record is not None, (name, read)
        assert read.record.version == view["version"]
        assert read.record.scope.to_json() == view["effective"]
        assert read.record.state == view["state"]
        assert read.record.lease_id == (
            view["lease"]["id"] if view["lease"]["status"] != "ended" else None
        )
    assert w.check("p", "/src/core/x")["source"] == "mirror"
    assert w.allowed("p", "/src/core/x") and not w.allowed("c", "/src/core/x")


@pytest.mark.parametrize("how", ["stop", "shutdown", "lease_expired", "rebuild_prune"])
def test_4_every_reclaim_path_leaves_the_four_surfaces_agreeing(world: World, how: str) -> None:
    w = world
    leases = family(w)
    _reclaim(w, how, leases)
    assert_surfaces_agree(w, how)
    versions = (w.get("p")["version"], w.get("c")["version"])
    # A second reclaim, by any path, changes nothing.
    again = w.ok("/p/children/c/stop")
    assert again["changed"] is False and again["reclaimed"] == []
    assert w.ok("/c/shutdown")["changed"] is False
    assert w.reap()["reclaimed"] == []
    assert w.rebuild()["reclaimed"] == []
    assert (w.get("p")["version"], w.get("c")["version"]) == versions
    assert_surfaces_agree(w, how)


# ------------------------------------------------------------------------------ 5


def test_5_an_explicit_deny_identical_to_a_delegated_rule_survives_reclaim(world: World) -> None:
    w = world
    # P must not write /src/core itself, but may hand it to a child (the grant reopens it).
    w.create("p", [W("/src")], deny=[W("/src/core")], grant=[W("/src/core")])
    w.attach("p")
    w.spawn("p", "c", [W("/src/core")])
    layers = effective(w, "p")["deny"]
    assert [(d["target"], d["origin"]) for d in layers] == [
        ("/src/core", "explicit"),
        ("/src/core", "delegated"),
    ]
    assert w.ok("/p/children/c/stop")["changed"]
    assert effective(w, "p") == {
        "allow": [W("/src")],
        "deny": [{**W("/src/core"), "origin": "explicit"}],
    }
    verdict = w.check("p", "/src/core/x")
    assert not verdict["allowed"] and verdict["rule"]["origin"] == "explicit"
    assert w.mirror("p").record is not None and w.mirror("p").record.scope.to_json() == effective(
        w, "p"
    )
    # Without a grant rule inside it, an explicit deny binds the children too.
    w.create("q", [W("/lib")], deny=[W("/lib/secret")], grant=[W("/lib")])
    err = w.error("/q/children", {"name": "q1", "rules": [W("/lib")]}, 422, "not_subset")
    assert "/lib/secret" in err["message"] and "explicit deny" in err["message"]


# ------------------------------------------------------------------------------ 6


def test_6_delegation_outside_the_grant_or_the_effective_write_writes_nothing(world: World) -> None:
    w = world
    w.create("p", [W("/src"), R("/docs")], grant=[W("/src/core"), W("/src/lib"), R("/docs")])
    w.attach("p")
    w.spawn("p", "c", [W("/src/core")])
    before = (
        w.sql(sa.select(pods.c.id, pods.c.version)),
        w.sql(sa.select(pod_edges.c.id)),
        w.mirror_raw("p"),
    )
    cases = [
        ([W("/src/other")], "grant of p", "body.rules[0]"),  # outside the grant
        ([W("/src/lib"), W("/src/core/x")], "delegated to child c", "body.rules[1]"),  # handed out
        ([W("/docs")], "grant of p", "body.rules[0]"),  # the grant gives read only
    ]
    for rules, says, field in cases:
        err = w.error("/p/children", {"name": "x", "rules": rules}, 422, "not_subset")
        assert says in err["message"], err
        assert err["details"]["fields"][0]["path"] == field
    err = w.error(
        "/p/children",
        {"name": "x", "rules": [W("/src/lib")], "grant": [W("/src")]},
        422,
        "not_subset",
    )
    assert err["details"]["fields"][0]["path"] == "body.grant[0]"
    after = (
        w.sql(sa.select(pods.c.id, pods.c.version)),
        w.sql(sa.select(pod_edges.c.id)),
        w.mirror_raw("p"),
    )
    assert after == before, "a refused delegation writes nothing"
    assert all(p.name != "x" for p in w.sql(sa.select(pods.c.name)))


# ------------------------------------------------------------------------------ 7


def test_7_a_sibling_cannot_take_part_of_its_siblings_region(world: World) -> None:
    w = world
    w.create("p", [W("/src")], grant=[W("/src")])
    w.attach("p")
    w.spawn("p", "c1", [W("/src/core")])
    w.spawn("p", "c2", [W("/src/lib")], grant=[W("/src/lib")])
    # c2 cannot delegate into c1's region: outside its grant and its scope.
    err = w.error("/c2/children", {"name": "g", "rules": [W("/src/core/x")]}, 422, "not_subset")
    assert "grant of c2" in err["message"]
    # Nor can the parent hand a subpath of c1's region to a new sibling.
    err = w.error("/p/children", {"name": "c3", "rules": [W("/src/core/x")]}, 422, "not_subset")
    assert "delegated to child c1" in err["message"] and err["details"]["holder"] == "c1"
    assert w.allowed("c1", "/src/core/x") and not w.allowed("c2", "/src/core/x")


# ------------------------------------------------------------------------------ 8


def test_8_a_conflict_blames_the_holder_not_its_parent(world: World) -> None:
    w = world
    family(w)
    w.create("x", [W("/src/core/x")], grant=[W("/src/core/x")])  # an unrelated pod
    err = w.error("/x/children", {"name": "x1", "rules": [W("/src/core/x")]}, 409, "write_conflict")
    details = err["details"]
    assert details["competitor"] == "c" and details["others"] == []
    assert details["competitor_rule"] == W("/src/core") and details["rule"] == W("/src/core/x")
    assert "live pod c" in err["message"] and "delegated by p" in err["message"]
    # Attaching X itself would make a second live writer of /src/core/x: refused the same way.
    assert w.error("/x/attach", {}, 409, "write_conflict")["details"]["competitor"] == "c"
    # With C gone, the region is P's again, and P (live) is the one X conflicts with.
    w.ok("/p/children/c/stop")
    assert w.error("/x/attach", {}, 409, "write_conflict")["details"]["competitor"] == "p"


# ------------------------------------------------------------------------------ 9


def test_9_the_second_pod_on_a_segment_gets_segment_conflict(world: World) -> None:
    w = world
    w.create("a", [W("/a")])
    w.create("b", [W("/b")])
    first = w.attach("a")
    segment = first["segment_id"]
    err = w.error("/b/attach", {"segment_id": segment}, 409, "segment_conflict")
    assert err["details"] == {"segment_id": segment, "pod": "a", "lease_id": first["lease"]["id"]}
    assert w.get("b")["lease"] is None, "the refused attach left nothing behind"
    # Once A's lease is gone, B may continue that segment — and then A cannot.
    w.ok("/a/release", {"lease_id": first["lease"]["id"]})
    moved = w.attach("b", segment)
    assert moved["segment_id"] == segment
    assert w.error("/a/attach", {}, 409, "segment_conflict")["details"]["pod"] == "b"
    assert w.error("/a/compact", None, 409, "segment_conflict")["details"]["pod"] == "b"


# ------------------------------------------------------------------------------ 10


def test_10_a_corrupted_or_deleted_mirror_is_repaired_from_sql(world: World) -> None:
    w = world
    family(w)
    good = w.mirror_raw("p")
    assert good is not None and w.check("p", "/src/core/x")["source"] == "mirror"

    outer = orjson.loads(good)
    forged = dict(outer)  # well-formed, right version, wrong content: P "regains" /src/core
    forged["data"] = {**outer["data"], "scope": {"allow": [W("/src")], "deny": []}}
    c_mirror = w.mirror_raw("c")
    assert c_mirror is not None
    edits: dict[str, bytes | None] = {
        "deleted": None,
        "garbage": b"{not json",
        "forged": orjson.dumps(forged),
        "unknown key": orjson.dumps({**outer, "kid": "nope"}),
        "another pod's": c_mirror,
    }
    for what, value in edits.items():
        w.set_mirror_raw("p", value)
        verdict = w.check("p", "/src/core/x")
        assert verdict["source"] == "sql", what
        assert not verdict["allowed"] and verdict["rule"]["child"] == "c", what
        assert w.mirror_raw("p") == good, f"{what}: the mirror was rewritten from SQL"
        assert w.check("p", "/src/core/x")["source"] == "mirror"
    # A mirror that is merely behind (an older version) is not believed either.
    stale = dict(outer)
    w.ok("/p/compact")
    w.set_mirror_raw("p", orjson.dumps(stale))
    assert w.check("p", "/src/x")["source"] == "sql"

    # rebuild restores every mirror at once, and removes mirrors of pods SQL does not know.
    w.set_mirror_raw("p", None)
    w.set_mirror_raw("c", orjson.dumps(forged))
    w.set_mirror_raw("ghost", b"{}")
    report = w.rebuild()
    assert report["mirrors"] == {
        "checked": 2,
        "rewritten": 2,
        "deleted": 1,
        "problems": {"bad_mac": 1, "miss": 1},
    }
    assert w.mirror_raw("ghost") is None
    for name in ("p", "c"):
        assert w.check(name, "/src/core/x")["source"] == "mirror"
    assert w.rebuild()["mirrors"]["rewritten"] == 0
    metrics = w.client.get("/metrics").text
    assert 'turnout_admin_pod_mirror_repairs_total{reason="bad_mac"} 1' in metrics
    assert 'turnout_admin_pod_mirror_repairs_total{reason="miss"} 1' in metrics


# ------------------------------------------------------------------------------ 11


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "shared.db")
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def two_admins(shared_db: str) -> Iterator[tuple[TestClient, TestClient, str, str]]:
    """Two admin instances on one database (started one after the other: migrations)."""
    apps = [
        create_app(pod_settings(shared_db), store=MemoryRouteStore(), runtime=MemoryRuntimeState())
        for _ in range(2)
    ]
    with TestClient(apps[0]) as one:
        token = bootstrap(one)
        space = create_space(one, token, "race")
        with TestClient(apps[1]) as two:
            yield one, two, token, space


ROUNDS = 12


def test_11_parallel_overlapping_spawns_from_two_parents_exactly_one_wins(
    two_admins: tuple[TestClient, TestClient, str, str],
) -> None:
    one, two, token, space = two_admins
    base = f"/api/spaces/{space}/pods"
    h = auth(token)
    for i in range(ROUNDS):
        for parent in (f"a{i}", f"b{i}"):  # two parents holding the same region, not attached
            body = {"name": parent, "scope": {"allow": [W(f"/r{i}")]}, "grant": [W(f"/r{i}")]}
            assert one.post(base, json=body, headers=h).status_code == 201
    results: dict[tuple[int, str], Any] = {}
    for i in range(ROUNDS):
        barrier = threading.Barrier(2)

        def spawn(
            client: TestClient,
            parent: str,
            rule: dict[str, Any],
            i: int = i,
            barrier: threading.Barrier = barrier,
        ) -> None:
            barrier.wait()
            body = {"name": f"{parent}-child", "rules": [rule]}
            results[(i, parent)] = client.post(f"{base}/{parent}/children", json=body, headers=h)

        threads = [
            threading.Thread(target=spawn, args=(one, f"a{i}", W(f"/r{i}/core"))),
            threading.Thread(target=spawn, args=(two, f"b{i}", W(f"/r{i}/core/x"))),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i in range(ROUNDS):
        a, b = results[(i, f"a{i}")], results[(i, f"b{i}")]
        assert sorted((a.status_code, b.status_code)) == [201, 409], (i, a.text, b.text)
        loser, winner = (a, b) if a.status_code == 409 else (b, a)
        err = assert_error(loser, 409, "write_conflict")
        assert err["details"]["competitor"] == winner.json()["child"]["name"]
    children = one.get(f"{base}?limit=500", headers=h).json()["items"]
    assert sum(1 for p in children if p["parent"] is not None) == ROUNDS
