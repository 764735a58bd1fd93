"""Migration 0004 (claims per space, token lineage, invitations, explicit routes) on SQLite and
PostgreSQL: what it does to data written under 0002, its downgrade, and the new rules' SQL
(partial unique indexes, the cascade, row locks) on both backends."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Connection
from starlette.testclient import TestClient

from admin.app import create_app
from admin.db import make_engine, now_ms
from admin.migrate import alembic_config
from admin.settings import Settings
from routing.store import MemoryRouteStore
from tests.admin.conftest import admin_settings, assert_error, auth, bootstrap, create_space
from tests.admin.dns_support import hostname_url, prove
from tests.admin.publishing import add_host, create_service


def _migrate(url: str, steps: list[tuple[str, str]], sql_before: tuple[str, ...] = ()) -> list[Any]:
    """Run alembic ``(direction, revision)`` steps; ``sql_before`` after the first step."""

    def run(conn: Connection, direction: str, rev: str) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        (command.upgrade if direction == "up" else command.downgrade)(cfg, rev)

    async def go() -> list[Any]:
        engine = make_engine(url)
        out: list[Any] = []
        try:
            for i, (direction, rev) in enumerate(steps):
                async with engine.begin() as conn:
                    await conn.run_sync(run, direction, rev)
                    if i == 0:
                        for statement in sql_before:
                            await conn.execute(sa.text(statement))
                async with engine.connect() as conn:
                    out.append(
                        {
                            t: (await conn.execute(sa.text(f"SELECT * FROM {t}"))).mappings().all()
                            for t in ("hostnames", "service_routes", "publish_queue", "tokens")
                        }
                    )
        finally:
            await engine.dispose()
        return out

    return asyncio.run(go())


LEGACY = (
    "INSERT INTO principals VALUES ('prn_1', 'user', 'u', 1)",
    "INSERT INTO spaces (id, kind, name, created_at, updated_at) VALUES ('spc_1', 'team', 't', 1, 1)",
    "INSERT INTO services (id, space_id, name, status, created_at, updated_at)"
    " VALUES ('svc_1', 'spc_1', 'web', 'deployed', 1, 1)",
    "INSERT INTO services (id, space_id, name, status, created_at, updated_at)"
    " VALUES ('svc_2', 'spc_1', 'api', 'deployed', 1, 1)",
    "INSERT INTO snapshots VALUES ('snp_1', 'svc_1', '{}', '{}', 1)",
    "INSERT INTO deployments (id, service_id, snapshot_id, number, status, routing_status,"
    " routing_weight, created_at, updated_at)"
    " VALUES ('dep_1', 'svc_1', 'snp_1', 1, 'success', 'active', 10000, 1, 1)",
    "INSERT INTO deployments (id, service_id, snapshot_id, number, status, routing_status,"
    " routing_weight, created_at, updated_at)"
    " VALUES ('dep_2', 'svc_2', 'snp_1', 1, 'success', 'active', 10000, 1, 1)",
    "INSERT INTO service_routes VALUES ('rte_1', 'svc_2', 'api.example.com', '/v1', '[]')",
    "INSERT INTO hostnames (host, space_id, service_id, verified, verify_token, created_at)"
    " VALUES ('pending.example.com', 'spc_1', 'svc_1', false, 't', 1)",
    "INSERT INTO hostnames (host, space_id, service_id, verified, verify_token, created_at,"
    " verified_at) VALUES ('web.example.com', 'spc_1', 'svc_1', true, 't', 1, 1)",
    "INSERT INTO tokens (id, principal_id, name, prefix, hash, scopes, created_at)"
    " VALUES ('tok_1', 'prn_1', 'n', 'tak_pat_xxxx', 'h', '[]', 1)",
)


def test_upgrade_from_0002_keeps_and_completes_the_data(db_url: str) -> None:
    before = now_ms()
    migrated, downgraded, again = _migrate(
        db_url, [("up", "0002"), ("up", "0004"), ("down", "0002"), ("up", "0004")], LEGACY
    )[1:]
    hosts = {h["host"]: h for h in migrated["hostnames"]}
    # A legacy pending claim expires 72 h from the upgrade; a verified one never.
    pending = hosts["pending.example.com"]["expires_at"]
    assert before + 72 * 3600_000 <= pending <= now_ms() + 72 * 3600_000
    assert hosts["web.example.com"]["expires_at"] is None
    assert all(h["displaced_at"] is None for h in hosts.values())
    # The service that had no route row (it served every hostname as "/") gets that route
    # written down; the one with routes keeps exactly its own.
    routes = {
        (r["service_id"], r["host"], r["path_prefix"], r["methods"])
        for r in migrated["service_routes"]
    }
    assert routes == {("svc_1", None, "/", "[]"), ("svc_2", "api.example.com", "/v1", "[]")}
    # Every hostname is republished under the new rules; tokens are roots.
    assert {q["host"] for q in migrated["publish_queue"]} == set(hosts)
    assert [t["parent_id"] for t in migrated["tokens"]] == [None]
    # Down and up again: the same rows.
    assert {h["host"] for h in downgraded["hostnames"]} == set(hosts)
    assert "expires_at" not in downgraded["hostnames"][0]
    assert {h["host"] for h in again["hostnames"]} == set(hosts)


def test_claims_tokens_and_invitations_on_both_backends(db_url: str, tmp_path: Path) -> None:
    dns = tmp_path / "dns.json"
    dns.write_text(json.dumps({}))
    base = admin_settings(db_url)
    settings = Settings(db_url=db_url, keys=base.keys, dns_fixture=str(dns))
    with TestClient(create_app(settings, store=MemoryRouteStore())) as client:
        system = bootstrap(client)
        a, b = create_space(client, system, "a"), create_space(client, system, "b")
        for space in (a, b):
            create_service(client, system, space, "web")
            assert add_host(client, system, space, "web", "x.example.com").status_code == 201
        prove(client, dns, system, a, "web", "x.example.com")
        lost = client.get(hostname_url(b, "web", "x.example.com"), headers=auth(system)).json()
        assert lost["status"] == "displaced"
        assert_error(add_host(client, system, b, "web", "x.example.com"), 409, "hostname_taken")

        parent = client.post(
            "/api/tokens",
            json={"name": "p", "scopes": ["tokens:write"], "expires_in_days": 1},
            headers=auth(system),
        ).json()
        child = client.post(
            "/api/tokens",
            json={"name": "c", "scopes": ["tokens:write"], "expires_at": parent["expires_at"]},
            headers=auth(parent["token"]),
        )
        assert child.status_code == 201, child.text
        r = client.delete(f"/api/tokens/{parent['id']}", headers=auth(system))
        assert r.headers["x-turnout-revoked"] == "2"
        assert_error(client.get("/api/tokens", headers=auth(child.json()["token"])), 401)

        user = client.post(
            "/api/principals", json={"kind": "user", "name": "u"}, headers=auth(system)
        )
        uid = user.json()["id"]
        utoken = client.post(
            f"/api/principals/{uid}/tokens",
            json={"name": "u", "scopes": ["*"]},
            headers=auth(system),
        ).json()["token"]
        owner_space = create_space(client, utoken, "mine")
        other = client.post(
            "/api/principals", json={"kind": "user", "name": "o"}, headers=auth(system)
        )
        invite = client.post(
            f"/api/spaces/{owner_space}/members",
            json={"principal_id": other.json()["id"], "role": "viewer"},
            headers=auth(utoken),
        )
        assert invite.status_code == 202, invite.text
        assert_error(
            client.post(
                f"/api/spaces/{owner_space}/members",
                json={"principal_id": other.json()["id"], "role": "viewer"},
                headers=auth(utoken),
            ),
            409,
            "invitation_pending",
        )
