"""Route table benchmark: hot-path lookup+selection, full-sync cost, publish→apply latency.

Run from the repository root with the project venv (the package must be importable, e.g.
``pip install -e .``)::

    .venv/bin/python benchmarks/routing_table.py            # full run (1M tables/records)
    .venv/bin/python benchmarks/routing_table.py --quick    # smoke run, well under a minute

It prints a markdown report on stdout (progress goes to stderr). Parts 2 and 3 start their own
``redis-server`` on a free loopback port (never 6379) with persistence off, and stop it on exit.

1. **Lookup + selection**: per request ``table.lookup(host)``, ``route.match(b"GET", b"/api/x")``,
   ``route.select(ep, key)``, ``target.next_replica(now)`` over pre-generated random hosts (~10%
   resolving through a ``*.wild.example.com`` record) and client keys. Best of 3 passes.
2. **Full sync**: ``RedisRouteStore.replace_all`` (timed), then a fresh ``RouteTable`` syncs from
   Redis in a *subprocess*, which reports sync time and its VmRSS before/after.
3. **Publish→apply latency**: one ``RedisRouteStore`` publishes new versions of random hosts; a
   ``RouteTable`` (``block_ms=1000``) on a separate client in the same process applies them.
   ``table._apply`` is wrapped (on the instance, by this script only) to timestamp the moment the
   entry for the published (host, version) has been applied.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import redis
import redis.asyncio as aioredis

from routing.compiled import CompiledRoute, Interner
from routing.models import (
    Endpoint,
    RouteRecord,
    Target,
    Upstream,
    decode_record,
    encode_record,
)
from routing.redis_store import RedisRouteStore
from routing.store import LogEntry, MemoryRouteStore
from routing.table import RouteTable
from routing.upstreams import UpstreamRegistry

T = TypeVar("T")

SHARED_REDIS_PORT = 6379  # the machine's shared Redis: never touch it
WILDCARD = "*.wild.example.com"
SLOW_SECONDS = 300.0


# ---------------------------------------------------------------------------------- records


def host_of(i: int) -> str:
    return f"app-{i:07d}.tenants.example.com"


def _upstream(a: int, b: int, c: int) -> Upstream:
    host = f"10.{a}.{b}.{c}"
    return Upstream(url=f"http://{host}:8080", host=host, port=8080, base_path="")


def make_record(i: int, version: int = 1, host: str | None = None) -> RouteRecord:
    """Record ``i``: endpoints ``/`` and ``/api``, each active 9000 bp + canary 1000 bp.

    Upstream addresses are unique per record (as real deployments' pod addresses would be), so
    the upstream registry interns two replicas per record.
    """
    a, b, c = (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF
    active = Target(f"dep-{i}-a", 9000, "active", (_upstream(a, b, c),))
    canary = Target(f"dep-{i}-c", 1000, "canary", (_upstream(128 + (a & 0x7F), b, c),))
    targets = (active, canary)
    return RouteRecord(
        host=host or host_of(i),
        version=version,
        space_id=f"space-{i % 5000}",
        service_id=f"svc-{i}",
        endpoints=(Endpoint("/", (), targets), Endpoint("/api", (), targets)),
        updated_at=1_700_000_000_000,
    )


def make_records(n: int) -> Iterator[RouteRecord]:
    """``n`` records: the wildcard record plus ``n - 1`` exact hosts."""
    yield make_record(0, host=WILDCARD)
    for i in range(1, n):
        yield make_record(i)


# ---------------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1024 * 1024)
    return 0.0


def _redis_server_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"unavailable ({exc})"
    for part in out.stdout.split():
        if part.startswith("v="):
            return part[2:]
    return out.stdout.strip()


def machine_report(redis_binary: str, loop: str) -> list[str]:
    return [
        "### Machine",
        "",
        f"- CPU: {_cpu_model()}, {os.cpu_count()} logical cores, {_mem_total_gib():.1f} GiB RAM",
        f"- OS: {platform.system()} {platform.release()}",
        f"- Python: {platform.python_implementation()} {platform.python_version()}",
        f"- redis-server: {_redis_server_version(redis_binary)}; redis-py {redis.__version__}",
        f"- event loop (parts 2-3): {loop}",
        "",
    ]


# ---------------------------------------------------------------------------------- helpers


def vm_status(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fmt_int(n: float) -> str:
    return f"{n:,.0f}".replace(",", " ")


def table_md(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |"]
    out.append("|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|")
    out.extend("| " + " | ".join(r) + " |" for r in rows)
    return out


def run_async(coro: Coroutine[Any, Any, T], loop: str) -> T:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


# ---------------------------------------------------------------------------------- part 1


@dataclass
class LookupResult:
    hosts: int
    build_s: float
    full_ns: float
    lookup_ns: float
    empty_ns: float
    wildcard_share: float


def _pipeline_pass(table: RouteTable, hosts: list[bytes], keys: list[bytes], now: float) -> int:
    t0 = time.perf_counter_ns()
    for host, key in zip(hosts, keys, strict=True):
        route = table.lookup(host)
        ep = route.match(b"GET", b"/api/x")  # type: ignore[union-attr]
        t = route.select(ep, key)  # type: ignore[union-attr,arg-type]
        t.next_replica(now)
    return time.perf_counter_ns() - t0


def _lookup_pass(table: RouteTable, hosts: list[bytes], keys: list[bytes], now: float) -> int:
    t0 = time.perf_counter_ns()
    for host, _key in zip(hosts, keys, strict=True):
        table.lookup(host)
    return time.perf_counter_ns() - t0


def _empty_pass(table: RouteTable, hosts: list[bytes], keys: list[bytes], now: float) -> int:
    t0 = time.perf_counter_ns()
    for _host, _key in zip(hosts, keys, strict=True):
        pass
    return time.perf_counter_ns() - t0


def bench_lookup(n_hosts: int, n_requests: int, repeats: int, seed: int) -> LookupResult:
    rng = random.Random(seed)
    started = time.perf_counter()
    table = RouteTable(MemoryRouteStore())
    for record in make_records(n_hosts):
        route = CompiledRoute(record, table.registry, table.interner)
        table.routes[route.host_b] = route
    build_s = time.perf_counter() - started

    hosts: list[bytes] = []
    wild = 0
    for _ in range(n_requests):
        if rng.random() < 0.10:
            hosts.append(f"t{rng.randrange(1 << 30)}.wild.example.com".encode())
            wild += 1
        else:
            hosts.append(host_of(rng.randrange(1, n_hosts)).encode())
    keys = [
        f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}".encode()
        for _ in range(n_requests)
    ]
    now = time.monotonic()

    # Sanity: every request resolves, the wildcard ones through the wildcard record.
    for host in hosts:
        route = table.lookup(host)
        assert route is not None, host
        assert route.match(b"GET", b"/api/x") is not None

    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()  # the loops allocate nothing that needs the cycle collector
    try:
        best: dict[str, int] = {}
        passes: dict[str, Callable[[RouteTable, list[bytes], list[bytes], float], int]] = {
            "empty": _empty_pass,
            "lookup": _lookup_pass,
            "full": _pipeline_pass,
        }
        for name, fn in passes.items():
            fn(table, hosts[: min(n_requests, 10_000)], keys[: min(n_requests, 10_000)], now)
            best[name] = min(fn(table, hosts, keys, now) for _ in range(repeats))
    finally:
        if was_enabled:
            gc.enable()
    del table
    gc.collect()
    return LookupResult(
        hosts=n_hosts,
        build_s=build_s,
        full_ns=best["full"] / n_requests,
        lookup_ns=best["lookup"] / n_requests,
        empty_ns=best["empty"] / n_requests,
        wildcard_share=wild / n_requests,
    )


# ---------------------------------------------------------------------------------- redis


def _free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != SHARED_REDIS_PORT:
            return port
    raise RuntimeError("no free loopback port")


class RedisServer:
    """A throwaway ``redis-server`` on a free loopback port, persistence off."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = _free_port()
        assert self.port != SHARED_REDIS_PORT
        self.dir = tempfile.mkdtemp(prefix="turnout-bench-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir,
            "--logfile",
            os.path.join(self.dir, "redis.log"),
            "--protected-mode",
            "yes",
        ]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start")
                time.sleep(0.05)
        finally:
            client.close()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=120)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------- part 2


