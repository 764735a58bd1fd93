"""App deployments from a manifest, deployments, rollback, and masked snapshot reads.

One app deployment is one SQL transaction: per service it creates an immutable snapshot and a
deployment row, moves routing statuses and weights per the strategy, records the service's
endpoints, claims hostnames, and queues every affected hostname in the publish outbox. The
route records are recomputed from SQL and published after commit (admin/publisher.py).

The manifest's routes are the whole truth about what each hostname serves: a service's route
rows are replaced by the manifest's on every deployment, a service without routes gets one
explicit catch-all route on its platform hostname, and a hostname the manifest no longer names
keeps its claim (and proof) but is withdrawn from routing. A hostname the manifest moves from one
of the app's services to another moves with its claim.

Routing statuses: ``active`` | ``canary`` | ``rollback`` carry traffic (weights in basis points
summing to 10000 per service); ``archived`` and ``rolled_back`` carry none. Which deployment
gets which status and weight is planned in :mod:`admin.rollouts.machine` (deploys, rollback and
every staged-rollout step alike); the handlers here load the rows and apply the plan. A
``staged`` deploy also starts a rollout (:mod:`admin.api.rollouts`); while one runs on a service,
other deploys and rollbacks of that service answer 409 ``rollout_in_progress``.

Runtimes. Each new deployment gets a managed token (:mod:`admin.managed`), its plaintext in
this answer only (``services[].managed_token.token``; null in an ``Idempotency-Key`` replay),
and its snapshot carries the space's common env laid under the service's own env
(:mod:`admin.common_env`, sources in ``config.sources``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import sqlalchemy as sa
from pydantic import Field

from admin import common_env, managed
from admin.api.models import Page, Strict
from admin.api.services import claim_hostname, load_service, service_hosts
from admin.api.services import verification as _verification
from admin.crypto import CryptoError, decrypt_map, encrypt_map, mask_map
from admin.db import (
    app_deployments,
    deployments,
    new_id,
    now_ms,
    service_routes,
    services,
    snapshots,
)
from admin.errors import Conflict, Forbidden, NotFound, Unprocessable
from admin.framework import Ctx, endpoint, etag, paged
from admin.manifest import Manifest, manifest_body
from admin.manifest_access import Access
from admin.rollouts import store as rollout_store
from admin.rollouts.gate import Gate
from admin.rollouts.machine import (
    ROUTED,
    Dep,
    RolloutInProgress,
    Stage,
    plan_deploy,
    plan_rollback,
)
from admin.rollouts.reconciler import reconciler_of


class RolloutRef(Strict):
    id: str
    state: str
    stage: int
    weight: int


class AppDeploymentOut(Strict):
    id: str
    name: str
    strategy: str
    created_at: int
    services: list[dict[str, Any]]
    rollout: RolloutRef | None  # strategy staged, when a service had a baseline to roll against


class ManagedToken(Strict):
    id: str
    prefix: str
    scopes: list[str]
    expires_at: int | None
    created_at: int
    token: str | None = Field(
        description="the plaintext tak_dep_ token, shown in this answer only (null in an "
        "Idempotency-Key replay: re-issue it if that answer was lost)"
    )


class DeploymentOut(Strict):
    id: str
    service_id: str
    number: int
    status: str
    routing_status: str
    routing_weight: int
    snapshot_id: str
    app_deployment_id: str | None
    etag: str
    created_at: int
    updated_at: int
    managed_token: ManagedToken | None = Field(
        default=None,
        description="a rollback to a deployment whose token was revoked (it had been archived "
        "or rolled back from): its fresh managed token",
    )


class RollbackIn(Strict):
    version: int | None = Field(default=None, ge=1, le=2**31 - 1)  # an INTEGER column


class SnapshotOut(Strict):
    id: str
    service_id: str
    config: dict[str, Any]
    env: dict[str, str]
    secrets: dict[str, str]
    bindings: dict[str, str]
    created_at: int


def _dep(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "service_id": row.service_id,
        "number": row.number,
        "status": row.status,
        "routing_status": row.routing_status,
        "routing_weight": row.routing_weight,
        "snapshot_id": row.snapshot_id,
        "app_deployment_id": row.app_deployment_id,
        "etag": etag(row.id, row.version),
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def platform_hostname(service: str, app: str, base_domain: str) -> str:
    """The hostname a route without ``hostname`` gets: ``<service>.<app>.<base domain>``."""
    return f"{service}.{app}.{base_domain}"


async def _service_by_name(ctx: Ctx, name: str) -> Any:
    return (
        await ctx.conn.execute(
            sa.select(services).where(services.c.space_id == ctx.space_id, services.c.name == name)
        )
    ).first()


@endpoint(
    "POST",
    "/api/spaces/{space}/app-deployments",
    scope="deployments:write",
    role="editor",
    raw_body=True,
    parse=manifest_body,
    response=AppDeploymentOut,
    status=201,
    summary="Deploy an app from a manifest (YAML or JSON): strategies direct, canary, staged",
)
async def create_app_deployment(ctx: Ctx) -> dict[str, Any]:
    manifest: Manifest = ctx.body.open()  # a ManifestParcel from the parsing worker
    _one_service_per_hostname(manifest, ctx.state.settings.base_domain)
    for name, svc in manifest.services.items():
        managed.check_grantable(ctx.principal, svc.access, f"spec.services.{name}.access.scopes")
    strategy = manifest.rollout.strategy
    await _refuse_running_rollouts(ctx, list(manifest.services))
    assert ctx.space_id is not None
    common = await common_env.load(ctx.conn, ctx.state.keys, ctx.space_id)
    now = now_ms()
    app_id = new_id("app")
    await ctx.conn.execute(
        sa.insert(app_deployments).values(
            id=app_id,
            space_id=ctx.space_id,
            name=manifest.name,
            strategy=strategy,
            manifest_sha256=hashlib.sha256(ctx.raw).hexdigest(),
            principal_id=ctx.principal.id,
            created_at=now,
        )
    )
    out = []
    legs: list[tuple[str, str, str]] = []  # staged: (service, canary, baseline) deployment ids
    for name, svc in manifest.services.items():
        result, baseline = await _deploy_service(ctx, manifest, app_id, name, svc, now, common)
        out.append(result)
        if baseline is not None:
            legs.append((result["service_id"], result["deployment_id"], baseline))
    rollout = None
    if legs:
        ro = manifest.rollout
        hc = ro.health_check
        rollout_id, step = await rollout_store.create(
            ctx.conn,
            space_id=str(ctx.space_id),
            app_deployment_id=app_id,
            stages=[Stage(s.weight, s.pause_minutes) for s in ro.stages],
            gate=Gate(
                hc.error_rate_threshold, hc.min_requests, hc.window_minutes, hc.p99_latency_ms
            ),
            auto_promote=ro.auto_promote,
            legs=legs,
            principal_id=ctx.principal.id,
            request_id=ctx.request_id,
            now=reconciler_of(ctx.state).now_ms(),
        )
        rollout = {
            "id": rollout_id,
            "state": step.to_state.value,
            "stage": step.to_stage + 1,
            "weight": step.to_weight,
        }
    ctx.resource = f"app-deployment:{app_id}"
    answer = {
        "id": app_id,
        "name": manifest.name,
        "strategy": strategy,
        "created_at": now,
        "services": out,
        "rollout": rollout,
    }
    # A replay never shows (and the stored answer never holds) a token's plaintext.
    ctx.replay_result = {
        **answer,
        "services": [
            {**o, "managed_token": managed.without_plaintext(o["managed_token"])} for o in out
        ],
    }
    return answer


def _one_service_per_hostname(manifest: Manifest, base_domain: str) -> None:
    """A hostname serves one service: two routes naming it (or a service's platform hostname,
    which a service without routes serves) for two services → 422 naming the later route."""
    first: dict[str, tuple[str, str]] = {}  # host → (where, service)
    routed = {r.service for r in manifest.routes}
    implicit = [("spec.routes", name, None) for name in manifest.services if name not in routed]
    explicit = [
        (f"spec.routes[{i}].hostname", r.service, r.hostname) for i, r in enumerate(manifest.routes)
    ]
    for where, service, hostname in implicit + explicit:
        host = (hostname or platform_hostname(service, manifest.name, base_domain)).lower()
        seen = first.setdefault(host, (where, service))
        if seen[1] != service:
            message = f"{host} is already routed to service {seen[1]} ({seen[0]})"
            raise Unprocessable(
                f"{where}: {message}; a hostname serves one service",
                [{"path": where, "message": message}],
                code="invalid_manifest",
            )


async def _refuse_running_rollouts(ctx: Ctx, names: list[str]) -> None:
    """409 ``rollout_in_progress`` when one of these services (by name) has a running rollout."""
    rows = (
        await ctx.conn.execute(
            sa.select(services.c.id, services.c.name).where(
                services.c.space_id == ctx.space_id, services.c.name.in_(names)
            )
        )
    ).all()
    running = await rollout_store.running_for(ctx.conn, [r.id for r in rows])
    for r in rows:
        ro = running.get(r.id)
        if ro is not None:
            raise RolloutInProgress(
                f"service {r.name} is in staged rollout {ro.id} ({ro.state.value}, stage "
                f"{ro.stage + 1} of {len(ro.stages)}); promote or abort it first: POST "
                f"/api/spaces/{ctx.space_id}/app-deployments/{ro.app_deployment_id}/rollout/"
                "promote or …/abort",
                details={"service": r.name, "rollout_id": ro.id, "state": ro.state.value},
            )


async def _deploy_service(
    ctx: Ctx,
    manifest: Manifest,
    app_id: str,
    name: str,
    svc: Any,
    now: int,
    common: list[common_env.Entry],
) -> tuple[dict[str, Any], str | None]:
    """Deploy one service; returns its result and, for a staged rollout, the baseline's id."""
    state = ctx.state
    row = await _service_by_name(ctx, name)
    if row is not None and row.app_name is not None and row.app_name != manifest.name:
        raise Conflict(
            f"service {name} belongs to app {row.app_name} in this space; "
            "rename the service or deploy it from that app",
            code="service_taken",
        )
    if row is None:
        service_id = new_id("svc")
        await ctx.conn.execute(
            sa.insert(services).values(
                id=service_id,
                space_id=ctx.space_id,
                name=name,
                status="pending",
                created_at=now,
                updated_at=now,
            )
        )
    else:
        service_id = row.id
    # The snapshot: plain runtime config, encrypted env/secrets/bindings bound to its id.
    snap_id = new_id("snp")
    policy: dict[str, Any] = {}
    if svc.limits.timeout_ms is not None:
        policy["read_timeout_ms"] = svc.limits.timeout_ms
    if svc.limits.max_body_bytes is not None:
        policy["max_body_bytes"] = svc.limits.max_body_bytes
    env, secret_values, sources = common_env.merge(common, svc.env, svc.secrets)
    config = {
        "upstreams": [u.url for u in svc.upstreams],
        "policy": policy,
        "limits": {
            "timeout_ms": svc.limits.timeout_ms,
            "max_body_bytes": svc.limits.max_body_bytes,
        },
        "access": svc.access.to_json(),
        "sources": sources,  # per env/secrets name: "service" or "common"
    }
    sealed = {
        "env": encrypt_map(state.keys, env, snap_id, "env"),
        "secrets": encrypt_map(state.keys, secret_values, snap_id, "secrets"),
        "bindings": encrypt_map(state.keys, dict(svc.bindings), snap_id, "bindings"),
    }
    await ctx.conn.execute(
        sa.insert(snapshots).values(
            id=snap_id,
            service_id=service_id,
            config=orjson.dumps(config).decode(),
            secrets=orjson.dumps(sealed).decode(),
            created_at=now,
        )
    )
    number = (
        await ctx.conn.execute(
            sa.select(sa.func.coalesce(sa.func.max(deployments.c.number), 0)).where(
                deployments.c.service_id == service_id
            )
        )
    ).scalar_one() + 1
    current = (
        await ctx.conn.execute(
            sa.select(deployments).where(
                deployments.c.service_id == service_id,
                deployments.c.routing_status.in_(ROUTED),
            )
        )
    ).all()
    ro = manifest.rollout
    plan = plan_deploy(
        ro.strategy,
        [Dep.of(d) for d in current],
        ro.canary_weight
        if ro.strategy == "canary"
        else (ro.stages[0].weight if ro.stages else None),
    )
    applied, new_status, weight = plan.applied, plan.routing_status, plan.routing_weight
    dep_id = new_id("dep")
    await rollout_store.apply_moves(ctx.conn, plan.moves, now)
    await ctx.conn.execute(
        sa.insert(deployments).values(
            id=dep_id,
            service_id=service_id,
            app_deployment_id=app_id,
            snapshot_id=snap_id,
            number=number,
            status="success",
            routing_status=new_status,
            routing_weight=weight,
            created_at=now,
            updated_at=now,
        )
    )
    await ctx.conn.execute(
        sa.update(services)
        .where(services.c.id == service_id)
        .values(
            status="deployed",
            app_name=manifest.name,
            updated_at=now,
            version=services.c.version + 1,
        )
    )
    # Endpoints: the manifest's routes for this service replace the previous ones.
    await ctx.conn.execute(
        sa.delete(service_routes).where(service_routes.c.service_id == service_id)
    )
    verification: list[dict[str, Any]] = []
    declared = [
        (f"spec.routes[{i}].hostname", r.hostname, r.path, r.methods)
        for i, r in enumerate(manifest.routes)
        if r.service == name
    ]
    if not declared:  # no route: the platform hostname serves everything, said explicitly
        declared = [("spec.routes", None, "/", ())]
    for field, hostname, path_prefix, methods in declared:
        host = hostname or platform_hostname(name, manifest.name, state.settings.base_domain)
        claimed = await claim_hostname(
            ctx, service_id, host, field, existing_ok=True, adopt_from_app=manifest.name
        )
        if not claimed.verified and all(v["host"] != claimed.host for v in verification):
            verification.append(
                {"host": claimed.host, **_verification(claimed.host, claimed.verify_token)}
            )
        await ctx.conn.execute(
            sa.insert(service_routes).values(
                id=new_id("rte"),
                service_id=service_id,
                host=claimed.host,
                path_prefix=path_prefix,
                methods=orjson.dumps(list(methods)).decode(),
            )
        )
    hosts = await service_hosts(ctx.conn, service_id)
    ctx.enqueue_publish(hosts)
    label = token_name(manifest.name, name, number)
    await managed.ensure_principal(ctx.conn, dep_id, label, now)
    token = await managed.mint(ctx.conn, dep_id, label, svc.access, now)
    result = {
        "service_id": service_id,
        "name": name,
        "deployment_id": dep_id,
        "number": number,
        "snapshot_id": snap_id,
        "strategy_applied": applied,
        "routing_status": new_status,
        "routing_weight": weight,
        "hostnames": sorted(hosts),
        "verification": verification,
        "managed_token": token,
    }
    baseline = plan.baseline.id if applied == "staged" and plan.baseline is not None else None
    return result, baseline


