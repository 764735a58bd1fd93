"""What bounds one caller's cost: concurrent body parses, and refused-request audit rows.

:class:`BodyParsers` runs CPU-heavy body parsing (YAML manifests) on a small thread pool of its
own, off the event loop and outside any SQL transaction, with at most ``per_principal`` parses
in flight for one principal (queued or running); one more is refused at once with 429
``too_many_requests`` and ``Retry-After``. A parse holds its slot until its thread is done, not
until its request is: a client that disconnects mid-parse cannot start another one while the
first still burns CPU.

:class:`WindowLimit` counts events per key in fixed windows (one minute for the audit log): the
first ``limit`` are allowed, the next one is the last (the caller records that the rest are
being dropped), the others are dropped until the window turns. Memory is one entry per key seen
in the current window.

Both are per admin process; with several instances the bound is per instance.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import time
from collections.abc import Callable
from typing import Any, TypeVar

from admin.errors import TooManyRequests

T = TypeVar("T")

RETRY_AFTER_SECONDS = 1  # a parse is bounded to tens of milliseconds


class BodyParsers:
    """A thread pool for body parsing with a per-principal bound on parses in flight."""

    def __init__(self, threads: int = 2, per_principal: int = 2) -> None:
        if threads < 1 or per_principal < 1:
            raise ValueError("threads and per_principal must be at least 1")
        self.threads = threads
        self.per_principal = per_principal
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._in_flight: dict[str, int] = {}

    def in_flight(self, principal_id: str) -> int:
        return self._in_flight.get(principal_id, 0)

    async def parse(self, principal_id: str, fn: Callable[[bytes], T], raw: bytes) -> T:
        """``fn(raw)`` on the pool; 429 if ``principal_id`` already has its parses in flight."""
        held = self._in_flight.get(principal_id, 0)
        if held >= self.per_principal:
            raise TooManyRequests(
                f"at most {self.per_principal} request bodies of one caller are parsed at once; "
                f"retry in {RETRY_AFTER_SECONDS} s",
                retry_after=RETRY_AFTER_SECONDS,
            )
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self.threads, thread_name_prefix="turnout-parse"
            )
        loop = asyncio.get_running_loop()
        self._in_flight[principal_id] = held + 1
        try:
            future = self._pool.submit(fn, raw)
        except BaseException:
            self._release(principal_id)
            raise

        def done(_: concurrent.futures.Future[Any]) -> None:
            loop.call_soon_threadsafe(self._release, principal_id)

        future.add_done_callback(done)
        return await asyncio.wrap_future(future)

    def _release(self, principal_id: str) -> None:
        left = self._in_flight.get(principal_id, 0) - 1
        if left > 0:
            self._in_flight[principal_id] = left
        else:
            self._in_flight.pop(principal_id, None)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __repr__(self) -> str:
        busy = sum(self._in_flight.values())
        return f"<BodyParsers threads={self.threads} per_principal={self.per_principal} {busy} in flight>"


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
