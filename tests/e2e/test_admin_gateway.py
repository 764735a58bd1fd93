"""End to end across the real processes: ``turnout admin`` (SQLite file) → Redis → ``turnout
gateway`` → two upstream servers (``v1`` and ``v2``), all on loopback.

Every test gets its own Redis (``own_redis``: it may be stopped, restarted empty or flushed), its
own admin database and gateway; the upstreams are shared by the module. The gateway trusts
``127.0.0.0/8`` as a proxy, so each request's ``X-Forwarded-For`` is its client address and
therefore its sticky key.

At every step the three copies are compared: the SQL rows (the authority, read through a
read-only ``sqlite3`` connection), the route records in Redis (``{prefix}:routes``) and what the
gateway actually serves.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import pytest
from redis import Redis

from routing.compiled import bucket_of
from tests.support.admin_proc import AdminProcess, ApiResponse
from tests.support.gateway_proc import GatewayProcess
from tests.support.net import wait_until
from tests.support.rawhttp import ConnectionClosed, RawConnection, RawResponse, request
from tests.support.redis_server import RedisServer
from tests.support.upstream import UpstreamProcess, started_upstreams

pytestmark = pytest.mark.e2e

T = TypeVar("T")
PREFIX = "tadm"
BASE = "turnout.localhost"
ROUTED = ("active", "canary", "rollback")
RECONCILE_BUDGET = 12.0  # the admin's reconcile_interval is 5 s and not configurable (see report)


# ---------------------------------------------------------------------- fixtures


@dataclass
class Upstreams:
    v1: UpstreamProcess
    v2: UpstreamProcess


@dataclass
class Stack:
    redis: RedisServer
    admin: AdminProcess
    gw: GatewayProcess
    ups: Upstreams

    @property
    def rc(self) -> Redis:
        return Redis.from_url(self.redis.url, socket_timeout=5)


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    workdir = tmp_path_factory.mktemp("upstreams")
    with started_upstreams(workdir, "v1", "v2") as (v1, v2):
        yield Upstreams(v1, v2)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> AdminProcess:
    """``turnout admin init`` once; each test runs on a copy of that database."""
    workdir = tmp_path_factory.mktemp("admin-template")
    admin = AdminProcess(workdir / "admin.db", "redis://unused", workdir, prefix=PREFIX)
    admin.init()
    return admin


@pytest.fixture
def stack(
    own_redis: RedisServer, upstreams: Upstreams, template: AdminProcess, tmp_path: Path
) -> Iterator[Stack]:
    admin = template.clone(tmp_path / "admin.db", tmp_path / "admin", own_redis.url)
    gw = GatewayProcess(
        own_redis.url,
        tmp_path / "gateway",
        prefix=PREFIX,
        extra_args=["--trusted-proxy", "127.0.0.0/8"],
    )
    # Both take seconds to import and start; start them side by side.
    with ThreadPoolExecutor(2) as pool:
        started: list[Future[Any]] = [pool.submit(admin.start), pool.submit(gw.start)]
    try:
        for future in started:
            future.result()
        yield Stack(own_redis, admin, gw, upstreams)
    finally:
        gw_code = gw.stop()
        admin.stop()
    assert gw_code == 0, f"gateway exited with {gw_code}\n{gw.stderr_text()[-4000:]}"


# ---------------------------------------------------------------------- helpers


def manifest(
    app: str,
    services: dict[str, str],
    *,
    strategy: str = "direct",
    canary_weight: int | None = None,
    extra_routes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """An app whose services (name → upstream URL) each get a route on their platform host."""
    rollout: dict[str, Any] = {"strategy": strategy}
    if canary_weight is not None:
        rollout["canary_weight"] = canary_weight
    return {
        "apiVersion": "turnout/v1",
        "kind": "App",
        "metadata": {"name": app},
        "spec": {
            "services": {
                name: {"type": "http", "upstreams": [url]} for name, url in services.items()
            },
            "routes": [{"service": name} for name in services] + (extra_routes or []),
            "rollout": rollout,
        },
    }


def deploy(admin: AdminProcess, space: str, doc: dict[str, Any]) -> ApiResponse:
    return admin.call("POST", f"/api/spaces/{space}/app-deployments", json_body=doc)


def create_space(admin: AdminProcess, name: str) -> str:
    resp = admin.call("POST", "/api/spaces", json_body={"name": name})
    assert resp.status == 201, resp
    sid: str = resp.json()["id"]
    return sid


def client_ip(i: int) -> str:
    """The i-th distinct client address (never loopback, which the gateway trusts)."""
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def get_echo(port: int, host: str, ip: str, timeout: float = 5.0) -> RawResponse:
    return request(port, "GET", "/echo", host, [("X-Forwarded-For", ip)], timeout=timeout)


def served(resp: RawResponse) -> tuple[str, str]:
    """(upstream name, deployment id the gateway named) of an answer that reached an upstream."""
    assert resp.status == 200, resp
    obj = resp.json()
    deps = [v for k, v in obj["headers"] if k.lower() == "x-turnout-deployment"]
    assert len(deps) == 1, obj["headers"]
    return str(obj["name"]), deps[0]


def sweep(port: int, host: str, ips: list[str]) -> list[tuple[str, str]]:
    """One request per client address over keep-alive connections; (name, deployment) each."""
    out: list[tuple[str, str]] = []
    conn = RawConnection(port, timeout=10)
    try:
        for ip in ips:
            conn.send_request("GET", "/echo", host, [("X-Forwarded-For", ip)])
            out.append(served(conn.read_response()))
    finally:
        conn.close()
    return out


def deployments_of(admin: AdminProcess, service_id: str) -> list[dict[str, Any]]:
    rows = admin.query(
        "SELECT id, number, status, routing_status, routing_weight, snapshot_id"
        " FROM deployments WHERE service_id = ? ORDER BY number",
        (service_id,),
    )
    return [dict(r) for r in rows]


def routing_of(admin: AdminProcess, service_id: str) -> list[tuple[int, str, int]]:
    return [
        (d["number"], d["routing_status"], d["routing_weight"])
        for d in deployments_of(admin, service_id)
    ]


def queued_hosts(admin: AdminProcess) -> set[str]:
    return {r["host"] for r in admin.query("SELECT host FROM publish_queue")}


def expected_from_sql(admin: AdminProcess) -> dict[str, dict[str, Any]]:
    """What Redis must hold per host, computed from the SQL rows independently of the admin's
    code: verified hostnames of non-stopped services with routed deployments summing to 10000,
    targets in deployment order with the upstreams of each deployment's own snapshot."""
    out: dict[str, dict[str, Any]] = {}
    hosts = admin.query(
        "SELECT h.host, h.verified, h.service_id, s.status, s.space_id"
        " FROM hostnames h JOIN services s ON s.id = h.service_id"
    )
    versions = {r["host"]: r["version"] for r in admin.query("SELECT * FROM route_versions")}
    for h in hosts:
        if not h["verified"] or h["status"] == "stopped":
            continue
        deps = admin.query(
            "SELECT d.id, d.routing_status, d.routing_weight, p.config FROM deployments d"
            " JOIN snapshots p ON p.id = d.snapshot_id WHERE d.service_id = ?"
            " AND d.status = 'success' AND d.routing_status IN ('active', 'canary', 'rollback')"
            " ORDER BY d.number",
            (h["service_id"],),
        )
        if not deps or sum(d["routing_weight"] for d in deps) != 10000:
            continue
        out[h["host"]] = {
            "space_id": h["space_id"],
            "service_id": h["service_id"],
            "version": versions.get(h["host"]),
            "targets": [
                {
                    "deployment_id": d["id"],
                    "weight": d["routing_weight"],
                    "status": d["routing_status"],
                    "upstreams": json.loads(d["config"])["upstreams"],
                }
                for d in deps
            ],
        }
    return out