@endpoint(
    "GET",
    "/api/spaces/{space}/app-deployments",
    scope="deployments:read",
    role="viewer",
    response=Page,
    paged=True,
    summary="List app deployments",
)
async def list_app_deployments(ctx: Ctx) -> dict[str, Any]:
    q = sa.select(app_deployments).where(app_deployments.c.space_id == ctx.space_id)
    return await paged(
        ctx,
        q,
        app_deployments.c.id,
        lambda r: {
            "id": r.id,
            "name": r.name,
            "strategy": r.strategy,
            "principal_id": r.principal_id,
            "created_at": r.created_at,
        },
    )


@endpoint(
    "GET",
    "/api/spaces/{space}/services/{service}/deployments",
    scope="deployments:read",
    role="viewer",
    response=Page,
    paged=True,
    summary="List a service's deployments",
)
async def list_deployments(ctx: Ctx) -> dict[str, Any]:
    svc = await load_service(ctx, ctx.params["service"])
    q = sa.select(deployments).where(deployments.c.service_id == svc.id)
    return await paged(ctx, q, deployments.c.id, _dep)


async def _load_deployment(ctx: Ctx, dep_id: str) -> Any:
    row = (
        await ctx.conn.execute(
            sa.select(deployments)
            .join(services, services.c.id == deployments.c.service_id)
            .where(deployments.c.id == dep_id, services.c.space_id == ctx.space_id)
        )
    ).first()
    if row is None:
        raise NotFound(f"deployment {dep_id} not found")
    return row


