"""The real ``turnout gateway`` as a child process, and route publishing for end-to-end tests.

:class:`GatewayProcess` starts the gateway on free loopback ports against a test Redis, waits
until its internal ``/readyz`` answers 200, and stops it with SIGTERM (returning the exit code)
or kills it. :class:`Publisher` writes route records through :class:`RedisRouteStore` (the same
code path the admin uses) with sensible defaults and a per-host version counter, and
:meth:`Publisher.barrier` waits until a gateway has applied everything published so far.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from routing.models import decode_record
from routing.redis_store import RedisRouteStore
from tests.support.net import free_port, kill, port_is_free, terminate, wait_ready
from tests.support.rawhttp import RawConnection, request

ROOT = Path(__file__).resolve().parents[2]
_LAUNCH = "import sys; from gateway.launcher import main; sys.exit(main(sys.argv[1:]))"


class GatewayStartError(RuntimeError):
    pass


class GatewayProcess:
    """``turnout gateway --listen 127.0.0.1:<free> --internal 127.0.0.1:<free> ...``."""

    READY_TIMEOUT = 15.0
    START_ATTEMPTS = 3

    def __init__(
        self,
        redis_url: str,
        workdir: Path,
        *,
        prefix: str = "turnout",
        extra_args: Sequence[str] = (),
        name: str = "gw",
    ) -> None:
        self.redis_url = redis_url
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.extra_args = list(extra_args)
        self.name = name
        self.snapshot = self.workdir / f"{name}-routes.snap"
        self.port = 0
        self.internal_port = 0
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
    def internal_url(self) -> str:
        return f"http://127.0.0.1:{self.internal_port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None, "gateway not started"
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stderr_text(self) -> str:
        try:
            return self._err_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stdout_text(self) -> str:
        try:
            return self._out_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------------ lifecycle

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-c",
            _LAUNCH,
            "--listen",
            f"127.0.0.1:{self.port}",
            "--internal",
            f"127.0.0.1:{self.internal_port}",
            "--redis",
            self.redis_url,
            "--redis-prefix",
            self.prefix,
            "--snapshot",
            str(self.snapshot),
            # One worker unless a test asks for more: its internal port is known, its counters
            # and connections are all in one process. (The launcher's default may be more.)
            *([] if "--workers" in self.extra_args else ["--workers", "1"]),
            *self.extra_args,
        ]

    def start(self) -> Self:
        last = ""
        for _attempt in range(self.START_ATTEMPTS):
            self.port = free_port()
            self.internal_port = self._internal_ports()
            self._out = self._out_path.open("ab")
            self._err = self._err_path.open("ab")
            env = dict(os.environ)
            env.pop("TURNOUT_REDIS_URL", None)
            env["PYTHONUNBUFFERED"] = "1"
            self._proc = subprocess.Popen(
                self.command(),
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._out,
                stderr=self._err,
            )
            ok, last = self._wait_ready()
            if ok:
                return self
            self.kill()
            if "Address already in use" not in self.stderr_text():
                break
        raise GatewayStartError(
            f"gateway did not become ready within {self.READY_TIMEOUT:.0f} s: {last}\n"
            f"--- command ---\n{' '.join(self.command())}\n"
            f"--- gateway stderr ({self._err_path}) ---\n{self.stderr_text()[-8000:]}\n"
            f"--- gateway stdout ---\n{self.stdout_text()[-2000:]}"
        )

    def workers(self) -> int:
        args = self.extra_args
        return int(args[args.index("--workers") + 1]) if "--workers" in args else 1

    def _internal_ports(self) -> int:
        """A base port whose next ``workers - 1`` ports are free too: worker N listens on base+N
        (a taken one makes that worker exit at start and be restarted, once it is free)."""
        while True:
            base = free_port()
            if base != self.port and all(
                base + i != self.port and port_is_free(base + i) for i in range(1, self.workers())
            ):
                return base

    def _wait_ready(self) -> tuple[bool, str]:
        assert self._proc is not None

        def probe() -> tuple[int, bytes]:
            resp = request(self.internal_port, "GET", "/readyz", "localhost", timeout=1.0)
            return resp.status, resp.body

        # Any exception is "not yet": a half-written answer while the gateway starts.
        return wait_ready(self._proc, probe, self.READY_TIMEOUT, "/readyz", (Exception,))

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait for exit (SIGKILL after ``timeout``); returns the exit code."""
        proc = self._proc
        if proc is None:
            return 0
        code = terminate(proc, timeout)
        self._cleanup()
        return code

    def kill(self) -> None:
        if self._proc is not None:
            kill(self._proc)
        self._cleanup()

    def _cleanup(self) -> None:
        for f in (self._out, self._err):
            if f is not None:
                f.close()
        self._out = self._err = None

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
        return f"<GatewayProcess 127.0.0.1:{self.port} internal {self.internal_port} {state}>"


