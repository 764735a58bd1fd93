"""Staged rollouts end to end: ``turnout admin`` (SQLite, then two on PostgreSQL) → Redis →
``turnout gateway`` → real upstreams, with the gate deciding on what the gateway counted.

One process set serves the module: a Redis, a gateway (trusting loopback as a proxy, so each
request's ``X-Forwarded-For`` is its sticky key), the upstreams ``v1``, ``v2`` (healthy),
``v2bad`` (every 5th request a 500: 20 % errors) and ``v2slow`` (300 ms late), and an admin whose
reconciler runs every :data:`INTERVAL` seconds. Every test deploys its own app (its own
hostname), so they do not see each other's traffic. The failover test brings its own pair of
admins on one PostgreSQL database, under its own Redis key prefix with its own gateway.

Shares are measured with clients drawn stratified over the sticky-bucket space (one client per
two buckets of the space's [0, 10000) layout, found by computing the spec's bucket function):
the sample has no sampling noise, so the measured share of a correctly routing gateway is the
weight itself, and any deviation beyond ±1.5 points is the gateway's. The gateway still computes
every bucket itself from the address it is given.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from routing.compiled import bucket_of
from tests.admin.conftest import postgres_url  # noqa: F401  (the fixture, for the failover test)
from tests.support.admin_proc import AdminProcess, ApiResponse
from tests.support.gateway_proc import GatewayProcess
from tests.support.loadgen import LoadThread, Reply, run_load
from tests.support.net import wait_until as poll
from tests.support.rawhttp import build_request, request
from tests.support.redis_server import RedisServer
from tests.support.upstream import UpstreamProcess, started_upstreams

pytestmark = pytest.mark.e2e

T = TypeVar("T")
PREFIX = "troll"
BASE = "turnout.localhost"
INTERVAL = 2.0  # the shared admin's TURNOUT_ROLLOUT_INTERVAL
FLUSH = 1.0  # the gateway's counter flush interval (its default)
SAMPLE = 5000  # clients per share measurement
_LAUNCH = "import sys; from turnout.cli import main; sys.exit(main(sys.argv[1:]))"
ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------- fixtures


@dataclass
class Ups:
    v1: UpstreamProcess
    v2: UpstreamProcess
    bad: UpstreamProcess
    slow: UpstreamProcess


@dataclass
class Stack:
    redis: RedisServer
    gw: GatewayProcess
    admin: AdminProcess
    ups: Ups
    space: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("rollouts")
    with (
        RedisServer(workdir=work / "redis") as redis,
        started_upstreams(
            work,
            "v1",
            "v2",
            ("v2bad", {"fail_every": 5}),
            ("v2slow", {"delay_ms": 300}),
        ) as (v1, v2, bad, slow),
    ):
        gw = GatewayProcess(
            redis.url, work / "gw", prefix=PREFIX, extra_args=["--trusted-proxy", "127.0.0.0/8"]
        )
        admin = AdminProcess(
            work / "admin.db",
            redis.url,
            work / "admin",
            prefix=PREFIX,
            # A short lease: a restarted admin takes the leader jobs back within seconds.
            extra_env={"TURNOUT_ROLLOUT_INTERVAL": str(INTERVAL), "TURNOUT_LEASE_SECONDS": "3"},
        )
        with ThreadPoolExecutor(2) as pool:
            started = [pool.submit(gw.start), pool.submit(admin.start)]
        try:
            for future in started:
                future.result()
            resp = admin.call("POST", "/api/spaces", json_body={"name": "rollouts"})
            assert resp.status == 201, resp
            yield Stack(redis, gw, admin, Ups(v1, v2, bad, slow), resp.json()["id"])
        finally:
            admin.stop()
            gw.stop()


# ---------------------------------------------------------------------- helpers


def wait_until(
    probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.02
) -> T:
    return poll(probe, timeout, what, interval)[0]


def manifest(app: str, upstream: str, rollout: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "turnout/v1",
        "kind": "App",
        "metadata": {"name": app},
        "spec": {
            "services": {app: {"type": "http", "upstreams": [upstream]}},  # one per app
            "routes": [{"service": app}],
            "rollout": rollout,
        },
    }


def staged(
    stages: list[int], *, min_requests: int = 20, p99: int | None = None, window: int = 1
) -> dict[str, Any]:
    hc: dict[str, Any] = {
        "error_rate_threshold": 0.05,
        "min_requests": min_requests,
        "window_minutes": window,
    }
    if p99 is not None:
        hc["p99_latency_ms"] = p99
    return {
        "strategy": "staged",
        "stages": [{"weight": w, "pause_minutes": 0} for w in stages],
        "health_check": hc,
    }


def deploy(admin: AdminProcess, space: str, doc: dict[str, Any]) -> dict[str, Any]:
    resp = admin.call("POST", f"/api/spaces/{space}/app-deployments", json_body=doc)
    assert resp.status == 201, resp
    out: dict[str, Any] = resp.json()
    return out


def start_rollout(
    s: Stack,
    app: str,
    canary: UpstreamProcess,
    rollout: dict[str, Any],
    admin: AdminProcess | None = None,
) -> dict[str, Any]:
    """v1 direct (serving), then ``canary`` staged: the staged app deployment."""
    admin = admin or s.admin
    deploy(admin, s.space, manifest(app, s.ups.v1.url, {"strategy": "direct"}))
    wait_until(lambda: who_serves(s.gw, host_of(app), "10.255.0.1") == "v1", 10, "v1 serving")
    out = deploy(admin, s.space, manifest(app, canary.url, rollout))
    assert out["rollout"] is not None, out
    return out


def host_of(app: str) -> str:
    return f"{app}.{app}.{BASE}"


def rollout_path(space: str, app_id: str, action: str | None = None) -> str:
    base = f"/api/spaces/{space}/app-deployments/{app_id}/rollout"
    return f"{base}/{action}" if action else base


def doc_of(admin: AdminProcess, space: str, app_id: str) -> dict[str, Any]:
    resp = admin.call("GET", rollout_path(space, app_id))
    assert resp.status == 200, resp
    out: dict[str, Any] = resp.json()
    return out


def wait_state(
    admin: AdminProcess, space: str, app_id: str, ok: Callable[[str], bool], timeout: float
) -> dict[str, Any]:
    """The rollout's document once its state satisfies ``ok``."""

    def probe() -> dict[str, Any] | None:
        doc = doc_of(admin, space, app_id)
        return doc if ok(doc["state"]) else None

    return wait_until(probe, timeout, f"rollout {app_id} to change state", interval=0.1)


