"""The route table against a real Redis: propagation, version gating, gaps, outages, snapshots.

Every table here runs with short timings (``FAST``) so outages and resyncs play out in well under
a second. The "admin" side is a separate :class:`RedisRouteStore` (its own client), as in
production where the admin and each gateway worker hold their own connections.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import threading
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from routing.errors import RoutingError
from routing.models import RouteRecord, encode_record
from routing.redis_store import RedisRouteStore
from routing.snapshot import read_snapshot, write_snapshot
from routing.store import LogEntry, MemoryRouteStore, RouteStore, parse_id
from routing.table import RouteTable, TableState
from routing.tablestate import IllegalTransition
from tests.routing.store_support import hosts, make_record, wait_until
from tests.support.redis_server import RedisServer

FAST: dict[str, Any] = {
    "block_ms": 100,
    "check_interval": 0.2,
    "backoff_initial": 0.02,
    "backoff_max": 0.5,
}

StoreMaker = Callable[..., RedisRouteStore]
TableMaker = Callable[..., RouteTable]


@pytest.fixture
async def make_store(redis_url: str) -> AsyncIterator[StoreMaker]:
    """``make_store()`` → a RedisRouteStore with its own client (session Redis by default)."""
    created: list[RedisRouteStore] = []

    def factory(url: str | None = None, **kwargs: Any) -> RedisRouteStore:
        store = RedisRouteStore(url or redis_url, **kwargs)
        created.append(store)
        return store

    yield factory
    for store in created:
        await store.close()


@pytest.fixture
async def make_table(make_store: StoreMaker) -> AsyncIterator[TableMaker]:
    """``make_table(store, **options)`` → a RouteTable with FAST timings, stopped after the test."""
    created: list[RouteTable] = []

    def factory(store: RouteStore, **kwargs: Any) -> RouteTable:
        table = RouteTable(store, **{**FAST, **kwargs})
        created.append(table)
        return table

    yield factory
    for table in created:
        await table.stop()


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def version_of(table: RouteTable, host: str) -> int | None:
    route = table.lookup(host.encode())
    return None if route is None else route.version


def has_version(table: RouteTable, host: str, version: int) -> bool:
    return version_of(table, host) == version


def table_hosts(table: RouteTable) -> set[str]:
    return {h.decode() for h in table.routes}


async def started(table: RouteTable) -> RouteTable:
    assert await table.start(wait=5.0)
    await table.wait_synced(5.0)
    return table


# ---------------------------------------------------------------------------- propagation


async def test_publish_on_one_client_is_applied_by_a_table_on_another(
    make_store: StoreMaker,
    make_table: TableMaker,
    record_property: Callable[[str, object], None],
) -> None:
    admin, gateway = make_store(), make_store()
    await admin.replace_all([make_record("a.example.com", 1)], epoch="e1")
    table = await started(make_table(gateway))

    timings: list[float] = []
    for version in range(2, 22):
        started_at = time.perf_counter()
        await admin.publish(make_record("a.example.com", version, port=8000 + version))
        await wait_until(partial(has_version, table, "a.example.com", version), 1.0)
        timings.append(time.perf_counter() - started_at)

    route = table.lookup(b"a.example.com")
    assert route is not None
    assert route.record == make_record("a.example.com", 21, port=8021)
    assert table.stats()["applied"] == 20
    assert table.stats()["last_version"] == 21
    median_ms = statistics.median(timings) * 1000
    max_ms = max(timings) * 1000
    record_property("publish_to_apply_median_ms", round(median_ms, 2))
    record_property("publish_to_apply_max_ms", round(max_ms, 2))
    print(f"\npublish→apply over 20 publishes: median {median_ms:.2f} ms, max {max_ms:.2f} ms")
    assert max(timings) < 1.0


async def test_new_host_and_wildcard_are_served(
    make_store: StoreMaker, make_table: TableMaker
) -> None:
    admin, gateway = make_store(), make_store()
    await admin.replace_all([], epoch="e1")
    table = await started(make_table(gateway))
    assert table.stats()["records"] == 0

    await admin.publish(make_record("*.apps.example.com", 1))
    await admin.publish(make_record("apps.example.com", 1, port=9000))
    await wait_until(lambda: len(table.routes) == 2)

    wildcard = table.lookup(b"tenant.apps.example.com")
    assert wildcard is not None and wildcard.host == "*.apps.example.com"
    exact = table.lookup(b"apps.example.com")
    assert exact is not None and exact.host == "apps.example.com"
    assert table.lookup(b"a.b.apps.example.com") is None  # one level only
    assert table.lookup(b"other.example.com") is None


async def test_older_version_in_the_log_is_ignored(
    make_store: StoreMaker, make_table: TableMaker
) -> None:
    admin, gateway = make_store(), make_store()
    await admin.replace_all([make_record("a.example.com", 5, port=8005)], epoch="e1")
    table = await started(make_table(gateway))
    before = table.stats()["ignored"]

    # The store would refuse v3, so write the stale entry into the stream by hand, as a
    # delayed or duplicated message would arrive.
    stale = encode_record(make_record("a.example.com", 3, port=8003))
    raw_id = await admin.redis.xadd(
        admin.keys.log, {"host": "a.example.com", "version": "3", "record": stale}
    )
    stale_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
    await wait_until(lambda: table.last_id == stale_id)

    assert table.stats()["ignored"] == before + 1
    assert version_of(table, "a.example.com") == 5
    route = table.lookup(b"a.example.com")
    assert route is not None
    assert route.record == make_record("a.example.com", 5, port=8005)


async def test_delete_removes_the_host(make_store: StoreMaker, make_table: TableMaker) -> None:
    admin, gateway = make_store(), make_store()
    await admin.replace_all(
        [make_record("a.example.com", 1), make_record("b.example.com", 1)], epoch="e1"
    )
    table = await started(make_table(gateway))

    await admin.delete("a.example.com", 2)
    await wait_until(lambda: table.lookup(b"a.example.com") is None)

    assert table_hosts(table) == {"b.example.com"}
    assert table.stats()["applied"] == 1


async def test_invalid_record_in_the_log_is_counted_and_skipped(
    make_store: StoreMaker, make_table: TableMaker
) -> None:
    admin, gateway = make_store(), make_store()
    await admin.replace_all([make_record("a.example.com", 1)], epoch="e1")
    table = await started(make_table(gateway))

    log_key = admin.keys.log
    await admin.redis.xadd(log_key, {"host": "x.example.com", "version": "1", "record": "{"})
    other = encode_record(make_record("y.example.com", 1))  # filed under the wrong host
    await admin.redis.xadd(log_key, {"host": "z.example.com", "version": "1", "record": other})
    await admin.publish(make_record("a.example.com", 2))
    await wait_until(lambda: version_of(table, "a.example.com") == 2)

    assert table.stats()["invalid"] == 2
    assert table_hosts(table) == {"a.example.com"}


async def test_malformed_log_entry_does_not_stop_the_table(
    make_store: StoreMaker, make_table: TableMaker
) -> None:
    """A stream entry the store cannot parse is skipped; the table keeps following the log."""
    admin, gateway = make_store(), make_store()
    await admin.replace_all([make_record("a.example.com", 1)], epoch="e1")
    table = await started(make_table(gateway))

    log_key = admin.keys.log
    await admin.redis.xadd(log_key, {"host": "a.example.com", "version": "abc", "record": ""})
    await admin.redis.xadd(log_key, {"host": b"\xff\xfe.example.com", "version": "9"})
    await admin.publish(make_record("b.example.com", 1))

    await wait_until(lambda: table.lookup(b"b.example.com") is not None, 1.0)
    assert version_of(table, "a.example.com") == 1
    assert table.stats()["connected"] is True


# ---------------------------------------------------------------------------- resyncs


async def test_epoch_change_resyncs_and_drops_removed_hosts(
    make_store: StoreMaker, make_table: TableMaker
) -> None:
    admin, gateway = make_store(), make_store()
    await admin.replace_all([make_record(h) for h in hosts(5)], epoch="e1")
    table = await started(make_table(gateway))
    assert table.epoch == "e1" and table.stats()["resyncs"] == 0

    kept = hosts(5)[:2]
    await admin.replace_all(
        [make_record(kept[0], 2), make_record(kept[1], 1), make_record("new.example.com", 1)],
        epoch="e2",
    )
    await wait_until(lambda: table.epoch == "e2")

    assert table_hosts(table) == {*kept, "new.example.com"}
    assert version_of(table, kept[0]) == 2
    stats = table.stats()
    assert stats["resyncs"] == 1 and stats["stale"] is False and stats["synced"] is True


async def test_trimmed_log_on_reconnect_forces_a_full_resync(
    make_store: StoreMaker, make_table: TableMaker
) -> None:
    """What ``_run`` does on every (re)connect, driven by hand for determinism.

    A table synced and then stopped keeps its state (epoch, last id, routes), like a worker
    whose connection dropped. While it is away the admin publishes and the log is trimmed
    exactly (XTRIM MAXLEN 1) past its position; ``_catch_up`` on the next sync point must
    notice the gap and rescan, rather than resume from a log that lost entries.
    """
    admin, gateway = make_store(), make_store()
    await admin.replace_all([make_record("a.example.com", 1)], epoch="e1")
    table = await started(make_table(gateway))
    await table.stop()

    # Control: an unbroken log is resumed, not rescanned.
    await admin.publish(make_record("a.example.com", 2))
    assert await table._catch_up(await gateway.sync_point()) is False
    assert table.stats()["resyncs"] == 0

    for h in hosts(20):
        await admin.publish(make_record(h))
    await admin.redis.xtrim(admin.keys.log, maxlen=1, approximate=False)
    point = await gateway.sync_point()
    assert point.epoch == "e1"  # same epoch: only the gap can tell

    assert await table._catch_up(point) is True

    assert table_hosts(table) == {"a.example.com", *hosts(20)}
    assert version_of(table, "a.example.com") == 2
    assert table.last_id == point.last_id
    assert table.stats()["resyncs"] == 1 and table.stats()["stale"] is False


async def test_gap_while_tailing_forces_a_full_resync(
    make_store: StoreMaker, make_table: TableMaker
) -> None:
    """A live table that falls behind the trimming (its reads held back) must resync.

    The gateway store's ``read_log`` is gated: while the gate is closed the table's tail is
    parked, the admin publishes 30 records and the log is trimmed exactly to its last entry.
    When the gate opens, XREAD returns only that last entry; the table must notice that the
    29 entries before it are gone and rescan.
    """
    admin, gateway = make_store(), make_store()
    await admin.replace_all([make_record("a.example.com", 1)], epoch="e1")
    table = await started(make_table(gateway))

    gate, parked = asyncio.Event(), asyncio.Event()
    gate.set()
    read_log = gateway.read_log

    async def gated_read_log(after: str, count: int, block_ms: int) -> list[LogEntry]:
        if not gate.is_set():
            parked.set()
            await gate.wait()
        return await read_log(after, count, block_ms)

    gateway.read_log = gated_read_log  # type: ignore[method-assign]
    gate.clear()
    await asyncio.wait_for(parked.wait(), 2.0)

    for h in hosts(30):
        await admin.publish(make_record(h))
    await admin.redis.xtrim(admin.keys.log, maxlen=1, approximate=False)
    gate.set()

    await wait_until(lambda: len(table.routes) == 31, 2.0)
    assert table_hosts(table) == {"a.example.com", *hosts(30)}
    assert table.stats()["resyncs"] == 1


# ---------------------------------------------------------------------------- Redis outages


async def test_redis_shutdown_keeps_serving_then_resyncs_on_a_new_epoch(
    own_redis: RedisServer, make_store: StoreMaker, make_table: TableMaker
) -> None:
    admin, gateway = make_store(own_redis.url), make_store(own_redis.url)
    await admin.replace_all([make_record(h) for h in hosts(3)], epoch="e1")
    table = await started(make_table(gateway))

    assert table.state is TableState.CURRENT
    own_redis.shutdown_nosave()
    await wait_until(lambda: not table.stats()["connected"], 3.0)
    assert table.state is TableState.STALE and table.stats()["stale"] is True

    # Redis is gone: the table keeps serving every host it had.
    for h in hosts(3):
        assert version_of(table, h) == 1
    await asyncio.sleep(0.05)
    assert table.stats()["staleness_seconds"] > 0

    own_redis.start()  # same port, empty
    # A fresh admin client: the old one's pooled connection died with the server, and a
    # RedisRouteStore does not retry (the admin repairs failed publishes by republishing).
    admin = make_store(own_redis.url)
    await admin.replace_all(
        [make_record(hosts(3)[0], 2), make_record("fresh.example.com", 1)], epoch="e2"
    )
    await wait_until(lambda: table.epoch == "e2" and not table.stale, 3.0)

    assert table_hosts(table) == {hosts(3)[0], "fresh.example.com"}
    assert version_of(table, hosts(3)[0]) == 2
    stats = table.stats()
    assert stats["connected"] is True and stats["stale"] is False
    assert stats["staleness_seconds"] == 0
    assert stats["resyncs"] == 1 and stats["reconnects"] >= 1
    assert stats["state"] == "current"


async def test_redis_restarted_empty_keeps_the_old_table_flagged_stale(
    own_redis: RedisServer, make_store: StoreMaker, make_table: TableMaker
) -> None:
    admin, gateway = make_store(own_redis.url), make_store(own_redis.url)
    old = [make_record("a.example.com", 5), make_record("b.example.com", 5)]
    await admin.replace_all(old, epoch="e1")
    table = await started(make_table(gateway))

    own_redis.shutdown_nosave()
    await wait_until(lambda: not table.connected, 3.0)
    own_redis.start()  # empty: no records, no log, no epoch
    admin = make_store(own_redis.url)  # fresh client (see the previous test)

    await wait_until(lambda: table.connected and table.state is TableState.LOST, 3.0)
    stats = table.stats()
    assert stats["stale"] is True and stats["staleness_seconds"] > 0
    assert stats["epoch"] is None
    assert table_hosts(table) == {"a.example.com", "b.example.com"}  # never blanked

    # Individual publishes land on top of the stale table, still gated by version.
    await admin.publish(make_record("c.example.com", 1))
    await admin.publish(make_record("a.example.com", 6))
    await admin.publish(make_record("b.example.com", 1))  # the empty store accepts it...
    await wait_until(lambda: table.lookup(b"c.example.com") is not None, 1.0)
    await wait_until(lambda: version_of(table, "a.example.com") == 6, 1.0)
    await wait_until(lambda: table.stats()["ignored"] >= 1, 1.0)
    assert version_of(table, "b.example.com") == 5  # ...the table keeps its newer copy
    await asyncio.sleep(3 * FAST["check_interval"])  # periodic checks must not end staleness
    assert table.state is TableState.LOST and table.epoch is None
    assert table_hosts(table) == {"a.example.com", "b.example.com", "c.example.com"}

    # Only a full publish (a new epoch) swaps the table.
    await admin.replace_all([make_record("a.example.com", 7)], epoch="e2")
    await wait_until(lambda: table.epoch == "e2", 2.0)
    assert table_hosts(table) == {"a.example.com"}
    stats = table.stats()
    assert stats["stale"] is False and stats["staleness_seconds"] == 0
    assert stats["resyncs"] == 1 and stats["state"] == "current"


async def test_table_on_the_memory_store_follows_the_same_rules(
    make_table: TableMaker,
) -> None:
    store = MemoryRouteStore()
    await store.replace_all([make_record("a.example.com", 1)], epoch="e1")
    table = await started(make_table(store))

    await store.publish(make_record("b.example.com", 1))
    await wait_until(lambda: table.lookup(b"b.example.com") is not None)

    store.forget_everything()  # "Redis restarted empty"
    await wait_until(lambda: table.stale, 2.0)
    assert table_hosts(table) == {"a.example.com", "b.example.com"}

    await store.replace_all([make_record("c.example.com", 1)], epoch="e2")
    await wait_until(lambda: table.epoch == "e2" and not table.stale, 2.0)
    assert table_hosts(table) == {"c.example.com"}


async def test_start_on_an_empty_store_is_ready(
    make_store: StoreMaker, make_table: TableMaker
) -> None:
    table = make_table(make_store())
    assert await table.start(wait=2.0) is True
    stats = table.stats()
    assert stats["synced"] is True and stats["records"] == 0 and stats["stale"] is False


async def test_start_with_redis_down_and_no_snapshot_is_not_ready(
    own_redis: RedisServer, make_store: StoreMaker, make_table: TableMaker, tmp_path: Path
) -> None:
    url = own_redis.url
    own_redis.shutdown_nosave()
    table = make_table(make_store(url), snapshot_path=str(tmp_path / "none.snap"))
    started_at = time.perf_counter()
    assert await table.start(wait=0.3) is False
    assert time.perf_counter() - started_at < 1.0
    assert table.lookup(b"a.example.com") is None and not table.connected


# ---------------------------------------------------------------------------- snapshots


async def test_cold_start_from_the_snapshot_with_redis_down(
    own_redis: RedisServer, make_store: StoreMaker, make_table: TableMaker, tmp_path: Path
) -> None:
    snap = str(tmp_path / "routes.snap")
    admin = make_store(own_redis.url)
    records = [make_record(h, 3) for h in hosts(25)] + [make_record("*.w.example.com", 1)]
    await admin.replace_all(records, epoch="e1")
    first = await started(make_table(make_store(own_redis.url), snapshot_path=snap))
    await wait_until(lambda: first.snapshots_written >= 1, 2.0)
    await first.stop()

    own_redis.shutdown_nosave()

    table = make_table(make_store(own_redis.url), snapshot_path=snap)
    started_at = time.perf_counter()
    assert await table.start(wait=1.0) is True
    elapsed = time.perf_counter() - started_at
    assert elapsed < 0.5

    for record in records:
        route = table.lookup(record.host.encode())
        assert route is not None and route.record == record
    assert table.lookup(b"x.w.example.com") is not None
    await asyncio.sleep(0.05)
    stats = table.stats()
    assert stats["from_snapshot"] is True and stats["stale"] is True
    assert stats["connected"] is False and stats["synced"] is False
    assert stats["state"] == "snapshot"  # the store down does not change that
    assert stats["epoch"] == "e1" and stats["records"] == 26
    assert stats["staleness_seconds"] > 0

    # Redis comes back empty and the admin republishes: the snapshot is replaced.
    own_redis.start()
    admin = make_store(own_redis.url)
    await admin.replace_all([make_record("a.example.com", 1)], epoch="e2")
    await wait_until(lambda: table.epoch == "e2" and not table.stale, 3.0)
    stats = table.stats()
    assert stats["from_snapshot"] is False and stats["records"] == 1
    assert stats["state"] == "current"


async def test_a_snapshot_of_the_stores_epoch_is_caught_up_not_resynced(
    make_store: StoreMaker, make_table: TableMaker, tmp_path: Path
) -> None:
    snap = str(tmp_path / "routes.snap")
    admin = make_store()
    await admin.replace_all([make_record("a.example.com", 1)], epoch="e1")
    first = await started(make_table(make_store(), snapshot_path=snap))
    await wait_until(lambda: first.snapshots_written >= 1, 2.0)
    await first.stop()
    await admin.publish(make_record("b.example.com", 1))  # after the file: in the log only

    table = make_table(make_store(), snapshot_path=snap)
    assert await table.start(wait=1.0) is True
    # Same epoch, unbroken log: the table catches up from the file's position and is current
    # (it used to stay "snapshot" until the next full sync).
    await wait_until(lambda: table.state is TableState.CURRENT, 2.0)
    await wait_until(lambda: table.lookup(b"b.example.com") is not None, 2.0)
    stats = table.stats()
    assert stats["resyncs"] == 0 and stats["synced"] is True and stats["stale"] is False
    assert stats["from_snapshot"] is True  # what is served still came from the file


async def test_snapshot_written_at_most_once_per_interval_and_atomically(
    make_store: StoreMaker,
    make_table: TableMaker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    snap = tmp_path / "routes.snap"
    writes: list[float] = []
    real_write = write_snapshot

    def counting_write(*args: Any) -> int:
        count = real_write(*args)
        writes.append(time.monotonic())
        return count

    monkeypatch.setattr("routing.table.write_snapshot", counting_write)
    admin = make_store()
    await admin.replace_all([make_record("a.example.com", 1)], epoch="e1")
    table = await started(make_table(make_store(), snapshot_path=str(snap)))
    assert table.snapshot_interval == 1.0  # the default: at most once a second
    await wait_until(lambda: len(writes) >= 1, 2.0)

    # A reader thread parses the file as fast as it can while writes keep happening.
    reads, failures = [0], [0]
    stop_reading = threading.Event()

    def reader() -> None:
        while not stop_reading.is_set():
            try:
                read_snapshot(str(snap))
                reads[0] += 1
            except RoutingError:
                failures[0] += 1

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        # Change something every 20 ms for 2.2 s.
        version = 1
        deadline = time.monotonic() + 2.2
        while time.monotonic() < deadline:
            version += 1
            await admin.publish(make_record("a.example.com", version))
            await asyncio.sleep(0.02)
        # The last change reaches the file within an interval or so...
        await wait_until(
            lambda: any(r.version == version for r in read_snapshot(str(snap)).records), 2.0
        )
        # ...and without changes nothing more is written. (The file is renamed into place
        # just before `writes` records the write: settle first.)
        await asyncio.sleep(0.2)
        quiet = len(writes)
        await asyncio.sleep(1.2)
        assert len(writes) == quiet
    finally:
        stop_reading.set()
        await asyncio.to_thread(thread.join, 5.0)

    gaps = [b - a for a, b in itertools.pairwise(writes)]
    assert len(writes) >= 3
    assert min(gaps) >= 0.95, f"snapshots written too often: gaps {gaps}"
    assert reads[0] > 0 and failures[0] == 0  # never a torn or missing file
    await table.stop()
    assert listing(tmp_path) == ["routes.snap"]  # no leftover .tmp files


async def test_snapshot_matches_its_log_position(
    make_store: StoreMaker,
    make_table: TableMaker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A change applied while a snapshot write is waiting for its thread must not be recorded
    as covered (last_id) by a file that lacks it, and must reach a later snapshot.

    ``asyncio.to_thread`` is held back so the change lands between the moment the table
    captures its routes and the moment the writer thread runs.
    """
    snap = str(tmp_path / "routes.snap")
    real_to_thread = asyncio.to_thread
    entered, release = asyncio.Event(), asyncio.Event()

    async def held_to_thread(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        entered.set()
        await release.wait()
        return await real_to_thread(func, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", held_to_thread)
    admin = make_store()
    await admin.replace_all([make_record("a.example.com", 1)], epoch="e1")
    table = await started(make_table(make_store(), snapshot_path=snap, snapshot_interval=0.2))
    await asyncio.wait_for(entered.wait(), 2.0)  # routes captured, write pending

    new_id = await admin.publish(make_record("x.example.com", 1))
    await wait_until(lambda: table.lookup(b"x.example.com") is not None)
    assert table.last_id == new_id
    release.set()
    await wait_until(lambda: table.snapshots_written >= 1, 2.0)

    written = read_snapshot(snap)
    has_x = any(r.host == "x.example.com" for r in written.records)
    assert written.last_id is not None
    assert has_x == (parse_id(written.last_id) >= parse_id(new_id)), (
        f"snapshot claims position {written.last_id} but has_x={has_x}"
    )

    # The change is not forgotten: a later snapshot holds it.
    await wait_until(
        lambda: any(r.host == "x.example.com" for r in read_snapshot(snap).records), 2.0
    )


async def test_stop_waits_for_an_inflight_snapshot_write(
    make_store: StoreMaker,
    make_table: TableMaker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``stop()`` during a (slow) snapshot write: the final snapshot must hold the final
    table, not be overwritten afterwards by the older write still running in its thread."""
    snap = tmp_path / "routes.snap"
    real_write = write_snapshot
    in_first_write = threading.Event()
    calls = [0]

    def slow_first_write(path: str, epoch: str | None, last_id: str | None, records: Any) -> int:
        calls[0] += 1
        records = list(records)
        if calls[0] == 1:
            in_first_write.set()
            time.sleep(0.5)
        return real_write(path, epoch, last_id, records)

    monkeypatch.setattr("routing.table.write_snapshot", slow_first_write)
    admin = make_store()
    await admin.replace_all([make_record("a.example.com", 1)], epoch="e1")
    table = await started(make_table(make_store(), snapshot_path=str(snap)))
    await asyncio.to_thread(in_first_write.wait, 2.0)

    await admin.publish(make_record("y.example.com", 1))
    await wait_until(lambda: table.lookup(b"y.example.com") is not None)
    await table.stop()

    assert listing(tmp_path) == ["routes.snap"]  # no write in flight
    await asyncio.sleep(0.7)  # long enough for any abandoned write to land
    hosts_in_file = {r.host for r in read_snapshot(str(snap)).records}
    assert hosts_in_file == {"a.example.com", "y.example.com"}


# ---------------------------------------------------------------------------- scale


async def test_full_sync_of_10000_records(
    make_store: StoreMaker,
    make_table: TableMaker,
    record_property: Callable[[str, object], None],
) -> None:
    admin = make_store()
    names = hosts(10_000, "big.example.com")
    records: list[RouteRecord] = [
        make_record(h, 1, port=8000 + i % 1000) for i, h in enumerate(names)
    ]
    await admin.replace_all(records, epoch="big")

    table = make_table(make_store(), batch=1000)
    started_at = time.perf_counter()
    assert await table.start(wait=10.0)
    wall = time.perf_counter() - started_at

    assert len(table.routes) == 10_000
    assert all(table.lookup(h.encode()) is not None for h in names)
    assert table.stats()["invalid"] == 0 and table.epoch == "big"
    record_property("full_sync_10k_seconds", round(table.last_sync_seconds, 3))
    record_property("start_10k_wall_seconds", round(wall, 3))
    print(
        f"\n10 000-record full sync: {table.last_sync_seconds:.3f} s in _full_sync, "
        f"{wall:.3f} s from start() to ready"
    )
    assert wall < 10.0


# ---------------------------------------------------------------------------- misc


async def test_stats_and_repr(make_store: StoreMaker, make_table: TableMaker) -> None:
    admin = make_store()
    await admin.replace_all([make_record("a.example.com", 4)], epoch="e1")
    table = await started(make_table(make_store()))
    stats = table.stats()
    assert set(stats) >= {
        "records",
        "epoch",
        "last_id",
        "connected",
        "synced",
        "stale",
        "from_snapshot",
        "staleness_seconds",
        "resyncs",
        "reconnects",
        "applied",
        "ignored",
        "invalid",
        "snapshots_written",
    }
    assert stats["records"] == 1 and stats["epoch"] == "e1" and stats["connected"] is True
    assert stats["last_id"] == (await admin.sync_point()).last_id
    assert table.ready
    assert "records=1" in repr(table) and "'e1'" in repr(table)


def test_state_and_its_flags_are_read_from_the_lifecycle_only() -> None:
    table = RouteTable(MemoryRouteStore())
    assert table.state is TableState.COLD and not table.ready
    table.lifecycle.snapshot_loaded(age=0.0)
    assert table.state is TableState.SNAPSHOT and table.ready and table.stale
    assert table.from_snapshot and not table.synced
    table.lifecycle.full_sync()
    assert table.state is TableState.CURRENT and not table.stale and table.synced
    table.lifecycle.connection_lost()
    assert table.state is TableState.STALE and table.stale and table.staleness() >= 0
    table.lifecycle.store_lost()
    assert table.state is TableState.LOST and table.stats()["state"] == "lost"
    assert table.stats()["stale"] is True
    with pytest.raises(AttributeError):
        table.stale = False  # type: ignore[misc]  # no flag to set behind the machine's back
    with pytest.raises(IllegalTransition):
        table.lifecycle.caught_up()  # only a full publish ends a loss
