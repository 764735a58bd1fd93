"""The flat route table (routing/flat.py) and the route table's flat mode.

Format: any set of valid records gives the same lookups through the mapped file as through
today's in-memory table (property-based); a truncated, bit-flipped or wrong-version file is
refused with a clear log line and the table resyncs from the store, never a crash or a wrong
route. Flat mode: overlay + compaction under concurrent updates never goes back a version, two
workers (a writer and a reader on one file) agree after a swap, a cold start serves from the
file before the store answers, deletions survive compactions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routing.compiled import CompiledRoute, Interner
from routing.errors import RecordError, StoreError
from routing.flat import (
    HEADER,
    ColdRoutes,
    FlatBuilder,
    FlatError,
    FlatFile,
    find_route,
    record_head,
)
from routing.models import RouteRecord, decode_record, encode_record
from routing.store import LogEntry, MemoryRouteStore, SyncPoint
from routing.table import RouteTable
from routing.upstreams import UpstreamRegistry
from tests.routing.store_support import hosts, make_record, wait_until

FAST: dict[str, Any] = {
    "block_ms": 50,
    "check_interval": 0.05,
    "backoff_initial": 0.02,
    "backoff_max": 0.2,
    "snapshot_interval": 0.05,
}


def canary_record(host: str, version: int, weight: int) -> RouteRecord:
    return decode_record(
        {
            "host": host,
            "version": version,
            "space_id": "space-c",
            "service_id": "svc-c",
            "updated_at": 1_700_000_000_000,
            "endpoints": [
                {
                    "path_prefix": "/",
                    "methods": [],
                    "targets": [
                        {
                            "deployment_id": "stable",
                            "weight": 10000 - weight,
                            "status": "active",
                            "upstreams": ["http://127.0.0.1:9001"],
                        },
                        {
                            "deployment_id": "canary",
                            "weight": weight,
                            "status": "canary",
                            "upstreams": ["http://127.0.0.1:9002"],
                        },
                    ],
                },
                {
                    "path_prefix": "/api",
                    "methods": ["GET"],
                    "targets": [
                        {
                            "deployment_id": "api",
                            "weight": 10000,
                            "status": "active",
                            "upstreams": ["http://127.0.0.1:9003", "http://127.0.0.1:9004"],
                        }
                    ],
                },
            ],
        }
    )


def build(path: Path, records: list[RouteRecord], epoch: str = "e1", last_id: str = "1-0") -> None:
    builder = FlatBuilder(str(path))
    for r in records:
        builder.add(r.host.encode(), r.version, encode_record(r))
    builder.finish(epoch, last_id)


def same(a: CompiledRoute | None, b: CompiledRoute | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.to_record() == b.to_record()


LABELS = st.sampled_from(["a", "b", "shop", "api", "x1", "long-label-name", "xn--bcher-kva"])


@st.composite
def record_sets(draw: st.DrawFn) -> list[RouteRecord]:
    names = draw(
        st.lists(
            st.tuples(st.booleans(), LABELS, LABELS).map(
                lambda t: ("*." if t[0] else "") + f"{t[1]}.{t[2]}.example.com"
            ),
            unique=True,
            max_size=25,
        )
    )
    out = []
    for name in names:
        version = draw(st.integers(1, 2**40))
        if draw(st.booleans()):
            out.append(canary_record(name, version, draw(st.integers(1, 9999))))
        else:
            out.append(make_record(name, version, port=draw(st.integers(1, 65535))))
    return out


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(records=record_sets(), probes=st.lists(st.tuples(LABELS, LABELS, LABELS), max_size=20))
def test_round_trip_same_lookups_as_the_memory_table(
    tmp_path: Path, records: list[RouteRecord], probes: list[tuple[str, str, str]]
) -> None:
    path = tmp_path / "t.flat"
    build(path, records)
    flat = FlatFile(str(path))
    assert flat.count == len(records)
    registry = UpstreamRegistry()
    memory = {r.host.encode(): CompiledRoute(r, registry, Interner(registry)) for r in records}
    cold = ColdRoutes(flat, registry, limit=7)  # a small bound: evictions happen
    names = [r.host for r in records] + [f"{a}.{b}.{c}.example.com" for a, b, c in probes]
    names += [n.removeprefix("*.") for n in names] + ["nope.example.com", "x.a.a.example.com"]
    for _ in range(2):  # second pass: from the hot cache (or re-read after eviction)
        for name in names:
            key = name.encode()
            assert same(find_route({}, key, cold), find_route(memory, key)), name
    for r in records:
        assert flat.version(r.host.encode()) == r.version
        data = flat.record(r.host.encode())
        assert data is not None and decode_record(data) == r
    assert sorted(h for h, _v, _d in flat.items()) == sorted(r.host.encode() for r in records)


def test_a_host_added_twice_keeps_the_last(tmp_path: Path) -> None:
    path = tmp_path / "t.flat"
    builder = FlatBuilder(str(path))
    builder.add(b"a.example.com", 1, encode_record(make_record("a.example.com", 1)))
    builder.add(b"a.example.com", 2, encode_record(make_record("a.example.com", 2)))
    assert builder.finish("e", "1-0") == 1
    flat = FlatFile(str(path))
    assert flat.version(b"a.example.com") == 2
    assert [v for _h, v, _d in flat.items()] == [2]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_hosts_with_the_same_crc32_are_told_apart(tmp_path: Path) -> None:
    one, two = "c699378.example.com", "c18020006.example.com"
    assert zlib.crc32(one.encode()) == zlib.crc32(two.encode())
    path = tmp_path / "t.flat"
    build(path, [make_record(one, 1), make_record(two, 2), make_record(one, 3)])
    flat = FlatFile(str(path))
    assert (flat.count, flat.version(one.encode()), flat.version(two.encode())) == (2, 3, 2)
    assert flat.version(b"c0.example.com") == -1


def test_empty_table(tmp_path: Path) -> None:
    path = tmp_path / "t.flat"
    build(path, [], epoch="e0", last_id="0-0")
    flat = FlatFile(str(path))
    assert (flat.count, flat.epoch, flat.last_id) == (0, "e0", "0-0")
    assert flat.record(b"a.example.com") is None


def corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) - 9]
    elif how == "header-only":
        data = data[: HEADER.size - 1]
    elif how == "empty":
        data = bytearray()
    elif how == "flip-data":
        data[HEADER.size + 40] ^= 0x04
    elif how == "flip-index":
        data[-200] ^= 0x80
    elif how == "flip-meta":
        data[-5] ^= 0x01
    elif how == "flip-count":
        data[16] ^= 0x01
    elif how == "wrong-version":
        struct.pack_into("<I", data, 8, 2)
    elif how == "wrong-magic":
        data[0:8] = b"TRNFLAT0"
    elif how == "jsonl-snapshot":
        data = bytearray(b'{"format":"turnout-routes/1","epoch":null}\n')
    path.write_bytes(bytes(data))


CORRUPTIONS = [
    "truncated",
    "header-only",
    "empty",
    "flip-data",
    "flip-index",
    "flip-meta",
    "flip-count",
    "wrong-version",
    "wrong-magic",
    "jsonl-snapshot",
]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_a_damaged_file_is_refused(tmp_path: Path, how: str) -> None:
    path = tmp_path / "t.flat"
    build(path, [make_record(h, 3) for h in hosts(20)])
    corrupt(path, how)
    with pytest.raises(FlatError) as err:
        FlatFile(str(path))
    assert str(path) in str(err.value)


def test_missing_file_is_a_flat_error(tmp_path: Path) -> None:
    with pytest.raises(FlatError, match="cannot open"):
        FlatFile(str(tmp_path / "absent.flat"))


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"not json", "$"),
        (b"[1]", "$"),
        (b'{"host":"other.example.com","version":1}', "host"),
        (b'{"host":"a.example.com","version":-1}', "version"),
        (b'{"host":"a.example.com","version":true}', "version"),
        (b'{"host":"a.example.com"}', "version"),
    ],
)
def test_record_head_refuses(data: bytes, field: str) -> None:
    with pytest.raises(RecordError) as err:
        record_head("a.example.com", data)
    assert err.value.path == field


def test_record_head_refuses_a_non_ascii_host() -> None:
    with pytest.raises(RecordError) as err:
        record_head("bü.example.com", b'{"host":"b\\u00fc.example.com","version":1}')
    assert err.value.path == "host"


async def test_a_full_sync_skips_a_non_ascii_host_in_the_store(tmp_path: Path) -> None:
    store = await published(3)
    store._routes["bü.example.com"] = b'{"host":"b\\u00fc.example.com","version":1}'  # type: ignore[attr-defined]
    table = RouteTable(store, snapshot_path=str(tmp_path / "r.flat"), flat=True, **FAST)
    try:
        assert await table.start()
        assert table.invalid == 1 and FlatFile(str(tmp_path / "r.flat")).count == 3
    finally:
        await table.stop()


@pytest.mark.parametrize("flat", [False, True])
async def test_a_log_entry_for_a_non_ascii_host_is_ignored(tmp_path: Path, flat: bool) -> None:
    table = RouteTable(MemoryRouteStore(), snapshot_path=str(tmp_path / "r.flat"), flat=flat)
    table._apply(LogEntry(id="1-1", host="bü.example.com", version=2, record=None, epoch=None))
    assert table.invalid == 1 and table.routes == {}


def test_an_invalid_record_in_the_file_serves_no_route(tmp_path: Path) -> None:
    path = tmp_path / "t.flat"
    builder = FlatBuilder(str(path))
    builder.add(b"a.example.com", 1, b'{"host":"a.example.com","version":1,"endpoints":"x"}')
    builder.finish("e", "1-0")
    registry = UpstreamRegistry()
    cold = ColdRoutes(FlatFile(str(path)), registry)
    assert cold.get(b"a.example.com") is None
    assert cold.invalid == 1


def test_a_flood_of_unknown_names_never_evicts_hot_routes(tmp_path: Path) -> None:
    path = tmp_path / "t.flat"
    build(path, [make_record(h, 1) for h in hosts(10)])
    cold = ColdRoutes(FlatFile(str(path)), UpstreamRegistry(), limit=10)
    hot = [cold.get(h.encode()) for h in hosts(10)]
    assert all(r is not None for r in hot) and len(cold.cache) == 10
    for i in range(20_000):
        assert cold.get(f"scan{i}.attacker.test".encode()) is None
    assert len(cold.absent) == cold.absent_limit <= 4096
    misses = cold.misses
    assert [cold.get(h.encode()) for h in hosts(10)] == hot  # the same objects, from the cache
    assert cold.misses == misses


# ---------------------------------------------------------------------------- flat mode


async def published(n: int, version: int = 1) -> MemoryRouteStore:
    store = MemoryRouteStore()
    await store.replace_all([make_record(h, version) for h in hosts(n)], epoch="epoch-1")
    return store


@contextlib.asynccontextmanager
async def writer_and_reader(
    store: MemoryRouteStore, path: str
) -> AsyncIterator[tuple[RouteTable, RouteTable]]:
    """Two workers' tables on one flat file: the writer (worker 0) and a reader, started."""
    writer = RouteTable(store, snapshot_path=path, flat=True, **FAST)
    reader = RouteTable(store, snapshot_path=path, flat=True, flat_writer=False, **FAST)
    try:
        await writer.start()
        await reader.start()
        yield writer, reader
    finally:
        await reader.stop()
        await writer.stop()


