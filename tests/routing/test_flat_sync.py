"""The flat table's full sync from the store: the raw scan and the streamed, checked file.

The sync reads records as the store holds them (``scan_raw``: bytes, not decoded) and checks each one for its host and version
without decoding it into a route: exactly the verdicts of the check it replaced (property
test against that code, kept here as the reference), every refused record skipped and
counted, and never a route served from one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.errors import RecordError, StoreError
from routing.flat import MAX_VERSION, FlatBuilder, FlatError, FlatFile, check_record
from routing.models import encode_record
from routing.redis_store import RedisRouteStore
from routing.store import MemoryRouteStore, RouteStore
from routing.table import RouteTable
from tests.routing.store_support import hosts, make_record

FAST: dict[str, Any] = {
    "block_ms": 50,
    "check_interval": 0.05,
    "backoff_initial": 0.02,
    "backoff_max": 0.2,
    "snapshot_interval": 0.05,
}


def reference_head(host: str, data: bytes) -> int:
    """The check the full sync ran before (``record_head`` up to 8c2b1c7), verbatim: the
    reference the new one must agree with."""
    try:
        obj: Any = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RecordError("$", f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RecordError("$", "a record must be a JSON object")
    if not host.isascii():
        raise RecordError("host", f"not an ASCII hostname: {host!r}")
    if obj.get("host") != host:
        raise RecordError("host", f"record filed under {host} names {obj.get('host')!r}")
    version = obj.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise RecordError("version", "must be a non-negative integer")
    return version


def verdict(check: Any, host: Any, data: bytes) -> tuple[str, object]:
    try:
        return ("ok", check(host, data))
    except RecordError as exc:
        return ("refused", exc.path)


NAMES = st.sampled_from(["a.example.com", "b.example.com", "bü.example.com", "", "A.example.com"])
VERSIONS = st.one_of(
    st.integers(-3, 2**64),
    st.sampled_from([True, False, None, 1.0, "1", [1], MAX_VERSION, MAX_VERSION + 1]),
)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)


@st.composite
def stored_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 4))
    if kind == 0:  # anything JSON
        return json.dumps(draw(JSONISH)).encode()
    if kind == 1:  # not JSON at all, or cut short
        whole = orjson.dumps({"host": draw(NAMES), "version": 1})
        return draw(st.binary(max_size=20)) if draw(st.booleans()) else whole[: len(whole) // 2]
    obj: dict[str, Any] = {"space_id": "s"}
    if draw(st.booleans()):
        obj["host"] = draw(NAMES)
    if draw(st.booleans()):
        obj["version"] = draw(VERSIONS)
    data = json.dumps(obj, separators=(",", ":")).encode()
    if kind == 4:  # a key given twice: JSON keeps the last one
        data = data[:-1] + b',"host":"b.example.com"}'
    return data


@settings(max_examples=200, deadline=None)
@given(host=NAMES, data=stored_bytes())
def test_the_sync_check_agrees_with_the_check_it_replaced(host: str, data: bytes) -> None:
    old = verdict(reference_head, host, data)
    new = verdict(check_record, host.encode(), data)
    if old[0] == "ok" and isinstance(old[1], int) and old[1] > MAX_VERSION:
        # The old check passed it and the file's 64-bit field then raised struct.error, which
        # stopped the sync; it is refused now (the strict decoder allows at most 2**63 - 1).
        assert new == ("refused", "version")
    else:
        assert new == old


def test_a_host_that_is_not_utf8_is_refused_not_raised() -> None:
    with pytest.raises(RecordError) as err:
        check_record(b"b\xff.example.com", b'{"host":"b.example.com","version":1}')
    assert err.value.path == "host"


# ---------------------------------------------------------------------------- the raw scan


async def raw(store: RouteStore, batch: int) -> list[tuple[bytes, bytes]]:
    return [item async for items in store.scan_raw(batch) for item in items]


@pytest.fixture
async def redis_store(redis_url: str) -> AsyncIterator[RedisRouteStore]:
    store = RedisRouteStore(redis_url)
    try:
        yield store
    finally:
        await store.close()


async def fill(store: RedisRouteStore, n: int) -> dict[bytes, bytes]:
    await store.replace_all([make_record(h) for h in hosts(n)], epoch="e1")
    odd = {b"b\xff.example.com": b"\xff\xfe not json", b"empty.example.com": b""}
    await store.redis.hset(store.keys.routes, mapping=odd)  # type: ignore[arg-type]
    want = {h.encode(): encode_record(make_record(h)) for h in hosts(n)}
    return {**want, **odd}


async def test_redis_raw_scan_returns_every_record_as_stored(
    redis_store: RedisRouteStore,
) -> None:
    want = await fill(redis_store, 300)
    got = await raw(redis_store, 64)
    assert dict(got) == want and len(got) == len(want)  # no batch lost, none decoded


async def test_redis_raw_scan_of_an_empty_store(redis_store: RedisRouteStore) -> None:
    assert await raw(redis_store, 10) == []


async def test_memory_raw_scan_is_the_scan_in_bytes() -> None:
    store = MemoryRouteStore()
    await store.replace_all([make_record(h) for h in hosts(25)])
    got = await raw(store, 10)
    assert got == [(h.encode(), d) async for items in store.scan(10) for h, d in items]
    assert len(got) == 25


# ---------------------------------------------------------------------------- the sync


BAD: dict[bytes, bytes] = {
    b"notjson.example.com": b'{"host":"notjson.example.com","version":1',
    b"list.example.com": b'["host","list.example.com"]',
    b"other.example.com": encode_record(make_record("h00001.example.com")),  # names another
    b"neg.example.com": b'{"host":"neg.example.com","version":-1}',
    b"bool.example.com": b'{"host":"bool.example.com","version":true}',
    b"huge.example.com": b'{"host":"huge.example.com","version":9223372036854775808}',
    "bü.example.com".encode(): '{"host":"bü.example.com","version":1}'.encode(),
    b"b\xff.example.com": b'{"host":"b.example.com","version":1}',
    b"twice.example.com": b'{"host":"twice.example.com","version":1,"host":"h00002.example.com"}',
}


async def test_a_flat_sync_from_redis_skips_and_counts_every_bad_record(
    redis_store: RedisRouteStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = hosts(40)
    await redis_store.replace_all([make_record(h, 3) for h in good], epoch="e1")
    await redis_store.redis.hset(redis_store.keys.routes, mapping=BAD)  # type: ignore[arg-type]
    path = str(tmp_path / "r.flat")
    table = RouteTable(redis_store, snapshot_path=path, flat=True, **FAST)
    table.scan_batch = 7  # many batches, each checked in the thread while the next is read
    try:
        with caplog.at_level(logging.ERROR, "turnout.routing.table"):
            assert await table.start()
        assert table.invalid == len(BAD)
        assert FlatFile(path).count == len(good) == table.record_count()
        for host in good:
            route = table.lookup(host.encode())
            assert route is not None and route.host == host and route.version == 3
        for bad in BAD:
            assert table.lookup(bad) is None
        assert caplog.text.count("ignoring invalid route record for") == len(BAD)
        assert "b\ufffd.example.com" in caplog.text  # the name as far as it can be shown
        assert [p for p in os.listdir(tmp_path) if p.startswith(".flat-")] == []
    finally:
        await table.stop()


class BrokenScan(MemoryRouteStore):
    """A store whose raw scan fails after its first batch, until ``healed``."""

    healed = False

    async def scan_raw(self, batch: int = 1000) -> AsyncIterator[list[tuple[bytes, bytes]]]:
        first = True
        async for items in super().scan_raw(batch):
            if not first and not self.healed:
                raise StoreError("redis scan failed: connection lost")
            first = False
            yield items


async def test_a_sync_whose_scan_fails_leaves_no_file_and_retries(tmp_path: Path) -> None:
    store = BrokenScan()
    await store.replace_all([make_record(h) for h in hosts(30)], epoch="e1")
    path = str(tmp_path / "r.flat")
    table = RouteTable(store, snapshot_path=path, flat=True, **FAST)
    table.scan_batch = 10
    loop = asyncio.get_running_loop()
    unretrieved: list[Any] = []
    loop.set_exception_handler(lambda _loop, ctx: unretrieved.append(ctx))
    try:
        assert not await table.start(wait=0.3)
        assert not Path(path).exists()  # noqa: ASYNC240
        assert [p for p in os.listdir(tmp_path) if p.startswith(".flat-")] == []
        store.healed = True
        await table.wait_synced(5)
        assert FlatFile(path).count == 30 and table.lookup(b"h00029.example.com") is not None
        assert unretrieved == []  # the batch read ahead never left an error unretrieved
    finally:
        await table.stop()
        loop.set_exception_handler(None)


def test_the_builder_checks_a_batch_and_returns_the_refused(tmp_path: Path) -> None:
    builder = FlatBuilder(str(tmp_path / "b.flat"))
    refused = builder.add_checked(
        [
            (b"a.example.com", b'{"host":"a.example.com","version":2}'),
            (b"b.example.com", b'{"host":"a.example.com","version":2}'),
            (b"c.example.com", b"nope"),
        ]
    )
    assert [(h, e.path) for h, e in refused] == [
        (b"b.example.com", "host"),
        (b"c.example.com", "$"),
    ]
    builder.finish("e", "1-0")
    flat = FlatFile(str(tmp_path / "b.flat"))
    assert flat.count == 1 and flat.version(b"a.example.com") == 2
    # the checksum computed while writing is the one a reader computes from the file
    assert FlatFile(str(tmp_path / "b.flat"), builder.crc_written).count == 1


def test_a_file_whose_written_checksum_differs_is_refused(tmp_path: Path) -> None:
    builder = FlatBuilder(str(tmp_path / "b.flat"))
    builder.add(b"a.example.com", 1, b'{"host":"a.example.com","version":1}')
    builder.finish("e", "1-0")
    assert builder.crc_written is not None
    with pytest.raises(FlatError, match="checksum"):
        FlatFile(str(tmp_path / "b.flat"), builder.crc_written ^ 1)
