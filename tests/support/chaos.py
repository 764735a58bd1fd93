"""The chaos run: the production layout on loopback, under load, while its parts are killed.

One harness, two sizes: ``tests/e2e/test_chaos.py`` runs :data:`SHORT` and asserts the goals;
``benchmarks/chaos.py`` runs :class:`ChaosConfig` defaults and prints the table kept in
``benchmarks/RESULTS.md``.

The world: Redis primary + replica + 3 Sentinels (:class:`~tests.support.sentinel.
SentinelCluster`, ACLs, append-only files fsynced on every write), a PostgreSQL database of its
own on the machine's server, two ``turnout admin`` on it (lease TTL, reconcile and retry periods
from the config), two ``turnout gateway`` on ``redis+sentinel://``, two echo upstreams (``v1``,
``v2``). Two spaces with ``hosts_per_space`` hostnames each: clients of the *steady* space prefer
gateway ``g2`` (never killed), clients of the *roaming* space prefer ``g1``; both retry once on
the other gateway when the first gives no answer (:mod:`tests.support.chaos_client`).

While the load runs, the churn thread flips one hostname per space between ``v1`` and ``v2``
every ``deploy_every`` seconds — a deploy, or a rollback to the last deployment of the other
version — alternating admins (a dead one is skipped, the same ``Idempotency-Key`` reused), and
measures each change's *publish delay*: from the admin's answer (after its commit) until every
running gateway serves the new version.

Phases, in turn: steady state; the Redis primary SIGKILLed (Sentinel failover; the old primary
comes back as a replica); the leader admin SIGKILLed (handover timed, then restarted); gateway
``g1`` SIGKILLed (its clients retry on ``g2``; restarted on new ports); all of Redis (data nodes
and Sentinels) SIGKILLed for ``redis_outage`` seconds and restarted from its files. Then the
load stops and the run checks convergence (every gateway serves what SQL's records say, and
Redis holds SQL's records and versions) and usage (:func:`usage_check`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.client
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

from admin.db import make_engine, route_versions
from admin.routes import compute_record
from gateway.flusher import USAGE_METER
from routing.models import RouteRecord, decode_record
from tests.support.admin_proc import AdminProcess, ApiResponse
from tests.support.chaos_client import Outcome, RetryingLoad
from tests.support.gateway_proc import GatewayProcess
from tests.support.pg import pg_database
from tests.support.rawhttp import ConnectionClosed, request
from tests.support.sentinel import SentinelCluster
from tests.support.upstream import UpstreamProcess, started_upstreams

BASE = "turnout.localhost"
PREFIX = "chaos"
LABELS = ("steady", "roaming")
PRIMARY = {"steady": ("g2", "g1"), "roaming": ("g1", "g2")}
Log = Callable[[str], None]


@dataclass(frozen=True)
class ChaosConfig:
    hosts_per_space: int = 4
    workers_per_space: int = 4  # keep-alive client connections per space
    steady: float = 20.0  # seconds of load before the first event
    settle: float = 10.0  # seconds of load between events
    deploy_every: float = 3.0
    redis_outage: float = 20.0
    lease_seconds: float = 3.0
    reconcile_seconds: float = 1.0
    # The outbox's retry timer: long, so a write on a non-holder that is not poked shows up
    # as a multi-second publish delay instead of hiding behind the timer.
    publish_retry_seconds: float = 5.0
    flush_interval: float = 1.0
    down_after_ms: int = 1000
    request_timeout: float = 10.0


SHORT = ChaosConfig(
    hosts_per_space=2,
    workers_per_space=2,
    steady=3.0,
    settle=2.0,
    deploy_every=1.0,
    redis_outage=5.0,
)


@dataclass
class Phase:
    name: str
    start: float
    end: float = 0.0
    notes: list[str] = field(default_factory=list)
    event_at: float | None = None  # when the kill happened


@dataclass
class Change:
    """One deploy or rollback made by the churn thread."""

    n: int
    label: str
    host: str
    target: str  # the version it switches to
    kind: str  # deploy | rollback
    sent: float
    admin: str = ""  # the admin that answered
    answered: float | None = None
    visible: float | None = None  # every running gateway serves ``target``
    attempts: int = 0
    error: str = ""
    seen: dict[str, float] = field(default_factory=dict)  # gateway -> first served ``target``
    tag: str = ""  # made right after this event (Churn.now)
    answered_wall: float = 0.0  # time.time() of the answer
    published_wall: float | None = None  # time.time() of its entry in the route log

    @property
    def at(self) -> float:
        """When the change took effect (or last tried to): a change committed just before a
        kill and published after it belongs to the kill's phase."""
        return self.visible or self.answered or self.sent

    @property
    def publish_delay(self) -> float | None:
        """Answer → the record in Redis (the rest of :attr:`delay` is the gateways')."""
        if self.published_wall is None or self.answered is None:
            return None
        return self.published_wall - self.answered_wall

    @property
    def delay(self) -> float | None:
        if self.answered is None or self.visible is None:
            return None
        return self.visible - self.answered


