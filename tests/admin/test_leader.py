"""The leader lease and the loops that run only on its holder."""

from __future__ import annotations

import asyncio

import pytest

from admin.leader import LeaderLoops, Lease
from routing.runtime_state import MemoryRuntimeState, RedisRuntimeState
from tests.support.net import free_port


async def test_only_the_holder_runs_jobs_and_a_released_lease_moves_at_once() -> None:
    runtime = MemoryRuntimeState()
    a, b = LeaderLoops(Lease(runtime)), LeaderLoops(Lease(runtime))
    ran: list[str] = []

    async def job_a() -> str:
        ran.append("a")
        return "done-a"

    async def job_b() -> str:
        ran.append("b")
        return "done-b"

    a.add("collector", job_a, 60)
    b.add("collector", job_b, 60)
    assert await a.run_once("collector") == "done-a"
    assert await b.run_once("collector") is None  # a holds the lease
    assert b.stats["collector"].skipped == 1
    await a.lease.release()
    assert await b.run_once("collector") == "done-b"
    assert ran == ["a", "b"]
    assert await b.run_once("collector", force=True) == "done-b"


async def test_a_failing_job_is_counted_and_the_loop_keeps_going() -> None:
    loops = LeaderLoops(Lease(MemoryRuntimeState()))
    calls = 0
    two = asyncio.Event()

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls >= 2:
            two.set()
        if calls == 1:
            raise RuntimeError("boom")

    loops.add("flaky", flaky, 0.01)
    loops.start()
    try:
        await asyncio.wait_for(two.wait(), 5)
    finally:
        await loops.stop()
    st = loops.stats["flaky"]
    assert st.failures == 1 and st.runs >= 2 and st.last_error is None
    text = "\n".join(loops.metrics())
    assert 'turnout_admin_leader_job_failures_total{job="flaky"} 1' in text


async def test_lease_fails_closed_when_the_store_is_unreachable() -> None:
    runtime = RedisRuntimeState(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.2)
    try:
        lease = Lease(runtime)
        assert not await lease.held()
        assert lease.last_error
        await lease.release()  # never raises
    finally:
        await runtime.close()


def test_bad_registrations_are_refused() -> None:
    loops = LeaderLoops(Lease(MemoryRuntimeState()))

    async def job() -> None:
        return None

    loops.add("x", job, 1)
    with pytest.raises(ValueError, match="exists"):
        loops.add("x", job, 1)
    with pytest.raises(ValueError, match="positive"):
        loops.add("y", job, 0)


def test_lease_ttl_setting() -> None:
    from admin.settings import Settings

    assert Settings().lease_ms == 3_000  # a dead leader is replaced within ~3 s by default
    assert Settings(reconcile_interval=20).lease_ms == 3_000  # renewals no longer ride on it
    assert Settings.from_env({"TURNOUT_LEASE_SECONDS": "2.5"}).lease_ms == 2_500
    with pytest.raises(SystemExit, match="TURNOUT_LEASE_SECONDS"):
        Settings.from_env({"TURNOUT_LEASE_SECONDS": "soon"})