def redis_records(rc: Redis) -> dict[str, dict[str, Any]]:
    raw: dict[bytes, bytes] = rc.hgetall(f"{{{PREFIX}}}:routes")  # type: ignore[assignment]
    return {k.decode(): json.loads(v) for k, v in raw.items()}


def redis_epoch(rc: Redis) -> str | None:
    value: bytes | None = rc.get(f"{{{PREFIX}}}:epoch")  # type: ignore[assignment]
    return None if value is None else value.decode()


def redis_matches_sql(admin: AdminProcess, rc: Redis) -> bool:
    """Raises AssertionError naming the first difference (for wait_until's 'last')."""
    expected = expected_from_sql(admin)
    held = redis_records(rc)
    assert set(held) == set(expected), f"hosts: redis {sorted(held)} != sql {sorted(expected)}"
    for host, want in expected.items():
        rec = held[host]
        assert rec["host"] == host
        assert rec["space_id"] == want["space_id"], (host, rec)
        assert rec["service_id"] == want["service_id"], (host, rec)
        assert rec["blocked"] is None, (host, rec)
        assert rec["version"] == want["version"], (host, rec["version"], want["version"])
        assert rec["endpoints"], rec
        for ep in rec["endpoints"]:
            assert ep["targets"] == want["targets"], (host, ep["targets"], want["targets"])
    assert redis_epoch(rc) is not None, "no epoch in Redis"
    return True


