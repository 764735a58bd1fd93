"""Keeping the pod authority tidy: the lease reaper (a leader job) and ``pods:rebuild``.

The reaper, every ``TURNOUT_POD_REAP_INTERVAL`` seconds on the leader-lease holder only, ends
every lease whose expiry has passed and reclaims (``lease_expired``) the delegation of each pod
whose lease it ended. It finds candidates without a lock, then handles one space per
transaction under that space's lock, re-checking each lease there (``ended_at IS NULL AND
expires_at <= now``), so a heartbeat that got in first wins and a second reaper instance does
nothing twice.

Rebuild (``POST /api/spaces/{space}/pods:rebuild``): in one transaction under the space lock,
end the expired leases, then reclaim (``rebuild_prune``) every outstanding edge whose child is
dead — no live lease — until none is left (a reclaim re-parents grandchildren, who may be dead
too); after the commit, rewrite every mirror of the space that differs from what SQL implies
and delete mirrors of pods SQL does not know. It reports what it changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from admin.pods.authority import reclaim
from admin.pods.edges import EdgeState, LeaseEnd, ReclaimReason
from admin.pods.mirror import MirrorRecord, PodMirror, record_of
from admin.pods.records import edge_row, load_states, pod_names
from admin.pods.schema import pod_edges, pod_leases
from admin.pods.tx import PodTx


async def _expire(tx: PodTx, rows: list[Any]) -> list[dict[str, Any]]:
    """End each expired lease in ``rows`` that is still open and expired (conditional)."""
    ended: list[dict[str, Any]] = []
    for row in rows:
        res = await tx.conn.execute(
            sa.update(pod_leases)
            .where(
                pod_leases.c.id == row.id,
                pod_leases.c.ended_at.is_(None),
                pod_leases.c.expires_at <= tx.now,
            )
            .values(ended_at=tx.now, end_reason=LeaseEnd.EXPIRED.value)
        )
        if res.rowcount == 1:
            ended.append({"pod_id": row.pod_id, "lease_id": row.id})
            tx.touch(row.pod_id)
    names = await pod_names(tx.conn, [e["pod_id"] for e in ended])
    for e in ended:
        e["pod"] = names.get(e.pop("pod_id"), "?")
    return ended


async def _expired_leases(tx: PodTx) -> list[Any]:
    return list(
        (
            await tx.conn.execute(
                sa.select(pod_leases.c.id, pod_leases.c.pod_id).where(
                    pod_leases.c.space_id == tx.space_id,
                    pod_leases.c.ended_at.is_(None),
                    pod_leases.c.expires_at <= tx.now,
                )
            )
        ).all()
    )


async def reap_space(tx: PodTx) -> list[dict[str, Any]]:
    """End the space's expired leases and reclaim those pods' delegations (``lease_expired``)."""
    await tx.lock()
    ended = await _expire(tx, await _expired_leases(tx))
    ended_ids = {e["lease_id"] for e in ended}
    if ended_ids:
        pods_of = (
            await tx.conn.execute(
                sa.select(pod_leases.c.pod_id).where(pod_leases.c.id.in_(list(ended_ids)))
            )
        ).scalars()
        children = list(pods_of)
        rows = (
            await tx.conn.execute(
                sa.select(pod_edges).where(
                    pod_edges.c.child_pod_id.in_(children),
                    pod_edges.c.state == EdgeState.OUTSTANDING.value,
                )
            )
        ).all()
        for row in rows:
            await reclaim(tx, edge_row(row), ReclaimReason.LEASE_EXPIRED)
    return ended


async def spaces_with_expired_leases(conn: AsyncConnection, now: int) -> list[str]:
    rows = await conn.execute(
        sa.select(pod_leases.c.space_id)
        .distinct()
        .where(pod_leases.c.ended_at.is_(None), pod_leases.c.expires_at <= now)
    )
    return sorted(str(s) for s in rows.scalars())


async def rebuild_space(tx: PodTx) -> tuple[list[dict[str, Any]], list[MirrorRecord]]:
    """The SQL half of a rebuild; (leases ended, every pod's mirror record)."""
    await tx.lock()
    ended = await _expire(tx, await _expired_leases(tx))
    while True:
        rows = (
            await tx.conn.execute(
                sa.select(pod_edges)
                .outerjoin(
                    pod_leases,
                    sa.and_(
                        pod_leases.c.pod_id == pod_edges.c.child_pod_id,
                        pod_leases.c.ended_at.is_(None),
                        pod_leases.c.expires_at > tx.now,
                    ),
                )
                .where(
                    pod_edges.c.space_id == tx.space_id,
                    pod_edges.c.state == EdgeState.OUTSTANDING.value,
                    pod_leases.c.id.is_(None),
                )
                .order_by(pod_edges.c.id)
            )
        ).all()
        if not rows:
            break
        for row in rows:
            await reclaim(tx, edge_row(row), ReclaimReason.REBUILD_PRUNE)
    await tx.finish()
    states = await load_states(tx.conn, tx.space_id)
    return ended, [record_of(st) for st in states.values()]


@dataclass(slots=True)
class MirrorSync:
    checked: int = 0
    rewritten: int = 0
    deleted: int = 0
    problems: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "rewritten": self.rewritten,
            "deleted": self.deleted,
            "problems": dict(sorted(self.problems.items())),
        }


async def sync_mirrors(mirror: PodMirror, space_id: str, records: list[MirrorRecord]) -> MirrorSync:
    """Make the space's mirrors exactly what ``records`` say (the other half of a rebuild)."""
    out = MirrorSync()
    wanted = {mirror.key(r.space_id, r.name): r for r in records}
    for record in wanted.values():
        out.checked += 1
        raw = await mirror.raw(record.space_id, record.name)
        if raw is None:
            problem: str | None = "miss"
        else:
            read = mirror.decode(raw, record.space_id, record.name)
            problem = read.problem
            if read.record is not None and read.record.data() != record.data():
                problem = "stale"
        if problem is None:
            continue
        out.problems[problem] = out.problems.get(problem, 0) + 1
        await mirror.write(record)
        out.rewritten += 1
    stray = [k for k in await mirror.keys_of_space(space_id) if k not in wanted]
    if stray:
        out.deleted = await mirror.delete_keys(stray)
    return out


async def reap(
    engine: AsyncEngine, now: int, lease_ms: int
) -> tuple[dict[str, Any], list[MirrorRecord]]:
    """One reaper pass over every space; (report, mirrors to write)."""
    async with engine.connect() as conn:
        space_ids = await spaces_with_expired_leases(conn, now)
    report: dict[str, Any] = {"spaces": len(space_ids), "leases_ended": [], "reclaimed": []}
    records: list[MirrorRecord] = []
    for space_id in space_ids:
        async with engine.begin() as conn:
            tx = PodTx(conn, space_id, now, lease_ms)
            report["leases_ended"] += await reap_space(tx)
            records += await tx.finish()
            report["reclaimed"] += tx.reclaimed
    return report, records