@dataclass
class UsageRow:
    label: str
    answered: int  # requests some gateway answered (the client saw the answer)
    counted: int  # what reached Redis (wfp_requests)
    lost_bound: int  # requests g1 answered in its last flush window before it was killed

    @property
    def lost(self) -> int:
        return max(0, self.answered - self.counted)

    @property
    def double(self) -> int:
        return max(0, self.counted - self.answered)

    @property
    def ok(self) -> bool:
        return self.double == 0 and self.lost <= self.lost_bound


@dataclass
class Convergence:
    ok: bool
    seconds: float
    hosts: int
    detail: str = ""


@dataclass
class ChaosReport:
    config: ChaosConfig
    phases: list[Phase]
    outcomes: list[Outcome]
    changes: list[Change]
    usage: list[UsageRow]
    convergence: Convergence
    handover_seconds: float | None = None
    failover_seconds: float | None = None
    started: float = 0.0
    finished: float = 0.0

    def phase_at(self, at: float | None) -> str:
        for p in self.phases:
            if at is not None and p.start <= at < p.end:
                return p.name
        return "–"

    def in_phase(self, phase: Phase, items: list[Any], attr: str) -> list[Any]:
        return [x for x in items if phase.start <= getattr(x, attr) < phase.end]

    @property
    def failed(self) -> list[Outcome]:
        """Requests to known hosts without a 2xx answer, even after the retry."""
        return [o for o in self.outcomes if not o.ok]

    @property
    def retried(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.retried]

    def delays(self, phase: Phase | None = None) -> list[float]:
        changes = self.changes if phase is None else self.in_phase(phase, self.changes, "at")
        return [c.delay for c in changes if c.delay is not None]

    @property
    def unpublished(self) -> list[Change]:
        return [c for c in self.changes if c.answered is not None and c.visible is None]

    def markdown(self) -> str:
        c = self.config
        lines = [
            "| phase | s | requests | failed | retried on the other gateway | changes visible | "
            "publish delay median / max (ms) | notes |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for p in self.phases:
            outs = self.in_phase(p, self.outcomes, "at")
            ds = self.delays(p)
            notes = list(p.notes)
            for tagged in (x for x in self.changes if x.tag == p.name):
                if tagged.answered is None or p.event_at is None:
                    continue
                shown = _ms([tagged.delay] if tagged.delay is not None else [], "max")
                notes.append(
                    f"a change committed {tagged.answered - p.event_at:.1f} s after the kill "
                    f"was visible {shown} ms later"
                )
            lines.append(
                f"| {p.name} | {p.end - p.start:.1f} | {len(outs)} | "
                f"{sum(not o.ok for o in outs)} | {sum(o.retried for o in outs)} | "
                f"{len(self.in_phase(p, self.changes, 'at'))} | {_ms(ds)} | "
                f"{'; '.join(notes)} |"
            )
        every = self.delays()
        slow = sorted(
            (c for c in self.changes if c.delay is not None), key=lambda c: -(c.delay or 0)
        )[:3]
        usage = "; ".join(
            f"{u.label}: {u.answered} answered, {u.counted} counted, lost {u.lost}"
            f" (bound {u.lost_bound}), double {u.double}"
            for u in self.usage
        )
        steady = self.phases[0] if self.phases else None
        in_redis = [
            c.publish_delay
            for c in (self.in_phase(steady, self.changes, "at") if steady else [])
            if c.publish_delay is not None
        ]
        lines += [
            "",
            f"- steady-state publish latency (admin's answer after its commit → every gateway "
            f"serves the change): median {_ms(self.delays(steady), 'median')} ms, max "
            f"{_ms(self.delays(steady), 'max')} ms; of which answer → record in Redis median "
            f"{_ms(in_redis, 'median')} ms (about half the changes were committed on the admin that "
            f"does not hold the lease: published after a poke)",
            f"- requests to known hosts: {len(self.outcomes)}, failed {len(self.failed)}, "
            f"retried on the other gateway {len(self.retried)} "
            f"({len(self.outcomes) / max(self.finished - self.started, 1e-9):.0f} req/s offered "
            f"by {c.workers_per_space * len(LABELS)} keep-alive clients)",
            f"- changes (deploy/rollback every {c.deploy_every:g} s): {len(self.changes)}, "
            f"publish delay median {_ms(every, 'median')} ms, p99 {_ms(every, 'p99')} ms, "
            f"longest {_ms(every, 'max')} ms; never visible: {len(self.unpublished)}; slowest: "
            + ", ".join(
                f"{(c.delay or 0) * 1000:.0f} ms ({c.kind} on {c.admin}, {self.phase_at(c.at)}"
                f"; in Redis after {_ms([c.publish_delay] if c.publish_delay is not None else [])}"
                " ms)"
                for c in slow
            ),
            f"- Sentinel failover (primary SIGKILLed → replica accepting writes): "
            f"{_s(self.failover_seconds)}; leader handover (leader SIGKILLed → the other admin "
            f"leads, lease TTL {c.lease_seconds:g} s): {_s(self.handover_seconds)}",
            f"- usage (requests answered vs `wfp_requests` in Redis): {usage}",
            f"- convergence after the last event: {'yes' if self.convergence.ok else 'NO'}, "
            f"{self.convergence.hosts} hostnames, every gateway and Redis equal to SQL's records "
            f"within {self.convergence.seconds:.1f} s {self.convergence.detail}".rstrip(),
        ]
        return "\n".join(lines)


def _ms(values: list[float], which: str = "both") -> str:
    if not values:
        return "–"
    ordered = sorted(values)
    med = statistics.median(ordered) * 1000
    top = ordered[-1] * 1000
    if which == "median":
        return f"{med:.0f}"
    if which == "max":
        return f"{top:.0f}"
    if which == "p99":
        return f"{ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000:.0f}"
    return f"{med:.0f} / {top:.0f}"


def _s(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- the world


class World:
    """Every process of the run, and the few operations the phases and checks need."""

    def __init__(
        self,
        workdir: Path,
        config: ChaosConfig,
        db_url: str,
        cluster: SentinelCluster,
        ups: dict[str, UpstreamProcess],
    ) -> None:
        self.config = config
        self.db_url = db_url
        self.cluster = cluster
        self.ups = ups
        # Probes (served()) are tenant requests too: the gateways count them in usage.
        self.label_of: dict[str, str] = {}  # hostname -> space label
        self.probes: list[tuple[float, str, str]] = []  # answered probes: (at, label, gateway)
        self._probe_lock = threading.Lock()
        env = {
            "TURNOUT_LEASE_SECONDS": str(config.lease_seconds),
            "TURNOUT_RECONCILE_INTERVAL": str(config.reconcile_seconds),
            "TURNOUT_PUBLISH_RETRY": str(config.publish_retry_seconds),
        }
        first = AdminProcess(
            db_url, cluster.url, workdir / "admin-a", prefix=PREFIX, extra_env=env, name="admin-a"
        )
        first.init()
        second = AdminProcess(
            db_url,
            cluster.url,
            workdir / "admin-b",
            prefix=PREFIX,
            extra_env=env,
            name="admin-b",
            keys=first.keys,
            boot=first.boot,
        )
        self.admins = [first, second]
        flush = ["--flush-interval", str(config.flush_interval)]
        self.gateways = {
            name: GatewayProcess(
                cluster.url, workdir / name, prefix=PREFIX, name=name, extra_args=flush
            )
            for name in ("g1", "g2")
        }

    def start(self) -> None:
        procs: list[Any] = [*self.admins, *self.gateways.values()]
        with ThreadPoolExecutor(len(procs)) as pool:
            for future in [pool.submit(p.start) for p in procs]:
                future.result()

    def stop(self) -> None:
        procs: list[Any] = [*self.gateways.values(), *self.admins]
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.stop()

    def ports(self) -> dict[str, int]:
        return {name: gw.port for name, gw in self.gateways.items()}

    def leader(self) -> AdminProcess | None:
        for admin in self.admins:
            if not admin.is_running():
                continue
            try:
                r = admin.call("GET", "/readyz", auth=False, timeout=2)
            except (OSError, http.client.HTTPException):
                continue
            if r.status == 200 and r.json().get("leader"):
                return admin
        return None

    def api(
        self, method: str, path: str, body: Any, *, prefer: int = 0, key: str | None = None
    ) -> tuple[AdminProcess, ApiResponse]:
        """Call the preferred admin, or the other when that one is down (same idempotency
        key, so a request that committed before its answer was lost is not done twice)."""
        headers = {"Idempotency-Key": key} if key else {}
        last: Exception | None = None
        for i in range(len(self.admins)):
            admin = self.admins[(prefer + i) % len(self.admins)]
            if not admin.is_running():
                continue
            try:
                return admin, admin.call(method, path, json_body=body, headers=headers, timeout=15)
            except (OSError, http.client.HTTPException) as exc:
                last = exc
        raise ConnectionError(f"no admin answered {method} {path}: {last!r}")

    def served(self, gw: GatewayProcess, host: str) -> tuple[str, str] | None:
        """(upstream name, deployment id) ``gw`` serves for ``host`` now, or None."""
        try:
            resp = request(gw.port, "GET", "/echo", host, timeout=2)
        except (OSError, ValueError, ConnectionClosed):
            return None  # down, starting, or killed while answering
        label = self.label_of.get(host)
        if label is not None:
            with self._probe_lock:
                self.probes.append((time.monotonic(), label, gw.name))
        if resp.status != 200:
            return None
        obj = resp.json()
        deps = [v for k, v in obj["headers"] if k.lower() == "x-turnout-deployment"]
        return str(obj["name"]), (deps[0] if deps else "")

    def redis(self) -> redis.Redis:
        return self.cluster.client(self.cluster.primary())


def manifest(label: str, i: int, upstream: str) -> dict[str, Any]:
    """App ``<label><i>`` with one service ``s<i>`` on its platform hostname
    ``s<i>.<label><i>.<base>`` (hostnames are global, service names unique per space)."""
    return {
        "apiVersion": "turnout/v1",
        "kind": "App",
        "metadata": {"name": f"{label}{i}"},
        "spec": {
            "services": {f"s{i}": {"type": "http", "upstreams": [upstream]}},
            "routes": [{"service": f"s{i}"}],
            "rollout": {"strategy": "direct"},
        },
    }


def wait_for(probe: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> float:
    started = time.monotonic()
    while not probe():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(every)
    return time.monotonic() - started


# ---------------------------------------------------------------------- churn


class Churn:
    """Flips one hostname per space between v1 and v2 until stopped (see the module doc)."""

    def __init__(
        self,
        world: World,
        spaces: dict[str, str],
        hosts: dict[str, str],  # label -> the hostname it flips (service s0)
        log: Log,
    ) -> None:
        self.world = world
        self.spaces = spaces
        self.hosts = hosts
        self.log = log
        self.version = dict.fromkeys(hosts.values(), "v1")
        self.numbers: dict[str, dict[str, int]] = {h: {"v1": 1} for h in hosts.values()}
        self.changes: list[Change] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._tag = ""  # the event the next change is made right after (see now())
        self._thread = threading.Thread(target=self._run, name="chaos-churn", daemon=True)
        self._error: BaseException | None = None

    def start(self) -> Churn:
        self._thread.start()
        return self

    def now(self, tag: str) -> None:
        """Make the next change at once (right after an event), tagged with the event: its
        publish delay is the one *across* that event."""
        self._tag = tag
        self._wake.set()

    def stop(self, timeout: float = 120.0) -> list[Change]:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._error is not None:
            raise self._error
        return self.changes

    def _run(self) -> None:
        try:
            k = 0
            while not self._stop.is_set():
                if k:
                    self._wake.wait(self.world.config.deploy_every)
                    self._wake.clear()
                    if self._stop.is_set():
                        break
                tag, self._tag = self._tag, ""
                change = self._one(k)
                change.tag = tag
                self.changes.append(change)
                k += 1
        except BaseException as exc:
            self._error = exc

    def _one(self, k: int) -> Change:
        label = LABELS[k % len(LABELS)]
        host = self.hosts[label]
        target = "v2" if self.version[host] == "v1" else "v1"
        rollback = (k // 2) % 2 == 1 and target in self.numbers[host]
        change = Change(k, label, host, target, "rollback" if rollback else "deploy", time.time())
        change.sent = time.monotonic()
        space = self.spaces[label]
        key = uuid.uuid4().hex
        deadline = time.monotonic() + 60
        while change.answered is None and time.monotonic() < deadline:
            change.attempts += 1
            if change.kind == "rollback":
                path = f"/api/spaces/{space}/services/s0/rollback"
                body: Any = {"version": self.numbers[host][target]}
            else:
                path = f"/api/spaces/{space}/app-deployments"
                body = manifest(label, 0, self.world.ups[target].url)
            try:
                admin, resp = self.world.api("POST", path, body, prefer=k, key=key)
            except ConnectionError as exc:
                change.error = str(exc)
                time.sleep(0.2)
                continue
            if resp.status in (200, 201):
                change.answered = time.monotonic()
                change.answered_wall = time.time()
                change.admin = admin.name
                out = resp.json()
                number = out["services"][0]["number"] if "services" in out else out["number"]
                self.numbers[host][target] = int(number)
                break
            change.error = f"{resp.status} {resp.body[:200]!r}"
            if resp.status >= 500 or resp.status == 409:
                time.sleep(0.2)  # e.g. the database is briefly busy; try again
                continue
            raise AssertionError(f"churn change {k} refused: {change.error}")
        if change.answered is None:
            self.log(f"churn: change {k} could not be committed: {change.error}")
            return change
        self.version[host] = target
        try:
            wait_for(lambda: self._visible(change), 120, f"{host} serving {target}", 0.01)
        except TimeoutError as exc:
            change.error = str(exc)
            return change
        change.visible = time.monotonic()
        change.published_wall = self._logged_at(host)
        return change

    def _logged_at(self, host: str) -> float | None:
        """When the route log got ``host``'s latest record (stream ids are milliseconds)."""
        try:
            with self.world.redis() as c:
                entries: Any = c.xrevrange(f"{{{PREFIX}}}:routes:log", count=100)
        except (redis.RedisError, RuntimeError, OSError):
            return None
        for entry_id, fields in entries:
            if fields.get(b"host") == host.encode():
                return int(entry_id.split(b"-")[0]) / 1000
        return None

    def _visible(self, change: Change) -> bool:
        for name, gw in self.world.gateways.items():
            if name in change.seen or not gw.is_running():
                continue
            if (self.world.served(gw, change.host) or ("", ""))[0] == change.target:
                change.seen[name] = time.monotonic()
        running = {name for name, gw in self.world.gateways.items() if gw.is_running()}
        return running <= set(change.seen)


# ---------------------------------------------------------------------- checks


def usage_check(
    outcomes: list[Outcome],
    counted: dict[str, int],
    *,
    probes: list[tuple[float, str, str]],
    killed_at: float | None,
    flush_interval: float,
) -> list[UsageRow]:
    """Requests answered per space against what the gateways' counters wrote to Redis.

    Nothing may be counted twice, and nothing lost through failovers and outages. The one
    loss by design: counts ``g1`` had not yet flushed when it was SIGKILLed (in-memory
    counters, flushed every ``flush_interval``), so a space may miss at most what ``g1``
    answered for it in its last flush window (``lost_bound``). The *steady* space's clients
    never use ``g1``, so its bound holds only the harness's probes there. ``probes`` are those
    answered probes (visibility and convergence checks): tenant requests like any other.

    Today ``counted`` is read from Redis (``{p}:usage:<space>:<yyyymm>``, see
    :func:`redis_usage`). With metering (issue 10) folding those counters into SQL, pass the
    sum of ``usage_rollups.units`` for meter ``wfp_requests`` of each space (after the usage
    collector's next run on the leader) instead; this comparison stays as it is, and then
    also covers the collector's exactly-once folding across the admin kill.
    """
    rows: list[UsageRow] = []
    window = 1.5 * flush_interval
    for label in LABELS:
        answered = [(o.at, o.gateway) for o in outcomes if o.space == label and o.status != 0]
        answered += [(at, gw) for at, probe_label, gw in probes if probe_label == label]
        bound = 0
        if killed_at is not None:
            bound = sum(
                1 for at, gw in answered if gw == "g1" and killed_at - window <= at <= killed_at
            )
        rows.append(UsageRow(label, len(answered), counted.get(label, 0), bound))
    return rows


def redis_usage(world: World, spaces: dict[str, str]) -> dict[str, int]:
    """``wfp_requests`` per space label, summed over every month key: the field itself
    (``HINCRBY`` counters) or its per-writer fields ``wfp_requests:<writer>`` (cumulative
    totals, one per gateway worker), whichever the gateways write."""
    meter = USAGE_METER.encode()
    out: dict[str, int] = {}
    with world.redis() as c:
        for label, space in spaces.items():
            total = 0
            for key in c.scan_iter(match=f"{{{PREFIX}}}:usage:{space}:*"):
                fields: Any = c.hgetall(key)
                total += sum(
                    int(v) for f, v in fields.items() if f == meter or f.startswith(meter + b":")
                )
            out[label] = total
    return out


def _normal(record: RouteRecord | None) -> RouteRecord | None:
    if record is None:
        return None
    return dataclasses.replace(record, version=0, updated_at=0)


async def _sql_records(db_url: str, hosts: list[str]) -> tuple[dict[str, Any], dict[str, int]]:
    engine = make_engine(db_url)
    try:
        async with engine.connect() as conn:
            records = {h: await compute_record(conn, h, 1) for h in hosts}
            rows = (
                await conn.execute(sa.select(route_versions.c.host, route_versions.c.version))
            ).all()
    finally:
        await engine.dispose()
    return records, {str(r.host): int(r.version) for r in rows}


def converged(world: World, hosts: list[str]) -> str:
    """Empty when Redis and every gateway agree with SQL's records; else what differs."""
    records, versions = asyncio.run(_sql_records(world.db_url, hosts))
    with world.redis() as c:
        stored: Any = c.hgetall(f"{{{PREFIX}}}:routes")
        stored_versions: Any = c.hgetall(f"{{{PREFIX}}}:routes:versions")
        epoch_raw: Any = c.get(f"{{{PREFIX}}}:epoch")
    in_redis = {k.decode(): decode_record(v) for k, v in stored.items()}
    if {k.decode(): int(v) for k, v in stored_versions.items()} != versions:
        return "Redis route versions differ from SQL's"
    epoch = epoch_raw.decode() if epoch_raw else None
    for host in hosts:
        want = records[host]
        if _normal(in_redis.get(host)) != _normal(want):
            return f"{host}: Redis holds another record than SQL computes"
        assert want is not None, f"{host} should be served"
        [endpoint] = want.endpoints
        active = [t.deployment_id for t in endpoint.targets if t.weight > 0]
        for name, gw in world.gateways.items():
            got = world.served(gw, host)
            if got is None or [got[1]] != active:
                return f"{name} serves {got} for {host}, SQL says {active}"
    for name, gw in world.gateways.items():
        ready = request(gw.internal_port, "GET", "/readyz", "localhost", timeout=2).json()
        table = ready["table"]
        if table["epoch"] != epoch or table["stale"]:
            return f"{name}'s table: epoch {table['epoch']} stale={table['stale']} (Redis {epoch})"
    return ""


# ---------------------------------------------------------------------- the run


@contextlib.contextmanager
def _phase(phases: list[Phase], name: str, log: Log, t0: float) -> Iterator[Phase]:
    phase = Phase(name, time.monotonic())
    log(f"[{phase.start - t0:6.1f}s] phase: {name}")
    phases.append(phase)
    try:
        yield phase
    finally:
        phase.end = time.monotonic()


def run_chaos(
    workdir: Path, config: ChaosConfig = ChaosConfig(), log: Log = _stderr
) -> ChaosReport:
    """Build the world, run every phase, check, tear everything down; returns the report."""
    workdir = Path(workdir)
    with contextlib.ExitStack() as stack:
        db_url = stack.enter_context(pg_database("turnout_chaos"))
        cluster = stack.enter_context(
            SentinelCluster(
                workdir / "redis", password="chaos-pw", down_after_ms=config.down_after_ms
            )
        )
        v1, v2 = stack.enter_context(started_upstreams(workdir / "up", "v1", "v2"))
        world = World(workdir, config, db_url, cluster, {"v1": v1, "v2": v2})
        stack.callback(world.stop)
        world.start()
        return _run(world, config, log)
    raise AssertionError("unreachable")  # pragma: no cover - ExitStack does not swallow


def _run(world: World, config: ChaosConfig, log: Log) -> ChaosReport:
    t0 = time.monotonic()
    spaces: dict[str, str] = {}
    hosts: dict[str, list[str]] = {}
    for label in LABELS:
        _, r = world.api("POST", "/api/spaces", {"name": label})
        assert r.status == 201, r
        spaces[label] = r.json()["id"]
        hosts[label] = []
        for i in range(config.hosts_per_space):
            _, r = world.api(
                "POST",
                f"/api/spaces/{spaces[label]}/app-deployments",
                manifest(label, i, world.ups["v1"].url),
            )
            assert r.status == 201, r
            hosts[label].append(f"s{i}.{label}{i}.{BASE}")
            world.label_of[hosts[label][-1]] = label
    every_host = [h for label in LABELS for h in hosts[label]]
    wait_for(
        lambda: all(
            (world.served(gw, h) or ("", ""))[0] == "v1"
            for gw in world.gateways.values()
            for h in every_host
        ),
        30,
        "every hostname served by both gateways",
    )
    log(f"[{time.monotonic() - t0:6.1f}s] {len(every_host)} hostnames served; load starts")
    load = RetryingLoad(
        {label: hosts[label] for label in LABELS},
        PRIMARY,
        world.ports,
        workers=config.workers_per_space,
        timeout=config.request_timeout,
    ).start()
    churn = Churn(world, spaces, {label: hosts[label][0] for label in LABELS}, log).start()
    phases: list[Phase] = []
    report = ChaosReport(config, phases, [], [], [], Convergence(False, 0.0, len(every_host)))
    report.started = time.monotonic()
    killed_g1: float | None = None
    try:
        with _phase(phases, "steady state", log, t0):
            time.sleep(config.steady)

        with _phase(phases, "Redis primary SIGKILLed", log, t0) as p:
            old = world.cluster.primary()
            killed = time.monotonic()
            world.cluster.kill(old)
            p.event_at = killed
            churn.now(p.name)
            new = world.cluster.wait_for_failover(old)
            report.failover_seconds = time.monotonic() - killed
            p.notes.append(f"failover {report.failover_seconds:.1f} s")
            time.sleep(config.settle)
            world.cluster.start_node(old, replica_of=new)
            world.cluster.wait_healthy()

        with _phase(phases, "leader admin SIGKILLed", log, t0) as p:
            wait_for(lambda: world.leader() is not None, 30, "an admin leads")
            leader = world.leader()
            assert leader is not None
            killed = time.monotonic()
            leader.kill()
            p.event_at = killed
            churn.now(p.name)
            wait_for(lambda: world.leader() not in (None, leader), 30, "the other admin leads")
            report.handover_seconds = time.monotonic() - killed
            p.notes.append(f"{leader.name} killed, handover {report.handover_seconds:.2f} s")
            time.sleep(config.settle)
            leader.start()

        with _phase(phases, "gateway g1 SIGKILLed", log, t0) as p:
            killed_g1 = p.event_at = time.monotonic()
            world.gateways["g1"].kill()
            time.sleep(config.settle)
            world.gateways["g1"].start()
            p.notes.append("restarted on new ports")
            time.sleep(config.settle / 2)

        with _phase(phases, f"all of Redis down {config.redis_outage:g} s", log, t0) as p:
            p.event_at = time.monotonic()
            for node in [*world.cluster.nodes, *world.cluster.sentinels]:
                world.cluster.kill(node)
            churn.now(p.name)
            time.sleep(config.redis_outage)
            for node in [*world.cluster.nodes, *world.cluster.sentinels]:
                world.cluster.start_node(node)
            back = time.monotonic()
            world.cluster.wait_healthy()
            p.notes.append(
                f"restarted from the append-only files in {time.monotonic() - back:.1f} s"
            )
            time.sleep(config.settle)
    finally:
        report.changes = churn.stop()
        report.outcomes = load.stop()
        report.finished = time.monotonic()
    log(f"[{time.monotonic() - t0:6.1f}s] load stopped; checking convergence and usage")
    started = time.monotonic()
    detail = "not checked"
    deadline = started + 60
    while time.monotonic() < deadline:
        detail = converged(world, every_host)
        if not detail:
            break
        time.sleep(0.2)
    report.convergence = Convergence(
        not detail, time.monotonic() - started, len(every_host), detail
    )

    def usage() -> list[UsageRow]:
        return usage_check(
            report.outcomes,
            redis_usage(world, spaces),
            probes=world.probes,
            killed_at=killed_g1,
            flush_interval=config.flush_interval,
        )

    deadline = time.monotonic() + 20
    while not all(row.ok for row in usage()) and time.monotonic() < deadline:
        time.sleep(0.2)  # the gateways flush every flush_interval
    time.sleep(2 * config.flush_interval)  # and then nothing more may arrive (no double count)
    report.usage = usage()
    log(f"[{time.monotonic() - t0:6.1f}s] done")
    return report
