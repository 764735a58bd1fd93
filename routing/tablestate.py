"""The route table's lifecycle: one state, its legal transitions in one table, one method per event.

:class:`~routing.table.RouteTable` reports each event of its background loop here and reads
its state back (``RouteTable.state``, ``/readyz`` ``table.state``, the
``turnout_route_table_state`` metric); nothing else sets it. The events::

    snapshot_loaded   a snapshot (or flat) file was loaded at start        COLD -> SNAPSHOT
    full_sync         a full sync from the store completed                  any  -> CURRENT
    caught_up         the store's epoch is ours and its log unbroken
                      (on a reconnect, or the periodic check)               SNAPSHOT, CURRENT, STALE -> CURRENT
    connection_lost   the store is unreachable                              CURRENT -> STALE (others stay)
    store_lost        the store has no epoch while we hold data             SNAPSHOT, CURRENT, STALE, LOST -> LOST

Anything else (say ``caught_up`` while ``LOST``: only a full publish ends a loss) is a bug in the
caller and raises :class:`IllegalTransition`. Besides the state the machine keeps the two facts
``/readyz`` has always shown next to it: ``synced`` (a sync from the store completed at least
once) and ``from_snapshot`` (what is served came from the file, no full sync replaced it yet),
and ``stale_since``, when the table stopped being known-current (``RouteTable.staleness``).

Pure Python with no I/O: the table passes its clock and a callback run on every change of
state (it logs the change and wakes whoever waits for readiness).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final


class TableState(enum.StrEnum):
    """Where a route table stands (:attr:`RouteTable.state`; ``/readyz`` ``table.state`` and the
    ``turnout_route_table_state`` metric)."""

    COLD = "cold"  # nothing to serve yet: no snapshot loaded, no sync from the store
    SNAPSHOT = "snapshot"  # serving a snapshot file; not synced from the store yet
    CURRENT = "current"  # synced, and following the store's change log without a gap
    STALE = "stale"  # synced once, not known-current now: the store is unreachable
    LOST = "lost"  # the store lost its data: serving what was held until a full publish


class TableEvent(enum.StrEnum):
    SNAPSHOT_LOADED = "snapshot_loaded"
    FULL_SYNC = "full_sync"
    CAUGHT_UP = "caught_up"
    CONNECTION_LOST = "connection_lost"
    STORE_LOST = "store_lost"


_C, _SN, _CU, _ST, _L = (
    TableState.COLD,
    TableState.SNAPSHOT,
    TableState.CURRENT,
    TableState.STALE,
    TableState.LOST,
)
_E = TableEvent

# (event, from) -> to. The only place a table's state changes.
TRANSITIONS: Final[dict[tuple[TableEvent, TableState], TableState]] = {
    (_E.SNAPSHOT_LOADED, _C): _SN,
    **{(_E.FULL_SYNC, s): _CU for s in TableState},
    (_E.CAUGHT_UP, _SN): _CU,
    (_E.CAUGHT_UP, _CU): _CU,
    (_E.CAUGHT_UP, _ST): _CU,
    (_E.CONNECTION_LOST, _C): _C,  # nothing held: still nothing to serve
    (_E.CONNECTION_LOST, _SN): _SN,  # a snapshot is not known-current anyway
    (_E.CONNECTION_LOST, _CU): _ST,
    (_E.CONNECTION_LOST, _ST): _ST,
    (_E.CONNECTION_LOST, _L): _L,  # still lost: only a full publish ends it
    (_E.STORE_LOST, _SN): _L,
    (_E.STORE_LOST, _CU): _L,
    (_E.STORE_LOST, _ST): _L,
    (_E.STORE_LOST, _L): _L,
}

# States in which the table is served but not known to be current (``stats()["stale"]``).
STALE_STATES: Final = frozenset({_SN, _ST, _L})


class IllegalTransition(RuntimeError):
    """An event the table's current state does not allow (a bug in the caller)."""

    def __init__(self, event: TableEvent, state: TableState) -> None:
        super().__init__(f"route table: {event.value} is not allowed in state {state.value}")
        self.event = event
        self.state = state


class TableLifecycle:
    """One route table's state machine (see the module docstring for the events)."""

    __slots__ = ("_on_change", "clock", "from_snapshot", "stale_since", "state", "synced")

    def __init__(
        self,
        clock: Callable[[], float],
        on_change: Callable[[TableState, TableState, TableEvent], None] | None = None,
    ) -> None:
        self.clock = clock
        self._on_change = on_change
        self.state = TableState.COLD
        self.synced = False  # a sync from the store completed at least once
        self.from_snapshot = False  # serving the file's content, no full sync since
        self.stale_since: float | None = None  # when the table stopped being known-current

    @property
    def stale(self) -> bool:
        return self.state in STALE_STATES

    @property
    def ready(self) -> bool:
        """Something to serve: synced from the store at least once, or a snapshot loaded."""
        return self.state is not TableState.COLD

    # -------------------------------------------------------------- events

    def snapshot_loaded(self, age: float) -> None:
        """A snapshot file ``age`` seconds old was loaded: serve it, stale since it was written."""
        self._advance(TableEvent.SNAPSHOT_LOADED)
        self.from_snapshot = True
        self.stale_since = self.clock() - age

    def full_sync(self) -> None:
        """A full sync from the store completed: current, whatever came before."""
        self._advance(TableEvent.FULL_SYNC)
        self.from_snapshot = False
        self._current()

    def caught_up(self) -> None:
        """The store holds our epoch and an unbroken log after our position: current again."""
        self._advance(TableEvent.CAUGHT_UP)
        self._current()

    def connection_lost(self) -> None:
        """The store is unreachable: what is held is served, no longer known-current."""
        self._advance(TableEvent.CONNECTION_LOST)
        if self.stale_since is None:
            self.stale_since = self.clock()

    def store_lost(self) -> None:
        """The store has no epoch while the table holds data: keep it, lost until a publish."""
        self._advance(TableEvent.STORE_LOST)
        if self.stale_since is None:
            self.stale_since = self.clock()

    # -------------------------------------------------------------- the one transition

    def _current(self) -> None:
        self.synced = True
        self.stale_since = None

    def _advance(self, event: TableEvent) -> None:
        old = self.state
        new = TRANSITIONS.get((event, old))
        if new is None:
            raise IllegalTransition(event, old)
        self.state = new
        if new is not old and self._on_change is not None:
            self._on_change(old, new, event)

    def __repr__(self) -> str:
        return f"TableLifecycle({self.state.value}, synced={self.synced}, from_snapshot={self.from_snapshot})"
