"""The phase of one proxied exchange's response, for both front-ends: the native
:class:`~gateway.exchange.Exchange` and the ASGI :class:`~gateway.asgi.http.HttpExchange`.

One request's *request* side (its body still arriving, or read to the end: ``request_done`` /
``body_done``) and its *response* side overlap — an origin may answer an upload before reading
it, a ``100-continue`` client waits for a word before sending — so one linear phase cannot hold
both. What the forwarding policy and every "may we still answer cleanly?" question read is the
response side, and that is this machine::

    WAITING ──► HEAD ──► SENDING ──► DONE
       │  ▲       │         │
       │  └───────┘         └──────► ABORTED
       ├──► SENDING (the gateway's own answer)
       ├──► TUNNEL ──► DONE (native: a 101, then bytes both ways)
       └──► ABORTED (ASGI: the client went away before anything was sent)

* ``WAITING``: no response yet — dispatching, connecting, sending the request, waiting for
  the upstream's head, retrying. A retry, a failover or an error answer is still possible.
* ``HEAD``: the upstream's response head is in hand and nothing has gone to the client (native:
  held back to leave with the first body bytes in one write; ASGI: ``http.response.start`` not
  sent yet). An upstream failure now goes back to ``WAITING``: a clean answer replaces it.
* ``SENDING``: the response (the upstream's, or the gateway's own answer) has started towards
  the client: the point of no return. A failure now can only cut the response.
* ``TUNNEL``: native only, after a ``101``.
* ``DONE`` / ``ABORTED``: finished and counted; cut mid-way (or, ASGI, abandoned by the client).

Phases are int constants (compiled: ``Final`` ints, no enum objects on the hot path). Each
exchange moves only through its ``advance(to)``, which goes through :func:`transition`: the
move is checked against :data:`TRANSITIONS` when ``TURNOUT_CHECK_PHASES=1`` (the test suite sets
it); in production the check is one test of a ``Final`` bool.
"""

from __future__ import annotations

import os
from typing import Final

WAITING: Final = 0
HEAD: Final = 1
SENDING: Final = 2
TUNNEL: Final = 3
DONE: Final = 4
ABORTED: Final = 5

NAMES: Final = ("waiting", "head", "sending", "tunnel", "done", "aborted")

# from -> the phases it may move to. The only place the moves are written down.
TRANSITIONS: Final[dict[int, frozenset[int]]] = {
    WAITING: frozenset({HEAD, SENDING, TUNNEL, ABORTED}),
    HEAD: frozenset({WAITING, SENDING, ABORTED}),
    SENDING: frozenset({DONE, ABORTED}),
    TUNNEL: frozenset({DONE}),
    DONE: frozenset(),
    ABORTED: frozenset(),
}

# Check every move (tests, debugging); read once at import.
CHECKED: Final = os.environ.get("TURNOUT_CHECK_PHASES", "") == "1"


class IllegalPhase(Exception):
    """A move :data:`TRANSITIONS` does not allow: a bug in the exchange."""


def transition(current: int, to: int) -> int:
    """``to``, once the move from ``current`` is checked (when :data:`CHECKED`). Every
    exchange's ``advance`` goes through here: ``CHECKED`` is read in this module, where compiled
    code has it as a C static (read from another module it would cost a dict lookup)."""
    if CHECKED:
        check(current, to)
    return to


def check(current: int, to: int) -> None:
    """Raise :class:`IllegalPhase` unless ``current -> to`` is a legal move."""
    allowed = TRANSITIONS.get(current)
    if allowed is None or to not in allowed:
        raise IllegalPhase(
            f"exchange phase {phase_name(current)} -> {phase_name(to)} is not allowed"
        )


def phase_name(phase: int) -> str:
    return NAMES[phase] if 0 <= phase < len(NAMES) else f"phase {phase}"
