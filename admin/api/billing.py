"""A space's billing account (plan, status, balance), credits, and usage: events and reports.

Usage events are what runtimes and agents report for the meters the gateway does not count.
Each is idempotent by its ``idempotency_key`` (a unique constraint per space, so 50 concurrent
posts of one key count once: the first claims the key, the others find it claimed and replay it),
checked against the quota first (402 with the spec's details; 503 when the check cannot be
made: fail closed), and rolled up per (space, meter, UTC month) with its cost debited from the
balance — all in the request's one transaction.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import Field

from admin.api.models import Strict
from admin.billing.accounts import (
    Account,
    QuotaCheckError,
    add_usage,
    change_balance,
    change_plan,
    dialect_insert,
    load_account,
    lock_account,
    plan_exists,
    quota_of,
    refresh_status,
    used,
)
from admin.billing.meters import (
    REQUEST_METER,
    Decision,
    MeterName,
    Outcome,
    decide,
    parse_period,
    period_of,
    shift_period,
)
from admin.billing.report import usage_report
from admin.billing.schema import billing_ledger, usage_events
from admin.db import new_id, now_ms
from admin.errors import NotFound, PaymentRequired, Unavailable, Unprocessable, field_error
from admin.framework import Ctx, endpoint, etag

MAX_UNITS = 10**9  # per event: with rates up to 10**9 ¢ a cost stays far inside 64 bits
MAX_CREDIT_CENTS = 10**12
FUTURE_SKEW_S = 300  # an event may be stamped this far ahead of the admin's clock


class BillingAccount(Strict):
    space_id: str
    plan: str
    status: Literal["active", "blocked"]
    balance_cents: int
    etag: str


class BillingPatch(Strict):
    plan: str = Field(min_length=1, max_length=32)


class CreditIn(Strict):
    amount_cents: int = Field(ge=1, le=MAX_CREDIT_CENTS)
    idempotency_key: str = Field(min_length=1, max_length=200)


class Credit(Strict):
    id: str
    space_id: str
    amount_cents: int
    idempotency_key: str
    balance_after_cents: int
    created_at: int
    replayed: bool


class UsageIn(Strict):
    meter: MeterName
    units: int = Field(ge=0, le=MAX_UNITS)
    idempotency_key: str = Field(min_length=1, max_length=200)
    at: str | None = Field(
        default=None,
        max_length=64,
        description="RFC 3339 time of the usage (default now); this month or the previous one",
        json_schema_extra={"format": "date-time"},
    )


class UsageEvent(Strict):
    id: str
    space_id: str
    meter: str
    units: int
    period: str
    at: str
    cost_cents: int
    idempotency_key: str
    replayed: bool


class MeterUsage(Strict):
    units: int
    quota: int
    percent: float | None
    cost_cents: int


class UsageReport(Strict):
    period: str
    plan: str
    meters: dict[str, MeterUsage]


def _account(account: Account) -> dict[str, Any]:
    return {
        "space_id": account.space_id,
        "plan": account.plan,
        "status": account.status,
        "balance_cents": account.balance_cents,
        "etag": etag(f"{account.space_id}.billing", account.version),
    }


def _render_account(ctx: Ctx, account: Account) -> dict[str, Any]:
    out = _account(account)
    ctx.headers["etag"] = out["etag"]
    return out


# ------------------------------------------------------------------------------ account


@endpoint(
    "GET",
    "/api/spaces/{space}/billing",
    scope="billing:read",
    role="viewer",
    response=BillingAccount,
    tag="billing",
    summary="The space's billing account: plan, status (active | blocked), balance",
)
async def get_billing(ctx: Ctx) -> dict[str, Any]:
    assert ctx.space_id is not None
    return _render_account(ctx, await load_account(ctx.conn, ctx.space_id))


@endpoint(
    "PATCH",
    "/api/spaces/{space}/billing",
    scope="billing:write",
    role="owner",
    body=BillingPatch,
    response=BillingAccount,
    tag="billing",
    summary="Change the space's plan (If-Match honoured); unblocks at once when it allows",
)
async def patch_billing(ctx: Ctx) -> dict[str, Any]:
    body: BillingPatch = ctx.body
    assert ctx.space_id is not None
    account = await lock_account(ctx.conn, ctx.space_id)
    ctx.if_match(_account(account)["etag"])
    if not await plan_exists(ctx.conn, body.plan):
        raise field_error("body.plan", f"no such plan: {body.plan}")
    account = await change_plan(ctx.conn, account, body.plan, ctx.principal.id)
    account, hosts = await refresh_status(
        ctx.conn, account, ctx.state.billing.period(), ctx.request_id
    )
    ctx.enqueue_publish(hosts)
    ctx.state.billing.warnings.invalidate(ctx.space_id)
    ctx.resource = f"space:{ctx.space_id}/billing"
    return _render_account(ctx, account)


@endpoint(
    "POST",
    "/api/spaces/{space}/billing/credit",
    scope="system:admin",
    body=CreditIn,
    response=Credit,
    status=201,
    tag="billing",
    summary="Add prepaid balance (idempotent by idempotency_key); unblocks at once when it allows",
)
async def credit(ctx: Ctx) -> dict[str, Any]:
    body: CreditIn = ctx.body
    assert ctx.space_id is not None
    ctx.resource = f"space:{ctx.space_id}/billing"
    account = await lock_account(ctx.conn, ctx.space_id)
    credit_id = new_id("bil")
    after = await change_balance(
        ctx.conn,
        account,
        body.amount_cents,
        kind="credit",
        principal_id=ctx.principal.id,
        idempotency_key=body.idempotency_key,
        ledger_id=credit_id,
    )
    if after is None:  # this key was used before: replay that credit
        row = (
            await ctx.conn.execute(
                sa.select(billing_ledger).where(
                    billing_ledger.c.space_id == ctx.space_id,
                    billing_ledger.c.kind == "credit",
                    billing_ledger.c.idempotency_key == body.idempotency_key,
                )
            )
        ).one()
        if int(row.amount_cents) != body.amount_cents:
            raise _mismatch("a credit of a different amount")
        ctx.status = 200
        return _credit(row, replayed=True)
    _now, hosts = await refresh_status(ctx.conn, after, ctx.state.billing.period(), ctx.request_id)
    ctx.enqueue_publish(hosts)
    ctx.state.billing.warnings.invalidate(ctx.space_id)
    row = (
        await ctx.conn.execute(sa.select(billing_ledger).where(billing_ledger.c.id == credit_id))
    ).one()
    return _credit(row, replayed=False)


def _credit(row: Any, *, replayed: bool) -> dict[str, Any]:
    return {
        "id": row.id,
        "space_id": row.space_id,
        "amount_cents": int(row.amount_cents),
        "idempotency_key": row.idempotency_key,
        "balance_after_cents": int(row.balance_after_cents),
        "created_at": int(row.at),
        "replayed": replayed,
    }


def _mismatch(what: str) -> Unprocessable:
    return Unprocessable(
        f"body.idempotency_key: this key was used for {what}",
        [{"path": "body.idempotency_key", "message": f"already used for {what}"}],
        code="idempotency_mismatch",
    )


# ------------------------------------------------------------------------------ usage


def _parse_at(raw: str | None, now: float) -> tuple[float, str]:
    """``(epoch seconds, period)`` of an event's ``at`` (default now), or 422 naming it."""
    if raw is None:
        return now, period_of(now)
    try:
        when = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise field_error(
            "body.at", "must be an RFC 3339 time, e.g. 2026-03-31T23:59:59Z"
        ) from None
    if when.tzinfo is None:
        raise field_error("body.at", "needs a time zone (Z or an offset)")
    ts = when.timestamp()
    period = period_of(ts)
    current = period_of(now)
    if period not in (current, shift_period(current, -1)):
        raise field_error(
            "body.at", f"usage must fall in {current} or {shift_period(current, -1)}, not {period}"
        )
    if ts > now + FUTURE_SKEW_S:
        raise field_error("body.at", "is in the future")
    return ts, period


