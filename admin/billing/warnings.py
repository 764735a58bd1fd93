"""``X-Quota-Warning: <meter>=<percent>, …`` for admin responses in a space at ≥ 80 % of a quota.

The framework asks :meth:`QuotaWarnings.header` once per request inside a space. Answers are
cached per space for ``ttl`` seconds (the collector's interval: usage from the gateway changes
no faster), so a space far from its quotas costs a dict lookup, not a query; recording usage,
changing a plan or a quota invalidates the cached answer at once. With several admin instances,
another instance's cache may lag by up to ``ttl``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from admin.billing.meters import METERS
from admin.billing.schema import plan_quotas, usage_rollups
from admin.db import spaces

THRESHOLD_PERCENT: Final = 80
_ORDER: Final = {m: i for i, m in enumerate(METERS)}


async def compute_warning(conn: AsyncConnection, space_id: str, period: str) -> str | None:
    """The header value for ``space_id`` in ``period`` (None: no meter at ≥ 80 %)."""
    rows = (
        await conn.execute(
            sa.select(usage_rollups.c.meter, usage_rollups.c.units, plan_quotas.c.quota)
            .join(spaces, spaces.c.id == usage_rollups.c.space_id)
            .join(
                plan_quotas,
                sa.and_(
                    plan_quotas.c.plan_id == spaces.c.plan,
                    plan_quotas.c.meter == usage_rollups.c.meter,
                ),
            )
            .where(
                usage_rollups.c.space_id == space_id,
                usage_rollups.c.period == period,
                plan_quotas.c.quota > 0,
                usage_rollups.c.units * 100 >= plan_quotas.c.quota * THRESHOLD_PERCENT,
            )
        )
    ).all()
    parts = sorted(
        ((str(r.meter), int(r.units) * 100 // int(r.quota)) for r in rows),
        key=lambda mp: _ORDER.get(mp[0], len(_ORDER)),
    )
    return ", ".join(f"{m}={p}" for m, p in parts) or None


class QuotaWarnings:
    """Per-space cache of :func:`compute_warning` (see the module docstring)."""

    def __init__(
        self,
        ttl: float,
        *,
        max_spaces: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_spaces = max_spaces
        self.clock = clock
        self._cache: dict[str, tuple[float, str | None]] = {}
        self.queries = 0

    async def header(self, conn: AsyncConnection, space_id: str, period: str) -> str | None:
        now = self.clock()
        hit = self._cache.get(space_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        return await self.refresh(conn, space_id, period)

    async def refresh(self, conn: AsyncConnection, space_id: str, period: str) -> str | None:
        """Compute now (e.g. right after recording usage) and cache the answer."""
        self.queries += 1
        value = await compute_warning(conn, space_id, period)
        cache = self._cache
        cache.pop(space_id, None)
        while len(cache) >= self.max_spaces:  # the oldest entries go first
            del cache[next(iter(cache))]
        cache[space_id] = (self.clock() + self.ttl, value)
        return value

    def invalidate(self, space_id: str | None = None) -> None:
        """Forget one space's answer, or every answer (a plan's quotas changed)."""
        if space_id is None:
            self._cache.clear()
        else:
            self._cache.pop(space_id, None)

    def __repr__(self) -> str:
        return f"QuotaWarnings(ttl={self.ttl}, cached={len(self._cache)}, queries={self.queries})"
