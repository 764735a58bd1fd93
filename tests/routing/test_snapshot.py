"""The last-known-good snapshot file: round trip, damage handling, atomic replacement."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from routing.errors import RoutingError
from routing.models import RouteRecord, encode_record
from routing.snapshot import FORMAT, read_snapshot, write_snapshot
from tests.routing.store_support import hosts, make_record


def tmp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "routes.snap"
    records = [make_record(h, i + 1, port=8000 + i) for i, h in enumerate(hosts(50))]
    records.append(make_record("*.apps.example.com", 3))
    before = time.time()

    assert write_snapshot(str(path), "epoch-1", "1700000000000-7", records) == 51
    snap = read_snapshot(str(path))

    assert snap.epoch == "epoch-1"
    assert snap.last_id == "1700000000000-7"
    assert before - 1 <= snap.written_at <= time.time() + 1
    assert snap.records == records
    assert snap.bad_lines == 0
    header = orjson.loads(path.read_bytes().split(b"\n", 1)[0])
    assert header["format"] == FORMAT and header["count"] == 51
    assert tmp_files(tmp_path) == []


def test_round_trip_empty_and_unknown_position(tmp_path: Path) -> None:
    path = tmp_path / "deeper" / "dir" / "routes.snap"  # directories are created
    assert write_snapshot(str(path), None, None, []) == 0
    snap = read_snapshot(str(path))
    assert (snap.epoch, snap.last_id, snap.records, snap.bad_lines) == (None, None, [], 0)


def test_rewrite_replaces_the_previous_snapshot(tmp_path: Path) -> None:
    path = str(tmp_path / "routes.snap")
    write_snapshot(path, "e1", "1-1", [make_record("a.example.com", 1)])
    write_snapshot(path, "e2", "1-9", [make_record("b.example.com", 2)])
    snap = read_snapshot(path)
    assert (snap.epoch, snap.last_id) == ("e2", "1-9")
    assert [r.host for r in snap.records] == ["b.example.com"]
    assert tmp_files(tmp_path) == []


def test_corrupt_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "routes.snap"
    good = [make_record(h) for h in hosts(3)]
    write_snapshot(str(path), "e1", "1-3", good)
    lines = path.read_bytes().splitlines()
    # Damage: truncated JSON, valid JSON that is no record, a record that fails validation.
    invalid = orjson.loads(encode_record(make_record("x.example.com")))
    invalid["endpoints"] = []
    damaged = [
        lines[0],
        lines[1],
        lines[2][: len(lines[2]) // 2],
        b'{"hello": "world"}',
        orjson.dumps(invalid),
        b"",  # blank lines are not damage
        lines[3],
    ]
    path.write_bytes(b"\n".join(damaged) + b"\n")

    snap = read_snapshot(str(path))

    assert snap.bad_lines == 3
    assert [r.host for r in snap.records] == [good[0].host, good[2].host]


@pytest.mark.parametrize(
    "header",
    [
        b"",  # empty file
        b"not json at all",
        b'["turnout-routes/1"]',
        b'{"format": "turnout-routes/0", "epoch": null, "last_id": null}',
        b'{"epoch": "e1", "last_id": "1-1"}',
    ],
)
def test_bad_header_is_a_routing_error(tmp_path: Path, header: bytes) -> None:
    path = tmp_path / "routes.snap"
    path.write_bytes(header + b"\n" + encode_record(make_record("a.example.com")) + b"\n")
    with pytest.raises(RoutingError):
        read_snapshot(str(path))


@pytest.mark.parametrize(
    "fields",
    [
        {"written_at": "yesterday"},
        {"written_at": [1]},
        {"epoch": 5},
        {"last_id": {"id": 1}},
        {"last_id": "not-an-id"},
    ],
)
def test_header_with_unusable_values_is_a_routing_error(
    tmp_path: Path, fields: dict[str, object]
) -> None:
    """A header of the right format but with unusable values is as bad as a missing one:
    the route table only catches RoutingError when it loads a snapshot."""
    header: dict[str, object] = {
        "format": FORMAT,
        "epoch": "e1",
        "last_id": "1-1",
        "written_at": 1.0,
        "count": 0,
    }
    header.update(fields)
    path = tmp_path / "routes.snap"
    path.write_bytes(orjson.dumps(header) + b"\n")
    with pytest.raises(RoutingError):
        read_snapshot(str(path))


def test_missing_file_is_a_routing_error(tmp_path: Path) -> None:
    with pytest.raises(RoutingError, match="cannot read snapshot"):
        read_snapshot(str(tmp_path / "nope.snap"))


def test_a_directory_is_a_routing_error(tmp_path: Path) -> None:
    with pytest.raises(RoutingError):
        read_snapshot(str(tmp_path))


def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "routes.snap"
    write_snapshot(str(path), "e1", "1-1", [make_record("a.example.com")])
    old = path.read_bytes()

    def exploding() -> Iterator[RouteRecord]:
        yield make_record("b.example.com")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_snapshot(str(path), "e2", "1-2", exploding())

    assert path.read_bytes() == old
    assert tmp_files(tmp_path) == []


def test_records_can_be_streamed_to_a_callback(tmp_path: Path) -> None:
    path = tmp_path / "routes.snap"
    records = [make_record(h, i + 1) for i, h in enumerate(hosts(5))]
    write_snapshot(str(path), "e1", "1-1", records)
    with path.open("ab") as fh:
        fh.write(b"{not json}\n")
    seen: list[RouteRecord] = []
    snap = read_snapshot(str(path), seen.append)
    assert seen == records
    assert snap.records == []  # handed over, not kept
    assert (snap.epoch, snap.bad_lines) == ("e1", 1)


def test_records_may_be_given_as_canonical_bytes(tmp_path: Path) -> None:
    path = tmp_path / "routes.snap"
    records = [make_record(h, i + 1) for i, h in enumerate(hosts(4))]
    items: list[RouteRecord | bytes] = [
        encode_record(r) if i % 2 else r for i, r in enumerate(records)
    ]
    assert write_snapshot(str(path), "e1", "1-1", items) == 4
    assert read_snapshot(str(path)).records == records
