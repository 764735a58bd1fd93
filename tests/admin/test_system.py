"""System endpoints: full resync (outside any request transaction), and the audit log per space
and platform-wide; plus the framework's ``transactional=False`` contract."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from starlette.requests import Request
from starlette.testclient import TestClient

from admin.auth import Principal
from admin.db import audit_log, publish_queue
from admin.framework import REGISTRY, Ctx
from tests.admin.conftest import (
    assert_error,
    auth,
    bootstrap,
    call,
    create_space,
    make_user,
    principal_of,
    rows,
    sql,
    state_of,
)
from tests.admin.publishing import (
    add_host,
    create_service,
    pause_publisher,
    queued,
    routed_deployment,
    store_get,
    versions,
    wait_for_epoch,
)


def test_resync_counts_and_republishes(client: TestClient) -> None:
    system = bootstrap(client)
    space = create_space(client, system)
    web = create_service(client, system, space, "web")
    create_service(client, system, space, "idle")
    routed_deployment(client, web["id"], "http://127.0.0.1:9")
    old_epoch = wait_for_epoch(client)
    pause_publisher(client)
    for svc, host in [
        ("web", "web.turnout.localhost"),  # verified, routed: published
        ("web", "shop.example.com"),  # unverified: withdrawn
        ("idle", "idle.turnout.localhost"),  # verified, no deployment: withdrawn
    ]:
        assert add_host(client, system, space, svc, host).status_code == 201
    assert queued(client) == {"web.turnout.localhost", "idle.turnout.localhost"}
    assert store_get(client, "web.turnout.localhost") is None  # the publisher is paused

    r = client.post("/api/system/resync", headers=auth(system))
    assert r.status_code == 200, r.text
    counts = r.json()
    assert counts["published"] == 1 and counts["withdrawn"] == 2 and counts["hostnames"] == 3
    assert isinstance(counts["seconds"], float)
    assert counts["epoch"] != old_epoch
    assert call(client, state_of(client).store.get_epoch) == counts["epoch"]
    record = store_get(client, "web.turnout.localhost")
    assert record is not None and record["service_id"] == web["id"]
    assert store_get(client, "shop.example.com") is None
    assert queued(client) == set()  # the resync covered the outbox
    assert set(versions(client)) == {
        "web.turnout.localhost",
        "shop.example.com",
        "idle.turnout.localhost",
    }

    again = client.post("/api/system/resync", headers=auth(system)).json()
    assert again["published"] == 1 and again["epoch"] != counts["epoch"]
    assert state_of(client).publisher.resyncs >= 2


def test_resync_of_an_empty_platform(client: TestClient) -> None:
    system = bootstrap(client)
    r = client.post("/api/system/resync", headers=auth(system))
    assert r.status_code == 200, r.text
    assert {k: v for k, v in r.json().items() if k not in ("epoch", "seconds")} == {
        "published": 0,
        "withdrawn": 0,
        "hostnames": 0,
    }


def test_resync_is_audited_and_idempotent(client: TestClient) -> None:
    system = bootstrap(client)
    wait_for_epoch(client)  # the start-up reconcile has run its own resync
    before = state_of(client).publisher.resyncs
    headers = {**auth(system), "idempotency-key": "resync-1"}
    first = client.post("/api/system/resync", headers=headers)
    assert first.status_code == 200, first.text
    replay = client.post("/api/system/resync", headers=headers)
    assert replay.status_code == 200 and replay.headers.get("idempotent-replay") == "true"
    assert replay.json() == first.json()
    assert state_of(client).publisher.resyncs == before + 1  # the replay did not run it again
    found = rows(
        client,
        sa.select(audit_log.c.action, audit_log.c.resource, audit_log.c.outcome).where(
            audit_log.c.action == "resync"
        ),
    )
    assert [tuple(r) for r in found] == [("resync", "system:routes", "success")]


def test_resync_is_the_system_principals_alone(client: TestClient) -> None:
    system = bootstrap(client)
    space = create_space(client, system)
    user = make_user(client, system, "root-ish", space, "owner", scopes=["*"])
    assert_error(client.post("/api/system/resync", headers=auth(user)), 403, "forbidden")
    assert_error(client.get("/api/system/audit", headers=auth(user)), 403, "forbidden")
    assert_error(client.post("/api/system/resync"), 401, "invalid_token")


def test_non_transactional_endpoints_are_declared() -> None:
    flags = {(e.method, e.path): e.transactional for e in REGISTRY}
    assert flags[("POST", "/api/system/resync")] is False
    assert (
        flags[("POST", "/api/spaces/{space}/services/{service}/hostnames/{host}/verify")] is False
    )
    assert flags[("POST", "/api/spaces/{space}/services")] is True


def test_ctx_conn_outside_a_transaction_is_an_error(client: TestClient) -> None:
    state = state_of(client)
    request = Request({"type": "http", "method": "POST", "path": "/", "headers": []})
    principal = Principal(id="p", kind="system", name="s", token_id="t", scopes=frozenset("*"))
    ctx = Ctx(request=request, state=state, principal=principal, request_id="r", params={})
    with pytest.raises(RuntimeError, match="transactional=False"):
        _ = ctx.conn

    async def inside() -> set[str]:
        async with ctx.transaction() as conn:
            assert ctx.conn is conn
            ctx.enqueue_publish(["x.turnout.localhost"])
        with pytest.raises(RuntimeError):
            _ = ctx.conn
        return ctx.queued

    pause_publisher(client)
    assert call(client, inside) == {"x.turnout.localhost"}
    assert not ctx.publish
    # Written in the block's own transaction: the outbox row is committed.
    assert [r.host for r in rows(client, sa.select(publish_queue.c.host))] == [
        "x.turnout.localhost"
    ]


# ------------------------------------------------------------------------------ audit


def _audit(client: TestClient, url: str, token: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        r = client.get(
            url + (f"?limit=3&cursor={cursor}" if cursor else "?limit=3"), headers=auth(token)
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["items"]) <= 3
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


def test_space_audit(client: TestClient) -> None:
    system = bootstrap(client)
    a = create_space(client, system, "a")
    b = create_space(client, system, "b")
    admin = make_user(client, system, "adm", a, "admin")
    create_service(client, admin, a, "web")
    client.post(f"/api/spaces/{a}/services", json={"name": "web"}, headers=auth(admin))  # 409
    add_host(client, admin, a, "web", "web.turnout.localhost")
    client.patch(f"/api/spaces/{a}/services/web", json={"status": "stopped"}, headers=auth(admin))
    create_service(client, system, b, "elsewhere")

    items = _audit(client, f"/api/spaces/{a}/audit", admin)
    assert all(i["space_id"] == a for i in items)
    assert set(items[0]) == {
        "id",
        "at",
        "principal_id",
        "principal_kind",
        "space_id",
        "action",
        "resource",
        "request_id",
        "client_request_id",
        "outcome",
    }
    actions = [(i["action"], i["outcome"]) for i in items if i["action"] != "add_member"]
    assert actions == [
        ("create_service", "success"),
        ("create_service", "conflict"),
        ("add_hostname", "success"),
        ("patch_service", "success"),
    ]
    assert [i["id"] for i in items] == sorted(i["id"] for i in items)
    assert all(isinstance(i["at"], int) and i["request_id"] for i in items)
    assert not any(i["resource"].endswith("elsewhere") for i in items)

    # The answer's request id is the server's, in the audit row beside the client's own.
    r = client.post(
        f"/api/spaces/{a}/services",
        json={"name": "api"},
        headers={**auth(admin), "x-request-id": "req-trace-1"},
    )
    assert r.status_code == 201
    last = _audit(client, f"/api/spaces/{a}/audit", admin)[-1]
    assert last["action"] == "create_service"
    assert last["request_id"] == r.headers["x-request-id"]
    assert last["client_request_id"] == "req-trace-1"


def test_space_audit_access(client: TestClient) -> None:
    system = bootstrap(client)
    a = create_space(client, system, "a")
    b = create_space(client, system, "b")
    editor = make_user(client, system, "ed", a, "editor")
    stranger = make_user(client, system, "st", b, "owner")
    assert_error(client.get(f"/api/spaces/{a}/audit", headers=auth(editor)), 403, "forbidden")
    assert_error(client.get(f"/api/spaces/{a}/audit", headers=auth(stranger)), 404, "not_found")
    assert client.get(f"/api/spaces/{b}/audit", headers=auth(stranger)).status_code == 200
    assert client.get(f"/api/spaces/{a}/audit", headers=auth(system)).status_code == 200
    r = client.get(f"/api/spaces/{a}/audit?limit=0", headers=auth(system))
    assert_error(r, 422, "validation_failed")
    r = client.get(f"/api/spaces/{a}/audit?cursor=@@", headers=auth(system))
    assert_error(r, 422, "validation_failed")


def test_audit_filters_by_action_outcome_and_principal(client: TestClient) -> None:
    system = bootstrap(client)
    a = create_space(client, system, "a")
    admin = make_user(client, system, "adm", a, "admin")
    create_service(client, admin, a, "web")
    client.post(f"/api/spaces/{a}/services", json={"name": "web"}, headers=auth(admin))  # 409
    create_service(client, system, a, "api")
    base = f"/api/spaces/{a}/audit"

    def got(query: str, url: str = base) -> list[tuple[str, str]]:
        r = client.get(f"{url}?{query}", headers=auth(system))
        assert r.status_code == 200, r.text
        return [(i["action"], i["outcome"]) for i in r.json()["items"]]

    assert got("action=create_service") == [
        ("create_service", "success"),
        ("create_service", "conflict"),
        ("create_service", "success"),
    ]
    assert got("action=create_service&outcome=conflict") == [("create_service", "conflict")]
    admin_id = principal_of(client, admin)
    assert got(f"action=create_service&principal={admin_id}") == [
        ("create_service", "success"),
        ("create_service", "conflict"),
    ]
    assert got("action=no_such_action") == []
    assert got("outcome=conflict", "/api/system/audit") == [("create_service", "conflict")]
    # Filters and paging together: the cursor walks the filtered rows.
    first = client.get(f"{base}?action=create_service&limit=2", headers=auth(system)).json()
    rest = client.get(
        f"{base}?action=create_service&limit=2&cursor={first['next_cursor']}",
        headers=auth(system),
    ).json()
    assert [len(first["items"]), len(rest["items"]), rest["next_cursor"]] == [2, 1, None]
    for bad in ("action=%00", "outcome=" + "x" * 300, "principal=a%0Ab"):
        err = assert_error(client.get(f"{base}?{bad}", headers=auth(system)), 422)
        assert f"query.{bad.split('=')[0]}" in err["message"], err


def test_system_audit_sees_every_space(client: TestClient) -> None:
    system = bootstrap(client)
    a = create_space(client, system, "a")
    b = create_space(client, system, "b")
    create_service(client, system, a, "one")
    create_service(client, system, b, "two")
    client.post("/api/system/resync", headers=auth(system))
    items = _audit(client, "/api/system/audit", system)
    spaces_seen = {i["space_id"] for i in items}
    assert {a, b, None} <= spaces_seen
    assert ("resync", None) in {(i["action"], i["space_id"]) for i in items}
    total = rows(client, sa.select(sa.func.count()).select_from(audit_log))[0][0]
    assert len(items) == total


def test_audit_survives_a_failed_transaction(client: TestClient) -> None:
    """A mutation that fails leaves no change but still an audit row with the error code."""
    system = bootstrap(client)
    space = create_space(client, system)
    r = client.patch(
        f"/api/spaces/{space}/services/nope", json={"status": "stopped"}, headers=auth(system)
    )
    assert_error(r, 404, "not_found")

    async def count(conn: Any) -> int:
        return int(
            (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(audit_log)
                    .where(
                        audit_log.c.action == "patch_service", audit_log.c.outcome == "not_found"
                    )
                )
            ).scalar_one()
        )

    assert sql(client, count) == 1