@dataclass
class SyncResult:
    records: int
    publish_s: float
    json_bytes: int
    redis_bytes: int
    sync_s: float
    table_sync_s: float
    rss_delta: int
    peak_delta: int
    scan_s: float
    wall_s: float


@dataclass
class CostBreakdown:
    records: int
    loads_us: float
    decode_us: float
    compile_us: float
    total_gc_us: float
    total_nogc_us: float


async def _publish_all(url: str, records: list[RouteRecord]) -> float:
    store = RedisRouteStore(url, socket_timeout=120)
    try:
        t0 = time.perf_counter()
        await store.replace_all(records)
        return time.perf_counter() - t0
    finally:
        await store.close()


async def _scan_only(url: str) -> tuple[float, int]:
    """Time ``store.scan(1000)`` alone: the Redis transport share of a full sync."""
    store = RedisRouteStore(url, socket_timeout=120)
    try:
        n = 0
        t0 = time.perf_counter()
        async for items in store.scan(1000):
            n += len(items)
        return time.perf_counter() - t0, n
    finally:
        await store.close()


def _decode_compile(datas: list[bytes]) -> float:
    registry = UpstreamRegistry()
    interner = Interner(registry)
    fresh: dict[bytes, CompiledRoute] = {}
    t0 = time.perf_counter()
    for data in datas:
        route = CompiledRoute(decode_record(data), registry, interner)
        fresh[route.host_b] = route
    return time.perf_counter() - t0


