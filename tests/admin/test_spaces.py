"""Spaces and members through the API, and the framework conventions they exercise: ETag /
If-Match, paging, Idempotency-Key, validation errors with field paths, audit rows."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from starlette.testclient import TestClient

from admin.db import audit_log, memberships, spaces
from tests.admin.conftest import (
    assert_error,
    auth,
    bootstrap,
    create_space,
    make_user,
    principal_of,
    rows,
)


def _fields(resp: Any) -> list[str]:
    err = assert_error(resp, 422)
    return [f["path"] for f in err["details"]["fields"]]


def test_create_list_get_patch_delete(client: TestClient) -> None:
    system = bootstrap(client)
    team = create_space(client, system, "team-a")
    alice = make_user(client, system, "alice", team, "viewer")

    r = client.post("/api/spaces", json={"name": "mine", "kind": "user"}, headers=auth(alice))
    assert r.status_code == 201, r.text
    mine = r.json()
    assert mine["name"] == "mine" and mine["kind"] == "user" and mine["role"] == "owner"
    assert mine["plan"] == "plan_free" and r.headers["etag"] == mine["etag"]

    listed = client.get("/api/spaces", headers=auth(alice)).json()
    assert {(s["id"], s["role"]) for s in listed["items"]} == {
        (team, "viewer"),
        (mine["id"], "owner"),
    }
    assert listed["next_cursor"] is None

    got = client.get(f"/api/spaces/{mine['id']}", headers=auth(alice))
    assert got.status_code == 200 and got.json() == mine

    r = client.patch(f"/api/spaces/{mine['id']}", json={"name": "renamed"}, headers=auth(alice))
    assert r.status_code == 200 and r.json()["name"] == "renamed"
    assert r.json()["etag"] != mine["etag"] and r.json()["updated_at"] >= mine["updated_at"]

    # A viewer may read but not rename or delete.
    assert client.get(f"/api/spaces/{team}", headers=auth(alice)).json()["role"] == "viewer"
    assert_error(
        client.patch(f"/api/spaces/{team}", json={"name": "x"}, headers=auth(alice)),
        403,
        "forbidden",
    )
    assert_error(client.delete(f"/api/spaces/{team}", headers=auth(alice)), 403, "forbidden")

    assert client.delete(f"/api/spaces/{mine['id']}", headers=auth(alice)).status_code == 204
    assert_error(client.get(f"/api/spaces/{mine['id']}", headers=auth(alice)), 404, "not_found")
    assert rows(client, sa.select(spaces.c.id).where(spaces.c.id == mine["id"])) == []
    assert rows(client, sa.select(memberships).where(memberships.c.space_id == mine["id"])) == []


def test_members_add_patch_remove(client: TestClient) -> None:
    system = bootstrap(client)
    owner = make_user(client, system, "owner", None, "owner")
    space = create_space(client, owner, "s")
    bob = make_user(client, system, "bob", None, "viewer")
    bob_id = principal_of(client, bob)

    r = client.post(
        f"/api/spaces/{space}/members",
        json={"principal_id": bob_id, "role": "editor"},
        headers=auth(owner),
    )
    # Not a member yet: an invitation (nothing about bob in it), which bob accepts.
    assert r.status_code == 202, r.text
    invitation = r.json()
    assert invitation["principal_id"] == bob_id and invitation["role"] == "editor"
    assert "name" not in invitation and "kind" not in invitation and "bob" not in r.text
    r = client.post(f"/api/invitations/{invitation['id']}/accept", headers=auth(bob))
    assert r.status_code == 200, r.text
    member = client.get(f"/api/spaces/{space}/members", headers=auth(bob)).json()["items"]
    [member] = [m for m in member if m["principal_id"] == bob_id]
    assert member["principal_id"] == bob_id and member["role"] == "editor"
    assert member["name"] == "bob" and member["kind"] == "user"
    # Adding twice → 409; unknown principal → 422 on the field.
    r = client.post(
        f"/api/spaces/{space}/members",
        json={"principal_id": bob_id, "role": "viewer"},
        headers=auth(owner),
    )
    assert_error(r, 409, "conflict")
    r = client.post(
        f"/api/spaces/{space}/members",
        json={"principal_id": "prn_nobody", "role": "viewer"},
        headers=auth(owner),
    )
    assert _fields(r) == ["body.principal_id"]

    listed = client.get(f"/api/spaces/{space}/members", headers=auth(bob)).json()["items"]
    assert sorted(m["role"] for m in listed) == ["editor", "owner"]

    r = client.patch(
        f"/api/spaces/{space}/members/{bob_id}", json={"role": "admin"}, headers=auth(owner)
    )
    assert r.status_code == 200 and r.json()["role"] == "admin"
    assert r.json()["etag"] != member["etag"]

    assert (
        client.delete(f"/api/spaces/{space}/members/{bob_id}", headers=auth(owner)).status_code
        == 204
    )
    assert_error(client.get(f"/api/spaces/{space}", headers=auth(bob)), 404, "not_found")
    r = client.delete(f"/api/spaces/{space}/members/{bob_id}", headers=auth(owner))
    assert_error(r, 404, "not_found")


def test_last_owner_is_protected(client: TestClient) -> None:
    system = bootstrap(client)
    owner = make_user(client, system, "owner", None, "owner")
    owner_id = principal_of(client, owner)
    space = create_space(client, owner)
    r = client.patch(
        f"/api/spaces/{space}/members/{owner_id}", json={"role": "admin"}, headers=auth(owner)
    )
    assert_error(r, 409, "conflict")
    assert_error(
        client.delete(f"/api/spaces/{space}/members/{owner_id}", headers=auth(owner)),
        409,
        "conflict",
    )
    # With a second owner, the first may step down.
    second = make_user(client, system, "second", space, "owner")
    r = client.patch(
        f"/api/spaces/{space}/members/{owner_id}", json={"role": "admin"}, headers=auth(second)
    )
    assert r.status_code == 200 and r.json()["role"] == "admin"


def test_an_admin_cannot_grant_or_touch_owner(client: TestClient) -> None:
    system = bootstrap(client)
    owner = make_user(client, system, "owner", None, "owner")
    owner_id = principal_of(client, owner)
    space = create_space(client, owner)
    admin = make_user(client, system, "adm", space, "admin")
    newbie = principal_of(client, make_user(client, system, "newbie", None, "viewer"))

    r = client.post(
        f"/api/spaces/{space}/members",
        json={"principal_id": newbie, "role": "owner"},
        headers=auth(admin),
    )
    assert_error(r, 403, "forbidden")
    r = client.patch(
        f"/api/spaces/{space}/members/{owner_id}", json={"role": "viewer"}, headers=auth(admin)
    )
    assert_error(r, 403, "forbidden")
    assert_error(
        client.delete(f"/api/spaces/{space}/members/{owner_id}", headers=auth(admin)),
        403,
        "forbidden",
    )
    # Up to their own rank is fine.
    r = client.post(
        f"/api/spaces/{space}/members",
        json={"principal_id": newbie, "role": "admin"},
        headers=auth(admin),
    )
    assert r.status_code == 202 and r.json()["role"] == "admin"  # an invitation


def test_etag_if_match(client: TestClient) -> None:
    system = bootstrap(client)
    space = create_space(client, system)
    got = client.get(f"/api/spaces/{space}", headers=auth(system))
    tag = got.headers["etag"]
    assert tag == got.json()["etag"]

    stale = {**auth(system), "if-match": '"spc_other.1"'}
    r = client.patch(f"/api/spaces/{space}", json={"name": "x"}, headers=stale)
    err = assert_error(r, 412, "precondition_failed")
    assert err["details"]["etag"] == tag

    r = client.patch(
        f"/api/spaces/{space}", json={"name": "x"}, headers={**auth(system), "if-match": tag}
    )
    assert r.status_code == 200
    new_tag = r.headers["etag"]
    assert new_tag != tag and r.json()["etag"] == new_tag
    # The old tag is stale now, for PATCH and DELETE alike; * always matches.
    r = client.patch(
        f"/api/spaces/{space}", json={"name": "y"}, headers={**auth(system), "if-match": tag}
    )
    assert_error(r, 412)
    assert_error(
        client.delete(f"/api/spaces/{space}", headers={**auth(system), "if-match": tag}), 412
    )
    r = client.delete(f"/api/spaces/{space}", headers={**auth(system), "if-match": "*"})
    assert r.status_code == 204


def test_paging(client: TestClient) -> None:
    system = bootstrap(client)
    user = make_user(client, system, "pager", None, "viewer")
    made = [create_space(client, user, f"s{i}") for i in range(7)]

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        r = client.get("/api/spaces", params=params, headers=auth(user))
        assert r.status_code == 200, r.text
        page = r.json()
        pages += 1
        seen += [s["id"] for s in page["items"]]
        assert len(page["items"]) == (3 if pages < 3 else 1)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == sorted(made)

    for bad in ("not-a-cursor", "e30", "!!!"):
        r = client.get("/api/spaces", params={"cursor": bad}, headers=auth(user))
        assert _fields(r) == ["query.cursor"]
    for limit in ("0", "501", "-1", "ten"):
        r = client.get("/api/spaces", params={"limit": limit}, headers=auth(user))
        assert _fields(r) == ["query.limit"]
    full = client.get("/api/spaces", params={"limit": "500"}, headers=auth(user)).json()
    assert len(full["items"]) == 7 and full["next_cursor"] is None


def test_idempotency_key(client: TestClient) -> None:
    system = bootstrap(client)
    headers = {**auth(system), "idempotency-key": "create-space-1"}
    first = client.post("/api/spaces", json={"name": "once"}, headers=headers)
    again = client.post("/api/spaces", json={"name": "once"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again.headers["idempotent-replay"] == "true"
    assert "idempotent-replay" not in first.headers
    assert len(rows(client, sa.select(spaces.c.id).where(spaces.c.name == "once"))) == 1

    r = client.post("/api/spaces", json={"name": "twice"}, headers=headers)
    assert_error(r, 422, "idempotency_mismatch")
    assert rows(client, sa.select(spaces.c.id).where(spaces.c.name == "twice")) == []
    # Keys are per principal: another principal's identical key is a fresh request.
    other = make_user(client, system, "other", None, "viewer")
    r = client.post(
        "/api/spaces",
        json={"name": "once"},
        headers={**auth(other), "idempotency-key": "create-space-1"},
    )
    assert r.status_code == 201 and "idempotent-replay" not in r.headers
    assert r.json()["id"] != first.json()["id"]


def test_validation_errors(client: TestClient) -> None:
    system = bootstrap(client)
    assert _fields(client.post("/api/spaces", json={}, headers=auth(system))) == ["body.name"]
    assert _fields(client.post("/api/spaces", json={"name": ""}, headers=auth(system))) == [
        "body.name"
    ]
    assert _fields(client.post("/api/spaces", json={"name": 5}, headers=auth(system))) == [
        "body.name"
    ]
    r = client.post("/api/spaces", json={"name": "x", "kind": "system"}, headers=auth(system))
    assert _fields(r) == ["body.kind"]
    r = client.post("/api/spaces", json={"name": "x", "colour": "red"}, headers=auth(system))
    assert _fields(r) == ["body.colour"]
    r = client.post(
        "/api/spaces",
        content=b"{not json",
        headers={**auth(system), "content-type": "application/json"},
    )
    assert _fields(r) == ["body"]
    assert _fields(client.post("/api/spaces", headers=auth(system))) == ["body"]
    space = create_space(client, system)
    r = client.post(
        f"/api/spaces/{space}/members",
        json={"principal_id": "p", "role": "god"},
        headers=auth(system),
    )
    assert _fields(r) == ["body.role"]
    assert rows(client, sa.select(spaces.c.id).where(spaces.c.name == "x")) == []


def test_audit_rows(client: TestClient) -> None:
    system = bootstrap(client)
    space = create_space(client, system)
    viewer = make_user(client, system, "viewer", space, "viewer")
    viewer_id = principal_of(client, viewer)
    client.patch(f"/api/spaces/{space}", json={"name": "renamed"}, headers=auth(system))
    client.patch(f"/api/spaces/{space}", json={"name": "nope"}, headers=auth(viewer))
    client.get(f"/api/spaces/{space}", headers={**auth(system), "x-request-id": "read-1"})

    log = rows(client, sa.select(audit_log).order_by(audit_log.c.id))
    by_action = [(r.action, r.outcome) for r in log]
    assert ("create_space", "success") in by_action
    assert ("add_member", "success") in by_action
    assert ("patch_space", "success") in by_action
    assert ("patch_space", "forbidden") in by_action
    assert not any(r.client_request_id == "read-1" for r in log)  # reads are not audited

    (denied,) = [r for r in log if r.outcome == "forbidden"]
    assert denied.principal_id == viewer_id and denied.space_id == space
    (renamed,) = [r for r in log if r.action == "patch_space" and r.outcome == "success"]
    assert renamed.resource == f"space:{space}" and renamed.space_id == space
    assert renamed.principal_id == principal_of(client, system)

    r = client.post(
        "/api/spaces", json={"name": "n"}, headers={**auth(system), "x-request-id": "req-42"}
    )
    # The answer carries the server's own id; the client's is stored beside it.
    server_id = r.headers["x-request-id"]
    assert server_id != "req-42" and len(server_id) == 32
    (row,) = rows(client, sa.select(audit_log).where(audit_log.c.client_request_id == "req-42"))
    assert row.request_id == server_id
    assert row.action == "create_space" and row.outcome == "success"
    assert row.resource == f"space:{r.json()['id']}"
