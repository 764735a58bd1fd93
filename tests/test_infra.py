"""Sanity checks for the test infrastructure itself."""

from __future__ import annotations

import subprocess
import sys

import redis

from tests.support.redis_server import RedisServer


def test_redis_server_restart_loses_data(own_redis: RedisServer) -> None:
    port = own_redis.port
    assert port != 6379
    with redis.Redis.from_url(own_redis.url) as client:
        assert client.set("turnout:test", "value")
        assert client.get("turnout:test") == b"value"

    own_redis.shutdown_nosave()
    assert not own_redis.is_running()
    assert not own_redis.ping()

    own_redis.start()
    assert own_redis.is_running()
    assert own_redis.port == port
    with redis.Redis.from_url(own_redis.url) as client:
        assert client.get("turnout:test") is None  # nothing persisted


def test_redis_url_is_flushed_per_test(redis_url: str) -> None:
    assert not redis_url.endswith(":6379/0")
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set("leftover", "1")  # the next test must not see it


def test_redis_url_is_flushed_again(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.get("leftover") is None


def test_redis_server_stop_and_context_manager() -> None:
    with RedisServer() as server:
        assert server.ping()
        server.stop()
        assert not server.is_running()
    assert not server.is_running()


def test_free_port_fixture(free_port: int) -> None:
    assert 0 < free_port < 65536


def test_cli_reports_missing_subcommand_cleanly() -> None:
    from turnout import cli

    assert cli.main(["bench", "--help"]) == 0
    # Subcommands whose modules are not built yet must fail cleanly, not with a traceback.
    for sub in ("gateway", "admin", "dev"):
        if cli._load(sub) is None:
            assert cli.main([sub]) == 2


def test_cli_module_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "turnout.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "turnout" in out.stdout