def assert_consistent(stack: Stack, timeout: float = 10.0) -> float:
    """Redis equals SQL and the outbox is empty (within ``timeout``); returns the wait."""
    rc = stack.rc
    try:
        _, waited = wait_until(
            lambda: redis_matches_sql(stack.admin, rc) and not queued_hosts(stack.admin),
            timeout,
            "Redis to equal SQL with an empty outbox",
        )
    finally:
        rc.close()
    return waited


def wait_served_by(
    stack: Stack, host: str, name: str, timeout: float = 10.0, ip: str = "10.9.9.9"
) -> float:
    def probe() -> bool:
        resp = get_echo(stack.gw.port, host, ip)
        assert resp.status == 200, resp
        return served(resp)[0] == name

    return wait_until(probe, timeout, f"{host} to be served by {name}")[1]


class TrafficLoop:
    """A background client: one request after another through the gateway (keep-alive,
    reconnecting when the gateway closes), recording every outcome."""

    def __init__(self, port: int, host: str, ip: str = "10.200.0.1") -> None:
        self.port = port
        self.host = host
        self.ip = ip
        self.results: list[tuple[float, str]] = []  # (monotonic time, upstream name or error)
        self.failures: list[str] = []
        self.retries = 0  # idle keep-alive connections closed by the gateway, retried
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="traffic")

    def _run(self) -> None:
        conn: RawConnection | None = None
        used = 0  # requests answered on ``conn``
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn, used = RawConnection(self.port, timeout=5), 0
                conn.send_request("GET", "/echo", self.host, [("X-Forwarded-For", self.ip)])
                resp = conn.read_response()
            except (OSError, ConnectionClosed) as exc:
                reused = conn is not None and used > 0
                if conn is not None:
                    conn.close()
                    conn = None
                # A kept-alive connection the server closed before reading the next request is
                # the client's to retry (HTTP/1.1 §9.3.1); anything else is a failure.
                if reused and isinstance(exc, ConnectionClosed) and not exc.partial:
                    self.retries += 1
                    continue
                self.failures.append(f"{type(exc).__name__}: {exc}")
                self.results.append((time.monotonic(), "error"))
                continue
            used += 1
            if resp.status != 200:
                self.failures.append(f"{resp.status} {resp.body[:200]!r}")
                self.results.append((time.monotonic(), f"status {resp.status}"))
            else:
                self.results.append((time.monotonic(), str(resp.json()["name"])))
            if (resp.header("connection") or "").lower() == "close":
                conn.close()
                conn = None
            time.sleep(0.002)
        if conn is not None:
            conn.close()

    def names(self) -> Counter[str]:
        return Counter(name for _t, name in self.results)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


# ---------------------------------------------------------------------- the tests


