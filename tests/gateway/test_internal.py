"""The internal listener over real sockets, and the metrics exposition format."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from gateway.counters import Counters
from gateway.flusher import CounterFlusher, MemoryCounterSink
from gateway.internal import InternalServer, render_metrics
from routing.errors import StoreError
from routing.store import LogEntry, MemoryRouteStore, SyncPoint
from routing.table import RouteTable
from routing.tablestate import TableState
from tests.routing.store_support import make_record

STATES = [s.value for s in TableState]
POOL = {"idle": 3, "active": 2, "waiting": 1, "connects": 9, "connect_errors": 4, "reuses": 20}

# name{label="value",...} value   (labels are mandatory here: every sample has `worker`)
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"'
SAMPLE = re.compile(
    rf"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{{(?P<labels>{_LABEL}(?:,{_LABEL})*)\}} "
    r"(?P<value>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]Inf|NaN)$"
)
COMMENT = re.compile(
    r"^# (?:HELP [a-zA-Z_:][a-zA-Z0-9_:]* .+|TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (?:counter|gauge))$"
)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


async def request(port: int, raw: bytes) -> Reply:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5.0)  # the server closes after answering
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(status_line.split()[1]), headers, body)


async def get(port: int, path: str, method: str = "GET") -> Reply:
    return await request(port, f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())


def parse_metrics(text: str) -> dict[str, float]:
    """Check the exposition line by line; return {'name{labels}': value}."""
    samples: dict[str, float] = {}
    typed: set[str] = set()
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("#"):
            assert COMMENT.match(line), line
            if line.startswith("# TYPE "):
                typed.add(line.split()[2])
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        assert m["name"] in typed, f"{m['name']} has no # TYPE before its samples"
        assert 'worker="' in m["labels"], line
        samples[f"{m['name']}{{{m['labels']}}}"] = float(m["value"])
    return samples


@pytest.fixture
async def table() -> AsyncIterator[RouteTable]:
    t = RouteTable(MemoryRouteStore(), block_ms=50)
    yield t
    await t.stop()


@pytest.fixture
async def server(table: RouteTable) -> AsyncIterator[InternalServer]:
    counters = Counters()
    srv = InternalServer(
        table,
        counters,
        pool_stats=lambda: dict(POOL),
        flusher=CounterFlusher(counters, MemoryCounterSink()),
        host="127.0.0.1",
        port=0,
        worker=3,
    )
    await srv.start()
    yield srv
    await srv.stop()


async def test_healthz(server: InternalServer) -> None:
    assert server.port > 0
    reply = await get(server.port, "/healthz")
    assert reply.status == 200
    assert orjson.loads(reply.body) == {"status": "ok"}
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["content-length"] == str(len(reply.body))
    assert reply.headers["connection"] == "close"
    assert (await get(server.port, "/healthz?verbose=1")).status == 200


async def test_readyz_follows_the_route_table(server: InternalServer, table: RouteTable) -> None:
    reply = await get(server.port, "/readyz")
    assert reply.status == 503
    body = orjson.loads(reply.body)
    assert body["status"] == "not_ready"
    assert body["table"]["synced"] is False and body["table"]["records"] == 0
    assert body["table"]["state"] == "cold"

    assert isinstance(table.store, MemoryRouteStore)
    await table.store.publish(make_record("app.example.com"))
    assert await table.start(wait=5.0)

    reply = await get(server.port, "/readyz")
    assert reply.status == 200
    body = orjson.loads(reply.body)
    assert body["status"] == "ready"
    assert body["table"]["records"] == 1 and body["table"]["synced"] is True
    assert body["table"]["state"] == "current"


async def test_metrics_parse_as_prometheus_text(server: InternalServer, table: RouteTable) -> None:
    counters = server.counters
    for status in (200, 200, 204, 301, 404, 502, 504, 101, 0):
        counters.answered(status, timeout=status == 504)
    counters.connect_errors = 2
    counters.record(b"sp", b"svc", b"dep", 200, 1, 1.0, False)

    reply = await get(server.port, "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    m = parse_metrics(reply.body.decode())

    w = 'worker="3"'
    assert m[f'turnout_requests_total{{{w},class="2xx"}}'] == 3
    assert m[f'turnout_requests_total{{{w},class="1xx"}}'] == 1
    assert m[f'turnout_requests_total{{{w},class="3xx"}}'] == 1
    assert m[f'turnout_requests_total{{{w},class="4xx"}}'] == 1
    assert m[f'turnout_requests_total{{{w},class="5xx"}}'] == 2
    assert m[f'turnout_requests_total{{{w},class="other"}}'] == 1
    assert m[f"turnout_request_timeouts_total{{{w}}}"] == 1
    assert m[f"turnout_upstream_connect_errors_total{{{w}}}"] == 2
    assert m[f'turnout_upstream_pool_connections{{{w},state="idle"}}'] == 3
    assert m[f'turnout_upstream_pool_connections{{{w},state="active"}}'] == 2
    assert m[f"turnout_upstream_pool_waiting{{{w}}}"] == 1
    assert m[f"turnout_upstream_connects_total{{{w}}}"] == 9
    assert m[f"turnout_route_table_records{{{w}}}"] == 0
    assert m[f"turnout_route_table_staleness_seconds{{{w}}}"] == 0
    assert m[f"turnout_route_table_resyncs_total{{{w}}}"] == 0
    assert m[f"turnout_route_table_stale{{{w}}}"] == 0
    assert m[f"turnout_route_table_connected{{{w}}}"] == 0
    assert m[f'turnout_route_table_state{{{w},state="cold"}}'] == 1
    assert m[f'turnout_route_table_state{{{w},state="current"}}'] == 0
    assert m[f"turnout_counter_flush_errors_total{{{w}}}"] == 0
    assert m[f"turnout_counter_pending_keys{{{w}}}"] == 1

    assert isinstance(table.store, MemoryRouteStore)
    await table.store.publish(make_record("app.example.com"))
    await table.start()
    m = parse_metrics((await get(server.port, "/metrics")).body.decode())
    assert m[f"turnout_route_table_records{{{w}}}"] == 1
    assert m[f"turnout_route_table_connected{{{w}}}"] == 1
    assert m[f"turnout_route_table_ready{{{w}}}"] == 1
    states = {k: v for k, v in m.items() if k.startswith("turnout_route_table_state{")}
    assert states == {
        f'turnout_route_table_state{{{w},state="{s}"}}': int(s == "current")
        for s in ("cold", "snapshot", "current", "stale", "lost")
    }


async def test_unknown_paths_and_methods_are_404(server: InternalServer) -> None:
    for method, path in (("GET", "/"), ("GET", "/health"), ("POST", "/healthz"), ("GET", "/x")):
        reply = await get(server.port, path, method)
        assert reply.status == 404, (method, path)
        assert orjson.loads(reply.body)["error"]["code"] == "not_found"


async def test_head_has_headers_but_no_body(server: InternalServer) -> None:
    reply = await get(server.port, "/metrics", "HEAD")
    assert reply.status == 200 and reply.body == b""
    assert int(reply.headers["content-length"]) > 100


async def test_malformed_and_oversized_requests(server: InternalServer) -> None:
    assert (await request(server.port, b"NONSENSE\r\n\r\n")).status == 400
    assert (await request(server.port, b"GET /healthz SPDY/3\r\n\r\n")).status == 400
    huge = b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n"
    assert (await request(server.port, huge)).status == 431
    many = b"GET /healthz HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n"
    assert (await request(server.port, many)).status == 431
    # A client that connects and leaves without a word gets nothing and breaks nothing.
    _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.close()
    await writer.wait_closed()
    assert (await get(server.port, "/healthz")).status == 200


async def test_stop_closes_the_listener(table: RouteTable) -> None:
    srv = InternalServer(table, Counters(), pool_stats=dict, flusher=None, host="127.0.0.1", port=0)
    await srv.start()
    port = srv.port
    assert "listening" in repr(srv)
    with pytest.raises(RuntimeError):
        await srv.start()
    await srv.stop()
    await srv.stop()  # idempotent
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


def test_render_metrics_is_pure_and_complete() -> None:
    counters = Counters()
    counters.answered(200)
    flusher = CounterFlusher(counters, MemoryCounterSink())
    flusher.flush_errors = 5
    stats = {
        "records": 12,
        "staleness_seconds": 3.25,
        "resyncs": 2,
        "stale": True,
        "connected": False,
        "synced": True,
    }
    text = render_metrics(
        counters=counters, table_stats=stats, pool_stats={}, flusher=flusher, worker=1
    ).decode()
    m = parse_metrics(text)
    assert m['turnout_route_table_staleness_seconds{worker="1"}'] == 3.25
    assert m['turnout_route_table_stale{worker="1"}'] == 1
    assert m['turnout_route_table_resyncs_total{worker="1"}'] == 2
    assert m['turnout_counter_flush_errors_total{worker="1"}'] == 5
    assert m['turnout_upstream_pool_connections{worker="1",state="idle"}'] == 0
    for name in (
        "turnout_requests_total",
        "turnout_request_timeouts_total",
        "turnout_upstream_connect_errors_total",
        "turnout_upstream_pool_connections",
        "turnout_upstream_pool_waiting",
        "turnout_upstream_connects_total",
        "turnout_route_table_records",
        "turnout_route_table_staleness_seconds",
        "turnout_route_table_resyncs_total",
        "turnout_route_table_stale",
        "turnout_route_table_connected",
        "turnout_counter_flush_errors_total",
    ):
        assert f"# HELP {name} " in text and f"# TYPE {name} " in text, name
    # No flusher (embedded mode without a store): the series still exists, at 0.
    m = parse_metrics(
        render_metrics(counters=counters, table_stats={}, pool_stats={}, flusher=None).decode()
    )
    assert m['turnout_counter_flush_errors_total{worker="0"}'] == 0


class UnreachableStore(MemoryRouteStore):
    """A memory store that can be made unreachable, as a Redis that stopped answering."""

    down = False

    async def sync_point(self) -> SyncPoint:
        if self.down:
            raise StoreError("store unreachable (test)")
        return await super().sync_point()

    async def read_log(self, after: str, count: int, block_ms: int) -> list[LogEntry]:
        if self.down:
            raise StoreError("store unreachable (test)")
        return await super().read_log(after, count, min(block_ms, 20))


async def test_readyz_and_metrics_follow_the_table_through_an_outage_and_a_loss() -> None:
    store = UnreachableStore()
    await store.replace_all([make_record("app.example.com")], epoch="e1")
    table = RouteTable(
        store, block_ms=20, check_interval=0.02, backoff_initial=0.01, backoff_max=0.02
    )
    srv = InternalServer(
        table, Counters(), pool_stats=dict, flusher=None, host="127.0.0.1", port=0, worker=1
    )
    await srv.start()
    w = 'worker="1"'

    async def seen() -> tuple[int, dict[str, Any], dict[str, float]]:
        reply = await get(srv.port, "/readyz")
        metrics = parse_metrics((await get(srv.port, "/metrics")).body.decode())
        return reply.status, orjson.loads(reply.body)["table"], metrics

    async def until_state(state: str) -> tuple[int, dict[str, Any], dict[str, float]]:
        for _ in range(300):
            status, doc, m = await seen()
            if doc["state"] == state:
                gauges = {s: m[f'turnout_route_table_state{{{w},state="{s}"}}'] for s in STATES}
                assert gauges == {s: int(s == state) for s in STATES}, gauges
                return status, doc, m
            await asyncio.sleep(0.01)
        raise AssertionError(f"the table never reached {state}: {doc}")

    try:
        assert await table.start(wait=5.0)
        status, doc, m = await until_state("current")
        assert status == 200 and doc["stale"] is False
        assert m[f"turnout_route_table_stale{{{w}}}"] == 0

        store.down = True  # the store stops answering: served, no longer known-current
        status, doc, m = await until_state("stale")
        assert status == 200 and doc["stale"] is True and doc["connected"] is False
        assert m[f"turnout_route_table_stale{{{w}}}"] == 1
        assert m[f"turnout_route_table_connected{{{w}}}"] == 0
        assert m[f"turnout_route_table_ready{{{w}}}"] == 1  # still serving: still ready

        store.down = False  # back, same epoch, unbroken log: current again, no resync
        status, doc, m = await until_state("current")
        assert status == 200 and doc["stale"] is False and doc["resyncs"] == 0
        assert doc["reconnects"] == 1 and doc["staleness_seconds"] == 0

        store.forget_everything()  # "Redis restarted empty": the table keeps what it had
        status, doc, m = await until_state("lost")
        assert status == 200 and doc["stale"] is True and doc["records"] == 1
        assert m[f"turnout_route_table_stale{{{w}}}"] == 1

        await store.replace_all([make_record("new.example.com")], epoch="e2")  # a full publish
        status, doc, m = await until_state("current")
        assert status == 200 and doc["epoch"] == "e2" and doc["resyncs"] == 1
    finally:
        await srv.stop()
        await table.stop()
