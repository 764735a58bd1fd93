"""Shared fixtures: private redis-server processes and free ports.

Tests never touch 127.0.0.1:6379. The session server below is ours alone, so flushing it
between tests is safe.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.net import free_port as _free_port
from tests.support.redis_server import RedisServer

# Every proxied exchange checks its response-phase moves against gateway.phase.TRANSITIONS (read
# once at import, so set before any gateway module loads; child gateway processes inherit it).
os.environ.setdefault("TURNOUT_CHECK_PHASES", "1")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the whole session (shared; do not kill it)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session Redis, flushed empty for this test."""
    if not redis_server.is_running():  # a test broke the rules; heal rather than cascade failures
        redis_server.start()
    redis_server.flushall()
    return redis_server.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A dedicated redis-server for this test alone: kill it, restart it, as you like."""
    with RedisServer(workdir=tmp_path / "redis") as server:
        yield server


@pytest.fixture(name="free_port")
def free_port_fixture() -> int:
    """A TCP port on 127.0.0.1 that was free when the test started."""
    return _free_port()