def version_of(table: RouteTable, host: str) -> int | None:
    route = table.lookup(host.encode())
    return None if route is None else route.version


async def test_writer_builds_the_file_and_serves_from_it(tmp_path: Path) -> None:
    store = await published(200)
    path = str(tmp_path / "routes.flat")
    table = RouteTable(store, snapshot_path=path, flat=True, **FAST)
    try:
        assert await table.start()
        assert table.cold is not None and table.routes == {}
        assert FlatFile(path).count == 200
        assert version_of(table, "h00007.example.com") == 1
        assert table.lookup(b"nope.example.com") is None
        stats = table.stats()
        assert stats["records"] == 200
        assert stats["flat"]["file_records"] == 200
        assert stats["flat"]["mapped_bytes"] == FlatFile(path).size
        assert stats["flat"]["hot_misses"] == 3  # h00007, nope, then *.example.com
        assert stats["flat"]["hot_hits"] == 0
        table.lookup(b"h00007.example.com")
        assert table.stats()["flat"]["hot_hits"] == 1
    finally:
        await table.stop()


async def test_changes_go_to_the_overlay_then_a_compaction(tmp_path: Path) -> None:
    store = await published(50)
    path = str(tmp_path / "routes.flat")
    table = RouteTable(store, snapshot_path=path, flat=True, **FAST)
    try:
        await table.start()
        await store.publish(make_record("h00001.example.com", 2))
        await store.publish(make_record("new.example.com", 1))
        await store.delete("h00002.example.com", 2)
        await wait_until(lambda: version_of(table, "h00001.example.com") == 2, 2.0)
        await wait_until(lambda: table.lookup(b"h00002.example.com") is None, 2.0)
        assert version_of(table, "new.example.com") == 1
        await wait_until(lambda: table.compactions >= 1 and not table.routes, 3.0)
        flat = FlatFile(path)
        assert flat.version(b"h00001.example.com") == 2
        assert flat.version(b"new.example.com") == 1
        assert flat.version(b"h00002.example.com") == -1
        assert table.cold is not None and not table.cold.deleted
        assert table.record_count() == 50
        assert table.lookup(b"h00002.example.com") is None
        assert version_of(table, "h00001.example.com") == 2
    finally:
        await table.stop()


