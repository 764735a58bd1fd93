"""The real ``turnout admin`` as a child process, for end-to-end tests.

:class:`AdminProcess` runs ``turnout admin init --json`` once on its SQLite file (the bootstrap
``*`` token of the system principal), then ``turnout admin serve`` on a free loopback port
against a test Redis, and waits until ``/readyz`` answers 200 (SQL reachable and the route store
answering). ``kill()`` is SIGKILL (a crash), ``stop()`` SIGTERM, ``restart()`` starts again on
the same database, keys and token.

Request quotas: the seeded plans allow 100 (Free) and 1 000 (Plus) gateway requests a month, so
an end-to-end test sending more traffic would see its space blocked (402) by the usage
collector. ``init()`` therefore raises every plan's ``wfp_requests`` quota to ``request_quota``
(default 10**9) in the fresh database; tests of billing itself pass ``request_quota=None`` and
get the seeded quotas.

The environment carries ``TURNOUT_KEYS`` (a fresh key ring per instance unless one is given),
``TURNOUT_BASE_DOMAIN`` and ``TURNOUT_REDIS_PREFIX``; inherited ``TURNOUT_DB`` and
``TURNOUT_REDIS_URL`` are dropped so flags are the only source of those.

Timing knobs: ``TURNOUT_RECONCILE_INTERVAL`` (route store check, 5 s), ``TURNOUT_PUBLISH_RETRY``
(1 s), ``TURNOUT_LEASE_SECONDS`` and ``TURNOUT_ROLLOUT_INTERVAL`` (60 s) through ``extra_env``.

The database is a SQLite file by default; pass a ``postgresql+asyncpg://`` URL as ``db`` to run
several instances on one PostgreSQL database (``query`` then is not available).

:meth:`AdminProcess.call` speaks HTTP to the API (``http.client``: no third-party client in the
way), :meth:`AdminProcess.cli` runs another ``turnout admin`` subcommand with the same
environment, and :meth:`AdminProcess.query` reads the SQLite file read-only (``sqlite3``,
``mode=ro``), which is how tests compare the authority with what Redis and the gateway hold.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import asyncpg

from admin.crypto import KeyRing
from tests.support.net import free_port, kill, terminate, wait_ready

ROOT = Path(__file__).resolve().parents[2]
_LAUNCH = "import sys; from turnout.cli import main; sys.exit(main(sys.argv[1:]))"


class AdminStartError(RuntimeError):
    pass


@dataclass
class ApiResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<ApiResponse {self.status} {self.body[:300]!r}>"


@dataclass(frozen=True)
class Bootstrap:
    """What ``turnout admin init --json`` printed."""

    principal_id: str
    space_id: str
    token_id: str
    token: str = field(repr=False)


class AdminProcess:
    """``turnout admin serve --listen 127.0.0.1:<free> --db <file> --redis <url>``."""

    READY_TIMEOUT = 20.0
    START_ATTEMPTS = 3

    def __init__(
        self,
        db_path: Path | str,
        redis_url: str,
        workdir: Path,
        *,
        prefix: str = "turnout",
        base_domain: str = "turnout.localhost",
        keys: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        name: str = "admin",
        boot: Bootstrap | None = None,
        request_quota: int | None = 10**9,
    ) -> None:
        # A SQLite file, or a database URL (postgresql+asyncpg://…: several admins share it).
        self.db_url = str(db_path) if "://" in str(db_path) else None
        self.db_path = Path(db_path) if self.db_url is None else Path("postgresql")
        self.redis_url = redis_url
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.base_domain = base_domain
        self.keys = keys if keys is not None else "*" + KeyRing.generate_key()
        self.extra_env = dict(extra_env or {})
        self.name = name
        self.port = 0
        self.boot = boot  # given: the database was initialised already (e.g. a copied template)
        self.request_quota = request_quota
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self._err: IO[bytes] | None = None
        self._out_path = self.workdir / f"{name}.stdout"
        self._err_path = self.workdir / f"{name}.stderr"

    # ------------------------------------------------------------------ properties

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_arg(self) -> str:
        """What ``--db`` gets: the SQLite file or the database URL."""
        return self.db_url or str(self.db_path)

    @property
    def token(self) -> str:
        assert self.boot is not None, "admin not initialised (call init() or start())"
        return self.boot.token

    @property
    def system_space(self) -> str:
        assert self.boot is not None, "admin not initialised (call init() or start())"
        return self.boot.space_id

    @property
    def pid(self) -> int:
        assert self._proc is not None, "admin not started"
        return self._proc.pid

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stderr_text(self) -> str:
        try:
            return self._err_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("TURNOUT_DB", "TURNOUT_REDIS_URL", "TURNOUT_DNS_FIXTURE"):
            env.pop(name, None)
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "TURNOUT_KEYS": self.keys,
                "TURNOUT_BASE_DOMAIN": self.base_domain,
                "TURNOUT_REDIS_PREFIX": self.prefix,
            }
        )
        env.update(self.extra_env)
        return env

    # ------------------------------------------------------------------ other subcommands

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``turnout admin <args>`` with this instance's environment (no check on the exit)."""
        return subprocess.run(
            [sys.executable, "-c", _LAUNCH, "admin", *args],
            cwd=ROOT,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def init(self) -> Bootstrap:
        """``turnout admin init --db <file> --json``: migrate, bootstrap, a new ``*`` token."""
        done = self.cli("init", "--db", self.db_arg, "--json")
        if done.returncode != 0:
            raise AdminStartError(
                f"turnout admin init exited with {done.returncode}:\n{done.stderr[-4000:]}"
            )
        out = json.loads(done.stdout.strip().splitlines()[-1])
        if self.request_quota is not None:
            self._set_request_quota(self.request_quota)
        self.boot = Bootstrap(
            principal_id=out["principal_id"],
            space_id=out["space_id"],
            token_id=out["token_id"],
            token=out["token"],
        )
        return self.boot

    def _set_request_quota(self, quota: int) -> None:
        sql = "UPDATE plan_quotas SET quota = {} WHERE meter = 'wfp_requests' AND quota > 0"
        if self.db_url is not None:  # PostgreSQL
            dsn = "postgresql://" + self.db_url.split("://", 1)[1]

            async def update() -> None:
                conn = await asyncpg.connect(dsn, timeout=10)
                try:
                    await conn.execute(sql.format("$1"), quota)
                finally:
                    await conn.close()

            asyncio.run(update())
            return
        conn = sqlite3.connect(self.db_path, timeout=10.0)
        try:
            with conn:
                conn.execute(sql.format("?"), (quota,))
        finally:
            conn.close()

    def clone(self, db_path: Path, workdir: Path, redis_url: str | None = None) -> AdminProcess:
        """A new instance on a copy of this instance's (stopped or never started) database,
        with the same keys and token: one ``init`` serves many tests."""
        db_path = Path(db_path)
        db_path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.db_path}{suffix}")
            if src.exists():
                shutil.copyfile(src, f"{db_path}{suffix}")
        return AdminProcess(
            db_path,
            redis_url or self.redis_url,
            workdir,
            prefix=self.prefix,
            base_domain=self.base_domain,
            keys=self.keys,
            extra_env=self.extra_env,
            name=self.name,
            boot=self.boot,
            request_quota=self.request_quota,
        )

    def resync_cli(self) -> dict[str, Any]:
        """``turnout admin resync --db <file> --redis <url>``; returns its JSON report."""
        done = self.cli("resync", "--db", self.db_arg, "--redis", self.redis_url)
        if done.returncode != 0:
            raise AssertionError(
                f"turnout admin resync exited with {done.returncode}:\n{done.stderr[-4000:]}"
            )
        report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return report

    # ------------------------------------------------------------------ lifecycle

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-c",
            _LAUNCH,
            "admin",
            "serve",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--db",
            self.db_arg,
            "--redis",
            self.redis_url,
        ]

    def start(self, *, wait_for: str = "/readyz") -> Self:
        """Start (``init`` first if this instance has no token yet) and wait until ``wait_for``
        answers 200. A restart tries the previous port first."""
        if self.boot is None:
            self.init()
        last = ""
        for attempt in range(self.START_ATTEMPTS):
            if self.port == 0 or attempt > 0:
                self.port = free_port()
            self._out = self._out_path.open("ab")
            self._err = self._err_path.open("ab")
            self._proc = subprocess.Popen(
                self.command(),
                cwd=ROOT,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=self._out,
                stderr=self._err,
            )
            ok, last = self._wait_ready(wait_for)
            if ok:
                return self
            self.kill()
            if "address already in use" not in self.stderr_text().lower():
                break
        raise AdminStartError(
            f"admin did not answer {wait_for} within {self.READY_TIMEOUT:.0f} s: {last}\n"
            f"--- command ---\n{' '.join(self.command())}\n"
            f"--- admin stderr ({self._err_path}) ---\n{self.stderr_text()[-8000:]}"
        )

    def _wait_ready(self, path: str) -> tuple[bool, str]:
        assert self._proc is not None

        def probe() -> tuple[int, bytes]:
            resp = self.call("GET", path, auth=False, timeout=1.0)
            return resp.status, resp.body

        return wait_ready(
            self._proc, probe, self.READY_TIMEOUT, path, (OSError, http.client.HTTPException)
        )

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait (SIGKILL after ``timeout``); returns the exit code."""
        proc = self._proc
        if proc is None:
            return 0
        code = terminate(proc, timeout)
        self._cleanup()
        return code

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to publish, flush or clean up."""
        if self._proc is not None:
            kill(self._proc)
        self._cleanup()

    def restart(self, *, wait_for: str = "/readyz") -> Self:
        """Stop (if running) and start again on the same database, keys and token."""
        if self.is_running():
            self.stop()
        return self.start(wait_for=wait_for)

    def _cleanup(self) -> None:
        for f in (self._out, self._err):
            if f is not None:
                f.close()
        self._out = self._err = None
        self._proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<AdminProcess 127.0.0.1:{self.port} db={self.db_path.name} {state}>"

    # ------------------------------------------------------------------ HTTP

    def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
        timeout: float = 30.0,
    ) -> ApiResponse:
        """One request on a fresh connection, as the bootstrap (system) principal by default."""
        hdrs = dict(headers or {})
        if auth:
            hdrs.setdefault("Authorization", f"Bearer {self.token}")
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            return ApiResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            conn.close()

    # ------------------------------------------------------------------ SQL (read-only)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Rows of ``sql`` from the admin's SQLite file, opened read-only."""
        assert self.db_url is None, "query() reads SQLite files; use the database URL directly"
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10.0)
        try:
            conn.row_factory = sqlite3.Row
            return list(conn.execute(sql, tuple(params)).fetchall())
        finally:
            conn.close()


__all__ = ["AdminProcess", "AdminStartError", "ApiResponse", "Bootstrap"]
