"""What bounds one caller's cost: concurrent body parses, and failure rows in the audit log.

:class:`BodyParsers` runs CPU-heavy body parsing (YAML manifests) in worker *processes*, outside
any SQL transaction, with at most ``per_principal`` parses in flight for one principal (queued or
running); one more is refused at once with 429 ``too_many_requests`` and ``Retry-After``.

Why processes and not threads: a parsing thread shares the GIL with the event loop, and the
loop then waits for it on every handoff. Measured with ``benchmarks/manifest_dos.py`` (four
principals posting worst-case manifests, 2-core VM): ``GET /healthz`` p99 ~140 ms with a parse
thread (even with a 0.5 ms switch interval) against ~16 ms with one worker process. Workers are
forked from multiprocessing's fork server (a clean process that preloaded the parser), not from
the admin itself, so they inherit none of its threads, sockets or locks. A parse function must
therefore be a module-level function whose argument, result and :class:`ApiError` are
picklable; ``admin.manifest.manifest_body`` is the one in use.

A parse holds its principal's slot until the worker is done with it, not until its request is: a
client that disconnects mid-parse cannot start another one while the first still burns CPU. A
worker that dies (a crash in a C extension) fails the requests it had with 503 ``unavailable``
and is replaced on the next parse; the admin itself is unaffected.

:class:`WindowLimit` counts events per key in fixed windows (a minute for the audit log): the
first ``limit`` are allowed, the next one is the last (the caller records that the rest are
being dropped), the others are dropped until the window turns. Memory is one entry per key seen
in the current window.

Both bound one admin process; with several instances the bound is per instance.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Final, TypeVar

from admin.errors import TooManyRequests, Unavailable

T = TypeVar("T")

RETRY_AFTER_SECONDS: Final = 1  # one parse is bounded to tens of milliseconds
PRELOAD: Final = ["admin.manifest"]  # imported once by the fork server, inherited by workers


class BodyParsers:
    """Worker processes for body parsing, with a per-principal bound on parses in flight."""

    def __init__(self, workers: int = 1, per_principal: int = 2) -> None:
        if workers < 1 or per_principal < 1:
            raise ValueError("workers and per_principal must be at least 1")
        self.workers = workers
        self.per_principal = per_principal
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._in_flight: dict[str, int] = {}

    def in_flight(self, principal_id: str) -> int:
        return self._in_flight.get(principal_id, 0)

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(PRELOAD)  # (no effect once the server runs)
            self._pool = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=context)
        return self._pool

    def check(self, principal_id: str) -> None:
        """429 if ``principal_id`` has its parses in flight (cheap: call it before other work)."""
        if self._in_flight.get(principal_id, 0) >= self.per_principal:
            raise TooManyRequests(
                f"at most {self.per_principal} request bodies of one caller are parsed at once; "
                f"retry in {RETRY_AFTER_SECONDS} s",
                retry_after=RETRY_AFTER_SECONDS,
            )

    async def parse(self, principal_id: str, fn: Callable[[bytes], T], raw: bytes) -> T:
        """``fn(raw)`` in a worker; 429 if ``principal_id`` already has its parses in flight."""
        self.check(principal_id)
        held = self._in_flight.get(principal_id, 0)
        loop = asyncio.get_running_loop()
        self._in_flight[principal_id] = held + 1
        try:
            pool = self._executor()
            future = pool.submit(fn, raw)
        except BaseException:
            self._release(principal_id)
            raise

        def done(_: concurrent.futures.Future[Any]) -> None:
            # (RuntimeError: the loop is closed, the admin is shutting down)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._release, principal_id)

        future.add_done_callback(done)
        try:
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            if self._pool is pool:  # the next parse starts a new worker
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
            raise Unavailable("the request body could not be parsed (worker lost); retry") from None

    def _release(self, principal_id: str) -> None:
        left = self._in_flight.get(principal_id, 0) - 1
        if left > 0:
            self._in_flight[principal_id] = left
        else:
            self._in_flight.pop(principal_id, None)

    async def aclose(self) -> None:
        """Stop the workers (waits for parses already running; queued ones are cancelled)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    def __repr__(self) -> str:
        busy = sum(self._in_flight.values())
        return (
            f"<BodyParsers workers={self.workers} per_principal={self.per_principal} "
            f"{busy} in flight>"
        )


class Verdict(enum.Enum):
    ALLOW = "allow"
    LAST = "last"  # the first one over the limit: record that the rest are dropped
    DROP = "drop"


class WindowLimit:
    """At most ``limit`` events per key per fixed window of ``window`` seconds."""

    def __init__(
        self, limit: int, window: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._epoch = -1
        self._counts: dict[str, int] = {}

    def check(self, key: str) -> Verdict:
        epoch = int(self._clock() // self.window)
        if epoch != self._epoch:
            self._epoch = epoch
            self._counts = {}
        n = self._counts.get(key, 0) + 1
        self._counts[key] = min(n, self.limit + 2)
        if n <= self.limit:
            return Verdict.ALLOW
        return Verdict.LAST if n == self.limit + 1 else Verdict.DROP

    def __repr__(self) -> str:
        return f"<WindowLimit {self.limit}/{self.window:g}s keys={len(self._counts)}>"
