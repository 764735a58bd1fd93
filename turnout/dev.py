"""``turnout dev``: admin + gateway + two demo tenant runtimes in one process.

SQLite under ``./.turnout/``, the in-process route store instead of Redis, the admin on :8081,
the gateway on :8080, demo runtimes v1 and v2 on :9101/:9102. Prints a token and copy-paste
``curl`` lines. ``--demo`` deploys v1, then a 20 % canary of v2, and reports the split it
observes through the gateway; then it walks a staged rollout of v2 (10 → 25 → 50 → 100 %, no
pauses, the reconciler every 2 s) under live traffic and prints each step the gate takes with
what it measured. For trying Turnout out; not for production (one process, a key ring kept in a
local file, the gateway trusts loopback peers as proxies).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
import sys
import time
from collections import Counter
from typing import Any

import orjson
import uvicorn

from admin.app import AdminState, create_app
from admin.bootstrap import bootstrap_system
from admin.crypto import KeyRing
from admin.dev_runtime import DemoRuntime, managed_tokens
from admin.rollouts.cli import FINAL, event_line, summary
from admin.settings import Settings
from gateway import build
from gateway.config import GatewayConfig
from gateway.flusher import MemoryCounterSink
from gateway.worker import GatewayWorker, bind_socket
from routing.runtime_state import MemoryRuntimeState
from routing.store import MemoryRouteStore

BASE_DOMAIN = "turnout.localhost"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="turnout dev", description=__doc__.splitlines()[0])
    p.add_argument("--dir", default="./.turnout", help="state directory (default ./.turnout)")
    p.add_argument("--gateway", default="127.0.0.1:8080")
    p.add_argument("--admin", default="127.0.0.1:8081")
    p.add_argument(
        "--runtimes",
        default="127.0.0.1:9101,127.0.0.1:9102",
        help="addresses of the demo runtimes v1,v2",
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="deploy v1, a 20%% canary of v2 (showing the observed split), then walk a staged "
        "rollout of v2",
    )
    p.add_argument("--requests", type=int, default=2000, help="requests the demo sends")
    p.add_argument("--exit-after-demo", action="store_true", help="stop when the demo is done")
    return p


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host or "127.0.0.1", int(port)


def _key_ring(directory: str) -> KeyRing:
    if os.environ.get("TURNOUT_KEYS"):
        return KeyRing.parse(os.environ["TURNOUT_KEYS"])
    path = os.path.join(directory, "keys")
    if not os.path.exists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(KeyRing.generate_key("dev") + "\n")
    with open(path) as fh:
        return KeyRing.parse(fh.read().strip())


async def _http(
    host: str,
    port: int,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    conn: Any = None,
) -> tuple[int, bytes]:
    """Minimal HTTP/1.1 client (one request per connection unless ``conn`` is passed)."""
    reader, writer = conn or await asyncio.open_connection(host, port)
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {(headers or {}).get('Host', f'{host}:{port}')}",
        f"Content-Length: {len(body)}",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    for k, v in (headers or {}).items():
        if k != "Host":
            lines.append(f"{k}: {v}")
    if conn is None:
        lines.append("Connection: close")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    data = await reader.readexactly(length) if length else b""
    if conn is None:
        writer.close()
    return status, data


async def run(args: argparse.Namespace, directory: str, keys: KeyRing) -> int:
    store = MemoryRouteStore()
    # One in-process runtime state for both planes: the gateway's counters land where the
    # admin's background loops read them (Redis plays this part in production).
    runtime = MemoryRuntimeState()
    settings = Settings(
        db_url=os.path.join(directory, "admin.db"),
        keys=keys,
        base_domain=BASE_DOMAIN,
        reconcile_interval=2.0,
        publish_retry_seconds=0.5,
        rollout_interval=2.0,  # fast enough for the demo's staged rollout
    )
    ready: asyncio.Future[AdminState] = asyncio.get_running_loop().create_future()
    app = create_app(settings, store=store, runtime=runtime, on_ready=ready.set_result)
    ahost, aport = _split(args.admin)
    ghost, gport = _split(args.gateway)
    server = uvicorn.Server(
        uvicorn.Config(app, host=ahost, port=aport, log_level="warning", lifespan="on", loop="none")
    )
    runtimes = [_split(a) for a in args.runtimes.split(",")]
    # Each demo runtime pulls its config with its deployment's managed token (admin.dev_runtime).
    demo = [DemoRuntime(f"v{i + 1}", f"http://{ahost}:{aport}") for i in range(len(runtimes))]
    for r, (h, p) in zip(demo, runtimes, strict=True):
        await r.serve(h, p)
    gw_config = GatewayConfig(
        listen_host=ghost,
        listen_port=gport,
        internal_port=0,
        flush_interval=1.0,
        trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),),
    )
    gateway = GatewayWorker(gw_config, store=store, counter_sink=MemoryCounterSink(state=runtime))
    admin_task = asyncio.create_task(server.serve(), name="admin")
    state = await asyncio.wait_for(ready, 30)
    await gateway.start([bind_socket(ghost, gport, reuse_port=False)])
    boot = await bootstrap_system(state.engine, name="turnout-dev")
    token, space = boot.token, boot.space_id
    _banner(token, space, args, runtimes)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        if args.demo:
            code = await _demo(args, token, space, runtimes, demo)
            if args.exit_after_demo:
                stop.set()
        await stop.wait()
    finally:
        await gateway.stop()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await admin_task
        for r in demo:
            await r.close()
    return code


def _banner(
    token: str, space: str, args: argparse.Namespace, runtimes: list[tuple[str, int]]
) -> None:
    a, g = args.admin, args.gateway
    print(
        f"""
