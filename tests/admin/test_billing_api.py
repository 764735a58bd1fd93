"""The billing API: plans, the billing account, credits, usage events (402/503), usage reports,
and ``X-Quota-Warning`` — against a real SQLite file through the app's own stack."""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from admin.billing.schema import billing_ledger, plan_quotas, usage_events, usage_rollups
from admin.db import audit_log, spaces
from tests.admin.conftest import (
    assert_error,
    auth,
    bootstrap,
    create_space,
    make_user,
    rows,
    sql,
    state_of,
)

JAN_LAST = float(calendar.timegm((2026, 1, 31, 23, 59, 59)))
FEB_FIRST = JAN_LAST + 1


class Api:
    def __init__(self, client: TestClient, token: str, space: str) -> None:
        self.client = client
        self.token = token
        self.space = space

    def call(self, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        headers = {**auth(token or self.token), **kw.pop("headers", {})}
        return self.client.request(method, path, headers=headers, **kw)

    def usage(self, meter: str, units: Any, key: str, **extra: Any) -> Any:
        body = {"meter": meter, "units": units, "idempotency_key": key, **extra}
        return self.call("POST", f"/api/spaces/{self.space}/usage", json=body)

    def report(self, period: str | None = None) -> dict[str, Any]:
        q = f"?period={period}" if period else ""
        r = self.call("GET", f"/api/spaces/{self.space}/usage{q}")
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    def billing(self) -> dict[str, Any]:
        r = self.call("GET", f"/api/spaces/{self.space}/billing")
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    def set_plan(self, plan: str, **kw: Any) -> Any:
        return self.call("PATCH", f"/api/spaces/{self.space}/billing", json={"plan": plan}, **kw)

    def credit(self, cents: int, key: str) -> Any:
        return self.call(
            "POST",
            f"/api/spaces/{self.space}/billing/credit",
            json={"amount_cents": cents, "idempotency_key": key},
        )


@pytest.fixture
def api(client: TestClient) -> Iterator[Api]:
    system = bootstrap(client)
    state_of(client).billing.clock = lambda: JAN_LAST - 3600  # a fixed time in January 2026
    yield Api(client, system, create_space(client, system, "tenant"))


def set_clock(api: Api, t: float) -> None:
    state_of(api.client).billing.clock = lambda: t


def rollup(api: Api, meter: str, period: str = "2026-01") -> tuple[int, int] | None:
    found = rows(
        api.client,
        sa.select(usage_rollups.c.units, usage_rollups.c.cost_cents).where(
            usage_rollups.c.space_id == api.space,
            usage_rollups.c.meter == meter,
            usage_rollups.c.period == period,
        ),
    )
    return (int(found[0].units), int(found[0].cost_cents)) if found else None


def field_of(resp: Any) -> str:
    err = assert_error(resp, 422)
    return str(err["details"]["fields"][0]["path"])


# ------------------------------------------------------------------------------ plans


def test_plans_are_listed_with_their_quotas(api: Api) -> None:
    r = api.call("GET", "/api/plans")
    assert r.status_code == 200, r.text
    body = r.json()
    assert [p["id"] for p in body["items"]] == ["plan_free", "plan_payg", "plan_plus"]
    free = api.call("GET", "/api/plans/plan_free").json()
    assert free["quotas"]["wfp_requests"] == {"quota": 100, "rate_cents": None, "unit": "requests"}
    assert free["quotas"]["browser_seconds"]["quota"] == 0
    payg = api.call("GET", "/api/plans/plan_payg").json()
    assert payg["quotas"]["r2_storage_gb_month"] == {
        "quota": -1,
        "rate_cents": 2300,
        "unit": "GB-months",
    }
    assert next(iter(payg["quotas"])) == "llm_tokens_input" and len(payg["quotas"]) == 10
    assert_error(api.call("GET", "/api/plans/plan_gold"), 404, "not_found")
    page = api.call("GET", "/api/plans?limit=2").json()
    assert len(page["items"]) == 2 and page["next_cursor"]


def test_the_system_admin_creates_and_edits_plans(api: Api) -> None:
    quotas = {m: {"quota": 10} for m in api.call("GET", "/api/plans/plan_free").json()["quotas"]}
    r = api.call("POST", "/api/plans", json={"id": "plan_team", "name": "Team", "quotas": quotas})
    assert r.status_code == 201, r.text
    etag = r.headers["etag"]
    assert_error(
        api.call("POST", "/api/plans", json={"id": "plan_team", "name": "T", "quotas": quotas}),
        409,
        "conflict",
    )
    r = api.call(
        "PATCH",
        "/api/plans/plan_team",
        json={"name": "Team+", "quotas": {"wfp_requests": {"quota": -1, "rate_cents": 2}}},
        headers={"if-match": etag},
    )
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "Team+"
    assert r.json()["quotas"]["wfp_requests"] == {"quota": -1, "rate_cents": 2, "unit": "requests"}
    assert_error(
        api.call("PATCH", "/api/plans/plan_team", json={"name": "x"}, headers={"if-match": etag}),
        412,
    )
    # A rate can be removed again (null), but not from a balance-gated quota.
    r = api.call(
        "PATCH", "/api/plans/plan_team", json={"quotas": {"wfp_requests": {"rate_cents": None}}}
    )
    assert field_of(r) == "body.quotas.wfp_requests.rate_cents"
    r = api.call(
        "PATCH",
        "/api/plans/plan_team",
        json={"quotas": {"wfp_requests": {"quota": 500, "rate_cents": None}}},
    )
    assert r.json()["quotas"]["wfp_requests"] == {
        "quota": 500,
        "rate_cents": None,
        "unit": "requests",
    }
    assert_error(api.call("PATCH", "/api/plans/plan_nope", json={"name": "x"}), 404)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"id": "gold", "name": "G"}, "body.id"),
        ({"id": "plan_Gold", "name": "G"}, "body.id"),
        ({"id": "plan_" + "x" * 28, "name": "G"}, "body.id"),
        ({"id": "plan_gold", "name": ""}, "body.name"),
        ({"id": "plan_gold", "name": "G", "quotas": {"wfp_requests": {"quota": 1}}}, None),
        ({"quotas": {"tokens": {"quota": 1}}}, "body.quotas.tokens.[key]"),
        ({"quotas": {"wfp_requests": {"quota": -2}}}, "body.quotas.wfp_requests.quota"),
        ({"quotas": {"wfp_requests": {"quota": 1.5}}}, "body.quotas.wfp_requests.quota"),
        (
            {"quotas": {"wfp_requests": {"quota": 1, "rate_cents": -1}}},
            "body.quotas.wfp_requests.rate_cents",
        ),
        ({"quotas": {"wfp_requests": {"quota": -1}}}, "body.quotas.wfp_requests.rate_cents"),
    ],
)
def test_bad_plans_are_refused_naming_the_field(
    api: Api, body: dict[str, Any], path: str | None
) -> None:
    full = {"id": "plan_gold", "name": "Gold", "quotas": {}, **body}
    if "quotas" in body and path and path.startswith("body.quotas.wfp"):
        full["quotas"] = {
            m: {"quota": 1} for m in api.call("GET", "/api/plans/plan_free").json()["quotas"]
        } | body["quotas"]
    r = api.call("POST", "/api/plans", json=full)
    if path is None:  # quotas for some meters only: every missing one is named
        err = assert_error(r, 422)
        paths = {f["path"] for f in err["details"]["fields"]}
        assert "body.quotas.llm_tokens_input" in paths and len(paths) == 9
    else:
        assert field_of(r) == path
    assert api.call("GET", "/api/plans/plan_gold").status_code == 404


