"""Audit rows: one per mutation, success or failure, written by the framework wrapper.

A row is ``{id, at, principal_id, principal_kind, space_id, action, resource, request_id,
client_request_id, outcome}``; ``principal_kind`` is ``user``, ``service``, ``system`` or
``deployment`` (a managed deployment token, :mod:`admin.managed`). ``request_id`` is the server's own id for the request (the ``X-Request-Id`` of the
answer); ``client_request_id`` is the ``X-Request-Id`` the client sent, if it was valid — never
mixed up, so a client cannot forge or collide with the server's ids.

Which space a row belongs to is decided by what the caller proved, not by the URL: ``space_id``
is set only once the framework has checked that the caller is a member of the path's space (or
the system admin). A request refused before that — 403 for a missing scope, 404 for a space that
is not the caller's or does not exist — is recorded against the caller alone (``space_id``
null, visible in ``/api/system/audit``), so an outsider cannot write into a victim space's log.
Failure rows are rate-limited per principal (:class:`admin.limits.WindowLimit`, per minute):
beyond the limit one ``audit_rate_limited`` row says that further failures of that minute are
not recorded, so the log cannot be grown without bound. Successful mutations are always
recorded.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from admin.db import audit_log, new_id, now_ms
from admin.limits import Verdict

if TYPE_CHECKING:
    from admin.app import AdminState

log = logging.getLogger("turnout.admin.audit")

RATE_LIMITED = "audit_rate_limited"
MAX_RESOURCE = 300


def _resource(text: str) -> str:
    # The URL path is client input: keep it printable (NUL would fail on PostgreSQL) and short.
    if not text.isprintable():
        text = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)
    return text[:MAX_RESOURCE]


@dataclass(frozen=True, slots=True)
class Entry:
    """One audit row's content (``id`` and ``at`` are added when it is written)."""

    principal_id: str | None
    space_id: str | None
    action: str
    resource: str
    request_id: str
    client_request_id: str | None
    outcome: str
    principal_kind: str | None = None


async def record(conn: AsyncConnection, entry: Entry) -> None:
    """Insert one audit row in ``conn``'s transaction."""
    await conn.execute(
        sa.insert(audit_log).values(
            id=new_id("aud"),
            at=now_ms(),
            **{**asdict(entry), "resource": _resource(entry.resource)},
        )
    )


async def record_failure(state: AdminState, entry: Entry) -> None:
    """A failed mutation's row, in a transaction of its own (the request's was rolled back),
    unless the principal is over its per-minute budget of failure rows."""
    verdict = state.audit_failures.check(entry.principal_id or "")
    if verdict is Verdict.DROP:
        return
    if verdict is Verdict.LAST:  # about the principal, not about any space
        entry = replace(
            entry,
            space_id=None,
            outcome=RATE_LIMITED,
            resource=f"more than {state.audit_failures.limit} failed requests this minute; "
            "further ones are not recorded until the next minute",
        )
    try:
        async with state.engine.begin() as conn:
            await record(conn, entry)
    except Exception as exc:  # auditing a failure must not turn it into a 500
        log.warning("could not audit a failed %s: %s", entry.action, type(exc).__name__)


async def record_event(
    conn: AsyncConnection,
    *,
    space_id: str,
    action: str,
    resource: str,
    outcome: str,
    principal_id: str | None = None,
) -> None:
    """An audit row in ``space_id``'s log for something that happened *to* that space because
    of another request (e.g. its hostname claim displaced by another space's proof). The row
    names no principal and carries a request id of its own, so nothing about the other request
    (its caller, its client-chosen ``X-Request-Id``) reaches this space."""
    await record(
        conn,
        Entry(
            principal_id=principal_id,
            space_id=space_id,
            action=action,
            resource=resource,
            request_id=f"event-{secrets.token_hex(8)}",
            client_request_id=None,
            outcome=outcome,
        ),
    )
