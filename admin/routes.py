"""Route records computed from SQL (the authority) for the gateway's route store.

One record per hostname: the service of the hostname's verified claim, the endpoints that
service's routes declare *for this hostname* (path prefix, methods), and as targets the
deployments currently routed (active / canary / rollback with a weight), each with its replicas
from its own immutable snapshot. Nothing is published for a hostname that no space holds
verified, whose service is stopped, that has no routed deployment, or that no route names: the
routes (an app manifest's) are the truth, so a hostname dropped from them is withdrawn, never
widened to a catch-all. A space over its request quota (``admin/billing``) publishes its records ``blocked``.
"""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from admin.db import (
    deployments,
    hostnames,
    now_ms,
    service_routes,
    services,
    snapshots,
    spaces,
)
from routing.models import RouteRecord, record_from_obj

ROUTED = ("active", "canary", "rollback")


async def compute_record(conn: AsyncConnection, host: str, version: int) -> RouteRecord | None:
    """The record ``host`` should have now, or ``None`` when nothing should be served."""
    row = (
        await conn.execute(
            sa.select(
                hostnames.c.service_id,
                hostnames.c.verified,
                services.c.status,
                services.c.space_id,
                spaces.c.id.label("space"),
                spaces.c.billing_status,
            )
            .join(services, services.c.id == hostnames.c.service_id)
            .join(spaces, spaces.c.id == services.c.space_id)
            .where(hostnames.c.host == host, hostnames.c.verified == sa.true())
        )
    ).first()
    if row is None or row.status == "stopped":
        return None
    deps = (
        await conn.execute(
            sa.select(
                deployments.c.id,
                deployments.c.routing_status,
                deployments.c.routing_weight,
                snapshots.c.config,
            )
            .join(snapshots, snapshots.c.id == deployments.c.snapshot_id)
            .where(
                deployments.c.service_id == row.service_id,
                deployments.c.routing_status.in_(ROUTED),
                deployments.c.status == "success",
            )
            .order_by(deployments.c.number)
        )
    ).all()
    if not deps or sum(d.routing_weight for d in deps) != 10000:
        return None
    targets: list[dict[str, Any]] = []
    # The policy follows the stable deployment (a canary does not change timeouts for all),
    # even when the stable one declares no limits (an empty policy: the platform defaults).
    stable_policy: dict[str, Any] | None = None
    canary_policy: dict[str, Any] | None = None
    for d in deps:
        config = orjson.loads(d.config)
        targets.append(
            {
                "deployment_id": d.id,
                "weight": d.routing_weight,
                "status": d.routing_status,
                "upstreams": config["upstreams"],
            }
        )
        declared = dict(config.get("policy") or {})
        if d.routing_status != "canary":
            stable_policy = declared
        elif canary_policy is None:
            canary_policy = declared
    policy = stable_policy if stable_policy is not None else canary_policy or {}
    routes = (
        await conn.execute(
            sa.select(service_routes.c.host, service_routes.c.path_prefix, service_routes.c.methods)
            .where(service_routes.c.service_id == row.service_id)
            .order_by(service_routes.c.id)
        )
    ).all()
    endpoints: list[dict[str, Any]] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for r in routes:
        if r.host is not None and r.host != host:
            continue
        methods = sorted(orjson.loads(r.methods))
        key = (r.path_prefix, tuple(methods))
        if key in seen:
            continue
        seen.add(key)
        endpoints.append({"path_prefix": r.path_prefix, "methods": methods, "targets": targets})
    if not endpoints:
        return None  # attached to the service, but no route names it
    return record_from_obj(
        {
            "host": host,
            "version": version,
            "space_id": row.space,
            "service_id": row.service_id,
            # Over its request quota (admin/billing): the gateway answers 402 without forwarding.
            "blocked": "payment_required" if row.billing_status == "blocked" else None,
            "updated_at": now_ms(),
            "policy": policy,
            "endpoints": endpoints,
        }
    )