def act(admin: AdminProcess, space: str, app_id: str, action: str) -> ApiResponse:
    return admin.call("POST", rollout_path(space, app_id, action), json_body={})


def who(reply: Reply) -> str:
    if reply.status == 200:
        return str(json.loads(reply.body)["name"])
    m = re.search(rb"injected failure \((\w+)\)", reply.body)
    return m.group(1).decode() if m else f"HTTP {reply.status}"


def who_serves(gw: GatewayProcess, host: str, ip: str) -> str | None:
    resp = request(gw.port, "GET", "/echo", host, [("X-Forwarded-For", ip)], timeout=5)
    return str(resp.json()["name"]) if resp.status == 200 else None


def stratified_clients(space: str, n: int = SAMPLE) -> list[str]:
    """``n`` client addresses, the i-th with its sticky bucket in [i·w, (i+1)·w), w = 10000/n."""
    width = 10000 // n
    slots: list[str | None] = [None] * n
    left, i = n, 0
    while left:
        ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        j = bucket_of(space, ip.encode()) // width
        if slots[j] is None:
            slots[j] = ip
            left -= 1
        i += 1
    return [ip for ip in slots if ip is not None]


def load(
    gw: GatewayProcess, host: str, clients: list[str], count: int | None = None
) -> list[Reply]:
    """One request per client (or ``count`` cycling through them), pipelined; all answered."""
    total = count or len(clients)
    stats = run_load(
        gw.port,
        lambda i: build_request(
            "GET", f"/echo?i={i}", host, [("X-Forwarded-For", clients[i % len(clients)])]
        ),
        count=total,
        connections=8,
        depth=8,
    )
    assert len(stats.replies) == total and not stats.failures, stats.failures[:3]
    return stats.replies


def background(
    gw: GatewayProcess, host: str, clients: list[str], connections: int = 4
) -> LoadThread:
    return LoadThread(
        gw.port,
        lambda i: build_request(
            "GET", f"/echo?i={i}", host, [("X-Forwarded-For", clients[i % len(clients)])]
        ),
        connections=connections,
        depth=1,
    ).start()


def actions(doc: dict[str, Any]) -> list[str]:
    return [e["action"] for e in doc["history"]]


def assert_walked_once(doc: dict[str, Any], stages: int) -> None:
    """Each of the ``stages`` partial stages taken exactly once, in order, then the promotion
    (the final 100 % stage has no pause): no step repeated or skipped."""
    steps = [e for e in doc["history"] if e["action"] in ("advance", "promote")]
    assert [e["action"] for e in steps] == ["advance"] * (stages - 1) + ["promote"], actions(doc)
    assert [e["to_stage"] for e in steps[:-1]] == list(range(2, stages + 1)), doc["history"]
    assert all(e["to_stage"] == e["from_stage"] + 1 for e in steps[:-1]), doc["history"]
    assert all(e["actor"] == "reconciler" for e in steps), doc["history"]


