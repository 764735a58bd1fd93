"""End to end, real processes: metering and request quotas across ``turnout admin`` (SQLite file),
Redis, ``turnout gateway`` and an upstream, all on loopback.

* A Free space (``wfp_requests`` quota 100) sends 150 requests: the first 100 reach the upstream,
  the gateway answers 402 within one collector cycle, the overshoot is reported; an upgrade to
  Plus lets traffic through again.
* 10 000 requests through 2 gateway workers land exactly in the SQL rollup, with Redis
  restarted empty in the middle of the load.
* The admin is SIGKILLed while the collector has read the counters but not committed (its
  commit is held back by a SQLite write lock the test takes); after a restart the rollup is
  exact: nothing lost, nothing counted twice.

Short intervals keep it fast: the collector runs every ``INTERVAL`` seconds, gateways flush
every ``FLUSH`` seconds, the admin notices a lost Redis within ``RECONCILE`` seconds.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from redis import Redis

from tests.support.admin_proc import AdminProcess
from tests.support.gateway_proc import GatewayProcess, gateway_error
from tests.support.loadgen import LoadStats, run_load_async
from tests.support.rawhttp import RawConnection, build_request, request
from tests.support.redis_server import RedisServer
from tests.support.upstream import UpstreamProcess, fetch_json, started_upstreams

pytestmark = pytest.mark.e2e

T = TypeVar("T")
PREFIX = "tbill"
INTERVAL = 0.3  # TURNOUT_USAGE_INTERVAL
FLUSH = 0.2  # gateway --flush-interval
RECONCILE = 0.5  # TURNOUT_RECONCILE_INTERVAL
SLACK = 1.5  # scheduling on a loaded 2-core machine, publish → gateway propagation
ENV = {
    "TURNOUT_USAGE_INTERVAL": str(INTERVAL),
    "TURNOUT_RECONCILE_INTERVAL": str(RECONCILE),
    "TURNOUT_LEASE_SECONDS": "2",  # a SIGKILLed holder's lease lapses quickly
}


@dataclass
class Stack:
    redis: RedisServer
    admin: AdminProcess
    gw: GatewayProcess
    upstream: UpstreamProcess

    def rc(self) -> Redis:
        return Redis.from_url(self.redis.url, socket_timeout=5, decode_responses=True)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamProcess]:
    with started_upstreams(tmp_path_factory.mktemp("upstreams"), "main") as (main,):
        yield main


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> AdminProcess:
    """``turnout admin init`` once, with the seeded quotas (``request_quota=None``)."""
    workdir = tmp_path_factory.mktemp("admin-template")
    admin = AdminProcess(
        workdir / "admin.db",
        "redis://unused",
        workdir,
        prefix=PREFIX,
        extra_env=ENV,
        request_quota=None,
    )
    admin.init()
    return admin


def make_stack(
    redis: RedisServer, upstream: UpstreamProcess, template: AdminProcess, tmp: Path, workers: int
) -> Stack:
    admin = template.clone(tmp / "admin.db", tmp / "admin", redis.url)
    gw = GatewayProcess(
        redis.url,
        tmp / "gateway",
        prefix=PREFIX,
        extra_args=["--flush-interval", str(FLUSH), "--workers", str(workers)],
    )
    with ThreadPoolExecutor(2) as pool:
        started = [pool.submit(admin.start), pool.submit(gw.start)]
    for future in started:
        future.result()
    return Stack(redis, admin, gw, upstream)


@pytest.fixture
def stack_factory(
    own_redis: RedisServer, upstream: UpstreamProcess, template: AdminProcess, tmp_path: Path
) -> Iterator[Callable[[int], Stack]]:
    made: list[Stack] = []

    def factory(workers: int = 1) -> Stack:
        made.append(make_stack(own_redis, upstream, template, tmp_path, workers))
        return made[-1]

    yield factory
    for st in made:
        code = st.gw.stop()
        st.admin.stop()
        assert code == 0, f"gateway exited with {code}\n{st.gw.stderr_text()[-4000:]}"


# ---------------------------------------------------------------------- helpers


def wait_until(probe: Callable[[], T | None], timeout: float, what: str) -> tuple[T, float]:
    started = time.monotonic()
    last: Any = None
    while True:
        try:
            got = probe()
        except (AssertionError, OSError) as exc:
            got, last = None, exc
        if got:
            return got, time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last}")
        time.sleep(0.02)


def api(admin: AdminProcess, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    resp = admin.call(method, path, json_body=body)
    assert resp.status == status, resp
    return resp.json() if resp.body else None


def deployed_space(stack: Stack, name: str, plan: str | None = None) -> tuple[str, str]:
    """A new space (on ``plan``) with one service on the upstream; (space id, hostname)."""
    admin = stack.admin
    space = api(admin, "POST", "/api/spaces", {"name": name}, 201)["id"]
    if plan is not None:
        api(admin, "PATCH", f"/api/spaces/{space}/billing", {"plan": plan})
    doc = {
        "apiVersion": "turnout/v1",
        "kind": "App",
        "metadata": {"name": name},
        "spec": {
            "services": {"web": {"type": "http", "upstreams": [stack.upstream.url]}},
            "routes": [{"service": "web"}],
        },
    }
    body = api(admin, "POST", f"/api/spaces/{space}/app-deployments", doc, 201)
    return space, str(body["services"][0]["hostnames"][0])


def big_plan(admin: AdminProcess) -> str:
    """A plan whose request quota no test reaches (created through the API)."""
    free = api(admin, "GET", "/api/plans/plan_free")
    quotas = {m: {"quota": q["quota"]} for m, q in free["quotas"].items()}
    quotas["wfp_requests"] = {"quota": 10**9}
    api(admin, "POST", "/api/plans", {"id": "plan_e2e", "name": "E2E", "quotas": quotas}, 201)
    return "plan_e2e"


def rollup(admin: AdminProcess, space: str) -> int:
    found = admin.query(
        "SELECT units FROM usage_rollups WHERE space_id = ? AND meter = 'wfp_requests'", (space,)
    )
    return sum(int(r["units"]) for r in found)


def redis_usage(rc: Redis, space: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for key in rc.scan_iter(match=f"{{{PREFIX}}}:usage:{space}:*"):
        fields: Any = rc.hgetall(key)
        out.update({f: int(v) for f, v in fields.items()})
    return out


def metric(admin: AdminProcess, name: str) -> float | None:
    text = admin.call("GET", "/metrics", auth=False).body.decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def collector_runs(admin: AdminProcess) -> int:
    return int(metric(admin, 'turnout_admin_leader_job_runs_total{job="usage-collector"}') or 0)


def wait_served(stack: Stack, host: str, path: str) -> int:
    """Poll until the gateway serves ``host``; returns how many requests got through."""
    through = [0]

    def probe() -> bool:
        resp = request(stack.gw.port, "GET", path, host, timeout=5)
        through[0] += resp.status == 200
        return resp.status == 200

    wait_until(probe, 15, f"{host} to be served")
    return through[0]


def settle(stack: Stack, space: str, expected: int, timeout: float = 20.0) -> float:
    """Wait until the rollup holds ``expected``; then three more collector runs must not
    change it (nothing counted twice). Returns the wait."""
    _, took = wait_until(
        lambda: rollup(stack.admin, space) == expected or None,
        timeout,
        f"the rollup to reach {expected} (now {rollup(stack.admin, space)})",
    )
    runs = collector_runs(stack.admin)
    wait_until(lambda: collector_runs(stack.admin) >= runs + 3, 10, "three more collector runs")
    assert rollup(stack.admin, space) == expected
    return took


class Load:
    """``count`` requests from a background thread (keep-alive, pipelined); live stats."""

    def __init__(self, port: int, host: str, count: int, connections: int = 16) -> None:
        self.stats = LoadStats([])
        factory = lambda i: build_request("GET", f"/echo?i={i}", host)  # noqa: E731
        self._thread = threading.Thread(
            target=lambda: asyncio.run(
                run_load_async(
                    port,
                    factory,
                    count=count,
                    connections=connections,
                    depth=4,
                    stats=self.stats,
                    timeout=20.0,
                )
            ),
            daemon=True,
        )
        self._thread.start()

    def join(self, timeout: float = 120.0) -> LoadStats:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the load did not finish"
        return self.stats


# ---------------------------------------------------------------------- the tests


def test_free_space_gets_402_from_the_gateway_then_plus_lets_traffic_through(
    stack_factory: Callable[[int], Stack],
) -> None:
    stack = stack_factory(1)
    space, host = deployed_space(stack, "free")
    path = "/echo?free"
    sent = wait_served(stack, host, path)  # the probes that got through count too
    # Paced like a steady client (not a burst that would all pass before the first flush),
    # slowly enough that the last 50 requests span the whole bound asserted below.
    rate = 25.0
    answers: list[tuple[float, int, bytes]] = []
    with RawConnection(stack.gw.port, timeout=10) as conn:
        start = time.monotonic()
        for i in range(150 - sent):
            pause = start + i / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            conn.send_request("GET", path, host)
            resp = conn.read_response()
            answers.append((time.monotonic(), resp.status, resp.body))
    statuses = [s for _t, s, _b in answers]
    passed = sent + statuses.count(200)
    assert set(statuses) == {200, 402}, statuses
    first_402 = statuses.index(402)
    assert all(s == 402 for s in statuses[first_402:]), "traffic came back while blocked"
    assert gateway_error(answers[first_402][2])["code"] == "payment_required"
    assert passed >= 100, f"only {passed} requests reached the upstream before the block"
    overshoot = passed - 100
    hundredth = answers[100 - sent - 1][0]  # the request that used the quota up
    blocked_after = answers[first_402][0] - hundredth
    # Within one collector cycle (+ the gateway's flush and propagation): the bound.
    assert blocked_after <= FLUSH + INTERVAL + SLACK, blocked_after
    assert overshoot <= rate * (FLUSH + INTERVAL + SLACK), overshoot
    seen = fetch_json(stack.upstream.port, "/__seen")["requests"]
    assert sum(1 for _m, target in seen if target == path) == passed  # 402s never forwarded

    # The rollup is exact, the usage report says so, and the block is visible everywhere.
    settle(stack, space, passed)
    report = api(stack.admin, "GET", f"/api/spaces/{space}/usage")
    assert report["meters"]["wfp_requests"]["units"] == passed
    assert report["meters"]["wfp_requests"]["percent"] >= 100.0
    resp = stack.admin.call("GET", f"/api/spaces/{space}/billing")
    assert resp.json()["status"] == "blocked"
    assert resp.headers["x-quota-warning"].startswith("wfp_requests=1")
    assert metric(stack.admin, "turnout_admin_billing_blocked_spaces") == 1
    assert (metric(stack.admin, "turnout_admin_usage_collector_lag_seconds") or 0) < 5

    # Upgrade to Plus: traffic flows again within one cycle (the API re-decides at once).
    t0 = time.monotonic()
    assert (
        api(stack.admin, "PATCH", f"/api/spaces/{space}/billing", {"plan": "plan_plus"})["status"]
        == "active"
    )
    _, unblocked_after = wait_until(
        lambda: request(stack.gw.port, "GET", "/echo?plus", host).status == 200 or None,
        INTERVAL + SLACK + 1.0,
        "traffic after the upgrade",
    )
    print(
        f"\nfree space: {passed} of 150 requests reached the upstream (quota 100, overshoot "
        f"{overshoot} at {rate:.0f} req/s); gateway 402 {blocked_after:.2f} s after the 100th "
        f"request (flush {FLUSH} s + collector {INTERVAL} s); upgrade to Plus served again "
        f"after {time.monotonic() - t0:.2f} s (first 200 after {unblocked_after:.2f} s)"
    )


def test_ten_thousand_requests_through_two_workers_exact_across_a_redis_restart(
    stack_factory: Callable[[int], Stack],
) -> None:
    stack = stack_factory(2)
    plan = big_plan(stack.admin)
    space, host = deployed_space(stack, "exact", plan)
    probes = wait_served(stack, host, "/echo?probe")
    n = 10_000
    load = Load(stack.gw.port, host, n)
    wait_until(lambda: len(load.stats.replies) >= n // 2 or None, 60, "half of the load")
    stack.redis.shutdown_nosave()  # Redis loses everything, mid-load
    at_restart = len(load.stats.replies)
    time.sleep(0.5)  # down for a while: flushes fail, counts stay in the workers
    stack.redis.start()
    stats = load.join()
    failures = [r for r in stats.replies if r.status != 200]
    assert len(stats.replies) == n and not failures, (len(stats.replies), failures[:5])
    took = settle(stack, space, n + probes, timeout=30)
    rc = stack.rc()
    try:
        writers = redis_usage(rc, space)
    finally:
        rc.close()
    assert len(writers) == 2, writers  # one cumulative field per worker
    assert sum(writers.values()) == n + probes  # Redis was restored by the workers' totals
    print(
        f"\nexact: {n} requests (+{probes} probes) through 2 workers, Redis restarted empty "
        f"after {at_restart}; rollup exact {took:.2f} s after the load; fields {writers}"
    )


def test_collector_killed_between_read_and_commit_counts_nothing_twice(
    stack_factory: Callable[[int], Stack],
) -> None:
    stack = stack_factory(1)
    admin = stack.admin
    plan = big_plan(admin)
    space, host = deployed_space(stack, "kill", plan)
    total = wait_served(stack, host, "/echo?probe")
    total += sum(r.status == 200 for r in Load(stack.gw.port, host, 300, 4).join().replies)
    settle(stack, space, total)
    # Nothing else may hold the admin's one SQLite connection while the lock is taken: make a
    # last API call and let its batched token "last used" write land first.
    assert admin.boot is not None
    before = int(time.time() * 1000)
    api(admin, "GET", "/api/plans")
    wait_until(
        lambda: (
            admin.query(
                "SELECT 1 FROM tokens WHERE id = ? AND last_used_at >= ?",
                (admin.boot.token_id if admin.boot else "", before),
            )
            or None
        ),
        15,
        "the token's last-used write",
    )
    lock = sqlite3.connect(admin.db_path, timeout=10, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")  # the collector's commit will wait behind this
        more = sum(r.status == 200 for r in Load(stack.gw.port, host, 200, 4).join().replies)
        total += more
        rc = stack.rc()
        try:
            wait_until(
                lambda: sum(redis_usage(rc, space).values()) == total or None, 10, "the flush"
            )
        finally:
            rc.close()
        # The collector has read the new counts and is stuck committing them.
        pending, _ = wait_until(
            lambda: metric(admin, "turnout_admin_usage_collector_pending_units") or None,
            10,
            "the collector to read the counts and block in its commit",
        )
        admin.kill()  # SIGKILL between read and commit
    finally:
        lock.rollback()
        lock.close()
    assert rollup(admin, space) == total - more  # nothing of the killed run committed
    admin.start()
    took = settle(stack, space, total)
    print(
        f"\nSIGKILL: collector killed holding {pending:.0f} read-but-uncommitted units; after "
        f"the restart the rollup is exact ({total}) within {took:.2f} s"
    )