async def test_versions_never_go_back_under_concurrent_updates(tmp_path: Path) -> None:
    """Updates stream in while compactions swap files; every observed version of every host
    only grows, and the end state is the store's."""
    store = await published(100)
    path = str(tmp_path / "routes.flat")
    names = hosts(100)
    seen: dict[tuple[int, str], int] = {}
    async with writer_and_reader(store, path) as (writer, reader):
        stop = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                for i, table in enumerate((writer, reader)):
                    for name in names[:30]:
                        v = version_of(table, name) or 0
                        assert v >= seen.get((i, name), 0), (i, name, v)
                        seen[i, name] = v
                await asyncio.sleep(0.001)

        watcher = asyncio.create_task(watch())
        compactions: list[asyncio.Task[None]] = []
        for version in range(2, 40):
            for name in names[: 10 + version % 20]:
                await store.publish(make_record(name, version))
            if version % 8 == 0:  # compactions run while updates keep coming
                compactions.append(asyncio.create_task(writer._write_snapshot()))
            await asyncio.sleep(0.01)
        await asyncio.gather(*compactions)
        want = {h: (v if v >= 0 else None) for h, v in (await store.versions()).items()}
        for table in (writer, reader):
            await wait_until(
                lambda t=table: all(version_of(t, h) == v for h, v in want.items()), 5.0
            )
        stop.set()
        await watcher
        assert writer.compactions >= len(compactions)
        await wait_until(
            lambda: reader.cold is not None and reader.cold.flat.inode == FlatFile(path).inode, 3.0
        )


