"""The pod authority as the admin runs it: clock, lease TTL, mirror, the reaper job, metrics.

One :class:`PodService` lives in ``AdminState.pods``. Handlers run the SQL operations of
:mod:`admin.pods.authority` in the request's transaction and hand the resulting mirror records
to :meth:`PodService.write_mirrors` through the request's after-commit hook. The clock
(milliseconds) is an attribute so tests can move time without sleeping.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from admin.crypto import KeyRing
from admin.db import now_ms
from admin.pods.algebra import Decision, Perm
from admin.pods.errors import PodMissing
from admin.pods.maintenance import reap
from admin.pods.mirror import MirrorRecord, PodMirror, record_of
from admin.pods.records import get_pod, load_state
from admin.pods.schema import pods
from routing.errors import StoreError
from routing.runtime_state import RuntimeState

log = logging.getLogger("turnout.admin.pods")


@dataclass(frozen=True, slots=True)
class CheckAnswer:
    decision: Decision
    source: str  # "mirror" | "sql"
    version: int
    repaired: MirrorRecord | None  # the mirror to write (after commit) when SQL answered
    problem: str | None  # why the mirror was not used


class PodService:
    def __init__(
        self,
        engine: AsyncEngine,
        runtime: RuntimeState,
        ring: KeyRing,
        *,
        lease_seconds: float = 30.0,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.engine = engine
        self.mirror = PodMirror(runtime, ring)
        self.lease_ms = int(lease_seconds * 1000)
        self.clock = clock
        self.counts: Counter[str] = Counter()

    def now(self) -> int:
        return self.clock()

    async def write_mirrors(self, records: list[MirrorRecord]) -> None:
        """Write mirrors after a commit. A store failure is counted and logged, never raised:
        SQL holds the truth, and the next check (or rebuild) repairs the mirror."""
        for record in records:
            try:
                await self.mirror.write(record)
                self.counts["mirror_writes"] += 1
            except StoreError as exc:
                self.counts["mirror_write_failures"] += 1
                log.warning("pod mirror %s/%s not written: %s", record.space_id, record.name, exc)

    async def check(
        self, conn: AsyncConnection, space_id: str, name: str, path: str, wanted: Perm
    ) -> CheckAnswer:
        """Access at ``path``: from the mirror when it verifies and carries the version SQL
        holds (one primary-key read), else computed from SQL (and the mirror to repair)."""
        row = (
            await conn.execute(
                sa.select(pods.c.version).where(pods.c.space_id == space_id, pods.c.name == name)
            )
        ).first()
        if row is None:
            raise PodMissing(f"no pod named {name} in this space", details={"pod": name})
        version = int(row.version)
        try:
            read = await self.mirror.read(space_id, name)
            problem = read.problem
            if read.record is not None and read.record.version != version:
                problem = "stale"
        except StoreError as exc:
            log.warning("pod mirror %s/%s unreadable: %s", space_id, name, exc)
            read, problem = None, "unavailable"
        if problem is None and read is not None and read.record is not None:
            self.counts["check_mirror"] += 1
            return CheckAnswer(
                read.record.scope.decide(path, wanted), "mirror", version, None, None
            )
        state = await load_state(conn, await get_pod(conn, space_id, name))
        record = record_of(state)
        self.counts["check_sql"] += 1
        self.counts[f"mirror_repair_{problem}"] += 1
        return CheckAnswer(
            record.scope.decide(path, wanted), "sql", state.pod.version, record, problem
        )

    async def reap(self) -> dict[str, Any]:
        """The ``pod-reaper`` leader job: end expired leases, reclaim, rewrite mirrors."""
        report, records = await reap(self.engine, self.now(), self.lease_ms)
        await self.write_mirrors(records)
        self.counts["reaped_leases"] += len(report["leases_ended"])
        self.counts["reaper_reclaims"] += len(report["reclaimed"])
        return report

    def metrics(self) -> list[str]:
        """Prometheus lines."""
        c = self.counts
        lines = ["# TYPE turnout_admin_pod_checks_total counter"]
        lines += [
            f'turnout_admin_pod_checks_total{{source="{s}"}} {c[f"check_{s}"]}'
            for s in ("mirror", "sql")
        ]
        lines.append("# TYPE turnout_admin_pod_mirror_repairs_total counter")
        for reason in (
            "miss",
            "stale",
            "bad_mac",
            "unknown_key",
            "undecodable",
            "mismatch",
            "unavailable",
        ):
            lines.append(
                f'turnout_admin_pod_mirror_repairs_total{{reason="{reason}"}} '
                f"{c[f'mirror_repair_{reason}']}"
            )
        lines += [
            "# TYPE turnout_admin_pod_mirror_write_failures_total counter",
            f"turnout_admin_pod_mirror_write_failures_total {c['mirror_write_failures']}",
            "# TYPE turnout_admin_pod_leases_reaped_total counter",
            f"turnout_admin_pod_leases_reaped_total {c['reaped_leases']}",
        ]
        return lines

    def __repr__(self) -> str:
        return f"PodService(lease_ms={self.lease_ms}, {self.mirror!r})"
