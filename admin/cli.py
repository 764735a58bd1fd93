"""``turnout admin``: serve the control plane API, or operate on its database.

Subcommands (``serve`` when none is given)::

    serve    run the admin API under uvicorn (uvloop + httptools)
    init     migrate, create the system principal and space if absent, print a new * token
    migrate  apply the schema migrations
    keygen   print a new ``kid:base64key`` entry for TURNOUT_KEYS (``*`` marks it active)
    resync   republish every route record from SQL to Redis; print the counts
    rekey    re-encrypt snapshot secrets under the active key
    usage    a space's usage per meter in a month, with a bar per meter (or --json)
    rollout  a staged rollout's status (live view) and actions, over the API (admin/rollouts/cli.py)
    pods     ``pods tree --space S``: the space's pod delegation tree, read from SQL

``--db`` / ``--redis`` override ``TURNOUT_DB`` / ``TURNOUT_REDIS_URL``. Commands that open the
admin proper (serve, init, rekey) refuse to run without ``TURNOUT_KEYS`` (exit 2). Secrets never
reach a log line: database URLs are printed with their password hidden, and the only token ever
printed is the one ``init`` was asked to create — on stdout, not in a log.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import orjson
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from admin.bootstrap import bootstrap_system
from admin.crypto import CryptoError, KeyRing, KeyRingError
from admin.db import make_engine
from admin.migrate import upgrade
from admin.settings import Settings

COMMANDS = ("serve", "init", "migrate", "keygen", "resync", "rekey", "usage", "rollout", "pods")


class CliError(Exception):
    """A refusal with a message for the operator; exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turnout admin", description="Turnout admin plane (control plane API)."
    )
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")

    def db_opts(p: argparse.ArgumentParser, redis: bool = False) -> None:
        p.add_argument("--db", help="SQLite path or database URL (env TURNOUT_DB)")
        if redis:
            p.add_argument("--redis", help="Redis URL (env TURNOUT_REDIS_URL)")

    serve = subs.add_parser("serve", help="run the admin API (default)")
    serve.add_argument("--listen", default="127.0.0.1:8081", help="HOST:PORT (default %(default)s)")
    db_opts(serve, redis=True)

    init = subs.add_parser("init", help="bootstrap: system principal and space, one * token")
    db_opts(init)
    init.add_argument("--json", action="store_true", help="machine-readable output")

    db_opts(subs.add_parser("migrate", help="apply schema migrations"))

    keygen = subs.add_parser("keygen", help="print a new *kid:base64key entry for TURNOUT_KEYS")
    keygen.add_argument("--kid", help="key id (default: random)")

    db_opts(subs.add_parser("resync", help="republish all route records to Redis"), redis=True)
    db_opts(subs.add_parser("rekey", help="re-encrypt snapshot secrets under the active key"))

    usage = subs.add_parser("usage", help="a space's usage per meter in a month")
    db_opts(usage)
    usage.add_argument("--space", required=True, help="space id")
    usage.add_argument("--period", help="YYYY-MM (UTC month; default the current one)")
    usage.add_argument("--json", action="store_true", help="the API's JSON instead of bars")
    subs.add_parser(
        "rollout", help="status (live view) and actions of a staged rollout", add_help=False
    )

    pods = subs.add_parser("pods", help="inspect the pod scope authority (reads SQL)")
    pod_subs = pods.add_subparsers(dest="pods_command", metavar="SUBCOMMAND", required=True)
    tree = pod_subs.add_parser(
        "tree", help="the delegation tree: effective write regions, lease state and age"
    )
    tree.add_argument("--space", required=True, help="space id")
    tree.add_argument("--json", action="store_true", help="machine-readable output")
    db_opts(tree)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0] not in COMMANDS and args[0] not in ("-h", "--help")):
        args.insert(0, "serve")
    if args[0] == "rollout":  # a client of the API with its own flags
        from admin.rollouts.cli import main as rollout_main

        return rollout_main(args[1:])
    ns = build_parser().parse_args(args)
    try:
        return _COMMANDS[ns.command](ns)
    except CliError as exc:
        print(f"turnout admin {ns.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _settings(ns: argparse.Namespace, *, keys: bool) -> Settings:
    """Settings from the environment and flags; ``keys``: refuse to go on without a key ring."""
    try:
        settings = Settings.from_env(
            db_url=getattr(ns, "db", None), redis_url=getattr(ns, "redis", None)
        )
    except KeyRingError as exc:
        raise CliError(f"TURNOUT_KEYS is invalid: {exc}") from None
    if keys and settings.keys is None:
        try:
            settings.require_keys()
        except SystemExit as exc:
            raise CliError(str(exc.code)) from None
    return settings


def _safe_url(url: str) -> str:
    if "://" not in url:
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<database>"


def _run(fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(fn())


# ------------------------------------------------------------------------------ commands


def cmd_serve(ns: argparse.Namespace) -> int:
    import uvicorn

    from admin.app import create_app

    settings = _settings(ns, keys=True)
    host, port = _listen(ns.listen)
    app = create_app(settings)
    print(
        f"turnout admin: listening on http://{ns.listen} (db {_safe_url(settings.db_url)}, "
        f"route store {'redis' if settings.redis_url else 'in-process'})",
        file=sys.stderr,
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        lifespan="on",
    )
    return 0


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise CliError(f"--listen expects HOST:PORT, got {value!r}")
    return (host.strip("[]") or "127.0.0.1"), int(port)


def cmd_init(ns: argparse.Namespace) -> int:
    settings = _settings(ns, keys=True)

    async def go() -> Any:
        engine = make_engine(settings.db_url)
        try:
            await upgrade(engine)
            return await bootstrap_system(engine)
        finally:
            await engine.dispose()

    boot = _run(go)
    if ns.json:
        out = {
            "principal_id": boot.principal_id,
            "space_id": boot.space_id,
            "token_id": boot.token_id,
            "token": boot.token,
            "created": boot.created,
        }
        sys.stdout.write(orjson.dumps(out).decode() + "\n")
    else:
        what = "created the system principal and space" if boot.created else "already set up"
        print(
            f"turnout admin init: {what} ({_safe_url(settings.db_url)}); a new token with scope * "
            f"follows (shown once; token id {boot.token_id}):",
            file=sys.stderr,
        )
        sys.stdout.write(boot.token + "\n")
    return 0


def cmd_migrate(ns: argparse.Namespace) -> int:
    settings = _settings(ns, keys=False)

    async def go() -> None:
        engine = make_engine(settings.db_url)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    _run(go)
    print(f"turnout admin migrate: {_safe_url(settings.db_url)} is up to date", file=sys.stderr)
    return 0


def cmd_keygen(ns: argparse.Namespace) -> int:
    try:
        entry = KeyRing.generate_key(ns.kid)
    except KeyRingError as exc:
        raise CliError(str(exc)) from None
    sys.stdout.write(f"*{entry}\n")
    return 0


def cmd_resync(ns: argparse.Namespace) -> int:
    from admin.publisher import Publisher
    from routing.redis_store import RedisRouteStore

    settings = _settings(ns, keys=False)
    if not settings.redis_url:
        raise CliError("needs a Redis to publish to: --redis URL or TURNOUT_REDIS_URL")
    redis_url = settings.redis_url

    async def go() -> Any:
        engine = make_engine(settings.db_url)
        store = RedisRouteStore(redis_url, prefix=settings.redis_prefix)
        try:
            return await Publisher(engine, store).resync(force=True)
        finally:
            await store.close()
            await engine.dispose()

    sys.stdout.write(orjson.dumps(_run(go)).decode() + "\n")
    return 0


def cmd_rekey(ns: argparse.Namespace) -> int:
    try:
        module = importlib.import_module("admin.rekey")
    except ModuleNotFoundError as exc:
        if exc.name not in ("admin.rekey", "admin"):
            raise
        print("rekey: not available", file=sys.stderr)
        return 2
    run_rekey = getattr(module, "run_rekey", None)
    if run_rekey is None:
        print("rekey: not available", file=sys.stderr)
        return 2
    settings = _settings(ns, keys=True)

    async def go() -> Any:
        return await run_rekey(settings)

    try:
        counts = _run(go)
    except CryptoError as exc:
        print(
            f"rekey: {exc}\nKeep every old key in TURNOUT_KEYS (inactive) until rekey has "
            "finished; the batch that failed was rolled back, nothing was lost.",
            file=sys.stderr,
        )
        return 2
    sys.stdout.write(orjson.dumps(counts).decode() + "\n")
    return 0


def cmd_pods(ns: argparse.Namespace) -> int:
    from admin.db import now_ms
    from admin.pods import tree

    settings = _settings(ns, keys=False)

    async def go() -> Any:
        engine = make_engine(settings.db_url)
        try:
            return await tree.build(engine, ns.space, now_ms())
        finally:
            await engine.dispose()

    try:
        found = _run(go)
    except tree.NoSuchSpace:
        raise CliError(f"no space {ns.space} in {_safe_url(settings.db_url)}") from None
    except DBAPIError as exc:
        raise CliError(
            f"cannot read the pod tables of {_safe_url(settings.db_url)} "
            f"({type(exc.orig).__name__}; is the database migrated? turnout admin migrate)"
        ) from None
    sys.stdout.write(orjson.dumps(found).decode() + "\n" if ns.json else tree.render(found))
    return 0


def cmd_usage(ns: argparse.Namespace) -> int:
    import time

    from sqlalchemy import exc as sa_exc

    from admin.billing.meters import parse_period, period_of
    from admin.billing.report import render_usage, usage_report

    settings = _settings(ns, keys=False)
    current = period_of(time.time())
    try:
        period = parse_period(ns.period) if ns.period else current
    except ValueError as exc:
        raise CliError(f"--period {exc}") from None
    if period > current:
        raise CliError(f"--period {period} is after the current month {current}")

    async def go() -> Any:
        engine = make_engine(settings.db_url)
        try:
            async with engine.connect() as conn:
                return await usage_report(conn, ns.space, period)
        finally:
            await engine.dispose()

    try:
        report = _run(go)
    except sa_exc.SQLAlchemyError as exc:
        raise CliError(
            f"cannot read usage from {_safe_url(settings.db_url)} ({type(exc).__name__}); "
            "is it an admin database at the newest schema (turnout admin migrate)?"
        ) from None
    if report is None:
        raise CliError(f"no space {ns.space} in {_safe_url(settings.db_url)}")
    if ns.json:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
    else:
        sys.stdout.write(render_usage(ns.space, report) + "\n")
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": cmd_serve,
    "init": cmd_init,
    "migrate": cmd_migrate,
    "keygen": cmd_keygen,
    "resync": cmd_resync,
    "rekey": cmd_rekey,
    "usage": cmd_usage,
    "pods": cmd_pods,
}


if __name__ == "__main__":
    sys.exit(main())