async def test_two_workers_agree_after_a_swap(tmp_path: Path) -> None:
    store = await published(30)
    path = str(tmp_path / "routes.flat")
    async with writer_and_reader(store, path) as (writer, reader):
        assert reader.cold is not None
        first = reader.cold.flat.inode
        await store.publish(make_record("h00003.example.com", 5))
        await store.delete("h00004.example.com", 5)
        await wait_until(lambda: writer.compactions >= 1, 3.0)
        await wait_until(lambda: reader.cold is not None and reader.cold.flat.inode != first, 3.0)
        for name in [*hosts(30), "nope.example.com"]:
            assert same(writer.lookup(name.encode()), reader.lookup(name.encode())), name
        assert version_of(reader, "h00003.example.com") == 5
        assert reader.lookup(b"h00004.example.com") is None


async def test_a_reader_resyncs_to_the_writers_file_of_a_new_epoch(tmp_path: Path) -> None:
    store = await published(10)
    path = str(tmp_path / "routes.flat")
    async with writer_and_reader(store, path) as (writer, reader):
        await store.replace_all([make_record(h, 9) for h in hosts(12)], epoch="epoch-2")
        for table in (writer, reader):
            await wait_until(lambda t=table: t.epoch == "epoch-2" and t.synced, 3.0)
            assert version_of(table, "h00011.example.com") == 9
        assert reader.cold is not None and reader.cold.flat.epoch == "epoch-2"


