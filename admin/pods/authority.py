"""The pod scope authority's operations, each inside one SQL transaction (a :class:`PodTx`).

Operations (``shared/spec/pod-scope.md``): :func:`create`, :func:`attach` (restore by name,
with the reconcile that prunes dead children), :func:`new_segment` (compact / fork),
:func:`spawn` (delegate), :func:`stop_child`, :func:`shutdown`, and :func:`reclaim` with its
cascade, which the lease reaper and rebuild (:mod:`admin.pods.maintenance`) use too; leases
(heartbeat, release) are in :mod:`admin.pods.leases`, write conflicts in
:mod:`admin.pods.conflicts`. Nothing here reads a mirror.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from admin.db import new_id
from admin.pods.algebra import (
    Perm,
    Rule,
    Scope,
    Shortfall,
    dedupe,
    render_path,
    rules_json,
    shortfall,
)
from admin.pods.conflicts import conflict_error, write_conflicts
from admin.pods.edges import EdgeEvent, EdgeState, LeaseEnd, ReclaimReason, transition
from admin.pods.errors import (
    NotAChild,
    NotSubset,
    PodExists,
    PodInactive,
    PodPending,
    SegmentConflict,
    SegmentMissing,
    SnapshotCorrupt,
)
from admin.pods.leases import end_leases, live_leases, open_lease
from admin.pods.records import (
    EdgeRow,
    LeaseRow,
    PodRow,
    PodState,
    edge_row,
    get_pod,
    load_state,
    pod_names,
)
from admin.pods.schema import (
    pod_edges,
    pod_leases,
    pod_segments,
    pod_sessions,
    pod_write_targets,
    pods,
)
from admin.pods.tx import PodTx

MAX_NAME: Final = 128


def check_name(name: str) -> str:
    """Pod names: non-empty, at most 128 characters, no ``/``, not ``.``/``..``, no control
    characters. Returns the name; raises ValueError with the reason."""
    if not name:
        raise ValueError("must not be empty")
    if len(name) > MAX_NAME:
        raise ValueError(f"at most {MAX_NAME} characters")
    if "/" in name:
        raise ValueError("must not contain '/'")
    if name in (".", ".."):
        raise ValueError("must not be '.' or '..'")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ValueError("must not contain control characters")
    return name


# ------------------------------------------------------------------------------ helpers


async def _insert_pod(
    tx: PodTx, name: str, allow: Sequence[Rule], deny: Sequence[Rule], grant: Sequence[Rule]
) -> tuple[str, str]:
    """A pod with its first session and root segment, the pointer set; (pod id, segment id)."""
    taken = (
        await tx.conn.execute(
            sa.select(pods.c.id).where(pods.c.space_id == tx.space_id, pods.c.name == name)
        )
    ).first()
    if taken is not None:
        raise PodExists(f"a pod named {name} already exists in this space", details={"pod": name})
    pod_id, session_id, segment_id = new_id("pod"), new_id("pss"), new_id("seg")
    await tx.conn.execute(
        sa.insert(pods).values(
            id=pod_id,
            space_id=tx.space_id,
            name=name,
            base_allow=orjson.dumps(rules_json(allow)).decode(),
            base_deny=orjson.dumps(rules_json(deny)).decode(),
            grant_rules=orjson.dumps(rules_json(grant)).decode(),
            session_id=session_id,
            segment_id=segment_id,
            version=0,  # finish() bumps every touched pod: the first visible version is 1
            created_at=tx.now,
            updated_at=tx.now,
        )
    )
    await tx.conn.execute(
        sa.insert(pod_sessions).values(
            id=session_id, space_id=tx.space_id, pod_id=pod_id, created_at=tx.now
        )
    )
    await tx.conn.execute(
        sa.insert(pod_segments).values(
            id=segment_id,
            space_id=tx.space_id,
            pod_id=pod_id,
            session_id=session_id,
            kind="root",
            created_at=tx.now,
        )
    )
    targets = sorted({r.target for r in allow if r.permission is Perm.WRITE})
    if targets:
        await tx.conn.execute(
            sa.insert(pod_write_targets),
            [{"pod_id": pod_id, "target": t, "space_id": tx.space_id} for t in targets],
        )
    tx.touch(pod_id)
    return pod_id, segment_id


async def _segment(conn: AsyncConnection, space_id: str, segment_id: str) -> Any:
    return (
        await conn.execute(
            sa.select(pod_segments).where(
                pod_segments.c.space_id == space_id, pod_segments.c.id == segment_id
            )
        )
    ).first()


async def _segment_holder(tx: PodTx, segment_id: str, pod_id: str) -> tuple[str, str] | None:
    """(pod name, lease id) of another pod's live lease on the segment, if any."""
    row = (
        await tx.conn.execute(
            sa.select(pod_leases.c.id, pods.c.name)
            .join(pods, pods.c.id == pod_leases.c.pod_id)
            .where(
                pod_leases.c.segment_id == segment_id,
                pod_leases.c.pod_id != pod_id,
                pod_leases.c.ended_at.is_(None),
                pod_leases.c.expires_at > tx.now,
            )
        )
    ).first()
    return None if row is None else (str(row.name), str(row.id))