# ------------------------------------------------------------------------------ account


def test_a_new_space_starts_on_free_and_the_owner_changes_its_plan(api: Api) -> None:
    account = api.billing()
    assert account == {
        "space_id": api.space,
        "plan": "plan_free",
        "status": "active",
        "balance_cents": 0,
        "etag": account["etag"],
    }
    space_etag = api.call("GET", f"/api/spaces/{api.space}").headers["etag"]
    r = api.set_plan("plan_plus", headers={"if-match": account["etag"]})
    assert r.status_code == 200, r.text
    assert r.json()["plan"] == "plan_plus" and r.json()["etag"] != account["etag"]
    assert r.headers["etag"] == r.json()["etag"]
    space = api.call("GET", f"/api/spaces/{api.space}")
    assert space.json()["plan"] == "plan_plus" and space.headers["etag"] != space_etag
    assert_error(api.set_plan("plan_free", headers={"if-match": account["etag"]}), 412)
    assert field_of(api.set_plan("plan_gold")) == "body.plan"
    assert field_of(api.call("PATCH", f"/api/spaces/{api.space}/billing", json={})) == "body.plan"
    ledger = rows(
        api.client, sa.select(billing_ledger).where(billing_ledger.c.space_id == api.space)
    )
    assert [(e.kind, e.detail, e.plan) for e in ledger] == [
        ("plan", "plan_free -> plan_plus", "plan_plus")
    ]
    audited = rows(
        api.client,
        sa.select(audit_log.c.action, audit_log.c.outcome).where(
            audit_log.c.space_id == api.space, audit_log.c.action == "patch_billing"
        ),
    )
    assert [(a.action, a.outcome) for a in audited] == [
        ("patch_billing", "success"),
        ("patch_billing", "precondition_failed"),
        ("patch_billing", "validation_failed"),
        ("patch_billing", "validation_failed"),
    ]


