"""A real, private ``redis-server`` process for tests.

Each instance listens on its own loopback port (never 6379), keeps nothing on disk
(``--save "" --appendonly no``) and can be killed and restarted on the same port, which is what
the "Redis lost" tests need.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from tests.support.net import free_port

INSTALL_HINT = (
    "redis-server not found; install it (Debian/Ubuntu: sudo apt-get install redis-server) "
    "or put it on PATH"
)
_FORBIDDEN_PORT = 6379  # the machine's shared Redis, if any: never ours to touch


def _send_command(port: int, *parts: str, timeout: float = 1.0) -> bytes:
    """Send one RESP command over a fresh socket and return the raw reply bytes."""
    payload = f"*{len(parts)}\r\n".encode()
    for part in parts:
        raw = part.encode()
        payload += b"$%d\r\n%s\r\n" % (len(raw), raw)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        chunks: list[bytes] = []
        while True:
            try:
                chunk = sock.recv(4096)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if chunks[-1].endswith(b"\r\n"):
                break
        return b"".join(chunks)


class RedisServer:
    """A ``redis-server`` child process on a free 127.0.0.1 port.

    Usage::

        with RedisServer() as server:
            client = redis.Redis.from_url(server.url)
            ...
            server.shutdown_nosave()   # Redis is gone, data lost
            server.start()             # back on the same port, empty
    """

    START_TIMEOUT = 10.0
    STOP_TIMEOUT = 10.0
    START_ATTEMPTS = 5

    def __init__(self, port: int | None = None, workdir: Path | str | None = None) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError(INSTALL_HINT)
        if port == _FORBIDDEN_PORT:
            raise ValueError("refusing to run a test Redis on 6379 (the shared instance's port)")
        self._executable = executable
        self._fixed_port = port is not None
        self._port = port if port is not None else free_port()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="turnout-redis-")
            workdir = self._tmp.name
        self._dir = Path(workdir)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._log_path = self._dir / "redis-server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._started_once = False

    # ------------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self._port}/0"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def log_output(self) -> str:
        try:
            return self._log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        """Start (or restart) the server, on the same port as before.

        Retries a few times if the port is momentarily busy; Redis sets SO_REUSEADDR itself, so
        TIME_WAIT from the previous incarnation does not block it. A server created without an
        explicit port may move to a new free port on its very first start if the probed one was
        taken in the meantime.
        """
        if self.is_running():
            return self
        first_start = not self._started_once
        last_error = ""
        for attempt in range(self.START_ATTEMPTS):
            self._spawn()
            ok, last_error = self._wait_ready()
            if ok:
                self._started_once = True
                return self
            self._reap()
            if "Address already in use" not in last_error:
                break
            if first_start and not self._fixed_port:
                self._port = free_port()
            time.sleep(0.2 * (attempt + 1))
        raise RuntimeError(
            f"redis-server on 127.0.0.1:{self._port} did not become ready: {last_error}\n"
            f"--- redis-server log ({self._log_path}) ---\n{self.log_output()}"
        )

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL if needed) and wait for it."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=self.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._reap()

    def shutdown_nosave(self) -> None:
        """Ask Redis to exit with ``SHUTDOWN NOSAVE`` (abrupt loss of all data) and wait."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._reap()
            return
        # The server may drop the connection before replying.
        with contextlib.suppress(OSError):
            _send_command(self._port, "SHUTDOWN", "NOSAVE")
        try:
            proc.wait(timeout=self.STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._reap()

    def close(self) -> None:
        """Stop the server and remove its temporary directory."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def ping(self, timeout: float = 1.0) -> bool:
        try:
            return _send_command(self._port, "PING", timeout=timeout).startswith(b"+PONG")
        except OSError:
            return False

    def flushall(self) -> None:
        reply = _send_command(self._port, "FLUSHALL")
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"FLUSHALL on 127.0.0.1:{self._port} failed: {reply!r}")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<RedisServer 127.0.0.1:{self._port} {state}>"

    # ------------------------------------------------------------------ internals

    def _spawn(self) -> None:
        if (
            self._port == _FORBIDDEN_PORT
        ):  # pragma: no cover - free_port never returns it in practice
            self._port = free_port()
        self._log = self._log_path.open("ab")
        self._proc = subprocess.Popen(
            [
                self._executable,
                "--port", str(self._port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self._dir),
                "--daemonize", "no",
                "--logfile", "",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def _wait_ready(self) -> tuple[bool, str]:
        assert self._proc is not None
        deadline = time.monotonic() + self.START_TIMEOUT
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                log = self.log_output()
                reason = "Address already in use" if "Address already in use" in log else ""
                return False, f"process exited with code {code} {reason}".strip()
            if self.ping(timeout=0.5):
                return True, ""
            time.sleep(0.02)
        return False, f"no PONG within {self.START_TIMEOUT:.0f} s"

    def _reap(self) -> None:
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