Turnout dev is running (Ctrl-C to stop)
  admin API   http://{a}      (OpenAPI: http://{a}/openapi.json)
  console     http://{a}/console/   (sign in with the token below)
  gateway     http://{g}   ({_build_line()})
  runtimes    v1 http://{runtimes[0][0]}:{runtimes[0][1]}   v2 http://{runtimes[1][0]}:{runtimes[1][1]}

Your token (shown once; system admin):
  export TOKEN={token}

Try:
  curl -s -H "Authorization: Bearer $TOKEN" http://{a}/api/spaces
  curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/yaml' \\
       --data-binary @examples/hello.yaml http://{a}/api/spaces/{space}/app-deployments
  curl -s -H 'Host: web.hello.{BASE_DOMAIN}' http://{g}/
""",
        flush=True,
    )


def _build_line() -> str:
    """Which build of the gateway's hot path this process runs, and how to get the other."""
    if build.compiled():
        return f"hot path: {build.describe()}"
    return f"hot path: {build.describe()}; 'pip install .' (not -e) installs the compiled one"


# The demo's staged rollout: no pauses, a small evidence bar, one-minute windows.
DEMO_ROLLOUT: dict[str, Any] = {
    "strategy": "staged",
    "stages": [
        {"weight": 10, "pause_minutes": 0},
        {"weight": 25, "pause_minutes": 0},
        {"weight": 50, "pause_minutes": 0},
    ],
    "health_check": {
        "error_rate_threshold": 0.05,
        "min_requests": 20,
        "window_minutes": 1,
        "p99_latency_ms": 500,
    },
}


def manifest(
    version: str,
    upstream: str,
    strategy: str,
    weight: int | None = None,
    rollout: dict[str, Any] | None = None,
) -> bytes:
    rollout = dict(rollout or {"strategy": strategy})
    if weight is not None:
        rollout["canary_weight"] = weight
    return orjson.dumps(
        {
            "apiVersion": "turnout/v1",
            "kind": "App",
            "metadata": {"name": "hello"},
            "spec": {
                "services": {
                    "web": {
                        "type": "http",
                        "upstreams": [upstream],
                        "env": {"GREETING": f"hello from {version}"},
                    }
                },
                "routes": [{"service": "web"}],
                "rollout": rollout,
            },
        }
    )


