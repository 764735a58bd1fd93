"""Personal access tokens and the principals that own them.

A caller manages its own tokens (``/api/tokens``); the system admin creates principals and
issues tokens for them (``/api/principals``) — that is how a new user gets a first token.

Rules, whoever issues the token:
- The plaintext appears in the creation response only. It is neither stored (only its SHA-256
  and first 12 characters) nor replayed: an ``Idempotency-Key`` replay answers **200** with the
  token's record, ``idempotent_replay: true`` and no ``token`` (its own schema, ``TokenReplay``).
  200, not the original 201: nothing was created by the replay, and a client that lost the
  first answer has lost the plaintext too — it can revoke the token by its ``id`` and mint
  another. (A 409 would tell a retrying client that its request failed, when it took effect.)
- A token never grants more than the calling token holds (``*`` only from ``*``) → 403.
- ``system:admin`` is only meaningful for the system principal (see
  :meth:`admin.auth.Principal.has_scope`); issuing it to anyone else is a 422.
- Lineage: the calling token is the new token's parent (``parent_id``). A token never outlives
  its parent: under an expiring parent, no expiry or a later one is a 422
  ``token_outlives_parent`` naming ``body.expires_at``. Revoking a token revokes every token
  below it, transitively, in the same transaction. Roots have no parent: the tokens of
  ``turnout admin init``, and *orphans* the system admin issues for a principal with
  ``"orphan": true`` (a user's first token that must survive the rotation of the admin token
  that issued it — still bounded by that token's expiry).
- Revocation is checked on every request, so it takes effect on the next one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncConnection

from admin.api.models import Page, Strict
from admin.auth import DEPLOYMENT_KIND, RUNTIME_SCOPES, SCOPES, ScopeName, insert_token
from admin.db import new_id, now_ms, principals, tokens
from admin.errors import Forbidden, InvalidToken, NotFound, Unprocessable, field_error
from admin.framework import Ctx, endpoint, paged

DAY_MS = 24 * 3600 * 1000
MAX_DAYS = 3650
_REVOKE_BATCH = 500


class TokenCreate(Strict):
    name: str = Field(min_length=1, max_length=200)
    scopes: list[ScopeName] = Field(min_length=1, max_length=len(SCOPES) + 1)
    expires_in_days: int | None = Field(default=None, ge=1, le=MAX_DAYS)
    expires_at: int | None = Field(
        default=None,
        ge=0,
        le=2**53,
        description="when the token expires (ms since the epoch); instead of expires_in_days. "
        "A token minted by an expiring token must expire no later than it",
    )


class PrincipalTokenCreate(TokenCreate):
    orphan: bool = Field(
        default=False,
        description="a root token: not revoked with the token that issues it (still expiring "
        "no later than it)",
    )


class Token(Strict):
    id: str
    name: str
    prefix: str
    scopes: list[str]
    expires_at: int | None
    created_at: int
    last_used_at: int | None
    revoked_at: int | None
    parent_id: str | None


class _Minted(Strict):
    id: str
    name: str
    prefix: str
    scopes: list[str]
    expires_at: int | None
    created_at: int
    parent_id: str | None = Field(description="the token that minted this one (None: a root)")


class NewToken(_Minted):
    token: str = Field(description="the plaintext token; shown in this response only")


class TokenReplay(_Minted):
    """What an ``Idempotency-Key`` replay of a token creation answers: never the plaintext."""

    idempotent_replay: Literal[True]


REPLAY = (
    (
        200,
        TokenReplay,
        "an Idempotency-Key replay: the token the first request created, without its "
        "plaintext (shown once); revoke it by id if that answer was lost",
    ),
)


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
        "parent_id": row.parent_id,
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
    tokens.c.parent_id,
)


async def _issue(
    ctx: Ctx, principal_id: str, principal_kind: str, *, orphan: bool = False
) -> dict[str, Any]:
    """Create a token for ``principal_id`` within what the calling token may grant."""
    body: TokenCreate = ctx.body
    scopes: list[str] = list(dict.fromkeys(body.scopes))  # de-duplicated, order kept
    if principal_kind == DEPLOYMENT_KIND:
        raise field_error(
            "path.principal",
            "a deployment's tokens are managed by its deployment (re-issue: POST "
            "/api/spaces/{space}/deployments/{deployment}/token)",
        )
    runtime = [s for s in scopes if s in RUNTIME_SCOPES]
    if runtime:
        raise field_error(
            "body.scopes",
            f"{', '.join(runtime)}: held by managed deployment tokens only (minted at deploy time)",
        )
    if "system:admin" in scopes and principal_kind != "system":
        raise field_error("body.scopes", "system:admin can be granted to the system principal only")
    caller = ctx.principal
    if "*" in scopes and "*" not in caller.scopes:
        raise Forbidden("only a token with the * scope can grant *")
    missing = [s for s in scopes if s != "*" and not caller.has_scope(s)]
    if missing:
        raise Forbidden(f"a token cannot grant scopes it does not hold: {', '.join(missing)}")
    now = now_ms()
    expires_at = _requested_expiry(body, now)
    parent_expires = await _lock_parent(ctx.conn, caller.token_id, now)
    if parent_expires is not None and (expires_at is None or expires_at > parent_expires):
        raise _outlives(parent_expires, now)
    token_id, plaintext, created = await insert_token(
        ctx.conn,
        principal_id=principal_id,
        name=body.name,
        scopes=scopes,
        expires_at=expires_at,
        parent_id=None if orphan else caller.token_id,
    )
    ctx.resource = f"principal:{principal_id}/token:{token_id}"
    result = {
        "id": token_id,
        "name": body.name,
        "prefix": plaintext[:12],
        "scopes": scopes,
        "expires_at": expires_at,
        "created_at": created,
        "parent_id": None if orphan else caller.token_id,
    }
    # An Idempotency-Key replay never shows the plaintext (module docstring).
    ctx.replay_result = {**result, "idempotent_replay": True}
    ctx.replay_status = 200
    result["token"] = plaintext
    return result


def _requested_expiry(body: TokenCreate, now: int) -> int | None:
    if body.expires_at is not None and body.expires_in_days is not None:
        raise Unprocessable(
            "give expires_at or expires_in_days, not both",
            [
                {"path": "body.expires_at", "message": "not together with expires_in_days"},
                {"path": "body.expires_in_days", "message": "not together with expires_at"},
            ],
        )
    if body.expires_in_days is not None:
        return now + body.expires_in_days * DAY_MS
    if body.expires_at is None:
        return None
    if body.expires_at <= now:
        raise field_error("body.expires_at", f"must be in the future (now is {now})")
    if body.expires_at > now + MAX_DAYS * DAY_MS:
        raise field_error("body.expires_at", f"at most {MAX_DAYS} days from now")
    return body.expires_at


async def _lock_parent(conn: AsyncConnection, token_id: str, now: int) -> int | None:
    """The calling token's expiry, its row locked until commit: a revocation of it running
    meanwhile either finishes first (then this request is refused) or sees the new child."""
    row = (
        await conn.execute(
            sa.select(tokens.c.expires_at, tokens.c.revoked_at)
            .where(tokens.c.id == token_id)
            .with_for_update()
        )
    ).first()
    if row is None or row.revoked_at is not None:
        raise InvalidToken("token revoked")
    if row.expires_at is not None and row.expires_at <= now:
        raise InvalidToken("token expired")
    return None if row.expires_at is None else int(row.expires_at)


def _outlives(parent_expires: int, now: int) -> Unprocessable:
    at = datetime.fromtimestamp(parent_expires / 1000, UTC).isoformat(timespec="seconds")
    days = (parent_expires - now) // DAY_MS
    hint = f"expires_at <= {parent_expires}" + (
        f" or expires_in_days <= {days}" if days >= 1 else ""
    )
    message = (
        f"the calling token expires at {at} ({parent_expires}); a token it mints must not "
        f"outlive it: set {hint}"
    )
    return Unprocessable(
        f"body.expires_at: {message}",
        [{"path": "body.expires_at", "message": message}],
        code="token_outlives_parent",
    )


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
    revoked = await revoke_tree(ctx.conn, token_id, now_ms())
    ctx.headers["x-turnout-revoked"] = str(revoked)


async def revoke_tree(conn: AsyncConnection, token_id: str, now: int) -> int:
    """Revoke ``token_id`` and every token minted below it (any principal's), breadth first;
    returns how many were newly revoked. Already revoked tokens are walked through too."""
    revoked = 0
    seen = {token_id}
    frontier = [token_id]
    while frontier:
        batch, frontier = frontier, []
        for i in range(0, len(batch), _REVOKE_BATCH):
            chunk = batch[i : i + _REVOKE_BATCH]
            res = await conn.execute(
                sa.update(tokens)
                .where(tokens.c.id.in_(chunk), tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            revoked += res.rowcount
            children = await conn.execute(
                sa.select(tokens.c.id).where(tokens.c.parent_id.in_(chunk))
            )
            for child in children.scalars():
                if child not in seen:
                    seen.add(child)
                    frontier.append(str(child))
    return revoked


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
    responses=REPLAY,
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
    summary="Revoke one of the caller's tokens and every token minted below it (effective "
    "from the next request; X-Turnout-Revoked: how many)",
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
    body=PrincipalTokenCreate,
    response=NewToken,
    status=201,
    responses=REPLAY,
    summary="Issue a token for a principal (e.g. a new user's first token; orphan: a root)",
)
async def create_principal_token(ctx: Ctx) -> dict[str, Any]:
    row = await _load_principal(ctx)
    body: PrincipalTokenCreate = ctx.body
    return await _issue(ctx, row.id, row.kind, orphan=body.orphan)


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
    summary="Revoke a principal's token (e.g. a leaked one) and every token minted below it",
)
async def revoke_principal_token(ctx: Ctx) -> None:
    row = await _load_principal(ctx)
    await _revoke(ctx, row.id)
