"""A space's billing account in SQL: lock it, read its plan's quotas and its rollups, charge,
credit, change the plan, and decide whether its request quota blocks its hostnames.

Every function runs inside the caller's transaction. Whoever changes a balance or a rollup
first takes the account with :func:`lock_account` (``SELECT … FOR NO KEY UPDATE`` on
PostgreSQL; on SQLite the admin's single connection serialises writers), so a quota check and
the write it allows are one atomic step, and concurrent usage of one space cannot overspend its
quota. ``NO KEY UPDATE`` because inserting a row that references the space (an event, a rollup)
takes a ``KEY SHARE`` lock on it, which a plain ``FOR UPDATE`` would conflict with: two
transactions would each hold one and wait for the other. Lock order: an API write locks its
one space first; the collector locks the spaces of a chunk in id order — no cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from admin.billing.meters import REQUEST_METER, decide
from admin.billing.schema import billing_ledger, plan_quotas, plans, usage_rollups
from admin.db import audit_log, hostnames, new_id, now_ms, spaces

ACTIVE: Final = "active"
BLOCKED: Final = "blocked"  # over the request quota: hostnames published blocked
STATUSES: Final = (ACTIVE, BLOCKED)


class QuotaCheckError(Exception):
    """The quota check cannot be made (e.g. the plan lacks the meter): fail closed."""


@dataclass(frozen=True, slots=True)
class Account:
    space_id: str
    kind: str
    plan: str
    status: str
    balance_cents: int
    version: int  # billing_version: the account's ETag

    @property
    def exempt(self) -> bool:
        """The platform's own (system) space is metered but never refused or blocked."""
        return self.kind == "system"


ACCOUNT_COLUMNS = (
    spaces.c.id,
    spaces.c.kind,
    spaces.c.plan,
    spaces.c.billing_status,
    spaces.c.balance_cents,
    spaces.c.billing_version,
)


def account_of(row: Any) -> Account:
    """An :class:`Account` from a row with the ``spaces`` billing columns."""
    return Account(
        space_id=row.id,
        kind=row.kind,
        plan=row.plan,
        status=row.billing_status,
        balance_cents=int(row.balance_cents),
        version=int(row.billing_version),
    )


