"""The flat route table: one immutable, position-independent file shared by every worker.

Why
---
A decoded route table costs ~630–785 MiB per worker at a million hostnames and every worker
holds its own copy (benchmarks/RESULTS.md). In flat mode (``--route-table flat``) the table's
records live in one file that every worker memory-maps read-only, so N workers share one copy of
the bytes through the page cache; each worker keeps only what it actually serves:

* a bounded **hot cache** of compiled routes (:class:`ColdRoutes`), filled on first use and
  emptied oldest-first, negative answers included (a scan of unknown hosts costs one probe each,
  then nothing);
* an **overlay** of the changes read from the stream since the file was written (the table's
  ``routes`` dict, plus tombstones for deletions), consulted first;
* replica health, per worker as before (routes are compiled against the worker's registry).

Format ``turnout-flat/1`` (little-endian, every offset from the start of the file)::

    0   8  magic  b"TRNFLAT1"
    8   4  format version (1)
    12  4  meta length M
    16  8  record count
    24  8  index slots S (a power of two, at least 2 x count)
    32  8  data offset D (64)
    40  8  data length
    48  8  index offset I (D + data length)
    56  4  CRC32 of everything after the 64-byte header (data, index, meta), then of
           the header's first 56 bytes
    60  4  reserved (0)
    D      records, each 8-aligned: u16 host length, u16 0, u32 record length, u64 version,
           host bytes, the record's canonical JSON
    I      S slots of (u32 crc32(host), u32 (record offset - D) / 8); 0xFFFFFFFF = empty
    I+8S   M bytes of meta: JSON {"format", "epoch", "last_id", "written_at"}

The index is open addressing with linear probing on ``crc32(host)``; a probe compares the
hash, then the host bytes in place. A lookup reads two small slices of the mapping and decodes
nothing until the host is found; the record is decoded (strictly) and compiled only on a hot
cache miss. The CRC is checked once when a file is opened: a truncated, bit-flipped or
wrong-version file is refused with :class:`FlatError` (the table logs it and resyncs).
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import struct
import sys
import tempfile
import time
import zlib
from array import array
from collections.abc import Iterator
from typing import Any, Final

import orjson

from routing.compiled import CompiledRoute, Interner
from routing.errors import RecordError, RoutingError
from routing.hostnames import wildcard_parent
from routing.models import MAX_INT64, decode_record
from routing.upstreams import UpstreamRegistry
from routing.validation import ROOT, range_error, type_error

FORMAT: Final = "turnout-flat/1"
MAGIC: Final = b"TRNFLAT1"
VERSION: Final = 1
HEADER: Final = struct.Struct("<8sIIQQQQQII")  # 64 bytes
RECORD: Final = struct.Struct("<HHIQ")  # 16 bytes
SLOT: Final = struct.Struct("<II")
EMPTY: Final = 0xFFFFFFFF
MAX_DATA: Final = EMPTY * 8  # record offsets are stored in 8-byte units
MAX_VERSION: Final = MAX_INT64  # as routing.models allows
HOT_CACHE: Final = 65_536  # default bound of a worker's hot cache of compiled routes
ABSENT_CACHE: Final = 4_096  # names the file does not hold, remembered apart (bounded)
_CHUNK: Final = 1 << 20
_READ: Final = 2048  # bytes of a record read with its head on a hot-cache miss (most fit)
_ZEROS: Final = b"\0" * 8
_CRC_AT: Final = 56  # the CRC covers the header before it, then everything after the header


class FlatError(RoutingError):
    """A flat table file that must not be served (missing, truncated, corrupt, wrong version)."""


def _pad(n: int) -> int:
    return (8 - n % 8) % 8


def _crc_of(fd: int, start: int, end: int) -> int:
    crc = 0
    pos = start
    while pos < end:
        chunk = os.pread(fd, min(8 * _CHUNK, end - pos), pos)
        if not chunk:
            break
        crc = zlib.crc32(chunk, crc)
        pos += len(chunk)
    return crc


def _slots_for(count: int) -> int:
    slots = 8
    while slots < 2 * count:
        slots <<= 1
    return slots


class FlatFile:
    """A verified table file: its index memory-mapped, its records read with ``os.pread``.
    Immutable; shared by reference, never closed explicitly (a compaction thread may still be
    reading an older one: its descriptor and mapping close when the last reference goes).

    Why the records are not mapped: a fault on a mapped file maps the whole page-cache folio
    around the address (ext4 caches large folios), so serving ~1 000 hosts put ~260 MiB of a
    million-record file into each worker's PSS (benchmarks/RESULTS.md, issue 18). A ``pread``
    copies one record out of the page cache (still shared by every process, counted in none);
    only the index (8 bytes per slot, 16 MiB at a million records) is mapped."""

    def __init__(self, path: str, crc: int | None = None) -> None:
        """Open and verify ``path``; ``crc``: its checksum as its writer computed it while
        writing it (then the file is not read again to compute it)."""
        self.path = path
        self.fd: int = -1  # owned: closed by __del__
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise FlatError(f"{path}: cannot open flat table: {exc.strerror}") from None
        try:
            self._open(fd, crc)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def _open(self, fd: int, crc: int | None) -> None:
        path = self.path
        st = os.fstat(fd)
        self.inode = (st.st_dev, st.st_ino, st.st_mtime_ns)
        size: int = st.st_size
        if size < HEADER.size:
            raise FlatError(f"{path}: truncated flat table ({size} bytes)")
        head = os.pread(fd, HEADER.size, 0)
        (
            magic,
            version,
            meta_len,
            count,
            slots,
            data_off,
            data_len,
            index_off,
            stored_crc,
            _reserved,
        ) = HEADER.unpack(head)
        if magic != MAGIC:
            raise FlatError(f"{path}: not a {FORMAT} file")
        if version != VERSION:
            raise FlatError(f"{path}: flat table version {version}, this gateway reads {VERSION}")
        if (
            slots < 8
            or slots & (slots - 1)
            or slots < 2 * count
            or data_off != HEADER.size
            or data_len % 8
            or index_off != data_off + data_len
            or index_off + slots * SLOT.size + meta_len != size
        ):
            raise FlatError(f"{path}: truncated or inconsistent flat table")
        # The checksum is read through the descriptor, not a mapping: the pages stay in the
        # page cache (shared by every worker) without entering this process's RSS.
        body_crc = (
            zlib.crc32(head[:_CRC_AT], _crc_of(fd, HEADER.size, size)) if crc is None else crc
        )
        if body_crc != stored_crc:
            raise FlatError(f"{path}: flat table checksum mismatch (corrupt file)")
        meta_at = index_off + slots * SLOT.size
        try:
            meta = orjson.loads(os.pread(fd, meta_len, meta_at))
        except orjson.JSONDecodeError:
            raise FlatError(f"{path}: bad flat table meta") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise FlatError(f"{path}: bad flat table meta")
        epoch, last_id, written_at = meta.get("epoch"), meta.get("last_id"), meta.get("written_at")
        if not (epoch is None or isinstance(epoch, str)) or not (
            last_id is None or isinstance(last_id, str)
        ):
            raise FlatError(f"{path}: bad flat table meta")
        # Only the index is mapped: from the allocation boundary at or below it to its end.
        map_at = index_off - index_off % mmap.ALLOCATIONGRANULARITY
        self.index = mmap.mmap(fd, meta_at - map_at, access=mmap.ACCESS_READ, offset=map_at)
        self.slot_at: int = index_off - map_at  # the index's first slot in the mapping
        self.epoch: str | None = epoch
        self.last_id: str | None = last_id
        self.written_at = float(written_at) if isinstance(written_at, int | float) else 0.0
        self.count: int = count
        self.mask: int = slots - 1
        self.data_off: int = data_off
        self.data_end: int = index_off
        self.index_off: int = index_off
        self.size: int = size

    def __del__(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def _find(self, host: bytes, want: int) -> tuple[int, bytes]:
        """``(offset, bytes)`` of ``host``'s record: at least its 16-byte head and the host,
        then up to ``want`` more bytes of it (fewer at the end of the data); ``(-1, b"")``
        when the file holds no such host."""
        index = self.index
        h = zlib.crc32(host)
        i = h & self.mask
        n = len(host)
        slot_at = self.slot_at
        while True:
            slot_hash, unit = SLOT.unpack_from(index, slot_at + i * 8)
            if unit == EMPTY:
                return -1, b""
            if slot_hash == h:
                off: int = self.data_off + unit * 8
                buf = os.pread(self.fd, 16 + n + want, off)
                if (
                    len(buf) >= 16 + n
                    and (buf[0] | (buf[1] << 8)) == n
                    and buf[16 : 16 + n] == host
                ):
                    return off, buf
            i = (i + 1) & self.mask

    def version(self, host: bytes) -> int:
        """The version of ``host``'s record in this file, or -1 when it holds none."""
        off, buf = self._find(host, 0)
        if off < 0:
            return -1
        version: int = RECORD.unpack_from(buf, 0)[3]
        return version

    def record(self, host: bytes) -> bytes | None:
        """The canonical JSON of ``host``'s record, or None (one ``pread`` for a record of up
        to :data:`_READ` bytes, a second for the rest of a longer one)."""
        off, buf = self._find(host, _READ)
        if off < 0:
            return None
        host_len, _zero, rec_len, _version = RECORD.unpack_from(buf, 0)
        start = 16 + host_len
        end = start + rec_len
        if end <= len(buf):
            return buf[start:end]
        return buf[start:] + os.pread(self.fd, end - len(buf), off + len(buf))

    def items(self) -> Iterator[tuple[bytes, int, bytes]]:
        """Every ``(host, version, record)`` the index reaches, in file order. Nothing is
        mapped: a compaction copies the whole file, so the index and then the data are read in
        order, in chunks, and a record the index does not reach (a host added twice) is
        skipped. A file cut short under the reader raises :class:`FlatError`."""
        reached = bytearray((self.data_end - self.data_off) // 64 + 1)  # a bit per 8 bytes
        pos = self.index_off
        slots_end = self.index_off + (self.mask + 1) * SLOT.size
        while pos < slots_end:
            words = array("I", self._read(min(_CHUNK, slots_end - pos), pos))
            if sys.byteorder != "little":
                words.byteswap()
            for unit in words[1::2]:
                if unit != EMPTY:
                    reached[unit >> 3] |= 1 << (unit & 7)
            pos = min(pos + _CHUNK, slots_end)
        pos = self.data_off
        end = self.data_end
        buf = b""
        at = 0  # buf[at] is the byte at file offset pos
        while pos < end:
            if pos + 16 > end:
                raise FlatError(f"{self.path}: a record runs past the flat table's data")
            if len(buf) - at < 16:
                have = pos + len(buf) - at
                buf = buf[at:] + self._read(min(_CHUNK, end - have), have)
                at = 0
            host_len, _zero, rec_len, version = RECORD.unpack_from(buf, at)
            size = 16 + host_len + rec_len
            size += _pad(size)
            if pos + size > end:
                raise FlatError(f"{self.path}: a record runs past the flat table's data")
            if len(buf) - at < size:
                have = pos + len(buf) - at
                buf = buf[at:] + self._read(min(max(_CHUNK, size), end - have), have)
                at = 0
            unit = (pos - self.data_off) >> 3
            if reached[unit >> 3] & (1 << (unit & 7)):
                start = at + 16
                yield (
                    buf[start : start + host_len],
                    version,
                    buf[start + host_len : start + host_len + rec_len],
                )
            at += size
            pos += size

    def _read(self, size: int, pos: int) -> bytes:
        data = os.pread(self.fd, size, pos)
        if len(data) < size:
            raise FlatError(f"{self.path}: truncated flat table data (the file was cut short)")
        return data

    def __repr__(self) -> str:
        return f"FlatFile({self.path!r}, records={self.count}, bytes={self.size})"


class FlatBuilder:
    """Streams records into a new table file: records go straight to a temporary file beside
    ``path`` (8 bytes per record stay in memory for the index), :meth:`finish` appends the index
    and atomically renames it over ``path``. Adding a host twice keeps the last one added."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.directory = os.path.dirname(os.path.abspath(path)) or "."
        os.makedirs(self.directory, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=".flat-", suffix=".tmp", dir=self.directory)
        self.fh = os.fdopen(fd, "w+b")
        self.fh.write(b"\0" * HEADER.size)  # the header is written last
        # 8 bytes per record in memory: crc32(host) and the record's offset in 8-byte units
        self.hashes = array("I")
        self.units = array("I")
        self.data_len = 0
        self._buf = bytearray()
        self.crc = 0  # of everything after the header, as written
        self.crc_written: int | None = None  # the file's checksum, once finished
        self.closed = False

    def add(self, host: bytes, version: int, record: bytes) -> None:
        size = 16 + len(host) + len(record)
        if self.data_len + size + 8 > MAX_DATA:
            raise FlatError(f"{self.path}: flat table data over {MAX_DATA} bytes")
        self.hashes.append(zlib.crc32(host))
        self.units.append(self.data_len // 8)
        buf = self._buf
        buf += RECORD.pack(len(host), 0, len(record), version)
        buf += host
        buf += record
        pad = _pad(size)
        if pad:
            buf += _ZEROS[:pad]
        self.data_len += size + pad
        if len(buf) >= _CHUNK:
            self._flush()

    def add_checked(self, items: list[tuple[bytes, bytes]]) -> list[tuple[bytes, RecordError]]:
        """Add every ``(host, record)`` that :func:`check_record` accepts, as a full sync
        streams them from the store; returns the refused ones with the reason (the caller
        counts and logs them). Runs in a thread: it touches nothing but this builder."""
        refused: list[tuple[bytes, RecordError]] = []
        for host, data in items:
            try:
                version = check_record(host, data)
            except RecordError as exc:
                refused.append((host, exc))
                continue
            self.add(host, version, data)
        return refused

    def _flush(self) -> None:
        if self._buf:
            buf = self._buf
            self.crc = zlib.crc32(buf, self.crc)
            self.fh.write(buf)
            buf.clear()

    def finish(self, epoch: str | None, last_id: str | None) -> int:
        """Append the index and the meta, write the header, fsync, rename over ``path``;
        returns the record count."""
        try:
            self._flush()
            self.fh.flush()
            count, table = self._index()
            if sys.byteorder != "little":
                table.byteswap()
            slots = len(table) // 2
            meta = orjson.dumps(
                {"format": FORMAT, "epoch": epoch, "last_id": last_id, "written_at": time.time()}
            )
            fh = self.fh
            fh.write(table)  # no bytes copy of the index (16 MiB at a million records)
            fh.write(meta)
            crc = zlib.crc32(meta, zlib.crc32(table, self.crc))
            self.hashes = self.units = array("I")
            head = HEADER.pack(
                MAGIC,
                VERSION,
                len(meta),
                count,
                slots,
                HEADER.size,
                self.data_len,
                HEADER.size + self.data_len,
                0,
                0,
            )
            crc = zlib.crc32(head[:_CRC_AT], crc)
            self.crc_written = crc
            fh.seek(0)
            fh.write(head[:_CRC_AT] + struct.pack("<II", crc, 0))
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            os.replace(self.tmp, self.path)
            self.closed = True
            _fsync_dir(self.directory)
            return count
        finally:
            self.abort()

    def _index(self) -> tuple[int, array[int]]:
        """The open-addressing index over what was added, and the number of distinct hosts: a
        host added again (a store scan may return one twice) takes its earlier slot, so the
        last one added wins and the earlier bytes stay in the file, unreachable."""
        slots = _slots_for(len(self.units))
        mask = slots - 1
        table = array("I", [EMPTY]) * (2 * slots)
        count = 0
        data = mmap.mmap(self.fh.fileno(), 0, access=mmap.ACCESS_READ) if self.units else None
        try:
            for h, unit in zip(self.hashes, self.units, strict=True):
                i = h & mask
                while True:
                    held = table[2 * i + 1]
                    if held == EMPTY:
                        table[2 * i] = h
                        table[2 * i + 1] = unit
                        count += 1
                        break
                    if (
                        table[2 * i] == h
                        and data is not None
                        and _host_at(data, held) == _host_at(data, unit)
                    ):
                        table[2 * i + 1] = unit
                        break
                    i = (i + 1) & mask
        finally:
            if data is not None:
                data.close()
        return count, table

    def abort(self) -> None:
        """Drop the temporary file (idempotent)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            self.fh.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


def _host_at(data: mmap.mmap, unit: int) -> bytes:
    off = HEADER.size + unit * 8
    host_len: int = data[off] | (data[off + 1] << 8)
    return data[off + 16 : off + 16 + host_len]


def release_memory() -> None:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim``): a full sync
    streams ~2.5 MB batches through the heap, and their freed pages would otherwise stay in
    the writer's RSS as its high-water mark. A no-op elsewhere."""
    global _TRIM
    if _TRIM is None:
        try:
            _TRIM = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM is not False:
        _TRIM(0)