def test_deploy_direct_canary_rollback(stack: Stack) -> None:
    admin, v1, v2 = stack.admin, stack.ups.v1, stack.ups.v2
    space = create_space(admin, "shop-team")
    host = f"web.shop.{BASE}"

    # --- direct: v1 takes everything.
    resp = deploy(admin, space, manifest("shop", {"web": v1.url}))
    assert resp.status == 201, resp
    svc = resp.json()["services"][0]
    assert svc["hostnames"] == [host]
    assert (svc["strategy_applied"], svc["routing_status"], svc["routing_weight"]) == (
        "direct",
        "active",
        10000,
    )
    service_id, dep1 = svc["service_id"], svc["deployment_id"]
    assert routing_of(admin, service_id) == [(1, "active", 10000)]
    [hrow] = admin.query("SELECT * FROM hostnames WHERE host = ?", (host,))
    assert hrow["verified"] and hrow["space_id"] == space and hrow["service_id"] == service_id
    assert_consistent(stack)
    wait_served_by(stack, host, "v1")
    assert {served(get_echo(stack.gw.port, host, client_ip(i))) for i in range(50)} == {
        ("v1", dep1)
    }

    # --- canary 20 % on v2.
    resp = deploy(
        admin, space, manifest("shop", {"web": v2.url}, strategy="canary", canary_weight=20)
    )
    assert resp.status == 201, resp
    svc = resp.json()["services"][0]
    assert svc["service_id"] == service_id
    assert (svc["strategy_applied"], svc["routing_status"], svc["routing_weight"]) == (
        "canary",
        "canary",
        2000,
    )
    dep2 = svc["deployment_id"]
    assert routing_of(admin, service_id) == [(1, "active", 8000), (2, "canary", 2000)]
    assert_consistent(stack)
    rc = stack.rc
    try:
        rec = redis_records(rc)[host]
    finally:
        rc.close()
    assert rec["endpoints"][0]["targets"] == [
        {"deployment_id": dep1, "weight": 8000, "status": "active", "upstreams": [v1.url]},
        {"deployment_id": dep2, "weight": 2000, "status": "canary", "upstreams": [v2.url]},
    ]
    # The gateway has the canary once a client whose bucket is the canary's lands on v2.
    n = 4000
    ips = [client_ip(i) for i in range(1, n + 1)]
    canary_ip = next(ip for ip in ips if bucket_of(space, ip.encode()) < 2000)
    wait_served_by(stack, host, "v2", ip=canary_ip)
    started = time.monotonic()
    answers = sweep(stack.gw.port, host, ips)
    elapsed = time.monotonic() - started
    share = sum(1 for name, _ in answers if name == "v2") / n
    print(f"\ncanary: {n} requests in {elapsed:.2f} s, v2 share {share:.4f} (target 0.20)")
    assert abs(share - 0.20) <= 0.02, share
    # Each client lands where the spec's bucket says (canary laid out first on [0, 2000)).
    for ip, (name, dep) in zip(ips, answers, strict=True):
        want = ("v2", dep2) if bucket_of(space, ip.encode()) < 2000 else ("v1", dep1)
        assert (name, dep) == want, (ip, name, dep)
    # Sticky: the same clients get the same answers again.
    assert sweep(stack.gw.port, host, ips[:300]) == answers[:300]

    # --- rollback to version 1 (v1), 100 %. (Without a version it is the same: during a canary
    # a rollback drops the canary, issue 15 N2.)
    resp = admin.call(
        "POST", f"/api/spaces/{space}/services/{service_id}/rollback", json_body={"version": 1}
    )
    assert resp.status == 200, resp
    body = resp.json()
    assert (body["id"], body["routing_status"], body["routing_weight"]) == (dep1, "rollback", 10000)
    assert routing_of(admin, service_id) == [(1, "rollback", 10000), (2, "archived", 0)]
    assert_consistent(stack)
    rc = stack.rc
    try:
        rec = redis_records(rc)[host]
    finally:
        rc.close()
    assert rec["endpoints"][0]["targets"] == [
        {"deployment_id": dep1, "weight": 10000, "status": "rollback", "upstreams": [v1.url]}
    ]
    wait_served_by(stack, host, "v1", ip=canary_ip)
    back = sweep(stack.gw.port, host, ips[:1000])
    assert Counter(back) == Counter({("v1", dep1): 1000})


