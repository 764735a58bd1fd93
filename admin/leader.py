"""The admin's leader lease and the background loops that run only on its holder.

Theory of operation
-------------------
Several admin instances may run against one PostgreSQL database. Work that must happen exactly
once at a time — publishing the outbox, full resyncs, and the periodic loops (usage collector,
rollout reconciler, pod lease reaper) — runs only on the instance holding the lease
``{prefix}:leader:publisher`` in the runtime state (Redis, or this process in ``turnout dev``).

:class:`Lease` takes the lease when it is free and renews it when this instance holds it; every
check does one or the other, so a holder that keeps checking keeps the lease, and a holder that
dies loses it after ``ttl_ms``. A check that cannot reach the store answers False (fail closed:
no instance acts on a lease it cannot see).

:class:`LeaderLoops` runs named jobs, each every ``interval`` seconds, each only while the lease
is held. A job's failure is logged and counted, never fatal; the next tick runs it again. Jobs
must be idempotent with respect to SQL: the lease only makes double work unlikely (a holder that
stalls past its TTL can overlap its successor), so every job commits its decisions with
optimistic locking or in transactions that make a repeat harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from routing.errors import StoreError
from routing.runtime_state import RuntimeState

log = logging.getLogger("turnout.admin.leader")

LEASE_MS = 30_000
Job = Callable[[], Awaitable[Any]]


class Lease:
    """One named leader lease in the runtime state, owned by this process."""

    def __init__(self, runtime: RuntimeState, name: str = "publisher", ttl_ms: int = LEASE_MS):
        self.runtime = runtime
        self.key = runtime.keys.leader(name)
        self.ttl_ms = ttl_ms
        self.owner = secrets.token_hex(8)
        self.last_error: str | None = None

    async def held(self) -> bool:
        """Take or renew the lease; True when this process holds it now."""
        try:
            ok = await self.runtime.acquire_lease(self.key, self.owner, self.ttl_ms)
        except StoreError as exc:
            self.last_error = str(exc)
            return False
        self.last_error = None
        return ok

    async def release(self) -> None:
        """Give the lease up (on shutdown), so another instance takes over at once."""
        with contextlib.suppress(StoreError):
            await self.runtime.release_lease(self.key, self.owner)

    def __repr__(self) -> str:
        return f"Lease({self.key!r}, owner={self.owner}, ttl_ms={self.ttl_ms})"


@dataclass(slots=True)
class JobStats:
    name: str
    interval: float
    runs: int = 0
    failures: int = 0
    skipped: int = 0  # ticks on which another instance held the lease
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
        """Run one job now (tests, operators). Without ``force`` only on the lease holder;
        returns the job's result, or None when the lease is held elsewhere."""
        job, st = self._jobs[name]
        if not force and not await self.lease.held():
            st.skipped += 1
            return None
        st.runs += 1
        st.last_run_at = time.time()
        try:
            st.last_result = await job()
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
        """Prometheus lines for every job."""
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
        ]
        return lines

    def __repr__(self) -> str:
        return f"LeaderLoops({sorted(self._jobs)}, {self.lease!r})"