async def _demo(
    args: argparse.Namespace,
    token: str,
    space: str,
    runtimes: list[tuple[str, int]],
    demo: list[DemoRuntime],
) -> int:
    ahost, aport = _split(args.admin)
    ghost, gport = _split(args.gateway)
    host = f"web.hello.{BASE_DOMAIN}"
    deploy = f"/api/spaces/{space}/app-deployments"
    hdr = {"Content-Type": "application/json"}
    v1 = f"http://{runtimes[0][0]}:{runtimes[0][1]}"
    v2 = f"http://{runtimes[1][0]}:{runtimes[1][1]}"
    status, body = await _http(
        ahost, aport, "POST", deploy, token=token, headers=hdr, body=manifest("v1", v1, "direct")
    )
    print(f"[demo] deploy v1 (direct): HTTP {status}")
    if status != 201:
        print(body.decode(), file=sys.stderr)
        return 1
    await _hand_token(demo[0], body)
    await _wait_routable(ghost, gport, host, "v1")
    status, body = await _http(
        ahost,
        aport,
        "POST",
        deploy,
        token=token,
        headers=hdr,
        body=manifest("v2", v2, "canary", 20),
    )
    print(f"[demo] deploy v2 as a 20% canary: HTTP {status}")
    if status != 201:
        print(body.decode(), file=sys.stderr)
        return 1
    await _hand_token(demo[1], body)
    print(
        f"[demo] the split in the console: http://{args.admin}/console/#/spaces/{space}/services/web"
    )
    await _wait_routable(ghost, gport, host, "v2")
    seen: Counter[str] = Counter()
    greetings: dict[str, Any] = {}
    conn = await asyncio.open_connection(ghost, gport)
    for i in range(args.requests):
        client = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        st, data = await _http(
            ghost, gport, "GET", "/", conn=conn, headers={"Host": host, "X-Forwarded-For": client}
        )
        answer = orjson.loads(data) if st == 200 else {}
        seen[answer.get("runtime", f"HTTP {st}")] += 1
        greetings[answer.get("runtime", "")] = answer.get("greeting")
    conn[1].close()
    for name, greeting in sorted(greetings.items()):
        print(f"[demo] {name} answers through the gateway with greeting {greeting!r} (its config)")
    total = sum(seen.values())
    split = ", ".join(f"{k}: {v} ({100 * v / total:.1f}%)" for k, v in sorted(seen.items()))
    print(f"[demo] {total} requests from {total} client addresses through the gateway -> {split}")
    print("[demo] expected about 80% v1 / 20% v2; each client address sticks to its version")
    return await _demo_rollout(args, token, space, v2, demo[1])


async def _hand_token(runtime: DemoRuntime, answer: bytes) -> None:
    """Give a demo runtime its deployment's managed token; it pulls its config with it."""
    await runtime.attach(managed_tokens(answer)["web"])
    print(
        f"[demo] runtime {runtime.name} pulled its config with its managed token "
        f"(GET /api/runtime/config, deployment {runtime.config.get('deployment_id')}): "
        f"it answers with greeting {runtime.greeting!r}"
    )


