"""The route store contract, run against both implementations, plus Redis-specific behaviour.

The contract tests (``store`` / ``make_store`` fixtures) run once against a real Redis
(:class:`RedisRouteStore` on the session's private redis-server) and once against
:class:`MemoryRouteStore`: the route table must not be able to tell them apart.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from routing.errors import RecordError, StaleVersionError
from routing.keys import Keys
from routing.models import encode_record
from routing.redis_store import RedisRouteStore
from routing.store import (
    DEFAULT_MAXLEN,
    ZERO_ID,
    LogEntry,
    MemoryRouteStore,
    RouteStore,
    SyncPoint,
    parse_id,
)
from tests.routing.store_support import hosts, make_record

StoreFactory = Callable[..., RouteStore]


@pytest.fixture(params=["redis", "memory"])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    """Factory of stores of one kind; every store made is closed after the test."""
    created: list[RouteStore] = []
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")

        def factory(maxlen: int = DEFAULT_MAXLEN) -> RouteStore:
            store = RedisRouteStore(url, maxlen=maxlen)
            created.append(store)
            return store
    else:

        def factory(maxlen: int = DEFAULT_MAXLEN) -> RouteStore:
            store = MemoryRouteStore(maxlen=maxlen)
            created.append(store)
            return store

    yield factory
    for store in created:
        await store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> RouteStore:
    return make_store()


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def all_entries(store: RouteStore) -> list[LogEntry]:
    return await store.read_log(ZERO_ID, 1_000_000, 0)


async def force_trim(store: RouteStore, maxlen: int) -> None:
    """Trim the log to exactly ``maxlen`` entries.

    The Redis store appends with ``MAXLEN ~`` (approximate: Redis only drops whole stream
    nodes), so the tests force an exact trim with ``XTRIM MAXLEN`` on the raw client. The
    memory store trims exactly on append, so there is nothing to do.
    """
    if isinstance(store, RedisRouteStore):
        await store.redis.xtrim(store.keys.log, maxlen=maxlen, approximate=False)


# ---------------------------------------------------------------------------- publish


async def test_publish_writes_record_and_logs_the_full_record(store: RouteStore) -> None:
    record = make_record("a.example.com", 1)
    log_id = await store.publish(record)

    assert await store.get("a.example.com") == encode_record(record)
    entries = await all_entries(store)
    assert entries == [LogEntry(log_id, "a.example.com", 1, encode_record(record))]
    assert await store.sync_point() == SyncPoint(None, log_id, log_id)


async def test_publish_newer_version_replaces_and_logs_again(store: RouteStore) -> None:
    first = await store.publish(make_record("a.example.com", 1, port=8001))
    second = await store.publish(make_record("a.example.com", 2, port=8002))

    assert parse_id(second) > parse_id(first)
    assert await store.get("a.example.com") == encode_record(
        make_record("a.example.com", 2, port=8002)
    )
    assert [(e.id, e.version) for e in await all_entries(store)] == [(first, 1), (second, 2)]


@pytest.mark.parametrize("stale_version", [5, 4, 1])
async def test_publish_equal_or_older_version_is_refused(
    store: RouteStore, stale_version: int
) -> None:
    current = make_record("a.example.com", 5, port=8005)
    await store.publish(current)

    with pytest.raises(StaleVersionError) as info:
        await store.publish(make_record("a.example.com", stale_version, port=9999))

    assert (info.value.host, info.value.version, info.value.current) == (
        "a.example.com",
        stale_version,
        5,
    )
    assert await store.get("a.example.com") == encode_record(current)
    assert len(await all_entries(store)) == 1  # nothing logged for the refused publish


async def test_versions_are_per_host(store: RouteStore) -> None:
    await store.publish(make_record("a.example.com", 7))
    await store.publish(make_record("b.example.com", 1))  # not compared with a's version
    assert await store.get("b.example.com") is not None


# ---------------------------------------------------------------------------- delete


async def test_delete_removes_the_record_and_logs_a_tombstone(store: RouteStore) -> None:
    await store.publish(make_record("a.example.com", 1))
    await store.publish(make_record("b.example.com", 1))

    log_id = await store.delete("a.example.com", 2)

    assert await store.get("a.example.com") is None
    assert await store.get("b.example.com") is not None
    last = (await all_entries(store))[-1]
    assert last == LogEntry(log_id, "a.example.com", 2, None)
    scanned = [host for batch in [b async for b in store.scan()] for host, _ in batch]
    assert scanned == ["b.example.com"]


async def test_delete_needs_a_newer_version(store: RouteStore) -> None:
    await store.publish(make_record("a.example.com", 3))
    with pytest.raises(StaleVersionError):
        await store.delete("a.example.com", 3)
    assert await store.get("a.example.com") is not None


async def test_delete_validates_the_hostname(store: RouteStore) -> None:
    with pytest.raises(RecordError):
        await store.delete("Not A Host", 1)
    assert await all_entries(store) == []


async def test_older_publish_after_a_delete_is_refused(store: RouteStore) -> None:
    await store.publish(make_record("a.example.com", 1))
    await store.delete("a.example.com", 3)

    # A delayed publish of version 2 must not resurrect the deleted host.
    with pytest.raises(StaleVersionError) as info:
        await store.publish(make_record("a.example.com", 2))
    assert info.value.current == 3
    assert await store.get("a.example.com") is None

    # A genuinely newer publish brings it back.
    await store.publish(make_record("a.example.com", 4))
    assert await store.get("a.example.com") == encode_record(make_record("a.example.com", 4))


# ---------------------------------------------------------------------------- replace_all


async def test_replace_all_swaps_the_whole_set_and_sets_the_epoch(store: RouteStore) -> None:
    await store.publish(make_record("a.example.com", 1))
    await store.publish(make_record("b.example.com", 1))

    new_b = make_record("b.example.com", 7, port=8007)
    new_c = make_record("c.example.com", 1)
    epoch = await store.replace_all([new_b, new_c], epoch="epoch-1")

    assert epoch == "epoch-1"
    assert await store.get("a.example.com") is None  # absent from the new set: gone
    assert await store.get("b.example.com") == encode_record(new_b)
    assert await store.get("c.example.com") == encode_record(new_c)
    assert await store.get_epoch() == "epoch-1"
    marker = (await all_entries(store))[-1]
    assert (marker.host, marker.record, marker.epoch) == (None, None, "epoch-1")
    point = await store.sync_point()
    assert (point.epoch, point.last_id) == ("epoch-1", marker.id)

    # The versions came with the new set.
    with pytest.raises(StaleVersionError):
        await store.publish(make_record("b.example.com", 7))
    await store.publish(make_record("b.example.com", 8))


async def test_replace_all_generates_a_fresh_epoch_each_time(store: RouteStore) -> None:
    first = await store.replace_all([make_record("a.example.com", 1)])
    second = await store.replace_all([make_record("a.example.com", 2)])
    assert first != second
    assert re.fullmatch(r"[0-9a-f]{16}", first) and re.fullmatch(r"[0-9a-f]{16}", second)
    assert await store.get_epoch() == second
    markers = [e.epoch for e in await all_entries(store) if e.epoch is not None]
    assert markers == [first, second]


async def test_replace_all_with_nothing_empties_the_store(store: RouteStore) -> None:
    await store.publish(make_record("a.example.com", 1))
    await store.replace_all([], epoch="empty")
    assert [b async for b in store.scan()] == []
    assert await store.get_epoch() == "empty"
    # versions are gone too: the host can be published again from version 1
    await store.publish(make_record("a.example.com", 1))


async def test_set_and_get_epoch(store: RouteStore) -> None:
    assert await store.get_epoch() is None
    await store.set_epoch("e-42")
    assert await store.get_epoch() == "e-42"
    assert (await store.sync_point()).epoch == "e-42"


# ---------------------------------------------------------------------------- scan


async def test_scan_returns_every_record_in_batches(store: RouteStore) -> None:
    records = [make_record(h, 1 + i % 3) for i, h in enumerate(hosts(2500))]
    await store.replace_all(records)

    batches = [batch async for batch in store.scan(1000)]

    seen: dict[str, bytes] = {}
    for batch in batches:
        for host, data in batch:
            seen[host] = data
    assert seen == {r.host: encode_record(r) for r in records}
    assert len(batches) >= 2  # batched, not one huge reply


async def test_scan_of_an_empty_store_yields_nothing(store: RouteStore) -> None:
    assert [b async for b in store.scan()] == []


# ---------------------------------------------------------------------------- sync point


async def test_sync_point_tracks_epoch_and_log_ends(make_store: StoreFactory) -> None:
    store = make_store(maxlen=10)
    assert await store.sync_point() == SyncPoint(None, None, ZERO_ID)

    ids = [await store.publish(make_record(h)) for h in hosts(3)]
    assert await store.sync_point() == SyncPoint(None, ids[0], ids[-1])

    epoch = await store.replace_all([make_record("z.example.com")], epoch="e1")
    marker = (await all_entries(store))[-1].id
    assert await store.sync_point() == SyncPoint(epoch, ids[0], marker)

    more = [await store.publish(make_record(h, 2)) for h in hosts(12, "more.example.com")]
    await force_trim(store, 10)
    point = await store.sync_point()
    assert point == SyncPoint("e1", more[2], more[-1])


# ---------------------------------------------------------------------------- read_log


async def test_read_log_returns_entries_after_an_id_up_to_count(store: RouteStore) -> None:
    ids = [await store.publish(make_record(h)) for h in hosts(5)]

    assert [e.id for e in await store.read_log(ids[1], 2, 0)] == ids[2:4]
    assert [e.id for e in await store.read_log(ids[1], 100, 0)] == ids[2:]
    assert await store.read_log(ids[-1], 100, 0) == []
    assert [e.id for e in await store.read_log(ZERO_ID, 100, 0)] == ids


async def test_read_log_block_returns_promptly_on_a_concurrent_publish(
    store: RouteStore,
) -> None:
    last = await store.publish(make_record("a.example.com", 1))

    async def publish_later() -> str:
        await asyncio.sleep(0.05)
        return await store.publish(make_record("a.example.com", 2))

    publisher = asyncio.create_task(publish_later())
    started = time.perf_counter()
    entries = await store.read_log(last, 10, 5000)
    elapsed = time.perf_counter() - started
    new_id = await publisher

    assert [(e.id, e.version) for e in entries] == [(new_id, 2)]
    assert elapsed < 1.0  # woke up on the publish, not at the 5 s block timeout


async def test_read_log_block_times_out_with_nothing(store: RouteStore) -> None:
    last = await store.publish(make_record("a.example.com", 1))
    started = time.perf_counter()
    assert await store.read_log(last, 10, 150) == []
    elapsed = time.perf_counter() - started
    assert 0.1 <= elapsed < 1.0


async def test_read_log_without_block_returns_at_once(store: RouteStore) -> None:
    started = time.perf_counter()
    assert await store.read_log(ZERO_ID, 10, 0) == []
    assert time.perf_counter() - started < 0.5


# ---------------------------------------------------------------------------- trimming


async def test_log_is_trimmed_to_maxlen(make_store: StoreFactory) -> None:
    store = make_store(maxlen=10)
    ids = [await store.publish(make_record(h)) for h in hosts(30)]
    await force_trim(store, 10)

    entries = await all_entries(store)
    assert [e.id for e in entries] == ids[-10:]
    point = await store.sync_point()
    assert (point.first_id, point.last_id) == (ids[20], ids[29])
    # Trimming the log never touches the records themselves.
    scanned = {h for batch in [b async for b in store.scan()] for h, _ in batch}
    assert scanned == set(hosts(30))


# ---------------------------------------------------------------------------- Redis only


@pytest.fixture
async def redis_store(redis_url: str) -> AsyncIterator[RedisRouteStore]:
    store = RedisRouteStore(redis_url)
    try:
        yield store
    finally:
        await store.close()


async def test_redis_layout_matches_the_spec(redis_store: RedisRouteStore) -> None:
    raw = redis_store.redis
    record = make_record("a.example.com", 1)
    await redis_store.publish(record)
    await redis_store.delete("a.example.com", 2)
    await redis_store.publish(make_record("b.example.com", 1))
    await redis_store.replace_all([make_record("b.example.com", 3)], epoch="e9")

    keys = sorted(text(k) for k in await raw.keys("*"))
    assert keys == [
        "{turnout}:epoch",
        "{turnout}:routes",
        "{turnout}:routes:log",
        "{turnout}:routes:origin",  # run_id of the server the full publish went to
        "{turnout}:routes:versions",
    ]
    assert await raw.get("{turnout}:routes:origin") == (await raw.info("server"))["run_id"].encode()
    assert await raw.hgetall("{turnout}:routes") == {
        b"b.example.com": encode_record(make_record("b.example.com", 3))
    }
    assert await raw.get("{turnout}:epoch") == b"e9"
    fields = [f for _id, f in await raw.xrange("{turnout}:routes:log") or []]
    assert fields == [
        {b"host": b"a.example.com", b"version": b"1", b"record": encode_record(record)},
        {b"host": b"a.example.com", b"version": b"2", b"record": b""},  # delete: empty record
        {
            b"host": b"b.example.com",
            b"version": b"1",
            b"record": encode_record(make_record("b.example.com", 1)),
        },
        {b"epoch": b"e9"},
    ]


async def test_redis_prefix_isolates_stores(redis_url: str) -> None:
    one = RedisRouteStore(redis_url)
    other = RedisRouteStore(redis_url, prefix="other")
    try:
        await one.publish(make_record("a.example.com", 5))
        assert await other.get("a.example.com") is None
        await other.publish(make_record("a.example.com", 1))  # its own versions
        # Each its own record and log (not compared by sync point: two streams written in the
        # same millisecond get the same entry id).
        mine, theirs = await one.get("a.example.com"), await other.get("a.example.com")
        assert mine is not None and theirs is not None
        assert (json.loads(mine)["version"], json.loads(theirs)["version"]) == (5, 1)
        assert await one.redis.xlen("{turnout}:routes:log") == 1
        assert await one.redis.xlen("{other}:routes:log") == 1
        assert {text(k) for k in await one.redis.keys("{other}:*")} == {
            "{other}:routes",
            "{other}:routes:log",
            "{other}:routes:versions",
        }
    finally:
        await one.close()
        await other.close()


async def test_redis_replace_all_is_atomic_for_readers(redis_store: RedisRouteStore) -> None:
    raw = redis_store.redis
    await redis_store.replace_all([make_record(h) for h in hosts(300, "old.example.com")])
    new_records = [make_record(h) for h in hosts(5000, "new.example.com")]

    seen: set[int] = set()
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            seen.add(await raw.hlen("{turnout}:routes"))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    try:
        await redis_store.replace_all(new_records)
    finally:
        done.set()
        await watcher
    seen.add(await raw.hlen("{turnout}:routes"))

    assert seen <= {300, 5000}, f"a reader saw a half-built table: {sorted(seen)}"
    assert 5000 in seen
    assert await raw.keys("*tmp*") == []  # temporary hashes cleaned up


async def test_redis_racing_publishers_never_go_backwards(redis_url: str) -> None:
    stores = [RedisRouteStore(redis_url) for _ in range(3)]
    versions = list(range(1, 41))
    random.Random(7).shuffle(versions)
    outcomes: list[bool] = []

    async def publish(store: RouteStore, version: int) -> None:
        try:
            await store.publish(make_record("race.example.com", version, port=8000 + version))
            outcomes.append(True)
        except StaleVersionError:
            outcomes.append(False)

    try:
        await asyncio.gather(*(publish(stores[i % 3], v) for i, v in enumerate(versions)))
        assert len(outcomes) == 40 and any(outcomes)
        assert await stores[0].get("race.example.com") == encode_record(
            make_record("race.example.com", 40, port=8040)
        )
        logged = [e.version for e in await all_entries(stores[0])]
        assert logged == sorted(logged) and len(set(logged)) == len(logged)
        assert len(logged) == outcomes.count(True)
    finally:
        for s in stores:
            await s.close()


async def test_redis_store_appends_with_its_maxlen(redis_url: str) -> None:
    """``MAXLEN ~`` drops whole stream nodes: with maxlen 10 the log stays far below 300."""
    store = RedisRouteStore(redis_url, maxlen=10)
    try:
        for i in range(300):
            await store.publish(make_record("a.example.com", i + 1))
        length = await store.redis.xlen(store.keys.log)
        assert 10 <= length < 300
    finally:
        await store.close()


async def test_redis_store_with_a_borrowed_client_leaves_it_open(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        store = RedisRouteStore(client)
        await store.publish(make_record("a.example.com"))
        await store.close()
        assert await client.hexists("{turnout}:routes", "a.example.com")
        assert "<client>" in repr(store)
    finally:
        await client.aclose()


def test_keys_share_one_hash_tag() -> None:
    keys = Keys("gw1")
    names = [
        keys.routes,
        keys.log,
        keys.versions,
        keys.epoch,
        keys.usage("s1", "202401"),
        keys.health("d1", 123),
        keys.leader("reaper"),
        keys.pod("s1", "p1"),
    ]
    assert all(n.startswith("{gw1}:") for n in names)
    assert len(set(names)) == len(names)
    assert keys.routes == "{gw1}:routes" and keys.log == "{gw1}:routes:log"
    assert keys.epoch == "{gw1}:epoch"


@pytest.mark.parametrize("prefix", ["", "a{b", "a}b", "a:b", "a b", "a\nb"])
def test_keys_reject_bad_prefixes(prefix: str) -> None:
    with pytest.raises(ValueError):
        Keys(prefix)
