"""A real admin (SQLite file, runtime mirrors in a real Redis) for the pod tests, with a clock
the test moves instead of sleeping, and short helpers for the pod API.

Test modules import the fixtures ``world_fixture`` (Redis mirrors) and ``dev_world_fixture``
(in-process mirrors, as ``turnout dev``); they are used as ``world`` and ``dev_world``.

The reaper's background loop is given an hour-long period so that it never runs on its own in
the middle of a test; tests run it with ``World.reap()`` (``LeaderLoops.run_once``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.testclient import TestClient

from admin.app import AdminState, create_app
from admin.crypto import KeyRing
from admin.pods.mirror import MirrorRead, PodMirror
from admin.settings import Settings
from routing.runtime_state import MemoryRuntimeState, RedisRuntimeState, RuntimeState
from routing.store import MemoryRouteStore
from tests.admin.conftest import (
    TEST_KEYS,
    assert_error,
    auth,
    bootstrap,
    call,
    create_space,
    rows,
    sql,
)

T0 = 1_800_000_000_000  # the fake clock's start (ms)


class FakeClock:
    def __init__(self, start: int = T0) -> None:
        self.ms = start

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


def W(target: str, recursive: bool = True) -> dict[str, Any]:
    return {"target": target, "permission": "write", "recursive": recursive}


def R(target: str, recursive: bool = True) -> dict[str, Any]:
    return {"target": target, "permission": "read", "recursive": recursive}


def pod_settings(db_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "db_url": db_url,
        "keys": KeyRing.parse(TEST_KEYS),
        "migrate_on_start": True,
        "pod_reap_interval": 3600.0,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class World:
    client: TestClient
    token: str
    space: str
    clock: FakeClock
    redis: redis.Redis | None  # the test's own client to the mirror Redis (None: in-process)

    @property
    def state(self) -> AdminState:
        app: Any = self.client.app
        st: AdminState = app.state.admin
        return st

    @property
    def base(self) -> str:
        return f"/api/spaces/{self.space}/pods"

    def post(self, path: str, body: Any = None, token: str | None = None) -> Any:
        kwargs: dict[str, Any] = {"headers": auth(token or self.token)}
        if body is not None:
            kwargs["json"] = body
        return self.client.post(self.base + path, **kwargs)

    def ok(self, path: str, body: Any = None, status: int = 200) -> dict[str, Any]:
        resp = self.post(path, body)
        assert resp.status_code == status, f"{path}: {resp.status_code} {resp.text}"
        data: dict[str, Any] = resp.json()
        return data

    def error(self, path: str, body: Any, status: int, code: str) -> dict[str, Any]:
        return assert_error(self.post(path, body), status, code)

    def get(self, name: str) -> dict[str, Any]:
        resp = self.client.get(f"{self.base}/{name}", headers=auth(self.token))
        assert resp.status_code == 200, resp.text
        data: dict[str, Any] = resp.json()
        return data

    # ---------------------------------------------------------------- operations

    def create(
        self,
        name: str,
        allow: list[dict[str, Any]],
        deny: list[dict[str, Any]] | None = None,
        grant: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        body = {"name": name, "scope": {"allow": allow, "deny": deny or []}, "grant": grant or []}
        return self.ok("", body, 201)

    def attach(self, name: str, segment_id: str | None = None) -> dict[str, Any]:
        return self.ok(f"/{name}/attach", {"segment_id": segment_id} if segment_id else {})

    def spawn(
        self,
        parent: str,
        name: str,
        rules: list[dict[str, Any]],
        grant: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        return self.ok(
            f"/{parent}/children", {"name": name, "rules": rules, "grant": grant or []}, 201
        )

    def heartbeat(self, name: str, lease_id: str) -> dict[str, Any]:
        return self.ok(f"/{name}/heartbeat", {"lease_id": lease_id})

    def check(self, name: str, path: str, permission: str = "write") -> dict[str, Any]:
        return self.ok(f"/{name}/check", {"path": path, "permission": permission})

    def allowed(self, name: str, path: str, permission: str = "write") -> bool:
        return bool(self.check(name, path, permission)["allowed"])

    def reap(self) -> Any:
        st = self.state
        return call(self.client, lambda: st.loops.run_once("pod-reaper", force=True))

    def rebuild(self) -> dict[str, Any]:
        return self.ok(":rebuild")

    # ---------------------------------------------------------------- the surfaces

    def mirror_key(self, name: str) -> str:
        return self.state.runtime.keys.pod(self.space, name)

    def mirror(self, name: str) -> MirrorRead:
        """The pod's mirror as the admin's key ring reads it (MAC verified)."""
        m = PodMirror(self.state.runtime, self.state.keys)
        return call(self.client, lambda: m.read(self.space, name))

    def mirror_raw(self, name: str) -> bytes | None:
        rt = self.state.runtime
        return call(self.client, lambda: rt.get(self.mirror_key(name)))

    def set_mirror_raw(self, name: str, value: bytes | None) -> None:
        """Edit the mirror by hand (as an operator with redis-cli would)."""
        key = self.mirror_key(name)
        if self.redis is not None:
            if value is None:
                self.redis.delete(key)
            else:
                self.redis.set(key, value)
            return
        rt = self.state.runtime
        if value is None:
            call(self.client, lambda: rt.delete(key))
        else:
            call(self.client, lambda: rt.set(key, value))

    def sql(self, query: sa.Executable) -> list[Any]:
        return rows(self.client, query)

    def sql_exec(self, statement: sa.Executable) -> None:
        """Change SQL behind the API's back (to build states a test needs)."""

        async def run(conn: AsyncConnection) -> None:
            await conn.execute(statement)

        sql(self.client, run)


@contextlib.contextmanager
def make_world(
    tmp_path: Path,
    runtime: RuntimeState,
    redis_client: redis.Redis | None,
    db_url: str | None = None,
) -> Iterator[World]:
    """An admin on ``db_url`` (default: a SQLite file in ``tmp_path``) with ``runtime``."""
    clock = FakeClock()
    db = db_url or str(tmp_path / "admin.db")
    app = create_app(pod_settings(db), store=MemoryRouteStore(), runtime=runtime)
    with TestClient(app) as client:
        token = bootstrap(client)
        space = create_space(client, token, "pods")
        app.state.admin.pods.clock = clock
        yield World(client, token, space, clock, redis_client)


@pytest.fixture(name="world")
def world_fixture(tmp_path: Path, redis_url: str) -> Iterator[World]:
    """The admin with its pod mirrors in the session's (flushed) Redis."""
    client = redis.Redis.from_url(redis_url)
    try:
        with make_world(tmp_path, RedisRuntimeState(redis_url), client) as w:
            yield w
    finally:
        client.close()


@pytest.fixture(name="dev_world")
def dev_world_fixture(tmp_path: Path) -> Iterator[World]:
    """As ``turnout dev`` runs it: no Redis, mirrors in the in-process runtime state."""
    with make_world(tmp_path, MemoryRuntimeState(), None) as w:
        yield w
