"""The core storage flow on both SQL backends: SQLite (the default) and PostgreSQL (for HA).

The PostgreSQL case runs against the machine's server (see ``postgres_url``) and fails — never
skips — when it is not reachable.
"""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from starlette.testclient import TestClient

from admin.db import audit_log, make_engine, memberships, principals, spaces, tokens
from admin.migrate import upgrade
from tests.admin.conftest import (
    assert_error,
    auth,
    bootstrap,
    create_space,
    make_admin_app,
    make_user,
    principal_of,
    rows,
)


def test_migrations_are_idempotent(db_url: str) -> None:
    async def go() -> set[str]:
        engine = make_engine(db_url)
        try:
            await upgrade(engine)
            await upgrade(engine)
            async with engine.connect() as conn:
                names = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
            return set(names)
        finally:
            await engine.dispose()

    names = asyncio.run(go())
    assert {"principals", "spaces", "memberships", "tokens", "audit_log"} <= names


def test_core_flow(db_url: str) -> None:
    with TestClient(make_admin_app(db_url)) as client:
        engine = client.app.state.admin.engine  # type: ignore[attr-defined]
        assert engine.dialect.name == ("postgresql" if "postgresql" in db_url else "sqlite")
        system = bootstrap(client)
        again = bootstrap(client)
        assert again != system
        assert len(rows(client, sa.select(principals.c.id))) == 1
        assert len(rows(client, sa.select(spaces.c.id).where(spaces.c.kind == "system"))) == 1

        space = create_space(client, system, "team")
        member = make_user(client, system, "member", space, "editor")
        member_id = principal_of(client, member)
        (m,) = rows(
            client,
            sa.select(memberships).where(
                memberships.c.space_id == space, memberships.c.principal_id == member_id
            ),
        )
        assert m.role == "editor"
        got = client.get(f"/api/spaces/{space}", headers=auth(member))
        assert got.status_code == 200 and got.json()["role"] == "editor"
        assert_error(
            client.patch(f"/api/spaces/{space}", json={"name": "x"}, headers=auth(member)), 403
        )

        # Paging: the member creates 5 more spaces; 6 in all, pages of 4.
        made = [create_space(client, member, f"s{i}") for i in range(5)]
        seen: list[str] = []
        cursor: str | None = None
        while True:
            params = {"limit": "4", **({"cursor": cursor} if cursor else {})}
            page = client.get("/api/spaces", params=params, headers=auth(member)).json()
            seen += [s["id"] for s in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == sorted([space, *made])

        members = client.get(f"/api/spaces/{space}/members", headers=auth(member)).json()
        assert {x["role"] for x in members["items"]} == {"owner", "editor"}

        # Idempotent replay and ETag conflicts behave the same on both backends.
        headers = {**auth(member), "idempotency-key": "k1"}
        a = client.post("/api/spaces", json={"name": "idem"}, headers=headers)
        b = client.post("/api/spaces", json={"name": "idem"}, headers=headers)
        assert a.status_code == 201 and b.content == a.content
        assert b.headers["idempotent-replay"] == "true"
        r = client.patch(
            f"/api/spaces/{space}",
            json={"name": "y"},
            headers={**auth(system), "if-match": '"x.1"'},
        )
        assert_error(r, 412)

        # A duplicate key in SQL becomes a 409, not a 500.
        r = client.post(
            f"/api/spaces/{space}/members",
            json={"principal_id": member_id, "role": "viewer"},
            headers=auth(system),
        )
        assert_error(r, 409, "conflict")

        assert len(rows(client, sa.select(tokens.c.id))) == 3
        outcomes = {(x.action, x.outcome) for x in rows(client, sa.select(audit_log))}
        assert ("create_space", "success") in outcomes and ("patch_space", "forbidden") in outcomes
