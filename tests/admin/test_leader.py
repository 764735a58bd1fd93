"""The leader lease and the loops that run only on its holder."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis

from admin.leader import LeaderLoops, Lease, LeaseLost, Role
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


# ---------------------------------------------------------------------- heartbeat and handover


@pytest.fixture
async def runtimes(redis_url: str) -> AsyncIterator[list[RedisRuntimeState]]:
    """Two admin instances' runtime states on one Redis (separate clients)."""
    pair = [RedisRuntimeState(redis_url, prefix="ha"), RedisRuntimeState(redis_url, prefix="ha")]
    try:
        yield pair
    finally:
        for rt in pair:
            await rt.close()


async def _until(probe: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``probe()`` is true (fails after ``timeout``)."""
    started = time.monotonic()
    while not probe():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def _die(lease: Lease) -> None:
    """The holder's process dies: its heartbeat stops, nothing is released."""
    task, sub = lease._task, lease._sub
    assert task is not None and sub is not None
    task.cancel()
    await sub.close()
    lease._task = lease._sub = None
    lease.role = Role.STOPPED


async def test_heartbeat_keeps_the_lease_through_long_work(
    runtimes: list[RedisRuntimeState],
) -> None:
    # A 1 s TTL (renewed about every third of it): a 300 ms one lost the lease to a 240 ms
    # event-loop stall of the loaded test box, which is not what this test is about.
    a, b = Lease(runtimes[0], "p", 1000), Lease(runtimes[1], "p", 1000)
    a.start()
    await _until(lambda: a.holding, 2, "a leads")
    b.start()
    try:

        async def long_job() -> str:
            await asyncio.sleep(3.2)  # > 3 TTLs: only the heartbeat keeps the lease
            return "done"

        assert await a.run_fenced(long_job) == "done"
        assert a.holding and not b.holding and b.role is Role.FOLLOWING
        assert a.losses == 0 and a.acquisitions == 1
    finally:
        await b.release()
        await a.release()


async def test_a_dead_holder_is_replaced_within_its_ttl(runtimes: list[RedisRuntimeState]) -> None:
    ttl = 1.0
    a, b = Lease(runtimes[0], "p", int(ttl * 1000)), Lease(runtimes[1], "p", int(ttl * 1000))
    a.start()
    await _until(lambda: a.holding, 2, "a leads")
    b.start()
    try:
        await asyncio.sleep(0.5)  # b has polled and been refused at least once
        assert not b.holding
        await _die(a)
        # The key lives ttl after a's last renewal; b asks right when it runs out.
        took = await _until(lambda: b.holding, ttl + 1.5, "b takes over")
        assert took <= ttl + 0.5, f"handover took {took:.2f}s with a {ttl}s TTL"
        print(f"handover after the holder's death: {took:.3f}s (TTL {ttl}s)")
    finally:
        await b.release()


async def test_a_released_lease_is_taken_at_once(runtimes: list[RedisRuntimeState]) -> None:
    a, b = Lease(runtimes[0], "p", 5_000), Lease(runtimes[1], "p", 5_000)
    a.start()
    await _until(lambda: a.holding, 2, "a leads")
    b.start()
    try:
        await asyncio.sleep(0.1)
        await a.release()
        # Announced on {ha}:notify:lease:p: not the 5 s TTL, not b's next poll.
        took = await _until(lambda: b.holding, 1.0, "b takes the released lease")
        assert took < 0.5
    finally:
        await b.release()


async def test_a_holder_that_cannot_renew_steps_down_before_its_ttl(
    redis_url: str, runtimes: list[RedisRuntimeState]
) -> None:
    ttl = 0.6
    a = Lease(runtimes[0], "p", int(ttl * 1000))
    loops = LeaderLoops(a)
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    loops.add("slow", slow, 3600)
    loops.start()
    try:
        await _until(lambda: a.holding, 2, "a leads")
        run = asyncio.create_task(loops.run_once("slow"))
        await asyncio.sleep(0.05)
        paused_at = time.monotonic()
        with redis.Redis.from_url(redis_url) as admin:
            admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")  # renewals hang
        await _until(lambda: not a.holding, ttl + 0.5, "a steps down")
        stepped = time.monotonic() - paused_at
        assert stepped < ttl, f"stepped down {stepped:.2f}s after the last renewal could start"
        assert await asyncio.wait_for(run, 2) is None
        assert cancelled.is_set()
        st = loops.stats["slow"]
        assert st.fenced == 1 and "ended while a job ran" in (st.last_error or "")
        assert a.losses == 1
        with pytest.raises(LeaseLost):
            await a.run_fenced(slow)
        text = "\n".join(loops.metrics())
        assert 'turnout_admin_leader{lease="p"} 0' in text
        assert 'turnout_admin_leader_job_fenced_total{job="slow"} 1' in text
        # Redis answers again: a takes the lease back (nobody else wanted it).
        await _until(lambda: a.holding, 5, "a leads again")
        assert a.acquisitions == 2
    finally:
        await loops.stop()
        await a.release()


async def test_lease_listeners_hear_every_change_of_leadership() -> None:
    runtime = MemoryRuntimeState()
    a, b = Lease(runtime, "p", 10_000), Lease(runtime, "p", 10_000)
    heard: list[tuple[str, bool]] = []
    a.on_change(lambda leading: heard.append(("a", leading)))
    b.on_change(lambda leading: heard.append(("b", leading)))
    a.start()
    await _until(lambda: a.holding, 2, "a leads")
    b.start()
    await asyncio.sleep(0.05)
    await a.release()
    await _until(lambda: b.holding, 2, "b leads")
    await b.release()
    assert heard == [("a", True), ("a", False), ("b", True), ("b", False)]
    assert "stopped" in repr(a)
    with pytest.raises(ValueError, match="at least 30 ms"):
        Lease(runtime, "p", 10)
