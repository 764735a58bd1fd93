"""The in-process route store: what it does beyond the shared contract in test_redis_store.py.

(The contract tests there run against :class:`MemoryRouteStore` too.)
"""

from __future__ import annotations

import asyncio
import re

import pytest

from routing.errors import StaleVersionError
from routing.store import ZERO_ID, MemoryRouteStore, SyncPoint, new_epoch, parse_id
from tests.routing.store_support import hosts, make_record


def test_parse_id_compares_numerically() -> None:
    assert parse_id("1700000000000-3") == (1700000000000, 3)
    assert parse_id("42") == (42, 0)
    assert parse_id(ZERO_ID) == (0, 0)
    assert parse_id("10-0") > parse_id("9-99")  # not a string comparison
    assert parse_id("5-10") > parse_id("5-9")


def test_new_epoch_is_random_hex() -> None:
    epochs = {new_epoch() for _ in range(50)}
    assert len(epochs) == 50
    assert all(re.fullmatch(r"[0-9a-f]{16}", e) for e in epochs)


async def test_ids_look_like_stream_ids_and_ascend() -> None:
    store = MemoryRouteStore()
    ids = [await store.publish(make_record(h)) for h in hosts(12)]
    ids.append(await store.delete(hosts(12)[0], 2))
    await store.replace_all([])
    ids.append((await store.sync_point()).last_id)
    assert all(re.fullmatch(r"\d+-\d+", i) for i in ids)
    parsed = [parse_id(i) for i in ids]
    assert parsed == sorted(parsed) and len(set(parsed)) == len(parsed)


async def test_trimming_is_exact() -> None:
    store = MemoryRouteStore(maxlen=3)
    ids = [await store.publish(make_record(h)) for h in hosts(7)]
    assert [e.id for e in await store.read_log(ZERO_ID, 100, 0)] == ids[-3:]
    assert await store.sync_point() == SyncPoint(None, ids[4], ids[6])
    # Reading from a trimmed position returns what is left (the caller detects the gap).
    assert [e.id for e in await store.read_log(ids[0], 100, 0)] == ids[-3:]


async def test_scan_batches_are_exact() -> None:
    store = MemoryRouteStore()
    await store.replace_all([make_record(h) for h in hosts(2500)])
    sizes = [len(batch) async for batch in store.scan(1000)]
    assert sizes == [1000, 1000, 500]


async def test_forget_everything_behaves_like_an_empty_restarted_redis() -> None:
    store = MemoryRouteStore()
    await store.replace_all([make_record("a.example.com", 5)], epoch="e1")
    last = (await store.sync_point()).last_id

    store.forget_everything()

    assert await store.sync_point() == SyncPoint(None, None, ZERO_ID)
    assert await store.get("a.example.com") is None
    assert await store.get_epoch() is None
    # Versions are forgotten with the data, as in a restarted Redis.
    new_id = await store.publish(make_record("a.example.com", 1))
    assert parse_id(new_id) > parse_id(last)


async def test_every_blocked_reader_wakes_on_a_publish() -> None:
    store = MemoryRouteStore()
    readers = [asyncio.create_task(store.read_log(ZERO_ID, 10, 5000)) for _ in range(3)]
    await asyncio.sleep(0.01)
    log_id = await store.publish(make_record("a.example.com"))
    results = await asyncio.wait_for(asyncio.gather(*readers), 1.0)
    assert [[e.id for e in r] for r in results] == [[log_id]] * 3


async def test_blocked_reader_wakes_on_replace_all_marker() -> None:
    store = MemoryRouteStore()
    reader = asyncio.create_task(store.read_log(ZERO_ID, 10, 5000))
    await asyncio.sleep(0.01)
    await store.replace_all([make_record("a.example.com")], epoch="e7")
    entries = await asyncio.wait_for(reader, 1.0)
    assert [(e.host, e.epoch) for e in entries] == [(None, "e7")]


async def test_refused_publish_does_not_wake_readers() -> None:
    store = MemoryRouteStore()
    last = await store.publish(make_record("a.example.com", 2))
    reader = asyncio.create_task(store.read_log(last, 10, 200))
    await asyncio.sleep(0.01)
    with pytest.raises(StaleVersionError):
        await store.publish(make_record("a.example.com", 1))
    assert await reader == []


async def test_repr_names_the_counts() -> None:
    store = MemoryRouteStore()
    await store.replace_all([make_record("a.example.com")], epoch="e1")
    assert repr(store) == "MemoryRouteStore(records=1, log=1, epoch='e1')"
    await store.close()