def _not_segment_writer(tx: PodTx, holder: tuple[str, str] | None, segment_id: str) -> None:
    if holder is not None:
        raise SegmentConflict(
            f"segment {segment_id} is written by live pod {holder[0]} (lease {holder[1]})",
            details={"segment_id": segment_id, "pod": holder[0], "lease_id": holder[1]},
        )


def _require_active(state: PodState) -> None:
    pod = state.pod
    if state.retired:
        edge = state.in_edge
        assert edge is not None
        raise PodInactive(
            f"pod {pod.name} was reclaimed ({edge.reason}) by "
            f"{state.names.get(edge.parent_pod_id, edge.parent_pod_id)}: its pointer was cleared "
            "and it holds no scope",
            details={"pod": pod.name, "reason": edge.reason},
        )
    if pod.session_id is None:
        raise PodInactive(
            f"pod {pod.name} has no active session pointer", details={"pod": pod.name}
        )
    if pod.segment_id is None:
        raise PodPending(
            f"the active session {pod.session_id} of pod {pod.name} has no first segment yet",
            details={"pod": pod.name, "session_id": pod.session_id},
        )


async def _pointer_segment(tx: PodTx, pod: PodRow) -> Any:
    """The segment the pod's pointer names; SnapshotCorrupt when the pointer dangles."""
    assert pod.segment_id is not None
    seg = await _segment(tx.conn, tx.space_id, pod.segment_id)
    if seg is None or seg.session_id != pod.session_id:
        raise SnapshotCorrupt(
            f"the active pointer of pod {pod.name} names segment {pod.segment_id} of session "
            f"{pod.session_id}, which SQL does not hold",
            details={"pod": pod.name, "segment_id": pod.segment_id},
        )
    return seg


# ------------------------------------------------------------------------------ reclaim


async def reclaim(tx: PodTx, edge: EdgeRow, reason: ReclaimReason) -> bool:
    """Reclaim ``edge`` exactly once: the edge becomes ``reclaimed``, the child's lease ends and
    its pointer is cleared, its outstanding edges are re-parented to ``edge``'s parent. False
    (and nothing written) when the edge was reclaimed already."""
    _, changed = transition(edge.state, EdgeEvent.RECLAIM)
    if not changed:
        return False
    res = await tx.conn.execute(
        sa.update(pod_edges)
        .where(pod_edges.c.id == edge.id, pod_edges.c.state == EdgeState.OUTSTANDING.value)
        .values(state=EdgeState.RECLAIMED.value, reason=reason.value, reclaimed_at=tx.now)
    )
    if res.rowcount != 1:
        return False
    child, parent = edge.child_pod_id, edge.parent_pod_id
    await end_leases(tx, child, LeaseEnd.RECLAIMED)
    await tx.conn.execute(
        sa.update(pods).where(pods.c.id == child).values(session_id=None, segment_id=None)
    )
    grandchildren = (
        await tx.conn.execute(
            sa.select(pod_edges).where(
                pod_edges.c.parent_pod_id == child,
                pod_edges.c.state == EdgeState.OUTSTANDING.value,
            )
        )
    ).all()
    for row in grandchildren:
        transition(row.state, EdgeEvent.REPARENT)
        await tx.conn.execute(
            sa.update(pod_edges)
            .where(pod_edges.c.id == row.id, pod_edges.c.state == EdgeState.OUTSTANDING.value)
            .values(parent_pod_id=parent, reparented_at=tx.now)
        )
    await tx.conn.execute(
        sa.update(pod_leases)
        .where(pod_leases.c.parent_pod_id == child, pod_leases.c.ended_at.is_(None))
        .values(parent_pod_id=parent)
    )
    names = await pod_names(tx.conn, [child, parent])
    tx.reclaimed.append(
        {
            "edge_id": edge.id,
            "child": names.get(child, child),
            "parent": names.get(parent, parent),
            "rules": rules_json(edge.rules),
            "reason": reason.value,
            "reparented": len(grandchildren),
        }
    )
    tx.touch(child, parent)
    return True


