"""Network and process helpers for tests."""

from __future__ import annotations

import signal
import socket
import subprocess
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago (the kernel picked it).

    There is an unavoidable window between closing the probe socket and the caller binding the
    port; callers that start servers should retry with a new port if the bind fails.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


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
