"""Live allocations (leases): open, end, extend, release, and how they show in answers.

One lease per pod (at most one un-ended row: a partial unique index), on one segment, with an
expiry; expired = dead. A heartbeat is one conditional ``UPDATE`` (``ended_at IS NULL AND
expires_at > now``) and takes no space lock; the reaper ends leases with the mirror-image
condition, so the two cannot both win (:mod:`admin.pods.maintenance`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from admin.db import new_id
from admin.pods.edges import LeaseEnd
from admin.pods.errors import LeaseExpired, LeaseMismatch
from admin.pods.records import LeaseRow, PodRow, get_pod, lease_row, load_state
from admin.pods.schema import pod_leases
from admin.pods.tx import PodTx


async def open_lease(tx: PodTx, pod_id: str, segment_id: str, parent: str | None) -> LeaseRow:
    """A new lease of ``pod_id`` on ``segment_id`` for the TTL (``parent``: the delegator)."""
    lease = LeaseRow(
        id=new_id("lse"),
        pod_id=pod_id,
        segment_id=segment_id,
        parent_pod_id=parent,
        created_at=tx.now,
        expires_at=tx.now + tx.lease_ms,
        ended_at=None,
        end_reason=None,
    )
    await tx.conn.execute(
        sa.insert(pod_leases).values(
            id=lease.id,
            space_id=tx.space_id,
            pod_id=pod_id,
            segment_id=segment_id,
            parent_pod_id=parent,
            created_at=tx.now,
            expires_at=lease.expires_at,
        )
    )
    return lease


async def end_leases(tx: PodTx, pod_id: str, reason: LeaseEnd) -> int:
    """End the pod's open lease (if any) for ``reason``; how many ended (0 or 1)."""
    res = await tx.conn.execute(
        sa.update(pod_leases)
        .where(pod_leases.c.pod_id == pod_id, pod_leases.c.ended_at.is_(None))
        .values(ended_at=tx.now, end_reason=reason.value)
    )
    return int(res.rowcount or 0)


async def live_leases(tx: PodTx, pod_ids: Sequence[str]) -> dict[str, LeaseRow]:
    """The live (open, unexpired) lease of each of ``pod_ids`` that has one."""
    if not pod_ids:
        return {}
    rows = await tx.conn.execute(
        sa.select(pod_leases).where(
            pod_leases.c.pod_id.in_(list(pod_ids)),
            pod_leases.c.ended_at.is_(None),
            pod_leases.c.expires_at > tx.now,
        )
    )
    return {r.pod_id: lease_row(r) for r in rows}


async def lease_of(conn: AsyncConnection, pod: PodRow, lease_id: str) -> LeaseRow:
    """The pod's lease ``lease_id`` (any state); ``lease_mismatch`` when it is not the pod's."""
    row = (
        await conn.execute(
            sa.select(pod_leases).where(pod_leases.c.id == lease_id, pod_leases.c.pod_id == pod.id)
        )
    ).first()
    if row is None:
        raise LeaseMismatch(
            f"{lease_id} is not a lease of pod {pod.name}", details={"lease_id": lease_id}
        )
    return lease_row(row)


def require_live(lease: LeaseRow, name: str, now: int) -> None:
    """``lease_mismatch`` (superseded) or ``lease_expired`` (ended, expired) unless live."""
    if lease.end_reason == LeaseEnd.SUPERSEDED.value:
        raise LeaseMismatch(
            f"lease {lease.id} of pod {name} was superseded by a later attach",
            details={"lease_id": lease.id},
        )
    if lease.ended_at is not None:
        raise LeaseExpired(
            f"lease {lease.id} of pod {name} ended ({lease.end_reason}); attach again",
            details={"lease_id": lease.id, "end_reason": lease.end_reason},
        )
    if lease.expires_at <= now:
        raise LeaseExpired(
            f"lease {lease.id} of pod {name} expired {now - lease.expires_at} ms ago; attach again",
            details={"lease_id": lease.id},
        )


async def heartbeat(
    conn: AsyncConnection, space_id: str, name: str, lease_id: str, now: int, lease_ms: int
) -> LeaseRow:
    """Extend a live lease by the TTL (no space lock: one conditional UPDATE, see records)."""
    pod = await get_pod(conn, space_id, name)
    lease = await lease_of(conn, pod, lease_id)
    require_live(lease, pod.name, now)
    res = await conn.execute(
        sa.update(pod_leases)
        .where(
            pod_leases.c.id == lease.id,
            pod_leases.c.ended_at.is_(None),
            pod_leases.c.expires_at > now,
        )
        .values(expires_at=now + lease_ms)
    )
    if res.rowcount != 1:  # ended or expired between the read and the update
        raise LeaseExpired(
            f"lease {lease.id} of pod {pod.name} ended meanwhile; attach again",
            details={"lease_id": lease.id},
        )
    return await lease_of(conn, pod, lease_id)


async def release(tx: PodTx, name: str, lease_id: str | None) -> LeaseRow | None:
    """End the pod's lease; its children's live allocations are re-parented to its parent.
    Delegations stay outstanding (a released pod's restore must still deny its live children's
    regions). Returns the lease that ended (None: there was none)."""
    await tx.lock()
    pod = await get_pod(tx.conn, tx.space_id, name)
    state = await load_state(tx.conn, pod)
    lease = state.lease
    if lease_id is not None and (lease is None or lease.id != lease_id):
        current = await lease_of(tx.conn, pod, lease_id)
        require_live(current, pod.name, tx.now)  # raises: ended, superseded or expired
    if lease is None:
        return None
    await end_leases(tx, pod.id, LeaseEnd.RELEASED)
    await tx.conn.execute(
        sa.update(pod_leases)
        .where(pod_leases.c.parent_pod_id == pod.id, pod_leases.c.ended_at.is_(None))
        .values(parent_pod_id=state.parent_id)
    )
    tx.touch(pod.id)
    return lease


def lease_json(lease: LeaseRow | None, now: int, names: dict[str, str]) -> dict[str, Any] | None:
    """A lease as answers show it (``names``: pod id -> name, for the parent)."""
    if lease is None:
        return None
    return {
        "id": lease.id,
        "segment_id": lease.segment_id,
        "parent": names.get(lease.parent_pod_id) if lease.parent_pod_id else None,
        "created_at": lease.created_at,
        "expires_at": lease.expires_at,
        "ended_at": lease.ended_at,
        "end_reason": lease.end_reason,
        "status": lease.status(now),
    }
