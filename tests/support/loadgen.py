"""A small, fast HTTP/1.1 load client for end-to-end tests: asyncio raw sockets, keep-alive,
optional pipelining, no frameworks.

:func:`run_load` sends requests from a few keep-alive connections, each writing up to ``depth``
requests at once and reading the answers in order, and returns one :class:`Reply` per request
(including the failures: ``status == 0`` with ``error`` set). :class:`LoadThread` runs the same
loop in a background thread until told to stop, for tests that change the world (publish routes,
stop Redis, send SIGTERM) while traffic flows.

Responses must be framed by ``Content-Length`` or chunked encoding (every answer of the gateway
and of :mod:`tests.support.upstream` is); a connection the server closes (``Connection: close``,
or drained) is reopened for the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

RequestFactory = Callable[[int], bytes]  # request number -> request bytes


@dataclass(slots=True)
class Reply:
    """What happened to one request. ``status == 0`` means no response (see ``error``)."""

    index: int
    status: int
    body: bytes
    t_sent: float  # time.monotonic() when the request was written
    t_done: float  # ... when its response (or failure) was seen
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def header(self, name: bytes) -> bytes | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None


@dataclass
class LoadStats:
    replies: list[Reply]
    connects: int = 0
    connect_failures: int = 0  # connection attempts refused (e.g. the listener was closed)
    started: float = 0.0
    finished: float = 0.0

    @property
    def failures(self) -> list[Reply]:
        return [r for r in self.replies if r.status == 0]

    @property
    def rate(self) -> float:
        span = self.finished - self.started
        return len(self.replies) / span if span > 0 else 0.0


class _Closed(Exception):
    pass


async def _read_reply(reader: asyncio.StreamReader) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise _Closed(f"closed before a response head ({len(exc.partial)} bytes)") from None
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        value = value.strip()
        headers.append((name, value))
        lname = name.lower()
        if lname == b"content-length":
            length = int(value)
        elif lname == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    try:
        if status in (101, 204, 304) or 100 <= status < 200:
            body = b""
        elif chunked:
            parts: list[bytes] = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass
                    break
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            body = b"".join(parts)
        elif length is not None:
            body = await reader.readexactly(length)
        else:
            body = await reader.read()  # close-delimited
            headers.append((b"x-loadgen-close-delimited", b"1"))
    except asyncio.IncompleteReadError as exc:
        raise _Closed(f"closed mid-body ({len(exc.partial)} bytes)") from None
    return status, headers, body


def _closes(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(k.lower() == b"connection" and b"close" in v.lower() for k, v in headers) or any(
        k == b"x-loadgen-close-delimited" for k, _ in headers
    )


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


async def _connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    factory: RequestFactory,
    numbers: Iterator[int],
    depth: int,
    stop: Callable[[], bool],
    stats: LoadStats,
    timeout: float,
) -> bool:
    """Serve requests on one connection until it must be reopened (True) or the work is done
    (False)."""
    while not stop():
        batch = list(itertools.islice(numbers, depth))
        if not batch:
            return False
        sent = time.monotonic()
        unanswered = list(batch)
        reopen = False
        try:
            writer.write(b"".join(factory(i) for i in batch))
            await writer.drain()
            while unanswered:
                status, headers, body = await asyncio.wait_for(_read_reply(reader), timeout)
                i = unanswered.pop(0)
                stats.replies.append(Reply(i, status, body, sent, time.monotonic(), headers))
                if _closes(headers):
                    reopen = True
                    break
            error = "closed by the server"  # pipelined behind a "Connection: close" answer
        except (_Closed, OSError, TimeoutError) as exc:
            reopen = True
            error = repr(exc)
        now = time.monotonic()
        for j in unanswered:
            stats.replies.append(Reply(j, 0, b"", sent, now, error=error))
        if reopen:
            return True
    return False


async def _worker(
    port: int,
    factory: RequestFactory,
    numbers: Iterator[int],
    depth: int,
    stop: Callable[[], bool],
    stats: LoadStats,
    timeout: float,
) -> None:
    while not stop():
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), timeout
            )
        except (OSError, TimeoutError):
            stats.connect_failures += 1
            return  # the listener is gone: this connection is done
        stats.connects += 1
        try:
            again = await _connection(reader, writer, factory, numbers, depth, stop, stats, timeout)
        finally:
            await _close(writer)
        if not again:
            return


async def run_load_async(
    port: int,
    factory: RequestFactory,
    *,
    count: int | None = None,
    connections: int = 4,
    depth: int = 1,
    stop: Callable[[], bool] = lambda: False,
    timeout: float = 10.0,
    stats: LoadStats | None = None,
) -> LoadStats:
    """Send ``count`` requests (or until ``stop()``) from ``connections`` keep-alive connections,
    up to ``depth`` pipelined on each; requests are numbered from 0 and built by ``factory``.
    Replies are appended to ``stats`` (a fresh one by default) as they arrive."""
    numbers: Iterator[int] = iter(range(count)) if count is not None else itertools.count()
    if stats is None:
        stats = LoadStats([])
    stats.started = time.monotonic()
    await asyncio.gather(
        *(_worker(port, factory, numbers, depth, stop, stats, timeout) for _ in range(connections))
    )
    stats.finished = time.monotonic()
    stats.replies.sort(key=lambda r: r.index)  # they arrive interleaved across connections
    return stats


def run_load(
    port: int,
    factory: RequestFactory,
    *,
    count: int,
    connections: int = 8,
    depth: int = 16,
    timeout: float = 10.0,
) -> LoadStats:
    """Blocking :func:`run_load_async` for exactly ``count`` requests."""
    return asyncio.run(
        run_load_async(
            port, factory, count=count, connections=connections, depth=depth, timeout=timeout
        )
    )


class LoadThread:
    """Continuous load in a background thread until :meth:`stop` (which returns the stats)."""

    def __init__(
        self,
        port: int,
        factory: RequestFactory,
        *,
        connections: int = 4,
        depth: int = 1,
        timeout: float = 10.0,
    ) -> None:
        self.port = port
        self.factory = factory
        self.connections = connections
        self.depth = depth
        self.timeout = timeout
        self._stop = threading.Event()
        self.stats = LoadStats([])  # live: replies are appended while the load runs
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="loadgen", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(
                run_load_async(
                    self.port,
                    self.factory,
                    connections=self.connections,
                    depth=self.depth,
                    stop=self._stop.is_set,
                    timeout=self.timeout,
                    stats=self.stats,
                )
            )
        except BaseException as exc:  # surfaced by stop()
            self._error = exc

    def start(self) -> LoadThread:
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 30.0) -> LoadStats:
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("load thread did not stop")
        if self._error is not None:
            raise self._error
        return self.stats

    def join(self, timeout: float = 30.0) -> LoadStats:
        """Wait for the load to end by itself (every connection refused), without stopping it."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("load thread still running")
        if self._error is not None:
            raise self._error
        return self.stats
