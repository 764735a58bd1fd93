"""The route table's state machine on its own: every legal transition, every illegal one refused,
the facts kept beside the state (synced, from_snapshot, stale_since) and the change callback."""

from __future__ import annotations

import pytest

from routing.tablestate import (
    STALE_STATES,
    TRANSITIONS,
    IllegalTransition,
    TableEvent,
    TableLifecycle,
    TableState,
)

S = TableState
E = TableEvent

# The whole machine, written out once more by hand: a change to TRANSITIONS must change this too.
EXPECTED = {
    (E.SNAPSHOT_LOADED, S.COLD): S.SNAPSHOT,
    (E.FULL_SYNC, S.COLD): S.CURRENT,
    (E.FULL_SYNC, S.SNAPSHOT): S.CURRENT,
    (E.FULL_SYNC, S.CURRENT): S.CURRENT,
    (E.FULL_SYNC, S.STALE): S.CURRENT,
    (E.FULL_SYNC, S.LOST): S.CURRENT,
    (E.CAUGHT_UP, S.SNAPSHOT): S.CURRENT,
    (E.CAUGHT_UP, S.CURRENT): S.CURRENT,
    (E.CAUGHT_UP, S.STALE): S.CURRENT,
    (E.CONNECTION_LOST, S.COLD): S.COLD,
    (E.CONNECTION_LOST, S.SNAPSHOT): S.SNAPSHOT,
    (E.CONNECTION_LOST, S.CURRENT): S.STALE,
    (E.CONNECTION_LOST, S.STALE): S.STALE,
    (E.CONNECTION_LOST, S.LOST): S.LOST,
    (E.STORE_LOST, S.SNAPSHOT): S.LOST,
    (E.STORE_LOST, S.CURRENT): S.LOST,
    (E.STORE_LOST, S.STALE): S.LOST,
    (E.STORE_LOST, S.LOST): S.LOST,
}

# How to bring a fresh machine into each state through legal events only.
PATHS: dict[TableState, list[TableEvent]] = {
    S.COLD: [],
    S.SNAPSHOT: [E.SNAPSHOT_LOADED],
    S.CURRENT: [E.FULL_SYNC],
    S.STALE: [E.FULL_SYNC, E.CONNECTION_LOST],
    S.LOST: [E.FULL_SYNC, E.STORE_LOST],
}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fire(machine: TableLifecycle, event: TableEvent) -> None:
    if event is E.SNAPSHOT_LOADED:
        machine.snapshot_loaded(age=5.0)
    else:
        getattr(machine, event.value)()


def machine_in(state: TableState) -> tuple[TableLifecycle, list[tuple[S, S, E]], Clock]:
    clock = Clock()
    changes: list[tuple[S, S, E]] = []
    machine = TableLifecycle(clock, lambda old, new, ev: changes.append((old, new, ev)))
    for event in PATHS[state]:
        fire(machine, event)
    assert machine.state is state
    changes.clear()
    return machine, changes, clock


def test_the_table_of_transitions_is_the_expected_one() -> None:
    assert TRANSITIONS == EXPECTED
    assert set(STALE_STATES) == {S.SNAPSHOT, S.STALE, S.LOST}


@pytest.mark.parametrize(("event", "start"), sorted(EXPECTED, key=str))
def test_every_legal_transition(event: TableEvent, start: TableState) -> None:
    machine, changes, _ = machine_in(start)
    fire(machine, event)
    end = EXPECTED[(event, start)]
    assert machine.state is end
    # The callback hears about a change of state, and only about one.
    assert changes == ([] if end is start else [(start, end, event)])
    assert machine.stale is (end in STALE_STATES)
    assert machine.ready is (end is not S.COLD)


ILLEGAL = [(e, s) for e in TableEvent for s in TableState if (e, s) not in EXPECTED]


def test_the_illegal_ones_are_the_expected_ones() -> None:
    assert set(ILLEGAL) == {
        (E.SNAPSHOT_LOADED, S.SNAPSHOT),
        (E.SNAPSHOT_LOADED, S.CURRENT),
        (E.SNAPSHOT_LOADED, S.STALE),
        (E.SNAPSHOT_LOADED, S.LOST),
        (E.CAUGHT_UP, S.COLD),  # nothing held: a full sync, never a catch-up
        (E.CAUGHT_UP, S.LOST),  # only a full publish ends a loss
        (E.STORE_LOST, S.COLD),  # nothing held: nothing to keep
    }


@pytest.mark.parametrize(("event", "start"), ILLEGAL)
def test_an_illegal_transition_is_refused_and_changes_nothing(
    event: TableEvent, start: TableState
) -> None:
    machine, changes, _ = machine_in(start)
    before = (machine.synced, machine.from_snapshot, machine.stale_since)
    with pytest.raises(IllegalTransition) as caught:
        fire(machine, event)
    assert (caught.value.event, caught.value.state) == (event, start)
    assert f"{event.value} is not allowed in state {start.value}" in str(caught.value)
    assert machine.state is start and changes == []
    assert (machine.synced, machine.from_snapshot, machine.stale_since) == before


def test_synced_from_snapshot_and_stale_since_follow_the_events() -> None:
    machine, _, clock = machine_in(S.COLD)
    assert (machine.synced, machine.from_snapshot, machine.stale_since) == (False, False, None)
    machine.connection_lost()  # a cold start with the store down: stale from the first failure
    assert machine.state is S.COLD and machine.stale_since == 100.0 and not machine.ready

    machine, _, clock = machine_in(S.COLD)
    machine.snapshot_loaded(age=30.0)  # stale since the file was written
    assert (machine.from_snapshot, machine.synced, machine.stale_since) == (True, False, 70.0)
    clock.now = 110.0
    machine.store_lost()  # the snapshot's content is still what is served
    assert machine.state is S.LOST and machine.from_snapshot and machine.stale_since == 70.0
    machine.full_sync()
    assert (machine.from_snapshot, machine.synced, machine.stale_since) == (False, True, None)

    clock.now = 120.0
    machine.connection_lost()
    assert machine.state is S.STALE and machine.stale_since == 120.0
    clock.now = 125.0
    machine.connection_lost()  # still the first failure's time
    assert machine.stale_since == 120.0
    machine.caught_up()
    assert machine.state is S.CURRENT and machine.stale_since is None

    machine, _, _ = machine_in(S.SNAPSHOT)
    machine.caught_up()  # the file's epoch is the store's and the log unbroken
    assert machine.state is S.CURRENT and machine.synced and machine.from_snapshot
    assert "current" in repr(machine)


def test_without_a_callback_transitions_still_apply() -> None:
    machine = TableLifecycle(Clock())
    machine.full_sync()
    machine.store_lost()
    assert machine.state is S.LOST