def _iso(ms: int) -> str:
    return (
        dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")
    ).replace("+00:00", "Z")


def _event(row: Any, *, replayed: bool) -> dict[str, Any]:
    return {
        "id": row.id,
        "space_id": row.space_id,
        "meter": row.meter,
        "units": int(row.units),
        "period": row.period,
        "at": _iso(int(row.at)),
        "cost_cents": int(row.cost_cents),
        "idempotency_key": row.idempotency_key,
        "replayed": replayed,
    }


@endpoint(
    "POST",
    "/api/spaces/{space}/usage",
    scope="usage:write",  # billing:write implies it (admin.auth); a runtime's managed token too
    role="editor",
    body=UsageIn,
    response=UsageEvent,
    status=201,
    tag="billing",
    responses=(
        (402, None, "over quota: details {meter, used, quota, plan, balance_cents}"),
        (503, None, "the quota check could not be made (fails closed)"),
    ),
    summary="Record usage of a meter (idempotent by idempotency_key; 402 over quota)",
)
async def record_usage(ctx: Ctx) -> dict[str, Any]:
    body: UsageIn = ctx.body
    space = ctx.space_id
    assert space is not None
    if body.meter == REQUEST_METER:
        raise field_error("body.meter", f"{REQUEST_METER} is counted by the gateway")
    billing = ctx.state.billing
    ts, period = _parse_at(body.at, billing.now())
    ctx.resource = f"space:{space}/usage"
    event_id, conn = new_id("use"), ctx.conn
    try:
        # The account first (lock order, admin/billing/accounts.py): concurrent events of the
        # space queue here, so the check below and the write it allows are one step.
        account = await lock_account(conn, space)
        # Then claim the key (a unique constraint, not a read-then-write): a key posted before
        # — or by a concurrent post that got the lock first — is replayed, never counted again.
        claimed = await conn.execute(
            dialect_insert(conn, usage_events)
            .values(
                id=event_id,
                space_id=space,
                idempotency_key=body.idempotency_key,
                meter=body.meter,
                units=body.units,
                period=period,
                at=int(ts * 1000),
                at_given=body.at is not None,
                cost_cents=0,
                principal_id=ctx.principal.id,
                created_at=now_ms(),
            )
            .on_conflict_do_nothing()
        )
        if claimed.rowcount != 1:
            return await _replay(ctx, body, ts)
        quota, rate = await quota_of(conn, account.plan, body.meter)
        so_far = await used(conn, space, period, body.meter)
    except QuotaCheckError as exc:
        raise Unavailable(f"the quota check failed, so the usage is refused: {exc}") from None
    except sa.exc.OperationalError as exc:
        raise Unavailable(f"the quota check failed (database: {exc.orig})") from None
    if account.exempt:  # the platform's own space: metered, never refused nor charged
        decision = Decision(Outcome.INCLUDED)
    else:
        decision = decide(quota, rate, so_far, body.units, account.balance_cents)
    if decision.outcome == Outcome.NO_RATE:
        raise Unavailable(
            f"{body.meter} is balance-gated on {account.plan} but has no rate; "
            "the quota check fails closed"
        )
    if not decision.allowed:
        raise PaymentRequired(
            _refusal(body.meter, decision.outcome),
            details={
                "meter": body.meter,
                "used": so_far,
                "quota": quota,
                "plan": account.plan,
                "balance_cents": account.balance_cents,
            },
        )
    cost = decision.cost_cents
    await add_usage(conn, space, period, body.meter, body.units, cost)
    if cost:
        charged = await change_balance(
            conn,
            account,
            -cost,
            kind="debit",
            principal_id=ctx.principal.id,
            idempotency_key=body.idempotency_key,
            meter=body.meter,
            units=body.units,
            period=period,
        )
        assert charged is not None  # (space, debit, key) is as unique as the event itself
        await conn.execute(
            sa.update(usage_events).where(usage_events.c.id == event_id).values(cost_cents=cost)
        )
        # The balance fell: the request quota may now block the space (PayG).
        _after, hosts = await refresh_status(conn, charged, billing.period(), ctx.request_id)
        ctx.enqueue_publish(hosts)
    ctx.quota_warning = await billing.warnings.refresh(conn, space, billing.period())
    row = (await conn.execute(sa.select(usage_events).where(usage_events.c.id == event_id))).one()
    return _event(row, replayed=False)