async def prune_dead_children(tx: PodTx, state: PodState, reason: ReclaimReason) -> PodState:
    """Reclaim every outstanding child of ``state``'s pod that has no live lease — also the
    grandchildren a reclaim re-parents to it, when they are dead too. Returns the state after."""
    while True:
        live = await live_leases(tx, [e.child_pod_id for e in state.out_edges])
        dead = [e for e in state.out_edges if e.child_pod_id not in live]
        if not dead:
            return state
        for edge in dead:
            await reclaim(tx, edge, reason)
        state = await load_state(tx.conn, state.pod)


# ------------------------------------------------------------------------------ conflicts


def _not_subset(short: Shortfall, field: str, whose: str) -> NotSubset:
    """422 naming the rule, the path and — when a child holds it — the child."""
    layer = short.decision.layer
    return NotSubset(
        f"{field}[{short.rule_index}]: " + short.describe(whose),
        f"body.{field}[{short.rule_index}]",
        rule=short.rule.to_json(),
        path=render_path(short.path),
        holder=layer.child if layer is not None else None,
    )


# ------------------------------------------------------------------------------ operations


async def create(
    tx: PodTx, name: str, allow: Sequence[Rule], deny: Sequence[Rule], grant: Sequence[Rule]
) -> str:
    """A root pod with base scope and grant (the grant within the base allow); its id."""
    await tx.lock()
    allow, grant = dedupe(allow), dedupe(grant)
    short = shortfall(grant, Scope.of(allow))
    if short is not None:
        raise _not_subset(short, "grant", "the base allow")
    pod_id, _segment_id = await _insert_pod(tx, name, allow, deny, grant)
    return pod_id


async def spawn(
    tx: PodTx, parent_name: str, child_name: str, rules: Sequence[Rule], grant: Sequence[Rule]
) -> tuple[PodState, LeaseRow, str]:
    """Delegate ``rules`` from the parent to a new child pod (with its first lease).

    Rules must lie within the parent's grant and its current effective scope (422
    ``not_subset``; an explicit deny reopened by a grant rule inside it does not bind, see
    :func:`admin.pods.algebra.shortfall`); no live pod other than the parent may hold an overlapping write region
    (409 ``write_conflict``). Returns the parent's state before, the child's lease, the edge id.
    """
    await tx.lock()
    parent = await get_pod(tx.conn, tx.space_id, parent_name)
    state = await load_state(tx.conn, parent)
    if state.retired:
        _require_active(state)  # raises: a reclaimed pod holds nothing to hand on
    rules, grant = dedupe(rules), dedupe(grant)
    for scope, grant_, whose in (
        (Scope.of(parent.grant), None, f"the grant of {parent.name}"),
        (state.effective(), parent.grant, f"the effective scope of {parent.name}"),
    ):
        short = shortfall(rules, scope, grant_)
        if short is not None:
            raise _not_subset(short, "rules", whose)
    short = shortfall(grant, Scope.of(rules))
    if short is not None:
        raise _not_subset(short, "grant", "the delegated rules")
    request = Scope.of(r for r in rules if r.permission is Perm.WRITE)
    found = await write_conflicts(tx, request, {parent.id})
    if found:
        raise conflict_error(request, found, f"delegating to {child_name}")
    child_id, segment_id = await _insert_pod(tx, child_name, rules, (), grant)
    edge_id = new_id("edg")
    await tx.conn.execute(
        sa.insert(pod_edges).values(
            id=edge_id,
            space_id=tx.space_id,
            parent_pod_id=parent.id,
            child_pod_id=child_id,
            rules=orjson.dumps(rules_json(rules)).decode(),
            state=EdgeState.OUTSTANDING.value,
            created_at=tx.now,
            first_parent_id=parent.id,
        )
    )
    lease = await open_lease(tx, child_id, segment_id, parent.id)
    tx.touch(parent.id, child_id)
    return state, lease, edge_id