async def _demo_rollout(
    args: argparse.Namespace, token: str, space: str, v2: str, runtime: DemoRuntime
) -> int:
    """Walk a staged rollout of v2 under live traffic, printing what the gate decides."""
    ahost, aport = _split(args.admin)
    ghost, gport = _split(args.gateway)
    host = f"web.hello.{BASE_DOMAIN}"
    status, body = await _http(
        ahost,
        aport,
        "POST",
        f"/api/spaces/{space}/app-deployments",
        token=token,
        headers={"Content-Type": "application/json"},
        body=manifest("v2", v2, "staged", rollout=DEMO_ROLLOUT),
    )
    print(f"[demo] deploy v2 as a staged rollout (10% → 25% → 50% → 100%): HTTP {status}")
    if status != 201:
        print(body.decode(), file=sys.stderr)
        return 1
    await _hand_token(runtime, body)
    path = f"/api/spaces/{space}/app-deployments/{orjson.loads(body)['id']}/rollout"
    print(f"[demo] watch it yourself: turnout admin rollout status {path.split('/')[-2]} --watch")
    print(
        f"[demo] or in the console: http://{args.admin}/console/#/spaces/{space}/rollouts/{path.split('/')[-2]}"
    )
    stage: list[Any] = [1]
    seen: dict[Any, Counter[str]] = {}

    async def traffic() -> None:
        conn = await asyncio.open_connection(ghost, gport)
        try:
            for i in range(1 << 62):
                client = f"10.8.{(i % 2000) >> 8}.{i % 256}"
                st, data = await _http(
                    ghost,
                    gport,
                    "GET",
                    "/",
                    conn=conn,
                    headers={"Host": host, "X-Forwarded-For": client},
                )
                runtime = orjson.loads(data)["runtime"] if st == 200 else f"HTTP {st}"
                seen.setdefault(stage[0], Counter())[runtime] += 1
        finally:
            conn[1].close()

    load = asyncio.create_task(traffic(), name="demo-traffic")
    doc: dict[str, Any] = {}
    try:
        events, last = 0, ""
        deadline = asyncio.get_running_loop().time() + 90
        while asyncio.get_running_loop().time() < deadline:
            status, body = await _http(ahost, aport, "GET", path, token=token)
            if status != 200:
                print(f"[demo] rollout: HTTP {status} {body.decode()}", file=sys.stderr)
                return 1
            doc = orjson.loads(body)
            for event in doc["history"][events:]:
                print(f"[demo]   {event_line(event)}")
            events = len(doc["history"])
            line = summary(doc, int(time.time() * 1000))
            if line.split(" · ")[0] != last:
                print(f"[demo] rollout {line}")
                last = line.split(" · ")[0]
            stage[0] = doc["stage"] if doc["state"] not in FINAL else doc["state"]
            if doc["state"] in FINAL:
                break
            await asyncio.sleep(0.5)
    finally:
        load.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError, asyncio.IncompleteReadError):
            await load
    weights = [s["weight"] for s in doc.get("stages", [])]
    for key, counts in seen.items():
        total = sum(counts.values())
        if isinstance(key, int) and total:
            share = 100 * counts["v2"] / total
            print(
                f"[demo] while at stage {key} ({weights[key - 1]}%): v2 served {share:.1f}% "
                f"of {total} requests"
            )
    state = doc.get("state")
    print(
        f"[demo] staged rollout {state}: v2 is {'now active at 100%' if state == 'completed' else 'not promoted'}"
    )
    return 0 if state == "completed" else 1


async def _wait_routable(host: str, port: int, vhost: str, runtime: str) -> None:
    for _ in range(200):
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError):
            for i in range(50):
                st, data = await _http(
                    host,
                    port,
                    "GET",
                    "/",
                    headers={"Host": vhost, "X-Forwarded-For": f"10.9.9.{i}"},
                )
                if st == 200 and orjson.loads(data)["runtime"] == runtime:
                    return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{vhost} did not start routing to {runtime}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for addr in (args.gateway, args.admin):
        h, p = _split(addr)
        with socket.socket() as s:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((h, p))
            except OSError as exc:
                print(f"turnout dev: cannot listen on {addr}: {exc.strerror}", file=sys.stderr)
                return 2
    import uvloop

    directory = os.path.abspath(args.dir)
    os.makedirs(directory, exist_ok=True)
    return uvloop.run(run(args, directory, _key_ring(directory)))