async def test_a_reader_without_the_writers_file_syncs_into_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await published(10)
    reader = RouteTable(
        store,
        snapshot_path=str(tmp_path / "never.flat"),
        flat=True,
        flat_writer=False,
        flat_wait=0.2,
        **FAST,
    )
    try:
        with caplog.at_level(logging.WARNING, "turnout.routing.table"):
            assert await reader.start()
        assert reader.cold is None and len(reader.routes) == 10
        assert "syncing into memory" in caplog.text
        assert version_of(reader, "h00001.example.com") == 1
    finally:
        await reader.stop()


class DownStore(MemoryRouteStore):
    async def sync_point(self) -> SyncPoint:
        raise StoreError("down")


async def test_cold_start_serves_from_the_file_before_the_store_answers(tmp_path: Path) -> None:
    path = tmp_path / "routes.flat"
    build(path, [make_record(h, 4) for h in hosts(100)], epoch="epoch-1", last_id="5-0")
    table = RouteTable(DownStore(), snapshot_path=str(path), flat=True, **FAST)
    try:
        assert await table.start(wait=0.05)
        assert table.from_snapshot and table.stale
        assert (table.epoch, table.last_id) == ("epoch-1", "5-0")
        assert version_of(table, "h00099.example.com") == 4
    finally:
        await table.stop()


@pytest.mark.parametrize("how", ["truncated", "flip-data", "wrong-version"])
async def test_a_damaged_file_at_start_is_refused_and_resynced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    path = tmp_path / "routes.flat"
    build(path, [make_record(h, 1, port=7777) for h in hosts(20)], epoch="old")
    corrupt(path, how)
    store = await published(20, version=3)
    table = RouteTable(store, snapshot_path=str(path), flat=True, **FAST)
    try:
        with caplog.at_level(logging.ERROR, "turnout.routing.table"):
            assert await table.start()
        assert "refusing flat route table" in caplog.text
        assert table.flat_refused == 1 and table.stats()["flat"]["refused_files"] == 1
        assert version_of(table, "h00005.example.com") == 3  # never the damaged file's routes
        assert FlatFile(str(path)).epoch == "epoch-1"  # rebuilt from the store
    finally:
        await table.stop()


async def test_a_delete_during_a_compaction_is_not_undone(tmp_path: Path) -> None:
    """A host only the overlay holds is deleted while a compaction is writing it into the next
    file: after the swap it must stay deleted (its tombstone outlives the swap)."""
    store = await published(5)
    path = str(tmp_path / "routes.flat")
    table = RouteTable(store, snapshot_path=path, flat=True, **{**FAST, "snapshot_interval": 60})
    try:
        await table.start()
        await store.publish(make_record("late.example.com", 1))
        await wait_until(lambda: version_of(table, "late.example.com") == 1, 2.0)
        entered = asyncio.Event()
        release = asyncio.Event()
        original = table._compact
        loop = asyncio.get_running_loop()

        def slow(*args: Any) -> FlatFile:
            loop.call_soon_threadsafe(entered.set)
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result(5)
            return original(*args)

        table._compact = slow  # type: ignore[method-assign]
        table._dirty = True
        write = asyncio.create_task(table._write_snapshot())
        await asyncio.wait_for(entered.wait(), 2.0)
        await store.delete("late.example.com", 2)
        await wait_until(lambda: table.lookup(b"late.example.com") is None, 2.0)
        release.set()
        await asyncio.wait_for(write, 5.0)
        assert FlatFile(path).version(b"late.example.com") == 1  # the capture had it
        assert table.lookup(b"late.example.com") is None
        assert table.cold is not None and table.cold.deleted == {b"late.example.com": 2}
    finally:
        await table.stop()
