"""Personal access tokens and principals: format, storage, one-time display, expiry, revocation,
the scope subset rule, batched last-use recording."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import orjson
import sqlalchemy as sa
from starlette.testclient import TestClient

from admin.db import idempotency_keys, now_ms, principals, tokens
from tests.admin.conftest import (
    assert_error,
    auth,
    bootstrap,
    call,
    create_space,
    make_user,
    principal_of,
    rows,
    state_of,
    token_row,
)

TOKEN_RE = re.compile(r"tak_pat_[A-Za-z0-9_-]{43}")
DAY_MS = 24 * 3600 * 1000
MINTED = {"id", "name", "prefix", "scopes", "expires_at", "created_at", "parent_id"}


def _new(client: TestClient, token: str, scopes: list[str], **extra: object) -> dict[str, object]:
    r = client.post(
        "/api/tokens", json={"name": "t", "scopes": scopes, **extra}, headers=auth(token)
    )
    assert r.status_code == 201, r.text
    body: dict[str, object] = r.json()
    return body


def _db_bytes(db_path: Path) -> bytes:
    # WAL mode: recent pages live in the -wal file until a checkpoint; read every file.
    return b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))


def test_token_format_and_storage(client: TestClient, db_path: Path) -> None:
    system = bootstrap(client)
    assert TOKEN_RE.fullmatch(system) and len(system) == 51
    made = _new(client, system, ["spaces:read"])
    token = made["token"]
    assert isinstance(token, str) and TOKEN_RE.fullmatch(token) and len(token) == 51
    assert made["prefix"] == token[:12] and len(token[:12]) == 12
    assert made["scopes"] == ["spaces:read"] and made["expires_at"] is None
    assert set(made) == {*MINTED, "token"}

    (row,) = rows(client, sa.select(tokens).where(tokens.c.id == made["id"]))
    assert row.hash == hashlib.sha256(token.encode()).hexdigest()
    assert row.prefix == token[:12]
    assert orjson.loads(row.scopes) == ["spaces:read"]
    # The token works, and its plaintext is nowhere in the database files.
    assert client.get("/api/spaces", headers=auth(token)).status_code == 200
    call(client, state_of(client).last_used.flush)
    data = _db_bytes(db_path)
    for plaintext in (token, system):
        assert plaintext.encode() not in data
        assert plaintext[12:].encode() not in data


def test_plaintext_is_shown_once(client: TestClient, db_path: Path) -> None:
    system = bootstrap(client)
    headers = {**auth(system), "idempotency-key": "make-token-1"}
    body = {"name": "ci", "scopes": ["spaces:read"]}
    first = client.post("/api/tokens", json=body, headers=headers)
    assert first.status_code == 201
    token = first.json()["token"]
    # A replay of the same request returns the same token record, but never the plaintext again:
    # 200 (nothing was created now) with its own schema (tests/admin/test_token_lineage.py).
    again = client.post("/api/tokens", json=body, headers=headers)
    assert again.status_code == 200 and again.headers["idempotent-replay"] == "true"
    assert "token" not in again.json()
    assert again.json() == {
        **{k: v for k, v in first.json().items() if k != "token"},
        "idempotent_replay": True,
    }
    (stored,) = rows(client, sa.select(idempotency_keys.c.response))
    assert token not in stored.response
    # Listings carry neither the plaintext nor the hash.
    listing = client.get("/api/tokens", headers=auth(system))
    assert listing.status_code == 200
    items = listing.json()["items"]
    assert len(items) == 2  # the bootstrap token and this one
    for item in items:
        assert set(item) == {*MINTED, "last_used_at", "revoked_at"}
    assert token not in listing.text
    assert hashlib.sha256(token.encode()).hexdigest() not in listing.text
    assert token.encode() not in _db_bytes(db_path)


def test_expiry(client: TestClient) -> None:
    system = bootstrap(client)
    pid = principal_of(client, system)
    expired = token_row(client, pid, ["*"], expires_at=now_ms() - 1000)
    assert_error(client.get("/api/spaces", headers=auth(expired)), 401, "invalid_token")
    later = token_row(client, pid, ["*"], expires_at=now_ms() + 60_000)
    assert client.get("/api/spaces", headers=auth(later)).status_code == 200

    before = now_ms()
    made = _new(client, system, ["spaces:read"], expires_in_days=30)
    expires_at = made["expires_at"]
    assert isinstance(expires_at, int)
    assert before + 30 * DAY_MS <= expires_at <= now_ms() + 30 * DAY_MS
    for bad in (0, 3651, "7", 1.5):
        r = client.post(
            "/api/tokens",
            json={"name": "t", "scopes": ["spaces:read"], "expires_in_days": bad},
            headers=auth(system),
        )
        err = assert_error(r, 422, "validation_failed")
        assert err["details"]["fields"][0]["path"] == "body.expires_in_days"


def test_revocation_takes_effect_on_the_next_request(client: TestClient) -> None:
    system = bootstrap(client)
    made = _new(client, system, ["spaces:read", "tokens:write"])
    token = str(made["token"])
    assert client.get("/api/spaces", headers=auth(token)).status_code == 200
    assert client.delete(f"/api/tokens/{made['id']}", headers=auth(system)).status_code == 204
    assert_error(client.get("/api/spaces", headers=auth(token)), 401, "invalid_token")
    listed = client.get("/api/tokens", headers=auth(system)).json()["items"]
    (entry,) = [t for t in listed if t["id"] == made["id"]]
    assert isinstance(entry["revoked_at"], int)
    # Revoking again is a no-op; an unknown id is a 404.
    assert client.delete(f"/api/tokens/{made['id']}", headers=auth(system)).status_code == 204
    assert_error(client.delete("/api/tokens/tok_unknown", headers=auth(system)), 404, "not_found")

    # A token can revoke itself; the very next request with it fails.
    own = _new(client, system, ["tokens:write"])
    own_token = str(own["token"])
    assert client.delete(f"/api/tokens/{own['id']}", headers=auth(own_token)).status_code == 204
    assert_error(client.get("/api/tokens", headers=auth(own_token)), 401, "invalid_token")


def test_cannot_revoke_or_see_someone_elses_token(client: TestClient) -> None:
    system = bootstrap(client)
    space = create_space(client, system)
    alice = make_user(client, system, "alice", space, "owner")
    bob = make_user(client, system, "bob", space, "owner")
    alice_tokens = client.get("/api/tokens", headers=auth(alice)).json()["items"]
    assert len(alice_tokens) == 1
    bob_tokens = client.get("/api/tokens", headers=auth(bob)).json()["items"]
    assert {t["id"] for t in bob_tokens}.isdisjoint({t["id"] for t in alice_tokens})
    r = client.delete(f"/api/tokens/{alice_tokens[0]['id']}", headers=auth(bob))
    assert_error(r, 404, "not_found")
    assert client.get("/api/spaces", headers=auth(alice)).status_code == 200
    # The system admin revokes a principal's token through /api/principals.
    pid = principal_of(client, alice)
    listed = client.get(f"/api/principals/{pid}/tokens", headers=auth(system))
    assert [t["id"] for t in listed.json()["items"]] == [alice_tokens[0]["id"]]
    r = client.delete(f"/api/principals/{pid}/tokens/{alice_tokens[0]['id']}", headers=auth(system))
    assert r.status_code == 204
    assert_error(client.get("/api/spaces", headers=auth(alice)), 401, "invalid_token")


def test_scope_subset_rule(client: TestClient) -> None:
    system = bootstrap(client)
    limited = str(_new(client, system, ["spaces:read", "tokens:write"])["token"])
    # Within its own scopes: fine.
    sub = _new(client, limited, ["spaces:read"])
    assert sub["scopes"] == ["spaces:read"]
    _new(client, limited, ["spaces:read", "tokens:write", "spaces:read"])  # duplicates folded
    # Beyond them, or *: 403.
    for scopes in (["spaces:write"], ["spaces:read", "deployments:write"], ["*"]):
        r = client.post("/api/tokens", json={"name": "x", "scopes": scopes}, headers=auth(limited))
        assert_error(r, 403, "forbidden")
    # The * token grants anything; unknown scopes and empty lists are validation errors.
    assert _new(client, system, ["*"])["scopes"] == ["*"]
    r = client.post("/api/tokens", json={"name": "x", "scopes": ["root"]}, headers=auth(system))
    assert assert_error(r, 422)["details"]["fields"][0]["path"] == "body.scopes[0]"
    r = client.post("/api/tokens", json={"name": "x", "scopes": []}, headers=auth(system))
    assert assert_error(r, 422)["details"]["fields"][0]["path"] == "body.scopes"
    # A token without tokens:write cannot make tokens at all.
    reader = str(_new(client, system, ["spaces:read"])["token"])
    r = client.post(
        "/api/tokens", json={"name": "x", "scopes": ["spaces:read"]}, headers=auth(reader)
    )
    assert_error(r, 403, "forbidden")


def test_system_admin_scope_belongs_to_the_system_principal(client: TestClient) -> None:
    system = bootstrap(client)
    space = create_space(client, system)
    user = make_user(client, system, "carol", space, "owner", ["*"])
    # A user's * does not include system:admin: no principals, no tokens for others.
    assert_error(client.get("/api/principals", headers=auth(user)), 403, "forbidden")
    spid = principal_of(client, system)
    r = client.post(
        f"/api/principals/{spid}/tokens",
        json={"name": "x", "scopes": ["*"]},
        headers=auth(user),
    )
    assert_error(r, 403, "forbidden")
    # ... and it cannot be granted to a user, explicitly or by the user themself.
    upid = principal_of(client, user)
    r = client.post(
        f"/api/principals/{upid}/tokens",
        json={"name": "x", "scopes": ["system:admin"]},
        headers=auth(system),
    )
    assert assert_error(r, 422)["details"]["fields"][0]["path"] == "body.scopes"
    r = client.post(
        "/api/tokens", json={"name": "x", "scopes": ["system:admin"]}, headers=auth(user)
    )
    assert_error(r, 422)
    # A user's * token may still mint another * token for that user.
    assert _new(client, user, ["*"])["scopes"] == ["*"]


def test_last_used_is_recorded_in_batches(client: TestClient) -> None:
    system = bootstrap(client)
    made = _new(client, system, ["spaces:read"])
    (row,) = rows(client, sa.select(tokens.c.last_used_at).where(tokens.c.id == made["id"]))
    assert row.last_used_at is None
    before = now_ms()
    assert client.get("/api/spaces", headers=auth(str(made["token"]))).status_code == 200
    call(client, state_of(client).last_used.flush)
    (row,) = rows(client, sa.select(tokens.c.last_used_at).where(tokens.c.id == made["id"]))
    assert isinstance(row.last_used_at, int) and before <= row.last_used_at <= now_ms()
    listed = client.get("/api/tokens", headers=auth(system)).json()["items"]
    assert [t["last_used_at"] for t in listed if t["id"] == made["id"]] == [row.last_used_at]


def test_principals(client: TestClient) -> None:
    system = bootstrap(client)
    r = client.post("/api/principals", json={"kind": "service", "name": "ci"}, headers=auth(system))
    assert r.status_code == 201, r.text
    ci = r.json()
    assert ci["id"].startswith("prn_") and ci["kind"] == "service" and ci["name"] == "ci"
    for bad, path in (
        ({"kind": "system", "name": "x"}, "body.kind"),
        ({"kind": "user"}, "body.name"),
        ({"kind": "user", "name": ""}, "body.name"),
        ({"kind": "user", "name": "x", "admin": True}, "body.admin"),
    ):
        r = client.post("/api/principals", json=bad, headers=auth(system))
        assert assert_error(r, 422)["details"]["fields"][0]["path"] == path
    for i in range(4):
        client.post("/api/principals", json={"kind": "user", "name": f"u{i}"}, headers=auth(system))
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/principals", params=params, headers=auth(system)).json()
        seen += [p["id"] for p in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 6 == len(set(seen))  # system + ci + 4 users
    assert len(rows(client, sa.select(principals.c.id))) == 6

    # The first token of a new principal, issued by the system admin.
    r = client.post(
        f"/api/principals/{ci['id']}/tokens",
        json={"name": "deploy", "scopes": ["deployments:write", "deployments:read"]},
        headers=auth(system),
    )
    assert r.status_code == 201
    ci_token = r.json()["token"]
    assert principal_of(client, ci_token) == ci["id"]
    assert_error(client.get("/api/spaces", headers=auth(ci_token)), 403, "forbidden")
    r = client.post(
        "/api/principals/prn_nobody/tokens",
        json={"name": "x", "scopes": ["spaces:read"]},
        headers=auth(system),
    )
    assert_error(r, 404, "not_found")
