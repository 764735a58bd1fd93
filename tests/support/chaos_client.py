"""Steady client load for the chaos run: keep-alive connections that retry on the other gateway.

Each worker sends ``GET <path>`` for its space's hostnames in turn, one request at a time (no
pipelining, so a gateway killed mid-answer can never have counted a request whose answer is
lost behind a reset). It prefers its space's *primary* gateway; a request that gets no answer
there (refused, reset, timed out) is sent once more to the other gateway, as a client behind a
load balancer with a retry policy would. A gateway that failed is avoided for ``cooldown``
seconds, then tried again (so a restarted one gets its traffic back).

Every request leaves one :class:`Outcome`: which gateway answered (or none), the status, when,
and whether it was a retry. Gateway ports are read through a callable on every connect: a
restarted gateway may listen on a new port.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tests.support.loadgen import _read_reply

Ports = Callable[[], dict[str, int]]  # gateway name -> its current port


@dataclass(slots=True)
class Outcome:
    space: str
    host: str
    at: float  # time.monotonic() when the answer (or the final failure) came
    gateway: str | None  # who answered; None: nobody did
    status: int  # 0: no answer from either gateway
    retried: bool  # the first gateway gave no answer
    error: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class RetryingLoad:
    """``workers`` keep-alive clients per space in a background thread, until :meth:`stop`."""

    def __init__(
        self,
        spaces: dict[str, Sequence[str]],  # space id -> its hostnames
        primary: dict[str, tuple[str, str]],  # space id -> (first gateway, the other one)
        ports: Ports,
        *,
        workers: int = 4,
        path: str = "/status/200",
        timeout: float = 10.0,
        cooldown: float = 0.5,
    ) -> None:
        self.spaces = {s: list(h) for s, h in spaces.items()}
        self.primary = primary
        self.ports = ports
        self.workers = workers
        self.path = path
        self.timeout = timeout
        self.cooldown = cooldown
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="chaos-load", daemon=True)
        self._avoid_until: dict[str, float] = {}

    def start(self) -> RetryingLoad:
        self._thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> list[Outcome]:
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("chaos load did not stop")
        if self._error is not None:
            raise self._error
        return self.outcomes

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # surfaced by stop()
            self._error = exc

    async def _run(self) -> None:
        tasks = [self._worker(space, i) for space in self.spaces for i in range(self.workers)]
        await asyncio.gather(*tasks)

    async def _worker(self, space: str, index: int) -> None:
        hosts = self.spaces[space]
        first, second = self.primary[space]
        conns: dict[str, _Conn] = {}
        n = index
        try:
            while not self._stop.is_set():
                host = hosts[n % len(hosts)]
                n += 1
                order = [first, second]
                if time.monotonic() < self._avoid_until.get(first, 0.0):
                    order.reverse()
                outcome = await self._once(space, host, order[0], conns, retried=False)
                if outcome.status == 0:
                    self._avoid_until[order[0]] = time.monotonic() + self.cooldown
                    outcome = await self._once(space, host, order[1], conns, retried=True)
                    if outcome.status == 0:
                        self._avoid_until[order[1]] = time.monotonic() + self.cooldown
                        await asyncio.sleep(0.05)  # both down: do not spin
                self.outcomes.append(outcome)
        finally:
            for conn in conns.values():
                await conn.close()

    async def _once(
        self, space: str, host: str, gw: str, conns: dict[str, _Conn], *, retried: bool
    ) -> Outcome:
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: chaos\r\n\r\n"
        ).encode()
        conn = conns.get(gw)
        try:
            if conn is None:
                port = self.ports()[gw]
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), self.timeout
                )
                conn = conns[gw] = _Conn(reader, writer)
            conn.writer.write(request)
            await conn.writer.drain()
            status, headers, _body = await asyncio.wait_for(_read_reply(conn.reader), self.timeout)
        except Exception as exc:  # refused, reset, closed, timed out: no answer from gw
            dropped = conns.pop(gw, None)
            if dropped is not None:
                await dropped.close()
            return Outcome(space, host, time.monotonic(), None, 0, retried, repr(exc)[:200])
        if any(k.lower() == b"connection" and b"close" in v.lower() for k, v in headers):
            dropped = conns.pop(gw, None)
            if dropped is not None:
                await dropped.close()
        return Outcome(space, host, time.monotonic(), gw, status, retried)
