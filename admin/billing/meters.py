"""Meters, the seeded plans, billing periods and the quota arithmetic (pure: no I/O).

A plan gives every meter a monthly ``quota`` and an optional per-unit ``rate_cents``:

* ``quota > 0``: that many units are included each month. Beyond them, with a rate, each unit
  costs ``rate_cents`` from the prepaid balance (and is refused when the balance cannot pay);
  without a rate the quota is a hard cap.
* ``quota == 0``: the meter is unavailable on the plan (refused, whatever the balance).
* ``quota == -1``: balance-gated: every unit costs ``rate_cents``; allowed while the balance
  pays for it. A balance-gated meter without a rate cannot be priced, so it fails closed
  (refused; the admin answers 503: the check cannot be made, it is not the tenant's fault).

Periods are UTC calendar months, written ``YYYY-MM`` (the gateway's Redis keys use ``yyyymm``).
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal, get_args

MeterName = Literal[
    "llm_tokens_input",
    "llm_tokens_output",
    "embedding_count",
    "vector_search_count",
    "exec_seconds",
    "browser_seconds",
    "web_search_count",
    "r2_storage_gb_month",
    "wfp_requests",
    "queue_messages",
]
METERS: Final[tuple[str, ...]] = get_args(MeterName)
UNITS: Final[dict[str, str]] = {
    "llm_tokens_input": "tokens",
    "llm_tokens_output": "tokens",
    "embedding_count": "embeddings",
    "vector_search_count": "searches",
    "exec_seconds": "seconds",
    "browser_seconds": "seconds",
    "web_search_count": "searches",
    "r2_storage_gb_month": "GB-months",
    "wfp_requests": "requests",
    "queue_messages": "messages",
}
# Counted by the gateway for every forwarded request; never accepted as a usage event (it
# would be counted twice). Its quota decides whether a space's hostnames are blocked.
REQUEST_METER: Final = "wfp_requests"

DEFAULT_PLAN: Final = "plan_free"
BALANCE_GATED: Final = -1
UNAVAILABLE: Final = 0

# Seeded monthly quotas (spec/control-plane.md): Free / Plus, and PayG's per-unit rate in cents.
_SEED: Final[dict[str, tuple[int, int, int]]] = {
    "llm_tokens_input": (20_000, 250_000, 3),
    "llm_tokens_output": (10_000, 125_000, 15),
    "embedding_count": (200, 2_500, 1),
    "vector_search_count": (100, 1_250, 2),
    "exec_seconds": (600, 1_800, 5),
    "browser_seconds": (0, 120, 10),
    "web_search_count": (20, 400, 5),
    "r2_storage_gb_month": (1, 5, 2_300),
    "wfp_requests": (100, 1_000, 1),
    "queue_messages": (100, 1_000, 1),
}
# plan id -> (display name, {meter: (quota, rate_cents or None)})
SEEDED_PLANS: Final[dict[str, tuple[str, dict[str, tuple[int, int | None]]]]] = {
    "plan_free": ("Free", {m: (free, None) for m, (free, _plus, _rate) in _SEED.items()}),
    "plan_plus": ("Plus", {m: (plus, None) for m, (_free, plus, _rate) in _SEED.items()}),
    "plan_payg": (
        "Pay as you go",
        {m: (BALANCE_GATED, rate) for m, (_free, _plus, rate) in _SEED.items()},
    ),
}


# ------------------------------------------------------------------------------ periods

_PERIOD = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")


def period_of(ts: float) -> str:
    """``YYYY-MM`` of ``ts`` (epoch seconds) in UTC."""
    return time.strftime("%Y-%m", time.gmtime(ts))


def parse_period(text: str) -> str:
    """``text`` if it is a ``YYYY-MM`` period (year 2000..9999), else ValueError."""
    m = _PERIOD.fullmatch(text)
    if m is None or int(m.group(1)) < 2000:
        raise ValueError("must be a month as YYYY-MM")
    return text


def shift_period(period: str, months: int) -> str:
    """The period ``months`` after (negative: before) ``period``."""
    index = int(period[:4]) * 12 + int(period[5:7]) - 1 + months
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def period_from_yyyymm(yyyymm: str) -> str:
    """The gateway's ``yyyymm`` as ``YYYY-MM`` (ValueError when it is not a month)."""
    return parse_period(f"{yyyymm[:4]}-{yyyymm[4:]}" if len(yyyymm) == 6 else "")


def period_bounds(period: str) -> tuple[float, float]:
    """``[start, end)`` of ``period`` in epoch seconds (UTC)."""
    year, month = int(period[:4]), int(period[5:7])
    start = calendar.timegm((year, month, 1, 0, 0, 0))
    nxt = shift_period(period, 1)
    return float(start), float(calendar.timegm((int(nxt[:4]), int(nxt[5:7]), 1, 0, 0, 0)))


# ------------------------------------------------------------------------------ arithmetic


class Outcome(StrEnum):
    INCLUDED = "included"  # within the plan's quota, no cost
    CHARGED = "charged"  # paid from the balance
    UNAVAILABLE = "unavailable"  # quota 0: not on this plan
    OVER_QUOTA = "over_quota"  # a hard cap reached
    INSUFFICIENT_BALANCE = "insufficient_balance"
    NO_RATE = "no_rate"  # balance-gated without a rate: cannot be priced (fail closed)


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    cost_cents: int = 0

    @property
    def allowed(self) -> bool:
        return self.outcome in (Outcome.INCLUDED, Outcome.CHARGED)


def billable_units(quota: int, used: int, units: int) -> int:
    """Of ``units`` more after ``used`` this period, how many are beyond what ``quota``
    includes (all of them when balance-gated)."""
    if quota < 0:
        return units
    return max(0, used + units - max(used, quota))


def decide(quota: int, rate: int | None, used: int, units: int, balance: int) -> Decision:
    """May ``units`` more be consumed after ``used`` this period, and at what cost?"""
    if quota == UNAVAILABLE:
        return Decision(Outcome.UNAVAILABLE)
    if quota < 0 and rate is None:
        return Decision(Outcome.NO_RATE)
    extra = billable_units(quota, used, units)
    if extra == 0:
        return Decision(Outcome.INCLUDED)
    if rate is None:
        return Decision(Outcome.OVER_QUOTA)
    cost = extra * rate
    if cost > balance:
        return Decision(Outcome.INSUFFICIENT_BALANCE, cost)
    return Decision(Outcome.CHARGED, cost)


def consumed_cost(quota: int, rate: int | None, used: int, units: int) -> int:
    """The cost of ``units`` already consumed (the gateway's requests, counted after the fact):
    charged whatever the balance, which may go below zero by one collector cycle's traffic."""
    if rate is None:
        return 0
    return billable_units(quota, used, units) * rate


def percent(units: int, quota: int) -> float | None:
    """Share of a positive quota used, floored to 0.1 %; None for quota 0 / -1."""
    if quota <= 0:
        return None
    return (units * 1000 // quota) / 10
