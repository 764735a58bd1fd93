"""Write conflicts: which live pods already write a region a spawn or an attach asks for.

A spawned region must not overlap the write region of any *live* pod (one with an unexpired
lease) other than the parent; an attach must not make a pod live whose effective write overlaps
another live pod's. A pod whose own denies cover the request (it handed that region to a child)
does not hold it; among the pods that do, the one deepest in the delegation tree is named as
the owner. Candidates come from ``pod_write_targets`` (targets related to the request by
ancestry, an indexed read, never a scan of the space) and are decided exactly by
:func:`admin.pods.algebra.write_overlap`.
"""

from __future__ import annotations

import sqlalchemy as sa

from admin.pods.algebra import (
    Perm,
    Scope,
    ancestors_or_self,
    render_path,
    write_overlap,
    write_rule_at,
)
from admin.pods.errors import WriteConflict
from admin.pods.records import PodState, depth_of, load_states
from admin.pods.schema import pod_leases, pod_write_targets
from admin.pods.tx import PodTx


async def write_conflicts(
    tx: PodTx, request: Scope, exclude: set[str]
) -> list[tuple[int, PodState, str]]:
    """Live pods (not in ``exclude``) whose effective write overlaps ``request``'s write:
    (depth, state, a shared path), deepest first."""
    conds = []
    for rule in request.allow:
        if rule.permission is not Perm.WRITE:
            continue
        below = rule.target.rstrip("/") + "/"
        escaped = below.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conds.append(pod_write_targets.c.target.in_(ancestors_or_self(rule.target)))
        conds.append(pod_write_targets.c.target.like(escaped + "%", escape="\\"))
    if not conds:
        return []
    rows = await tx.conn.execute(
        sa.select(pod_write_targets.c.pod_id)
        .distinct()
        .join(pod_leases, pod_leases.c.pod_id == pod_write_targets.c.pod_id)
        .where(
            pod_write_targets.c.space_id == tx.space_id,
            sa.or_(*conds),
            pod_leases.c.ended_at.is_(None),
            pod_leases.c.expires_at > tx.now,
        )
    )
    ids = [str(r.pod_id) for r in rows if r.pod_id not in exclude]
    found: list[tuple[int, PodState, str]] = []
    for st in (await load_states(tx.conn, tx.space_id, ids)).values():
        where = write_overlap(request, st.effective())
        if where is not None:
            found.append((await depth_of(tx.conn, st.pod.id), st, where))
    found.sort(key=lambda f: (-f[0], f[1].pod.name))
    return found


def conflict_error(
    request: Scope, found: list[tuple[int, PodState, str]], asker: str
) -> WriteConflict:
    """409 naming the owner (the deepest competitor), both rules and the shared path."""
    _depth, owner, where = found[0]
    theirs = write_rule_at(owner.effective(), where)
    ours = write_rule_at(request, where)
    via = ""
    if owner.in_edge is not None:
        via = f", delegated by {owner.names.get(owner.in_edge.parent_pod_id, '?')}"
    return WriteConflict(
        f"{asker} ({ours}) overlaps the write region of live pod {owner.pod.name} "
        f"({theirs}{via}) at {render_path(where)}",
        details={
            "competitor": owner.pod.name,
            "competitor_rule": theirs.to_json() if theirs else None,
            "rule": ours.to_json() if ours else None,
            "path": render_path(where),
            "others": [st.pod.name for _d, st, _w in found[1:]],
        },
    )
