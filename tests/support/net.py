"""Network and process helpers for tests."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago (the kernel picked it).

    There is an unavoidable window between closing the probe socket and the caller binding the
    port; callers that start servers should retry with a new port if the bind fails.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Can ``port`` on ``host`` be bound right now?"""
    if not 0 < port < 65536:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def terminate(proc: subprocess.Popen[Any], timeout: float = 15.0) -> int:
    """SIGTERM ``proc`` and wait (SIGKILL after ``timeout``); returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def kill(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL ``proc`` (no chance to flush or clean up) and reap it."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def wait_ready(
    proc: subprocess.Popen[Any],
    probe: Callable[[], tuple[int, bytes]],
    timeout: float,
    what: str,
    errors: tuple[type[BaseException], ...] = (OSError,),
) -> tuple[bool, str]:
    """Poll ``probe`` (→ status, body) until it answers 200, the process exits, or ``timeout``.

    Returns ``(ready, why_not)``; ``errors`` are the probe failures that mean "not yet"."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            return False, f"process exited with code {code}"
        try:
            status, body = probe()
        except errors as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if status == 200:
                return True, ""
            last = f"{what} answered {status}: {body[:200]!r}"
        time.sleep(0.05)
    return False, last


def wait_until(
    probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05
) -> tuple[T, float]:
    """Poll ``probe`` until it returns something truthy; returns it and the seconds it took.
    An ``AssertionError`` from the probe counts as "not yet" and is reported on timeout."""
    started = time.monotonic()
    deadline = started + timeout
    last: Any = None
    while True:
        try:
            got = probe()
        except AssertionError as exc:
            got, last = None, exc
        if got:
            return got, time.monotonic() - started
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last}")
        time.sleep(interval)
