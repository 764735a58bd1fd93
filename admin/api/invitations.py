"""Invitations: a principal joins a space only by accepting (states: admin/invitations/states.py).

A space admin ``POST``\\ s a principal id to the space's members. Unless the caller is the system
admin (the operator, who can already issue that principal's tokens, so consent would guard
nothing against it), that creates a pending invitation and answers **202** with it: the
principal is not a member yet, the space sees nothing about it but the id it typed (no name,
no kind), and the invitee's ``GET /api/spaces`` does not list the space. The invitee sees its
invitations at ``GET /api/invitations`` (with the space's name) and accepts or declines them;
an admin of the space can list and cancel the space's invitations. Someone else's invitation
is as unknown as a made-up id (404). Unanswered invitations expire after a week.

An unknown principal id is still a 422 (a typo deserves a clear answer): ids carry 80 random
bits, so this tells nothing that could be enumerated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel

from admin.api.models import Strict
from admin.audit import record_event
from admin.db import memberships, new_id, now_ms, spaces
from admin.errors import Conflict, NotFound, field_error
from admin.framework import Ctx, endpoint, etag, paged
from admin.invitations.schema import invitations
from admin.invitations.states import (
    INVITATION_TTL_MS,
    InvitationStatus,
    effective,
    transition,
)

_STATUSES = ", ".join(s.value for s in InvitationStatus)


class Invitation(Strict):
    """An invitation as the inviting space sees it (nothing about the invitee but its id)."""

    id: str
    space_id: str
    principal_id: str
    role: str
    status: InvitationStatus
    invited_by: str | None
    etag: str
    created_at: int
    expires_at: int
    answered_at: int | None


class ReceivedInvitation(Strict):
    """An invitation as its invitee sees it."""

    id: str
    space_id: str
    space_name: str
    space_kind: str
    role: str
    status: InvitationStatus
    created_at: int
    expires_at: int
    answered_at: int | None


class InvitationPage(BaseModel):
    items: list[Invitation]
    next_cursor: str | None


class ReceivedInvitationPage(BaseModel):
    items: list[ReceivedInvitation]
    next_cursor: str | None


def _invitation(row: Any, now: int) -> dict[str, Any]:
    return {
        "id": row.id,
        "space_id": row.space_id,
        "principal_id": row.principal_id,
        "role": row.role,
        "status": effective(row.status, row.expires_at, now).value,
        "invited_by": row.invited_by,
        "etag": etag(row.id, row.version),
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "answered_at": row.answered_at,
    }


def _received(row: Any, now: int) -> dict[str, Any]:
    return {
        "id": row.id,
        "space_id": row.space_id,
        "space_name": row.space_name,
        "space_kind": row.space_kind,
        "role": row.role,
        "status": effective(row.status, row.expires_at, now).value,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "answered_at": row.answered_at,
    }


_RECEIVED_Q = sa.select(
    invitations,
    spaces.c.name.label("space_name"),
    spaces.c.kind.label("space_kind"),
).join(spaces, spaces.c.id == invitations.c.space_id)


def _status_filter(ctx: Ctx) -> InvitationStatus | None:
    raw = ctx.query_param("status")
    if raw is None:
        return None
    try:
        return InvitationStatus(raw)
    except ValueError:
        raise field_error("query.status", f"must be one of {_STATUSES}") from None


def _where_status(query: sa.Select[Any], wanted: InvitationStatus | None, now: int) -> Any:
    """Filter on the *effective* status (a pending row past its expiry counts as expired)."""
    if wanted is None:
        return query
    pending = invitations.c.status == InvitationStatus.PENDING.value
    if wanted is InvitationStatus.PENDING:
        return query.where(pending, invitations.c.expires_at > now)
    if wanted is InvitationStatus.EXPIRED:
        return query.where(
            sa.or_(
                invitations.c.status == wanted.value,
                sa.and_(pending, invitations.c.expires_at <= now),
            )
        )
    return query.where(invitations.c.status == wanted.value)


async def _page(
    ctx: Ctx, query: sa.Select[Any], render: Callable[[Any, int], dict[str, Any]]
) -> dict[str, Any]:
    """One page of ``query``'s invitations, ``?status=`` applied (by effective status)."""
    now = now_ms()
    q = _where_status(query, _status_filter(ctx), now)
    return await paged(ctx, q, invitations.c.id, lambda r: render(r, now))


async def invite(ctx: Ctx, principal_id: str, role: str) -> dict[str, Any]:
    """A pending invitation of ``principal_id`` to the request's space (202)."""
    now = now_ms()
    pending = (
        await ctx.conn.execute(
            sa.select(invitations).where(
                invitations.c.space_id == ctx.space_id,
                invitations.c.principal_id == principal_id,
                invitations.c.status == InvitationStatus.PENDING.value,
            )
        )
    ).first()
    if pending is not None:
        if effective(pending.status, pending.expires_at, now) is InvitationStatus.PENDING:
            raise Conflict(
                "this principal already has a pending invitation to the space; cancel it "
                "first to invite it with another role",
                code="invitation_pending",
                details={"invitation_id": pending.id},
            )
        await _set_status(ctx, pending, InvitationStatus.EXPIRED, None)
    inv_id = new_id("inv")
    await ctx.conn.execute(
        sa.insert(invitations).values(
            id=inv_id,
            space_id=ctx.space_id,
            principal_id=principal_id,
            role=role,
            invited_by=ctx.principal.id,
            status=InvitationStatus.PENDING.value,
            created_at=now,
            expires_at=now + INVITATION_TTL_MS,
        )
    )
    ctx.resource = f"space:{ctx.space_id}/invitation:{inv_id}"
    ctx.status = 202
    row = (await ctx.conn.execute(sa.select(invitations).where(invitations.c.id == inv_id))).one()
    ctx.headers["etag"] = etag(row.id, row.version)
    return _invitation(row, now)