def test_an_admin_member_cannot_change_the_plan(api: Api) -> None:
    admin = make_user(api.client, api.token, "adm", api.space, "admin")
    assert_error(api.set_plan("plan_plus", token=admin), 403, "forbidden")
    assert api.call("GET", f"/api/spaces/{api.space}/billing", token=admin).status_code == 200


def test_credits_are_idempotent_by_their_key(api: Api) -> None:
    first = api.credit(500, "invoice-1")
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["balance_after_cents"] == 500 and body["replayed"] is False
    again = api.credit(500, "invoice-1")
    assert again.status_code == 200 and again.json() == {**body, "replayed": True}
    r = api.credit(501, "invoice-1")
    assert assert_error(r, 422, "idempotency_mismatch")["details"]["fields"][0]["path"] == (
        "body.idempotency_key"
    )
    assert api.credit(250, "invoice-2").json()["balance_after_cents"] == 750
    assert api.billing()["balance_cents"] == 750
    credits = rows(
        api.client,
        sa.select(billing_ledger.c.amount_cents, billing_ledger.c.principal_id).where(
            billing_ledger.c.space_id == api.space, billing_ledger.c.kind == "credit"
        ),
    )
    assert sorted(int(c.amount_cents) for c in credits) == [250, 500]
    for bad, path in (
        ({"amount_cents": 0, "idempotency_key": "k"}, "body.amount_cents"),
        ({"amount_cents": -5, "idempotency_key": "k"}, "body.amount_cents"),
        ({"amount_cents": 1.5, "idempotency_key": "k"}, "body.amount_cents"),
        ({"amount_cents": 10**13, "idempotency_key": "k"}, "body.amount_cents"),
        ({"amount_cents": 5}, "body.idempotency_key"),
        ({"amount_cents": 5, "idempotency_key": ""}, "body.idempotency_key"),
    ):
        r = api.call("POST", f"/api/spaces/{api.space}/billing/credit", json=bad)
        assert field_of(r) == path, bad
    assert api.billing()["balance_cents"] == 750


