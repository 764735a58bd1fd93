"""Admin test harness: an app on a throwaway SQLite file, a client, and principals to call it with.

``client`` runs the app's lifespan (migrations, publisher) in the TestClient's portal thread;
anything async that touches the app's engine must run there too (:func:`call`), since the
engine's connections belong to that event loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.applications import Starlette
from starlette.testclient import TestClient

from admin.app import AdminState, create_app
from admin.auth import insert_token
from admin.bootstrap import bootstrap as bootstrap_engine
from admin.crypto import KeyRing
from admin.settings import Settings
from routing.store import MemoryRouteStore
from tests.support.pg import PG_ERRORS, pg_database

T = TypeVar("T")

TEST_KEYS = "*k1:" + base64.b64encode(bytes(range(32))).decode()


def admin_settings(db_url: str) -> Settings:
    return Settings(
        db_url=db_url,
        keys=KeyRing.parse(TEST_KEYS),
        redis_url=None,
        migrate_on_start=True,
    )


def make_admin_app(db_url: str) -> Starlette:
    return create_app(admin_settings(db_url), store=MemoryRouteStore())


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "admin.db"


@pytest.fixture
def admin_app(db_path: Path) -> Starlette:
    return make_admin_app(str(db_path))


@pytest.fixture
def client(admin_app: Starlette) -> Iterator[TestClient]:
    with TestClient(admin_app) as c:
        yield c


# ------------------------------------------------------------------------------ helpers


def state_of(client: TestClient) -> AdminState:
    app: Any = client.app
    state: AdminState = app.state.admin
    return state


def call(client: TestClient, fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn()`` on the app's event loop (the TestClient portal) and return its result."""
    portal = client.portal
    assert portal is not None, "use the client as a context manager (the `client` fixture does)"

    async def run() -> T:
        return await fn()

    return portal.call(run)


def sql(client: TestClient, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run ``fn(conn)`` in one transaction on the app's engine."""
    engine = state_of(client).engine

    async def run() -> T:
        async with engine.begin() as conn:
            return await fn(conn)

    return call(client, run)


def rows(client: TestClient, query: sa.Executable) -> list[Any]:
    async def fetch(conn: AsyncConnection) -> list[Any]:
        return list((await conn.execute(query)).all())

    return sql(client, fetch)


def bootstrap(target: TestClient | AsyncEngine) -> str:
    """The system principal, space and a ``*`` token — what ``turnout admin init`` does."""
    if isinstance(target, TestClient):
        engine = state_of(target).engine
        return call(target, lambda: bootstrap_engine(engine))
    return asyncio.run(bootstrap_engine(target))


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def make_user(
    client: TestClient,
    system_token: str,
    name: str,
    space_id: str | None,
    role: str,
    scopes: list[str] | None = None,
) -> str:
    """A user principal, a member of ``space_id`` with ``role``; returns a new token of theirs."""
    r = client.post(
        "/api/principals", json={"kind": "user", "name": name}, headers=auth(system_token)
    )
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    if space_id is not None:
        r = client.post(
            f"/api/spaces/{space_id}/members",
            json={"principal_id": pid, "role": role},
            headers=auth(system_token),
        )
        assert r.status_code == 201, r.text
    r = client.post(
        f"/api/principals/{pid}/tokens",
        json={"name": f"{name}-token", "scopes": scopes if scopes is not None else ["*"]},
        headers=auth(system_token),
    )
    assert r.status_code == 201, r.text
    token: str = r.json()["token"]
    return token


def principal_of(client: TestClient, token: str) -> str:
    """The principal id behind ``token`` (via the tokens table)."""
    from admin.auth import hash_token
    from admin.db import tokens

    found = rows(client, sa.select(tokens.c.principal_id).where(tokens.c.hash == hash_token(token)))
    assert found, "unknown token"
    return str(found[0].principal_id)


def token_row(
    client: TestClient,
    principal_id: str,
    scopes: list[str],
    *,
    expires_at: int | None = None,
    revoked_at: int | None = None,
) -> str:
    """Insert a token directly (e.g. already expired or revoked); returns its plaintext."""
    from admin.db import tokens

    async def insert(conn: AsyncConnection) -> str:
        token_id, token, _ = await insert_token(
            conn, principal_id=principal_id, name="direct", scopes=scopes, expires_at=expires_at
        )
        if revoked_at is not None:
            await conn.execute(
                sa.update(tokens).where(tokens.c.id == token_id).values(revoked_at=revoked_at)
            )
        return token

    return sql(client, insert)


def create_space(client: TestClient, token: str, name: str = "team") -> str:
    r = client.post("/api/spaces", json={"name": name}, headers=auth(token))
    assert r.status_code == 201, r.text
    sid: str = r.json()["id"]
    return sid


def assert_error(resp: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is the error envelope ``{"error": {"code", "message", "details"?}}``."""
    assert resp.status_code == status, f"{resp.status_code} != {status}: {resp.text}"
    body = resp.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err, dict), body
    assert isinstance(err.get("code"), str) and err["code"], body
    assert isinstance(err.get("message"), str) and err["message"], body
    assert set(err) <= {"code", "message", "details"}, body
    if code is not None:
        assert err["code"] == code, body
    return err


# ------------------------------------------------------------------------------ PostgreSQL


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each SQL backend in turn: a SQLite file, then a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'admin.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throwaway database on the machine's PostgreSQL (127.0.0.1:5432, user postgres)."""
    stack = contextlib.ExitStack()
    try:
        url = stack.enter_context(pg_database())
    except PG_ERRORS as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at 127.0.0.1:5432 as user postgres "
            f"(needed by the postgres-marked tests): {type(exc).__name__}: {exc}",
            pytrace=False,
        )
    with stack:  # drops the database
        yield url
