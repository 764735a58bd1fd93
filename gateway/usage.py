"""The usage ledger: what one gateway worker has flushed, as cumulative counts per space and month.

Theory of operation
-------------------
Requests are counted in memory by :mod:`gateway.counters` (the hot path is not touched by any of
this). Once per flush interval the counter sink hands the batch's per-space request sums to
:meth:`UsageLedger.stage`, which adds them to this worker's running totals for the flush month
and returns the values to write. The sink writes each one with

    HSET {prefix}:usage:<space>:<yyyymm>  wfp_requests:<writer>  <cumulative count>

where ``<writer>`` is this ledger's random id (one per worker process). Writing a *cumulative*
value under a field no one else writes is idempotent, which is what makes exact counting possible
(``admin/billing/collector.py`` folds ``value − last folded value`` per field into SQL, with the
new last value in the same transaction as the rollup):

* a write that is repeated — its reply was lost, the flush is retried — cannot count twice
  (the earlier ``HINCRBY wfp_requests`` could);
* a value Redis lost (restart without persistence, failover to a replica that missed the last
  writes, an expired or evicted key) is restored by the next write of that field.

Which values a flush writes (:meth:`stage`): every entry the batch changed; every entry that
changed within the last ``reassert_seconds`` (so a silent loss shortly after a write — the
failover case — is healed without anyone noticing it); and *every* entry after :meth:`lost` was
called (the sink calls it when the store's epoch key changed or vanished, the spec's signal that
Redis lost or replaced its data). :meth:`commit` makes staged values the new totals once the sink
wrote them; a write that failed is not committed, its batch goes back to the counters and is
staged again with the next flush, so the totals only ever hold what reached the store.

Memory is bounded: entries of months before the previous one are dropped (a month's counts stop
changing when it ends; the previous month is kept for re-assertion while the collector catches
up), and at most ``max_entries`` entries are held. When a new entry would exceed that, the ledger
*rotates*: a new writer id and empty totals. The old id's fields stay in Redis exactly as last
written (nothing is lost or counted twice); they are merely no longer re-asserted. A rotation
waits while the outcome of the previous write is unknown (it failed: if it landed after all,
its counts, staged again, would be counted under both ids).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

log = logging.getLogger("turnout.gateway.usage")

USAGE_METER: Final = "wfp_requests"
# Usage hashes expire 35 days after their last write: a month's key outlives the next month
# (the collector folds months up to three back; see admin/billing/collector.py).
USAGE_TTL: Final = 35 * 24 * 3600
REASSERT_SECONDS: Final = 30.0


def new_writer_id() -> str:
    """A random writer id (12 hex chars): one per worker process and rotation."""
    return secrets.token_hex(6)


def previous_month(yyyymm: str) -> str:
    """``yyyymm`` of the month before ``yyyymm``."""
    year, month = int(yyyymm[:4]), int(yyyymm[4:])
    return f"{year - 1}12" if month == 1 else f"{year}{month - 1:02d}"


def usage_field(writer: str) -> str:
    """The usage hash field one writer owns: ``wfp_requests:<writer>``."""
    return f"{USAGE_METER}:{writer}"


# ``HSET usage(space, month) wfp_requests:<writer> value``: (space, yyyymm, cumulative count).
UsageWrite = tuple[str, str, int]
Key = tuple[str, str]  # (space, yyyymm)


@dataclass(frozen=True, slots=True)
class Staged:
    """Values to write for one flush; :meth:`UsageLedger.commit` them once written."""

    writer: str
    writes: list[UsageWrite]
    at: float
    full: bool  # every entry is in ``writes`` (clears a pending :meth:`UsageLedger.lost`)

    @property
    def field(self) -> str:
        return usage_field(self.writer)


class UsageLedger:
    """Per-worker cumulative usage (see the module docstring)."""

    __slots__ = (
        "_lost",
        "_oldest",
        "_open",
        "_recent",
        "entries",
        "max_entries",
        "reassert_seconds",
        "rotations",
        "writer",
    )

    def __init__(
        self,
        *,
        max_entries: int = 100_000,
        reassert_seconds: float = REASSERT_SECONDS,
        writer: str | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.writer = writer or new_writer_id()
        self.max_entries = max_entries
        self.reassert_seconds = reassert_seconds
        self.entries: dict[Key, int] = {}  # committed cumulative totals
        # Entries by the time they last grew, oldest first (dicts keep insertion order): the
        # re-assertion window is a walk from the newest end, never a scan of every entry.
        self._recent: dict[Key, float] = {}
        self._oldest: str | None = None  # the oldest month held
        self.rotations = 0
        self._lost = False
        self._open = False  # a stage was not committed: its write may or may not have landed

    @property
    def field(self) -> str:
        return usage_field(self.writer)

    def total(self, space: str, month: str) -> int:
        """The committed cumulative count of ``space`` in ``month`` (0 when none)."""
        return self.entries.get((space, month), 0)

    @property
    def is_lost(self) -> bool:
        """True while a full re-assertion is pending (see :meth:`lost`)."""
        return self._lost

    def lost(self) -> None:
        """The store lost (or replaced) its data: the next stage re-asserts every entry."""
        self._lost = True

    def stage(self, sums: Mapping[str, int], month: str, now: float) -> Staged:
        """The writes for a flush at ``now`` (month ``month``) adding ``sums`` (space → count)."""
        keep = previous_month(month)
        if self._oldest is not None and self._oldest < keep:
            self._forget_before(keep)
        entries = self.entries
        fresh = sum(1 for s, n in sums.items() if n > 0 and (s, month) not in entries)
        # Never rotate right after a write of unknown outcome: its counts come back in this
        # batch, and if that write did land under the old id they would be counted twice.
        # (Entries only grow on commit, so the bound is exceeded by one batch at most.)
        if fresh and len(entries) + fresh > self.max_entries and not self._open:
            self._rotate()
            entries = self.entries
        self._open = True
        values: dict[Key, int] = {}
        for space, n in sums.items():
            if n > 0:
                key = (space, month)
                values[key] = entries.get(key, 0) + n
        full = self._lost
        if full:
            for key, value in entries.items():
                values.setdefault(key, value)
        else:
            recent, horizon = self._recent, now - self.reassert_seconds
            while recent:  # drop what left the window (oldest first)
                first = next(iter(recent))
                if recent[first] >= horizon:
                    break
                del recent[first]
            for key in recent:
                values.setdefault(key, entries[key])
        return Staged(self.writer, [(s, m, v) for (s, m), v in values.items()], now, full)

    def commit(self, staged: Staged) -> None:
        """``staged`` reached the store: its values are the new totals."""
        self._open = False
        if staged.writer != self.writer:  # rotated since: those entries are gone on purpose
            return
        entries, recent, at = self.entries, self._recent, staged.at
        for space, month, value in staged.writes:
            key = (space, month)
            if value > entries.get(key, -1):
                entries[key] = value
                recent.pop(key, None)
                recent[key] = at
                if self._oldest is None or month < self._oldest:
                    self._oldest = month
        if staged.full:
            self._lost = False

    def _forget_before(self, month: str) -> None:
        self.entries = {k: v for k, v in self.entries.items() if k[1] >= month}
        self._recent = {k: t for k, t in self._recent.items() if k[1] >= month}
        self._oldest = min((m for _s, m in self.entries), default=None)

    def _rotate(self) -> None:
        old = self.writer
        self.writer = new_writer_id()
        self.entries = {}
        self._recent = {}
        self._oldest = None
        self.rotations += 1
        log.warning(
            "usage ledger full (%d space-months); writer %s rotated to %s: the old fields stay "
            "in the store as written but are no longer re-asserted",
            self.max_entries,
            old,
            self.writer,
        )

    def __repr__(self) -> str:
        return (
            f"UsageLedger(writer={self.writer}, entries={len(self.entries)}, "
            f"rotations={self.rotations}, lost={self._lost})"
        )