# ------------------------------------------------------------------------------ usage events


def test_usage_is_recorded_once_per_key_and_rolled_up(api: Api) -> None:
    r = api.usage("llm_tokens_input", 1200, "run-1")
    assert r.status_code == 201, r.text
    event = r.json()
    assert event["period"] == "2026-01" and event["cost_cents"] == 0 and not event["replayed"]
    assert event["at"].endswith("Z") and event["at"].startswith("2026-01-31T22:59:59")
    again = api.usage("llm_tokens_input", 1200, "run-1")
    assert again.status_code == 200 and again.json() == {**event, "replayed": True}
    err = assert_error(api.usage("llm_tokens_input", 1201, "run-1"), 422, "idempotency_mismatch")
    assert err["details"]["fields"][0]["path"] == "body.idempotency_key"
    assert_error(api.usage("exec_seconds", 1200, "run-1"), 422, "idempotency_mismatch")
    assert api.usage("llm_tokens_input", 300, "run-2").status_code == 201
    assert rollup(api, "llm_tokens_input") == (1500, 0)
    report = api.report()
    assert report["period"] == "2026-01" and report["plan"] == "plan_free"
    assert report["meters"]["llm_tokens_input"] == {
        "units": 1500,
        "quota": 20000,
        "percent": 7.5,
        "cost_cents": 0,
    }
    assert report["meters"]["browser_seconds"] == {
        "units": 0,
        "quota": 0,
        "percent": None,
        "cost_cents": 0,
    }
    assert list(report["meters"]) == list(api.report("2025-12")["meters"])
    assert api.report("2025-12")["meters"]["llm_tokens_input"]["units"] == 0


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"meter": "gpu_hours", "units": 1}, "body.meter"),
        ({"meter": "wfp_requests", "units": 1}, "body.meter"),
        ({"meter": "exec_seconds", "units": -1}, "body.units"),
        ({"meter": "exec_seconds", "units": 1.5}, "body.units"),
        ({"meter": "exec_seconds", "units": 2.0}, "body.units"),
        ({"meter": "exec_seconds", "units": "3"}, "body.units"),
        ({"meter": "exec_seconds", "units": True}, "body.units"),
        ({"meter": "exec_seconds", "units": 10**10}, "body.units"),
        ({"meter": "exec_seconds"}, "body.units"),
        ({"meter": "exec_seconds", "units": 1, "idempotency_key": ""}, "body.idempotency_key"),
        ({"meter": "exec_seconds", "units": 1, "idempotency_key": None}, "body.idempotency_key"),
        ({"meter": "exec_seconds", "units": 1, "at": "yesterday"}, "body.at"),
        ({"meter": "exec_seconds", "units": 1, "at": 1769900000}, "body.at"),
        ({"meter": "exec_seconds", "units": 1, "at": "2026-01-15T10:00:00"}, "body.at"),
        ({"meter": "exec_seconds", "units": 1, "at": "2025-11-30T23:59:59Z"}, "body.at"),
        ({"meter": "exec_seconds", "units": 1, "at": "2026-02-01T00:00:00Z"}, "body.at"),
        ({"meter": "exec_seconds", "units": 1, "at": "2026-01-31T23:30:00Z"}, "body.at"),
        ({"meter": "exec_seconds", "units": 1, "extra": 1}, "body.extra"),
    ],
)
def test_bad_usage_events_are_refused_naming_the_field(
    api: Api, body: dict[str, Any], path: str
) -> None:
    full = {"idempotency_key": "k1", **body}
    r = api.call("POST", f"/api/spaces/{api.space}/usage", json=full)
    assert field_of(r) == path
    assert rows(api.client, sa.select(usage_events)) == []
    assert rows(api.client, sa.select(usage_rollups)) == []


