"""What a runtime receives: its decrypted config, its managed token's refresh and re-issue, and
the space's common env.

* ``GET /api/runtime/config`` — a managed deployment token only (``runtime:config``; a PAT's
  ``*`` does not reach it), for that token's own deployment only: the snapshot's decrypted
  ``env``, ``secrets`` and ``bindings`` (common env already merged in at deploy time, with the
  source of each key), the deployment's ids and version, and an ``ETag`` (an HMAC of the
  answer under a key derived from the key ring, so it says nothing about the values) for cheap
  polling with ``If-None-Match`` → 304; ``X-Turnout-Token-Expires-At`` (ms) tells an expiring
  token when to refresh. Every read — 304s included — writes an audit row
  (the deployment, its version and snapshot, never a value). ``Cache-Control: no-store``.
* ``POST /api/runtime/token/refresh`` — a successor token for the caller's deployment; every
  other live token of it expires within the grace period (``Settings.runtime_token_grace_seconds``).
* ``POST /api/spaces/{space}/deployments/{deployment}/token`` — an editor re-issues a
  deployment's token: every previous one is revoked at once.
* ``GET/PUT /api/spaces/{space}/common-env`` — admin role; entries ``{name, value, secret}``
  encrypted at rest, masked on read; a change applies to the next deployment only.

Plaintext tokens appear only in the answer that mints them; an ``Idempotency-Key`` replay of a
mint answers 200 with ``token: null``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from pydantic import Field, field_validator

from admin import audit, common_env, managed
from admin.api.deployments import ManagedToken, snapshot_access, token_name
from admin.api.models import Strict
from admin.crypto import CryptoError, decrypt_map, mask
from admin.db import deployments, now_ms, services, snapshots
from admin.errors import Conflict, NotFound, field_error
from admin.framework import Ctx, endpoint
from admin.manifest import MAX_VALUE_LEN, MAX_VARS
from admin.rollouts.machine import ROUTED

PARTS = ("env", "secrets", "bindings")
NEXT_DEPLOYMENT = (
    "common env applies to the next deployment of each service; running deployments keep the "
    "values they were deployed with (redeploy to pick the change up)"
)
_ENV_NAME = r"^[A-Z_][A-Z0-9_]{0,127}$"


class RuntimeConfig(Strict):
    space_id: str
    service_id: str
    service: str
    app: str | None
    deployment_id: str
    app_deployment_id: str | None
    snapshot_id: str
    version: int = Field(description="the deployment's number (per service, monotonic)")
    routing_status: str
    env: dict[str, str]
    secrets: dict[str, str]
    bindings: dict[str, str]
    sources: dict[str, dict[str, str]] = Field(
        description="per env/secrets name: service (the manifest) or common (the space's "
        "common env at deploy time)"
    )


class ManagedTokenReplay(Strict):
    """An ``Idempotency-Key`` replay of a mint: the token's record, never its plaintext."""

    id: str
    prefix: str
    scopes: list[str]
    expires_at: int | None
    created_at: int
    token: None


class RefreshedToken(ManagedToken):
    previous_expires_at: int | None = Field(
        description="when the token(s) this one replaces stop working (the grace period); "
        "null when there were none left"
    )


class RefreshReplay(ManagedTokenReplay):
    previous_expires_at: int | None


class CommonEnvIn(Strict):
    name: str = Field(pattern=_ENV_NAME, max_length=128)
    value: str = Field(max_length=MAX_VALUE_LEN)
    secret: bool = False

    @field_validator("value")
    @classmethod
    def _encodable(cls, value: str) -> str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode (no lone surrogates)") from None
        return value


class CommonEnvPut(Strict):
    entries: list[CommonEnvIn] = Field(max_length=MAX_VARS)


class CommonEnvEntry(Strict):
    name: str
    value: str = Field(description="masked (ab****yz, or **** for 8 characters or fewer)")
    secret: bool


class CommonEnvOut(Strict):
    items: list[CommonEnvEntry]
    etag: str
    applies_to: Literal["next_deployment"]
    message: str


def _replay(kind: type[Strict], description: str) -> tuple[tuple[int, type[Strict], str], ...]:
    return ((200, kind, description),)


# ------------------------------------------------------------------------------ config pull


