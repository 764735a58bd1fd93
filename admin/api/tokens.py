"""Personal access tokens and the principals that own them.

A caller manages its own tokens (``/api/tokens``); the system admin creates principals and
issues tokens for them (``/api/principals``) — that is how a new user gets a first token.

Rules, whoever issues the token:
- The plaintext appears in the creation response only. It is neither stored (only its SHA-256
  and first 12 characters) nor replayed for an ``Idempotency-Key`` (the replay omits ``token``).
- A token never grants more than the calling token holds (``*`` only from ``*``) → 403.
- ``system:admin`` is only meaningful for the system principal (see
  :meth:`admin.auth.Principal.has_scope`); issuing it to anyone else is a 422.
- Revocation is checked on every request, so it takes effect on the next one.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
import sqlalchemy as sa
from pydantic import Field

from admin.api.models import Page, Strict
from admin.auth import SCOPES, ScopeName, insert_token
from admin.db import new_id, now_ms, principals, tokens
from admin.errors import Forbidden, NotFound, field_error
from admin.framework import Ctx, endpoint, paged

DAY_MS = 24 * 3600 * 1000


class TokenCreate(Strict):
    name: str = Field(min_length=1, max_length=200)
    scopes: list[ScopeName] = Field(min_length=1, max_length=len(SCOPES) + 1)
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class Token(Strict):
    id: str
    name: str
    prefix: str
    scopes: list[str]
    expires_at: int | None
    created_at: int
    last_used_at: int | None
    revoked_at: int | None


class NewToken(Strict):
    id: str
    name: str
    prefix: str
    scopes: list[str]
    expires_at: int | None
    created_at: int
    token: str = Field(description="the plaintext token; shown in this response only")


class PrincipalCreate(Strict):
    kind: Literal["user", "service"]
    name: str = Field(min_length=1, max_length=200)


class PrincipalOut(Strict):
    id: str
    kind: str
    name: str
    created_at: int


def _token(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "prefix": row.prefix,
        "scopes": orjson.loads(row.scopes),
        "expires_at": row.expires_at,
        "created_at": row.created_at,
        "last_used_at": row.last_used_at,
        "revoked_at": row.revoked_at,
    }


def _principal(row: Any) -> dict[str, Any]:
    return {"id": row.id, "kind": row.kind, "name": row.name, "created_at": row.created_at}


# Every column but the hash: a listing never carries it.
_TOKEN_Q = sa.select(
    tokens.c.id,
    tokens.c.name,
    tokens.c.prefix,
    tokens.c.scopes,
    tokens.c.expires_at,
    tokens.c.created_at,
    tokens.c.last_used_at,
    tokens.c.revoked_at,
)


async def _issue(ctx: Ctx, principal_id: str, principal_kind: str) -> dict[str, Any]:
    """Create a token for ``principal_id`` within what the calling token may grant."""
    body: TokenCreate = ctx.body
    scopes: list[str] = list(dict.fromkeys(body.scopes))  # de-duplicated, order kept
    if "system:admin" in scopes and principal_kind != "system":
        raise field_error("body.scopes", "system:admin can be granted to the system principal only")
    caller = ctx.principal
    if "*" in scopes and "*" not in caller.scopes:
        raise Forbidden("only a token with the * scope can grant *")
    missing = [s for s in scopes if s != "*" and not caller.has_scope(s)]
    if missing:
        raise Forbidden(f"a token cannot grant scopes it does not hold: {', '.join(missing)}")
    expires_at = None
    if body.expires_in_days is not None:
        expires_at = now_ms() + body.expires_in_days * DAY_MS
    token_id, plaintext, created = await insert_token(
        ctx.conn, principal_id=principal_id, name=body.name, scopes=scopes, expires_at=expires_at
    )
    ctx.resource = f"principal:{principal_id}/token:{token_id}"
    result = {
        "id": token_id,
        "name": body.name,
        "prefix": plaintext[:12],
        "scopes": scopes,
        "expires_at": expires_at,
        "created_at": created,
    }
    ctx.replay_result = dict(result)  # an Idempotency-Key replay never shows the plaintext
    result["token"] = plaintext
    return result


async def _revoke(ctx: Ctx, principal_id: str) -> None:
    token_id = ctx.params["token"]
    row = (
        await ctx.conn.execute(
            sa.select(tokens.c.id, tokens.c.revoked_at).where(
                tokens.c.id == token_id, tokens.c.principal_id == principal_id
            )
        )
    ).first()
    if row is None:  # someone else's token is as unknown as a made-up id
        raise NotFound(f"token {token_id} not found")
    ctx.resource = f"principal:{principal_id}/token:{token_id}"
    if row.revoked_at is None:
        await ctx.conn.execute(
            sa.update(tokens).where(tokens.c.id == token_id).values(revoked_at=now_ms())
        )


async def _load_principal(ctx: Ctx) -> Any:
    pid = ctx.params["principal"]
    row = (await ctx.conn.execute(sa.select(principals).where(principals.c.id == pid))).first()
    if row is None:
        raise NotFound(f"principal {pid} not found")
    return row


# ------------------------------------------------------------------------------ own tokens


@endpoint(
    "POST",
    "/api/tokens",
    scope="tokens:write",
    body=TokenCreate,
    response=NewToken,
    status=201,
    summary="Create a token for the caller (the plaintext is in this response only)",
)
async def create_token(ctx: Ctx) -> dict[str, Any]:
    return await _issue(ctx, ctx.principal.id, ctx.principal.kind)


@endpoint(
    "GET",
    "/api/tokens",
    scope="tokens:write",
    response=Page,
    paged=True,
    summary="List the caller's tokens (never the plaintext or its hash)",
)
async def list_tokens(ctx: Ctx) -> dict[str, Any]:
    q = _TOKEN_Q.where(tokens.c.principal_id == ctx.principal.id)
    return await paged(ctx, q, tokens.c.id, _token)


@endpoint(
    "DELETE",
    "/api/tokens/{token}",
    scope="tokens:write",
    status=204,
    summary="Revoke one of the caller's tokens (effective from the next request)",
)
async def revoke_token(ctx: Ctx) -> None:
    await _revoke(ctx, ctx.principal.id)


# ------------------------------------------------------------------------------ principals


@endpoint(
    "POST",
    "/api/principals",
    scope="system:admin",
    body=PrincipalCreate,
    response=PrincipalOut,
    status=201,
    summary="Create a user or service principal",
)
async def create_principal(ctx: Ctx) -> dict[str, Any]:
    body: PrincipalCreate = ctx.body
    pid, now = new_id("prn"), now_ms()
    await ctx.conn.execute(
        sa.insert(principals).values(id=pid, kind=body.kind, name=body.name, created_at=now)
    )
    ctx.resource = f"principal:{pid}"
    return {"id": pid, "kind": body.kind, "name": body.name, "created_at": now}


@endpoint(
    "GET",
    "/api/principals",
    scope="system:admin",
    response=Page,
    paged=True,
    summary="List principals",
)
async def list_principals(ctx: Ctx) -> dict[str, Any]:
    return await paged(ctx, sa.select(principals), principals.c.id, _principal)


@endpoint(
    "POST",
    "/api/principals/{principal}/tokens",
    scope="system:admin",
    body=TokenCreate,
    response=NewToken,
    status=201,
    summary="Issue a token for a principal (e.g. a new user's first token)",
)
async def create_principal_token(ctx: Ctx) -> dict[str, Any]:
    row = await _load_principal(ctx)
    return await _issue(ctx, row.id, row.kind)


@endpoint(
    "GET",
    "/api/principals/{principal}/tokens",
    scope="system:admin",
    response=Page,
    paged=True,
    summary="List a principal's tokens (never the plaintext or its hash)",
)
async def list_principal_tokens(ctx: Ctx) -> dict[str, Any]:
    row = await _load_principal(ctx)
    q = _TOKEN_Q.where(tokens.c.principal_id == row.id)
    return await paged(ctx, q, tokens.c.id, _token)


@endpoint(
    "DELETE",
    "/api/principals/{principal}/tokens/{token}",
    scope="system:admin",
    status=204,
    summary="Revoke a principal's token (e.g. a leaked one)",
)
async def revoke_principal_token(ctx: Ctx) -> None:
    row = await _load_principal(ctx)
    await _revoke(ctx, row.id)
