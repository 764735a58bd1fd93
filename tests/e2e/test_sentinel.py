"""The real processes on ``redis+sentinel://``: ``turnout admin`` and ``turnout gateway`` follow a
Sentinel failover without a restart — including one that *loses* writes (the replica was frozen
while the admin published, then promoted) — and recover from Redis being gone entirely. The
data nodes use ACLs and the Sentinels a password of their own: neither password may appear in
any log, ``/readyz`` or ``/metrics`` answer, whatever state Redis is in.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gateway.flusher import USAGE_METER, usage_month
from tests.support.admin_proc import AdminProcess
from tests.support.gateway_proc import GatewayProcess
from tests.support.rawhttp import request
from tests.support.sentinel import SentinelCluster
from tests.support.upstream import UpstreamProcess, started_upstreams

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

T = TypeVar("T")
PREFIX = "tsen"
BASE = "turnout.localhost"
PASSWORD = f"pw-{secrets.token_hex(8)}"
SENTINEL_PASSWORD = f"spw-{secrets.token_hex(8)}"
HOST = f"web.shop.{BASE}"


@dataclass
class Stack:
    cluster: SentinelCluster
    admin: AdminProcess
    gw: GatewayProcess
    ups: dict[str, UpstreamProcess]
    seen: list[str] = field(default_factory=list)  # every /readyz and /metrics body

    def capture(self, text: str) -> str:
        self.seen.append(text)
        return text


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with (
        SentinelCluster(
            tmp_path / "redis", password=PASSWORD, sentinel_password=SENTINEL_PASSWORD
        ) as cluster,
        started_upstreams(tmp_path / "up", "v1", "v2") as (v1, v2),
    ):
        admin = AdminProcess(
            tmp_path / "admin.db",
            cluster.url,
            tmp_path / "admin",
            prefix=PREFIX,
            extra_env={"TURNOUT_RECONCILE_INTERVAL": "0.5", "TURNOUT_PUBLISH_RETRY": "0.5"},
        )
        gw = GatewayProcess(cluster.url, tmp_path / "gw", prefix=PREFIX)
        with ThreadPoolExecutor(2) as pool:
            started = [pool.submit(admin.start), pool.submit(gw.start)]
        try:
            for future in started:
                future.result()
            yield Stack(cluster, admin, gw, {"v1": v1, "v2": v2})
        finally:
            gw.stop()
            admin.stop()


def wait_until(probe: Callable[[], T | None], timeout: float, what: str) -> tuple[T, float]:
    started = time.monotonic()
    last: Any = None
    while True:
        try:
            got = probe()
        except (OSError, AssertionError) as exc:
            got, last = None, exc
        if got:
            return got, time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")
        time.sleep(0.05)


def deploy(s: Stack, space: str, version: str) -> None:
    doc = {
        "apiVersion": "turnout/v1",
        "kind": "App",
        "metadata": {"name": "shop"},
        "spec": {
            "services": {"web": {"type": "http", "upstreams": [s.ups[version].url]}},
            "routes": [{"service": "web"}],
        },
    }
    r = s.admin.call("POST", f"/api/spaces/{space}/app-deployments", json_body=doc)
    assert r.status == 201, r


def served_by(s: Stack) -> str | None:
    resp = request(s.gw.port, "GET", "/echo", HOST, timeout=5)
    return str(resp.json()["name"]) if resp.status == 200 else None


def serves(s: Stack, version: str, timeout: float = 20.0) -> float:
    return wait_until(lambda: served_by(s) == version, timeout, f"the gateway serves {version}")[1]


def usage(s: Stack, space: str) -> int:
    """Requests counted in Redis: the sum of every gateway worker's cumulative field
    (``wfp_requests:<writer>``, docs/billing.md)."""
    with s.cluster.client(s.cluster.primary()) as c:
        raw: Any = c.hgetall(f"{{{PREFIX}}}:usage:{space}:{usage_month(time.time())}")
    prefix = USAGE_METER.encode() + b":"
    return sum(int(v) for k, v in raw.items() if k.startswith(prefix))


def in_sync(s: Stack) -> bool:
    """Redis (the current primary) holds exactly SQL's route versions."""
    sql = {r["host"]: int(r["version"]) for r in s.admin.query("SELECT * FROM route_versions")}
    with s.cluster.client(s.cluster.primary()) as c:
        raw: Any = c.hgetall(f"{{{PREFIX}}}:routes:versions")
    return bool(sql) and {k.decode(): int(v) for k, v in raw.items()} == sql


