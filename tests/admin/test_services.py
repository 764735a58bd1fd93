"""Services through the API: create/list/read/stop/delete, names, roles, ETag/If-Match, and the
routes a stop or a delete withdraws."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from admin.db import audit_log, hostnames, services
from tests.admin.conftest import (
    assert_error,
    auth,
    bootstrap,
    create_space,
    make_user,
    rows,
)
from tests.admin.publishing import (
    add_host,
    create_service,
    drain,
    pause_publisher,
    queued,
    routed_deployment,
    store_get,
    versions,
)


def _paths(resp: Any) -> list[str]:
    err = assert_error(resp, 422, "validation_failed")
    return [f["path"] for f in err["details"]["fields"]]


def test_create_read_list(client: TestClient) -> None:
    system = bootstrap(client)
    space = create_space(client, system, "team")
    editor = make_user(client, system, "ed", space, "editor")

    r = client.post(f"/api/spaces/{space}/services", json={"name": "web"}, headers=auth(editor))
    assert r.status_code == 201, r.text
    svc = r.json()
    assert svc["id"].startswith("svc_") and svc["space_id"] == space
    assert svc["name"] == "web" and svc["status"] == "pending" and svc["hostnames"] == []
    assert r.headers["etag"] == svc["etag"]

    by_id = client.get(f"/api/spaces/{space}/services/{svc['id']}", headers=auth(editor))
    by_name = client.get(f"/api/spaces/{space}/services/web", headers=auth(editor))
    assert by_id.status_code == 200 and by_id.json() == svc
    assert by_name.status_code == 200 and by_name.json() == svc
    assert by_id.headers["etag"] == svc["etag"]

    names = ["api", "b-2", "c", "z" * 63]
    for n in names:
        create_service(client, editor, space, n)
    viewer = make_user(client, system, "vi", space, "viewer")
    seen: list[str] = []
    cursor: str | None = None
    while True:
        q = f"?limit=2&cursor={cursor}" if cursor else "?limit=2"
        page = client.get(f"/api/spaces/{space}/services{q}", headers=auth(viewer))
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["items"]) <= 2
        seen += [s["name"] for s in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == ["web", *names]  # ids sort by creation time

    # The list carries each service's hostnames.
    add_host(client, system, space, "api", "api.turnout.localhost")
    listed = client.get(f"/api/spaces/{space}/services", headers=auth(viewer)).json()["items"]
    assert {s["name"]: s["hostnames"] for s in listed}["api"] == ["api.turnout.localhost"]
    assert {s["name"]: s["hostnames"] for s in listed}["web"] == []


@pytest.mark.parametrize(
    "body",
    [
        {"name": ""},
        {"name": "Web"},
        {"name": "-web"},
        {"name": "web-"},
        {"name": "we_b"},
        {"name": "we.b"},
        {"name": "we b"},
        {"name": "z" * 64},
        {"name": 5},
        {"name": None},
        {},
    ],
    ids=repr,
)
def test_bad_names(client: TestClient, body: dict[str, Any]) -> None:
    system = bootstrap(client)
    space = create_space(client, system)
    r = client.post(f"/api/spaces/{space}/services", json=body, headers=auth(system))
    assert _paths(r) == ["body.name"]
    assert rows(client, sa.select(services.c.id)) == []


def test_unknown_key_and_bad_json(client: TestClient) -> None:
    system = bootstrap(client)
    space = create_space(client, system)
    url = f"/api/spaces/{space}/services"
    assert _paths(client.post(url, json={"name": "a", "x": 1}, headers=auth(system))) == ["body.x"]
    assert _paths(client.post(url, content=b"{", headers=auth(system))) == ["body"]


def test_names_unique_per_space(client: TestClient) -> None:
    system = bootstrap(client)
    a = create_space(client, system, "a")
    b = create_space(client, system, "b")
    create_service(client, system, a, "web")
    dup = client.post(f"/api/spaces/{a}/services", json={"name": "web"}, headers=auth(system))
    assert "web" in assert_error(dup, 409, "conflict")["message"]
    create_service(client, system, b, "web")  # another space may use the name
    assert len(rows(client, sa.select(services.c.id).where(services.c.name == "web"))) == 2


def test_roles(client: TestClient) -> None:
    system = bootstrap(client)
    space = create_space(client, system)
    viewer = make_user(client, system, "v", space, "viewer")
    editor = make_user(client, system, "e", space, "editor")
    admin = make_user(client, system, "a", space, "admin")
    url = f"/api/spaces/{space}/services"
    assert_error(client.post(url, json={"name": "x"}, headers=auth(viewer)), 403, "forbidden")
    svc = create_service(client, editor, space, "x")
    assert client.get(f"{url}/x", headers=auth(viewer)).status_code == 200
    stop = client.patch(f"{url}/x", json={"status": "stopped"}, headers=auth(editor))
    assert stop.status_code == 200, stop.text
    assert_error(client.delete(f"{url}/x", headers=auth(editor)), 403, "forbidden")
    assert client.delete(f"{url}/{svc['id']}", headers=auth(admin)).status_code == 204


def test_other_space_service_is_not_found(client: TestClient) -> None:
    system = bootstrap(client)
    a = create_space(client, system, "a")
    b = create_space(client, system, "b")
    svc = create_service(client, system, a, "web")
    bob = make_user(client, system, "bob", b, "owner")
    for ref in (svc["id"], "web"):
        # Through the space bob belongs to: the service is not there.
        assert_error(client.get(f"/api/spaces/{b}/services/{ref}", headers=auth(bob)), 404)
        assert_error(
            client.patch(
                f"/api/spaces/{b}/services/{ref}", json={"status": "stopped"}, headers=auth(bob)
            ),
            404,
        )
        assert_error(client.delete(f"/api/spaces/{b}/services/{ref}", headers=auth(bob)), 404)
        # Through the owning space: bob is no member.
        assert_error(client.get(f"/api/spaces/{a}/services/{ref}", headers=auth(bob)), 404)
    assert_error(client.get(f"/api/spaces/{b}/services/svc_nope", headers=auth(bob)), 404)
    got = client.get(f"/api/spaces/{a}/services/{svc['id']}", headers=auth(system)).json()
    assert got["status"] == "pending"


@pytest.mark.parametrize("status", ["deployed", "failed", "pending", "running", "STOPPED", ""])
def test_patch_rejects_other_statuses(client: TestClient, status: str) -> None:
    system = bootstrap(client)
    space = create_space(client, system)
    create_service(client, system, space, "web")
    r = client.patch(
        f"/api/spaces/{space}/services/web", json={"status": status}, headers=auth(system)
    )
    assert _paths(r) == ["body.status"]
    if status == "deployed":
        assert "deployments" in r.json()["error"]["message"]
    got = client.get(f"/api/spaces/{space}/services/web", headers=auth(system)).json()
    assert got["status"] == "pending"


def test_patch_body_is_required(client: TestClient) -> None:
    system = bootstrap(client)
    space = create_space(client, system)
    create_service(client, system, space, "web")
    url = f"/api/spaces/{space}/services/web"
    assert _paths(client.patch(url, json={}, headers=auth(system))) == ["body.status"]
    assert _paths(client.patch(url, json={"status": 1}, headers=auth(system))) == ["body.status"]


def test_if_match(client: TestClient) -> None:
    system = bootstrap(client)
    space = create_space(client, system)
    svc = create_service(client, system, space, "web")
    url = f"/api/spaces/{space}/services/web"
    stale = svc["etag"]

    ok = client.patch(url, json={"status": "stopped"}, headers={**auth(system), "if-match": stale})
    assert ok.status_code == 200, ok.text
    fresh = ok.json()["etag"]
    assert fresh != stale and ok.headers["etag"] == fresh and ok.json()["status"] == "stopped"

    err = assert_error(
        client.patch(url, json={"status": "stopped"}, headers={**auth(system), "if-match": stale}),
        412,
        "precondition_failed",
    )
    assert err["details"]["etag"] == fresh
    assert_error(
        client.delete(url, headers={**auth(system), "if-match": stale}), 412, "precondition_failed"
    )
    assert client.get(url, headers=auth(system)).status_code == 200
    assert client.delete(url, headers={**auth(system), "if-match": fresh}).status_code == 204
    assert_error(client.get(url, headers=auth(system)), 404, "not_found")


def test_stop_enqueues_every_hostname(client: TestClient) -> None:
    system = bootstrap(client)
    space = create_space(client, system)
    web = create_service(client, system, space, "web")
    create_service(client, system, space, "other")
    pause_publisher(client)
    hosts = ["web.turnout.localhost", "*.web.turnout.localhost", "www.example.com"]
    for h in hosts:
        assert add_host(client, system, space, "web", h).status_code == 201
    assert add_host(client, system, space, "other", "other.turnout.localhost").status_code == 201
    drain(client)
    assert queued(client) == set()
    before = versions(client)

    r = client.patch(
        f"/api/spaces/{space}/services/web", json={"status": "stopped"}, headers=auth(system)
    )
    assert r.status_code == 200, r.text
    assert r.json()["hostnames"] == sorted(hosts)
    assert queued(client) == set(hosts)  # the unverified one too: harmless, it stays withdrawn
    drain(client)
    after = versions(client)
    for h in hosts:
        assert after[h] == before.get(h, 0) + 1
    assert after["other.turnout.localhost"] == before["other.turnout.localhost"]
    assert rows(client, sa.select(services.c.status).where(services.c.id == web["id"]))[0][0] == (
        "stopped"
    )


def test_stop_withdraws_a_published_route(client: TestClient) -> None:
    system = bootstrap(client)
    space = create_space(client, system)
    web = create_service(client, system, space, "web")
    routed_deployment(client, web["id"], "http://127.0.0.1:9")
    pause_publisher(client)
    assert add_host(client, system, space, "web", "web.turnout.localhost").status_code == 201
    drain(client)
    record = store_get(client, "web.turnout.localhost")
    assert record is not None and record["service_id"] == web["id"]
    assert record["endpoints"][0]["targets"][0]["upstreams"] == ["http://127.0.0.1:9"]

    r = client.patch(
        f"/api/spaces/{space}/services/web", json={"status": "stopped"}, headers=auth(system)
    )
    assert r.status_code == 200
    drain(client)
    assert store_get(client, "web.turnout.localhost") is None


def test_delete_enqueues_hosts_and_removes_them(client: TestClient) -> None:
    system = bootstrap(client)
    space = create_space(client, system)
    web = create_service(client, system, space, "web")
    routed_deployment(client, web["id"], "http://127.0.0.1:9")
    pause_publisher(client)
    for h in ("web.turnout.localhost", "web.example.com"):
        assert add_host(client, system, space, "web", h).status_code == 201
    drain(client)
    assert store_get(client, "web.turnout.localhost") is not None

    assert client.delete(f"/api/spaces/{space}/services/web", headers=auth(system)).status_code == (
        204
    )
    assert queued(client) == {"web.turnout.localhost", "web.example.com"}
    assert rows(client, sa.select(hostnames.c.host)) == []
    assert rows(client, sa.select(services.c.id)) == []
    drain(client)
    assert store_get(client, "web.turnout.localhost") is None
    # The names are free again, for any space.
    other = create_space(client, system, "other")
    create_service(client, system, other, "app")
    assert add_host(client, system, other, "app", "web.turnout.localhost").status_code == 201


def test_mutations_are_audited(client: TestClient) -> None:
    system = bootstrap(client)
    space = create_space(client, system)
    svc = create_service(client, system, space, "web")
    client.post(f"/api/spaces/{space}/services", json={"name": "web"}, headers=auth(system))
    client.patch(
        f"/api/spaces/{space}/services/web", json={"status": "stopped"}, headers=auth(system)
    )
    client.delete(f"/api/spaces/{space}/services/web", headers=auth(system))
    found = rows(
        client,
        sa.select(audit_log.c.action, audit_log.c.resource, audit_log.c.outcome)
        .where(audit_log.c.space_id == space)
        .order_by(audit_log.c.id),
    )
    resource = f"space:{space}/service:{svc['id']}"
    assert [tuple(r) for r in found] == [
        ("create_service", resource, "success"),
        ("create_service", "/api/spaces/{space}/services", "conflict"),
        ("patch_service", resource, "success"),
        ("delete_service", resource, "success"),
    ]
