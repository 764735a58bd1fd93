"""``turnout admin usage --space S [--period YYYY-MM]``: a bar per meter, read from SQL."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
from starlette.testclient import TestClient

from admin.billing.meters import period_of, shift_period
from tests.admin.conftest import auth, bootstrap, create_space, make_admin_app
from tests.admin.test_cli import turnout


def test_usage_view_has_a_bar_per_meter_and_matches_the_api(tmp_path: Path) -> None:
    db = tmp_path / "admin.db"
    with TestClient(make_admin_app(str(db))) as client:
        token = bootstrap(client)
        space = create_space(client, token)
        for meter, units in (("web_search_count", 19), ("exec_seconds", 150)):
            r = client.post(
                f"/api/spaces/{space}/usage",
                json={"meter": meter, "units": units, "idempotency_key": meter},
                headers=auth(token),
            )
            assert r.status_code == 201, r.text
        api = client.get(f"/api/spaces/{space}/usage", headers=auth(token)).json()

    done = turnout("usage", "--db", str(db), "--space", space, keys=None)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"usage of {space} on plan_free in {period_of(time.time())} (UTC)"
    assert len(lines) == 11
    by_meter = {line.split()[0]: line for line in lines[1:]}
    assert "█" * 22 + "░" * 2 in by_meter["web_search_count"]
    assert "19 / 20 searches  95.0 %" in by_meter["web_search_count"]
    assert "█" * 6 + "░" * 18 in by_meter["exec_seconds"]  # 150 of 600: a quarter
    assert "not on this plan (0 seconds)" in by_meter["browser_seconds"]
    assert "0 / 100 requests  0.0 %" in by_meter["wfp_requests"]

    as_json = turnout("usage", "--db", str(db), "--space", space, "--json", keys=None)
    assert as_json.returncode == 0, as_json.stderr
    assert orjson.loads(as_json.stdout) == api
    last = shift_period(period_of(time.time()), -1)
    old = turnout("usage", "--db", str(db), "--space", space, "--period", last, "--json")
    assert orjson.loads(old.stdout)["meters"]["exec_seconds"]["units"] == 0


def test_usage_view_refuses_bad_input(tmp_path: Path) -> None:
    db = tmp_path / "admin.db"
    assert turnout("migrate", "--db", str(db)).returncode == 0
    for args, message in (
        (["--space", "spc_nope"], "no space spc_nope"),
        (["--space", "x", "--period", "2026-13"], "--period must be a month as YYYY-MM"),
        (["--space", "x", "--period", "9999-01"], "after the current month"),
    ):
        done = turnout("usage", "--db", str(db), *args)
        assert done.returncode == 2 and message in done.stderr, done.stderr
    empty = tmp_path / "empty.db"
    empty.touch()
    done = turnout("usage", "--db", str(empty), "--space", "x")
    assert done.returncode == 2 and "turnout admin migrate" in done.stderr, done.stderr
    missing = turnout("usage", "--db", str(db))
    assert missing.returncode == 2 and "--space" in missing.stderr
