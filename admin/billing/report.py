"""A space's usage in one period, per meter: units, quota, percent, cost (API and CLI)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from admin.billing.meters import METERS, percent
from admin.billing.schema import plan_quotas, usage_rollups
from admin.db import spaces


async def usage_report(conn: AsyncConnection, space_id: str, period: str) -> dict[str, Any] | None:
    """``{period, plan, meters: {<meter>: {units, quota, percent, cost_cents}}}`` for every
    meter (quotas of the space's current plan), or None when the space does not exist."""
    row = (await conn.execute(sa.select(spaces.c.plan).where(spaces.c.id == space_id))).first()
    if row is None:
        return None
    plan = str(row.plan)
    quotas = {
        q.meter: int(q.quota)
        for q in await conn.execute(
            sa.select(plan_quotas.c.meter, plan_quotas.c.quota).where(plan_quotas.c.plan_id == plan)
        )
    }
    rollups = {
        r.meter: (int(r.units), int(r.cost_cents))
        for r in await conn.execute(
            sa.select(
                usage_rollups.c.meter, usage_rollups.c.units, usage_rollups.c.cost_cents
            ).where(usage_rollups.c.space_id == space_id, usage_rollups.c.period == period)
        )
    }
    meters: dict[str, Any] = {}
    for meter in METERS:
        units, cost = rollups.get(meter, (0, 0))
        quota = quotas.get(meter, 0)  # a plan without the meter: unavailable
        meters[meter] = {
            "units": units,
            "quota": quota,
            "percent": percent(units, quota),
            "cost_cents": cost,
        }
    return {"period": period, "plan": plan, "meters": meters}
