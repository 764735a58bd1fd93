"""Quota arithmetic per plan and meter, periods and the seeded catalogue (admin/billing/meters)."""

from __future__ import annotations

import calendar
import importlib.util
from pathlib import Path

import pytest

from admin.billing.meters import (
    METERS,
    SEEDED_PLANS,
    UNITS,
    Decision,
    Outcome,
    billable_units,
    consumed_cost,
    decide,
    parse_period,
    percent,
    period_bounds,
    period_from_yyyymm,
    period_of,
    shift_period,
)

ROOT = Path(__file__).resolve().parents[2]

# The spec's table (spec/control-plane.md): meter -> (Free, Plus, PayG rate in cents).
SPEC = {
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


def test_ten_meters_and_the_seeded_plans_are_the_specs() -> None:
    assert tuple(SPEC) == METERS and len(METERS) == 10
    assert set(UNITS) == set(METERS)
    assert set(SEEDED_PLANS) == {"plan_free", "plan_plus", "plan_payg"}
    for meter, (free, plus, rate) in SPEC.items():
        assert SEEDED_PLANS["plan_free"][1][meter] == (free, None)
        assert SEEDED_PLANS["plan_plus"][1][meter] == (plus, None)
        assert SEEDED_PLANS["plan_payg"][1][meter] == (-1, rate)


def test_the_migration_seeds_the_same_catalogue() -> None:
    path = ROOT / "admin" / "migrations" / "versions" / "0006_billing.py"
    spec = importlib.util.spec_from_file_location("billing_migration", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.SEED == SPEC
    assert module.UNITS == UNITS
    assert (module.revision, module.down_revision) == ("0006", "0005")


# ------------------------------------------------------------------------------ arithmetic


@pytest.mark.parametrize("meter", METERS)
@pytest.mark.parametrize("plan", ["plan_free", "plan_plus"])
def test_included_quota_per_plan_and_meter(plan: str, meter: str) -> None:
    quota, rate = SEEDED_PLANS[plan][1][meter]
    if quota == 0:  # Free browser_seconds: not on the plan at all
        assert decide(quota, rate, 0, 1, 10**9) == Decision(Outcome.UNAVAILABLE)
        return
    assert decide(quota, rate, 0, quota, 0) == Decision(Outcome.INCLUDED)
    assert decide(quota, rate, quota - 1, 1, 0).allowed
    # One unit beyond a hard cap is refused, whatever the balance.
    assert decide(quota, rate, quota, 1, 10**9) == Decision(Outcome.OVER_QUOTA)
    assert decide(quota, rate, quota - 1, 2, 10**9) == Decision(Outcome.OVER_QUOTA)
    assert decide(quota, rate, 0, 0, 0).allowed  # nothing consumed


@pytest.mark.parametrize("meter", METERS)
def test_payg_is_balance_gated_at_its_rate(meter: str) -> None:
    quota, rate = SEEDED_PLANS["plan_payg"][1][meter]
    assert quota == -1 and rate is not None
    assert decide(quota, rate, 10**6, 3, 3 * rate) == Decision(Outcome.CHARGED, 3 * rate)
    assert decide(quota, rate, 0, 3, 3 * rate - 1) == Decision(
        Outcome.INSUFFICIENT_BALANCE, 3 * rate
    )
    assert not decide(quota, rate, 0, 1, 0).allowed
    assert consumed_cost(quota, rate, 10**6, 7) == 7 * rate


def test_balance_gated_without_a_rate_fails_closed() -> None:
    assert decide(-1, None, 0, 1, 10**9) == Decision(Outcome.NO_RATE)
    assert not decide(-1, None, 0, 0, 10**9).allowed
    assert consumed_cost(-1, None, 0, 5) == 0  # cannot be priced (the status check blocks)


def test_quota_zero_is_unavailable_even_with_a_rate_or_for_zero_units() -> None:
    assert decide(0, 5, 0, 1, 10**9) == Decision(Outcome.UNAVAILABLE)
    assert decide(0, None, 0, 0, 10**9) == Decision(Outcome.UNAVAILABLE)


def test_an_included_quota_with_a_rate_charges_only_the_overage() -> None:
    # 100 included, 2 cents per unit beyond.
    assert decide(100, 2, 90, 10, 0) == Decision(Outcome.INCLUDED)
    assert decide(100, 2, 90, 15, 10) == Decision(Outcome.CHARGED, 10)
    assert decide(100, 2, 90, 15, 9) == Decision(Outcome.INSUFFICIENT_BALANCE, 10)
    assert decide(100, 2, 120, 5, 10) == Decision(Outcome.CHARGED, 10)
    assert decide(100, 0, 120, 5, 0) == Decision(Outcome.CHARGED, 0)  # free overage
    assert billable_units(100, 90, 15) == 5
    assert billable_units(100, 120, 5) == 5
    assert billable_units(100, 0, 100) == 0
    assert billable_units(-1, 0, 4) == 4
    assert consumed_cost(100, 2, 95, 10) == 10  # the gateway's requests past the quota
    assert consumed_cost(100, None, 95, 10) == 0  # a hard cap costs nothing; it blocks


def test_percent() -> None:
    assert percent(80, 100) == 80.0
    assert percent(999, 1000) == 99.9  # floored: never rounded up to 100
    assert percent(1, 3) == 33.3
    assert percent(150, 100) == 150.0
    assert percent(5, 0) is None and percent(5, -1) is None


# ------------------------------------------------------------------------------ periods


def test_the_utc_month_boundary() -> None:
    last = calendar.timegm((2026, 1, 31, 23, 59, 59))
    assert period_of(last) == "2026-01"
    assert period_of(last + 1) == "2026-02"  # 00:00:00 is the next month
    assert period_of(calendar.timegm((2024, 2, 29, 12, 0, 0))) == "2024-02"
    assert period_bounds("2026-01") == (
        float(calendar.timegm((2026, 1, 1, 0, 0, 0))),
        float(last + 1),
    )
    assert period_bounds("2025-12")[1] == float(calendar.timegm((2026, 1, 1, 0, 0, 0)))


def test_period_arithmetic_and_parsing() -> None:
    assert shift_period("2026-01", -1) == "2025-12"
    assert shift_period("2025-12", 1) == "2026-01"
    assert shift_period("2026-03", -14) == "2025-01"
    assert parse_period("2026-11") == "2026-11"
    assert period_from_yyyymm("202402") == "2024-02"
    for bad in ("2026-13", "2026-00", "2026-1", "26-01", "1999-12", "2026-01-01", "", "abcd-ef"):
        with pytest.raises(ValueError):
            parse_period(bad)
    for bad in ("20241", "2024001", "202413", "x"):
        with pytest.raises(ValueError):
            period_from_yyyymm(bad)
