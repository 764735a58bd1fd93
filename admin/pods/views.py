"""What the API and the CLI show of a pod, rendered from SQL (the authority, never the mirror)."""

from __future__ import annotations

from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from admin.pods.algebra import rules_json
from admin.pods.edges import EdgeState
from admin.pods.leases import lease_json
from admin.pods.records import EdgeRow, PodState, edge_row, lease_row, pod_names
from admin.pods.schema import pod_edges, pod_leases, pod_segments

MAX_LINEAGE: Final = 100
MAX_CHILDREN: Final = 500


def etag_of(state: PodState) -> str:
    return f'"{state.pod.id}.{state.pod.version}"'


def edge_json(edge: EdgeRow, names: dict[str, str], live: bool | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": edge.id,
        "parent": names.get(edge.parent_pod_id, edge.parent_pod_id),
        "child": names.get(edge.child_pod_id, edge.child_pod_id),
        "rules": rules_json(edge.rules),
        "state": edge.state.value,
        "reason": edge.reason,
        "created_at": edge.created_at,
        "reclaimed_at": edge.reclaimed_at,
        "delegated_by": names.get(edge.first_parent_id, edge.first_parent_id),
        "reparented_at": edge.reparented_at,
    }
    if live is not None:
        out["live"] = live
    return out


def summary(state: PodState, now: int) -> dict[str, Any]:
    """A pod as a list shows it (and the head of the full view)."""
    pod = state.pod
    return {
        "id": pod.id,
        "name": pod.name,
        "state": state.status(),
        "live": state.lease is not None and state.lease.live(now),
        "parent": state.names.get(state.parent_id) if state.parent_id else None,
        "version": pod.version,
        "etag": etag_of(state),
        "scope": pod.base.to_json(),
        "grant": rules_json(pod.grant),
        "effective": state.effective().to_json(),
        "lease": lease_json(state.lease, now, state.names),
        "session_id": pod.session_id,
        "segment_id": pod.segment_id,
        "created_at": pod.created_at,
        "updated_at": pod.updated_at,
    }


async def lineage(
    conn: AsyncConnection,
    space_id: str,
    segment_id: str | None,
    known: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The active segment and the segments it continues, newest first (at most 100)."""
    if segment_id is None:
        return []
    seg = pod_segments
    cols = (seg.c.id, seg.c.kind, seg.c.parent_id, seg.c.session_id, seg.c.pod_id, seg.c.created_at)
    walk = (
        sa.select(*cols, sa.literal(0).label("depth"))
        .where(seg.c.space_id == space_id, seg.c.id == segment_id)
        .cte("lineage", recursive=True)
    )
    walk = walk.union_all(
        sa.select(*cols, (walk.c.depth + 1).label("depth")).where(
            seg.c.id == walk.c.parent_id,
            seg.c.space_id == space_id,
            walk.c.depth < MAX_LINEAGE - 1,
        )
    )
    rows = (await conn.execute(sa.select(walk).order_by(walk.c.depth))).all()
    names = dict(known or {})
    unknown_pods = {r.pod_id for r in rows} - names.keys()
    if unknown_pods:
        names.update(await pod_names(conn, list(unknown_pods)))
    return [
        {
            "id": r.id,
            "kind": r.kind,
            "parent_id": r.parent_id,
            "session_id": r.session_id,
            "pod": names.get(r.pod_id, r.pod_id),
            "created_at": r.created_at,
        }
        for r in rows
    ]


async def full(conn: AsyncConnection, state: PodState, now: int) -> dict[str, Any]:
    """Everything about one pod: base scope, delegated-out rules, effective scope, children with
    edge states, lease, segment lineage and reclaim history."""
    pod = state.pod
    out = summary(state, now)
    rows = (
        await conn.execute(
            sa.select(pod_edges)
            .where(pod_edges.c.parent_pod_id == pod.id)
            .order_by(pod_edges.c.created_at.desc(), pod_edges.c.id.desc())
            .limit(MAX_CHILDREN + 1)
        )
    ).all()
    edges = [edge_row(r) for r in rows[:MAX_CHILDREN]]
    child_ids = [e.child_pod_id for e in edges]
    live: set[str] = set()
    if child_ids:
        live = {
            str(r.pod_id)
            for r in await conn.execute(
                sa.select(pod_leases.c.pod_id).where(
                    pod_leases.c.pod_id.in_(child_ids),
                    pod_leases.c.ended_at.is_(None),
                    pod_leases.c.expires_at > now,
                )
            )
        }
    names = dict(state.names)
    unknown = {i for e in edges for i in (e.child_pod_id, e.first_parent_id)} - names.keys()
    if unknown:
        names.update(await pod_names(conn, list(unknown)))
    if state.lease is None:  # show the last lease that ended, if any
        last = (
            await conn.execute(
                sa.select(pod_leases)
                .where(pod_leases.c.pod_id == pod.id)
                .order_by(pod_leases.c.created_at.desc(), pod_leases.c.id.desc())
                .limit(1)
            )
        ).first()
        if last is not None:
            lease = lease_row(last)
            if lease.parent_pod_id:
                names.update(await pod_names(conn, [lease.parent_pod_id]))
            out["lease"] = lease_json(lease, now, names)
    out["delegation"] = edge_json(state.in_edge, names) if state.in_edge is not None else None
    out["delegated"] = [
        {"edge_id": e.id, "child": names.get(e.child_pod_id), "rules": rules_json(e.rules)}
        for e in state.out_edges
    ]
    out["children"] = [edge_json(e, names, e.child_pod_id in live) for e in edges]
    out["children_truncated"] = len(rows) > MAX_CHILDREN
    out["reclaim_history"] = sorted(
        (
            {
                "edge_id": e.id,
                "child": names.get(e.child_pod_id),
                "rules": rules_json(e.rules),
                "reason": e.reason,
                "reclaimed_at": e.reclaimed_at,
            }
            for e in edges
            if e.state is EdgeState.RECLAIMED
        ),
        key=lambda h: (h["reclaimed_at"] or 0, h["edge_id"]),
    )
    out["lineage"] = await lineage(conn, pod.space_id, pod.segment_id, names)
    return out
