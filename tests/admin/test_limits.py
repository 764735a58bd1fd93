"""Body-parsing workers (per-principal bound, errors and crashes across the process boundary)
and the per-window limit behind the audit log's failure rows."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from admin.errors import TooManyRequests, Unavailable, Unprocessable
from admin.limits import BodyParsers, Verdict, WindowLimit

# Parse functions run in worker processes: module level, so they pickle by name.


def _echo(raw: bytes) -> bytes:
    return raw


def _wait_for(raw: bytes) -> bytes:
    """Touch ``<raw>.started``, then wait until the file ``<raw>`` exists."""
    gate = raw.decode()
    Path(gate + ".started").touch()
    deadline = time.monotonic() + 30
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(gate)
        time.sleep(0.005)
    return b"done"


def _refuse(raw: bytes) -> bytes:
    raise Unprocessable("bad body", [{"path": "body.x", "message": "nope"}], code="invalid_x")


def _crash(raw: bytes) -> bytes:
    os._exit(3)


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def test_a_principal_has_at_most_its_parses_in_flight(tmp_path: Path) -> None:
    parsers = BodyParsers(workers=3, per_principal=2)
    gate = tmp_path / "go"
    try:
        first = [asyncio.create_task(parsers.parse("p", _wait_for, str(gate).encode()))]
        first.append(asyncio.create_task(parsers.parse("p", _wait_for, str(gate).encode())))
        await until(lambda: parsers.in_flight("p") == 2)
        with pytest.raises(TooManyRequests) as info:
            await parsers.parse("p", _echo, b"x")
        assert info.value.status == 429 and info.value.code == "too_many_requests"
        assert info.value.headers == {"retry-after": "1"}
        with pytest.raises(TooManyRequests):
            parsers.check("p")
        # Another principal is not held up by p's parses.
        assert await parsers.parse("q", _echo, b"other") == b"other"
        gate.touch()
        assert await asyncio.gather(*first) == [b"done", b"done"]
        await until(lambda: parsers.in_flight("p") == 0)
        assert await parsers.parse("p", _echo, b"again") == b"again"
    finally:
        await parsers.aclose()


async def test_a_cancelled_request_keeps_its_slot_until_the_worker_is_done(tmp_path: Path) -> None:
    parsers = BodyParsers(workers=1, per_principal=1)
    gate = tmp_path / "go"
    try:
        task = asyncio.create_task(parsers.parse("p", _wait_for, str(gate).encode()))
        await until(lambda: (tmp_path / "go.started").exists())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The worker still burns CPU for it: the client may not start another one.
        with pytest.raises(TooManyRequests):
            await parsers.parse("p", _echo, b"x")
        gate.touch()
        await until(lambda: parsers.in_flight("p") == 0)
        assert await parsers.parse("p", _echo, b"x") == b"x"
    finally:
        await parsers.aclose()


async def test_api_errors_cross_the_process_boundary_intact() -> None:
    parsers = BodyParsers()
    try:
        with pytest.raises(Unprocessable) as info:
            await parsers.parse("p", _refuse, b"")
        err = info.value
        assert (err.status, err.code, err.message) == (422, "invalid_x", "bad body")
        assert err.details == {"fields": [{"path": "body.x", "message": "nope"}]}
        await until(lambda: parsers.in_flight("p") == 0)
    finally:
        await parsers.aclose()


async def test_a_crashed_worker_fails_its_request_and_is_replaced() -> None:
    parsers = BodyParsers()
    try:
        with pytest.raises(Unavailable) as info:
            await parsers.parse("p", _crash, b"")
        assert info.value.status == 503
        assert await parsers.parse("p", _echo, b"after") == b"after"
    finally:
        await parsers.aclose()


def test_parsers_need_at_least_one_worker_and_slot() -> None:
    with pytest.raises(ValueError):
        BodyParsers(workers=0)
    with pytest.raises(ValueError):
        BodyParsers(per_principal=0)


def test_window_limit() -> None:
    now = [1000.0]
    limit = WindowLimit(2, window=60, clock=lambda: now[0])
    assert [limit.check("a") for _ in range(5)] == [
        Verdict.ALLOW,
        Verdict.ALLOW,
        Verdict.LAST,
        Verdict.DROP,
        Verdict.DROP,
    ]
    assert limit.check("b") is Verdict.ALLOW  # per key
    now[0] += 60  # the next window
    assert limit.check("a") is Verdict.ALLOW
    assert "keys=1" in repr(limit)  # old windows are forgotten
    with pytest.raises(ValueError):
        WindowLimit(0)