def test_over_quota_is_402_with_the_specified_details_and_records_nothing(api: Api) -> None:
    assert api.usage("web_search_count", 20, "a").status_code == 201
    r = api.usage("web_search_count", 1, "b")
    err = assert_error(r, 402, "payment_required")
    assert err["details"] == {
        "meter": "web_search_count",
        "used": 20,
        "quota": 20,
        "plan": "plan_free",
        "balance_cents": 0,
    }
    assert r.headers["x-quota-warning"] == "web_search_count=100"
    assert rollup(api, "web_search_count") == (20, 0)
    # The refused key was not consumed: after an upgrade the same event goes through.
    assert api.set_plan("plan_plus").status_code == 200
    assert api.usage("web_search_count", 1, "b").status_code == 201
    assert rollup(api, "web_search_count") == (21, 0)
    # Quota 0: unavailable on the plan, whatever the balance.
    assert api.set_plan("plan_free").status_code == 200
    api.credit(10**6, "lots")
    err = assert_error(api.usage("browser_seconds", 1, "c"), 402, "payment_required")
    assert err["details"]["quota"] == 0 and err["details"]["balance_cents"] == 10**6
    outcomes = rows(
        api.client,
        sa.select(audit_log.c.outcome).where(audit_log.c.action == "record_usage"),
    )
    assert [o.outcome for o in outcomes].count("payment_required") == 2


def test_payg_charges_the_balance_in_the_same_transaction(api: Api) -> None:
    assert api.set_plan("plan_payg").status_code == 200
    err = assert_error(api.usage("llm_tokens_output", 3, "t1"), 402)
    assert err["details"] == {
        "meter": "llm_tokens_output",
        "used": 0,
        "quota": -1,
        "plan": "plan_payg",
        "balance_cents": 0,
    }
    api.credit(100, "topup")
    r = api.usage("llm_tokens_output", 3, "t1")  # 3 x 15 cents
    assert r.status_code == 201 and r.json()["cost_cents"] == 45
    assert api.usage("llm_tokens_output", 3, "t1").json()["cost_cents"] == 45  # replay: no charge
    assert api.billing()["balance_cents"] == 55
    assert_error(api.usage("llm_tokens_output", 4, "t2"), 402)  # 60 > 55
    assert api.usage("llm_tokens_output", 3, "t3").json()["cost_cents"] == 45
    assert api.billing()["balance_cents"] == 10
    assert rollup(api, "llm_tokens_output") == (6, 90)
    assert api.report()["meters"]["llm_tokens_output"] == {
        "units": 6,
        "quota": -1,
        "percent": None,
        "cost_cents": 90,
    }
    debits = rows(
        api.client,
        sa.select(billing_ledger)
        .where(billing_ledger.c.kind == "debit")
        .order_by(billing_ledger.c.id),
    )
    assert [
        (int(d.amount_cents), int(d.balance_after_cents), d.idempotency_key) for d in debits
    ] == [
        (-45, 55, "t1"),
        (-45, 10, "t3"),
    ]
    assert all(d.meter == "llm_tokens_output" and d.units == 3 for d in debits)


def test_a_check_that_cannot_be_made_fails_closed_with_503(api: Api) -> None:
    assert api.set_plan("plan_payg").status_code == 200
    api.credit(10**6, "topup")

    async def drop_rate(conn: Any) -> None:  # the API refuses this state; an old row may not
        await conn.execute(
            sa.update(plan_quotas)
            .where(plan_quotas.c.plan_id == "plan_payg", plan_quotas.c.meter == "exec_seconds")
            .values(rate_cents=None)
        )
        await conn.execute(
            sa.delete(plan_quotas).where(
                plan_quotas.c.plan_id == "plan_payg", plan_quotas.c.meter == "queue_messages"
            )
        )

    sql(api.client, drop_rate)
    err = assert_error(api.usage("exec_seconds", 1, "e1"), 503, "unavailable")
    assert "no rate" in err["message"]
    err = assert_error(api.usage("queue_messages", 1, "q1"), 503, "unavailable")
    assert "no quota for queue_messages" in err["message"]
    assert rows(api.client, sa.select(usage_events)) == []
    assert api.billing()["balance_cents"] == 10**6


