"""``GET /api/spaces/{space}/services/{service}/traffic``: per-deployment, per-minute counts.

The gateway's part is played as in ``test_rollouts``: the rig writes health hashes into the
in-process runtime state at its fake clock's minute, the format the flusher writes.
"""

from __future__ import annotations

import time
from typing import Any

from tests.admin.conftest import assert_error, auth, make_user
from tests.admin.test_rollouts import MINUTE, Rig, ids, manifest
from tests.admin.test_rollouts import rig as rig  # the fixture


def traffic(rig: Rig, service: str, query: str = "", token: str | None = None) -> Any:
    return rig.client.get(
        f"/api/spaces/{rig.space}/services/{service}/traffic{query}",
        headers=auth(token or rig.token),
    )


def test_points_per_minute_per_deployment_with_rates(rig: Rig) -> None:
    v1, v2 = rig.start()
    sid, d1, d2 = ids(v1, v2)
    rig.advance(-10 * MINUTE)  # ten minutes ago: 600 requests to v1, 6 of them failed
    rig.traffic(d1, 600, errors=6)
    rig.advance(10 * MINUTE)  # this minute: 120 to v1, 30 to the canary (3 failed)
    rig.traffic(d1, 120)
    rig.traffic(d2, 30, errors=3)
    r = traffic(rig, sid)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["service_id"] == sid and doc["service"] == "web" and doc["minutes"] == 30
    now_minute = int(rig.now() // 60)
    assert doc["window_end"] == (now_minute + 1) * 60_000
    assert doc["window_start"] == (now_minute - 29) * 60_000
    by_id = {d["deployment_id"]: d for d in doc["deployments"]}
    assert set(by_id) == {d1, d2}
    one, two = by_id[d1], by_id[d2]
    assert (one["routing_status"], two["routing_status"]) == ("active", "canary")
    assert one["routing_weight"] + two["routing_weight"] == 10_000
    assert [len(one["points"]), len(two["points"])] == [30, 30]
    assert one["points"][-1] == {
        "at": now_minute * 60_000,
        "requests": 120,
        "errors": 0,
        "requests_per_second": 2.0,
        "error_rate": 0.0,
    }
    assert one["points"][-11]["requests"] == 600 and one["points"][-11]["error_rate"] == 0.01
    assert one["points"][0] == {**one["points"][0], "requests": 0, "error_rate": None}
    assert (one["requests"], one["errors"]) == (720, 6)
    assert two["points"][-1]["requests_per_second"] == 0.5
    assert two["points"][-1]["error_rate"] == 0.1
    # By name as well as by id; a shorter window.
    short = traffic(rig, "web", "?minutes=5").json()
    assert short["minutes"] == 5 and len(short["deployments"][0]["points"]) == 5
    assert {d["deployment_id"]: d["requests"] for d in short["deployments"]} == {d1: 120, d2: 30}


def test_bad_minutes_and_unknown_service_are_clear_errors(rig: Rig) -> None:
    v1, _ = rig.start()
    sid = v1["services"][0]["service_id"]
    for bad in ("0", "31", "abc", "-1", "1.5"):
        err = assert_error(traffic(rig, sid, f"?minutes={bad}"), 422, "validation_failed")
        assert "query.minutes" in str(err), err
    assert_error(traffic(rig, "nope"), 404, "not_found")


def test_unreadable_counters_answer_503_not_zeros(rig: Rig) -> None:
    v1, _ = rig.start()
    rig.runtime.down = True
    try:
        err = assert_error(traffic(rig, v1["services"][0]["service_id"]), 503, "unavailable")
        assert "counters" in err["message"]
    finally:
        rig.runtime.down = False


def test_a_viewer_may_read_it(rig: Rig) -> None:
    v1, _ = rig.start()
    viewer = make_user(rig.client, rig.token, "watcher", rig.space, "viewer")
    assert traffic(rig, v1["services"][0]["service_id"], token=viewer).status_code == 200


def test_an_archived_deployment_drops_out_after_the_window(rig: Rig) -> None:
    rig.clock[0] = time.time()  # deployments are stamped by the wall clock
    rig.deploy_ok(manifest("http://127.0.0.1:9001"))
    second = rig.deploy_ok(manifest("http://127.0.0.1:9002"))  # direct: v1 archived now
    sid = second["services"][0]["service_id"]
    assert len(traffic(rig, sid).json()["deployments"]) == 2  # v1 changed within the window
    rig.advance(31 * MINUTE)
    deps = traffic(rig, sid).json()["deployments"]
    assert [d["deployment_id"] for d in deps] == [second["services"][0]["deployment_id"]]
