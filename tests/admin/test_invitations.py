"""D11: a principal joins a space only by accepting an invitation.

The probe's case: an admin of space A added B's principal id to A (201, with B's name and kind),
and B's space list then showed A. Now the admin gets 202 and an invitation that says nothing
about B but the id it typed; B sees it under ``GET /api/invitations`` and accepts or declines;
until then A is not in B's list and B is not a member.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.testclient import TestClient

from admin.db import audit_log, memberships, now_ms
from admin.invitations.schema import invitations
from admin.invitations.states import (
    INVITATION_TTL_MS,
    IllegalTransition,
    InvitationStatus,
    transition,
)
from tests.admin.conftest import (
    assert_error,
    auth,
    bootstrap,
    create_space,
    make_user,
    principal_of,
    rows,
    sql,
)


@pytest.fixture
def world(client: TestClient) -> dict[str, str]:
    """Space A with its admin; user B (a space of its own, not a member of A)."""
    system = bootstrap(client)
    owner = make_user(client, system, "alice", None, "owner")
    space = create_space(client, owner, "A")
    admin = make_user(client, system, "adam", space, "admin")
    bob = make_user(client, system, "Bob Secret", None, "viewer")
    create_space(client, bob, "bob's own")
    return {
        "system": system,
        "owner": owner,
        "admin": admin,
        "space": space,
        "bob": bob,
        "bob_id": principal_of(client, bob),
    }


def invite(client: TestClient, w: dict[str, str], role: str = "editor", who: str = "admin") -> Any:
    return client.post(
        f"/api/spaces/{w['space']}/members",
        json={"principal_id": w["bob_id"], "role": role},
        headers=auth(w[who]),
    )


def invite_ok(client: TestClient, w: dict[str, str], role: str = "editor") -> dict[str, Any]:
    r = invite(client, w, role)
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    return body


def space_ids(client: TestClient, token: str) -> set[str]:
    return {s["id"] for s in client.get("/api/spaces", headers=auth(token)).json()["items"]}


def answer(client: TestClient, token: str, inv: str, verb: str) -> Any:
    return client.post(f"/api/invitations/{inv}/{verb}", headers=auth(token))


def test_adding_a_non_member_invites_it_and_reveals_nothing(
    client: TestClient, world: dict[str, str]
) -> None:
    r = invite(client, world)
    assert r.status_code == 202, r.text
    inv = r.json()
    assert set(inv) == {
        "id",
        "space_id",
        "principal_id",
        "role",
        "status",
        "invited_by",
        "etag",
        "created_at",
        "expires_at",
        "answered_at",
    }
    assert (inv["principal_id"], inv["role"], inv["status"]) == (
        world["bob_id"],
        "editor",
        "pending",
    )
    assert inv["expires_at"] - inv["created_at"] == INVITATION_TTL_MS
    assert "Bob Secret" not in r.text and '"user"' not in r.text
    # Not a member: A is not in bob's list, A's members do not include him, A answers 404.
    assert world["space"] not in space_ids(client, world["bob"])
    members = client.get(f"/api/spaces/{world['space']}/members", headers=auth(world["admin"]))
    assert world["bob_id"] not in members.text and "Bob Secret" not in members.text
    assert_error(client.get(f"/api/spaces/{world['space']}", headers=auth(world["bob"])), 404)
    assert not rows(
        client,
        sa.select(memberships).where(
            memberships.c.principal_id == world["bob_id"], memberships.c.space_id == world["space"]
        ),
    )
    # The space's invitation list says the same, and nothing more.
    listed = client.get(f"/api/spaces/{world['space']}/invitations", headers=auth(world["admin"]))
    assert listed.status_code == 200 and listed.json()["items"] == [inv]
    assert "Bob Secret" not in listed.text


def test_the_invitee_accepts_and_becomes_a_member(
    client: TestClient, world: dict[str, str]
) -> None:
    inv = invite_ok(client, world)
    received = client.get("/api/invitations", headers=auth(world["bob"]))
    assert received.status_code == 200
    [item] = received.json()["items"]
    assert (item["id"], item["space_id"], item["space_name"], item["role"], item["status"]) == (
        inv["id"],
        world["space"],
        "A",
        "editor",
        "pending",
    )
    r = answer(client, world["bob"], inv["id"], "accept")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "accepted" and isinstance(r.json()["answered_at"], int)
    assert world["space"] in space_ids(client, world["bob"])
    got = client.get(f"/api/spaces/{world['space']}", headers=auth(world["bob"]))
    assert got.status_code == 200 and got.json()["role"] == "editor"
    # Now the space sees who he is; a second invitation is a 409 (already a member).
    members = client.get(f"/api/spaces/{world['space']}/members", headers=auth(world["admin"]))
    assert "Bob Secret" in members.text
    assert_error(invite(client, world), 409, "conflict")
    assert_error(answer(client, world["bob"], inv["id"], "accept"), 409, "invitation_accepted")
    # Both sides of the story are in the space's audit log.
    actions = [
        (r.action, r.principal_id)
        for r in rows(
            client,
            sa.select(audit_log.c.action, audit_log.c.principal_id)
            .where(audit_log.c.space_id == world["space"])
            .order_by(audit_log.c.id),
        )
    ]
    assert ("add_member", principal_of(client, world["admin"])) in actions
    assert ("invitation_accepted", world["bob_id"]) in actions


def test_declining_leaves_no_membership_and_allows_a_new_invitation(
    client: TestClient, world: dict[str, str]
) -> None:
    inv = invite_ok(client, world)
    r = answer(client, world["bob"], inv["id"], "decline")
    assert r.status_code == 200 and r.json()["status"] == "declined"
    assert world["space"] not in space_ids(client, world["bob"])
    assert_error(answer(client, world["bob"], inv["id"], "accept"), 409, "invitation_declined")
    again = invite_ok(client, world, "viewer")
    assert again["id"] != inv["id"]


def test_one_pending_invitation_per_principal(client: TestClient, world: dict[str, str]) -> None:
    inv = invite_ok(client, world)
    err = assert_error(invite(client, world, "viewer"), 409, "invitation_pending")
    assert err["details"] == {"invitation_id": inv["id"]}


def test_the_inviter_cancels(client: TestClient, world: dict[str, str]) -> None:
    inv = invite_ok(client, world)
    url = f"/api/spaces/{world['space']}/invitations/{inv['id']}"
    stale = {**auth(world["admin"]), "if-match": f'"{inv["id"]}.9"'}
    assert_error(client.delete(url, headers=stale), 412, "precondition_failed")
    assert client.delete(url, headers=auth(world["admin"])).status_code == 204
    assert_error(answer(client, world["bob"], inv["id"], "accept"), 409, "invitation_cancelled")
    assert_error(client.delete(url, headers=auth(world["admin"])), 409, "invitation_cancelled")
    assert world["space"] not in space_ids(client, world["bob"])


def test_an_unanswered_invitation_expires(client: TestClient, world: dict[str, str]) -> None:
    inv = invite_ok(client, world)

    async def age(conn: AsyncConnection) -> None:
        await conn.execute(
            sa.update(invitations)
            .where(invitations.c.id == inv["id"])
            .values(expires_at=now_ms() - 1)
        )

    sql(client, age)
    assert_error(answer(client, world["bob"], inv["id"], "accept"), 409, "invitation_expired")
    [item] = client.get("/api/invitations", headers=auth(world["bob"])).json()["items"]
    assert item["status"] == "expired"
    pending = client.get("/api/invitations?status=pending", headers=auth(world["bob"]))
    assert pending.json()["items"] == []
    expired = client.get("/api/invitations?status=expired", headers=auth(world["bob"]))
    assert [i["id"] for i in expired.json()["items"]] == [inv["id"]]
    # A new invitation replaces it (the old one is written down as expired).
    again = invite_ok(client, world)
    [old] = rows(client, sa.select(invitations.c.status).where(invitations.c.id == inv["id"]))
    assert old.status == "expired"
    assert answer(client, world["bob"], again["id"], "accept").status_code == 200


def test_someone_elses_invitation_is_not_found(client: TestClient, world: dict[str, str]) -> None:
    inv = invite_ok(client, world)
    eve = make_user(client, world["system"], "eve", None, "viewer")
    for verb in ("accept", "decline"):
        assert_error(answer(client, eve, inv["id"], verb), 404, "not_found")
        assert_error(answer(client, world["admin"], inv["id"], verb), 404, "not_found")
    assert client.get("/api/invitations", headers=auth(eve)).json()["items"] == []
    # Another space's admin cannot see or cancel it either.
    other = create_space(client, eve, "E")
    assert_error(
        client.delete(f"/api/spaces/{other}/invitations/{inv['id']}", headers=auth(eve)), 404
    )
    assert_error(answer(client, world["bob"], "inv_unknown", "accept"), 404, "not_found")


def test_an_admin_cannot_invite_above_its_own_role(
    client: TestClient, world: dict[str, str]
) -> None:
    assert_error(invite(client, world, "owner"), 403, "forbidden")
    assert invite(client, world, "owner", who="owner").status_code == 202


def test_the_system_admin_adds_members_directly(client: TestClient, world: dict[str, str]) -> None:
    """The operator can issue any principal's tokens anyway: its additions need no consent."""
    r = invite(client, world, who="system")
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "Bob Secret" and r.json()["kind"] == "user"
    assert world["space"] in space_ids(client, world["bob"])


