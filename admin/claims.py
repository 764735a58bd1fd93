"""Hostname claims: the states of a space's claim on a hostname, and how they change.

Theory of operation
-------------------
A hostname row is one space's *claim* on a name (primary key: host, space). Several spaces may
claim the same custom name while they wait for their TXT proof; proof decides, and at most one
claim per name is ``verified`` (a partial unique index, so two proofs racing cannot both win).
A claim's state is derived from its row (:func:`status_of`), never stored as text:

- ``pending``   unverified and before ``expires_at``: it waits for its TXT proof and publishes
  nothing. Claiming does not block anyone: another space claiming the same name gets its own
  pending claim, and neither learns of the other.
- ``verified``  proven by TXT (or granted at once under the platform base domain). The only
  state whose hostname is published; another space claiming the name gets 409 ``hostname_taken``.
- ``expired``   unverified past ``expires_at`` (``Settings.claim_ttl_hours``, default 72 h): it
  can no longer be verified (409 ``claim_expired``); claiming it again renews it.
- ``displaced`` another space proved ownership first. The row is kept (unrouted) so that its
  space sees why in the hostname's status, and an audit row is written in that space's log.

Transitions (every one of them is here; :func:`transition` refuses the others):

    (new)      → pending | verified (base domain grant)
    pending    → verified (its proof) | expired (time) | displaced (another space's proof)
    expired    → pending (renewed by its space) | displaced
    displaced  → pending (renewed by its space, once no other space holds the name)
    verified   → (only deleted: a proven claim ends when its space releases it)

Why expiry: a pending claim blocks nobody, but a verify token valid for ever would let a TXT
record left behind by a former owner of the domain prove a claim years later. Expired and
displaced rows stay until their space deletes or renews them (nothing is silently lost).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from admin.audit import record_event
from admin.db import hostnames, now_ms, services
from admin.errors import Conflict
from admin.framework import Ctx

HOUR_MS: Final = 3600 * 1000


class ClaimStatus(StrEnum):
    PENDING = "pending"
    VERIFIED = "verified"
    EXPIRED = "expired"
    DISPLACED = "displaced"


TRANSITIONS: Final[dict[ClaimStatus | None, frozenset[ClaimStatus]]] = {
    None: frozenset({ClaimStatus.PENDING, ClaimStatus.VERIFIED}),
    ClaimStatus.PENDING: frozenset(
        {ClaimStatus.VERIFIED, ClaimStatus.EXPIRED, ClaimStatus.DISPLACED}
    ),
    ClaimStatus.EXPIRED: frozenset({ClaimStatus.PENDING, ClaimStatus.DISPLACED}),
    ClaimStatus.DISPLACED: frozenset({ClaimStatus.PENDING}),
    ClaimStatus.VERIFIED: frozenset(),
}


class IllegalClaimTransition(ValueError):
    def __init__(self, current: ClaimStatus | None, target: ClaimStatus) -> None:
        super().__init__(f"a hostname claim cannot go from {current or 'nothing'} to {target}")


class HostnameTaken(Conflict):
    code = "hostname_taken"


class ClaimExpired(Conflict):
    code = "claim_expired"


def transition(current: ClaimStatus | None, target: ClaimStatus) -> ClaimStatus:
    """``target`` if a claim in ``current`` (None: no claim yet) may move there."""
    if target not in TRANSITIONS[current]:
        raise IllegalClaimTransition(current, target)
    return target


def status_of(row: Any, now: int | None = None) -> ClaimStatus:
    """The state of the claim ``row`` (a ``hostnames`` row) at ``now``."""
    if row.verified:
        return ClaimStatus.VERIFIED
    if row.displaced_at is not None:
        return ClaimStatus.DISPLACED
    now = now_ms() if now is None else now
    if row.expires_at is not None and row.expires_at <= now:
        return ClaimStatus.EXPIRED
    return ClaimStatus.PENDING


def expiry(ctx: Ctx, now: int) -> int:
    """When a claim made (or renewed) at ``now`` stops being verifiable."""
    return now + int(ctx.state.settings.claim_ttl_hours * HOUR_MS)


async def holder(conn: AsyncConnection, host: str) -> Any:
    """The verified claim on ``host`` (any space), or ``None``."""
    return (
        await conn.execute(
            sa.select(hostnames).where(hostnames.c.host == host, hostnames.c.verified == sa.true())
        )
    ).first()


async def own_claim(conn: AsyncConnection, host: str, space_id: str) -> Any:
    return (
        await conn.execute(
            sa.select(hostnames).where(hostnames.c.host == host, hostnames.c.space_id == space_id)
        )
    ).first()


def refuse_if_held_elsewhere(held: Any, space_id: str | None, host: str) -> None:
    """409 ``hostname_taken`` when another space holds ``host`` verified (its name unsaid)."""
    if held is not None and held.space_id != space_id:
        raise HostnameTaken(
            f"hostname {host} is already claimed (another space proved ownership of it)"
        )


async def renew(ctx: Ctx, row: Any) -> Any:
    """Renew the space's own expired or displaced claim: pending again, with a new expiry and
    the same verify token (a TXT record created for it keeps working)."""
    current = status_of(row)
    transition(current, ClaimStatus.PENDING)
    now = now_ms()
    await ctx.conn.execute(
        sa.update(hostnames)
        .where(hostnames.c.host == row.host, hostnames.c.space_id == row.space_id)
        .values(
            expires_at=expiry(ctx, now),
            displaced_at=None,
            created_at=now,
            version=row.version + 1,
        )
    )
    return await own_claim(ctx.conn, row.host, row.space_id)


async def mark_verified(ctx: Ctx, row: Any) -> None:
    """Turn the space's pending claim ``row`` verified and displace every other space's
    unverified claim on the name. 409 if the claim changed meanwhile or another space won."""
    transition(status_of(row), ClaimStatus.VERIFIED)
    refuse_if_held_elsewhere(await holder(ctx.conn, row.host), row.space_id, row.host)
    now = now_ms()
    res = await ctx.conn.execute(
        sa.update(hostnames)
        .where(
            hostnames.c.host == row.host,
            hostnames.c.space_id == row.space_id,
            hostnames.c.version == row.version,
            hostnames.c.verified == sa.false(),
        )
        .values(verified=True, verified_at=now, expires_at=None, version=row.version + 1)
    )
    if res.rowcount != 1:
        raise Conflict("the hostname changed while it was being verified; read it again")
    await displace_others(ctx, row.host, row.space_id, now)


async def displace_others(ctx: Ctx, host: str, winner_space: str, now: int) -> None:
    """Every other space's unverified, not yet displaced claim on ``host`` becomes displaced;
    each such space gets a row in its audit log (no principal: the platform did it)."""
    losers = (
        await ctx.conn.execute(
            sa.select(hostnames).where(
                hostnames.c.host == host,
                hostnames.c.space_id != winner_space,
                hostnames.c.verified == sa.false(),
                hostnames.c.displaced_at.is_(None),
            )
        )
    ).all()
    for loser in losers:
        transition(status_of(loser, now), ClaimStatus.DISPLACED)
        await ctx.conn.execute(
            sa.update(hostnames)
            .where(hostnames.c.host == host, hostnames.c.space_id == loser.space_id)
            .values(displaced_at=now, version=loser.version + 1)
        )
        await record_event(
            ctx.conn,
            space_id=loser.space_id,
            action="hostname_displaced",
            resource=f"space:{loser.space_id}/service:{loser.service_id}/hostname:{host}",
            outcome="displaced",
        )


async def adopt(ctx: Ctx, row: Any, service_id: str) -> Any:
    """Move the space's claim ``row`` to another service of the space (an app's manifest moved
    the hostname between two of its services); the claim and its proof stay as they are."""
    await ctx.conn.execute(
        sa.update(hostnames)
        .where(hostnames.c.host == row.host, hostnames.c.space_id == row.space_id)
        .values(service_id=service_id, version=row.version + 1)
    )
    return await own_claim(ctx.conn, row.host, row.space_id)


async def service_app(conn: AsyncConnection, service_id: str) -> tuple[str, str | None]:
    """``(name, app_name)`` of a service."""
    row = (
        await conn.execute(
            sa.select(services.c.name, services.c.app_name).where(services.c.id == service_id)
        )
    ).one()
    return str(row.name), row.app_name
