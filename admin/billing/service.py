"""What the admin holds for billing: the clock, the quota-warning cache and the collector."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from admin.billing.collector import UsageCollector
from admin.billing.meters import period_of
from admin.billing.warnings import QuotaWarnings
from routing.runtime_state import RuntimeState


class Billing:
    """One per admin process (``AdminState.billing``).

    ``clock`` (epoch seconds) names the current period for the API and the collector alike;
    tests replace it to cross a month boundary.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        runtime: RuntimeState,
        kick: Callable[[], None],
        *,
        interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self.interval = interval
        self.warnings = QuotaWarnings(ttl=interval)
        self.collector = UsageCollector(
            engine, runtime, clock=self.now, kick=kick, warnings=self.warnings
        )

    def now(self) -> float:
        return self.clock()

    def period(self) -> str:
        """The current billing period, ``YYYY-MM`` (UTC)."""
        return period_of(self.clock())

    async def quota_warning(self, conn: AsyncConnection, space_id: str) -> str | None:
        """The ``X-Quota-Warning`` value for a response in ``space_id`` (cached)."""
        return await self.warnings.header(conn, space_id, self.period())

    def metrics(self) -> list[str]:
        return self.collector.metrics()

    def __repr__(self) -> str:
        return f"Billing(interval={self.interval}, {self.collector!r})"
