"""Worst-case manifests against a real admin while its health is sampled. Not a test.

Issue 15 (D4): a 48 KB YAML manifest used to cost ~1.3 s of pure-Python parsing on the event loop,
inside the SQL transaction, so four in parallel stalled every other request. This starts its own
redis-server and ``turnout admin serve`` (SQLite in a temp dir), creates ``--parallel`` principals
(each with its own space and token), and has each of them POST the worst-case manifest in a loop
for ``--seconds`` while one thread samples ``GET /healthz`` and another ``GET /api/spaces``
(authenticated: it needs SQL). It prints a markdown report: the candidate manifests with the
CPU one parse costs in-process (the worst is the one sent), then latency percentiles idle and
under load, and what the manifests got (422 for an invalid one; 429 when one principal has more
in flight than ``TURNOUT_PARSES_PER_PRINCIPAL``).

``--baseline-ref main`` runs the same load against that git ref too (extracted to a temp dir;
``--manifest flow-24k`` there, since its loader has no budget to hit), for a before/after in one
run. Usage::

    .venv/bin/python benchmarks/manifest_dos.py --seconds 20
    .venv/bin/python benchmarks/manifest_dos.py --seconds 20 --baseline-ref main
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import http.client
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from throughput import free_port, machine, redis_server, spawned  # noqa: E402

LAUNCH = "import sys; from turnout.cli import main; sys.exit(main(sys.argv[1:]))"
HEAD = "apiVersion: turnout/v1\nkind: App\nmetadata: {name: dos}\n"


def candidates(values: int) -> dict[str, str]:
    """Manifests that each maximise one cost at (or just under) the value budget."""
    n = values - 10
    svc = "spec:\n  services:\n    web: {type: http, upstreams: ['http://127.0.0.1:9']}\n"
    return {
        "flow-ints": HEAD + svc + "  x: [" + ",".join(["1"] * n) + "]\n",
        "flow-strings": HEAD + svc + "  x: [" + ",".join(["a"] * n) + "]\n",
        "timestamps": HEAD
        + svc
        + "  x: ["
        + ",".join(["2001-12-14t21:59:43.10-05:00"] * n)
        + "]\n",
        "floats": HEAD + svc + "  x: [" + ",".join(["1.5e+10"] * n) + "]\n",
        "block-map": HEAD + svc + "".join(f"  k{i}: v\n" for i in range(n // 2)),
        "list-of-maps": HEAD + svc + "  x:\n" + "".join("  - {a: 1}\n" for _ in range(n // 3)),
        "aliases": HEAD
        + svc
        + "  a: &a ["
        + ",".join(["1"] * (n - 40))
        + "]\n  b: ["
        + ",".join(["*a"] * 16)
        + "]\n",
        "over-budget-1MiB": HEAD
        + svc
        + "  x: ["
        + ",".join(["1"] * (1024 * 1024 // 2 - 100))
        + "]\n",
        "json-1MiB": '{"spec": {"x": [' + ",".join(["1"] * (1024 * 1024 // 2 - 100)) + "]}}",
        "flow-24k": HEAD + svc + "  x: [" + ",".join(["1"] * 24_000) + "]\n",  # the issue's 48 KB
    }


def calibrate(texts: dict[str, str]) -> list[tuple[str, int, float, str]]:
    """(name, bytes, CPU ms of one parse in this process, outcome) per candidate, worst first."""
    from admin.manifest import ManifestError, parse_manifest

    rows = []
    for name, text in texts.items():
        best, outcome = float("inf"), "ok"
        for _ in range(5):
            t0 = time.thread_time()
            try:
                parse_manifest(text.encode())
            except ManifestError as exc:
                outcome = exc.issues[0].message[:60]
            best = min(best, time.thread_time() - t0)
        rows.append((name, len(text.encode()), best * 1000, outcome))
    return sorted(rows, key=lambda r: -r[2])


def call(port: int, method: str, path: str, token: str | None, body: bytes | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if body is not None:
            headers["Content-Type"] = "application/yaml"
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def api_json(port: int, method: str, path: str, token: str, body: object) -> dict[str, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(
            method,
            path,
            body=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        data: dict[str, object] = json.loads(resp.read() or b"{}")
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {data}")
        return data
    finally:
        conn.close()


def sample(stop: threading.Event, fn: Callable[[], int], every: float) -> list[float]:
    """Latency (ms) of ``fn`` every ``every`` seconds until ``stop``."""
    out: list[float] = []
    while not stop.is_set():
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
        stop.wait(max(0.0, every - (time.perf_counter() - t0)))
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextlib.contextmanager
def admin(
    root: Path, workdir: Path, redis_url: str, env_extra: dict[str, str]
) -> Iterator[tuple[int, str]]:
    env = {
        **os.environ,
        "TURNOUT_KEYS": "*k1:" + base64.b64encode(os.urandom(32)).decode(),
        "PYTHONPATH": str(root),
        "PYTHONSAFEPATH": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        **env_extra,
    }
    env.pop("TURNOUT_DB", None)
    db = workdir / "admin.db"
    init = subprocess.run(
        [sys.executable, "-c", LAUNCH, "admin", "init", "--db", str(db), "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
    )
    token = json.loads(init.stdout.strip().splitlines()[-1])["token"]
    port = free_port()
    cmd = [sys.executable, "-c", LAUNCH, "admin", "serve", "--listen", f"127.0.0.1:{port}"]
    with spawned([*cmd, "--db", str(db), "--redis", redis_url], port, env):
        deadline = time.monotonic() + 20
        while call(port, "GET", "/readyz", None) != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("admin never became ready")
            time.sleep(0.1)
        yield port, token


def run_load(
    port: int, system: str, manifest: bytes, parallel: int, seconds: float, same: bool
) -> dict[str, object]:
    """``parallel`` deployers (distinct principals unless ``same``) while sampling latency."""
    users = []
    for i in range(1 if same else parallel):
        principal = api_json(
            port, "POST", "/api/principals", system, {"kind": "user", "name": f"u{i}"}
        )
        tok = api_json(
            port,
            "POST",
            f"/api/principals/{principal['id']}/tokens",
            system,
            {"name": "t", "scopes": ["*"]},
        )
        space = api_json(port, "POST", "/api/spaces", str(tok["token"]), {"name": f"s{i}"})
        users.append((str(tok["token"]), str(space["id"])))
    stop = threading.Event()
    idle_stop = threading.Event()
    idle_health: list[float] = []
    t = threading.Thread(
        target=lambda: idle_health.extend(
            sample(idle_stop, lambda: call(port, "GET", "/healthz", None), 0.02)
        )
    )
    t.start()
    time.sleep(min(5.0, seconds / 4))
    idle_stop.set()
    t.join()
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    served = [0]

    def deployer(token: str, space: str) -> None:
        while not stop.is_set():
            status = call(port, "POST", f"/api/spaces/{space}/app-deployments", token, manifest)
            with lock:
                statuses[status] += 1
                served[0] += 1

    health: list[float] = []
    listing: list[float] = []
    threads = [
        threading.Thread(target=deployer, args=users[i % len(users)]) for i in range(parallel)
    ]
    threads.append(
        threading.Thread(
            target=lambda: health.extend(
                sample(stop, lambda: call(port, "GET", "/healthz", None), 0.02)
            )
        )
    )
    threads.append(
        threading.Thread(
            target=lambda: listing.extend(
                sample(stop, lambda: call(port, "GET", "/api/spaces", system), 0.05)
            )
        )
    )
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    time.sleep(seconds)
    stop.set()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t0
    return {
        "idle_health": idle_health,
        "health": health,
        "listing": listing,
        "statuses": dict(statuses),
        "rate": served[0] / elapsed,
    }


def report_rows(label: str, res: dict[str, object]) -> list[str]:
    rows = []
    for name, key in (
        ("/healthz idle", "idle_health"),
        ("/healthz", "health"),
        ("/api/spaces", "listing"),
    ):
        values = res[key]
        assert isinstance(values, list)
        rows.append(
            f"| {label} | {name} | {len(values)} | {statistics.median(values) if values else float('nan'):.1f} "
            f"| {pct(values, 0.99):.1f} | {max(values) if values else float('nan'):.1f} |"
        )
    return rows


def extract(ref: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref], capture_output=True, check=True
    ).stdout
    with tempfile.TemporaryFile() as fh:
        fh.write(archive)
        fh.seek(0)
        with tarfile.open(fileobj=fh) as tar:
            tar.extractall(into, filter="data")
    return into


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of load per run")
    ap.add_argument("--parallel", type=int, default=4, help="deployers in parallel")
    ap.add_argument("--manifest", default=None, help="candidate to send (default: the worst)")
    ap.add_argument("--baseline-ref", default=None, help="also run this git ref (e.g. main)")
    ap.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for the admin (repeatable)"
    )
    args = ap.parse_args()
    admin_env = dict(item.split("=", 1) for item in args.env)

    from admin.manifest_load import LIBYAML, MAX_VALUES

    texts = candidates(MAX_VALUES)
    table = calibrate(texts)
    worst = args.manifest or next(name for name, *_ in table if name != "flow-24k")
    out = [
        "## Manifest parsing under attack (`benchmarks/manifest_dos.py`)",
        "",
        f"- command: `.venv/bin/python benchmarks/manifest_dos.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- loader: {'libyaml (C) parser' if LIBYAML else 'pure-Python parser'} under the counting composer; value budget {MAX_VALUES}",
        f"- load: {args.parallel} principals each POSTing `{worst}` in a loop for {args.seconds:g} s; "
        "`GET /healthz` sampled every 20 ms, `GET /api/spaces` every 50 ms",
        "",
        "Candidates (CPU of one `parse_manifest` in-process, best of 5):",
        "",
        "| manifest | bytes | CPU ms | outcome |",
        "|---|---:|---:|---|",
    ]
    out += [f"| {n} | {b} | {ms:.1f} | {o} |" for n, b, ms, o in table]
    out += [
        "",
        "| admin | endpoint | samples | p50 ms | p99 ms | max ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    notes = []
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(redis_server())
        work = Path(tempfile.mkdtemp(prefix="turnout-dos-"))
        runs = [("this tree", ROOT, worst)]
        if args.baseline_ref:
            runs.append(
                (args.baseline_ref, extract(args.baseline_ref, work / "baseline"), "flow-24k")
            )
        for label, root, which in runs:
            body = texts[which].encode()
            (work / label.replace(" ", "_")).mkdir(parents=True, exist_ok=True)
            with admin(root, work / label.replace(" ", "_"), redis_url, admin_env) as (port, token):
                res = run_load(port, token, body, args.parallel, args.seconds, same=False)
                out += report_rows(f"{label} (`{which}`)", res)
                notes.append(
                    f"- {label}: {res['rate']:.1f} manifests/s answered, statuses {res['statuses']}"
                )
                if label == "this tree":
                    same = run_load(port, token, body, args.parallel, args.seconds / 2, same=True)
                    out += report_rows(f"{label}, one principal ×{args.parallel}", same)
                    notes.append(
                        f"- {label}, one principal: {same['rate']:.1f}/s, statuses {same['statuses']}"
                    )
    load = os.getloadavg()
    notes.append(
        f"- machine load (1/5/15 min) at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        f"on {os.cpu_count()} cores (other processes share them)"
    )
    print("\n".join([*out, "", *notes]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
