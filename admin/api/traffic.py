"""A service's traffic per deployment per minute, from the gateways' health counters.

``GET /api/spaces/{space}/services/{service}/traffic?minutes=N`` answers, for every deployment of
the service that is routed now or changed within the window, one point per minute of the last
``N`` minutes (1..30, default 30; the current, still filling minute last): requests, 5xx errors,
requests per second (requests / 60) and the error rate. The figures are the ones the rollout gate
reads: the per-deployment, per-minute hashes the gateways flush every second
(:mod:`routing.health`), which expire after 30 minutes — hence the window's limit. A minute
nobody counted anything in is a point with zeros; counters that cannot be read (Redis down)
answer 503 ``unavailable``, never zeros that look like an idle service.

The operator console (``/console``) draws its requests/s and error-rate chart from this.
Declared ``transactional=False``: the deployments are read in one short SQL transaction, the
counters after it, with no database connection held while Redis answers.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from pydantic import Field

from admin.api.models import Strict
from admin.api.services import load_service
from admin.db import deployments
from admin.errors import Unavailable
from admin.framework import Ctx, endpoint
from admin.rollouts.gate import MINUTE_MS
from admin.rollouts.reconciler import reconciler_of
from routing.errors import StoreError
from routing.health import HEALTH_TTL, Health

MAX_MINUTES = HEALTH_TTL // 60  # the counters expire after this many minutes
ROUTED = ("active", "canary")


class TrafficPoint(Strict):
    at: int = Field(description="the minute's start, ms since the epoch")
    requests: int
    errors: int = Field(description="5xx answers (upstream or gateway), timeouts included")
    requests_per_second: float = Field(description="requests / 60")
    error_rate: float | None = Field(description="errors / requests; null without requests")


class DeploymentTraffic(Strict):
    deployment_id: str
    number: int
    routing_status: str
    routing_weight: int = Field(description="basis points of the service's traffic now")
    requests: int = Field(description="over the whole window")
    errors: int
    points: list[TrafficPoint]


class TrafficOut(Strict):
    service_id: str
    service: str
    minutes: int
    window_start: int = Field(description="the oldest minute's start, ms since the epoch")
    window_end: int = Field(description="the end of the current minute")
    measured_at: int
    deployments: list[DeploymentTraffic]


def point(minute: int, h: Health) -> dict[str, Any]:
    return {
        "at": minute * MINUTE_MS,
        "requests": h.total,
        "errors": h.errors,
        "requests_per_second": round(h.total / 60, 3),
        "error_rate": None if h.error_rate is None else round(h.error_rate, 6),
    }


@endpoint(
    "GET",
    "/api/spaces/{space}/services/{service}/traffic",
    scope="deployments:read",
    role="viewer",
    response=TrafficOut,
    tag="services",
    transactional=False,  # the counters are read from Redis after the SQL read
    query=(("minutes", "integer", f"how many minutes back, 1..{MAX_MINUTES} (default 30)"),),
    responses=((503, None, "the gateways' counters cannot be read"),),
    summary="Requests/s and error rate per deployment per minute over the last minutes",
)
async def service_traffic(ctx: Ctx) -> dict[str, Any]:
    minutes = ctx.int_query("minutes", 1, MAX_MINUTES) or MAX_MINUTES
    now = reconciler_of(ctx.state).now_ms()
    last = now // MINUTE_MS
    first = last - minutes + 1
    async with ctx.transaction() as conn:
        svc = await load_service(ctx)
        rows = (
            await conn.execute(
                sa.select(deployments)
                .where(
                    deployments.c.service_id == svc.id,
                    sa.or_(
                        deployments.c.routing_status.in_(ROUTED),
                        deployments.c.routing_weight > 0,
                        deployments.c.updated_at >= first * MINUTE_MS,
                    ),
                )
                .order_by(deployments.c.number)
            )
        ).all()
    runtime = ctx.state.runtime
    window = range(first, last + 1)
    out = []
    for row in rows:
        try:
            hashes = await runtime.hgetall_many([runtime.keys.health(row.id, m) for m in window])
        except StoreError as exc:
            raise Unavailable(f"the gateways' counters cannot be read: {exc}") from None
        points, total = [], Health()
        for minute, fields in zip(window, hashes, strict=True):
            h = Health()
            h.add(fields)
            total.add(fields)
            points.append(point(minute, h))
        out.append(
            {
                "deployment_id": row.id,
                "number": row.number,
                "routing_status": row.routing_status,
                "routing_weight": row.routing_weight,
                "requests": total.total,
                "errors": total.errors,
                "points": points,
            }
        )
    return {
        "service_id": svc.id,
        "service": svc.name,
        "minutes": minutes,
        "window_start": first * MINUTE_MS,
        "window_end": (last + 1) * MINUTE_MS,
        "measured_at": now,
        "deployments": out,
    }