@pytest.mark.parametrize("status", ["bogus", "PENDING", ""])
def test_a_bad_status_filter_is_422(client: TestClient, world: dict[str, str], status: str) -> None:
    for url in ("/api/invitations", f"/api/spaces/{world['space']}/invitations"):
        token = world["bob"] if url == "/api/invitations" else world["admin"]
        err = assert_error(client.get(f"{url}?status={status}", headers=auth(token)), 422)
        assert [f["path"] for f in err["details"]["fields"]] == ["query.status"]


def test_invitation_transitions_are_all_in_one_table() -> None:
    assert (
        transition(InvitationStatus.PENDING, InvitationStatus.ACCEPTED) is InvitationStatus.ACCEPTED
    )
    for final in (
        InvitationStatus.ACCEPTED,
        InvitationStatus.DECLINED,
        InvitationStatus.CANCELLED,
        InvitationStatus.EXPIRED,
    ):
        for target in InvitationStatus:
            with pytest.raises(IllegalTransition):
                transition(final, target)


@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(text=st.text(min_size=1, max_size=60).filter(lambda s: s.strip()))
def test_no_invitation_answer_carries_the_invitees_name(
    client: TestClient, world: dict[str, str], text: str
) -> None:
    """Generative: whatever the invitee is called, nothing the inviting side gets before the
    answer — the 202, the space's invitation list, its member list — contains the name."""
    name = f"invitee:{text}"
    r = client.post(
        "/api/principals", json={"kind": "service", "name": name}, headers=auth(world["system"])
    )
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    space = world["space"]
    answers = [
        client.post(
            f"/api/spaces/{space}/members",
            json={"principal_id": pid, "role": "viewer"},
            headers=auth(world["admin"]),
        ),
        client.get(f"/api/spaces/{space}/invitations?limit=500", headers=auth(world["admin"])),
        client.get(f"/api/spaces/{space}/members?limit=500", headers=auth(world["admin"])),
    ]
    assert answers[0].status_code == 202, answers[0].text
    for resp in answers:
        assert resp.status_code in (200, 202)
        assert not any("invitee:" in value for value in strings(resp.json())), resp.text


def strings(value: Any) -> Iterator[str]:
    """Every string in a decoded JSON document (keys too)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
