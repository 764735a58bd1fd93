"""``turnout gateway``: parse flags, then run N native workers (``SO_REUSEPORT``) or the ASGI
app (:mod:`gateway.asgi`) under uvicorn or granian (:func:`run_asgi_server`).

The parent process of a multi-worker native gateway is a small supervisor (nginx's master, in
spirit): it forks the workers, restarts one that dies, and on SIGTERM/SIGINT forwards SIGTERM so
every worker drains, then waits for them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable

from gateway import build
from gateway.config import GatewayConfig, parse_networks
from routing.upstreams import EjectionPolicy

log = logging.getLogger("turnout.gateway")


def _hostport(value: str, default_host: str, flag: str) -> tuple[str, int]:
    try:
        return _parse_hostport(value, default_host)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{flag}: {exc}") from None


def _parse_hostport(value: str, default_host: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = default_host, value
    host = host.strip("[]") or default_host
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port in {value!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range in {value!r}")
    return host, number


# Chosen from benchmarks/RESULTS.md ("Worker count"): see there for the measurement.
DEFAULT_WORKERS = "1"


def _workers(value: str) -> int:
    """``N`` or ``auto`` (one per CPU this process may run on, as nginx's ``worker_processes``)."""
    if value == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--workers: expected a positive integer or 'auto', got {value!r}"
        ) from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"--workers: must be at least 1, got {number}")
    return number


def _at_least_one(flag: str) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag}: expected an integer, got {value!r}"
            ) from None
        if number < 1:
            raise argparse.ArgumentTypeError(f"{flag}: must be at least 1, got {number}")
        return number

    return parse


def _seconds(flag: str) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag}: expected seconds, got {value!r}") from None
        if not number > 0 or number == float("inf"):
            raise argparse.ArgumentTypeError(f"{flag}: must be a positive number, got {value}")
        return number

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="turnout gateway", description="Run the dispatch gateway.")
    p.add_argument("--listen", default="0.0.0.0:8080", help="address:port (default 0.0.0.0:8080)")
    p.add_argument(
        "--workers",
        type=_workers,
        default=DEFAULT_WORKERS,
        help=f"worker processes: N or 'auto' = one per CPU (default {DEFAULT_WORKERS})",
    )
    p.add_argument("--server", choices=("native", "uvicorn", "granian"), default="native")
    p.add_argument(
        "--redis",
        default=os.environ.get("TURNOUT_REDIS_URL"),
        help="redis://[user:pw@]host:port/db, rediss://…, or "
        "redis+sentinel://[user:pw@]host:port[,host:port…]/service[/db] "
        "(default $TURNOUT_REDIS_URL)",
    )
    p.add_argument("--redis-prefix", default="turnout")
    p.add_argument("--snapshot", default=None, help="last-known-good route snapshot file")
    p.add_argument(
        "--internal",
        default="127.0.0.1:9901",
        help="health/metrics listener; worker N uses port+N; 'off' disables",
    )
    p.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="CIDR",
        help="honour X-Forwarded-For from these peers (repeatable)",
    )
    p.add_argument("--header-timeout", type=float, default=10.0)
    p.add_argument("--keepalive-timeout", type=float, default=75.0)
    p.add_argument("--drain-timeout", type=float, default=30.0)
    p.add_argument("--max-header-bytes", type=int, default=64 * 1024)
    p.add_argument("--max-headers", type=int, default=100)
    p.add_argument(
        "--max-response-header-bytes",
        type=_at_least_one("--max-response-header-bytes"),
        default=64 * 1024,
        help="upstream response head size limit, interim 1xx heads included (default 65536)",
    )
    p.add_argument(
        "--max-response-headers",
        type=_at_least_one("--max-response-headers"),
        default=100,
        help="headers per upstream response head (default 100)",
    )
    p.add_argument(
        "--response-header-timeout",
        type=_seconds("--response-header-timeout"),
        default=30.0,
        help="seconds from request sent to the upstream's final response head; never longer "
        "than the route's read timeout (default 30)",
    )
    p.add_argument("--pool-max-per-origin", type=int, default=512)
    p.add_argument("--eject-after", type=int, default=3, help="consecutive connect failures")
    p.add_argument("--eject-seconds", type=float, default=10.0)
    p.add_argument("--flush-interval", type=float, default=1.0)
    p.add_argument("--access-log", action="store_true", help="one JSON line per request")
    p.add_argument("--access-log-sample", type=float, default=1.0)
    p.add_argument("--log-level", default="INFO")
    return p


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    host, port = _hostport(args.listen, "0.0.0.0", "--listen")
    if args.internal == "off":
        ihost, iport = "127.0.0.1", 0
    else:
        ihost, iport = _hostport(args.internal, "127.0.0.1", "--internal")
    return GatewayConfig(
        listen_host=host,
        listen_port=port,
        workers=args.workers,
        server=args.server,
        redis_url=args.redis,
        redis_prefix=args.redis_prefix,
        snapshot_path=args.snapshot,
        internal_host=ihost,
        internal_port=iport,
        max_header_bytes=args.max_header_bytes,
        max_headers=args.max_headers,
        max_response_header_bytes=args.max_response_header_bytes,
        max_response_headers=args.max_response_headers,
        response_header_timeout=args.response_header_timeout,
        header_timeout=args.header_timeout,
        keepalive_timeout=args.keepalive_timeout,
        drain_timeout=args.drain_timeout,
        pool_max_per_origin=args.pool_max_per_origin,
        ejection=EjectionPolicy(args.eject_after, args.eject_seconds),
        trusted_proxies=parse_networks(args.trusted_proxy),
        flush_interval=args.flush_interval,
        access_log=args.access_log,
        access_log_sample=args.access_log_sample,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    try:
        config = config_from_args(args)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        print(f"turnout gateway: {exc}", file=sys.stderr)
        return 2
    if config.server != "native":
        return run_asgi_server(config)
    if config.workers == 1:
        return run_native_worker(config, 0)
    return supervise(config)


def run_native_worker(config: GatewayConfig, index: int) -> int:
    import uvloop

    return uvloop.run(_worker_main(config, index))


async def _worker_main(config: GatewayConfig, index: int) -> int:
    from gateway.worker import GatewayWorker, bind_socket

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sock = bind_socket(config.listen_host, config.listen_port, reuse_port=config.workers > 1)
    worker = GatewayWorker(config, index=index)
    await worker.start([sock])
    log.info(
        "worker %d serving on %s:%d (%s hot path)",
        index,
        config.listen_host,
        config.listen_port,
        build.describe(),
    )
    print(
        f"turnout gateway: worker {index} listening on {config.listen_host}:"
        f"{sock.getsockname()[1]}",
        flush=True,
    )
    await stop.wait()
    log.info("worker %d draining", index)
    await worker.stop()
    return 0


def supervise(config: GatewayConfig) -> int:
    """Fork ``config.workers`` workers; restart crashed ones; forward SIGTERM/SIGINT."""
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                code = run_native_worker(config, index)
            finally:
                os._exit(code)
        children[pid] = index

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for i in range(config.workers):
        spawn(i)
    restarts: list[float] = []
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, None)
        if index is None or stopping:
            continue
        code = os.waitstatus_to_exitcode(status)
        log.error("worker %d (pid %d) exited with %d; restarting", index, pid, code)
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < 10] + [now]
        if len(restarts) > 5 * config.workers:
            log.critical("workers keep crashing; giving up")
            on_signal(signal.SIGTERM, None)
            continue
        spawn(index)
    return 0


