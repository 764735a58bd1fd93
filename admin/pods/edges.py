"""The delegation edge state machine (and the reasons a lease ends).

Theory of operation
-------------------
A spawn creates one edge ``parent → child`` carrying the delegated rules, in state
``outstanding``. While it is outstanding the parent's effective scope holds one write-deny layer
per write rule of the edge (the region is the child's), and the child's own scope is exactly
those rules.

An edge leaves ``outstanding`` once, for ``reclaimed``, with the reason that did it:

    stop           the parent stopped the child (``POST …/children/{child}/stop``)
    shutdown       the child's own notice (``POST …/pods/{child}/shutdown``)
    lease_expired  the leader's lease reaper found the child's lease expired
    restore_prune  the parent was restored and found the child dead
    rebuild_prune  ``pods:rebuild`` found the child dead

``reclaimed`` is terminal: reclaiming again is a no-op (the first reason and time stay), and
the SQL update is conditional on ``state = 'outstanding'`` so two transactions racing to reclaim
the same edge cannot both count. When an edge is reclaimed the child's own outstanding edges are
*re-parented* to the edge's parent (``outstanding → outstanding``, a new parent): the
grandchildren keep their regions and the parent gains their deny layers in place of the
reclaimed child's. A reclaimed edge never moves.

Every transition is checked by :func:`transition`; an illegal one raises
:class:`IllegalTransition` (a bug, never a user error).
"""

from __future__ import annotations

import enum
from typing import Final


class EdgeState(enum.StrEnum):
    OUTSTANDING = "outstanding"
    RECLAIMED = "reclaimed"


class EdgeEvent(enum.StrEnum):
    RECLAIM = "reclaim"
    REPARENT = "reparent"


class ReclaimReason(enum.StrEnum):
    STOP = "stop"
    SHUTDOWN = "shutdown"
    LEASE_EXPIRED = "lease_expired"
    RESTORE_PRUNE = "restore_prune"
    REBUILD_PRUNE = "rebuild_prune"


class LeaseEnd(enum.StrEnum):
    """Why a live allocation ended (``pod_leases.end_reason``)."""

    SUPERSEDED = "superseded"  # the pod attached again (a restart): the new lease replaces it
    RELEASED = "released"  # the runtime released it
    EXPIRED = "expired"  # no heartbeat within the TTL (ended by the reaper, a restore or rebuild)
    RECLAIMED = "reclaimed"  # the pod's delegation was reclaimed


class IllegalTransition(RuntimeError):
    def __init__(self, state: EdgeState, event: EdgeEvent) -> None:
        super().__init__(f"delegation edge: {event.value} is not allowed in state {state.value}")
        self.state = state
        self.event = event


# (state, event) -> (next state, whether anything changes)
_TRANSITIONS: Final[dict[tuple[EdgeState, EdgeEvent], tuple[EdgeState, bool]]] = {
    (EdgeState.OUTSTANDING, EdgeEvent.RECLAIM): (EdgeState.RECLAIMED, True),
    (EdgeState.RECLAIMED, EdgeEvent.RECLAIM): (EdgeState.RECLAIMED, False),  # twice: a no-op
    (EdgeState.OUTSTANDING, EdgeEvent.REPARENT): (EdgeState.OUTSTANDING, True),
}


def transition(state: EdgeState | str, event: EdgeEvent) -> tuple[EdgeState, bool]:
    """The state after ``event`` and whether it changes anything; raises on illegal moves."""
    current = EdgeState(state)
    try:
        return _TRANSITIONS[(current, event)]
    except KeyError:
        raise IllegalTransition(current, event) from None