async def _deployment(ctx: Ctx, *where: Any) -> Any:
    """A deployment row with its service's space, name, app and status (None if not found)."""
    return (
        await ctx.conn.execute(
            sa.select(
                deployments,
                services.c.space_id,
                services.c.name.label("service_name"),
                services.c.app_name,
                services.c.status.label("service_status"),
            )
            .join(services, services.c.id == deployments.c.service_id)
            .where(*where)
        )
    ).first()


async def _own_deployment(ctx: Ctx) -> Any:
    """The caller's deployment with its service; 404 when it is gone."""
    row = await _deployment(ctx, deployments.c.id == ctx.principal.id)
    if row is None:
        raise NotFound("this token's deployment no longer exists")
    return row


def _matches(header: str | None, tag: str) -> bool:
    if header is None:
        return False
    wanted = {w.strip().removeprefix("W/") for w in header.split(",")}
    return "*" in wanted or tag in wanted


@endpoint(
    "GET",
    "/api/runtime/config",
    scope="runtime:config",
    response=RuntimeConfig,
    tag="runtime",
    query=(
        (
            "deployment",
            "string",
            "the deployment the runtime expects to be (404 when it is not the token's own)",
        ),
    ),
    responses=((304, None, "not modified: If-None-Match holds the current ETag"),),
    summary="A runtime's own decrypted config (managed deployment token only; ETag, 304)",
)
async def get_runtime_config(ctx: Ctx) -> dict[str, Any] | None:
    asked = ctx.query_param("deployment")
    if asked is not None and asked != ctx.principal.id:
        raise NotFound(f"deployment {asked} not found")
    row = await _own_deployment(ctx)
    snap = (
        await ctx.conn.execute(sa.select(snapshots).where(snapshots.c.id == row.snapshot_id))
    ).one()
    try:
        sealed = orjson.loads(snap.secrets)
        values = {
            part: {
                k: v.reveal()
                for k, v in decrypt_map(ctx.state.keys, sealed.get(part, {}), snap.id, part).items()
            }
            for part in PARTS
        }
    except (CryptoError, orjson.JSONDecodeError, AttributeError) as exc:
        reason = exc if isinstance(exc, CryptoError) else "stored secrets are not a map"
        raise Conflict(f"snapshot cannot be decrypted: {reason}", code="snapshot_corrupt") from None
    config = orjson.loads(snap.config)
    payload = {
        "space_id": row.space_id,
        "service_id": row.service_id,
        "service": row.service_name,
        "app": row.app_name,
        "deployment_id": row.id,
        "app_deployment_id": row.app_deployment_id,
        "snapshot_id": row.snapshot_id,
        "version": row.number,
        "routing_status": row.routing_status,
        **values,
        "sources": config.get("sources") or {"env": {}, "secrets": {}},
    }
    key = ctx.state.keys.derive_key("runtime-config-etag").reveal()
    digest = hmac.new(key, orjson.dumps(payload, option=orjson.OPT_SORT_KEYS), hashlib.sha256)
    tag = f'"rc.{digest.hexdigest()[:32]}"'
    fresh = _matches(ctx.request.headers.get("if-none-match"), tag)
    # Who read which version, when — never a value.
    await audit.record(
        ctx.conn,
        audit.Entry(
            principal_id=ctx.principal.id,
            principal_kind=ctx.principal.kind,
            space_id=row.space_id,
            action="get_runtime_config",
            resource=f"deployment:{row.id}/version:{row.number}/snapshot:{row.snapshot_id}",
            request_id=ctx.request_id,
            client_request_id=ctx.client_request_id,
            outcome="not_modified" if fresh else "success",
        ),
    )
    ctx.headers["etag"] = tag
    ctx.headers["cache-control"] = "no-store"
    if ctx.principal.token_expires_at is not None:  # when to refresh (outside the ETag)
        ctx.headers["x-turnout-token-expires-at"] = str(ctx.principal.token_expires_at)
    if fresh:
        ctx.status = 304
        return None
    return payload


# ------------------------------------------------------------------------------ tokens