def test_the_system_space_is_metered_but_never_refused(api: Api) -> None:
    system_space = rows(api.client, sa.select(spaces.c.id).where(spaces.c.kind == "system"))[0].id
    path = f"/api/spaces/{system_space}/usage"
    body = {"meter": "browser_seconds", "units": 5, "idempotency_key": "s1"}
    r = api.call("POST", path, json=body)
    assert r.status_code == 201 and r.json()["cost_cents"] == 0


# ------------------------------------------------------------------------------ periods


def test_the_utc_month_boundary_for_events(api: Api) -> None:
    set_clock(api, JAN_LAST)
    assert api.usage("web_search_count", 20, "jan").json()["period"] == "2026-01"
    assert_error(api.usage("web_search_count", 1, "jan-2"), 402)
    set_clock(api, FEB_FIRST)  # 00:00:00 UTC: a new month, a fresh quota
    feb = api.usage("web_search_count", 20, "feb")
    assert feb.status_code == 201 and feb.json()["period"] == "2026-02"
    # Late usage of the previous month lands there, against that month's quota.
    late = {"at": "2026-01-31T23:59:59Z"}
    err = assert_error(api.usage("web_search_count", 1, "late", **late), 402)
    assert err["details"]["used"] == 20
    late_ok = api.usage("exec_seconds", 7, "late-ok", at="2026-01-31T23:59:59+00:00")
    assert late_ok.status_code == 201 and late_ok.json()["period"] == "2026-01"
    assert (
        api.usage("exec_seconds", 7, "late-ok", at="2026-02-01T00:59:59+01:00").status_code == 200
    )
    assert rollup(api, "exec_seconds", "2026-01") == (7, 0)
    assert rollup(api, "web_search_count", "2026-02") == (20, 0)
    assert field_of(api.usage("exec_seconds", 1, "old", at="2025-12-31T23:59:59Z")) == "body.at"
    assert api.report()["period"] == "2026-02"
    assert api.report("2026-01")["meters"]["exec_seconds"]["units"] == 7
    for bad in ("2026-13", "2026-3", "now", "2026-03"):
        r = api.call("GET", f"/api/spaces/{api.space}/usage?period={bad}")
        assert field_of(r) == "query.period", bad


# ------------------------------------------------------------------------------ warnings


def test_quota_warnings_from_80_percent_cached_per_space(api: Api) -> None:
    warnings = state_of(api.client).billing.warnings
    warnings.ttl = 3600.0
    space_path = f"/api/spaces/{api.space}"
    assert "x-quota-warning" not in api.call("GET", space_path).headers
    r = api.usage("llm_tokens_input", 15_999, "w1")
    assert "x-quota-warning" not in r.headers
    r = api.usage("llm_tokens_input", 1, "w2")  # 16 000 of 20 000
    assert r.headers["x-quota-warning"] == "llm_tokens_input=80"
    api.usage("web_search_count", 19, "w3")
    queries = warnings.queries
    for _ in range(5):
        r = api.call("GET", space_path)
        assert r.headers["x-quota-warning"] == "llm_tokens_input=80, web_search_count=95"
    assert warnings.queries == queries  # answered from the cache
    r = api.call("GET", f"/api/spaces/{api.space}/services")
    assert r.headers["x-quota-warning"].startswith("llm_tokens_input=80")
    assert "x-quota-warning" not in api.call("GET", "/api/plans").headers  # not in a space
    other = create_space(api.client, api.token, "quiet")
    assert "x-quota-warning" not in api.call("GET", f"/api/spaces/{other}").headers
    assert api.set_plan("plan_plus").status_code == 200  # far from Plus's quotas
    assert "x-quota-warning" not in api.call("GET", space_path).headers
