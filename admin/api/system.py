"""Operator endpoints: full route republish, and the audit log (per space and platform-wide;
filtered by ``?action=``, ``?outcome=`` and ``?principal=``, each an exact match).

What a row means (and which space it belongs to) is explained in :mod:`admin.audit`.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field

from admin.api.models import Strict
from admin.db import audit_log
from admin.errors import Forbidden, Unavailable
from admin.framework import Ctx, endpoint, paged
from admin.publisher import LeaseHeld


class ResyncResult(Strict):
    epoch: str
    published: int
    withdrawn: int
    hostnames: int
    seconds: float


class AuditRow(Strict):
    id: str
    at: int = Field(description="milliseconds since the epoch")
    principal_id: str | None = Field(description="who made the request")
    principal_kind: str | None = Field(
        description="user, service, system, or deployment (a managed deployment token, whose "
        "principal id is its deployment's id)"
    )
    space_id: str | None = Field(
        description="the space, once the caller was checked to be its member; null for "
        "platform actions and for requests refused before that (another space's, made-up)"
    )
    action: str = Field(description="the endpoint's operationId")
    resource: str
    request_id: str = Field(description="the server's id for the request (its X-Request-Id)")
    client_request_id: str | None = Field(
        description="the X-Request-Id the client sent, if it was valid"
    )
    outcome: str = Field(
        description="success, the error code of a failure, or audit_rate_limited (further "
        "failures of this principal in this minute are not recorded)"
    )


class AuditPage(BaseModel):
    items: list[AuditRow]
    next_cursor: str | None


AUDIT_FILTERS = (
    ("action", "string", "only rows of this action (an operationId, e.g. pause_rollout)"),
    ("outcome", "string", "only rows with this outcome (success, or an error code)"),
    ("principal", "string", "only rows of this principal id"),
)


def _filtered(ctx: Ctx, q: sa.Select[Any]) -> sa.Select[Any]:
    """``q`` narrowed by the ``AUDIT_FILTERS`` query parameters that were given."""
    for name, column in (
        ("action", audit_log.c.action),
        ("outcome", audit_log.c.outcome),
        ("principal", audit_log.c.principal_id),
    ):
        value = ctx.query_param(name)
        if value:
            q = q.where(column == value)
    return q


def _require_system(ctx: Ctx) -> None:
    # The scope alone is not enough: only the system principal administers the platform.
    if not ctx.principal.is_system_admin:
        raise Forbidden("only the system principal may do this")


def _audit_row(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": row.at,
        "principal_id": row.principal_id,
        "principal_kind": row.principal_kind,
        "space_id": row.space_id,
        "action": row.action,
        "resource": row.resource,
        "request_id": row.request_id,
        "client_request_id": row.client_request_id,
        "outcome": row.outcome,
    }


@endpoint(
    "POST",
    "/api/system/resync",
    scope="system:admin",
    response=ResyncResult,
    transactional=False,  # Publisher.resync opens its own transactions
    summary="Republish every route record from SQL under a new epoch",
)
async def resync(ctx: Ctx) -> dict[str, Any]:
    _require_system(ctx)
    ctx.resource = "system:routes"
    try:
        return await ctx.state.publisher.resync()
    except LeaseHeld as exc:
        raise Unavailable(f"{exc}; retry the resync there or in a few seconds") from None


@endpoint(
    "GET",
    "/api/spaces/{space}/audit",
    scope="spaces:read",
    role="admin",
    response=AuditPage,
    paged=True,
    query=AUDIT_FILTERS,
    tag="audit",
    summary="The space's audit log, oldest first: mutations by callers admitted to the space",
)
async def space_audit(ctx: Ctx) -> dict[str, Any]:
    q = sa.select(audit_log).where(audit_log.c.space_id == ctx.space_id)
    return await paged(ctx, _filtered(ctx, q), audit_log.c.id, _audit_row)


@endpoint(
    "GET",
    "/api/system/audit",
    scope="system:admin",
    response=AuditPage,
    paged=True,
    query=AUDIT_FILTERS,
    tag="audit",
    summary="The whole audit log, oldest first (also requests refused before a space was known)",
)
async def system_audit(ctx: Ctx) -> dict[str, Any]:
    _require_system(ctx)
    return await paged(ctx, _filtered(ctx, sa.select(audit_log)), audit_log.c.id, _audit_row)