def traffic(s: Stack, n: int) -> None:
    for _ in range(n):
        assert served_by(s) is not None


def test_admin_and_gateway_follow_failovers_and_never_show_a_password(stack: Stack) -> None:
    s = stack
    space = s.admin.call("POST", "/api/spaces", json_body={"name": "team"}).json()["id"]
    deploy(s, space, "v1")
    serves(s, "v1")
    traffic(s, 20)
    wait_until(lambda: usage(s, space) >= 21, 10, "counters reach the primary")

    # 1. A failover that loses a publish: the replica is frozen while the admin publishes v2
    #    (the gateway sees it on the primary), then the primary dies and the stale replica is
    #    promoted. The admin notices the new server and republishes what it lacks.
    old = s.cluster.primary()
    [replica] = s.cluster.replicas()
    with s.cluster.client(replica) as c:
        wait_until(lambda: c.info("replication").get("master_link_status") == "up", 10, "link")
    assert replica.pid is not None
    counted = usage(s, space)
    os.kill(replica.pid, signal.SIGSTOP)
    try:
        # Cut the replication link too: bytes already in the frozen replica's socket buffer
        # would still reach it after SIGCONT; the publish below must not.
        with s.cluster.client(old) as c:
            c.execute_command("CLIENT", "KILL", "TYPE", "replica")
        deploy(s, space, "v2")
        serves(s, "v2", 10)
        s.cluster.kill(old)
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    started = time.monotonic()
    new = s.cluster.wait_for_failover(old)
    assert new is replica
    wait_until(lambda: in_sync(s) and served_by(s) == "v2", 30, "Redis and the gateway converge")
    converged = time.monotonic() - started
    print(f"lossy failover: converged {converged:.1f}s after the primary died")
    metrics = s.capture(s.admin.call("GET", "/metrics", auth=False).body.decode())
    assert "turnout_admin_repaired_total 0" not in metrics  # the lost publish was repaired
    ready = s.admin.call("GET", "/readyz", auth=False)
    assert ready.status == 200 and ready.json()["leader"] is True, ready
    s.capture(ready.body.decode())

    # Counters follow too: the gateway flushes to the new primary (what the old one had
    # replicated before the freeze is there; the freeze may have cost at most that window).
    base = usage(s, space)
    assert base >= counted - 21
    traffic(s, 30)
    wait_until(lambda: usage(s, space) >= base + 30, 10, "counters reach the new primary")
    s.cluster.start_node(old, replica_of=new)

    # 2. Redis gone entirely: the gateway keeps serving its table, the admin is not ready and
    #    says why — without a password in the reason.
    for node in s.cluster.nodes:
        s.cluster.kill(node)
    not_ready = s.admin.call("GET", "/readyz", auth=False)
    assert not_ready.status == 503, not_ready
    s.capture(not_ready.body.decode())
    assert served_by(s) == "v2"
    s.capture(request(s.gw.internal_port, "GET", "/readyz", "localhost").body.decode())
    s.capture(request(s.gw.internal_port, "GET", "/metrics", "localhost").body.decode())
    for node in s.cluster.nodes:
        s.cluster.start_node(node)
    s.cluster.wait_healthy()
    deploy(s, space, "v1")
    serves(s, "v1", 30)

    texts = [
        *s.seen,
        s.admin.stderr_text(),
        s.gw.stderr_text(),
        s.gw.stdout_text(),
        s.admin.call("GET", "/metrics", auth=False).body.decode(),
    ]
    for text in texts:
        assert PASSWORD not in text, text[-2000:]
        assert SENTINEL_PASSWORD not in text, text[-2000:]
    assert "not_ready" in not_ready.body.decode()
