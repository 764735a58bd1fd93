"""Plans and their per-meter quotas: readable by any billing reader, edited by the system admin.

A quota is units per month (0: unavailable on the plan; -1: balance-gated, which needs a
``rate_cents``); ``rate_cents`` is the price of each unit beyond the quota (no rate: a hard
cap). Editing a plan takes effect for every space on it at once for the API, and on the usage
collector's next cycle for the gateway (``docs/billing.md``).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field

from admin.api.models import Strict
from admin.billing.meters import BALANCE_GATED, METERS, UNITS, MeterName
from admin.billing.schema import plan_quotas, plans
from admin.db import now_ms
from admin.errors import Conflict, NotFound, Unprocessable, field_error
from admin.framework import Ctx, endpoint, etag, paged

MAX_QUOTA = 10**15
MAX_RATE_CENTS = 10**9
PLAN_ID = r"^plan_[a-z0-9_]{1,27}$"  # fits spaces.plan (32 characters)


class QuotaIn(Strict):
    quota: int = Field(ge=-1, le=MAX_QUOTA, description="units per month; 0 off, -1 gated")
    rate_cents: int | None = Field(default=None, ge=0, le=MAX_RATE_CENTS)


class QuotaPatch(Strict):
    quota: int | None = Field(default=None, ge=-1, le=MAX_QUOTA)
    rate_cents: int | None = Field(default=None, ge=0, le=MAX_RATE_CENTS, description="null: none")


class PlanCreate(Strict):
    id: str = Field(pattern=PLAN_ID)
    name: str = Field(min_length=1, max_length=200)
    quotas: dict[MeterName, QuotaIn]


class PlanPatch(Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    quotas: dict[MeterName, QuotaPatch] | None = None


class Quota(Strict):
    quota: int
    rate_cents: int | None
    unit: str


class Plan(Strict):
    id: str
    name: str
    quotas: dict[str, Quota]
    etag: str
    created_at: int
    updated_at: int


class PlanPage(BaseModel):
    items: list[Plan]
    next_cursor: str | None


async def _quotas(ctx: Ctx, plan_ids: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {pid: {} for pid in plan_ids}
    rows = await ctx.conn.execute(sa.select(plan_quotas).where(plan_quotas.c.plan_id.in_(plan_ids)))
    for q in rows:
        out[q.plan_id][q.meter] = {
            "quota": int(q.quota),
            "rate_cents": None if q.rate_cents is None else int(q.rate_cents),
            "unit": UNITS.get(q.meter, "units"),
        }
    order = {m: i for i, m in enumerate(METERS)}
    return {
        pid: dict(sorted(qs.items(), key=lambda kv: order.get(kv[0], len(order))))
        for pid, qs in out.items()
    }


def _plan(row: Any, quotas: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "quotas": quotas,
        "etag": etag(row.id, row.version),
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


async def _load(ctx: Ctx, plan_id: str) -> Any:
    row = (await ctx.conn.execute(sa.select(plans).where(plans.c.id == plan_id))).first()
    if row is None:
        raise NotFound(f"plan {plan_id} not found")
    return row


async def _render(ctx: Ctx, plan_id: str) -> dict[str, Any]:
    row = await _load(ctx, plan_id)
    ctx.headers["etag"] = etag(row.id, row.version)
    return _plan(row, (await _quotas(ctx, [row.id]))[row.id])


def _check_gated(meter: str, quota: int, rate: int | None) -> None:
    if quota == BALANCE_GATED and rate is None:
        raise field_error(
            f"body.quotas.{meter}.rate_cents",
            "a balance-gated quota (-1) needs a rate: it could not be priced",
        )


@endpoint(
    "GET",
    "/api/plans",
    scope="billing:read",
    response=PlanPage,
    paged=True,
    summary="List the plans with their quotas and rates",
)
async def list_plans(ctx: Ctx) -> dict[str, Any]:
    page = await paged(ctx, sa.select(plans), plans.c.id, lambda r: r)
    quotas = await _quotas(ctx, [r.id for r in page["items"]])
    page["items"] = [_plan(r, quotas[r.id]) for r in page["items"]]
    return page


@endpoint(
    "GET",
    "/api/plans/{plan}",
    scope="billing:read",
    response=Plan,
    summary="Read a plan",
)
async def get_plan(ctx: Ctx) -> dict[str, Any]:
    return await _render(ctx, ctx.params["plan"])


@endpoint(
    "POST",
    "/api/plans",
    scope="system:admin",
    body=PlanCreate,
    response=Plan,
    status=201,
    summary="Create a plan (every meter needs a quota)",
)
async def create_plan(ctx: Ctx) -> dict[str, Any]:
    body: PlanCreate = ctx.body
    missing = [m for m in METERS if m not in body.quotas]
    if missing:
        raise Unprocessable(
            f"body.quotas: every meter needs a quota; missing {', '.join(missing)}",
            [{"path": f"body.quotas.{m}", "message": "required"} for m in missing],
        )
    for meter, q in body.quotas.items():
        _check_gated(meter, q.quota, q.rate_cents)
    if (await ctx.conn.execute(sa.select(plans.c.id).where(plans.c.id == body.id))).first():
        raise Conflict(f"plan {body.id} exists; PATCH it to change it")
    now = now_ms()
    await ctx.conn.execute(
        sa.insert(plans).values(id=body.id, name=body.name, created_at=now, updated_at=now)
    )
    await ctx.conn.execute(
        sa.insert(plan_quotas),
        [
            {"plan_id": body.id, "meter": m, "quota": q.quota, "rate_cents": q.rate_cents}
            for m, q in body.quotas.items()
        ],
    )
    ctx.resource = f"plan:{body.id}"
    return await _render(ctx, body.id)


@endpoint(
    "PATCH",
    "/api/plans/{plan}",
    scope="system:admin",
    body=PlanPatch,
    response=Plan,
    summary="Rename a plan or change quotas and rates (If-Match honoured)",
)
async def patch_plan(ctx: Ctx) -> dict[str, Any]:
    body: PlanPatch = ctx.body
    row = await _load(ctx, ctx.params["plan"])
    ctx.if_match(etag(row.id, row.version))
    current = (await _quotas(ctx, [row.id]))[row.id]
    for meter, change in (body.quotas or {}).items():
        have = current.get(meter, {"quota": 0, "rate_cents": None})
        quota = change.quota if change.quota is not None else have["quota"]
        rate = change.rate_cents if "rate_cents" in change.model_fields_set else have["rate_cents"]
        _check_gated(meter, quota, rate)
        if meter in current:
            await ctx.conn.execute(
                sa.update(plan_quotas)
                .where(plan_quotas.c.plan_id == row.id, plan_quotas.c.meter == meter)
                .values(quota=quota, rate_cents=rate)
            )
        else:
            await ctx.conn.execute(
                sa.insert(plan_quotas).values(
                    plan_id=row.id, meter=meter, quota=quota, rate_cents=rate
                )
            )
    values: dict[str, Any] = {"version": row.version + 1, "updated_at": now_ms()}
    if body.name is not None:
        values["name"] = body.name
    res = await ctx.conn.execute(
        sa.update(plans).where(plans.c.id == row.id, plans.c.version == row.version).values(values)
    )
    if res.rowcount != 1:
        raise Conflict("the plan changed concurrently; read it again")
    ctx.state.billing.warnings.invalidate()
    ctx.resource = f"plan:{row.id}"
    return await _render(ctx, row.id)