# ---------------------------------------------------------------------- publishing


def make_record(
    host: str,
    upstreams: Sequence[str] | None = None,
    *,
    version: int = 1,
    space_id: str = "space-e2e",
    service_id: str = "svc-e2e",
    deployment_id: str = "dep-e2e",
    path_prefix: str = "/",
    methods: Sequence[str] = (),
    endpoints: list[dict[str, Any]] | None = None,
    policy: dict[str, Any] | None = None,
    blocked: str | None = None,
) -> dict[str, Any]:
    """A route record as a dict: by default one endpoint ``path_prefix`` → one active target
    (``deployment_id``, weight 10000) whose replicas are ``upstreams``."""
    if endpoints is None:
        if not upstreams:
            raise ValueError("upstreams (or endpoints) are required")
        endpoints = [
            {
                "path_prefix": path_prefix,
                "methods": list(methods),
                "targets": [
                    {
                        "deployment_id": deployment_id,
                        "weight": 10000,
                        "status": "active",
                        "upstreams": list(upstreams),
                    }
                ],
            }
        ]
    record: dict[str, Any] = {
        "host": host,
        "version": version,
        "space_id": space_id,
        "service_id": service_id,
        "updated_at": int(time.time() * 1000),
        "endpoints": endpoints,
        "blocked": blocked,
    }
    if policy:
        record["policy"] = policy
    return record


class Publisher:
    """Publishes route records to a test Redis under ``prefix`` (synchronous wrapper).

    Versions auto-increment per host. Records go through :func:`decode_record`, so a test
    cannot publish something the admin never could.
    """

    BARRIER_SUFFIX = "barrier.e2e.test"

    def __init__(self, redis_url: str, prefix: str = "turnout") -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.versions: dict[str, int] = {}
        self._barriers = itertools.count(1)

    def record(
        self, host: str, upstreams: Sequence[str] | None = None, **kw: Any
    ) -> dict[str, Any]:
        version = self.versions.get(host, 0) + 1
        self.versions[host] = version
        return make_record(host, upstreams, version=version, **kw)

    def publish(
        self, host: str, upstreams: Sequence[str] | None = None, **kw: Any
    ) -> dict[str, Any]:
        rec = self.record(host, upstreams, **kw)
        self.publish_records([rec])
        return rec

    def publish_records(self, records: Sequence[dict[str, Any]]) -> None:
        decoded = [decode_record(r) for r in records]

        async def run() -> None:
            store = RedisRouteStore(self.redis_url, prefix=self.prefix)
            try:
                for rec in decoded:
                    await store.publish(rec)
            finally:
                await store.close()

        asyncio.run(run())

    def barrier(self, gateway: GatewayProcess, timeout: float = 10.0) -> None:
        """Return once ``gateway`` applied everything published before this call: publish a
        fresh blocked record (the log is applied in order) and wait until it answers."""
        host = f"b{next(self._barriers)}.{self.BARRIER_SUFFIX}"
        self.publish(host, ["http://127.0.0.1:9"], blocked="suspended")
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                resp = request(gateway.port, "GET", "/", host, timeout=2.0)
            except OSError as exc:
                last = repr(exc)
            else:
                if resp.status == 503 and b"suspended" in resp.body:
                    return
                last = f"{resp.status} {resp.body[:200]!r}"
            time.sleep(0.02)
        raise TimeoutError(
            f"gateway did not apply published routes within {timeout} s (last: {last})\n"
            f"--- gateway stderr ---\n{gateway.stderr_text()[-4000:]}"
        )


def health_totals(client: Any, prefix: str, deployment: str) -> dict[str, int]:
    """A deployment's health counters in Redis (``client``: a ``redis.Redis``), summed over
    every minute key they span."""
    total: dict[str, int] = {}
    for key in client.scan_iter(match=f"{{{prefix}}}:health:{deployment}:*"):
        for name, value in client.hgetall(key).items():
            total[name.decode()] = total.get(name.decode(), 0) + int(value)
    return total


def gateway_error(body: bytes) -> dict[str, Any]:
    """The ``error`` object of a gateway answer (raises if the body is not one)."""
    obj = json.loads(body)
    assert isinstance(obj, dict) and set(obj) == {"error"}, obj
    err = obj["error"]
    assert isinstance(err, dict), obj
    return err


__all__ = [
    "GatewayProcess",
    "GatewayStartError",
    "Publisher",
    "RawConnection",
    "gateway_error",
    "health_totals",
    "make_record",
]
