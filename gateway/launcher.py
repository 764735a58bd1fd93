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
from typing import Any, Final

from gateway import build
from gateway.config import (
    SERVERS,
    SETTINGS,
    GatewayConfig,
    Setting,
    config_from_values,
    default_value,
    export_config,
    parse_networks,
)

log = logging.getLogger("turnout.gateway")


# Chosen from benchmarks/RESULTS.md ("Worker count"): see there for the measurement.
DEFAULT_WORKERS = str(default_value("workers"))

# Flags parsed after argparse (their errors: "turnout gateway: --flag: ...", exit status 2).
_LATE: Final = frozenset({"listen", "internal"})


def _flag_type(setting: Setting) -> Callable[[str], Any]:
    """The setting's one parser, its errors named by the flag (argparse: a usage error)."""

    def parse(value: str) -> Any:
        try:
            return setting.parse(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{setting.flag}: {exc}") from None

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The flags of :data:`gateway.config.SETTINGS`, their defaults from ``GatewayConfig``."""
    p = argparse.ArgumentParser(prog="turnout gateway", description="Run the dispatch gateway.")
    for s in SETTINGS:
        default = default_value(s.name)
        shown = s.dump(default) if default not in (None, ()) else None
        lead = f"{s.help} " if s.help else ""
        help_text = f"{lead}(default {shown})" if shown else s.help or None
        if s.name == "access_log":
            p.add_argument(s.flag, dest=s.name, action="store_true", help=help_text)
        elif s.name == "trusted_proxies":
            p.add_argument(
                s.flag, dest=s.name, action="append", default=[], metavar="CIDR", help=help_text
            )
        elif s.name == "server":
            p.add_argument(s.flag, dest=s.name, choices=SERVERS, default=default, help=help_text)
        elif s.name == "redis_url":
            p.add_argument(
                s.flag,
                dest=s.name,
                default=os.environ.get(s.env),
                help=f"{s.help} (default ${s.env})",
            )
        elif s.name in _LATE:
            p.add_argument(s.flag, dest=s.name, default=s.dump(default), help=help_text)
        elif s.name == "workers":
            p.add_argument(
                s.flag, dest=s.name, type=_flag_type(s), default=DEFAULT_WORKERS, help=help_text
            )
        else:
            p.add_argument(s.flag, dest=s.name, type=_flag_type(s), default=default, help=help_text)
    p.add_argument("--log-level", default="INFO")
    return p


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    values: dict[str, Any] = {}
    for s in SETTINGS:
        value = getattr(args, s.name)
        if s.name in _LATE:
            try:
                value = s.parse(value)
            except ValueError as exc:
                raise ValueError(f"{s.flag}: {exc}") from None
        elif s.name == "trusted_proxies":
            value = parse_networks(value)
        values[s.name] = value
    return config_from_values(values)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    try:
        config = config_from_args(args)
    except ValueError as exc:
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
            except BaseException:
                # The reason must reach the log before os._exit (which skips every handler).
                log.exception("worker %d (pid %d) failed", index, os.getpid())
            finally:
                logging.shutdown()
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
