"""Gateway throughput benchmark: Turnout against nginx and Python peers, in one run.

Not a test. Needs ``wrk`` (Debian: ``apt-get install wrk``); nginx is used as the reference
proxy and as the upstream when installed (``apt-get install nginx-light``), otherwise the upstream
is ``benchmarks/peers/upstream.py`` and the nginx row is omitted.

Every target forwards to the same upstream. Targets run one after another in alternating rounds
(A B C … A B C …) so drift in machine load hits all of them alike; the table reports the median
round per target. Usage::

    .venv/bin/python benchmarks/throughput.py                  # full run
    .venv/bin/python benchmarks/throughput.py --duration 5 --rounds 1 --only turnout-native,nginx
    .venv/bin/python benchmarks/throughput.py --workers 1,2 --only turnout-native,nginx

``turnout-*`` rows run the mypyc-compiled hot path, as ``pip install .`` installs it (built out of
tree by ``scripts/build_compiled.py``); ``turnout-native-pure`` is the same front-end on the
pure-Python sources (what an editable install runs). ``--workers 1,2`` adds rows with two
workers for nginx and the native front-end (``…-2w``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
PY = sys.executable
HOST = "bench.example.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}: {proc.args!r}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open in {timeout}s")


@dataclass
class Target:
    name: str
    port: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


@contextlib.contextmanager
def spawned(
    cmd: list[str], port: int, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        wait_port(port, proc)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


NGINX_UPSTREAM = """
worker_processes 1; daemon off; pid {dir}/up.pid; error_log {dir}/up.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port} reuseport backlog=4096;
    location /64k {{ alias {dir}/64k.bin; default_type text/plain; }}
    location / {{ default_type text/plain; return 200 "Hello, world\\n"; }} }} }}
"""

NGINX_PROXY = """
worker_processes {workers}; daemon off; pid {dir}/px.pid; error_log {dir}/px.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream up {{ server 127.0.0.1:{up}; keepalive 128; }}
  server {{ listen 127.0.0.1:{port} reuseport backlog=4096;
    location / {{ proxy_pass http://up; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Request-Id $request_id; proxy_buffering on;
      proxy_buffer_size 16k; proxy_buffers 8 16k; }} }} }}
