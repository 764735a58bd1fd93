"""The authorisation matrix, generated from the endpoint registry.

Every declared endpoint — including ones added after this file was written — is called with: no
token, malformed and unknown tokens, an expired and a revoked token (401 ``invalid_token``); a
token lacking exactly the endpoint's scope (403); and, for endpoints inside a space, a member of
another space holding every scope (404, so ids do not leak) and members ranked below the
endpoint's role (403). Auth is decided before the body is looked at, so ``{}`` is a fine body.

Managed deployment tokens (principal kind ``deployment``) get the same treatment: unknown,
expired and revoked ones are 401; one holding every scope a deployment may hold is 403 on
every endpoint needing another scope, and 404 on every endpoint of another space; ``runtime:*``
endpoints refuse every PAT, even a ``*`` one (403).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from admin.app import RESOURCE_MODULES, load_resources
from admin.auth import IMPLIED_BY, ROLE_RANK, ROLES, RUNTIME_SCOPES, SCOPES
from admin.db import now_ms
from admin.framework import REGISTRY, Endpoint
from admin.manifest_access import MANAGED_SCOPES
from tests.admin.conftest import (
    assert_error,
    auth,
    bootstrap,
    create_space,
    make_admin_app,
    make_user,
    principal_of,
    sql,
    token_row,
)

load_resources()
ENDPOINTS = sorted(REGISTRY, key=lambda e: (e.path, e.method))

FAKE = "0" * 26
PARAM_FAKES = {
    "host": "app.example.com",
    "hostname": "app.example.com",
    "version": "1",
    "number": "1",
    "stage": "1",
}


def ep_id(ep: Endpoint) -> str:
    return f"{ep.method} {ep.path}"


@dataclass
class World:
    client: TestClient
    space: str  # the space every {space} is filled with
    system: str
    outsider: str  # owner of another space, every scope
    below: dict[str, str]  # role -> a member of `space` with that role, every scope
    lacking: dict[str, str]  # scope -> an owner's token holding every scope but that one
    lacking_system: dict[str, str]  # the same for the system principal
    expired: str
    revoked: str
    managed: str  # a deployment of `space`: every scope a deployment may hold
    managed_elsewhere: str  # the same, of a deployment in another space
    managed_expired: str
    managed_revoked: str


# Every scope a managed token may hold, and the refresh every one of them has.
MANAGED_HOLDS = {*MANAGED_SCOPES, "runtime:token"}


def _without(scope: str) -> list[str]:
    """Every scope but ``scope`` and those that imply it."""
    return [s for s in SCOPES if s != scope and s not in IMPLIED_BY.get(scope, ())]


def _deploy(client: TestClient, token: str, space: str, app: str) -> str:
    manifest = {
        "apiVersion": "turnout/v1",
        "kind": "App",
        "metadata": {"name": app},
        "spec": {
            "services": {
                app: {
                    "type": "http",
                    "upstreams": ["http://127.0.0.1:9"],
                    "access": {"scopes": list(MANAGED_SCOPES)},
                }
            }
        },
    }
    r = client.post(f"/api/spaces/{space}/app-deployments", json=manifest, headers=auth(token))
    assert r.status_code == 201, r.text
    managed: str = r.json()["services"][0]["managed_token"]["token"]
    return managed


def _set_token(client: TestClient, token: str, **values: int) -> None:
    import sqlalchemy as sa

    from admin.auth import hash_token
    from admin.db import tokens

    async def go(conn: Any) -> None:
        await conn.execute(
            sa.update(tokens).where(tokens.c.hash == hash_token(token)).values(**values)
        )

    sql(client, go)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    db = Path(tmp_path_factory.mktemp("matrix")) / "admin.db"
    with TestClient(make_admin_app(str(db))) as client:
        system = bootstrap(client)
        space = create_space(client, system, "target")
        owner = make_user(client, system, "owner", space, "owner")
        owner_id = principal_of(client, owner)
        system_id = principal_of(client, system)
        outsider = make_user(client, system, "outsider", None, "viewer")
        create_space(client, outsider, "elsewhere")
        below = {
            role: make_user(client, system, f"m-{role}", space, role)
            for role in ROLES
            if role != "owner"
        }
        lacking = {scope: token_row(client, owner_id, _without(scope)) for scope in SCOPES}
        lacking_system = {scope: token_row(client, system_id, _without(scope)) for scope in SCOPES}
        elsewhere = create_space(client, system, "managed-elsewhere")
        managed_expired = _deploy(client, system, space, "expired")
        _set_token(client, managed_expired, expires_at=now_ms() - 1)
        managed_revoked = _deploy(client, system, space, "revoked")
        _set_token(client, managed_revoked, revoked_at=now_ms() - 1)
        yield World(
            client=client,
            space=space,
            system=system,
            outsider=outsider,
            below=below,
            lacking=lacking,
            lacking_system=lacking_system,
            expired=token_row(client, system_id, ["*"], expires_at=now_ms() - 1),
            revoked=token_row(client, system_id, ["*"], revoked_at=now_ms() - 1),
            managed=_deploy(client, system, space, "managed"),
            managed_elsewhere=_deploy(client, system, elsewhere, "elsewhere"),
            managed_expired=managed_expired,
            managed_revoked=managed_revoked,
        )


def url(ep: Endpoint, space: str) -> str:
    path = ep.path
    for name in ep.params:
        value = space if name == "space" else PARAM_FAKES.get(name, f"{name[:3]}_{FAKE}")
        path = path.replace("{" + name + "}", value)
    return path


def send(w: World, ep: Endpoint, headers: dict[str, str], space: str | None = None) -> Any:
    kwargs: dict[str, Any] = {"headers": headers}
    if ep.mutation:
        kwargs["json"] = {}
    return w.client.request(ep.method, url(ep, space or w.space), **kwargs)


def test_registry_covers_every_resource_module() -> None:
    modules = {ep.handler.__module__ for ep in REGISTRY}
    assert modules == set(RESOURCE_MODULES)
    assert len({ep_id(ep) for ep in REGISTRY}) == len(REGISTRY), "an endpoint is declared twice"
    for ep in REGISTRY:
        assert ep.scope in SCOPES, f"{ep_id(ep)}: unknown scope {ep.scope}"
        assert ep.role is None or ep.role in ROLE_RANK, f"{ep_id(ep)}: unknown role {ep.role}"
        assert ep.role is None or "space" in ep.params, f"{ep_id(ep)}: role without a {{space}}"


@pytest.mark.parametrize("ep", ENDPOINTS, ids=ep_id)
def test_unauthenticated(world: World, ep: Endpoint) -> None:
    unknown = "tak_pat_" + secrets.token_urlsafe(32)[:43]
    unknown_managed = "tak_dep_" + secrets.token_urlsafe(32)[:43]
    cases: dict[str, dict[str, str]] = {
        "unknown managed": auth(unknown_managed),
        "expired managed": auth(world.managed_expired),
        "revoked managed": auth(world.managed_revoked),
        "managed, truncated": auth(world.managed[:-1]),
        "no token": {},
        "empty bearer": {"authorization": "Bearer "},
        "malformed": {"authorization": "Bearer not-a-token"},
        "wrong scheme": {"authorization": f"Basic {world.system}"},
        "truncated": auth(world.system[:-1]),
        "unknown": auth(unknown),
        "expired": auth(world.expired),
        "revoked": auth(world.revoked),
    }
    for name, headers in cases.items():
        resp = send(world, ep, headers)
        assert resp.status_code == 401, f"{name}: {resp.status_code} {resp.text}"
        assert_error(resp, 401, "invalid_token")


@pytest.mark.parametrize("ep", ENDPOINTS, ids=ep_id)
def test_missing_scope(world: World, ep: Endpoint) -> None:
    tokens = [world.lacking[ep.scope], world.lacking_system[ep.scope]]
    if ep.scope == "system:admin":
        # system:admin is the system principal's alone: a user's * does not reach it.
        tokens += [world.outsider, *world.below.values()]
    if ep.scope in RUNTIME_SCOPES:
        # runtime scopes are managed tokens' alone: no PAT's * reaches them.
        tokens += [world.system, world.outsider, *world.below.values()]
    if ep.scope not in MANAGED_HOLDS:
        tokens += [world.managed]
    for token in tokens:
        assert_error(send(world, ep, auth(token)), 403, "forbidden")


SPACE_ENDPOINTS = [ep for ep in ENDPOINTS if "space" in ep.params and ep.scope != "system:admin"]


@pytest.mark.parametrize("ep", SPACE_ENDPOINTS, ids=ep_id)
def test_other_space_is_not_found(world: World, ep: Endpoint) -> None:
    assert_error(send(world, ep, auth(world.outsider)), 404, "not_found")
    if ep.scope in MANAGED_HOLDS:  # another space's deployment is an outsider too
        assert_error(send(world, ep, auth(world.managed_elsewhere)), 404, "not_found")
    # A space that does not exist at all answers the same, even to the system admin.
    assert_error(send(world, ep, auth(world.system), space=f"spc_{FAKE}"), 404, "not_found")


ROLE_CASES = [
    pytest.param(ep, role, id=f"{ep_id(ep)} as {role}")
    for ep in SPACE_ENDPOINTS
    if ep.role is not None
    for role in ROLES
    if ROLE_RANK[role] < ROLE_RANK[ep.role]
]


@pytest.mark.parametrize(("ep", "role"), ROLE_CASES)
def test_role_below_is_forbidden(world: World, ep: Endpoint, role: str) -> None:
    assert_error(send(world, ep, auth(world.below[role])), 403, "forbidden")


def test_the_matrix_is_not_empty() -> None:
    assert len(ENDPOINTS) >= 15
    assert len(SPACE_ENDPOINTS) >= 5
    assert len(ROLE_CASES) >= 10
