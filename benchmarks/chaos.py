"""The chaos run at full length: the production layout on loopback, under load, while the Redis
primary, the leader admin, one gateway and then all of Redis are killed in turn. Not a test.

Starts a Redis primary + replica + 3 Sentinels, a database of its own on the machine's
PostgreSQL (127.0.0.1:5432, user postgres; dropped afterwards), two ``turnout admin`` on it,
two ``turnout gateway`` on ``redis+sentinel://`` and two echo upstreams; runs steady client load
(retrying once on the other gateway) and a deploy/rollback every few seconds; prints a markdown
report for ``benchmarks/RESULTS.md``. The harness is ``tests/support/chaos.py`` (the suite runs
a shortened version of it, ``tests/e2e/test_chaos.py``). Usage::

    .venv/bin/python benchmarks/chaos.py                       # ~2–3 minutes
    .venv/bin/python benchmarks/chaos.py --outage 20 --settle 10 --steady 20

Exit status 1 when a goal is missed (failed requests, a change never published, usage lost
beyond the killed gateway's last batch or counted twice, no convergence).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.support.chaos import ChaosConfig, run_chaos  # noqa: E402


def machine() -> str:
    cpus = os.cpu_count() or 0
    return (
        f"{platform.system()} {platform.machine()}, {cpus} CPUs, Python {platform.python_version()}"
    )


def main() -> int:
    base = ChaosConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--hosts", type=int, default=base.hosts_per_space, help="hostnames per space")
    ap.add_argument("--workers", type=int, default=base.workers_per_space, help="clients per space")
    ap.add_argument(
        "--steady", type=float, default=base.steady, help="seconds before the first kill"
    )
    ap.add_argument("--settle", type=float, default=base.settle, help="seconds between events")
    ap.add_argument("--deploy-every", type=float, default=base.deploy_every)
    ap.add_argument("--outage", type=float, default=base.redis_outage, help="all of Redis down, s")
    ap.add_argument("--lease", type=float, default=base.lease_seconds, help="TURNOUT_LEASE_SECONDS")
    ap.add_argument("--workdir", default=None, help="keep logs here (default: a temp dir)")
    args = ap.parse_args()
    config = dataclasses.replace(
        base,
        hosts_per_space=args.hosts,
        workers_per_space=args.workers,
        steady=args.steady,
        settle=args.settle,
        deploy_every=args.deploy_every,
        redis_outage=args.outage,
        lease_seconds=args.lease,
    )
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="turnout-chaos-"))
    print(f"chaos run in {workdir} (process logs stay there)", file=sys.stderr)
    started = time.time()
    report = run_chaos(workdir, config)
    print("## Chaos run (`benchmarks/chaos.py`)\n")
    print(f"- command: `.venv/bin/python benchmarks/chaos.py {' '.join(sys.argv[1:])}`".rstrip())
    print(
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}; machine: {machine()}"
        " (shared with other work); every process pure Python on loopback"
    )
    print(
        f"- layout: Redis primary + replica + 3 Sentinels (ACLs, appendfsync always, "
        f"down-after {config.down_after_ms} ms), PostgreSQL 127.0.0.1:5432, 2 admins "
        f"(lease {config.lease_seconds:g} s, reconcile {config.reconcile_seconds:g} s, retry "
        f"{config.publish_retry_seconds:g} s), 2 gateways (1 worker, flush "
        f"{config.flush_interval:g} s), 2 echo upstreams; {config.hosts_per_space} hostnames in "
        f"each of 2 spaces\n"
    )
    print(report.markdown())
    ok = (
        not report.failed
        and not report.unpublished
        and report.convergence.ok
        and all(u.ok for u in report.usage)
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
