"""Managed deployment tokens: the credential a tenant runtime calls the control plane with.

Theory of operation. Every deployment row (one per service per app deployment) is also a
*principal*: id = the deployment's id, kind ``deployment``. At deploy time it gets one token,
``tak_dep_`` + 43 base64url characters, stored like a PAT (SHA-256 and a 12-character prefix
only) and shown once, in the deploy answer. Its scopes come from the manifest
(``spec.services.<name>.access``, :mod:`admin.manifest_access`); as a principal it is an
``editor`` of its own space and a member of no other (:func:`admin.auth.role_in`), so with
``pods:write`` it acts on pods like an editor's PAT, and another space's ids answer 404.

Lineage. A managed token is a root (no ``parent_id``): it lives with its deployment, not with
the token that deployed it (a runtime outlives the CI token of its deploy). It never grants
more than the deploying token holds, though: each scope other than ``runtime:config`` must be
one the caller holds itself (403 naming it).

Revocation. Every live token of a deployment is revoked when the deployment stops carrying
traffic — archived or rolled back from (:func:`admin.rollouts.store.apply_moves`, for deploys,
rollbacks and staged-rollout steps alike) — when its service is stopped or deleted, and when an
editor re-issues its token. A deployment brought back by a rollback gets a fresh token in the
rollback answer.

Lifetime and refresh. ``access.lifetime_seconds`` bounds each token; ``POST
/api/runtime/token/refresh`` mints a successor for the same deployment and cuts every other
live token of it down to the grace period (``TURNOUT_RUNTIME_TOKEN_GRACE_SECONDS``), so a
runtime swaps tokens without downtime and at most one full-lifetime token exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from admin.auth import DEPLOYMENT_KIND, MANAGED_PREFIX, Principal, insert_token
from admin.db import principals, tokens
from admin.errors import Forbidden
from admin.manifest_access import Access

# Routing statuses of a deployment that no longer carries traffic: its tokens are revoked.
RETIRED = ("archived", "rolled_back")


def check_grantable(caller: Principal, access: Access, path: str) -> None:
    """403 when the calling token could not itself use a scope the token would get."""
    for i, scope in enumerate(access.scopes):
        if scope != "runtime:config" and not caller.has_scope(scope):
            raise Forbidden(
                f"{path}[{i}]: the deploying token does not hold {scope}, so the deployment's "
                "token cannot have it either"
            )


async def ensure_principal(conn: AsyncConnection, deployment_id: str, name: str, now: int) -> None:
    """The deployment's principal row (id = the deployment's id), created once."""
    found = (
        await conn.execute(sa.select(principals.c.id).where(principals.c.id == deployment_id))
    ).first()
    if found is None:
        await conn.execute(
            sa.insert(principals).values(
                id=deployment_id, kind=DEPLOYMENT_KIND, name=name[:200], created_at=now
            )
        )


async def mint(
    conn: AsyncConnection, deployment_id: str, name: str, access: Access, now: int
) -> dict[str, Any]:
    """A new managed token for the deployment: its record and (``token``) the plaintext, the
    only copy there is — put it in the answer, never in storage or logs."""
    expires_at = None if access.lifetime_seconds is None else now + access.lifetime_seconds * 1000
    token_id, plaintext, created = await insert_token(
        conn,
        principal_id=deployment_id,
        name=name[:200],
        scopes=list(access.scopes),
        expires_at=expires_at,
        prefix=MANAGED_PREFIX,
    )
    return {
        "id": token_id,
        "prefix": plaintext[:12],
        "scopes": list(access.scopes),
        "expires_at": expires_at,
        "created_at": created,
        "token": plaintext,
    }


def without_plaintext(record: dict[str, Any]) -> dict[str, Any]:
    """What an ``Idempotency-Key`` replay stores and answers instead: ``token`` is null."""
    return {**record, "token": None}


def _live(deployment_ids: Sequence[str], now: int) -> Any:
    return sa.and_(
        tokens.c.principal_id.in_(list(deployment_ids)),
        tokens.c.revoked_at.is_(None),
        sa.or_(tokens.c.expires_at.is_(None), tokens.c.expires_at > now),
    )


async def has_live_token(conn: AsyncConnection, deployment_id: str, now: int) -> bool:
    found = await conn.execute(sa.select(tokens.c.id).where(_live([deployment_id], now)).limit(1))
    return found.first() is not None


async def revoke(conn: AsyncConnection, deployment_ids: Sequence[str], now: int) -> int:
    """Revoke every unrevoked token of these deployments; how many were revoked."""
    if not deployment_ids:
        return 0
    res = await conn.execute(
        sa.update(tokens)
        .where(tokens.c.principal_id.in_(list(deployment_ids)), tokens.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return int(res.rowcount)


async def shorten_others(
    conn: AsyncConnection, deployment_id: str, keep: str, until: int, now: int
) -> int | None:
    """Every live token of the deployment but ``keep`` expires by ``until`` (the grace
    period); returns the latest expiry left among them (None when there were none)."""
    rows = (
        await conn.execute(
            sa.select(tokens.c.id, tokens.c.expires_at).where(
                _live([deployment_id], now), tokens.c.id != keep
            )
        )
    ).all()
    latest: int | None = None
    for row in rows:
        expires = until if row.expires_at is None else min(int(row.expires_at), until)
        if expires != row.expires_at:
            await conn.execute(
                sa.update(tokens).where(tokens.c.id == row.id).values(expires_at=expires)
            )
        latest = expires if latest is None else max(latest, expires)
    return latest
