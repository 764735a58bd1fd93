"""Pod scope authority under a large space: check from the mirror, check on a mirror miss, spawn
latency. Not a test.

Starts its own redis-server (persistence off) and ``turnout admin serve`` (SQLite in a temp
dir, pod mirrors in that Redis, a lease TTL of an hour so nothing expires mid-run), fills one
space with ``--pods`` pods through the API — ``--pods / 10`` roots holding ``/ws/r<i>`` and
nine children each (``/ws/r<i>/c<j>``) — and then measures over keep-alive HTTP/1.1
connections:

* ``check`` answers per second with a warm mirror (one connection, then ``--clients``
  connections in parallel), and on a mirror miss (the mirror deleted just before each check,
  outside the timed part: the check computes from SQL and rewrites it);
* spawn latency (``--spawns`` more children under random roots), p50/p99;
* a second ``pods:rebuild`` of the whole space (all mirrors current: reads and compares).

Usage::

    .venv/bin/python benchmarks/pods.py                 # 10 000 pods, ~3-5 minutes
    .venv/bin/python benchmarks/pods.py --pods 1000     # quick
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import json
import os
import random
import sys
import tempfile
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, ROOT)

from throughput import admin_init, free_port, machine, redis_server, spawned  # noqa: E402

CLI = [
    sys.executable,
    "-c",
    "import sys; from turnout.cli import main; sys.exit(main(sys.argv[1:]))",
]


class Api:
    """One keep-alive connection to the admin."""

    def __init__(self, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: object | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=data, headers=self.headers)
                resp = self.conn.getresponse()
                break
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                # uvicorn closes connections idle for 5 s; reconnect once
                self.conn.close()
                if attempt == 2:
                    raise
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw else None)

    def ok(self, method: str, path: str, body: object | None = None, status: int = 200) -> Any:
        got, data = self.call(method, path, body)
        if got != status:
            raise RuntimeError(f"{method} {path}: {got} {data}")
        return data


def W(target: str) -> dict[str, Any]:
    return {"target": target, "permission": "write"}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def timed_checks(api: Api, base: str, samples: list[tuple[str, str]]) -> list[float]:
    out = []
    for name, path in samples:
        t = time.perf_counter()
        api.ok("POST", f"{base}/{name}/check", {"path": path, "permission": "write"})
        out.append(time.perf_counter() - t)
    return out


async def fill_space(db: str, space: str, roots: int) -> None:
    from admin.db import make_engine, now_ms
    from admin.pods import authority
    from admin.pods.algebra import Perm, Rule
    from admin.pods.tx import PodTx

    engine = make_engine(db)
    try:
        for i in range(roots):
            async with engine.begin() as conn:
                tx = PodTx(conn, space, now_ms(), 3_600_000)
                region = Rule(f"/ws/r{i}", Perm.WRITE)
                await authority.create(tx, f"r{i}", [region], [], [region])
                for j in range(9):
                    rule = Rule(f"/ws/r{i}/c{j}", Perm.WRITE)
                    await authority.spawn(tx, f"r{i}", f"r{i}-c{j}", [rule], [])
                await tx.finish()
            if i % 100 == 99:
                print(f"  {10 * (i + 1)} pods", file=sys.stderr)
    finally:
        await engine.dispose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=10_000)
    ap.add_argument("--checks", type=int, default=3000, help="checks per measurement")
    ap.add_argument("--misses", type=int, default=1000, help="checks on a mirror miss")
    ap.add_argument("--spawns", type=int, default=300)
    ap.add_argument("--clients", type=int, default=8, help="parallel connections")
    args = ap.parse_args()
    roots = max(1, args.pods // 10)
    load = os.getloadavg()
    import redis

    tmp = tempfile.mkdtemp(prefix="turnout-pods-bench-")
    env = {
        **os.environ,
        "TURNOUT_KEYS": "*k1:" + base64.b64encode(os.urandom(32)).decode(),
        "TURNOUT_POD_LEASE_TTL": "3600",
    }
    env.pop("TURNOUT_DB", None)
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(redis_server())
        db = os.path.join(tmp, "admin.db")
        token = admin_init(db, env)
        port = free_port()
        serve = [*CLI, "admin", "serve", "--listen", f"127.0.0.1:{port}", "--db", db]
        stack.enter_context(spawned([*serve, "--redis", redis_url], port, env))
        api = Api(port, token)
        space = api.ok("POST", "/api/spaces", {"name": "pods-bench"}, 201)["id"]
        base = f"/api/spaces/{space}/pods"

        # Fill through the authority's own operations (one transaction per root and its nine
        # children) in this process, on the same SQLite file the server uses: the same rows
        # the API would write, without 10 000 HTTP round trips. Then one rebuild writes every
        # mirror (and is timed).
        t0 = time.perf_counter()
        asyncio.run(fill_space(db, space, roots))
        fill = time.perf_counter() - t0
        total = roots * 10
        t = time.perf_counter()
        first_rebuild = api.ok("POST", f"{base}:rebuild")
        first_rebuild_s = time.perf_counter() - t
        assert first_rebuild["pods"] == total, first_rebuild

        rng = random.Random(7)

        def sample(n: int) -> list[tuple[str, str]]:
            out = []
            for _ in range(n):
                i, j = rng.randrange(roots), rng.randrange(9)
                if rng.random() < 0.5:  # a root asking inside a child's region (denied)
                    out.append((f"r{i}", f"/ws/r{i}/c{j}/src/main.py"))
                else:  # a child inside its own region (allowed)
                    out.append((f"r{i}-c{j}", f"/ws/r{i}/c{j}/src/main.py"))
            return out

        warm = sample(args.checks)
        timed_checks(api, base, warm[:200])  # warm every code path
        lat_mirror = timed_checks(api, base, warm)
        lat_floor = []  # the admin's per-request floor: token, space and role checks, one read
        for _ in range(len(warm) // 3):
            t = time.perf_counter()
            api.ok("GET", f"/api/spaces/{space}")
            lat_floor.append(time.perf_counter() - t)

        results: list[float] = []
        lock = threading.Lock()
        per_client = args.checks // args.clients

        def client(seed: int) -> None:
            mine = Api(port, token)
            local = timed_checks(
                mine, base, [warm[(seed * 7919 + k) % len(warm)] for k in range(per_client)]
            )
            with lock:
                results.extend(local)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        parallel_rate = len(results) / (time.perf_counter() - t)

        r = redis.Redis.from_url(redis_url)
        lat_miss: list[float] = []
        for name, path in sample(args.misses):
            r.delete(f"{{turnout}}:pods:{space}:{name}")
            lat_miss += timed_checks(api, base, [(name, path)])
        status, probe = api.call(
            "POST", f"{base}/r0/check", {"path": "/ws/r0/c0/x", "permission": "write"}
        )
        assert status == 200 and not probe["allowed"], probe

        lat_spawn = []
        for k in range(args.spawns):
            i = rng.randrange(roots)
            body = {"name": f"r{i}-x{k}", "rules": [W(f"/ws/r{i}/x{k}")]}
            t = time.perf_counter()
            api.ok("POST", f"{base}/r{i}/children", body, 201)
            lat_spawn.append(time.perf_counter() - t)
        t = time.perf_counter()
        rebuild = api.ok("POST", f"{base}:rebuild")
        rebuild_s = time.perf_counter() - t
        metrics = urllib_get(port, "/metrics")

    sources = [
        line for line in metrics.splitlines() if line.startswith("turnout_admin_pod_checks_total")
    ]
    print(f"## Pod scope authority (`benchmarks/pods.py`, {time.strftime('%Y-%m-%d')})\n")
    print(
        f"Machine: {machine().split(', nginx')[0].removesuffix(', not installed')}; load average during the run {load[0]:.1f} → "
        f"{os.getloadavg()[0]:.1f} (other work shares the cores). Command: "
        f"`{' '.join(['.venv/bin/python', 'benchmarks/pods.py', *sys.argv[1:]])}`."
    )
    print(
        f"One admin process (uvicorn, SQLite, mirrors in Redis), {total} pods in one space "
        f"({roots} roots × 9 children, written by the authority's own create/spawn in "
        f"{fill:.0f} s, {total / fill:.0f} pods/s; a first `pods:rebuild` then wrote all "
        f"{first_rebuild['mirrors']['rewritten']} mirrors in {first_rebuild_s:.1f} s). Every figure is a full HTTP request over a keep-alive "
        "connection: token check, space/role check, the pod's version from SQL, then the mirror "
        "(or, on a miss, the pod and its edges from SQL and a mirror rewrite).\n"
    )
    print("| measurement | requests | per second | p50 | p99 |")
    print("|---|---|---|---|---|")
    for label, lat in (
        ("baseline: `GET /api/spaces/{space}`, 1 connection", lat_floor),
        ("check, mirror warm, 1 connection", lat_mirror),
        ("check, mirror miss (deleted before each), 1 connection", lat_miss),
        ("spawn (delegate to a new child), 1 connection", lat_spawn),
    ):
        print(
            f"| {label} | {len(lat)} | {len(lat) / sum(lat):.0f} | {ms(pct(lat, 0.5))} | "
            f"{ms(pct(lat, 0.99))} |"
        )
    print(
        f"| check, mirror warm, {args.clients} connections | {len(results)} | {parallel_rate:.0f} | "
        f"{ms(pct(results, 0.5))} | {ms(pct(results, 0.99))} |"
    )
    print(
        f"\nA second `pods:rebuild` of all {rebuild['pods']} pods: {rebuild_s:.2f} s "
        f"(mirrors checked {rebuild['mirrors']['checked']}, rewritten {rebuild['mirrors']['rewritten']}). "
        f"Counters: {'; '.join(sources)}."
    )
    return 0


def urllib_get(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
