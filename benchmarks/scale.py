"""Route-table scale through the gateway: throughput with N route records vs 10.

Not a test. Starts its own redis-server (free loopback port), publishes N records with
``replace_all``, starts ``turnout gateway`` (native; each ``--tables`` mode × ``--workers``
count), waits until every worker's ``/readyz`` holds N records (ready from Redis), runs wrk
with a Lua script that spreads requests over min(N, ``--hot``) of the table's hostnames (1 000
by default; best and median of ``--rounds``), reads RSS and PSS of every worker (PSS counts a shared page once, split between
the processes mapping it), then restarts the gateway with its snapshot / flat file in place and
Redis still up and times it to ready again (ready from the file). Usage::

    .venv/bin/python benchmarks/scale.py --sizes 10,100000            # default
    .venv/bin/python benchmarks/scale.py --sizes 10,1000000 --tables memory,flat --workers 1,2 \
        --duration 5 --rounds 3

``--paired`` decides a small difference on a noisy machine: every size's gateway (each with its
own redis-server) runs at once, each gets one ``--warmup`` round that is not counted, then the
``--rounds`` are alternated between the sizes (round r starts at size r mod sizes), so drift in the
machine's load hits every size alike; the table gives, per size, the median over rounds of its
req/s and p99 divided by the smallest size's in the same round (no ready-from-file restart).
With the default ``--hot`` the sizes differ in their active hosts too (10 records: 10 hosts;
1 000 and up: 1 000), so a 1 000-record size separates what the table's size costs from what
1 000 active tenants cost; ``--hot 10`` holds the active set at 10 hosts for every size::

    .venv/bin/python benchmarks/scale.py --paired --sizes 10,1000,1000000 --tables flat \
        --workers 1,2 --duration 5 --rounds 7
    .venv/bin/python benchmarks/scale.py --paired --hot 10 --sizes 10,1000000 --tables flat \
        --workers 1,2 --duration 5 --rounds 7

``--miss-cost K`` measures one worker's hot-cache misses on a flat file in-process instead (no
gateway, no Redis): it writes a file of ``--sizes``' largest N records (kept at ``--miss-file``
for the next run), then looks up K distinct hosts spread over it through a fresh
:class:`routing.flat.ColdRoutes` (every lookup a miss: index probe, record read, strict decode,
compile) and prints µs per miss and the process's ``Pss_File`` / ``Pss_Anon`` growth. For a
deterministic count, under callgrind (compiled build; Ir / K = instructions per miss)::

    .venv/bin/python benchmarks/scale.py --sizes 1000000 --miss-cost 1000 --miss-file /tmp/m.flat
    valgrind --tool=callgrind --toggle-collect='CPyPy_flat___ColdRoutes___get' \
        .venv/bin/python benchmarks/scale.py --sizes 1000000 --miss-cost 1000 --miss-file /tmp/m.flat
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from throughput import compiled_build, free_port, machine, redis_server, spawned  # noqa: E402

LUA = """
local hosts = {}
for i = 0, %(n)d - 1 do hosts[#hosts + 1] = "h" .. (i * %(stride)d) .. ".scale.example.com" end
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "/small", {Host = hosts[(i %% #hosts) + 1]})
end
"""


def publish(redis_url: str, n: int, upstream_port: int) -> float:
    from routing.models import parse_upstream
    from routing.redis_store import RedisRouteStore

    async def go() -> float:
        store = RedisRouteStore(redis_url)
        up = (parse_upstream(f"http://127.0.0.1:{upstream_port}", "upstream"),)

        # Records are built directly (what decode_record would return for their JSON),
        # not decoded: a million strict decodes would dominate the run. The gateway still
        # decodes and validates every one of them.
        def records():  # type: ignore[no-untyped-def]
            for i in range(n):
                yield scale_record(i, up)

        t0 = time.perf_counter()
        await store.replace_all(records())
        await store.close()
        return time.perf_counter() - t0

    return asyncio.run(go())


def scale_record(i: int, up: tuple[object, ...]) -> object:
    """Record ``i`` of a scale table: what :func:`publish` writes for it."""
    from routing.models import Endpoint, RouteRecord, Target

    return RouteRecord(
        host=f"h{i}.scale.example.com",
        version=1,
        space_id=f"sp{i % 1000}",
        service_id=f"svc{i}",
        endpoints=(
            Endpoint(
                path_prefix="/",
                methods=(),
                targets=(
                    Target(f"d{i}a", 9000, "active", up),  # type: ignore[arg-type]
                    Target(f"d{i}b", 1000, "canary", up),  # type: ignore[arg-type]
                ),
            ),
        ),
    )


def smaps(pid: int) -> dict[str, int]:
    """``/proc/PID/smaps_rollup`` in KiB by field."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def miss_cost(n: int, k: int, path: str, pure: bool) -> int:
    """Hot-cache misses on a flat file of ``n`` scale records, in this process."""
    if not pure:
        sys.path.insert(0, os.path.join(ROOT, "scripts"))
        import build_compiled

        sys.path.insert(0, str(build_compiled.build()))  # compiled routing/ comes first
    from routing import flat
    from routing.models import encode_record, parse_upstream
    from routing.upstreams import UpstreamRegistry

    if not os.path.exists(path):
        t0 = time.perf_counter()
        up = (parse_upstream("http://127.0.0.1:9", "upstream"),)
        builder = flat.FlatBuilder(path)
        for i in range(n):
            builder.add(f"h{i}.scale.example.com".encode(), 1, encode_record(scale_record(i, up)))  # type: ignore[arg-type]
        builder.finish(None, None)
        print(f"wrote {path}: {n} records in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    table = flat.FlatFile(path)
    cold = flat.ColdRoutes(table, UpstreamRegistry(), limit=k + 1)
    stride = max(1, table.count // k)
    hosts = [f"h{i * stride}.scale.example.com".encode() for i in range(k)]
    before = smaps(os.getpid())
    get = cold.get
    t0 = time.perf_counter()
    for host in hosts:
        get(host)
    spent = time.perf_counter() - t0
    after = smaps(os.getpid())
    assert cold.misses == k and len(cold.cache) == k, (cold.misses, len(cold.cache))
    print(
        f"{'pure' if pure else 'compiled'}: {k} misses over {table.count} records: "
        f"{spent / k * 1e6:.1f} us per miss; Pss_File +{(after['Pss_File'] - before['Pss_File']) / 1024:.1f} MiB, "
        f"Pss_Anon +{(after['Pss_Anon'] - before['Pss_Anon']) / 1024:.1f} MiB, "
        f"Rss +{(after['Rss'] - before['Rss']) / 1024:.1f} MiB; routing.flat from {flat.__file__}"
    )
    return 0


def proc_mib(pid: int) -> tuple[float, float, float]:
    """(RSS, PSS, PSS of file-backed pages) of one process in MiB (from smaps_rollup)."""
    with contextlib.suppress(OSError):
        kib = smaps(pid)
        return kib.get("Rss", 0) / 1024, kib.get("Pss", 0) / 1024, kib.get("Pss_File", 0) / 1024
    return 0.0, 0.0, 0.0


def workers_of(pid: int, count: int) -> list[int]:
    """The worker processes of a launcher (itself when it runs one worker in-process)."""
    if count == 1:
        return [pid]
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(c) for c in fh.read().split()]


def ready(iport: int, workers: int, n: int) -> bool:
    for w in range(workers):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{iport + w}/readyz", timeout=5) as r:
                if json.load(r)["table"]["records"] < n:
                    return False
        except (OSError, ValueError, KeyError):
            return False
    return True


@contextlib.contextmanager
def gateway(
    url: str, snapshot: str, table: str, workers: int, env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    port, iport = free_port(), free_port()
    while any(not _free(iport + w) for w in range(workers)):
        iport = free_port()
    cmd = [
        sys.executable,
        "-c",
        "import sys; from gateway.launcher import main; sys.exit(main(sys.argv[1:]))",
        "--listen",
        f"127.0.0.1:{port}",
        "--redis",
        url,
        "--internal",
        f"127.0.0.1:{iport}",
        "--log-level",
        "WARNING",
        "--workers",
        str(workers),
        "--snapshot",
        snapshot,
        "--route-table",
        table,
    ]
    with spawned(cmd, port, env) as proc:
        yield proc, port, iport


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_ready(iport: int, workers: int, n: int, t0: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while not ready(iport, workers, n):
        if time.monotonic() > deadline:
            raise SystemExit(f"gateway not ready with {n} records in time")
        time.sleep(0.05)
    return time.perf_counter() - t0


def wrk_rounds(
    port: int, n: int, rounds: int, duration: int, hot: int = 1000
) -> list[tuple[float, str, str, int]]:
    fd, script = tempfile.mkstemp(suffix=".lua")
    with os.fdopen(fd, "w") as fh:
        count = min(n, hot)
        fh.write(LUA % {"n": count, "stride": max(1, n // count)})
    out_rows = []
    try:
        for _ in range(rounds):
            out = subprocess.run(
                [
                    "wrk",
                    "-t1",
                    "-c64",
                    f"-d{duration}s",
                    "--latency",
                    "-s",
                    script,
                    f"http://127.0.0.1:{port}/",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
            lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
            non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            out_rows.append(
                (rps, lat.get("50", "?"), lat.get("99", "?"), int(non2xx.group(1)) if non2xx else 0)
            )
    finally:
        os.unlink(script)
    return out_rows


def ms(latency: str) -> float:
    """wrk's latency ("812.00us", "7.72ms", "1.50s") in milliseconds (nan when unreadable)."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", latency)
    if m is None:
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def upstream(stack: contextlib.ExitStack) -> int:
    """The benchmark upstream (``benchmarks/peers/upstream.py``), up until ``stack`` closes; its
    port."""
    port = free_port()
    stack.enter_context(
        spawned([sys.executable, "benchmarks/peers/upstream.py", "--port", str(port)], port)
    )
    return port


def paired(
    args: argparse.Namespace,
    sizes: list[int],
    tables: list[str],
    counts: list[int],
    gw_env: dict[str, str],
    build_desc: str,
) -> int:
    """``--paired``: every size's gateway up at once, rounds alternated between them."""
    rows = []
    with contextlib.ExitStack() as stack:
        up_port = upstream(stack)
        urls, pubs = [], []
        for n in sizes:
            url = stack.enter_context(redis_server())
            urls.append(url)
            pubs.append(publish(url, n, up_port))
        for table in tables:
            for workers in counts:
                with contextlib.ExitStack() as run:
                    gws = []
                    for n, url in zip(sizes, urls, strict=True):
                        tmp = tempfile.mkdtemp(prefix="turnout-scale-")
                        run.callback(shutil.rmtree, tmp, True)
                        snapshot = os.path.join(tmp, f"routes.{table}")
                        t0 = time.perf_counter()
                        proc, port, iport = run.enter_context(
                            gateway(url, snapshot, table, workers, gw_env)
                        )
                        load = wait_ready(iport, workers, n, t0, args.ready_timeout)
                        gws.append((n, proc, port, load))
                    for n, _proc, port, _load in gws:
                        wrk_rounds(port, n, 1, args.warmup, args.hot)  # fills the hot caches
                    results: list[list[tuple[float, str, str, int]]] = [[] for _ in gws]
                    for r in range(args.rounds):
                        for k in range(len(gws)):
                            i = (r + k) % len(gws)  # each round starts one size further on
                            n, _proc, port, _load = gws[i]
                            results[i] += wrk_rounds(port, n, 1, args.duration, args.hot)
                    for (n, proc, _port, load), res in zip(gws, results, strict=True):
                        mem = [proc_mib(p) for p in workers_of(proc.pid, workers)]
                        rows.append((n, table, workers, load, mem, res))
                        print(
                            f"{n} records, {table}, {workers} worker(s): req/s "
                            f"{', '.join(f'{x[0]:.0f}' for x in res)}; p99 "
                            f"{', '.join(x[2] for x in res)}",
                            file=sys.stderr,
                            flush=True,
                        )
    print(
        "## Route-table scale through the gateway, paired rounds (`benchmarks/scale.py --paired`)\n"
    )
    print(f"- command: `.venv/bin/python benchmarks/scale.py {' '.join(sys.argv[1:])}`")
    print(f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {machine()}")
    print(
        f"- native gateway ({build_desc}); every size's gateway runs at once, each with its own "
        f"redis-server; one {args.warmup} s warm-up round each (not counted), then {args.rounds} "
        f"rounds of {args.duration} s alternated between the sizes (round r starts at size "
        f"r mod sizes); wrk 1 thread × 64 connections over min(N, {args.hot:,}) hostnames of "
        "the table; "
        "× smallest = the median over rounds of this size's value divided by the smallest size's "
        "value in the same round\n"
    )
    print(
        "| records | table | workers | publish s | ready from Redis s | PSS MiB / worker "
        "| req/s median | × smallest (median of rounds) | every round "
        "| p99 median ms | × smallest (median of rounds) | p99 every round | non-2xx |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---:|")
    for n, table, workers, load, mem, res in rows:
        base = next(r for r in rows if r[1] == table and r[2] == workers)[5]
        rates = [x[0] for x in res]
        p99 = [ms(x[2]) for x in res]
        rate_x = statistics.median(a[0] / b[0] for a, b in zip(res, base, strict=True))
        p99_x = statistics.median(ms(a[2]) / ms(b[2]) for a, b in zip(res, base, strict=True))
        print(
            f"| {n:,} | {table} | {workers} | {pubs[sizes.index(n)]:.1f} | {load:.1f} "
            f"| {max(m[1] for m in mem):.0f} | {statistics.median(rates):.0f} | {rate_x:.3f} "
            f"| {', '.join(f'{r:.0f}' for r in rates)} | {statistics.median(p99):.2f} | {p99_x:.3f} "
            f"| {', '.join(x[2] for x in res)} | {sum(x[3] for x in res)} |"
        )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="10,100000")
    ap.add_argument("--tables", default="memory", help="route table modes: memory,flat")
    ap.add_argument("--workers", default="1", help="worker counts, e.g. 1,2")
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--ready-timeout", type=float, default=900, help="seconds to wait for the table"
    )
    ap.add_argument(
        "--paired",
        action="store_true",
        help="every size's gateway at once, rounds alternated between sizes (see the docstring)",
    )
    ap.add_argument(
        "--hot",
        type=int,
        default=1000,
        help="hostnames wrk spreads requests over: min(N, HOT) of each table (default 1000)",
    )
    ap.add_argument("--warmup", type=int, default=3, help="--paired: seconds of warm-up per size")
    ap.add_argument("--pure", action="store_true", help="pure-Python gateway, not the mypyc build")
    ap.add_argument("--miss-cost", type=int, default=0, metavar="K", help="see the docstring")
    ap.add_argument("--miss-file", default="", help="the flat file --miss-cost reads (or writes)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.hot < 1 or args.rounds < 1 or args.duration < 1 or min(sizes) < 1:
        ap.error("--hot, --rounds, --duration and every --sizes value must be at least 1")
    if args.miss_cost:
        path = args.miss_file or os.path.join(
            tempfile.gettempdir(), f"turnout-miss-{max(sizes)}.flat"
        )
        return miss_cost(max(sizes), args.miss_cost, path, args.pure)
    tables = [t.strip() for t in args.tables.split(",")]
    worker_counts = [int(w) for w in args.workers.split(",")]
    gw_env = {} if args.pure else compiled_build()
    build_desc = "mypyc-compiled hot path" if gw_env else "pure Python"
    if args.paired:
        return paired(args, sizes, tables, worker_counts, gw_env, build_desc)
    rows = []
    with contextlib.ExitStack() as stack:
        up_port = upstream(stack)
        for n in sizes:
            with contextlib.ExitStack() as run:
                url = run.enter_context(redis_server())
                pub = publish(url, n, up_port)
                for table in tables:
                    for workers in worker_counts:
                        tmp = tempfile.mkdtemp(prefix="turnout-scale-")
                        snapshot = os.path.join(tmp, f"routes.{table}")
                        try:
                            t0 = time.perf_counter()
                            with gateway(url, snapshot, table, workers, gw_env) as (
                                proc,
                                port,
                                iport,
                            ):
                                load = wait_ready(iport, workers, n, t0, args.ready_timeout)
                                results = wrk_rounds(port, n, args.rounds, args.duration, args.hot)
                                mem = [proc_mib(p) for p in workers_of(proc.pid, workers)]
                                time.sleep(1.5)  # the writer's snapshot / flat file lands
                            t1 = time.perf_counter()
                            with gateway(url, snapshot, table, workers, gw_env) as (
                                _p,
                                _port,
                                iport2,
                            ):
                                from_file = wait_ready(iport2, workers, n, t1, args.ready_timeout)
                        finally:
                            shutil.rmtree(tmp, ignore_errors=True)
                        best = max(results, key=lambda r: r[0])
                        p99s = [r[2] for r in results]
                        rows.append((n, table, workers, pub, load, from_file, mem, results, best))
                        print(
                            f"{n} records, {table}, {workers} worker(s): {best[0]:.0f} req/s, "
                            f"p99 by round {', '.join(p99s)}, "
                            f"PSS/worker {max(m[1] for m in mem):.0f} MiB, ready {load:.1f}s, "
                            f"from file {from_file:.1f}s",
                            file=sys.stderr,
                            flush=True,
                        )
    print("## Route-table scale through the gateway (`benchmarks/scale.py`)\n")
    print(f"- command: `.venv/bin/python benchmarks/scale.py {' '.join(sys.argv[1:])}`")
    print(f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {machine()}")
    print(
        f"- native gateway ({build_desc}); wrk 1 thread × 64 connections, requests spread over "
        f"min(N, {args.hot:,}) hostnames of the table; best and median of {args.rounds} × {args.duration}s; "
        "ready from Redis = gateway start to every worker holding N records; ready from the "
        "file = the same after a restart with the snapshot / flat file in place\n"
    )
    print(
        "| records | table | workers | publish s | ready from Redis s | ready from file s "
        "| RSS MiB / worker | PSS MiB / worker | of which file | req/s best (× smallest) | median | every round "
        "| p50 | p99 | p99 best / median ms | p99 every round | non-2xx |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---:|")
    for n, table, workers, pub, load, from_file, mem, results, best in rows:
        base = min((r for r in rows if r[1] == table and r[2] == workers), key=lambda r: r[0])
        rps, p50, p99, bad = best
        rss = max(m[0] for m in mem)
        pss = max(m[1] for m in mem)
        pss_file = max(m[2] for m in mem)
        rates = [r[0] for r in results]
        every = ", ".join(f"{r:.0f}" for r in rates)
        every_p99 = ", ".join(r[2] for r in results)  # the first round warms the hot cache
        p99_ms = [ms(r[2]) for r in results]
        p99_best = f"{min(p99_ms):.2f} / {statistics.median(p99_ms):.2f}"
        print(
            f"| {n:,} | {table} | {workers} | {pub:.1f} | {load:.1f} | {from_file:.1f} "
            f"| {rss:.0f} | {pss:.0f} | {pss_file:.0f} | {rps:.0f} ({rps / base[8][0]:.2f}×) "
            f"| {statistics.median(rates):.0f} | {every} | {p50} | {p99} | {p99_best} | {every_p99} | {bad} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