def dialect_insert(conn: AsyncConnection, table: sa.Table) -> Any:
    """``INSERT`` with ``ON CONFLICT`` support for the connection's dialect."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


async def load_account(conn: AsyncConnection, space_id: str, *, lock: bool = False) -> Account:
    """The account of ``space_id`` (which exists); ``lock``: held until the transaction ends."""
    query = sa.select(*ACCOUNT_COLUMNS).where(spaces.c.id == space_id)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update(key_share=True)  # FOR NO KEY UPDATE (module docstring)
    return account_of((await conn.execute(query)).one())


async def lock_account(conn: AsyncConnection, space_id: str) -> Account:
    return await load_account(conn, space_id, lock=True)


async def plan_exists(conn: AsyncConnection, plan: str) -> bool:
    row = (await conn.execute(sa.select(plans.c.id).where(plans.c.id == plan))).first()
    return row is not None


async def quota_of(conn: AsyncConnection, plan: str, meter: str) -> tuple[int, int | None]:
    """``(quota, rate_cents)`` of ``meter`` on ``plan``; :class:`QuotaCheckError` if absent."""
    row = (
        await conn.execute(
            sa.select(plan_quotas.c.quota, plan_quotas.c.rate_cents).where(
                plan_quotas.c.plan_id == plan, plan_quotas.c.meter == meter
            )
        )
    ).first()
    if row is None:
        raise QuotaCheckError(f"plan {plan} defines no quota for {meter}")
    return int(row.quota), None if row.rate_cents is None else int(row.rate_cents)


async def used(conn: AsyncConnection, space_id: str, period: str, meter: str) -> int:
    row = (
        await conn.execute(
            sa.select(usage_rollups.c.units).where(
                usage_rollups.c.space_id == space_id,
                usage_rollups.c.period == period,
                usage_rollups.c.meter == meter,
            )
        )
    ).first()
    return 0 if row is None else int(row.units)


async def add_usage(
    conn: AsyncConnection, space_id: str, period: str, meter: str, units: int, cost: int
) -> None:
    """Add ``units`` and ``cost`` to the (space, period, meter) rollup."""
    at = now_ms()
    stmt = dialect_insert(conn, usage_rollups).values(
        space_id=space_id, period=period, meter=meter, units=units, cost_cents=cost, updated_at=at
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[usage_rollups.c.space_id, usage_rollups.c.period, usage_rollups.c.meter],
        set_={
            "units": usage_rollups.c.units + units,
            "cost_cents": usage_rollups.c.cost_cents + cost,
            "updated_at": at,
        },
    )
    await conn.execute(stmt)


async def change_balance(
    conn: AsyncConnection,
    account: Account,
    delta: int,
    *,
    kind: str,
    principal_id: str | None = None,
    idempotency_key: str | None = None,
    meter: str | None = None,
    units: int | None = None,
    period: str | None = None,
    detail: str | None = None,
    ledger_id: str | None = None,
) -> Account | None:
    """Add ``delta`` cents to the (locked) account's balance, recorded in the ledger; returns
    the account after it. With an ``idempotency_key`` the ledger row claims (space, kind, key)
    first: None when it was claimed before (nothing changed; the caller replays that row)."""
    after = replace(
        account, balance_cents=account.balance_cents + delta, version=account.version + 1
    )
    claimed = await conn.execute(
        dialect_insert(conn, billing_ledger)
        .values(
            id=ledger_id or new_id("bil"),
            space_id=account.space_id,
            at=now_ms(),
            kind=kind,
            amount_cents=delta,
            balance_after_cents=after.balance_cents,
            plan=account.plan,
            meter=meter,
            units=units,
            period=period,
            idempotency_key=idempotency_key,
            principal_id=principal_id,
            detail=detail,
        )
        .on_conflict_do_nothing()
    )
    if claimed.rowcount != 1:
        return None
    await conn.execute(
        sa.update(spaces)
        .where(spaces.c.id == account.space_id)
        .values(
            balance_cents=spaces.c.balance_cents + delta,
            billing_version=spaces.c.billing_version + 1,
        )
    )
    return after


async def change_plan(
    conn: AsyncConnection, account: Account, plan: str, principal_id: str
) -> Account:
    """Move the (locked) account to ``plan`` (which exists); recorded in the ledger."""
    if plan == account.plan:
        return account
    await conn.execute(
        sa.update(spaces)
        .where(spaces.c.id == account.space_id)
        .values(
            plan=plan,
            billing_version=spaces.c.billing_version + 1,
            version=spaces.c.version + 1,  # ``plan`` is part of the space resource too
            updated_at=now_ms(),
        )
    )
    after = replace(account, plan=plan, version=account.version + 1)
    await conn.execute(
        sa.insert(billing_ledger).values(
            id=new_id("bil"),
            space_id=account.space_id,
            at=now_ms(),
            kind="plan",
            amount_cents=0,
            balance_after_cents=account.balance_cents,
            plan=plan,
            principal_id=principal_id,
            detail=f"{account.plan} -> {plan}",
        )
    )
    return after


def wanted_status(account: Account, quota: int | None, rate: int | None, used_requests: int) -> str:
    """``blocked`` when the space cannot be admitted one more request this period (``quota``
    None: the plan lacks the request meter — fail closed)."""
    if account.exempt:
        return ACTIVE
    if quota is None:
        return BLOCKED
    allowed = decide(quota, rate, used_requests, 1, account.balance_cents).allowed
    return ACTIVE if allowed else BLOCKED


async def request_status(conn: AsyncConnection, account: Account, period: str) -> str:
    """:func:`wanted_status` of ``account`` in ``period``, read from SQL."""
    try:
        quota, rate = await quota_of(conn, account.plan, REQUEST_METER)
    except QuotaCheckError:
        return wanted_status(account, None, None, 0)
    return wanted_status(
        account, quota, rate, await used(conn, account.space_id, period, REQUEST_METER)
    )


async def set_status(
    conn: AsyncConnection, space_id: str, version: int, status: str, request_id: str
) -> list[str] | None:
    """Set the billing status if the account is still at ``version`` (optimistic: a plan
    change or credit in between wins, and the next evaluation sees it). Returns the space's
    hostnames, whose records must be republished, or None when the account had moved on."""
    res = await conn.execute(
        sa.update(spaces)
        .where(spaces.c.id == space_id, spaces.c.billing_version == version)
        .values(billing_status=status, billing_version=version + 1)
    )
    if res.rowcount != 1:
        return None
    await conn.execute(
        sa.insert(audit_log).values(
            id=new_id("aud"),
            at=now_ms(),
            principal_id=None,
            space_id=space_id,
            action="billing_block" if status == BLOCKED else "billing_unblock",
            resource=f"space:{space_id}/billing",
            request_id=request_id,
            outcome="success",
        )
    )
    rows = await conn.execute(
        sa.select(hostnames.c.host)
        .where(hostnames.c.space_id == space_id)
        .order_by(hostnames.c.host)
    )
    return list(rows.scalars().all())


async def refresh_status(
    conn: AsyncConnection, account: Account, period: str, request_id: str
) -> tuple[Account, list[str]]:
    """Re-decide the (locked) account's status now (after a plan change, credit or charge);
    returns it and the hostnames to republish."""
    want = await request_status(conn, account, period)
    if want == account.status:
        return account, []
    hosts = await set_status(conn, account.space_id, account.version, want, request_id)
    if hosts is None:  # cannot happen on a locked account; keep what SQL holds
        return await load_account(conn, account.space_id), []
    return replace(account, status=want, version=account.version + 1), hosts
