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


BAR = 24


def render_usage(space_id: str, report: dict[str, Any]) -> str:
    """The report as the ``turnout admin usage`` view: one line with a bar per meter."""
    from admin.billing.meters import UNITS

    lines = [f"usage of {space_id} on {report['plan']} in {report['period']} (UTC)"]
    width = max(len(m) for m in report["meters"])
    for meter, m in report["meters"].items():
        units, quota, cost = m["units"], m["quota"], m["cost_cents"]
        unit = UNITS.get(meter, "units")
        if quota > 0:
            filled = min(BAR, units * BAR // quota)
            bar = "█" * filled + "░" * (BAR - filled)
            text = f"{units:,} / {quota:,} {unit}  {m['percent']:.1f} %"
        elif quota == 0:
            bar = " " * BAR
            text = f"not on this plan ({units:,} {unit})"
        else:
            bar = "·" * BAR
            text = f"{units:,} {unit}, balance-gated"
        money = f"  {cost:,}¢" if cost else ""
        lines.append(f"  {meter:<{width}}  {bar}  {text}{money}")
    return "\n".join(lines)
