"""Migration 0008 (common env, the principal kind of audit rows) on SQLite and PostgreSQL:
its upgrade over rows written under 0007, its downgrade, and the feature on both backends."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Connection
from starlette.testclient import TestClient

from admin.app import create_app
from admin.db import make_engine
from admin.migrate import alembic_config
from routing.store import MemoryRouteStore
from tests.admin.conftest import admin_settings, auth, bootstrap, create_space

BEFORE = (
    "INSERT INTO principals VALUES ('prn_1', 'user', 'u', 1)",
    "INSERT INTO audit_log (id, at, principal_id, space_id, action, resource, request_id,"
    " outcome) VALUES ('aud_1', 1, 'prn_1', NULL, 'create_space', 'x', 'r1', 'success')",
    "INSERT INTO audit_log (id, at, principal_id, space_id, action, resource, request_id,"
    " outcome) VALUES ('aud_2', 2, NULL, NULL, 'event', 'x', 'r2', 'success')",
)


def _run(url: str) -> list[dict[str, Any]]:
    def step(conn: Connection, direction: str, rev: str) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        (command.upgrade if direction == "up" else command.downgrade)(cfg, rev)

    async def go() -> list[dict[str, Any]]:
        engine = make_engine(url)
        out: list[dict[str, Any]] = []
        try:
            for i, (direction, rev) in enumerate(
                [("up", "0007"), ("up", "0008"), ("down", "0007"), ("up", "0008")]
            ):
                async with engine.begin() as conn:
                    await conn.run_sync(step, direction, rev)
                    if i == 0:
                        for statement in BEFORE:
                            await conn.execute(sa.text(statement))
                async with engine.connect() as conn:
                    audit = (
                        (await conn.execute(sa.text("SELECT * FROM audit_log ORDER BY id")))
                        .mappings()
                        .all()
                    )
                    tables = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
                out.append({"audit": [dict(a) for a in audit], "tables": tables})
        finally:
            await engine.dispose()
        return out

    return asyncio.run(go())


def test_upgrade_backfills_kinds_and_downgrades(db_url: str) -> None:
    before, up, down, again = _run(db_url)
    assert "common_env" not in before["tables"] and "principal_kind" not in before["audit"][0]
    assert "common_env" in up["tables"]
    assert [a["principal_kind"] for a in up["audit"]] == ["user", None]
    assert "common_env" not in down["tables"] and "principal_kind" not in down["audit"][0]
    assert [a["id"] for a in down["audit"]] == ["aud_1", "aud_2"]
    assert "common_env" in again["tables"]


def test_tokens_config_and_common_env_on_both_backends(db_url: str) -> None:
    with TestClient(create_app(admin_settings(db_url), store=MemoryRouteStore())) as client:
        system = bootstrap(client)
        space = create_space(client, system, "pg")
        r = client.put(
            f"/api/spaces/{space}/common-env",
            json={"entries": [{"name": "SHARED", "value": "from-common", "secret": True}]},
            headers=auth(system),
        )
        assert r.status_code == 200, r.text
        manifest = {
            "apiVersion": "turnout/v1",
            "kind": "App",
            "metadata": {"name": "pg"},
            "spec": {
                "services": {
                    "web": {
                        "type": "http",
                        "upstreams": ["http://127.0.0.1:9"],
                        "env": {"GREETING": "hi"},
                    }
                }
            },
        }
        r = client.post(f"/api/spaces/{space}/app-deployments", json=manifest, headers=auth(system))
        assert r.status_code == 201, r.text
        token = r.json()["services"][0]["managed_token"]["token"]
        r = client.get("/api/runtime/config", headers=auth(token))
        assert r.status_code == 200, r.text
        assert r.json()["env"] == {"GREETING": "hi"}
        assert r.json()["secrets"] == {"SHARED": "from-common"}
        r = client.post("/api/runtime/token/refresh", headers=auth(token))
        assert r.status_code == 201, r.text
        assert client.get("/api/runtime/config", headers=auth(r.json()["token"])).status_code == 200
        audit = client.get("/api/system/audit?limit=500", headers=auth(system)).json()["items"]
        assert {"deployment", "system"} <= {a["principal_kind"] for a in audit}
        # Archived by the next direct deploy: the token (and its successor) stop working.
        manifest["spec"]["services"]["web"]["env"] = {"GREETING": "v2"}  # type: ignore[index]
        assert (
            client.post(
                f"/api/spaces/{space}/app-deployments", json=manifest, headers=auth(system)
            ).status_code
            == 201
        )
        assert client.get("/api/runtime/config", headers=auth(token)).status_code == 401
