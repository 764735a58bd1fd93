"""Personal access tokens, scopes and roles.

Token format (takos): ``tak_pat_`` + base64url (no padding) of 32 random bytes — 51 chars.
Stored as the SHA-256 hex of the whole token plus its first 12 characters for display; the
plaintext is shown once, at creation. ``last_used_at`` is recorded in batches off the request
path (:class:`LastUsed`). Revocation and expiry are checked on every request.
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

from admin.db import memberships, new_id, now_ms, principals, tokens
from admin.errors import InvalidToken

log = logging.getLogger("turnout.admin.auth")

TOKEN_PREFIX: Final = "tak_pat_"
TOKEN_LEN: Final = 51
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
]
SCOPES: Final = tuple(s for s in get_args(ScopeName) if s != "*")
ROLES: Final = ("viewer", "editor", "admin", "owner")
ROLE_RANK: Final = {r: i for i, r in enumerate(ROLES)}


def new_token() -> str:
    raw = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    token = TOKEN_PREFIX + raw
    assert len(token) == TOKEN_LEN
    return token


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_token(value: str) -> bool:
    return len(value) == TOKEN_LEN and value.startswith(TOKEN_PREFIX)


async def insert_token(
    conn: AsyncConnection,
    *,
    principal_id: str,
    name: str,
    scopes: list[str],
    expires_at: int | None = None,
    parent_id: str | None = None,
) -> tuple[str, str, int]:
    """Store a new token for ``principal_id``: ``(token id, plaintext, created_at)``.

    Only the SHA-256 and the first 12 characters are stored; the plaintext returned here is the
    one and only copy, for the caller to show once. ``parent_id``: the token that minted it.
    """
    token, token_id, created = new_token(), new_id("tok"), now_ms()
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

    def has_scope(self, scope: str) -> bool:
        # ``system:admin`` is honoured for the system principal only: otherwise any user whose
        # token says ``*`` could mint tokens for the system principal (POST
        # /api/principals/{id}/tokens) and so become the system admin.
        if scope == "system:admin" and self.kind != "system":
            return False
        return "*" in self.scopes or scope in self.scopes

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
                )
                .join(principals, principals.c.id == tokens.c.principal_id)
                .where(tokens.c.hash == hash_token(value))
            )
        ).first()
    if row is None:
        raise InvalidToken("unknown token")
    if row.revoked_at is not None:
        raise InvalidToken("token revoked")
    if row.expires_at is not None and row.expires_at <= now:
        raise InvalidToken("token expired")
    return Principal(
        id=row.pid,
        kind=row.kind,
        name=row.name,
        token_id=row.id,
        scopes=frozenset(orjson.loads(row.scopes)),
        token_expires_at=row.expires_at,
    )


async def role_in(conn: AsyncConnection, principal: Principal, space_id: str) -> str | None:
    """The principal's role in a space (the system admin is owner everywhere)."""
    if principal.is_system_admin:
        return "owner"
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