"""


def run_wrk(port: int, path: str, duration: int, conns: int, threads: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{conns}",
            f"-d{duration}s",
            "--latency",
            "-H",
            f"Host: {HOST}",
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {
        m.group(1): _ms(m.group(2)) for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M)
    }
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = sum(int(x) for x in sock.groups()) if sock else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if (sock or non2xx) and os.environ.get("BENCH_DEBUG"):
        print(out, file=sys.stderr)
    return {
        "rps": rps,
        "p50": lat.get("50", 0.0),
        "p99": lat.get("99", 0.0),
        "errors": errors + (int(non2xx.group(1)) if non2xx else 0),
    }


def _ms(value: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", value)
    assert m is not None
    n = float(m.group(1))
    return {"us": n / 1000, "ms": n, "s": n * 1000}[m.group(2)]


def machine() -> str:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nginx = (
        subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
        if shutil.which("nginx")
        else "not installed"
    )
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, {nginx}"
    )


def publish_route(redis_url: str, upstream_port: int) -> None:
    from routing.models import decode_record
    from routing.redis_store import RedisRouteStore

    async def go() -> None:
        store = RedisRouteStore(redis_url)
        rec = decode_record(
            {
                "host": HOST,
                "version": 1,
                "space_id": "bench",
                "service_id": "svc",
                "endpoints": [
                    {
                        "path_prefix": "/",
                        "targets": [
                            {
                                "deployment_id": "stable",
                                "weight": 9000,
                                "status": "active",
                                "upstreams": [f"http://127.0.0.1:{upstream_port}"],
                            },
                            {
                                "deployment_id": "canary",
                                "weight": 1000,
                                "status": "canary",
                                "upstreams": [f"http://127.0.0.1:{upstream_port}"],
                            },
                        ],
                    }
                ],
            }
        )
        await store.replace_all([rec])
        await store.close()

    asyncio.run(go())


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="", help="comma list of target names")
    ap.add_argument("--paths", default="/small,/64k")
    ap.add_argument(
        "--workers", default="1", help="comma list of worker counts for nginx and turnout-native"
    )
    args = ap.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",") if w]
    if not shutil.which("wrk"):
        print("wrk is required: apt-get install wrk", file=sys.stderr)
        return 2
    if not shutil.which("redis-server"):
        print("redis-server is required: apt-get install redis-server", file=sys.stderr)
        return 2
    have_nginx = shutil.which("nginx") is not None
    only = {s for s in args.only.split(",") if s}
    tmp = tempfile.mkdtemp(prefix="turnout-bench-")
    # nginx workers started by root run as an unprivileged user: they must be able to read this.
    os.chmod(tmp, 0o755)
    with open(os.path.join(tmp, "64k.bin"), "wb") as fh:
        fh.write(b"x" * 65536)
    os.chmod(os.path.join(tmp, "64k.bin"), 0o644)

    stack = contextlib.ExitStack()
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        redis_url = stack.enter_context(redis_server())
        up_port = free_port()
        if have_nginx:
            conf = os.path.join(tmp, "up.conf")
            with open(conf, "w") as fh:
                fh.write(NGINX_UPSTREAM.format(dir=tmp, port=up_port))
            stack.enter_context(spawned(["nginx", "-c", conf, "-p", tmp], up_port))
            upstream_desc = "nginx (1 worker, static return)"
        else:
            stack.enter_context(
                spawned([PY, "benchmarks/peers/upstream.py", "--port", str(up_port)], up_port)
            )
            upstream_desc = "benchmarks/peers/upstream.py (uvloop+httptools)"
        publish_route(redis_url, up_port)

        targets: list[tuple[str, list[str], dict[str, str]]] = []

        def add(name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
            if not only or name in only:
                targets.append((name, cmd, env or {}))

        def suffix(workers: int) -> str:
            return "" if workers == 1 else f"-{workers}w"

        compiled_env = compiled_build()
        add("direct", [], {})
        if have_nginx:
            for w in worker_counts:
                add(f"nginx{suffix(w)}", ["nginx", str(w)], {})
        gw = [
            PY,
            "-c",
            "import sys; from gateway.launcher import main; sys.exit(main(sys.argv[1:]))",
            "--redis",
            redis_url,
            "--internal",
            "off",
            "--log-level",
            "WARNING",
        ]
        for w in worker_counts:
            add(
                f"turnout-native{suffix(w)}",
                [*gw, "--server", "native", "--workers", str(w)],
                compiled_env,
            )
        add("turnout-native-pure", [*gw, "--server", "native", "--workers", "1"], {})
        try:
            import gateway.asgi  # noqa: F401

            add("turnout-uvicorn", [*gw, "--server", "uvicorn", "--workers", "1"], compiled_env)
            if shutil.which("granian") or _importable("granian"):
                add("turnout-granian", [*gw, "--server", "granian", "--workers", "1"], compiled_env)
        except ImportError as exc:
            print(f"note: ASGI front-end not available ({exc}); skipping its rows", file=sys.stderr)
        add(
            "aiohttp-peer",
            [PY, "benchmarks/peers/aiohttp_proxy.py", "--upstream", f"http://127.0.0.1:{up_port}"],
        )
        add(
            "starlette-httpx-peer",
            [
                PY,
                "-m",
                "uvicorn",
                "--app-dir",
                "benchmarks/peers",
                "httpx_proxy:app",
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            {"PEER_UPSTREAM": f"http://127.0.0.1:{up_port}"},
        )

        paths = [p for p in args.paths.split(",") if p]
        for rnd in range(args.rounds):
            for name, cmd, env in targets:
                with contextlib.ExitStack() as run:
                    proc: subprocess.Popen[bytes] | None = None
                    if name == "direct":
                        port = up_port
                    elif name.startswith("nginx"):
                        port = free_port()
                        conf = os.path.join(tmp, "px.conf")
                        with open(conf, "w") as fh:
                            fh.write(
                                NGINX_PROXY.format(dir=tmp, port=port, up=up_port, workers=cmd[1])
                            )
                        proc = run.enter_context(spawned(["nginx", "-c", conf, "-p", tmp], port))
                    else:
                        port = free_port()
                        full = (
                            [*cmd, "--listen", f"127.0.0.1:{port}"]
                            if name.startswith("turnout")
                            else ([*cmd, "--port", str(port)])
                        )
                        proc = run.enter_context(spawned(full, port, env))
                    for path in paths:
                        run_wrk(port, path, 1, args.connections, args.threads)  # warm-up
                        cpu0 = cpu_seconds(proc)
                        res = run_wrk(port, path, args.duration, args.connections, args.threads)
                        cpu1 = cpu_seconds(proc)
                        total = res["rps"] * args.duration
                        res["user_us"] = (cpu1[0] - cpu0[0]) / total * 1e6 if proc else 0.0
                        res["sys_us"] = (cpu1[1] - cpu0[1]) / total * 1e6 if proc else 0.0
                        results.setdefault((name, path), []).append(res)
                        print(
                            f"round {rnd + 1} {name:22s} {path:6s} {res['rps']:10.0f} req/s "
                            f"p50 {res['p50']:.2f} ms p99 {res['p99']:.2f} ms errors {res['errors']:.0f} "
                            f"cpu/request {res['user_us']:.1f} us user + {res['sys_us']:.1f} us sys",
                            file=sys.stderr,
                            flush=True,
                        )
    finally:
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)

    print("## Gateway throughput (`benchmarks/throughput.py`)\n")
    print(
        f"- command: `{' '.join([os.path.relpath(PY, ROOT) if PY.startswith(ROOT) else 'python', 'benchmarks/throughput.py', *sys.argv[1:]])}`"
    )
    print(f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"- machine: {machine()}")
    print(
        f"- load: wrk {args.threads} thread(s), {args.connections} connections, {args.duration}s per run, "
        f"{args.rounds} alternating rounds, median round reported; every proxy 1 worker unless its name ends in -Nw; "
        f"upstream: {upstream_desc}; turnout rows: {'mypyc-compiled hot path' if compiled_env else 'pure Python (mypyc build failed)'} except turnout-native-pure"
    )
    print()
    for path in args.paths.split(","):
        ref = results.get(("nginx", path))
        ref_rps = statistics.median(r["rps"] for r in ref) if ref else None
        ref_p99 = statistics.median(r["p99"] for r in ref) if ref else None
        print(f"### {path} ({'13 B' if path == '/small' else '64 KiB'} response)\n")
        print(
            "| target | req/s | p50 ms | p99 ms | × nginx req/s | p99 / nginx p99 "
            "| CPU µs/request (user + sys) | errors |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, _cmd, _env in targets:
            runs = results.get((name, path))
            if not runs:
                continue
            med = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
            ratio = f"{med['rps'] / ref_rps:.2f}" if ref_rps else "n/a"
            pr = f"{med['p99'] / ref_p99:.2f}" if ref_p99 else "n/a"
            cpu = (
                f"{med['user_us']:.1f} + {med['sys_us']:.1f}"
                if med["user_us"] or med["sys_us"]
                else "n/a"
            )
            print(
                f"| {name} | {med['rps']:.0f} | {med['p50']:.2f} | {med['p99']:.2f} | {ratio} | {pr} "
                f"| {cpu} | {sum(r['errors'] for r in runs):.0f} |"
            )
        print()
    return 0


def admin_init(db: str, env: dict[str, str]) -> str:
    """``turnout admin init --db <db> --json`` (migrate, bootstrap); the ``*`` token it printed."""
    launch = "import sys; from turnout.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", launch, "admin", "init", "--db", db, "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    token: str = json.loads(done.stdout)["token"]
    return token


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, persistence off; yields its URL."""
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"]
    with spawned([*cmd, "--bind", "127.0.0.1"], port):
        yield f"redis://127.0.0.1:{port}/0"


def cpu_seconds(proc: subprocess.Popen[bytes] | None) -> tuple[float, float]:
    """User and system CPU seconds of a process and all its descendants (workers)."""
    if proc is None:
        return (0.0, 0.0)
    import psutil

    user = system = 0.0
    try:
        root = psutil.Process(proc.pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                user += t.user
                system += t.system
    except psutil.Error:
        pass
    return (user, system)


def compiled_build() -> dict[str, str]:
    """Environment that makes a child import the mypyc-compiled hot path (empty if unavailable)."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import build_compiled

        src = build_compiled.build()
    except (SystemExit, ImportError, OSError) as exc:
        print(f"note: mypyc build failed ({exc}); turnout rows run pure Python", file=sys.stderr)
        return {}
    finally:
        sys.path.pop(0)
    return {"PYTHONSAFEPATH": "1", "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