@endpoint(
    "GET",
    "/api/spaces/{space}/deployments/{deployment}",
    scope="deployments:read",
    role="viewer",
    response=DeploymentOut,
    summary="Read a deployment",
)
async def get_deployment(ctx: Ctx) -> dict[str, Any]:
    row = await _load_deployment(ctx, ctx.params["deployment"])
    ctx.headers["etag"] = etag(row.id, row.version)
    return _dep(row)


@endpoint(
    "POST",
    "/api/spaces/{space}/services/{service}/rollback",
    scope="deployments:write",
    role="editor",
    body=RollbackIn,
    response=DeploymentOut,
    summary="Roll back: drop a canary, or go to a named version or the previous deployment",
)
async def rollback(ctx: Ctx) -> dict[str, Any]:
    body: RollbackIn = ctx.body
    svc = await load_service(ctx, ctx.params["service"])
    await _refuse_running_rollouts(ctx, [svc.name])
    rows = (
        await ctx.conn.execute(sa.select(deployments).where(deployments.c.service_id == svc.id))
    ).all()
    try:
        plan = plan_rollback([Dep.of(d) for d in rows], body.version)
    except NotFound:
        raise NotFound(f"version {body.version} of {svc.name} not found") from None
    now = now_ms()
    await rollout_store.apply_moves(ctx.conn, plan.moves, now)
    ctx.enqueue_publish(await service_hosts(ctx.conn, svc.id))
    ctx.resource = f"service:{svc.id}/deployment:{plan.target.id}"
    row = await _load_deployment(ctx, plan.target.id)
    out = _dep(row)
    if not await managed.has_live_token(ctx.conn, row.id, now):
        # Its token died when it stopped carrying traffic; its runtime needs a new one.
        access = await snapshot_access(ctx, row.snapshot_id)
        try:
            managed.check_grantable(ctx.principal, access, "access.scopes")
        except Forbidden as exc:  # the rollback itself must not fail over its token
            ctx.headers["x-turnout-warning"] = f"no managed token issued: {exc.message}"
            return out
        label = token_name(svc.app_name or "", svc.name, row.number)
        await managed.ensure_principal(ctx.conn, row.id, label, now)
        out["managed_token"] = await managed.mint(ctx.conn, row.id, label, access, now)
        ctx.replay_result = {
            **out,
            "managed_token": managed.without_plaintext(out["managed_token"]),
        }
    return out