async def attach(tx: PodTx, name: str, segment_id: str | None) -> tuple[PodState, LeaseRow, Scope]:
    """Restore by name: resolve the pod, register a lease with its effective scope on its
    segment (or ``segment_id``), and reclaim its dead children (``restore_prune``). Live
    children keep their regions. Returns the state after, the lease and the effective scope."""
    await tx.lock()
    pod = await get_pod(tx.conn, tx.space_id, name)
    state = await load_state(tx.conn, pod)
    _require_active(state)
    if segment_id is None:
        seg = await _pointer_segment(tx, pod)
    else:
        seg = await _segment(tx.conn, tx.space_id, segment_id)
        if seg is None:
            raise SegmentMissing(
                f"no segment {segment_id} in this space", details={"segment_id": segment_id}
            )
    _not_segment_writer(tx, await _segment_holder(tx, seg.id, pod.id), seg.id)
    await end_leases(tx, pod.id, LeaseEnd.SUPERSEDED)
    state = await prune_dead_children(tx, state, ReclaimReason.RESTORE_PRUNE)
    scope = state.effective()
    found = await write_conflicts(tx, scope, {pod.id})
    if found:
        raise conflict_error(scope, found, f"pod {pod.name}")
    if seg.id != pod.segment_id:
        await tx.conn.execute(
            sa.update(pods)
            .where(pods.c.id == pod.id)
            .values(session_id=seg.session_id, segment_id=seg.id)
        )
    lease = await open_lease(tx, pod.id, seg.id, state.parent_id)
    tx.touch(pod.id)
    return state, lease, scope


async def new_segment(tx: PodTx, name: str, kind: str) -> tuple[str, str]:
    """Compact (a new segment in the session) or fork (a new session whose first segment
    continues the current one); the pointer and the pod's lease move. Scope is untouched.
    Returns (session id, segment id)."""
    assert kind in ("compact", "fork")
    await tx.lock()
    pod = await get_pod(tx.conn, tx.space_id, name)
    state = await load_state(tx.conn, pod)
    _require_active(state)
    current = await _pointer_segment(tx, pod)
    _not_segment_writer(tx, await _segment_holder(tx, current.id, pod.id), current.id)
    session_id = str(current.session_id)
    if kind == "fork":
        session_id = new_id("pss")
        await tx.conn.execute(
            sa.insert(pod_sessions).values(
                id=session_id,
                space_id=tx.space_id,
                pod_id=pod.id,
                forked_from=current.id,
                created_at=tx.now,
            )
        )
    segment_id = new_id("seg")
    await tx.conn.execute(
        sa.insert(pod_segments).values(
            id=segment_id,
            space_id=tx.space_id,
            pod_id=pod.id,
            session_id=session_id,
            kind=kind,
            parent_id=current.id,
            created_at=tx.now,
        )
    )
    await tx.conn.execute(
        sa.update(pods)
        .where(pods.c.id == pod.id)
        .values(session_id=session_id, segment_id=segment_id)
    )
    await tx.conn.execute(
        sa.update(pod_leases)
        .where(pod_leases.c.pod_id == pod.id, pod_leases.c.ended_at.is_(None))
        .values(segment_id=segment_id)
    )
    tx.touch(pod.id)
    return session_id, segment_id


async def _in_edge(tx: PodTx, child: PodRow) -> EdgeRow | None:
    row = (
        await tx.conn.execute(sa.select(pod_edges).where(pod_edges.c.child_pod_id == child.id))
    ).first()
    return None if row is None else edge_row(row)


async def stop_child(tx: PodTx, parent_name: str, child_name: str) -> tuple[EdgeRow, bool]:
    """The parent stops its child: reclaim (``stop``); a second stop changes nothing."""
    await tx.lock()
    parent = await get_pod(tx.conn, tx.space_id, parent_name)
    child = await get_pod(tx.conn, tx.space_id, child_name)
    edge = await _in_edge(tx, child)
    if edge is None or edge.parent_pod_id != parent.id:
        holder = None
        if edge is not None:
            holder = (await pod_names(tx.conn, [edge.parent_pod_id])).get(edge.parent_pod_id)
        raise NotAChild(
            f"pod {child.name} is not a child of {parent.name}"
            + (f" (its delegation is held by {holder})" if holder else " (it is a root pod)"),
            details={"pod": child.name, "parent": holder},
        )
    changed = await reclaim(tx, edge, ReclaimReason.STOP)
    return edge, changed


async def shutdown(tx: PodTx, name: str) -> tuple[EdgeRow, bool]:
    """The child's own notice: reclaim its delegation (``shutdown``); twice is a no-op."""
    await tx.lock()
    child = await get_pod(tx.conn, tx.space_id, name)
    edge = await _in_edge(tx, child)
    if edge is None:
        raise NotAChild(
            f"pod {child.name} is a root pod: it holds no delegation to hand back "
            "(release its lease instead)",
            details={"pod": child.name},
        )
    changed = await reclaim(tx, edge, ReclaimReason.SHUTDOWN)
    return edge, changed
