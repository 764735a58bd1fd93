"""Audit rows (D7): refused requests belong to the caller, not to the space they named; failure
rows are rate-limited per principal; the client's X-Request-Id is kept apart from the server's."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from admin.api.system import AuditRow
from admin.app import create_app
from admin.audit import RATE_LIMITED
from admin.db import audit_log
from routing.store import MemoryRouteStore
from tests.admin.conftest import (
    admin_settings,
    assert_error,
    auth,
    bootstrap,
    create_space,
    make_user,
    principal_of,
    rows,
)

FAILURES_PER_MINUTE = 5


@pytest.fixture
def client(db_path: Path) -> Iterator[TestClient]:
    settings = dataclasses.replace(
        admin_settings(str(db_path)), audit_failures_per_minute=FAILURES_PER_MINUTE
    )
    with TestClient(create_app(settings, store=MemoryRouteStore())) as c:
        yield c


def audit_rows(client: TestClient, **where: Any) -> list[Any]:
    q = sa.select(audit_log).order_by(audit_log.c.id)
    for column, value in where.items():
        q = q.where(audit_log.c[column] == value)
    return rows(client, q)


def test_an_outsider_cannot_write_into_a_victim_space_log(client: TestClient) -> None:
    system = bootstrap(client)
    victim = create_space(client, system, "victim")
    attacker = make_user(client, system, "attacker", None, "viewer")
    attacker_id = principal_of(client, attacker)
    before = audit_rows(client, space_id=victim)

    r = client.patch(
        f"/api/spaces/{victim}",
        json={"name": "pwned"},
        headers={**auth(attacker), "x-request-id": "attacker-chosen"},
    )
    assert_error(r, 404, "not_found")
    assert audit_rows(client, space_id=victim) == before
    (row,) = audit_rows(client, principal_id=attacker_id)
    assert row.space_id is None and row.outcome == "not_found" and row.action == "patch_space"
    assert row.resource == "/api/spaces/{space}"  # the template: the URL is the caller's text
    assert row.client_request_id == "attacker-chosen"
    assert row.request_id == r.headers["x-request-id"] != "attacker-chosen"
    # The victim's admins see nothing of it; the platform's audit does.
    items = client.get(f"/api/spaces/{victim}/audit", headers=auth(system)).json()["items"]
    assert all(i["principal_id"] != attacker_id for i in items)
    everything = client.get("/api/system/audit?limit=500", headers=auth(system)).json()["items"]
    assert any(i["id"] == row.id and i["space_id"] is None for i in everything)


def test_refusals_before_the_space_is_known_are_the_callers(client: TestClient) -> None:
    system = bootstrap(client)
    space = create_space(client, system)
    viewer = make_user(client, system, "viewer", space, "viewer")
    viewer_id = principal_of(client, viewer)
    no_scope = make_user(client, system, "ro", space, "owner", scopes=["spaces:read"])
    no_scope_id = principal_of(client, no_scope)

    # A member without the role: the space is known to be theirs, the row is the space's.
    assert_error(client.delete(f"/api/spaces/{space}", headers=auth(viewer)), 403)
    (denied,) = audit_rows(client, principal_id=viewer_id, outcome="forbidden")
    assert denied.space_id == space
    # A missing scope is refused before the space is looked at: the caller's row.
    assert_error(client.patch(f"/api/spaces/{space}", json={}, headers=auth(no_scope)), 403)
    (scope_row,) = audit_rows(client, principal_id=no_scope_id)
    assert scope_row.space_id is None
    # Made-up space ids likewise.
    assert_error(client.patch("/api/spaces/spc_nope", json={}, headers=auth(viewer)), 404)
    assert audit_rows(client, space_id="spc_nope") == []


def test_failure_rows_are_rate_limited_per_principal(client: TestClient) -> None:
    system = bootstrap(client)
    space = create_space(client, system)
    spammer = make_user(client, system, "spammer", None, "viewer")
    spammer_id = principal_of(client, spammer)
    for i in range(FAILURES_PER_MINUTE + 20):
        r = client.patch(f"/api/spaces/spc_made_up_{i}", json={}, headers=auth(spammer))
        assert_error(r, 404)
    found = audit_rows(client, principal_id=spammer_id)
    assert len(found) == FAILURES_PER_MINUTE + 1
    assert [r.outcome for r in found[:-1]] == ["not_found"] * FAILURES_PER_MINUTE
    last = found[-1]
    assert last.outcome == RATE_LIMITED and last.space_id is None
    assert "not recorded" in last.resource
    # Another principal keeps its own budget, and successes are always recorded.
    r = client.patch(f"/api/spaces/{space}", json={"name": "still"}, headers=auth(system))
    assert r.status_code == 200
    assert audit_rows(client, action="patch_space", outcome="success")


def test_the_client_request_id_is_stored_apart(client: TestClient) -> None:
    system = bootstrap(client)
    r = client.post(
        "/api/spaces", json={"name": "a"}, headers={**auth(system), "x-request-id": "ci-run-7"}
    )
    assert r.status_code == 201
    server_id = r.headers["x-request-id"]
    (row,) = audit_rows(client, client_request_id="ci-run-7")
    assert row.request_id == server_id
    # A client cannot make its id collide with the server's: they live in different columns,
    # and every request gets a new server id.
    r2 = client.post(
        "/api/spaces", json={"name": "b"}, headers={**auth(system), "x-request-id": server_id}
    )
    assert r2.headers["x-request-id"] != server_id
    assert len(audit_rows(client, request_id=server_id)) == 1


def test_the_audit_schema_says_what_the_fields_mean() -> None:
    props = AuditRow.model_json_schema()["properties"]
    assert "client_request_id" in props
    assert "server" in props["request_id"]["description"]
    assert "X-Request-Id the client sent" in props["client_request_id"]["description"]
    assert RATE_LIMITED in props["outcome"]["description"]
    assert "refused" in props["space_id"]["description"]
