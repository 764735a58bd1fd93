"""The admin's leader lease and the background loops that run only on its holder.

Theory of operation
-------------------
Several admin instances may run against one PostgreSQL database. Work that must happen exactly
once at a time — publishing the outbox, full resyncs, and the periodic loops (usage collector,
rollout reconciler, pod lease reaper) — runs only on the instance holding the lease
``{prefix}:leader:publisher`` in the runtime state (Redis, or this process in ``turnout dev``).

A :class:`Lease` has a role, and every change of role happens in :meth:`Lease._become`::

    STOPPED ──start() / held()──► FOLLOWING ──taken──► LEADING
                                      ▲                   │
                                      └─ refused, or not renewed before the fence ─┘
    FOLLOWING / LEADING ──release()──► STOPPED

Timing, for a TTL of ``t`` (``TURNOUT_LEASE_SECONDS``, default 3 s):

* **Heartbeat.** Once started, a dedicated task renews the lease every ``t/3``, whatever the
  jobs are doing (a long job never starves the renewal). A failed renewal is retried every
  ``t/10``.
* **Fencing by time.** The holder counts itself leader until ``0.8·t`` after it *sent* its last
  successful renewal. Redis keeps the key ``t`` after *receiving* it, so the holder stops at
  least ``0.2·t`` before anybody else can take over. At the fence the role drops to FOLLOWING
  and work started with :meth:`Lease.run_fenced` is cancelled (SQL transactions roll back, an
  outbox row not yet deleted is published again by the successor, which is harmless).
* **Followers notice a free lease at once.** A refused attempt returns how long the holder's
  key has left (``PTTL``), and the follower tries again right then (at most ``t/3`` later):
  a dead holder is replaced ``t`` after its last renewal at worst, plus one round trip. A clean
  shutdown deletes the key and announces it on ``{prefix}:notify:lease:<name>``; followers are
  subscribed and take over within milliseconds.

Why not Redis keyspace notifications for "the key expired"? They need
``notify-keyspace-events`` on the server (off by default, often not configurable on managed
Redis, and not carried over by a Sentinel failover), an ``expired`` event fires when Redis's
expiry cycle reaches the key rather than at the TTL, and pub/sub is best-effort: followers would
poll anyway. Asking at the moment the holder's TTL runs out costs one script call per follower
per ``t/3`` at most and works on every Redis.

A check that cannot reach the store answers False (fail closed: no instance acts on a lease it
cannot see); a holder that cannot renew steps down at its fence.

:class:`LeaderLoops` runs named jobs, each every ``interval`` seconds, each only while the lease
is held, and fenced: a job still running when the lease is lost is cancelled. A job's failure is
logged and counted, never fatal; the next tick runs it again. Jobs must still be idempotent with
respect to SQL: fencing by time bounds overlap with a successor (a process frozen longer than
``0.2·t`` between its fence check and a write can still overlap), so every job commits its
decisions with optimistic locking or in transactions that make a repeat harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from routing.errors import StoreError
from routing.runtime_state import RuntimeState, Subscription

log = logging.getLogger("turnout.admin.leader")

LEASE_MS = 3_000
RENEW_FRACTION = 1 / 3  # heartbeat period, of the TTL
RETRY_FRACTION = 1 / 10  # after a failed attempt
FENCE_FRACTION = 0.8  # leadership ends this long after sending the last good renewal
Job = Callable[[], Awaitable[Any]]
T = TypeVar("T")


class LeaseLost(RuntimeError):
    """The lease ended (refused, or not renewed before the fence) while fenced work ran."""


class Role(enum.Enum):
    STOPPED = "stopped"
    FOLLOWING = "following"
    LEADING = "leading"


_TRANSITIONS: dict[Role, frozenset[Role]] = {
    Role.STOPPED: frozenset({Role.FOLLOWING, Role.LEADING}),
    Role.FOLLOWING: frozenset({Role.LEADING, Role.STOPPED}),
    Role.LEADING: frozenset({Role.FOLLOWING, Role.STOPPED}),
}


class Lease:
    """One named leader lease in the runtime state, owned by this process."""

    def __init__(
        self,
        runtime: RuntimeState,
        name: str = "publisher",
        ttl_ms: int = LEASE_MS,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        if ttl_ms < 30:
            raise ValueError("lease TTL must be at least 30 ms")
        self.runtime = runtime
        self.name = name
        self.key = runtime.keys.leader(name)
        self.channel = runtime.keys.notify(f"lease:{name}")
        self.ttl_ms = ttl_ms
        self.owner = secrets.token_hex(8)
        self.clock = clock
        self.role = Role.STOPPED
        self.last_error: str | None = None
        self.acquisitions = 0  # FOLLOWING/STOPPED -> LEADING
        self.losses = 0  # LEADING -> FOLLOWING (refused or fenced)
        self.renew_failures = 0
        self._fence = 0.0  # clock() until which this process may act as the leader
        self._free_in: float | None = None  # seconds left on the holder's key, last we asked
        self._tenure = asyncio.Event()  # set when the current (or last) leadership ended
        self._tenure.set()
        self._wake = asyncio.Event()
        self._listeners: list[Callable[[bool], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._sub: Subscription | None = None

    # ------------------------------------------------------------------ timing

    @property
    def ttl(self) -> float:
        return self.ttl_ms / 1000

    @property
    def renew_every(self) -> float:
        return self.ttl * RENEW_FRACTION

    @property
    def retry_every(self) -> float:
        return self.ttl * RETRY_FRACTION

    @property
    def holding(self) -> bool:
        """Leader now, by this process's own clock (no I/O)."""
        return self.role is Role.LEADING and self.clock() < self._fence

    @property
    def started(self) -> bool:
        return self._task is not None

    # ------------------------------------------------------------------ state machine

    def _become(self, role: Role, why: str = "") -> None:
        old = self.role
        if role is old:
            return
        if role not in _TRANSITIONS[old]:
            raise RuntimeError(f"lease {self.name}: no transition {old.value} -> {role.value}")
        self.role = role
        if role is Role.LEADING:
            self.acquisitions += 1
            self._tenure = asyncio.Event()
            log.info("lease %s: leading (owner %s)", self.name, self.owner)
        elif old is Role.LEADING:
            self._tenure.set()
            if role is Role.FOLLOWING:
                self.losses += 1
                log.warning("lease %s: stepped down (%s)", self.name, why or "released")
        if (old is Role.LEADING) == (role is Role.LEADING):
            return
        for listener in list(self._listeners):
            try:
                listener(role is Role.LEADING)
            except Exception:
                log.exception("lease %s: listener failed", self.name)

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(leading)`` after every change between leading and not leading."""
        self._listeners.append(listener)

    def _check_fence(self) -> None:
        if self.role is Role.LEADING and self.clock() >= self._fence:
            self._become(Role.FOLLOWING, f"not renewed within {self.ttl * FENCE_FRACTION:.2f}s")

    async def _attempt(self) -> None:
        """One take-or-renew; bounded by the fence when leading, by the TTL otherwise."""
        sent = self.clock()
        budget = self._fence - sent if self.role is Role.LEADING else self.ttl
        try:
            async with asyncio.timeout(max(budget, 0.001)):
                answer = await self.runtime.try_lease(self.key, self.owner, self.ttl_ms)
        except (StoreError, TimeoutError) as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from exc  # a cancel the client turned into an error
            self.last_error = str(exc) or f"no answer within {budget:.2f}s"
            self.renew_failures += self.role is Role.LEADING
            self._check_fence()
            if self.role is Role.STOPPED:
                self._become(Role.FOLLOWING)
            return
        self.last_error = None
        if answer.held:
            self._fence = sent + self.ttl * FENCE_FRACTION
            self._free_in = None
            self._become(Role.LEADING)
        else:
            self._free_in = answer.remaining_ms / 1000 if answer.remaining_ms >= 0 else None
            self._become(Role.FOLLOWING, "another instance holds it")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the heartbeat (idempotent; on the running loop). Stopped by :meth:`release`."""
        if self._task is not None:
            return
        if self.role is Role.STOPPED:
            self._become(Role.FOLLOWING)
        self._sub = self.runtime.subscribe(self.channel, lambda _msg: self._wake.set())
        self._task = asyncio.create_task(self._heartbeat(), name=f"lease:{self.name}")

    async def _heartbeat(self) -> None:
        while True:
            await self._attempt()
            now = self.clock()
            if self.role is Role.LEADING:
                delay = self.retry_every if self.last_error else self.renew_every
                delay = min(delay, max(0.0, self._fence - now))
            elif self.last_error:
                delay = self.retry_every
            elif self._free_in is not None:
                delay = min(self._free_in + 0.002, self.renew_every)
            else:
                delay = self.renew_every
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            self._check_fence()

    async def held(self) -> bool:
        """True when this process holds the lease now. With the heartbeat running this is
        :attr:`holding` (no I/O); without it, one take-or-renew round trip."""
        if self._task is None:
            await self._attempt()
        return self.holding

    async def release(self) -> None:
        """Stop the heartbeat and give the lease up (on shutdown), announcing it so another
        instance takes over at once."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        sub, self._sub = self._sub, None
        if sub is not None:
            await sub.close()
        self._become(Role.STOPPED)
        with contextlib.suppress(StoreError, TimeoutError):
            async with asyncio.timeout(min(self.ttl, 2.0)):
                if await self.runtime.release_lease(self.key, self.owner):
                    await self.runtime.notify(self.channel)

    async def run_fenced(self, job: Callable[[], Awaitable[T]]) -> T:
        """Run ``job()`` while this process leads; cancel it and raise :class:`LeaseLost` when
        the lease ends first (refused, or the fence passed without a renewal)."""
        if not self.holding:
            raise LeaseLost(f"lease {self.name} is not held")
        tenure = self._tenure
        task: asyncio.Future[Any] = asyncio.ensure_future(job())
        ended: asyncio.Future[Any] = asyncio.ensure_future(tenure.wait())
        try:
            while not task.done():
                remaining = self._fence - self.clock()
                if remaining <= 0 or tenure.is_set():
                    break
                await asyncio.wait(
                    {task, ended}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
            if task.done():
                result: T = task.result()
                return result
            raise LeaseLost(f"lease {self.name} ended while a job ran; the job was cancelled")
        finally:
            ended.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def metrics(self) -> list[str]:
        """Prometheus lines for this lease."""
        label = f'{{lease="{self.name}"}}'
        return [
            "# TYPE turnout_admin_leader gauge",
            f"turnout_admin_leader{label} {int(self.holding)}",
            "# TYPE turnout_admin_leader_acquisitions_total counter",
            f"turnout_admin_leader_acquisitions_total{label} {self.acquisitions}",
            "# TYPE turnout_admin_leader_losses_total counter",
            f"turnout_admin_leader_losses_total{label} {self.losses}",
            "# TYPE turnout_admin_leader_renew_failures_total counter",
            f"turnout_admin_leader_renew_failures_total{label} {self.renew_failures}",
        ]

    def __repr__(self) -> str:
        return f"Lease({self.key!r}, owner={self.owner}, ttl_ms={self.ttl_ms}, {self.role.value})"


@dataclass(slots=True)
class JobStats:
    name: str
    interval: float
    runs: int = 0
    failures: int = 0
    skipped: int = 0  # ticks on which another instance held the lease
    fenced: int = 0  # runs cancelled because the lease ended while they ran
    last_run_at: float | None = None
    last_error: str | None = None
    last_result: Any = field(default=None, repr=False)


class LeaderLoops:
    """Periodic jobs that run only on the lease holder (see the module docstring)."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self._jobs: dict[str, tuple[Job, JobStats]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, name: str, job: Job, interval: float) -> None:
        """Register ``job`` to run every ``interval`` seconds (before :meth:`start`)."""
        if name in self._jobs:
            raise ValueError(f"a leader job named {name!r} exists")
        if interval <= 0:
            raise ValueError(f"{name}: interval must be positive")
        self._jobs[name] = (job, JobStats(name, interval))

    @property
    def stats(self) -> dict[str, JobStats]:
        return {name: st for name, (_job, st) in self._jobs.items()}

    def start(self) -> None:
        """Start every job's loop, and the lease's heartbeat if nobody started it yet (the
        lease's owner stops it with ``lease.release()``)."""
        self.lease.start()
        self._tasks = [
            asyncio.create_task(self._loop(name), name=f"leader:{name}") for name in self._jobs
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def run_once(self, name: str, *, force: bool = False) -> Any:
        """Run one job now (tests, operators). Without ``force`` only on the lease holder, and
        cancelled if the lease ends meanwhile; returns the job's result, or None when the lease
        is held elsewhere (or was lost during the run)."""
        job, st = self._jobs[name]
        if not force and not await self.lease.held():
            st.skipped += 1
            return None
        st.runs += 1
        st.last_run_at = time.time()
        try:
            st.last_result = await (job() if force else self.lease.run_fenced(job))
        except LeaseLost as exc:
            st.fenced += 1
            st.last_error = str(exc)
            log.warning("leader job %s: %s", name, exc)
            return None
        except Exception as exc:
            st.failures += 1
            st.last_error = f"{type(exc).__name__}: {exc}"
            raise
        st.last_error = None
        return st.last_result

    async def _loop(self, name: str) -> None:
        st = self._jobs[name][1]
        while True:
            await asyncio.sleep(st.interval)
            try:
                await self.run_once(name)
            except Exception:
                log.warning("leader job %s failed: %s", name, st.last_error)

    def metrics(self) -> list[str]:
        """Prometheus lines for every job, and the lease's."""
        lines = [
            "# TYPE turnout_admin_leader_job_runs_total counter",
            *(
                f'turnout_admin_leader_job_runs_total{{job="{n}"}} {s.runs}'
                for n, s in self.stats.items()
            ),
            "# TYPE turnout_admin_leader_job_failures_total counter",
            *(
                f'turnout_admin_leader_job_failures_total{{job="{n}"}} {s.failures}'
                for n, s in self.stats.items()
            ),
            "# TYPE turnout_admin_leader_job_fenced_total counter",
            *(
                f'turnout_admin_leader_job_fenced_total{{job="{n}"}} {s.fenced}'
                for n, s in self.stats.items()
            ),
            *self.lease.metrics(),
        ]
        return lines

    def __repr__(self) -> str:
        return f"LeaderLoops({sorted(self._jobs)}, {self.lease!r})"