@endpoint(
    "POST",
    "/api/runtime/token/refresh",
    scope="runtime:token",
    response=RefreshedToken,
    status=201,
    tag="runtime",
    responses=_replay(RefreshReplay, "an Idempotency-Key replay: the token, without plaintext"),
    summary="A successor for the calling managed token; the old one works for the grace period",
)
async def refresh_runtime_token(ctx: Ctx) -> dict[str, Any]:
    row = await _own_deployment(ctx)
    access = await snapshot_access(ctx, row.snapshot_id)
    now = now_ms()
    label = token_name(row.app_name or "", row.service_name, row.number)
    minted = await managed.mint(ctx.conn, row.id, label, access, now)
    grace = ctx.state.settings.runtime_token_grace_seconds * 1000
    previous = await managed.shorten_others(ctx.conn, row.id, minted["id"], now + grace, now)
    ctx.resource = f"deployment:{row.id}/token:{minted['id']}"
    result = {**minted, "previous_expires_at": previous}
    ctx.replay_result = managed.without_plaintext(result)
    ctx.replay_status = 200
    return result


@endpoint(
    "POST",
    "/api/spaces/{space}/deployments/{deployment}/token",
    scope="deployments:write",
    role="editor",
    response=ManagedToken,
    status=201,
    tag="runtime",
    responses=_replay(ManagedTokenReplay, "an Idempotency-Key replay: the token, no plaintext"),
    summary="Re-issue a deployment's managed token (every previous one is revoked at once)",
)
async def reissue_deployment_token(ctx: Ctx) -> dict[str, Any]:
    dep_id = ctx.params["deployment"]
    row = await _deployment(ctx, deployments.c.id == dep_id, services.c.space_id == ctx.space_id)
    if row is None:
        raise NotFound(f"deployment {dep_id} not found")
    if row.service_status == "stopped":
        raise Conflict(
            f"service {row.service_name} is stopped: its deployments get no token",
            code="deployment_not_routed",
        )
    if row.routing_status not in ROUTED:
        raise Conflict(
            f"deployment {dep_id} is {row.routing_status} and carries no traffic: its token "
            "stays revoked (a rollback to it issues a new one)",
            code="deployment_not_routed",
        )
    access = await snapshot_access(ctx, row.snapshot_id)
    managed.check_grantable(ctx.principal, access, "access.scopes")
    now = now_ms()
    revoked = await managed.revoke(ctx.conn, [row.id], now)
    label = token_name(row.app_name or "", row.service_name, row.number)
    await managed.ensure_principal(ctx.conn, row.id, label, now)
    minted = await managed.mint(ctx.conn, row.id, label, access, now)
    ctx.resource = f"deployment:{row.id}/token:{minted['id']}"
    ctx.headers["x-turnout-revoked"] = str(revoked)
    ctx.replay_result = managed.without_plaintext(minted)
    ctx.replay_status = 200
    return minted


# ------------------------------------------------------------------------------ common env


async def _common_env_answer(ctx: Ctx) -> dict[str, Any]:
    assert ctx.space_id is not None
    entries = await common_env.load(ctx.conn, ctx.state.keys, ctx.space_id)
    tag = await common_env.etag_of(ctx.conn, ctx.space_id)
    ctx.headers["etag"] = tag
    return {
        "items": [{"name": e.name, "value": mask(e.value), "secret": e.secret} for e in entries],
        "etag": tag,
        "applies_to": "next_deployment",
        "message": NEXT_DEPLOYMENT,
    }


@endpoint(
    "GET",
    "/api/spaces/{space}/common-env",
    scope="spaces:read",
    role="admin",
    response=CommonEnvOut,
    tag="runtime",
    summary="The space's common env (values masked)",
)
async def get_common_env(ctx: Ctx) -> dict[str, Any]:
    return await _common_env_answer(ctx)


@endpoint(
    "PUT",
    "/api/spaces/{space}/common-env",
    scope="spaces:write",
    role="admin",
    body=CommonEnvPut,
    response=CommonEnvOut,
    tag="runtime",
    summary="Replace the space's common env (encrypted at rest; applies to the next deployment)",
)
async def put_common_env(ctx: Ctx) -> dict[str, Any]:
    body: CommonEnvPut = ctx.body
    assert ctx.space_id is not None
    ctx.if_match(await common_env.etag_of(ctx.conn, ctx.space_id))
    seen: dict[str, int] = {}
    for i, entry in enumerate(body.entries):
        if entry.name in seen:
            raise field_error(
                f"body.entries[{i}].name", f"duplicates body.entries[{seen[entry.name]}].name"
            )
        seen[entry.name] = i
    await common_env.replace(
        ctx.conn,
        ctx.state.keys,
        ctx.space_id,
        [(e.name, e.value, e.secret) for e in body.entries],
        now_ms(),
    )
    ctx.resource = f"space:{ctx.space_id}/common-env"
    return await _common_env_answer(ctx)
