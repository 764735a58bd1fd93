"""Hostnames: validation, global uniqueness, the per-service limit, base-domain grants, TXT
ownership proof through the fixture resolver, and what is (not) published."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from admin.app import create_app
from admin.db import audit_log, hostnames
from routing.store import MemoryRouteStore
from tests.admin.conftest import (
    admin_settings,
    assert_error,
    auth,
    bootstrap,
    create_space,
    make_user,
    rows,
    state_of,
)
from tests.admin.dns_support import BASE, CLIENT_FIXTURE, DNS_FIXTURE, set_txt
from tests.admin.publishing import (
    add_host,
    create_service,
    drain,
    pause_publisher,
    queued,
    routed_deployment,
    store_get,
    store_log,
    versions,
)

dns = DNS_FIXTURE
client = CLIENT_FIXTURE


@pytest.fixture
def world(client: TestClient) -> dict[str, str]:
    system = bootstrap(client)
    space = create_space(client, system, "team")
    create_service(client, system, space, "web")
    return {"system": system, "space": space}


def hosts_url(w: dict[str, str], service: str = "web") -> str:
    return f"/api/spaces/{w['space']}/services/{service}/hostnames"


# ------------------------------------------------------------------------------ validation


BAD_HOSTS = [
    "",
    ".",
    "-a.example.com",
    "a-.example.com",
    "a..example.com",
    ".example.com",
    "example.com.",
    "a_b.example.com",
    "a b.example.com",
    "exämple.com",
    "http://example.com",
    "example.com/x",
    "example.com:8080",
    "*.com",
    "*",
    "*.",
    "a.*.example.com",
    "*a.example.com",
    "**.example.com",
    "*.*.example.com",
    "x" * 64 + ".example.com",
    ".".join(["a" * 60] * 5),  # 304 characters
]


@pytest.mark.parametrize("host", BAD_HOSTS, ids=repr)
def test_bad_hostnames(client: TestClient, world: dict[str, str], host: str) -> None:
    r = client.post(hosts_url(world), json={"host": host}, headers=auth(world["system"]))
    err = assert_error(r, 422, "validation_failed")
    assert [f["path"] for f in err["details"]["fields"]] == ["body.host"]
    assert rows(client, sa.select(hostnames.c.host)) == []


@pytest.mark.parametrize("body", [{"host": 5}, {"host": None}, {}, {"host": "a.b", "x": 1}])
def test_bad_bodies(client: TestClient, world: dict[str, str], body: dict[str, Any]) -> None:
    r = client.post(hosts_url(world), json=body, headers=auth(world["system"]))
    err = assert_error(r, 422, "validation_failed")
    assert err["details"]["fields"][0]["path"] in ("body.host", "body.x")


def test_longest_valid_hostname_is_accepted(client: TestClient, world: dict[str, str]) -> None:
    host = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 57, "com"])
    assert len(host) == 253
    r = add_host(client, world["system"], world["space"], "web", host)
    assert r.status_code == 201, r.text


def test_upper_case_is_lowered(client: TestClient, world: dict[str, str]) -> None:
    r = add_host(client, world["system"], world["space"], "web", "WWW.Example.COM")
    assert r.status_code == 201, r.text
    assert r.json()["host"] == "www.example.com"
    assert [h for (h,) in rows(client, sa.select(hostnames.c.host))] == ["www.example.com"]
    # ... and so are path parameters naming it.
    got = client.get(f"{hosts_url(world)}/WWW.EXAMPLE.com", headers=auth(world["system"]))
    assert got.status_code == 200 and got.json()["host"] == "www.example.com"
    dup = add_host(client, world["system"], world["space"], "web", "www.EXAMPLE.com")
    assert_error(dup, 409, "hostname_taken")


@pytest.mark.parametrize("host", [BASE, BASE.upper(), f"*.{BASE}"])
def test_base_domain_itself_is_refused(
    client: TestClient, world: dict[str, str], host: str
) -> None:
    r = add_host(client, world["system"], world["space"], "web", host)
    err = assert_error(r, 422, "validation_failed")
    assert err["details"]["fields"][0]["path"] == "body.host"
    assert "base domain" in err["message"]


def test_unknown_service_is_not_found(client: TestClient, world: dict[str, str]) -> None:
    r = add_host(client, world["system"], world["space"], "nope", "a.example.com")
    assert_error(r, 404, "not_found")


# ------------------------------------------------------------------------------ uniqueness, limit


def test_taken_by_another_space(client: TestClient, world: dict[str, str], dns: Path) -> None:
    """A name another space holds *verified* is taken (an unverified claim blocks nobody:
    tests/admin/test_claims.py)."""
    system = world["system"]
    other = create_space(client, system, "other")
    create_service(client, system, other, "app")
    owner = make_user(client, system, "eve", other, "owner")
    for host in ("shop.example.com", "app.turnout.localhost", "*.wild.example.com"):
        made = add_host(client, system, world["space"], "web", host)
        assert made.status_code == 201
        if not made.json()["verified"]:
            v = made.json()["verification"]
            set_txt(dns, v["name"], v["value"])
            url = f"{hosts_url(world)}/{host}/verify"
            assert client.post(url, headers=auth(system)).json()["verified"] is True
        r = add_host(client, owner, other, "app", host.upper())
        err = assert_error(r, 409, "hostname_taken")
        assert world["space"] not in r.text and "web" not in err["message"]
    # The other space cannot see the host either.
    assert_error(
        client.get(
            f"/api/spaces/{other}/services/app/hostnames/shop.example.com", headers=auth(owner)
        ),
        404,
        "not_found",
    )
    assert_error(
        client.get(f"{hosts_url(world)}/shop.example.com", headers=auth(owner)), 404, "not_found"
    )
    assert_error(client.delete(f"{hosts_url(world)}/shop.example.com", headers=auth(owner)), 404)
    assert_error(
        client.post(f"{hosts_url(world)}/shop.example.com/verify", headers=auth(owner)), 404
    )


def test_base_domain_subtree_belongs_to_its_first_claimant(
    client: TestClient, world: dict[str, str]
) -> None:
    system = world["system"]
    assert (
        add_host(client, system, world["space"], "web", "app.turnout.localhost").status_code == 201
    )
    other = create_space(client, system, "other")
    create_service(client, system, other, "x")
    for host in ("api.app.turnout.localhost", "*.app.turnout.localhost"):
        assert_error(add_host(client, system, other, "x", host), 409, "hostname_taken")
    # The same space may go deeper; other labels are free for everyone.
    for host in ("api.app.turnout.localhost", "*.app.turnout.localhost"):
        assert add_host(client, system, world["space"], "web", host).status_code == 201
    assert add_host(client, system, other, "x", "other.turnout.localhost").status_code == 201
    # A deeper claim counts too: nobody else can take its parent label.
    assert add_host(client, system, other, "x", "a.b.turnout.localhost").status_code == 201
    r = add_host(client, system, world["space"], "web", "b.turnout.localhost")
    assert_error(r, 409, "hostname_taken")


def test_taken_within_the_space(client: TestClient, world: dict[str, str]) -> None:
    system, space = world["system"], world["space"]
    create_service(client, system, space, "api")
    assert add_host(client, system, space, "web", "a.example.com").status_code == 201
    same = add_host(client, system, space, "web", "a.example.com")
    assert "this service" in assert_error(same, 409, "hostname_taken")["message"]
    other = add_host(client, system, space, "api", "a.example.com")
    assert "web" in assert_error(other, 409, "hostname_taken")["message"]


def test_hostname_limit(client: TestClient, world: dict[str, str]) -> None:
    system, space = world["system"], world["space"]
    assert state_of(client).settings.max_hostnames_per_service == 20
    for i in range(20):
        host = f"h{i}.turnout.localhost" if i % 2 else f"h{i}.example.com"
        assert add_host(client, system, space, "web", host).status_code == 201
    r = add_host(client, system, space, "web", "h20.example.com")
    err = assert_error(r, 409, "hostname_limit")
    assert err["details"] == {"limit": 20}
    assert_error(add_host(client, system, space, "web", "h21.turnout.localhost"), 409)
    # Another service has its own budget; freeing one makes room.
    create_service(client, system, space, "api")
    assert add_host(client, system, space, "api", "h20.example.com").status_code == 201
    url = f"{hosts_url(world)}/h0.example.com"
    assert client.delete(url, headers=auth(system)).status_code == 204
    assert add_host(client, system, space, "web", "h21.example.com").status_code == 201


# ------------------------------------------------------------------------------ grant, verify


def test_base_domain_names_are_granted_and_published(
    client: TestClient, world: dict[str, str]
) -> None:
    pause_publisher(client)
    r = add_host(client, world["system"], world["space"], "web", "App.Turnout.Localhost")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["host"] == "app.turnout.localhost"
    assert body["verified"] is True and body["verification"] is None
    assert isinstance(body["verified_at"], int) and r.headers["etag"] == body["etag"]
    wild = add_host(client, world["system"], world["space"], "web", "*.app.turnout.localhost")
    assert wild.status_code == 201 and wild.json()["verified"] is True
    assert queued(client) == {"app.turnout.localhost", "*.app.turnout.localhost"}
    assert drain(client) == 2
    assert queued(client) == set()
    # No routed deployment yet: what went out is a tombstone (nothing to serve), versioned.
    assert versions(client)["app.turnout.localhost"] == 1
    [entry] = store_log(client, "app.turnout.localhost")
    assert entry.record is None and entry.version == 1


def test_custom_hostname_needs_a_txt_proof(
    client: TestClient, world: dict[str, str], dns: Path
) -> None:
    pause_publisher(client)
    system = world["system"]
    r = add_host(client, system, world["space"], "web", "shop.example.com")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["verified"] is False and body["verified_at"] is None
    v = body["verification"]
    assert v["type"] == "TXT" and v["name"] == "_turnout-verify.shop.example.com"
    token = v["value"].removeprefix("turnout-verify=")
    assert v["value"].startswith("turnout-verify=") and len(token) >= 32
    # Unverified: nothing queued, nothing published.
    assert queued(client) == set()
    drain(client)
    assert "shop.example.com" not in versions(client)
    assert store_log(client, "shop.example.com") == []
    # Reads repeat the instructions.
    got = client.get(f"{hosts_url(world)}/shop.example.com", headers=auth(system)).json()
    assert got["verification"] == v

    verify = f"{hosts_url(world)}/shop.example.com/verify"
    err = assert_error(client.post(verify, headers=auth(system)), 409, "verification_failed")
    assert "_turnout-verify.shop.example.com" in err["message"] and v["value"] in err["message"]
    assert err["details"]["expected"] == v and err["details"]["found"] == []

    set_txt(dns, "_turnout-verify.shop.example.com", "turnout-verify=wrong", "v=spf1 -all")
    err = assert_error(client.post(verify, headers=auth(system)), 409, "verification_failed")
    assert err["details"]["found"] == ["turnout-verify=wrong", "v=spf1 -all"]
    assert queued(client) == set()

    set_txt(dns, "_turnout-verify.shop.example.com", "v=spf1 -all", v["value"])
    ok = client.post(verify, headers=auth(system))
    assert ok.status_code == 200, ok.text
    assert ok.json()["verified"] is True and ok.json()["verification"] is None
    assert ok.headers["etag"] == ok.json()["etag"] != body["etag"]
    assert queued(client) == {"shop.example.com"}
    drain(client)
    assert versions(client)["shop.example.com"] == 1

    # Verifying again is a no-op answer, not a republish.
    again = client.post(verify, headers=auth(system))
    assert again.status_code == 200 and again.json() == ok.json()
    assert queued(client) == set()


def test_wildcard_is_proven_on_its_parent(
    client: TestClient, world: dict[str, str], dns: Path
) -> None:
    r = add_host(client, world["system"], world["space"], "web", "*.Example.com")
    assert r.status_code == 201, r.text
    v = r.json()["verification"]
    assert r.json()["host"] == "*.example.com"
    assert v["name"] == "_turnout-verify.example.com"
    set_txt(dns, "_turnout-verify.example.com", v["value"])
    ok = client.post(f"{hosts_url(world)}/*.example.com/verify", headers=auth(world["system"]))
    assert ok.status_code == 200 and ok.json()["verified"] is True


def test_verified_host_of_a_deployed_service_is_served(
    client: TestClient, world: dict[str, str], dns: Path
) -> None:
    system, space = world["system"], world["space"]
    svc = client.get(f"/api/spaces/{space}/services/web", headers=auth(system)).json()
    routed_deployment(client, svc["id"], "http://127.0.0.1:9")
    pause_publisher(client)
    v = add_host(client, system, space, "web", "shop.example.com").json()["verification"]
    drain(client)
    assert store_get(client, "shop.example.com") is None  # unverified: never published

    set_txt(dns, v["name"], v["value"])
    assert client.post(f"{hosts_url(world)}/shop.example.com/verify", headers=auth(system)).json()[
        "verified"
    ]
    drain(client)
    record = store_get(client, "shop.example.com")
    assert record is not None and record["space_id"] == space and record["service_id"] == svc["id"]

    # Releasing it: enqueued, then a tombstone.
    assert client.delete(
        f"{hosts_url(world)}/shop.example.com", headers=auth(system)
    ).status_code == (204)
    assert queued(client) == {"shop.example.com"}
    drain(client)
    assert store_get(client, "shop.example.com") is None
    assert store_log(client, "shop.example.com")[-1].record is None
    assert rows(client, sa.select(hostnames.c.host)) == []


def test_verify_holds_no_database_connection_during_the_lookup(
    tmp_path: Path,
) -> None:
    """The TXT lookup runs outside any transaction: SQLite's single pooled connection is free,
    so other requests (here: a query from inside the resolver) are not blocked by slow DNS."""
    engine_box: list[Any] = []
    looked_up: list[str] = []

    class QueryingResolver:
        async def txt(self, name: str) -> list[str]:
            looked_up.append(name)
            async with asyncio.timeout(3):
                async with engine_box[0].connect() as conn:
                    await conn.execute(sa.text("SELECT 1"))
            return []

    settings = admin_settings(str(tmp_path / "admin.db"))
    app = create_app(settings, store=MemoryRouteStore(), resolver=QueryingResolver())
    with TestClient(app) as c:
        engine_box.append(state_of(c).engine)
        system = bootstrap(c)
        space = create_space(c, system)
        create_service(c, system, space, "web")
        assert add_host(c, system, space, "web", "a.example.com").status_code == 201
        r = c.post(
            f"/api/spaces/{space}/services/web/hostnames/a.example.com/verify",
            headers=auth(system),
        )
        assert_error(r, 409, "verification_failed")
        assert looked_up == ["_turnout-verify.a.example.com"]


def test_resolver_failure_is_503(tmp_path: Path) -> None:
    class BrokenResolver:
        async def txt(self, name: str) -> list[str]:
            raise OSError("resolver unreachable")

    settings = admin_settings(str(tmp_path / "admin.db"))
    with TestClient(create_app(settings, store=MemoryRouteStore(), resolver=BrokenResolver())) as c:
        system = bootstrap(c)
        space = create_space(c, system)
        create_service(c, system, space, "web")
        assert add_host(c, system, space, "web", "a.example.com").status_code == 201
        r = c.post(
            f"/api/spaces/{space}/services/web/hostnames/a.example.com/verify",
            headers=auth(system),
        )
        err = assert_error(r, 503, "unavailable")
        assert "_turnout-verify.a.example.com" in err["message"]


def test_verify_is_audited(client: TestClient, world: dict[str, str], dns: Path) -> None:
    system = world["system"]
    v = add_host(client, system, world["space"], "web", "a.example.com").json()["verification"]
    url = f"{hosts_url(world)}/a.example.com/verify"
    assert_error(client.post(url, headers=auth(system)), 409)
    set_txt(dns, v["name"], v["value"])
    assert client.post(url, headers=auth(system)).status_code == 200
    found = rows(
        client,
        sa.select(audit_log.c.action, audit_log.c.outcome, audit_log.c.resource)
        .where(audit_log.c.action == "verify_hostname")
        .order_by(audit_log.c.id),
    )
    assert [(r.action, r.outcome) for r in found] == [
        ("verify_hostname", "verification_failed"),
        ("verify_hostname", "success"),
    ]
    assert found[1].resource.endswith("/hostname:a.example.com")


# ------------------------------------------------------------------------------ list, delete


def test_list_and_get(client: TestClient, world: dict[str, str]) -> None:
    system, space = world["system"], world["space"]
    names = ["a.example.com", "b.turnout.localhost", "*.c.example.com"]
    for h in names:
        assert add_host(client, system, space, "web", h).status_code == 201
    viewer = make_user(client, system, "v", space, "viewer")
    first = client.get(f"{hosts_url(world)}?limit=2", headers=auth(viewer))
    assert first.status_code == 200, first.text
    page = first.json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = client.get(
        f"{hosts_url(world)}?limit=2&cursor={page['next_cursor']}", headers=auth(viewer)
    ).json()
    items = page["items"] + rest["items"]
    assert rest["next_cursor"] is None
    assert [i["host"] for i in items] == sorted(names)
    by = {i["host"]: i for i in items}
    assert by["b.turnout.localhost"]["verified"] is True
    assert by["a.example.com"]["verification"]["name"] == "_turnout-verify.a.example.com"
    # A viewer reads but does not manage hostnames.
    assert_error(add_host(client, viewer, space, "web", "d.example.com"), 403, "forbidden")
    assert_error(
        client.delete(f"{hosts_url(world)}/a.example.com", headers=auth(viewer)), 403, "forbidden"
    )
    # A hostname is addressed through its own service only.
    create_service(client, system, space, "api")
    assert_error(client.get(f"{hosts_url(world, 'api')}/a.example.com", headers=auth(system)), 404)
    assert client.get(f"{hosts_url(world, 'api')}", headers=auth(system)).json()["items"] == []


def test_delete_if_match_and_release(client: TestClient, world: dict[str, str]) -> None:
    system, space = world["system"], world["space"]
    pause_publisher(client)
    created = add_host(client, system, space, "web", "a.turnout.localhost").json()
    drain(client)
    url = f"{hosts_url(world)}/a.turnout.localhost"
    stale = '"a.turnout.localhost.999"'
    assert_error(
        client.delete(url, headers={**auth(system), "if-match": stale}), 412, "precondition_failed"
    )
    assert queued(client) == set()
    r = client.delete(url, headers={**auth(system), "if-match": created["etag"]})
    assert r.status_code == 204
    assert queued(client) == {"a.turnout.localhost"}
    drain(client)
    assert versions(client)["a.turnout.localhost"] == 2
    assert_error(client.delete(url, headers=auth(system)), 404, "not_found")
    # Another space may claim it now.
    other = create_space(client, system, "other")
    create_service(client, system, other, "x")
    assert add_host(client, system, other, "x", "a.turnout.localhost").status_code == 201