def test_commit_without_publish_survives_admin_crash(stack: Stack) -> None:
    admin, v1, v2 = stack.admin, stack.ups.v1, stack.ups.v2
    space = create_space(admin, "crash")
    host = f"web.crash.{BASE}"
    resp = deploy(admin, space, manifest("crash", {"web": v1.url}))
    assert resp.status == 201, resp
    service_id = resp.json()["services"][0]["service_id"]
    assert_consistent(stack)
    wait_served_by(stack, host, "v1")

    with TrafficLoop(stack.gw.port, host) as traffic:
        # Redis goes away with all its data: the admin can commit, but not publish.
        stack.redis.shutdown_nosave()
        resp = deploy(admin, space, manifest("crash", {"web": v2.url}))
        assert resp.status == 201, resp  # SQL committed
        dep2 = resp.json()["services"][0]["deployment_id"]
        assert routing_of(admin, service_id) == [(1, "archived", 0), (2, "active", 10000)]
        time.sleep(1.5)  # the publisher retries every second; the row must stay
        assert host in queued_hosts(admin)
        # The gateway keeps serving its last-known-good table meanwhile.
        assert served(get_echo(stack.gw.port, host, "10.1.2.3"))[0] == "v1"

        # Crash the admin with the change committed and unpublished, then bring Redis back empty.
        admin.kill()
        assert host in queued_hosts(admin)
        stack.redis.start()
        started = time.monotonic()
        admin.start()
        waited = assert_consistent(stack, timeout=RECONCILE_BUDGET)
        repaired = time.monotonic() - started
        gw_wait = wait_served_by(stack, host, "v2", timeout=RECONCILE_BUDGET)
        print(
            f"\ncrash: admin restart → Redis equal to SQL in {repaired:.2f} s "
            f"({waited:.2f} s after /readyz); gateway on v2 {gw_wait:.2f} s later"
        )
        assert served(get_echo(stack.gw.port, host, "10.1.2.4")) == ("v2", dep2)
        time.sleep(0.3)
    rc = stack.rc
    try:
        assert redis_epoch(rc) is not None
    finally:
        rc.close()
    names = [name for _t, name in traffic.results]
    assert traffic.failures == [], traffic.failures[:10]
    assert set(names) <= {"v1", "v2"}, traffic.names()
    first_v2 = names.index("v2")
    assert "v1" not in names[first_v2:], "went back to v1 after switching to v2"
    print(f"crash: background client {dict(traffic.names())}, retries {traffic.retries}")


def test_flushall_is_republished_while_serving(stack: Stack) -> None:
    admin, v1, v2 = stack.admin, stack.ups.v1, stack.ups.v2
    space = create_space(admin, "flush")
    # (Service names are unique per space, so the second app has its own service name.)
    for app, svc, url in (("flush", "web", v1.url), ("other", "site", v2.url)):
        resp = deploy(admin, space, manifest(app, {svc: url}))
        assert resp.status == 201, resp
    web, other = f"web.flush.{BASE}", f"site.other.{BASE}"
    assert_consistent(stack)
    wait_served_by(stack, web, "v1")
    wait_served_by(stack, other, "v2")
    rc = stack.rc
    try:
        epoch_before = redis_epoch(rc)
        with TrafficLoop(stack.gw.port, web) as traffic:
            time.sleep(0.3)
            stack.redis.flushall()
            flushed = time.monotonic()
            assert redis_records(rc) == {} and redis_epoch(rc) is None
            _, took = wait_until(
                lambda: redis_matches_sql(admin, rc),
                RECONCILE_BUDGET,
                "the reconciler to republish after FLUSHALL",
                interval=0.01,
            )
            print(f"\nflushall: republished {time.monotonic() - flushed:.3f} s after FLUSHALL")
            assert took < 8.0, took
            epoch_after = redis_epoch(rc)
            assert epoch_after is not None and epoch_after != epoch_before
            time.sleep(0.5)
            # The gateway still follows Redis after the republish: a change goes through.
            resp = deploy(admin, space, manifest("flush", {"web": v2.url}))
            assert resp.status == 201, resp
            assert_consistent(stack)
            wait_served_by(stack, web, "v2")
            time.sleep(0.3)
    finally:
        rc.close()
    counts = traffic.names()
    print(
        f"flushall: background client {dict(counts)}, failures {len(traffic.failures)}, "
        f"retries {traffic.retries}"
    )
    assert traffic.failures == [], traffic.failures[:10]
    assert counts["v1"] > 50 and counts["v2"] > 0, counts


