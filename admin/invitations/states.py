"""Invitation states and their transitions (all of them, here).

Theory of operation
-------------------
A space admin adding a principal who is not a member yet creates a ``pending`` invitation; the
principal is not a member, and learns of it through ``GET /api/invitations``. Nothing about the
principal (name, kind) is shown to the space before it answers. From ``pending``:

- the invitee accepts   → ``accepted`` (the membership row is created in the same transaction),
- the invitee declines  → ``declined``,
- an admin cancels it   → ``cancelled``,
- nobody answers within :data:`INVITATION_TTL_MS` → ``expired``. Expiry is a matter of time, so
  it is derived when a row is read (:func:`effective`) and written down the next time the row is
  touched (a new invitation of the same principal, an answer that comes too late).

Every other state is final. Answered rows stay, so the space can see what became of them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

INVITATION_TTL_MS: Final = 7 * 24 * 3600 * 1000  # a week, as GitHub's organisation invitations


class InvitationStatus(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


TRANSITIONS: Final[dict[InvitationStatus, frozenset[InvitationStatus]]] = {
    InvitationStatus.PENDING: frozenset(
        {
            InvitationStatus.ACCEPTED,
            InvitationStatus.DECLINED,
            InvitationStatus.CANCELLED,
            InvitationStatus.EXPIRED,
        }
    ),
    InvitationStatus.ACCEPTED: frozenset(),
    InvitationStatus.DECLINED: frozenset(),
    InvitationStatus.CANCELLED: frozenset(),
    InvitationStatus.EXPIRED: frozenset(),
}


class IllegalTransition(ValueError):
    def __init__(self, current: InvitationStatus, target: InvitationStatus) -> None:
        super().__init__(f"an invitation cannot go from {current} to {target}")
        self.current = current
        self.target = target


def effective(stored: str, expires_at: int, now: int) -> InvitationStatus:
    """The status a row has now: a pending invitation past its expiry has expired."""
    status = InvitationStatus(stored)
    if status is InvitationStatus.PENDING and expires_at <= now:
        return InvitationStatus.EXPIRED
    return status


def transition(current: InvitationStatus, target: InvitationStatus) -> InvitationStatus:
    """``target`` if ``current`` may move there; :class:`IllegalTransition` otherwise."""
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(current, target)
    return target