def cost_breakdown(n: int) -> CostBreakdown:
    """Per-record cost of what a full sync does after HSCAN, in this process, on ``n`` records."""
    datas = [encode_record(make_record(i)) for i in range(1, n + 1)]
    gc.collect()
    t0 = time.perf_counter()
    for data in datas:
        orjson.loads(data)
    loads_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    records = [decode_record(d) for d in datas]
    decode_s = time.perf_counter() - t0
    registry = UpstreamRegistry()
    t0 = time.perf_counter()
    interner = Interner(registry)
    routes = [CompiledRoute(r, registry, interner) for r in records]
    compile_s = time.perf_counter() - t0
    del records, routes, registry
    gc.collect()
    total_gc = _decode_compile(datas)
    gc.collect()
    gc.disable()
    try:
        total_nogc = _decode_compile(datas)
    finally:
        gc.enable()
    gc.collect()
    us = 1e6 / n
    return CostBreakdown(
        records=n,
        loads_us=loads_s * us,
        decode_us=decode_s * us,
        compile_us=compile_s * us,
        total_gc_us=total_gc * us,
        total_nogc_us=total_nogc * us,
    )


async def _child_sync(url: str, expect: int) -> dict[str, Any]:
    gc.collect()
    rss0, hwm0 = vm_status("VmRSS"), vm_status("VmHWM")
    store = RedisRouteStore(url, socket_timeout=120)
    table = RouteTable(store, block_ms=1000)
    t0 = time.perf_counter()
    ready = await table.start(wait=3600)
    sync_s = time.perf_counter() - t0
    n = len(table.routes)
    gc.collect()
    rss1, hwm1 = vm_status("VmRSS"), vm_status("VmHWM")
    await table.stop()
    await store.close()
    if not ready or n != expect:
        raise SystemExit(f"sync child: ready={ready}, {n} routes, expected {expect}")
    return {
        "records": n,
        "sync_s": sync_s,
        "table_sync_s": table.last_sync_seconds,
        "rss_before": rss0,
        "rss_after": rss1,
        "hwm_before": hwm0,
        "hwm_after": hwm1,
    }


def sync_child_main(url: str, expect: int, loop: str) -> None:
    print(json.dumps(run_async(_child_sync(url, expect), loop)))