def token_name(app: str, service: str, number: int) -> str:
    """The name of a deployment's principal and tokens: ``<app>/<service> v<number>``."""
    return f"{app}/{service} v{number}"


async def snapshot_access(ctx: Ctx, snapshot_id: str) -> Access:
    """The managed-token access a snapshot's deployment was given (its manifest's)."""
    raw = (
        await ctx.conn.execute(sa.select(snapshots.c.config).where(snapshots.c.id == snapshot_id))
    ).scalar_one()
    return Access.from_json(orjson.loads(raw).get("access"))


@endpoint(
    "GET",
    "/api/spaces/{space}/snapshots/{snapshot}",
    scope="deployments:read",
    role="viewer",
    response=SnapshotOut,
    summary="Read a snapshot: runtime config in plain, env/secrets/bindings masked",
)
async def get_snapshot(ctx: Ctx) -> dict[str, Any]:
    row = (
        await ctx.conn.execute(
            sa.select(snapshots)
            .join(services, services.c.id == snapshots.c.service_id)
            .where(snapshots.c.id == ctx.params["snapshot"], services.c.space_id == ctx.space_id)
        )
    ).first()
    if row is None:
        raise NotFound(f"snapshot {ctx.params['snapshot']} not found")
    try:
        sealed = orjson.loads(row.secrets)
        if not isinstance(sealed, dict) or not all(
            isinstance(sealed.get(part, {}), dict) for part in ("env", "secrets", "bindings")
        ):
            raise CryptoError("the stored secrets are not a map of envelopes")
        masked = {
            part: mask_map(decrypt_map(ctx.state.keys, sealed.get(part, {}), row.id, part))
            for part in ("env", "secrets", "bindings")
        }
    except orjson.JSONDecodeError:
        raise Conflict(
            "snapshot cannot be decrypted: the stored secrets are not valid JSON",
            code="snapshot_corrupt",
        ) from None
    except CryptoError as exc:
        raise Conflict(f"snapshot cannot be decrypted: {exc}", code="snapshot_corrupt") from None
    return {
        "id": row.id,
        "service_id": row.service_id,
        "config": orjson.loads(row.config),
        "created_at": row.created_at,
        **masked,
    }
