"""The route store interface and the embedded in-process implementation.

A route store is the derived copy of route records that gateways read (see ARCHITECTURE.md,
"authority, cache, mirror"): a map host → record bytes, a change log of every publish, delete and
full publish, and an *epoch* naming the current full publish. :class:`RedisRouteStore` keeps it
in Redis; :class:`MemoryRouteStore` keeps it in this process for ``turnout dev`` with exactly the
same semantics (ids, version checks, trimming, epoch markers), so the route table cannot tell
them apart.

Log ids are Redis stream ids (``"<ms>-<seq>"``); compare them with :func:`parse_id`.
"""

from __future__ import annotations

import abc
import asyncio
import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from routing.errors import StaleVersionError
from routing.hostnames import validate_hostname
from routing.models import RouteRecord, encode_record

if TYPE_CHECKING:
    from routing.runtime_state import RuntimeState

ZERO_ID = "0-0"
DEFAULT_MAXLEN = 100_000
# Records per batch of a full sync's raw scan (a batch of ~500-byte records is ~2.5 MB).
SCAN_BATCH = 5000


def parse_id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def new_epoch() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One change-log entry: a publish (``record`` bytes), a delete (``record`` None, ``host``
    set) or an epoch marker written by a full publish (``epoch`` set, ``host`` None)."""

    id: str
    host: str | None
    version: int
    record: bytes | None
    epoch: str | None = None


@dataclass(frozen=True, slots=True)
class StoreIdentity:
    """Which server the store's data lives on, and which one it was written on.

    ``server`` is the answering server's identity (Redis ``run_id``; None when the store cannot
    tell, e.g. an ACL user without ``INFO``), ``origin`` the one recorded by the last full
    publish or repair. They differ after a Sentinel failover (the promoted replica may lack
    writes the old primary acknowledged) and after a restart from disk (writes since the last
    fsync): the admin then compares versions and republishes what is missing."""

    epoch: str | None
    origin: str | None
    server: str | None

    @property
    def moved(self) -> bool:
        return self.server is not None and self.origin != self.server


@dataclass(frozen=True, slots=True)
class SyncPoint:
    """Where the store stands: its epoch, and the first and last ids of its change log."""

    epoch: str | None
    first_id: str | None  # None when the log is empty or missing
    last_id: str  # ZERO_ID when the log is empty or missing


class RouteStore(abc.ABC):
    """Async interface shared by the Redis and in-process stores. A store's failures reach
    callers as :class:`~routing.errors.StoreError` (a refused publish of an older version as
    :class:`~routing.errors.StaleVersionError`), never as its client library's errors."""

    @abc.abstractmethod
    async def publish(self, record: RouteRecord) -> str:
        """Store ``record`` and log it; returns the log id.

        Raises :class:`StaleVersionError` when the store already holds this host at the same
        or a newer version (including a newer delete)."""

    @abc.abstractmethod
    async def delete(self, host: str, version: int) -> str:
        """Remove ``host`` and log a tombstone carrying ``version`` (must be newer)."""

    @abc.abstractmethod
    async def replace_all(self, records: Iterable[RouteRecord], epoch: str | None = None) -> str:
        """Full publish: atomically replace every record, set a new epoch and log a marker."""

    @abc.abstractmethod
    async def get(self, host: str) -> bytes | None: ...

    @abc.abstractmethod
    def scan(self, batch: int = 1000) -> AsyncIterator[list[tuple[str, bytes]]]:
        """Every stored (host, record bytes), in batches."""

    async def scan_raw(self, batch: int = SCAN_BATCH) -> AsyncIterator[list[tuple[bytes, bytes]]]:
        """Every stored (host bytes, record bytes), in batches of about ``batch``, for a full
        sync that streams the records without decoding them (flat mode). Host names are the
        store's bytes as they are (UTF-8 here): a name that is not ASCII is the caller's to
        refuse. This default wraps :meth:`scan`; a store may fetch its records faster."""
        async for items in self.scan(batch):
            yield [(host.encode("utf-8", "surrogatepass"), data) for host, data in items]

    @abc.abstractmethod
    async def sync_point(self) -> SyncPoint: ...

    @abc.abstractmethod
    async def read_log(self, after: str, count: int, block_ms: int) -> list[LogEntry]:
        """Entries with id > ``after``; waits up to ``block_ms`` when there are none."""

    @abc.abstractmethod
    async def get_epoch(self) -> str | None: ...

    @abc.abstractmethod
    async def set_epoch(self, epoch: str) -> None: ...

    @abc.abstractmethod
    async def identity(self) -> StoreIdentity:
        """Epoch, recorded origin and current server in one round trip (see StoreIdentity)."""

    @abc.abstractmethod
    async def set_origin(self, server: str) -> None:
        """Record ``server`` as the one the stored data is known to be complete on."""

    @abc.abstractmethod
    async def versions(self) -> dict[str, int]:
        """Every host's latest stored version, deletes included."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    def runtime_state(self) -> RuntimeState:
        """Runtime state beside this store (leases, counter hashes, notifications, scripts),
        for the publisher's lease and the gateway's counter sink: on the same server and
        client (not owned: closing the store closes it). An in-process store gets a new
        in-process state."""
        from routing.runtime_state import MemoryRuntimeState

        return MemoryRuntimeState()


class MemoryRouteStore(RouteStore):
    """In-process route store for the embedded mode (``turnout dev``) and tests."""

    def __init__(self, maxlen: int = DEFAULT_MAXLEN) -> None:
        self.maxlen = maxlen
        self._routes: dict[str, bytes] = {}
        self._versions: dict[str, int] = {}
        self._log: list[LogEntry] = []
        self._seq = 0
        self._epoch: str | None = None
        self._server = secrets.token_hex(8)  # what a Redis run_id is to the Redis store
        self._origin: str | None = None
        self._changed = asyncio.Event()

    def _next_id(self) -> str:
        # Ids look like Redis stream ids so the same comparisons apply.
        self._seq += 1
        return f"1-{self._seq}"

    def _append(self, entry: LogEntry) -> None:
        self._log.append(entry)
        if len(self._log) > self.maxlen:
            del self._log[: len(self._log) - self.maxlen]
        self._changed.set()
        self._changed = asyncio.Event()

    def _check_version(self, host: str, version: int) -> None:
        current = self._versions.get(host)
        if current is not None and current >= version:
            raise StaleVersionError(host, version, current)

    async def publish(self, record: RouteRecord) -> str:
        self._check_version(record.host, record.version)
        data = encode_record(record)
        self._routes[record.host] = data
        self._versions[record.host] = record.version
        entry = LogEntry(self._next_id(), record.host, record.version, data)
        self._append(entry)
        return entry.id

    async def delete(self, host: str, version: int) -> str:
        validate_hostname(host)
        self._check_version(host, version)
        self._routes.pop(host, None)
        self._versions[host] = version
        entry = LogEntry(self._next_id(), host, version, None)
        self._append(entry)
        return entry.id

    async def replace_all(self, records: Iterable[RouteRecord], epoch: str | None = None) -> str:
        epoch = epoch or new_epoch()
        items = list(records)
        self._routes = {r.host: encode_record(r) for r in items}
        self._versions = {r.host: r.version for r in items}
        self._epoch = epoch
        self._origin = self._server
        self._append(LogEntry(self._next_id(), None, 0, None, epoch))
        return epoch

    async def get(self, host: str) -> bytes | None:
        return self._routes.get(host)

    async def scan(self, batch: int = 1000) -> AsyncIterator[list[tuple[str, bytes]]]:
        items = list(self._routes.items())
        for i in range(0, len(items), batch):
            yield items[i : i + batch]
            await asyncio.sleep(0)

    async def sync_point(self) -> SyncPoint:
        if not self._log:
            return SyncPoint(self._epoch, None, ZERO_ID)
        return SyncPoint(self._epoch, self._log[0].id, self._log[-1].id)

    async def read_log(self, after: str, count: int, block_ms: int) -> list[LogEntry]:
        entries = self._after(after, count)
        if entries or block_ms <= 0:
            return entries
        waiter = self._changed
        try:
            await asyncio.wait_for(waiter.wait(), block_ms / 1000)
        except TimeoutError:
            return []
        return self._after(after, count)

    def _after(self, after: str, count: int) -> list[LogEntry]:
        key = parse_id(after)
        log = self._log
        # Binary search on ids (they ascend).
        lo, hi = 0, len(log)
        while lo < hi:
            mid = (lo + hi) // 2
            if parse_id(log[mid].id) <= key:
                lo = mid + 1
            else:
                hi = mid
        return log[lo : lo + count]

    async def get_epoch(self) -> str | None:
        return self._epoch

    async def set_epoch(self, epoch: str) -> None:
        self._epoch = epoch

    async def identity(self) -> StoreIdentity:
        return StoreIdentity(self._epoch, self._origin, self._server)

    async def set_origin(self, server: str) -> None:
        self._origin = server

    async def versions(self) -> dict[str, int]:
        return dict(self._versions)

    def forget_everything(self) -> None:
        """Test hook: behave like a Redis that restarted empty."""
        self._routes.clear()
        self._versions.clear()
        self._log.clear()
        self._epoch = None
        self._origin = None

    def checkpoint(self) -> tuple[dict[str, bytes], dict[str, int], list[LogEntry], str | None]:
        """Test hook: a copy of the data, as a replica that stops receiving writes holds it."""
        return dict(self._routes), dict(self._versions), list(self._log), self._epoch

    def fail_over_to(
        self, replica: tuple[dict[str, bytes], dict[str, int], list[LogEntry], str | None]
    ) -> None:
        """Test hook: behave like Sentinel promoting that replica (a :meth:`checkpoint`):
        writes after it are gone, and the store answers from another server."""
        routes, versions, log, epoch = replica
        self._routes, self._versions, self._log, self._epoch = (
            dict(routes),
            dict(versions),
            list(log),
            epoch,
        )
        self._server = secrets.token_hex(8)

    async def close(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"MemoryRouteStore(records={len(self._routes)}, log={len(self._log)}, epoch={self._epoch!r})"
