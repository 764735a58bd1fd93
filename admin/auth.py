"""Personal access tokens, managed deployment tokens, scopes and roles.

Token format (takos): ``tak_pat_`` + base64url (no padding) of 32 random bytes — 51 chars.
Managed deployment tokens (:mod:`admin.managed`) have the same shape with ``tak_dep_``; their
principal is the deployment itself (kind ``deployment``, id = the deployment's id), which acts
as an ``editor`` of its own space and is a member of no other.
Stored as the SHA-256 hex of the whole token plus its first 12 characters for display; the
plaintext is shown once, at creation. ``last_used_at`` is recorded in batches off the request
path (:class:`LastUsed`). Revocation and expiry are checked on every request.

Scope rules beyond "the token holds it (or ``*``)": ``system:admin`` is the system principal's
alone; ``runtime:*`` scopes are managed tokens' alone (a PAT's ``*`` does not reach them), and
every managed token holds ``runtime:token`` (its own refresh); ``billing:write`` implies
``usage:write`` (recording usage events).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import secrets
from dataclasses import dataclass
from typing import Final, Literal, get_args

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from admin.db import deployments, memberships, new_id, now_ms, principals, services, tokens
from admin.errors import InvalidToken

log = logging.getLogger("turnout.admin.auth")

TOKEN_PREFIX: Final = "tak_pat_"
MANAGED_PREFIX: Final = "tak_dep_"
TOKEN_LEN: Final = 51
DEPLOYMENT_KIND: Final = "deployment"
DEPLOYMENT_ROLE: Final = "editor"  # a deployment's role in its own space
# Every token scope; "*" grants all. One literal type serves validation and the OpenAPI enum.
ScopeName = Literal[
    "*",
    "spaces:read",
    "spaces:write",
    "deployments:read",
    "deployments:write",
    "rollouts:write",
    "billing:read",
    "billing:write",
    "pods:read",
    "pods:write",
    "tokens:write",
    "system:admin",
    "usage:write",
    "runtime:config",
    "runtime:token",
]
SCOPES: Final = tuple(s for s in get_args(ScopeName) if s != "*")
# Held by managed deployment tokens only (never a PAT, whatever its ``*``).
RUNTIME_SCOPES: Final = ("runtime:config", "runtime:token")
# A scope is also held through these (an older, wider scope that covers it).
IMPLIED_BY: Final[dict[str, tuple[str, ...]]] = {"usage:write": ("billing:write",)}
ROLES: Final = ("viewer", "editor", "admin", "owner")
ROLE_RANK: Final = {r: i for i, r in enumerate(ROLES)}


def new_token(prefix: str = TOKEN_PREFIX) -> str:
    raw = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    token = prefix + raw
    assert len(token) == TOKEN_LEN
    return token


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_token(value: str) -> bool:
    return len(value) == TOKEN_LEN and value.startswith((TOKEN_PREFIX, MANAGED_PREFIX))


async def insert_token(
    conn: AsyncConnection,
    *,
    principal_id: str,
    name: str,
    scopes: list[str],
    expires_at: int | None = None,
    parent_id: str | None = None,
    prefix: str = TOKEN_PREFIX,
) -> tuple[str, str, int]:
    """Store a new token for ``principal_id``: ``(token id, plaintext, created_at)``.

    Only the SHA-256 and the first 12 characters are stored; the plaintext returned here is the
    one and only copy, for the caller to show once. ``parent_id``: the token that minted it.
    ``prefix``: ``tak_pat_``, or ``tak_dep_`` for a deployment principal (:mod:`admin.managed`).
    """
    token, token_id, created = new_token(prefix), new_id("tok"), now_ms()
    await conn.execute(
        sa.insert(tokens).values(
            id=token_id,
            principal_id=principal_id,
            name=name,
            prefix=token[:12],
            hash=hash_token(token),
            scopes=orjson.dumps(scopes).decode(),
            expires_at=expires_at,
            created_at=created,
            parent_id=parent_id,
        )
    )
    return token_id, token, created


@dataclass(frozen=True, slots=True)
class Principal:
    id: str
    kind: str
    name: str
    token_id: str
    scopes: frozenset[str]
    token_expires_at: int | None = None  # the calling token's expiry (None: never)
    space_id: str | None = None  # a deployment principal's space (None for the others)

    @property
    def is_deployment(self) -> bool:
        return self.kind == DEPLOYMENT_KIND

    def has_scope(self, scope: str) -> bool:
        # ``system:admin`` is honoured for the system principal only: otherwise any user whose
        # token says ``*`` could mint tokens for the system principal (POST
        # /api/principals/{id}/tokens) and so become the system admin.
        if scope == "system:admin" and self.kind != "system":
            return False
        # Runtime scopes belong to managed deployment tokens: a PAT's ``*`` does not reach a
        # deployment's decrypted config.
        if scope in RUNTIME_SCOPES:
            if not self.is_deployment:
                return False
            if scope == "runtime:token":  # every managed token may refresh itself
                return True
        if "*" in self.scopes or scope in self.scopes:
            return True
        return any(s in self.scopes for s in IMPLIED_BY.get(scope, ()))

    @property
    def is_system_admin(self) -> bool:
        return self.has_scope("system:admin")


async def authenticate(
    engine: AsyncEngine, header: str | None, now: int | None = None
) -> Principal:
    """Resolve ``Authorization: Bearer <token>`` to a principal, or raise 401."""
    if not header:
        raise InvalidToken("missing bearer token")
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not looks_like_token(value):
        raise InvalidToken("malformed bearer token")
    now = now if now is not None else now_ms()
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(
                    tokens.c.id,
                    tokens.c.scopes,
                    tokens.c.expires_at,
                    tokens.c.revoked_at,
                    principals.c.id.label("pid"),
                    principals.c.kind,
                    principals.c.name,
                    services.c.space_id.label("dep_space"),
                )
                .join(principals, principals.c.id == tokens.c.principal_id)
                # A deployment principal's id is its deployment's id (admin.managed).
                .outerjoin(deployments, deployments.c.id == principals.c.id)
                .outerjoin(services, services.c.id == deployments.c.service_id)
                .where(tokens.c.hash == hash_token(value))
            )
        ).first()
    if row is None:
        raise InvalidToken("unknown token")
    if row.revoked_at is not None:
        raise InvalidToken("token revoked")
    if row.expires_at is not None and row.expires_at <= now:
        raise InvalidToken("token expired")
    managed = value.startswith(MANAGED_PREFIX)
    if managed != (row.kind == DEPLOYMENT_KIND) or (managed and row.dep_space is None):
        raise InvalidToken("unknown token")  # a mismatch, or its deployment was deleted
    return Principal(
        id=row.pid,
        kind=row.kind,
        name=row.name,
        token_id=row.id,
        scopes=frozenset(orjson.loads(row.scopes)),
        token_expires_at=row.expires_at,
        space_id=row.dep_space if managed else None,
    )


async def role_in(conn: AsyncConnection, principal: Principal, space_id: str) -> str | None:
    """The principal's role in a space (the system admin is owner everywhere; a deployment is
    an editor of its own space, a member of no other)."""
    if principal.is_system_admin:
        return "owner"
    if principal.is_deployment:
        return DEPLOYMENT_ROLE if space_id == principal.space_id else None
    row = (
        await conn.execute(
            sa.select(memberships.c.role).where(
                memberships.c.space_id == space_id, memberships.c.principal_id == principal.id
            )
        )
    ).first()
    return None if row is None else str(row.role)


class LastUsed:
    """Batches ``last_used_at`` updates: marked on the request path, written every few seconds."""

    def __init__(self, engine: AsyncEngine, interval: float = 5.0) -> None:
        self.engine = engine
        self.interval = interval
        self._pending: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def mark(self, token_id: str) -> None:
        self._pending[token_id] = now_ms()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="tokens-last-used")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> None:
        batch, self._pending = self._pending, {}
        if not batch:
            return
        try:
            async with self.engine.begin() as conn:
                for token_id, at in batch.items():
                    await conn.execute(
                        sa.update(tokens).where(tokens.c.id == token_id).values(last_used_at=at)
                    )
        except Exception as exc:  # keep them for the next round; never fail a request
            log.warning("recording token use failed: %s", exc)
            for k, v in batch.items():
                self._pending.setdefault(k, v)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
