"""Last-known-good snapshot file of a route table.

Format (``turnout-routes/1``): one JSON header line ``{"format", "epoch", "last_id",
"written_at", "count"}``, then one canonical record per line. Written atomically: a temporary
file in the same directory, fsync, ``rename`` over the old one, fsync of the directory, so a crash
leaves either the old or the new file, never a torn one. A line that fails to decode on load is
skipped and counted (the rest of the table is still worth serving).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import orjson

from routing.errors import RecordError, RoutingError
from routing.models import RouteRecord, decode_record, encode_record

FORMAT = "turnout-routes/1"
_ID = re.compile(r"[0-9]+(?:-[0-9]+)?")  # a log (stream) id, as routing.store.parse_id reads it
log = logging.getLogger("turnout.routing.snapshot")


@dataclass(slots=True)
class Snapshot:
    epoch: str | None
    last_id: str | None
    written_at: float
    records: list[RouteRecord] = field(default_factory=list)
    bad_lines: int = 0


def write_snapshot(
    path: str, epoch: str | None, last_id: str | None, records: Iterable[RouteRecord | bytes]
) -> int:
    """Atomically replace ``path`` with a snapshot of ``records``; returns the record count.

    An item may also be a record already in canonical bytes (:func:`encode_record`'s output,
    or :meth:`~routing.compiled.CompiledRoute.encode`), written as it is.
    """
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".routes-", suffix=".tmp", dir=directory)
    count = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            body = []
            for record in records:
                body.append(record if isinstance(record, bytes) else encode_record(record))
                count += 1
            header = {
                "format": FORMAT,
                "epoch": epoch,
                "last_id": last_id,
                "written_at": time.time(),
                "count": count,
            }
            fh.write(orjson.dumps(header))
            fh.write(b"\n")
            if body:
                fh.write(b"\n".join(body))
                fh.write(b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return count
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return count


def read_snapshot(path: str, each: Callable[[RouteRecord], None] | None = None) -> Snapshot:
    """Load a snapshot; raises :class:`RoutingError` when the file is missing or unusable.

    With ``each``, every decoded record is handed to it as it is read instead of being kept in
    ``records`` (a million decoded records would otherwise be held at once).
    """
    try:
        with open(path, "rb") as fh:
            header_line = fh.readline()
            try:
                header = orjson.loads(header_line)
            except orjson.JSONDecodeError as exc:
                raise RoutingError(f"{path}: bad snapshot header: {exc}") from None
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise RoutingError(f"{path}: not a {FORMAT} snapshot")
            epoch, last_id = header.get("epoch"), header.get("last_id")
            written_at = header.get("written_at") or 0.0
            if (
                not (epoch is None or isinstance(epoch, str))
                or not (last_id is None or (isinstance(last_id, str) and _ID.fullmatch(last_id)))
                or isinstance(written_at, bool)
                or not isinstance(written_at, int | float)
            ):
                raise RoutingError(f"{path}: bad snapshot header values")
            snap = Snapshot(epoch=epoch, last_id=last_id, written_at=float(written_at))
            keep = snap.records.append if each is None else each
            for lineno, line in enumerate(fh, start=2):
                line = line.strip()
                if not line:
                    continue
                try:
                    record = decode_record(line)
                except RecordError as exc:
                    snap.bad_lines += 1
                    log.warning("snapshot %s line %d skipped: %s", path, lineno, exc)
                    continue
                keep(record)
            return snap
    except OSError as exc:
        raise RoutingError(f"{path}: cannot read snapshot: {exc.strerror}") from None