def bench_sync(server: RedisServer, n: int, loop: str) -> SyncResult:
    wall0 = time.perf_counter()
    admin = server.client()
    admin.flushall()
    base_mem = int(admin.info("memory")["used_memory"])
    progress(f"sync {n}: building {n} records")
    records = list(make_records(n))
    json_bytes = len(encode_record(records[n // 2]))
    progress(f"sync {n}: replace_all")
    publish_s = run_async(_publish_all(server.url, records), loop)
    del records
    gc.collect()
    redis_bytes = int(admin.info("memory")["used_memory"]) - base_mem
    admin.close()
    progress(f"sync {n}: fresh RouteTable in a subprocess")
    out = subprocess.run(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--loop",
            loop,
            "--_sync-child",
            server.url,
            str(n),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"sync child failed ({out.returncode}):\n{out.stderr}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    progress(f"sync {n}: HSCAN only")
    scan_s, scanned = run_async(_scan_only(server.url), loop)
    assert scanned == n, (scanned, n)
    return SyncResult(
        records=n,
        publish_s=publish_s,
        json_bytes=json_bytes,
        redis_bytes=redis_bytes,
        sync_s=res["sync_s"],
        table_sync_s=res["table_sync_s"],
        rss_delta=res["rss_after"] - res["rss_before"],
        peak_delta=res["hwm_after"] - res["rss_before"],
        scan_s=scan_s,
        wall_s=time.perf_counter() - wall0,
    )


# ---------------------------------------------------------------------------------- part 3


@dataclass
class LatencyResult:
    publishes: int
    preload: int
    apply_ms: list[float]
    publish_ms: list[float]
    applied_before_return: int
    resyncs: int


async def _latency(url: str, publishes: int, preload: int, seed: int) -> LatencyResult:
    rng = random.Random(seed)
    setup = RedisRouteStore(url, socket_timeout=120)
    await setup.redis.flushall()
    await setup.replace_all(make_records(preload))
    await setup.close()

    # Two stores, two clients (two connection pools): one publishes, one feeds the table.
    publisher = RedisRouteStore(aioredis.Redis.from_url(url))
    reader = RedisRouteStore(url)
    table = RouteTable(reader, block_ms=1000)
    if not await table.start(wait=60):
        raise RuntimeError("route table did not sync")

    waiting: tuple[str, int] | None = None
    applied_at = 0.0
    applied = asyncio.Event()
    original_apply = table._apply

    def traced_apply(entry: LogEntry) -> None:
        nonlocal applied_at
        original_apply(entry)
        if waiting is not None and (entry.host, entry.version) == waiting:
            applied_at = time.perf_counter()
            applied.set()

    table._apply = traced_apply  # type: ignore[method-assign]

    versions = dict.fromkeys(range(1, preload), 1)
    apply_ms: list[float] = []
    publish_ms: list[float] = []
    early = 0
    try:
        for _ in range(publishes):
            # Idle 0-2 ms first so the table is usually parked in XREAD BLOCK, as in production.
            await asyncio.sleep(rng.random() * 0.002)
            i = rng.randrange(1, preload)
            versions[i] += 1
            record = make_record(i, versions[i])
            waiting = (record.host, record.version)
            applied.clear()
            t0 = time.perf_counter()
            await publisher.publish(record)
            t1 = time.perf_counter()
            await asyncio.wait_for(applied.wait(), 10)
            route = table.lookup(record.host.encode("ascii"))
            assert route is not None and route.version == record.version
            if applied_at <= t1:
                early += 1
            apply_ms.append((applied_at - t0) * 1000)
            publish_ms.append((t1 - t0) * 1000)
            waiting = None
    finally:
        await table.stop()
        await reader.close()
        await publisher.redis.aclose()
    return LatencyResult(
        publishes=publishes,
        preload=preload,
        apply_ms=sorted(apply_ms),
        publish_ms=sorted(publish_ms),
        applied_before_return=early,
        resyncs=table.resyncs,
    )


# ---------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 10/10k hosts, 10k/100k records, 200 pubs"
    )
    parser.add_argument(
        "--max-records",
        type=int,
        default=1_000_000,
        help="cap for table and sync sizes (default 1 000 000)",
    )
    parser.add_argument("--requests", type=int, default=500_000, help="requests per lookup pass")
    parser.add_argument("--publishes", type=int, default=None, help="publishes for part 3")
    parser.add_argument("--preload", type=int, default=10_000, help="records held in part 3")
    parser.add_argument(
        "--breakdown", type=int, default=20_000, help="records for the sync cost breakdown"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    parser.add_argument(
        "--skip", action="append", default=[], choices=("lookup", "sync", "latency")
    )
    parser.add_argument("--_sync-child", nargs=2, metavar=("URL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._sync_child:
        sync_child_main(args._sync_child[0], int(args._sync_child[1]), args.loop)
        return 0

    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop redis-server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    if args.quick:
        table_sizes, sync_sizes = [10, 10_000], [10_000, 100_000]
        publishes = args.publishes or 200
        n_requests = min(args.requests, 100_000)
    else:
        table_sizes, sync_sizes = [10, 10_000, 1_000_000], [100_000, 1_000_000]
        publishes = args.publishes or 1000
        n_requests = args.requests
    table_sizes = sorted({min(n, args.max_records) for n in table_sizes})
    sync_sizes = sorted({min(n, args.max_records) for n in sync_sizes})

    out: list[str] = []
    emit = out.append
    out += machine_report(args.redis_server, args.loop)
    print("\n".join(out), flush=True)
    out.clear()

    if "lookup" not in args.skip:
        results: list[LookupResult] = []
        for n in table_sizes:
            progress(f"lookup: building and timing a {n}-host table")
            results.append(bench_lookup(n, n_requests, 3, args.seed))
        emit("### 1. Lookup + selection (one core, best of 3)")
        emit("")
        emit(
            f"{fmt_int(n_requests)} pre-generated requests per pass, ~10% resolving through "
            f"`{WILDCARD}`; per request `table.lookup(host)`, `route.match(b'GET', b'/api/x')`, "
            "`route.select(ep, client_ip)`, `target.next_replica(now)`. "
            "Records: endpoints `/` and `/api`, active 9000 bp + canary 1000 bp, one upstream each."
        )
        emit("")
        rows = [
            [
                fmt_int(r.hosts),
                fmt_int(1e9 / r.full_ns),
                f"{r.full_ns:.0f}",
                f"{r.lookup_ns:.0f}",
                f"{r.wildcard_share:.1%}",
                f"{r.build_s:.2f}",
            ]
            for r in results
        ]
        out += table_md(
            [
                "hosts",
                "lookup+select ops/s",
                "ns/op",
                "lookup only ns/op",
                "wildcard hits",
                "compile table (s)",
            ],
            rows,
        )
        emit("")
        emit(
            f"ns/op includes the benchmark loop itself (`for host, key in zip(...)`: "
            f"{results[0].empty_ns:.0f} ns/op). `now` is computed once per pass. "
            "Cyclic GC disabled during the timed passes."
        )
        emit("")
        print("\n".join(out), flush=True)
        out.clear()

    need_redis = "sync" not in args.skip or "latency" not in args.skip
    server = RedisServer(args.redis_server) if need_redis else None
    try:
        if server is not None:
            progress(f"starting redis-server on 127.0.0.1:{server.port}")
            server.start()
        if server is not None and "sync" not in args.skip:
            sync_results: list[SyncResult] = []
            for n in sync_sizes:
                sync_results.append(bench_sync(server, n, args.loop))
            emit("### 2. Full sync from Redis")
            emit("")
            emit(
                "`replace_all` = `RedisRouteStore.replace_all(records)` from pre-built records "
                "(encode + HSET pipelines of 1 000 + RENAME). Sync = a fresh `RouteTable` "
                "in a subprocess, `start()` until ready (HSCAN batches of 1 000, decode, "
                "compile). RSS = VmRSS after sync (and `gc.collect()`) minus VmRSS before "
                "creating the store; peak = VmHWM minus the same baseline."
            )
            emit("")
            rows = [
                [
                    fmt_int(r.records),
                    f"{r.publish_s:.1f}",
                    fmt_int(r.records / r.publish_s),
                    f"{r.sync_s:.1f}",
                    fmt_int(r.records / r.sync_s),
                    f"{r.scan_s:.1f}",
                    f"{r.rss_delta / 2**20:.0f}",
                    f"{r.peak_delta / 2**20:.0f}",
                    fmt_int(r.rss_delta / r.records),
                    str(r.json_bytes),
                    f"{r.redis_bytes / 2**20:.0f}",
                    f"{r.wall_s:.0f}",
                ]
                for r in sync_results
            ]
            out += table_md(
                [
                    "records",
                    "replace_all (s)",
                    "records/s",
                    "sync (s)",
                    "records/s",
                    "HSCAN only (s)",
                    "RSS delta (MiB)",
                    "peak delta (MiB)",
                    "bytes/record",
                    "JSON bytes/record",
                    "Redis used_memory (MiB)",
                    "case wall (s)",
                ],
                rows,
            )
            emit("")
            emit(
                "HSCAN only = the same `store.scan(1000)` loop without decoding (run in the "
                "parent after the child). Case wall = building the records + replace_all + "
                "subprocess sync + HSCAN-only pass."
            )
            emit("")
            progress(f"sync: per-record cost breakdown on {args.breakdown} records")
            cb = cost_breakdown(args.breakdown)
            emit(
                f"Where the sync time goes, per record ({fmt_int(cb.records)} records decoded "
                f"in-process, µs/record): `orjson.loads` {cb.loads_us:.1f}; "
                f"`decode_record` (loads + validation) {cb.decode_us:.1f}; "
                f"`CompiledRoute` {cb.compile_us:.1f}; decode + compile into a dict "
                f"{cb.total_gc_us:.1f} with cyclic GC on, {cb.total_nogc_us:.1f} with it off."
            )
            emit("")
            for r in sync_results:
                if r.wall_s > SLOW_SECONDS:
                    emit(
                        f"**Note:** the {fmt_int(r.records)}-record case took {r.wall_s:.0f} s "
                        f"end to end (more than {SLOW_SECONDS / 60:.0f} minutes), including "
                        "building the records."
                    )
                    emit("")
            print("\n".join(out), flush=True)
            out.clear()
        if server is not None and "latency" not in args.skip:
            preload = min(args.preload, args.max_records)
            progress(f"latency: {publishes} publishes over a {preload}-record table")
            lat = run_async(_latency(server.url, publishes, preload, args.seed), args.loop)
            emit("### 3. Publish → apply latency")
            emit("")
            emit(
                f"{lat.publishes} sequential publishes of a new version of a random host "
                f"(table of {fmt_int(lat.preload)} records), 0-2 ms random idle before each so "
                "the table is normally parked in `XREAD BLOCK` (block_ms=1000). Publisher and "
                "table share one process and event loop but use separate Redis clients. "
                "Latency = from just before `await store.publish(record)` to the moment the "
                "table's `_apply` (wrapped on the instance by this script) returned for that "
                "(host, version); after each, `table.lookup(host).version == v` is asserted."
            )
            emit("")
            rows = []
            for name, vals in (
                ("publish → applied", lat.apply_ms),
                ("publish call (EVALSHA round trip)", lat.publish_ms),
            ):
                rows.append(
                    [
                        name,
                        f"{percentile(vals, 50):.3f}",
                        f"{percentile(vals, 90):.3f}",
                        f"{percentile(vals, 99):.3f}",
                        f"{max(vals):.3f}",
                        f"{statistics.fmean(vals):.3f}",
                    ]
                )
            out += table_md(["ms", "p50", "p90", "p99", "max", "mean"], rows)
            emit("")
            emit(
                f"Applied before `publish()` returned to the publisher: "
                f"{lat.applied_before_return}/{lat.publishes}. Full resyncs during the run: "
                f"{lat.resyncs}."
            )
            emit("")
            print("\n".join(out), flush=True)
            out.clear()
    finally:
        if server is not None:
            progress(f"stopping redis-server on 127.0.0.1:{server.port}")
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
