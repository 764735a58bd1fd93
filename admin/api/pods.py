"""Pod scope authority API: pods, delegation (spawn), restore, leases, segments, check, rebuild.

Semantics are ``shared/spec/pod-scope.md``; the SQL operations live in :mod:`admin.pods` and
run in the request's transaction; mirrors are written after the commit
(:meth:`admin.framework.Ctx.after_commit`). Scopes: ``pods:read`` (viewer) for reads and
``check``, ``pods:write`` (editor) for everything that operates pods.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from admin.api.pod_models import (
    AttachBody,
    AttachOut,
    CheckBody,
    CheckOut,
    HeartbeatBody,
    HeartbeatOut,
    PodCreate,
    PodOut,
    PodPage,
    RebuildOut,
    ReclaimOut,
    ReleaseBody,
    ReleaseOut,
    SegmentMove,
    SpawnBody,
    SpawnOut,
    rules_of,
)
from admin.errors import Unavailable
from admin.framework import Ctx, endpoint, paged
from admin.pods import authority, leases, maintenance, views
from admin.pods.algebra import Perm
from admin.pods.edges import EdgeState
from admin.pods.leases import lease_json
from admin.pods.records import EdgeRow, PodState, get_pod, load_state, load_states
from admin.pods.schema import pods
from admin.pods.service import PodService
from admin.pods.tx import PodTx
from routing.errors import StoreError

BASE = "/api/spaces/{space}/pods"
POD = BASE + "/{name}"


def _svc(ctx: Ctx) -> PodService:
    return ctx.state.pods


def _tx(ctx: Ctx) -> PodTx:
    assert ctx.space_id is not None
    svc = _svc(ctx)
    return PodTx(ctx.conn, ctx.space_id, svc.now(), svc.lease_ms)


async def _commit(ctx: Ctx, tx: PodTx) -> None:
    """Bump versions and compute the mirrors in the transaction; write them after commit."""
    records = await tx.finish()
    svc = _svc(ctx)

    async def write() -> None:
        await svc.write_mirrors(records)

    ctx.after_commit(write)


def _resource(ctx: Ctx, name: str) -> None:
    ctx.resource = f"space:{ctx.space_id}/pod:{name}"


def _after(tx: PodTx, name: str) -> PodState:
    """A pod the transaction changed, as :meth:`PodTx.finish` left it."""
    (state,) = [st for st in tx.states.values() if st.pod.name == name]
    return state


# ------------------------------------------------------------------------------ pods


@endpoint(
    "POST",
    BASE,
    scope="pods:write",
    role="editor",
    body=PodCreate,
    response=PodOut,
    status=201,
    tag="pods",
    summary="Create a pod with its base scope and delegation grant (and a first session)",
)
async def create_pod(ctx: Ctx) -> dict[str, Any]:
    body: PodCreate = ctx.body
    tx = _tx(ctx)
    await authority.create(
        tx,
        body.name,
        rules_of(body.scope.allow),
        rules_of(body.scope.deny),
        rules_of(body.grant),
    )
    await _commit(ctx, tx)
    _resource(ctx, body.name)
    view = await views.full(tx.conn, _after(tx, body.name), tx.now)
    ctx.headers["etag"] = view["etag"]
    return view


@endpoint(
    "GET",
    BASE,
    scope="pods:read",
    role="viewer",
    response=PodPage,
    paged=True,
    tag="pods",
    summary="List the space's pods (base and effective scope, lease, state)",
)
async def list_pods(ctx: Ctx) -> dict[str, Any]:
    assert ctx.space_id is not None
    q = sa.select(pods.c.id).where(pods.c.space_id == ctx.space_id)
    page = await paged(ctx, q, pods.c.id, lambda r: r.id)
    states = await load_states(ctx.conn, ctx.space_id, page["items"])
    now = _svc(ctx).now()
    page["items"] = [views.summary(states[i], now) for i in page["items"] if i in states]
    return page


@endpoint(
    "GET",
    POD,
    scope="pods:read",
    role="viewer",
    response=PodOut,
    tag="pods",
    summary="Read a pod: base scope, delegated rules, effective scope, children, lease, "
    "lineage, reclaim history",
)
async def get_pod_view(ctx: Ctx) -> dict[str, Any]:
    assert ctx.space_id is not None
    state = await load_state(ctx.conn, await get_pod(ctx.conn, ctx.space_id, ctx.params["name"]))
    view = await views.full(ctx.conn, state, _svc(ctx).now())
    ctx.headers["etag"] = view["etag"]
    return view


# ------------------------------------------------------------------------------ leases


@endpoint(
    "POST",
    POD + "/attach",
    scope="pods:write",
    role="editor",
    body=AttachBody,
    response=AttachOut,
    tag="pods",
    summary="Restore a pod by name: a new lease with its effective scope; dead children are "
    "reclaimed (restore_prune) and listed",
)
async def attach_pod(ctx: Ctx) -> dict[str, Any]:
    body: AttachBody = ctx.body
    name = ctx.params["name"]
    tx = _tx(ctx)
    state, lease, scope = await authority.attach(tx, name, body.segment_id)
    await _commit(ctx, tx)
    _resource(ctx, name)
    pod = _after(tx, name).pod
    return {
        "pod": name,
        "version": pod.version,
        "lease": lease_json(lease, tx.now, state.names),
        "effective": scope.to_json(),
        "reclaimed": tx.reclaimed,
        "session_id": pod.session_id,
        "segment_id": pod.segment_id,
    }


@endpoint(
    "POST",
    POD + "/heartbeat",
    scope="pods:write",
    role="editor",
    body=HeartbeatBody,
    response=HeartbeatOut,
    tag="pods",
    summary="Extend the pod's live lease by the lease TTL",
)
async def heartbeat_pod(ctx: Ctx) -> dict[str, Any]:
    assert ctx.space_id is not None
    body: HeartbeatBody = ctx.body
    svc = _svc(ctx)
    now = svc.now()
    lease = await leases.heartbeat(
        ctx.conn, ctx.space_id, ctx.params["name"], body.lease_id, now, svc.lease_ms
    )
    _resource(ctx, ctx.params["name"])
    return {"lease": lease_json(lease, now, {})}


@endpoint(
    "POST",
    POD + "/release",
    scope="pods:write",
    role="editor",
    body=ReleaseBody,
    response=ReleaseOut,
    tag="pods",
    summary="End the pod's lease (its live children's allocations move to its parent)",
)
async def release_pod(ctx: Ctx) -> dict[str, Any]:
    body: ReleaseBody = ctx.body
    tx = _tx(ctx)
    lease = await leases.release(tx, ctx.params["name"], body.lease_id)
    await _commit(ctx, tx)
    _resource(ctx, ctx.params["name"])
    if lease is None:
        return {"released": False, "lease": None}
    ended = lease_json(lease, tx.now, {})
    assert ended is not None
    ended.update(ended_at=tx.now, end_reason="released", status="ended")
    return {"released": True, "lease": ended}


# ------------------------------------------------------------------------------ segments


async def _move(ctx: Ctx, kind: str) -> dict[str, Any]:
    name = ctx.params["name"]
    tx = _tx(ctx)
    session_id, segment_id = await authority.new_segment(tx, name, kind)
    await _commit(ctx, tx)
    _resource(ctx, name)
    state = _after(tx, name)
    return {
        "pod": name,
        "version": state.pod.version,
        "session_id": session_id,
        "segment_id": segment_id,
        "lineage": await views.lineage(tx.conn, tx.space_id, segment_id, state.names),
        "effective": state.effective().to_json(),
    }


@endpoint(
    "POST",
    POD + "/compact",
    scope="pods:write",
    role="editor",
    response=SegmentMove,
    tag="pods",
    summary="Compact: a new segment continuing the current one; the pointer moves, scope is "
    "unaffected",
)
async def compact_pod(ctx: Ctx) -> dict[str, Any]:
    return await _move(ctx, "compact")


@endpoint(
    "POST",
    POD + "/fork",
    scope="pods:write",
    role="editor",
    response=SegmentMove,
    tag="pods",
    summary="Fork: a new session whose first segment continues the current one; the pointer "
    "moves, scope is unaffected",
)
async def fork_pod(ctx: Ctx) -> dict[str, Any]:
    return await _move(ctx, "fork")


# ------------------------------------------------------------------------------ delegation


@endpoint(
    "POST",
    POD + "/children",
    scope="pods:write",
    role="editor",
    body=SpawnBody,
    response=SpawnOut,
    status=201,
    tag="pods",
    summary="Spawn a child pod and delegate rules to it (within the grant and the effective "
    "scope; no live pod may write an overlapping region)",
)
async def spawn_child(ctx: Ctx) -> dict[str, Any]:
    body: SpawnBody = ctx.body
    parent = ctx.params["name"]
    tx = _tx(ctx)
    _before, lease, _edge_id = await authority.spawn(
        tx, parent, body.name, rules_of(body.rules), rules_of(body.grant)
    )
    await _commit(ctx, tx)
    _resource(ctx, body.name)
    child = await views.full(tx.conn, _after(tx, body.name), tx.now)
    parent_state = _after(tx, parent)
    ctx.headers["etag"] = child["etag"]
    return {
        "child": child,
        "edge": child["delegation"],
        "lease": lease_json(lease, tx.now, {lease.parent_pod_id or "": parent}),
        "parent_effective": parent_state.effective().to_json(),
    }


async def _reclaimed(ctx: Ctx, tx: PodTx, edge: EdgeRow, changed: bool) -> dict[str, Any]:
    await _commit(ctx, tx)
    states = tx.states
    if not changed:  # a repeat: nothing was touched, read them
        states = await load_states(tx.conn, tx.space_id, [edge.parent_pod_id, edge.child_pod_id])
    parent, child = states[edge.parent_pod_id], states[edge.child_pod_id]
    assert child.in_edge is not None and child.in_edge.state is EdgeState.RECLAIMED
    return {
        "changed": changed,
        "edge": views.edge_json(child.in_edge, child.names, False),
        "parent": parent.pod.name,
        "parent_effective": parent.effective().to_json(),
        "reclaimed": tx.reclaimed,
    }


@endpoint(
    "POST",
    POD + "/children/{child}/stop",
    scope="pods:write",
    role="editor",
    response=ReclaimOut,
    tag="pods",
    summary="Stop a child: reclaim its delegation (reason stop; a second stop changes nothing)",
)
async def stop_child(ctx: Ctx) -> dict[str, Any]:
    tx = _tx(ctx)
    edge, changed = await authority.stop_child(tx, ctx.params["name"], ctx.params["child"])
    _resource(ctx, ctx.params["child"])
    return await _reclaimed(ctx, tx, edge, changed)


@endpoint(
    "POST",
    BASE + "/{child}/shutdown",
    scope="pods:write",
    role="editor",
    response=ReclaimOut,
    tag="pods",
    summary="The child's own shutdown notice: reclaim its delegation (reason shutdown)",
)
async def shutdown_pod(ctx: Ctx) -> dict[str, Any]:
    tx = _tx(ctx)
    edge, changed = await authority.shutdown(tx, ctx.params["child"])
    _resource(ctx, ctx.params["child"])
    return await _reclaimed(ctx, tx, edge, changed)


# ------------------------------------------------------------------------------ check, rebuild


@endpoint(
    "POST",
    POD + "/check",
    scope="pods:read",
    role="viewer",
    body=CheckBody,
    response=CheckOut,
    tag="pods",
    read_only=True,
    summary="May the pod read/write a path? The deciding rule; answered from the runtime "
    "mirror, or from SQL when the mirror is missing, stale or forged (then repaired)",
)
async def check_pod(ctx: Ctx) -> dict[str, Any]:
    assert ctx.space_id is not None
    body: CheckBody = ctx.body
    svc = _svc(ctx)
    wanted = Perm.parse(body.permission)
    answer = await svc.check(ctx.conn, ctx.space_id, ctx.params["name"], body.path, wanted)
    if answer.repaired is not None:
        record = answer.repaired

        async def repair() -> None:
            await svc.write_mirrors([record])

        ctx.after_commit(repair)
    d = answer.decision
    return {
        "allowed": d.allowed,
        "access": d.access.label,
        "path": body.path,
        "permission": body.permission,
        "rule": d.rule_json(),
        "source": answer.source,
        "version": answer.version,
    }


@endpoint(
    "POST",
    BASE + ":rebuild",
    scope="pods:write",
    role="editor",
    response=RebuildOut,
    tag="pods",
    transactional=False,  # the mirror sync runs after the commit and is part of the answer
    summary="Rebuild from SQL: end expired leases, reclaim dead children (rebuild_prune), "
    "rewrite every mirror; reports what changed",
)
async def rebuild_pods(ctx: Ctx) -> dict[str, Any]:
    assert ctx.space_id is not None
    svc = _svc(ctx)
    async with ctx.transaction() as conn:
        tx = PodTx(conn, ctx.space_id, svc.now(), svc.lease_ms)
        ended, records = await maintenance.rebuild_space(tx)
    ctx.resource = f"space:{ctx.space_id}/pods"
    report: dict[str, Any] = {
        "pods": len(records),
        "leases_ended": ended,
        "reclaimed": tx.reclaimed,
    }
    try:
        sync = await maintenance.sync_mirrors(svc.mirror, ctx.space_id, records)
    except StoreError as exc:
        raise Unavailable(
            f"SQL was rebuilt but the runtime mirrors could not be written ({exc}); "
            "run the rebuild again when the store is back",
            details=report,
        ) from None
    report["mirrors"] = sync.to_json()
    return report