# ---------------------------------------------------------------- the ASGI servers


def run_asgi_server(config: GatewayConfig) -> int:
    """Run the ASGI app under ``config.server`` (uvicorn or granian) with ``config.workers``
    processes; the workers read their configuration back from the environment."""
    from gateway.asgi import export_config

    export_config(config)
    slots: str | None = None
    if config.workers > 1:
        os.environ.pop("TURNOUT_WORKER_INDEX", None)
        slots = tempfile.mkdtemp(prefix="turnout-asgi-slots-")
        os.environ["TURNOUT_WORKER_SLOTS"] = slots
    try:
        if config.server == "granian":
            return _run_granian(config)
        return _run_uvicorn(config)
    finally:
        if slots is not None:
            shutil.rmtree(slots, ignore_errors=True)


def _run_uvicorn(config: GatewayConfig) -> int:
    import uvicorn

    uvicorn.run(
        "gateway.asgi:app",
        host=config.listen_host,
        port=config.listen_port,
        workers=config.workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # the dispatcher applies TURNOUT_TRUSTED_PROXIES itself
        server_header=False,  # the upstream's headers pass through; no duplicates
        date_header=False,
        backlog=2048,
        timeout_keep_alive=max(1, round(config.keepalive_timeout)),
        timeout_graceful_shutdown=max(1, math.ceil(config.drain_timeout)),
    )
    return 0


def _run_granian(config: GatewayConfig) -> int:
    from granian import Granian
    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels

    Granian(
        "gateway.asgi:app",
        address=config.listen_host,
        port=config.listen_port,
        interface=Interfaces.ASGI,
        workers=config.workers,
        loop=Loops.uvloop,
        log_level=LogLevels.warning,
        backlog=2048,
        websockets=True,
        workers_kill_timeout=max(1, math.ceil(config.drain_timeout)),
    ).serve()
    return 0