def _refusal(meter: str, outcome: Outcome) -> str:
    if outcome == Outcome.UNAVAILABLE:
        return f"{meter} is not available on the space's plan"
    if outcome == Outcome.INSUFFICIENT_BALANCE:
        return f"the balance does not cover this {meter} usage"
    return f"the space's {meter} quota for this month is used up"


async def _replay(ctx: Ctx, body: UsageIn, ts: float) -> dict[str, Any]:
    row = (
        await ctx.conn.execute(
            sa.select(usage_events).where(
                usage_events.c.space_id == ctx.space_id,
                usage_events.c.idempotency_key == body.idempotency_key,
            )
        )
    ).one()
    same = row.meter == body.meter and int(row.units) == body.units
    if same and body.at is not None and row.at_given:
        same = int(row.at) == int(ts * 1000)
    if not same:
        raise _mismatch("a different event")
    ctx.status = 200
    return _event(row, replayed=True)


@endpoint(
    "GET",
    "/api/spaces/{space}/usage",
    scope="billing:read",
    role="viewer",
    response=UsageReport,
    tag="billing",
    query=(("period", "string", "YYYY-MM (UTC month); default the current one"),),
    summary="Usage per meter in a month: units, quota, percent of it, cost",
)
async def get_usage(ctx: Ctx) -> dict[str, Any]:
    assert ctx.space_id is not None
    current = ctx.state.billing.period()
    raw = ctx.query_param("period")
    period = current
    if raw is not None:
        try:
            period = parse_period(raw)
        except ValueError as exc:
            raise Unprocessable(
                f"query.period: {exc}", [{"path": "query.period", "message": str(exc)}]
            ) from None
        if period > current:
            raise Unprocessable(
                "query.period: is in the future",
                [{"path": "query.period", "message": f"after the current month {current}"}],
            )
    report = await usage_report(ctx.conn, ctx.space_id, period)
    if report is None:
        raise NotFound(f"space {ctx.space_id} not found")
    return report
