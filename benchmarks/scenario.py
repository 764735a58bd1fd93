"""Mixed scenario under locust: tenant traffic + admin deploy/rollback churn. Not a test.

Starts its own redis-server, two named upstreams (v1, v2), ``turnout admin`` (SQLite in a temp
dir) and ``turnout gateway`` (native, 1 worker); deploys ``--apps`` apps on v1 through the admin
API (hostnames ``w<i>.a<i>.turnout.localhost``: service names are unique per space), then runs locust headless with
``benchmarks/locustfile.py`` and prints a summary: tenant requests, failures, p50/p99, and the
route-change propagation time seen by clients. Usage::

    .venv/bin/python benchmarks/scenario.py --apps 200 --users 40 --time 60
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from throughput import (  # noqa: E402
    admin_init,
    compiled_build,
    free_port,
    machine,
    redis_server,
    spawned,
)

CLI = [
    sys.executable,
    "-c",
    "import sys; from turnout.cli import main; sys.exit(main(sys.argv[1:]))",
]


def api(method: str, url: str, token: str, body: object | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--apps", type=int, default=200)
    ap.add_argument("--users", type=int, default=40)
    ap.add_argument("--time", type=int, default=60, help="seconds of load")
    ap.add_argument("--pure", action="store_true", help="pure-Python gateway, not the mypyc build")
    args = ap.parse_args()
    gw_env = {} if args.pure else compiled_build()
    tmp = tempfile.mkdtemp(prefix="turnout-scenario-")
    env = {
        **os.environ,
        "TURNOUT_KEYS": "*k1:" + base64.b64encode(os.urandom(32)).decode(),
        "TURNOUT_RECONCILE_INTERVAL": "2",
        "TURNOUT_PUBLISH_RETRY": "0.5",
    }
    env.pop("TURNOUT_DB", None)
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(redis_server())
        ups = {}
        for name in ("v1", "v2"):
            port = free_port()
            stack.enter_context(
                spawned(
                    [
                        sys.executable,
                        "benchmarks/peers/upstream.py",
                        "--port",
                        str(port),
                        "--name",
                        name,
                    ],
                    port,
                )
            )
            ups[name] = f"http://127.0.0.1:{port}"
        db = os.path.join(tmp, "admin.db")
        token = admin_init(db, env)
        aport, gport, iport = free_port(), free_port(), free_port()
        stack.enter_context(
            spawned(
                [
                    *CLI,
                    "admin",
                    "serve",
                    "--listen",
                    f"127.0.0.1:{aport}",
                    "--db",
                    db,
                    "--redis",
                    redis_url,
                ],
                aport,
                env,
            )
        )
        stack.enter_context(
            spawned(
                [
                    *CLI,
                    "gateway",
                    "--listen",
                    f"127.0.0.1:{gport}",
                    "--redis",
                    redis_url,
                    "--internal",
                    f"127.0.0.1:{iport}",
                    "--log-level",
                    "WARNING",
                    "--workers",
                    "1",
                ],
                gport,
                gw_env,
            )
        )
        admin = f"http://127.0.0.1:{aport}"
        status, space = api("POST", f"{admin}/api/spaces", token, {"name": "scenario"})
        assert status == 201, space
        # The seeded plans allow 100 / 1 000 gateway requests a month; give the tenant a plan
        # the scenario's hundreds of thousands of requests cannot exhaust (docs/billing.md).
        status, free = api("GET", f"{admin}/api/plans/plan_free", token)
        assert status == 200, free
        quotas = {m: {"quota": q["quota"]} for m, q in free["quotas"].items()}
        quotas["wfp_requests"] = {"quota": 10**12}
        status, out = api(
            "POST",
            f"{admin}/api/plans",
            token,
            {"id": "plan_bench", "name": "Bench", "quotas": quotas},
        )
        assert status == 201, out
        status, out = api(
            "PATCH", f"{admin}/api/spaces/{space['id']}/billing", token, {"plan": "plan_bench"}
        )
        assert status == 200, out
        hosts = []
        t0 = time.perf_counter()
        for i in range(args.apps):
            manifest = {
                "apiVersion": "turnout/v1",
                "kind": "App",
                "metadata": {"name": f"a{i}"},
                "spec": {
                    "services": {f"w{i}": {"type": "http", "upstreams": [ups["v1"]]}},
                    "routes": [{"service": f"w{i}"}],
                },
            }
            status, out = api(
                "POST", f"{admin}/api/spaces/{space['id']}/app-deployments", token, manifest
            )
            assert status == 201, out
            hosts.append(f"w{i}.a{i}.turnout.localhost")
        setup = time.perf_counter() - t0
        last = hosts[-1]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            req = urllib.request.Request(f"http://127.0.0.1:{gport}/small", headers={"Host": last})
            with contextlib.suppress(OSError), urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    break
            time.sleep(0.1)
        hosts_file = os.path.join(tmp, "hosts.txt")
        with open(hosts_file, "w") as fh:
            fh.write("\n".join(hosts) + "\n")
        csv_prefix = os.path.join(tmp, "locust")
        lenv = {
            **os.environ,
            "TURNOUT_SCENARIO_HOSTS": hosts_file,
            "TURNOUT_SCENARIO_ADMIN": admin,
            "TURNOUT_SCENARIO_TOKEN": token,
            "TURNOUT_SCENARIO_SPACE": space["id"],
            "TURNOUT_SCENARIO_V1": ups["v1"],
            "TURNOUT_SCENARIO_V2": ups["v2"],
        }
        cmd = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            "benchmarks/locustfile.py",
            "--headless",
            "-u",
            str(args.users),
            "-r",
            str(args.users),
            "-t",
            f"{args.time}s",
            "--host",
            f"http://127.0.0.1:{gport}",
            "--csv",
            csv_prefix,
            "--only-summary",
        ]
        subprocess.run(
            cmd,
            env=lenv,
            cwd=ROOT,
            check=False,
            stdout=open(os.path.join(tmp, "locust.log"), "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        print(f"locust log: {os.path.join(tmp, 'locust.log')}", file=sys.stderr)
        with open(csv_prefix + "_stats.csv") as fh:
            stats = list(csv.DictReader(fh))
    print("## Mixed scenario under locust (`benchmarks/scenario.py`)\n")
    print(
        f"- command: `.venv/bin/python benchmarks/scenario.py {' '.join(sys.argv[1:])}`  "
        f"(locust headless, `benchmarks/locustfile.py`)"
    )
    print(f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {machine()}")
    print(
        f"- {args.apps} apps/hostnames deployed through the admin API in {setup:.1f}s; "
        f"{args.users} locust users (one of them the admin flipping a random app between v1 "
        f"and v2 every 2–4 s) for {args.time}s against one native gateway worker "
        f"({'mypyc-compiled hot path' if gw_env else 'pure Python'})\n"
    )
    print("| request | count | failures | median ms | p99 ms | max ms | req/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in stats:
        print(
            f"| {row['Type']} {row['Name']} | {row['Request Count']} | {row['Failure Count']} | "
            f"{row['Median Response Time']} | {row['99%']} | {float(row['Max Response Time']):.0f} | "
            f"{float(row['Requests/s']):.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