async def _set_status(
    ctx: Ctx, row: Any, target: InvitationStatus, answered_at: int | None
) -> None:
    """Move ``row`` to ``target`` under optimistic locking (409 if it changed meanwhile)."""
    transition(InvitationStatus(row.status), target)
    res = await ctx.conn.execute(
        sa.update(invitations)
        .where(invitations.c.id == row.id, invitations.c.version == row.version)
        .values(status=target.value, answered_at=answered_at, version=row.version + 1)
    )
    if res.rowcount != 1:
        raise Conflict("the invitation changed concurrently; read it again")


def _answerable(row: Any, now: int) -> None:
    """409 unless ``row`` is still pending (expired ones are written down by :func:`invite`)."""
    status = effective(row.status, row.expires_at, now)
    if status is not InvitationStatus.PENDING:
        raise Conflict(
            f"the invitation is {status}; only a pending invitation can be answered or cancelled",
            code=f"invitation_{status}",
            details={"status": status.value},
        )


# ------------------------------------------------------------------------------ the space's


@endpoint(
    "GET",
    "/api/spaces/{space}/invitations",
    scope="spaces:read",
    role="admin",
    response=InvitationPage,
    paged=True,
    query=(("status", "string", f"only invitations in this state ({_STATUSES})"),),
    summary="List the space's invitations (who was invited, by whom, and what became of it)",
)
async def list_space_invitations(ctx: Ctx) -> dict[str, Any]:
    query = sa.select(invitations).where(invitations.c.space_id == ctx.space_id)
    return await _page(ctx, query, _invitation)


@endpoint(
    "DELETE",
    "/api/spaces/{space}/invitations/{invitation}",
    scope="spaces:write",
    role="admin",
    status=204,
    summary="Cancel a pending invitation (If-Match honoured)",
)
async def cancel_invitation(ctx: Ctx) -> None:
    inv_id = ctx.params["invitation"]
    row = (
        await ctx.conn.execute(
            sa.select(invitations).where(
                invitations.c.id == inv_id, invitations.c.space_id == ctx.space_id
            )
        )
    ).first()
    if row is None:
        raise NotFound(f"invitation {inv_id} not found")
    ctx.if_match(etag(row.id, row.version))
    ctx.resource = f"space:{ctx.space_id}/invitation:{row.id}"
    now = now_ms()
    _answerable(row, now)
    await _set_status(ctx, row, InvitationStatus.CANCELLED, now)


# ------------------------------------------------------------------------------ the invitee's


async def _load_received(ctx: Ctx) -> Any:
    inv_id = ctx.params["invitation"]
    row = (
        await ctx.conn.execute(
            _RECEIVED_Q.where(
                invitations.c.id == inv_id, invitations.c.principal_id == ctx.principal.id
            )
        )
    ).first()
    if row is None:  # someone else's invitation is as unknown as a made-up id
        raise NotFound(f"invitation {inv_id} not found")
    return row


@endpoint(
    "GET",
    "/api/invitations",
    scope="spaces:read",
    response=ReceivedInvitationPage,
    paged=True,
    query=(("status", "string", f"only invitations in this state ({_STATUSES})"),),
    summary="List the invitations the caller received (accept or decline them)",
)
async def list_invitations(ctx: Ctx) -> dict[str, Any]:
    query = _RECEIVED_Q.where(invitations.c.principal_id == ctx.principal.id)
    return await _page(ctx, query, _received)


async def _answer(ctx: Ctx, target: InvitationStatus) -> dict[str, Any]:
    row = await _load_received(ctx)
    ctx.resource = f"space:{row.space_id}/invitation:{row.id}"
    now = now_ms()
    _answerable(row, now)
    if target is InvitationStatus.ACCEPTED:
        member = (
            await ctx.conn.execute(
                sa.select(memberships.c.role).where(
                    memberships.c.space_id == row.space_id,
                    memberships.c.principal_id == ctx.principal.id,
                )
            )
        ).first()
        if member is not None:
            raise Conflict(
                f"already a member of this space (role {member.role})", code="already_member"
            )
        await ctx.conn.execute(
            sa.insert(memberships).values(
                space_id=row.space_id,
                principal_id=ctx.principal.id,
                role=row.role,
                created_at=now,
            )
        )
    await _set_status(ctx, row, target, now)
    await record_event(
        ctx.conn,
        space_id=row.space_id,
        action=f"invitation_{target.value}",
        resource=f"space:{row.space_id}/invitation:{row.id}",
        outcome="success",
        principal_id=ctx.principal.id,
    )
    return _received(await _load_received(ctx), now)


@endpoint(
    "POST",
    "/api/invitations/{invitation}/accept",
    scope="spaces:write",
    response=ReceivedInvitation,
    summary="Accept an invitation: the caller becomes a member with the invitation's role",
)
async def accept_invitation(ctx: Ctx) -> dict[str, Any]:
    return await _answer(ctx, InvitationStatus.ACCEPTED)


@endpoint(
    "POST",
    "/api/invitations/{invitation}/decline",
    scope="spaces:write",
    response=ReceivedInvitation,
    summary="Decline an invitation",
)
async def decline_invitation(ctx: Ctx) -> dict[str, Any]:
    return await _answer(ctx, InvitationStatus.DECLINED)