def test_resync_api_and_cli(stack: Stack) -> None:
    admin, v1, v2 = stack.admin, stack.ups.v1, stack.ups.v2
    space = create_space(admin, "resync")
    unverified = "shop.example.com"  # outside the base domain: needs a TXT proof first
    resp = deploy(
        admin,
        space,
        manifest(
            "shop", {"web": v1.url}, extra_routes=[{"service": "web", "hostname": unverified}]
        ),
    )
    assert resp.status == 201, resp
    verification = [v for s in resp.json()["services"] for v in s["verification"]]
    assert [v["host"] for v in verification] == [unverified]
    for app in ("docs", "blog"):
        resp = deploy(admin, space, manifest(app, {app: v2.url}))
        assert resp.status == 201, resp
    published_hosts = {f"web.shop.{BASE}", f"docs.docs.{BASE}", f"blog.blog.{BASE}"}
    assert_consistent(stack)
    rc = stack.rc
    try:
        assert set(redis_records(rc)) == published_hosts

        def drift() -> None:
            # What a bad hand edit or a half-lost Redis looks like.
            rc.hdel(f"{{{PREFIX}}}:routes", f"docs.docs.{BASE}")
            rc.hset(f"{{{PREFIX}}}:routes", f"blog.blog.{BASE}", b'{"bogus": true}')
            rc.hset(f"{{{PREFIX}}}:routes", f"ghost.{BASE}", b'{"bogus": true}')

        drift()
        before = redis_epoch(rc)
        resp = admin.call("POST", "/api/system/resync")
        assert resp.status == 200, resp
        report = resp.json()
        print(f"\nresync (API): {report}")
        assert set(report) == {"epoch", "published", "withdrawn", "hostnames", "seconds"}
        assert (report["published"], report["withdrawn"], report["hostnames"]) == (3, 1, 4)
        assert report["epoch"] != before and redis_epoch(rc) == report["epoch"]
        assert isinstance(report["seconds"], float) and report["seconds"] >= 0
        assert redis_matches_sql(admin, rc)
        assert set(redis_records(rc)) == published_hosts

        drift()
        report = admin.resync_cli()
        print(f"resync (CLI): {report}")
        assert (report["published"], report["withdrawn"], report["hostnames"]) == (3, 1, 4)
        assert redis_epoch(rc) == report["epoch"]
        assert redis_matches_sql(admin, rc)
        assert set(redis_records(rc)) == published_hosts
    finally:
        rc.close()
    # The gateway applied the new table: everything still routes, the ghost does not.
    wait_served_by(stack, f"web.shop.{BASE}", "v1")
    wait_served_by(stack, f"docs.docs.{BASE}", "v2")
    wait_served_by(stack, f"blog.blog.{BASE}", "v2")
    assert request(stack.gw.port, "GET", "/", f"ghost.{BASE}").status == 404
    assert request(stack.gw.port, "GET", "/", unverified).status == 404
    # Not without a token.
    resp = admin.call("POST", "/api/system/resync", auth=False)
    assert resp.status == 401, resp


def test_two_services_of_one_app_on_their_platform_hostnames(stack: Stack) -> None:
    """Routes without ``hostname`` put each service on its own ``<service>.<app>.<base>``
    host, so two such routes of different services do not collide."""
    admin, v1, v2 = stack.admin, stack.ups.v1, stack.ups.v2
    space = create_space(admin, "duo")
    resp = deploy(admin, space, manifest("duo", {"web": v1.url, "api": v2.url}))
    assert resp.status == 201, resp
    hosts = {s["name"]: s["hostnames"] for s in resp.json()["services"]}
    assert hosts == {"web": [f"web.duo.{BASE}"], "api": [f"api.duo.{BASE}"]}
    assert_consistent(stack)
    wait_served_by(stack, f"web.duo.{BASE}", "v1")
    wait_served_by(stack, f"api.duo.{BASE}", "v2")
