"""Usage events under real concurrency, on SQLite and PostgreSQL: 50 parallel posts of one event
count once; 50 parallel events against one quota never overspend it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from admin.billing.schema import billing_ledger, usage_events, usage_rollups
from tests.admin.conftest import auth, bootstrap, create_space, make_admin_app, rows

N = 50


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'admin.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    with TestClient(make_admin_app(url)) as c:
        yield c


def parallel(client: TestClient, calls: list[tuple[str, dict[str, Any]]], token: str) -> list[Any]:
    def post(call: tuple[str, dict[str, Any]]) -> Any:
        path, body = call
        return client.post(path, json=body, headers=auth(token))

    with ThreadPoolExecutor(N) as pool:
        return list(pool.map(post, calls))


def test_fifty_parallel_posts_of_one_event_count_once(client: TestClient) -> None:
    token = bootstrap(client)
    space = create_space(client, token)
    assert (
        client.patch(
            f"/api/spaces/{space}/billing", json={"plan": "plan_payg"}, headers=auth(token)
        ).status_code
        == 200
    )
    credit = {"amount_cents": 1000, "idempotency_key": "c1"}
    assert (
        client.post(
            f"/api/spaces/{space}/billing/credit", json=credit, headers=auth(token)
        ).status_code
        == 201
    )
    event = {"meter": "llm_tokens_output", "units": 2, "idempotency_key": "evt-1"}
    answers = parallel(client, [(f"/api/spaces/{space}/usage", event)] * N, token)

    statuses = Counter(a.status_code for a in answers)
    assert statuses == {201: 1, 200: N - 1}, [a.text for a in answers if a.status_code >= 300]
    assert len({a.json()["id"] for a in answers}) == 1
    assert all(a.json()["cost_cents"] == 30 for a in answers)
    assert len(rows(client, sa.select(usage_events))) == 1
    units = rows(client, sa.select(usage_rollups.c.units, usage_rollups.c.cost_cents))
    assert [(int(u.units), int(u.cost_cents)) for u in units] == [(2, 30)]
    debits = rows(client, sa.select(billing_ledger).where(billing_ledger.c.kind == "debit"))
    assert len(debits) == 1
    account = client.get(f"/api/spaces/{space}/billing", headers=auth(token)).json()
    assert account["balance_cents"] == 970


def test_fifty_parallel_events_never_overspend_a_quota(client: TestClient) -> None:
    token = bootstrap(client)
    space = create_space(client, token)  # Free: web_search_count 20 a month
    calls = [
        (
            f"/api/spaces/{space}/usage",
            {"meter": "web_search_count", "units": 1, "idempotency_key": f"k{i}"},
        )
        for i in range(N)
    ]
    answers = parallel(client, calls, token)
    statuses = Counter(a.status_code for a in answers)
    assert statuses == {201: 20, 402: N - 20}, [a.text for a in answers if a.status_code >= 500]
    units = rows(client, sa.select(usage_rollups.c.units))
    assert [int(u.units) for u in units] == [20]
    assert len(rows(client, sa.select(usage_events))) == 20