_TRIM: Any = None


def _fsync_dir(directory: str) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def check_record(host: bytes, data: bytes) -> int:
    """:func:`record_head` for a host name as the store holds it (bytes): the same checks,
    in the same order, the same verdicts."""
    try:
        obj: Any = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RecordError(ROOT, f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise type_error(ROOT, "a mapping", obj)
    if not host.isascii():  # a store under attack: the file keys hosts as ASCII bytes
        raise RecordError("host", f"not an ASCII hostname: {host.decode('utf-8', 'replace')!r}")
    name = host.decode("ascii")
    if obj.get("host") != name:
        raise RecordError("host", f"record filed under {name} names {obj.get('host')!r}")
    version = obj.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise type_error("version", "an integer", version)
    if version < 0 or version > MAX_VERSION:  # the file stores 64 bits; models allow no more
        raise range_error("version", 0, MAX_VERSION, version)
    return version


def record_head(host: str, data: bytes) -> int:
    """The version of a record as stored, checked cheaply (the full strict decode happens when a
    worker first serves the host); raises :class:`RecordError` for bytes that are not a record
    of ``host``."""
    return check_record(host.encode("utf-8", "surrogatepass"), data)


class ColdRoutes:
    """One worker's view of a flat file: a bounded hot cache of compiled routes, a separate
    bounded cache of names the file does not hold (so a flood of unknown hostnames can never
    push hot routes out), the tombstones of hosts the stream deleted since the file was
    written, and the counters /metrics reports. The worker's overlay of changed routes lives in
    the table's ``routes`` dict, which :func:`find_route` reads first."""

    def __init__(self, flat: FlatFile, registry: UpstreamRegistry, limit: int = HOT_CACHE) -> None:
        self.flat = flat
        self.registry = registry
        self.interner = Interner(registry)
        self.limit = max(1, limit)
        self.cache: dict[bytes, CompiledRoute] = {}
        self.absent: dict[bytes, None] = {}  # names the file does not hold (or cannot serve)
        self.absent_limit = max(1, min(self.limit, ABSENT_CACHE))
        self.deleted: dict[bytes, int] = {}  # host -> version of the deletion
        self.hits = 0
        self.misses = 0
        self.invalid = 0

    def get(self, host: bytes) -> CompiledRoute | None:
        cache = self.cache
        hit = cache.get(host)
        if hit is not None:
            self.hits += 1
            return hit
        absent = self.absent
        if host in absent:
            self.hits += 1
            return None
        self.misses += 1
        route: CompiledRoute | None = None
        if host not in self.deleted:
            data = self.flat.record(host)
            if data is not None:
                try:
                    route = CompiledRoute(decode_record(data), self.registry, self.interner)
                except RecordError:
                    self.invalid += 1
                    route = None
        if route is None:
            if len(absent) >= self.absent_limit:
                del absent[next(iter(absent))]  # oldest first
            absent[host] = None
            return None
        if len(cache) >= self.limit:
            del cache[next(iter(cache))]  # oldest first
        cache[host] = route
        return route

    def version(self, host: bytes) -> int:
        """The version this view holds for ``host`` in the file (-1: none, or deleted)."""
        if host in self.deleted:
            return -1
        return self.flat.version(host)

    def forget(self, host: bytes) -> None:
        self.cache.pop(host, None)
        self.absent.pop(host, None)


def find_route(
    routes: dict[bytes, CompiledRoute], host: bytes, cold: ColdRoutes | None = None
) -> CompiledRoute | None:
    """Exact host first, then the wildcard of its parent domain; nothing further. Each name is
    looked up in the overlay (``routes``) first, then in the flat file's view when there is one.

    A module function (compiled) so the gateway's hot path does not pay for a method call into
    the interpreted :class:`routing.table.RouteTable`."""
    route = routes.get(host)
    if route is None and cold is not None:
        route = cold.get(host)
    if route is None:
        parent = wildcard_parent(host)
        if parent is not None:
            route = routes.get(parent)
            if route is None and cold is not None:
                route = cold.get(parent)
    return route