# ---------------------------------------------------------------------- the healthy walk


def test_a_healthy_v2_walks_every_stage_and_is_promoted(stack: Stack) -> None:
    s = stack
    weights = [1, 5, 25, 50]
    app = "walk"
    # A 2-minute window: the burst measured while paused is evidence when the walk resumes,
    # whichever minute boundary falls in between.
    out = start_rollout(s, app, s.ups.v2, staged(weights, window=2))
    app_id, host = out["id"], host_of(app)
    # No traffic yet, so the gate cannot pass: hold the walk while each stage is measured.
    assert act(s.admin, s.space, app_id, "pause").status == 200
    clients = stratified_clients(s.space)
    on_v2: set[str] = set()
    shares: list[tuple[int, float]] = []
    for k, weight in enumerate(weights, start=1):
        doc = doc_of(s.admin, s.space, app_id)
        assert (doc["state"], doc["stage"], doc["weight"]) == ("paused", k, weight), actions(doc)
        # The gateway has the stage's weights once a client from its newest buckets hits v2.
        newest = clients[(weight * 100 - 1) * SAMPLE // 10000]
        wait_until(lambda ip=newest: who_serves(s.gw, host, ip) == "v2", 10, f"{weight} % live")
        replies = load(s.gw, host, clients)
        served = {clients[r.index]: who(r) for r in replies}
        assert set(served.values()) <= {"v1", "v2"}, Counter(served.values())
        share = 100 * sum(1 for v in served.values() if v == "v2") / len(served)
        shares.append((weight, share))
        assert abs(share - weight) <= 1.5, f"stage {k}: {share:.2f} % on v2, weight {weight} %"
        back = [ip for ip in on_v2 if served[ip] != "v2"]
        assert not back, f"stage {k}: {len(back)} clients moved from v2 back to v1: {back[:5]}"
        on_v2 |= {ip for ip, v in served.items() if v == "v2"}
        # Let the reconciler take the next step, then hold again at once.
        assert act(s.admin, s.space, app_id, "resume").status == 200
        nxt = wait_until(
            lambda k=k: (
                (d := doc_of(s.admin, s.space, app_id))["stage"] > k or d["state"] == "completed"
            ),
            INTERVAL * 2 + FLUSH + 5,
            f"the step after stage {k}",
        )
        assert nxt
        if k < len(weights):
            assert act(s.admin, s.space, app_id, "pause").status == 200
    doc = wait_state(s.admin, s.space, app_id, "completed".__eq__, 5)
    assert doc["weight"] == 100 and doc["services"][0]["canary_weight"] == 10000
    assert_walked_once(doc, len(weights))
    wait_until(lambda: who_serves(s.gw, host, clients[-1]) == "v2", 10, "100 % v2")
    final = load(s.gw, host, clients[:1000])
    assert {who(r) for r in final} == {"v2"}
    print(f"healthy walk: share on v2 per stage {shares}")


# ---------------------------------------------------------------------- the gate reverts


def test_twenty_percent_500s_are_reverted_within_one_interval(stack: Stack) -> None:
    s = stack
    app = "bad"
    out = start_rollout(s, app, s.ups.bad, staged([25], min_requests=50))
    app_id, host = out["id"], host_of(app)
    clients = stratified_clients(s.space, 1000)
    offset = time.time() - time.monotonic()
    traffic = background(s.gw, host, clients)
    try:
        doc = wait_state(s.admin, s.space, app_id, lambda st: st != "in_progress", 20)
        fail_at = doc["history"][-1]["at"] / 1000
        time.sleep(INTERVAL + 1.0)  # the revert must be done by now: keep measuring
        stats = traffic.stop()
    finally:
        if traffic.alive:
            traffic.stop()
    assert doc["state"] == "failed", actions(doc)
    fail = doc["history"][-1]
    leg = fail["inputs"]["services"][0]
    assert leg["requests"] >= 50 and 0.15 <= leg["error_rate"] <= 0.25, leg
    rate = f"{leg['error_rate'] * 100:.2f} %"
    assert doc["fail_reason"] == (
        f"bad: error rate {rate} ({leg['errors']} of {leg['requests']} requests in 1 min) is "
        "above the threshold 5.00 %"
    )
    # Traffic back on v1 within one reconcile interval of the decision ...
    canary = [r for r in stats.replies if who(r) == "v2bad"]
    assert canary, "the canary never served"
    last_canary = max(r.t_done for r in canary) + offset
    assert last_canary <= fail_at + INTERVAL, last_canary - fail_at
    tail = [r for r in stats.replies if r.t_sent + offset > fail_at + INTERVAL]
    assert tail and {who(r) for r in tail} == {"v1"}
    # ... and the decision within one interval (+ the gateway's flush) of the evidence.
    evidence_at = sorted(r.t_done for r in canary)[49] + offset
    assert fail_at - evidence_at <= FLUSH + INTERVAL + 1.0, fail_at - evidence_at
    print(
        f"20 % 500s: failed {fail_at - evidence_at:.2f} s after the 50th canary answer; "
        f"last canary answer {last_canary - fail_at:+.2f} s from the decision; {doc['fail_reason']}"
    )


def test_a_v2_that_adds_300_ms_is_reverted_by_the_latency_gate(
    stack: Stack, tmp_path: Path
) -> None:
    s = stack
    app = "slow"
    out = start_rollout(s, app, s.ups.slow, staged([25], min_requests=30, p99=250))
    app_id, host = out["id"], host_of(app)
    # The live view, piped, follows the whole rollout and exits 1 when it fails.
    watch = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _LAUNCH,
            "admin",
            "rollout",
            "status",
            app_id,
            "--watch",
            "--interval",
            "0.5",
            "--space",
            s.space,
            "--url",
            s.admin.url,
            "--token",
            s.admin.token,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        traffic = background(s.gw, host, stratified_clients(s.space, 1000), connections=16)
        try:
            doc = wait_state(s.admin, s.space, app_id, lambda st: st != "in_progress", 30)
        finally:
            traffic.stop()
        out_text, err_text = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
    assert doc["state"] == "failed", actions(doc)
    leg = doc["history"][-1]["inputs"]["services"][0]
    assert leg["error_rate"] == 0 and leg["p99_ms"] >= 300, leg
    m = re.fullmatch(
        r"slow: p99 latency (\d+\.\d) ms \(over \d+ requests in 1 min\) is above the limit "
        r"250\.0 ms",
        doc["fail_reason"],
    )
    assert m and float(m.group(1)) == round(leg["p99_ms"], 1), doc["fail_reason"]
    wait_until(lambda: who_serves(s.gw, host, "10.0.0.1") == "v1", 5, "v1 again")
    assert watch.returncode == 1, err_text
    lines = out_text.splitlines()
    assert any(line.startswith("event ") and " initiate 25 %" in line for line in lines), lines
    assert any(
        line.startswith("event ") and " fail 25 % → 0 % by reconciler: slow: p99" in line
        for line in lines
    ), lines
    assert "failed stage 1/2 weight 0 % · failed" in lines[-1], lines
    assert all("\x1b" not in line for line in lines)
    print(f"latency gate: {doc['fail_reason']}")


def test_below_min_requests_a_rollout_never_advances(stack: Stack) -> None:
    s = stack
    app = "quiet"
    out = start_rollout(s, app, s.ups.v2, staged([1, 50], min_requests=1000))
    app_id, host = out["id"], host_of(app)
    clients = stratified_clients(s.space, 1000)
    doc: dict[str, Any] = {}
    for _ in range(6):  # ~30 canary requests and at least one reconcile per round
        load(s.gw, host, clients, count=3000)
        time.sleep(INTERVAL)
        doc = doc_of(s.admin, s.space, app_id)
        # On a loaded box the first round may land before the canary's weight took effect
        # (the evidence window starts then): go on until the gate has seen some of it.
        if doc["gate"]["services"] and doc["gate"]["services"][0]["requests"] > 0:
            break
    assert (doc["state"], doc["stage"], actions(doc)) == ("in_progress", 1, ["initiate"])
    assert re.match(
        r"waiting for evidence: quiet: \d+ of the 1000 requests needed in 1 min", doc["waiting"]
    )
    assert 0 < doc["gate"]["services"][0]["requests"] < 1000
    # The CLI: a one-shot status, an abort, and a refused second abort.
    common = ["--space", s.space, "--url", s.admin.url, "--token", s.admin.token]
    done = s.admin.cli("rollout", "status", app_id, *common)
    assert done.returncode == 0, done.stderr
    assert "in_progress stage 1/3 weight 1 % · waiting for evidence" in done.stdout
    done = s.admin.cli("rollout", "abort", app_id, "--reason", "no traffic to judge", *common)
    assert done.returncode == 0, done.stderr
    assert "aborted stage 1/3 weight 0 %" in done.stdout
    done = s.admin.cli("rollout", "abort", app_id, *common)
    assert done.returncode == 1
    assert "409 illegal_transition: cannot abort a rollout that is aborted" in done.stderr
    done = s.admin.cli(
        "rollout",
        "status",
        app_id,
        "--space",
        s.space,
        "--url",
        s.admin.url,
        "--token",
        "tak_pat_nope",
    )
    assert done.returncode == 1 and "401 invalid_token" in done.stderr
    doc = doc_of(s.admin, s.space, app_id)
    assert doc["history"][-1]["reason"] == "no traffic to judge"
    wait_until(lambda: who_serves(s.gw, host, clients[0]) == "v1", 5, "v1 at 100 %")


# ---------------------------------------------------------------------- restarts, failover


def test_an_admin_restarted_mid_rollout_resumes_from_sql(stack: Stack) -> None:
    s = stack
    app = "restart"
    out = start_rollout(s, app, s.ups.v2, staged([5, 25, 50]))
    app_id, host = out["id"], host_of(app)
    traffic = background(s.gw, host, stratified_clients(s.space, 1000))
    try:
        wait_until(lambda: doc_of(s.admin, s.space, app_id)["stage"] >= 2, 20, "stage 2")
        s.admin.kill()  # SIGKILL: no chance to finish anything
        s.admin.start()
        doc = wait_state(s.admin, s.space, app_id, "completed".__eq__, 30)
    finally:
        traffic.stop()
    assert_walked_once(doc, 3)


@pytest.mark.postgres
def test_leader_failover_continues_without_a_double_step(
    stack: Stack,
    postgres_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    s = stack
    prefix = "tfail"
    env = {"TURNOUT_ROLLOUT_INTERVAL": "1", "TURNOUT_LEASE_SECONDS": "2"}
    a = AdminProcess(
        postgres_url, s.redis.url, tmp_path / "a", prefix=prefix, extra_env=env, name="a"
    )
    a.init()
    b = AdminProcess(
        postgres_url,
        s.redis.url,
        tmp_path / "b",
        prefix=prefix,
        keys=a.keys,
        extra_env=env,
        name="b",
        boot=a.boot,
    )
    gw = GatewayProcess(
        s.redis.url, tmp_path / "gw", prefix=prefix, extra_args=["--trusted-proxy", "127.0.0.0/8"]
    )
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(p.start) for p in (a, b, gw)]
    try:
        for future in futures:
            future.result()
        space = a.call("POST", "/api/spaces", json_body={"name": "failover"}).json()["id"]
        sub = Stack(s.redis, gw, a, s.ups, space)
        out = start_rollout(sub, "failover", s.ups.v2, staged([5, 25, 50, 75]), admin=a)
        app_id, host = out["id"], host_of("failover")
        traffic = background(gw, host, stratified_clients(space, 1000))
        try:
            wait_until(lambda: doc_of(b, space, app_id)["stage"] >= 2, 20, "stage 2")
            leader = wait_until(lambda: _leader(a, b), 10, "a leader running the rollouts job")
            survivor = b if leader is a else a
            before = doc_of(survivor, space, app_id)
            assert before["state"] == "in_progress", actions(before)
            killed_at = time.time()
            leader.kill()
            doc = wait_state(survivor, space, app_id, "completed".__eq__, 40)
        finally:
            traffic.stop()
        assert_walked_once(doc, 4)
        assert _job_runs(survivor) > 0, "the survivor never ran the rollouts job"
        after = [e for e in doc["history"] if e["at"] / 1000 > killed_at]
        assert after and all(e["actor"] == "reconciler" for e in after), doc["history"]
        print(
            f"failover: leader {leader.name} killed at stage {before['stage']}; the survivor took "
            f"its first step {after[0]['at'] / 1000 - killed_at:.2f} s later "
            f"({[e['action'] for e in after]})"
        )
    finally:
        for p in (a, b):
            if p.is_running():
                p.stop()
        gw.stop()


def _job_runs(admin: AdminProcess) -> int:
    resp = admin.call("GET", "/metrics", auth=False)
    m = re.search(rb'turnout_admin_leader_job_runs_total\{job="rollouts"\} (\d+)', resp.body)
    return int(m.group(1)) if m else 0


def _leader(a: AdminProcess, b: AdminProcess) -> AdminProcess | None:
    """The instance whose rollouts job runs (the other one's count stays at 0)."""
    runs = {p.name: _job_runs(p) for p in (a, b)}
    if runs["a"] > 0 and runs["b"] == 0:
        return a
    if runs["b"] > 0 and runs["a"] == 0:
        return b
    return None
