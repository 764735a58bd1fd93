"""The usage collector: folds the gateways' cumulative request counters into SQL exactly once,
then blocks or unblocks spaces by their request quota.

Theory of operation
-------------------
Each gateway worker keeps, per (space, month), the cumulative number of requests it has ever
flushed and writes it with ``HSET {p}:usage:<space>:<yyyymm> wfp_requests:<writer> <n>``
(:mod:`gateway.usage`). A leader loop on the admin's lease (:mod:`admin.leader`, every
``TURNOUT_USAGE_INTERVAL`` seconds) runs :meth:`UsageCollector.run`:

1. **Read** every usage hash of the last :data:`FOLD_MONTHS` months from the runtime state
   (one ``SCAN`` and one pipelined ``HGETALL`` round trip).
2. **Fold**, per chunk of spaces, in *one* SQL transaction: compare each field's value with its
   checkpoint (``usage_checkpoints``: the last value folded for that space, month, meter and
   writer), add ``value − checkpoint`` to the rollup (with its cost, debited from the balance),
   and move the checkpoint to ``value``. Rollup and checkpoint commit together or not at all:
   a collector killed between read and commit left both untouched, and the next run folds the
   same delta once; a run that committed has moved the checkpoint, so nothing is folded twice.
   Checkpoints move with optimistic locking (``UPDATE … WHERE value = <read>``, a unique key for
   new ones), so two instances overlapping on a stalled lease cannot both fold one delta: the
   loser's chunk rolls back and is folded by the next run.
3. **Decide**: every space that is blocked, has request usage this month, or is on a plan whose
   request quota is 0 or balance-gated is re-evaluated: blocked when it cannot be admitted one
   more request (quota arithmetic in :mod:`admin.billing.meters`). A change bumps the account's
   version (optimistic, so a concurrent plan change wins) and queues its hostnames in the
   publish outbox in the same transaction; the gateway then answers 402 ``payment_required``
   for them without forwarding. Raising the plan, a credit, or a new month unblocks here (the
   API also re-decides at once when it changes a plan or a balance).

A value below its checkpoint only arises when a writer lost its own total (a rotation cannot
cause it: a rotated writer has a new id); it folds nothing and never lowers the checkpoint.
Counter keys that expire or that Redis lost come back with the writer's next write of its
cumulative value, so nothing is lost while the writer lives. Hashes older than
:data:`FOLD_MONTHS` months are ignored and their checkpoints pruned: the gateway's keys expire
35 days after their last write, long before.

Metrics (``/metrics``): units folded per meter, the collector lag (seconds since the read of
the last complete run: every count flushed before that moment is in SQL), units read but not
yet committed, blocked spaces, runs that lost a race.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from admin.billing.accounts import (
    ACCOUNT_COLUMNS,
    ACTIVE,
    BLOCKED,
    Account,
    QuotaCheckError,
    account_of,
    add_usage,
    change_balance,
    lock_account,
    quota_of,
    set_status,
    used,
    wanted_status,
)
from admin.billing.meters import (
    METERS,
    REQUEST_METER,
    consumed_cost,
    period_from_yyyymm,
    period_of,
    shift_period,
)
from admin.billing.schema import plan_quotas, usage_checkpoints, usage_rollups
from admin.billing.warnings import QuotaWarnings
from admin.db import now_ms, spaces
from admin.framework import _enqueue
from routing.runtime_state import RuntimeState

log = logging.getLogger("turnout.admin.billing")

FOLD_MONTHS: Final = 4  # the current month and the three before it
CHUNK: Final = 200  # spaces folded per transaction
MAX_VALUE: Final = 10**12  # a cumulative count beyond this is not a gateway's: ignored
REQUEST_ID: Final = "usage-collector"

CheckpointKey = tuple[str, str, str, str]  # space, period, meter, writer
RollupKey = tuple[str, str, str]  # space, period, meter


@dataclass(frozen=True, slots=True)
class FoldPlan:
    moves: list[tuple[CheckpointKey, int | None, int]]  # checkpoint, value read, new value
    deltas: dict[RollupKey, int]


class Raced(Exception):
    """Another collector moved a checkpoint first: this chunk rolls back."""


@dataclass(frozen=True, slots=True)
class Reading:
    space: str
    period: str
    meter: str
    writer: str
    value: int


class UsageCollector:
    """Folds usage counters into rollups and decides blocks (see the module docstring)."""

    def __init__(
        self,
        engine: AsyncEngine,
        runtime: RuntimeState,
        *,
        clock: Callable[[], float],
        kick: Callable[[], None],
        warnings: QuotaWarnings,
        chunk: int = CHUNK,
    ) -> None:
        self.engine = engine
        self.runtime = runtime
        self.clock = clock
        self.kick = kick
        self.warnings = warnings
        self.chunk = chunk
        self.folded: dict[str, int] = {}  # meter -> units folded by this process
        self.last_read_at: float | None = None  # read time of the last complete run
        self.pending_units = 0  # read, not yet committed
        self.blocked_spaces: int | None = None
        self.races = 0
        self.ignored_fields = 0
        self.runs = 0
        self._pruned_before: str | None = None

    async def run(self) -> dict[str, int]:
        """One collection: read, fold, decide. Raises StoreError when Redis cannot be read."""
        read_at = self.clock()
        period = period_of(read_at)
        readings = await self.read(period)
        races = self.races
        done = await self.fold(readings, period)
        blocked, unblocked = await self._decide(period)
        await self._prune(period)
        self.runs += 1
        raced = self.races - races
        if not raced:  # every count flushed before read_at is in SQL now
            self.last_read_at = read_at
        return {
            "keys": len({(r.space, r.period) for r in readings}),
            "folded": sum(done.values()),
            "blocked": blocked,
            "unblocked": unblocked,
            "raced": raced,
        }

    # ------------------------------------------------------------------ 1. read

    async def read(self, period: str) -> list[Reading]:
        """Every counter field of the fold window, parsed (foreign fields are skipped)."""
        lo, hi = shift_period(period, 1 - FOLD_MONTHS), shift_period(period, 1)
        prefix = f"{self.runtime.keys.tag}:usage:"
        wanted: list[tuple[str, str, str]] = []  # key, space, period
        for key in await self.runtime.scan(prefix + "*"):
            space, _, yyyymm = key[len(prefix) :].rpartition(":")
            try:
                when = period_from_yyyymm(yyyymm)
            except ValueError:
                continue
            if space and len(space) <= 40 and lo <= when <= hi:
                wanted.append((key, space, when))
        out: list[Reading] = []
        hashes = await self.runtime.hgetall_many([k for k, _s, _p in wanted])
        for (_key, space, when), fields in zip(wanted, hashes, strict=True):
            for field, value in fields.items():
                meter, sep, writer = field.partition(":")
                if not sep or not writer or len(writer) > 64 or meter not in METERS:
                    self.ignored_fields += 1
                    continue
                if not 0 <= value <= MAX_VALUE:
                    self.ignored_fields += 1
                    continue
                out.append(Reading(space, when, meter, writer, value))
        return out

    # ------------------------------------------------------------------ 2. fold

    async def fold(self, readings: list[Reading], period: str) -> dict[str, int]:
        """Fold ``readings`` chunk by chunk, one transaction each; units folded per meter. A
        chunk that lost a race to another collector rolls back (counted in ``races``)."""
        by_space: dict[str, list[Reading]] = {}
        for r in readings:
            by_space.setdefault(r.space, []).append(r)
        names = sorted(by_space)
        total: dict[str, int] = {}
        for i in range(0, len(names), self.chunk):
            chunk = [r for name in names[i : i + self.chunk] for r in by_space[name]]
            try:
                async with self.engine.begin() as conn:
                    done = await self._fold(conn, chunk, period)
            except (Raced, sa.exc.IntegrityError, sa.exc.NoResultFound) as exc:
                self.races += 1
                log.info("usage fold lost a race (another collector?), retried next run: %s", exc)
                continue
            finally:
                self.pending_units = 0
            for meter, n in done.items():
                self.folded[meter] = self.folded.get(meter, 0) + n
                total[meter] = total.get(meter, 0) + n
        return total

    async def _fold(
        self, conn: AsyncConnection, readings: list[Reading], period: str
    ) -> dict[str, int]:
        return await self._apply(conn, await self._plan(conn, readings, period))

    async def _plan(self, conn: AsyncConnection, readings: list[Reading], period: str) -> FoldPlan:
        """Compare ``readings`` with their checkpoints: the moves and deltas to commit."""
        names = sorted({r.space for r in readings})
        live = set(
            (await conn.execute(sa.select(spaces.c.id).where(spaces.c.id.in_(names))))
            .scalars()
            .all()
        )
        lo = shift_period(period, 1 - FOLD_MONTHS)
        cps = usage_checkpoints.c
        last: dict[CheckpointKey, int] = {
            (r.space_id, r.period, r.meter, r.writer): int(r.value)
            for r in await conn.execute(
                sa.select(cps.space_id, cps.period, cps.meter, cps.writer, cps.value).where(
                    cps.space_id.in_(names), cps.period >= lo
                )
            )
        }
        deltas: dict[RollupKey, int] = {}
        moves: list[tuple[CheckpointKey, int | None, int]] = []  # key, previous, new
        for r in readings:
            if r.space not in live:
                continue  # a deleted space's counters wait for their keys to expire
            key = (r.space, r.period, r.meter, r.writer)
            prev = last.get(key)
            if r.value <= (prev or 0):
                continue
            moves.append((key, prev, r.value))
            rk = (r.space, r.period, r.meter)
            deltas[rk] = deltas.get(rk, 0) + r.value - (prev or 0)
        return FoldPlan(moves, deltas)

    async def _apply(self, conn: AsyncConnection, plan: FoldPlan) -> dict[str, int]:
        """Move the checkpoints (optimistically: :class:`Raced` when one moved since it was
        read) and add the deltas to the rollups, in ``conn``'s transaction."""
        moves, deltas = plan.moves, plan.deltas
        if not deltas:
            return {}
        self.pending_units = sum(deltas.values())
        cps = usage_checkpoints.c
        at = now_ms()
        for (space, when, meter, writer), prev, value in moves:
            if prev is None:
                await conn.execute(
                    sa.insert(usage_checkpoints).values(
                        space_id=space,
                        period=when,
                        meter=meter,
                        writer=writer,
                        value=value,
                        updated_at=at,
                    )
                )
                continue
            res = await conn.execute(
                sa.update(usage_checkpoints)
                .where(
                    cps.space_id == space,
                    cps.period == when,
                    cps.meter == meter,
                    cps.writer == writer,
                    cps.value == prev,
                )
                .values(value=value, updated_at=at)
            )
            if res.rowcount != 1:
                raise Raced(f"checkpoint {space} {when} {meter} {writer} moved")
        accounts = {name: await lock_account(conn, name) for name in sorted({k[0] for k in deltas})}
        done: dict[str, int] = {}
        for (space, when, meter), units in sorted(deltas.items()):
            account = accounts[space]
            cost = await self._cost(conn, account, when, meter, units)
            await add_usage(conn, space, when, meter, units, cost)
            if cost:
                charged = await change_balance(
                    conn, account, -cost, kind="debit", meter=meter, units=units, period=when
                )
                assert charged is not None  # no idempotency key: nothing to collide with
                accounts[space] = charged
            done[meter] = done.get(meter, 0) + units
            self.warnings.invalidate(space)
        return done

    async def _cost(
        self, conn: AsyncConnection, account: Account, period: str, meter: str, units: int
    ) -> int:
        if account.exempt:
            return 0
        try:
            quota, rate = await quota_of(conn, account.plan, meter)
        except QuotaCheckError:
            return 0  # cannot be priced; the status check blocks the space (fail closed)
        return consumed_cost(quota, rate, await used(conn, account.space_id, period, meter), units)

    # ------------------------------------------------------------------ 3. decide

    async def _decide(self, period: str) -> tuple[int, int]:
        """Block or unblock by the request quota; returns (blocked, unblocked) now."""
        r, q = usage_rollups.c, plan_quotas.c
        query = (
            sa.select(*ACCOUNT_COLUMNS, r.units, q.quota, q.rate_cents)
            .select_from(spaces)
            .outerjoin(
                usage_rollups,
                sa.and_(r.space_id == spaces.c.id, r.period == period, r.meter == REQUEST_METER),
            )
            .outerjoin(plan_quotas, sa.and_(q.plan_id == spaces.c.plan, q.meter == REQUEST_METER))
            .where(
                sa.or_(
                    spaces.c.billing_status == BLOCKED,
                    r.units.is_not(None),
                    q.quota <= 0,
                    q.quota.is_(None),
                )
            )
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        changes: list[tuple[str, int, str]] = []
        blocked_now = 0
        for row in rows:
            account = account_of(row)
            quota = None if row.quota is None else int(row.quota)
            rate = None if row.rate_cents is None else int(row.rate_cents)
            want = wanted_status(account, quota, rate, int(row.units or 0))
            blocked_now += want == BLOCKED
            if want != account.status:
                changes.append((account.space_id, account.version, want))
        counts = {BLOCKED: 0, ACTIVE: 0}
        if changes:
            async with self.engine.begin() as conn:
                for space, version, want in changes:
                    hosts = await set_status(conn, space, version, want, REQUEST_ID)
                    if hosts is None:
                        continue  # changed meanwhile (plan, credit): decided again next run
                    counts[want] += 1
                    for host in hosts:
                        await _enqueue(conn, host)
                    self.warnings.invalidate(space)
            self.kick()
            log.info(
                "request quota: %d spaces blocked, %d unblocked", counts[BLOCKED], counts[ACTIVE]
            )
        self.blocked_spaces = blocked_now
        return counts[BLOCKED], counts[ACTIVE]

    async def _prune(self, period: str) -> None:
        cutoff = shift_period(period, 1 - FOLD_MONTHS)
        if self._pruned_before == cutoff:
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.delete(usage_checkpoints).where(usage_checkpoints.c.period < cutoff)
            )
        self._pruned_before = cutoff

    # ------------------------------------------------------------------ metrics

    def metrics(self) -> list[str]:
        lines = ["# TYPE turnout_admin_usage_folded_units_total counter"]
        lines += [
            f'turnout_admin_usage_folded_units_total{{meter="{m}"}} {n}'
            for m, n in sorted(self.folded.items())
        ] or ['turnout_admin_usage_folded_units_total{meter="wfp_requests"} 0']
        if self.last_read_at is not None:
            lag = max(0.0, self.clock() - self.last_read_at)
            lines += [
                "# TYPE turnout_admin_usage_collector_lag_seconds gauge",
                f"turnout_admin_usage_collector_lag_seconds {lag:.3f}",
            ]
        lines += [
            "# TYPE turnout_admin_usage_collector_pending_units gauge",
            f"turnout_admin_usage_collector_pending_units {self.pending_units}",
            "# TYPE turnout_admin_usage_collector_races_total counter",
            f"turnout_admin_usage_collector_races_total {self.races}",
        ]
        if self.blocked_spaces is not None:
            lines += [
                "# TYPE turnout_admin_billing_blocked_spaces gauge",
                f"turnout_admin_billing_blocked_spaces {self.blocked_spaces}",
            ]
        return lines

    def __repr__(self) -> str:
        return (
            f"UsageCollector(runs={self.runs}, folded={self.folded}, races={self.races}, "
            f"blocked={self.blocked_spaces})"
        )


__all__ = ["FOLD_MONTHS", "Reading", "UsageCollector"]
