"""How a flat file is read (routing/flat.py): only the index is mapped, records come through
``os.pread`` — a long record takes a second read, a compaction's :meth:`FlatFile.items` reads
the data in order across chunk boundaries, and a file cut short under a reader is a
:class:`FlatError`, never a wrong record. The descriptor closes with the last reference.
"""

from __future__ import annotations

import gc
import os
import struct
import zlib
from pathlib import Path

import pytest

from routing.flat import (
    _CHUNK,
    _CRC_AT,
    _READ,
    HEADER,
    ColdRoutes,
    FlatBuilder,
    FlatError,
    FlatFile,
)
from routing.models import decode_record, encode_record
from routing.upstreams import UpstreamRegistry
from tests.routing.store_support import hosts, make_record
from tests.routing.test_flat import build


def mappings_of(path: Path) -> list[tuple[int, int]]:
    """``(file offset, length)`` of every mapping of ``path`` in this process."""
    out = []
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].strip() == str(path):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.append((int(parts[2], 16), hi - lo))
    return out


def test_only_the_index_is_mapped(tmp_path: Path) -> None:
    path = tmp_path / "t.flat"
    records = [make_record(h, 1) for h in hosts(3000)]  # ~1 MiB of records before the index
    build(path, records)
    flat = FlatFile(str(path))
    cold = ColdRoutes(flat, UpstreamRegistry())
    for r in records:
        route = cold.get(r.host.encode())
        assert route is not None and route.to_record() == r
    maps = mappings_of(path)
    assert len(maps) == 1
    offset, length = maps[0]
    index_off = flat.index_off
    assert index_off > 16 * 4096  # so a mapping of the records would show
    assert index_off - 4096 < offset <= index_off  # from the page holding the first slot
    assert offset + length >= flat.size - 4096 and length <= (flat.mask + 1) * 8 + 8192


def long_record(host: str) -> bytes:
    targets = [
        {
            "deployment_id": f"dep-{i}",
            "weight": 10000 // 20,
            "status": "active",
            "upstreams": [f"http://10.0.{i}.{j}:8080/base-{j}" for j in range(4)],
        }
        for i in range(20)
    ]
    obj = {
        "host": host,
        "version": 7,
        "space_id": "space",
        "service_id": "svc",
        "endpoints": [{"path_prefix": "/", "methods": [], "targets": targets}],
    }
    return encode_record(decode_record(obj))


def test_a_record_longer_than_one_read_comes_whole(tmp_path: Path) -> None:
    path = tmp_path / "t.flat"
    host = "long.example.com"
    data = long_record(host)
    assert len(data) > _READ
    # raw bytes (not decoded here) of every length around the first read's end
    raw = {f"edge{n}.example.com": bytes([65 + n % 26]) * n for n in (_READ - 1, _READ, _READ + 1)}
    raw["empty.example.com"] = b""
    raw[host] = data
    builder = FlatBuilder(str(path))
    for name, rec in raw.items():
        builder.add(name.encode(), 1, rec)
    builder.finish("e", "1-0")
    flat = FlatFile(str(path))
    for name, rec in raw.items():
        assert flat.record(name.encode()) == rec
        assert flat.version(name.encode()) == 1
    cold = ColdRoutes(flat, UpstreamRegistry())
    route = cold.get(host.encode())
    assert route is not None and route.to_record() == decode_record(data)


def test_items_reads_the_data_in_order_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "t.flat"
    records = [make_record(h, 2) for h in hosts(6000)]
    builder = FlatBuilder(str(path))
    builder.add(records[5].host.encode(), 1, encode_record(make_record(records[5].host, 1)))
    big = long_record("big.example.com") * 300  # one record over a chunk: read whole
    assert len(big) > _CHUNK
    builder.add(b"big.example.com", 3, big)
    for r in records:
        builder.add(r.host.encode(), r.version, encode_record(r))
    builder.finish("e", "1-0")
    flat = FlatFile(str(path))
    assert flat.index_off > 2 * _CHUNK
    got = list(flat.items())
    assert got[0] == (b"big.example.com", 3, big)  # the earlier copy of records[5] skipped
    assert got[1:] == [(r.host.encode(), 2, encode_record(r)) for r in records]


def reseal(path: Path) -> None:
    """Recompute a file's checksum after an edit (a consistent file with wrong contents)."""
    data = bytearray(path.read_bytes())
    crc = zlib.crc32(bytes(data[:_CRC_AT]), zlib.crc32(bytes(data[HEADER.size :])))
    struct.pack_into("<I", data, _CRC_AT, crc)
    path.write_bytes(bytes(data))


def test_items_refuses_a_record_that_runs_past_the_data(tmp_path: Path) -> None:
    path = tmp_path / "t.flat"
    build(path, [make_record(h, 1) for h in hosts(3)])
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, HEADER.size + 4, 1 << 20)  # the first record's length
    path.write_bytes(bytes(data))
    reseal(path)
    flat = FlatFile(str(path))
    with pytest.raises(FlatError, match="runs past the flat table's data"):
        list(flat.items())


@pytest.mark.parametrize("keep", [HEADER.size + 10, -100])
def test_a_file_cut_short_under_a_compaction(tmp_path: Path, keep: int) -> None:
    """The writer never does this (it renames a new file over the old); a reader's compaction
    then stops with a FlatError instead of copying part of a table."""
    path = tmp_path / "t.flat"
    build(path, [make_record(h, 1) for h in hosts(5)])
    flat = FlatFile(str(path))
    os.truncate(path, keep if keep > 0 else flat.size + keep)
    with pytest.raises(FlatError, match="truncated flat table data"):
        list(flat.items())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_descriptor_closes_with_the_last_reference(tmp_path: Path) -> None:
    path = tmp_path / "t.flat"
    build(path, [make_record(h, 1) for h in hosts(3)])
    gc.collect()
    before = open_fds()
    flats = [FlatFile(str(path)) for _ in range(5)]
    assert open_fds() >= before + 5
    assert all(f.version(b"h00001.example.com") in (-1, 1) for f in flats)
    del flats
    gc.collect()
    assert open_fds() == before


def test_a_refused_file_leaves_no_descriptor_open(tmp_path: Path) -> None:
    path = tmp_path / "t.flat"
    build(path, [make_record(h, 1) for h in hosts(3)])
    data = bytearray(path.read_bytes())
    data[HEADER.size + 20] ^= 1
    path.write_bytes(bytes(data))
    gc.collect()
    before = open_fds()
    for _ in range(5):
        with pytest.raises(FlatError, match="checksum"):
            FlatFile(str(path))
    gc.collect()
    assert open_fds() == before
