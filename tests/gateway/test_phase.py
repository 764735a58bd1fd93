"""The exchange's response phase (gateway/phase.py): every legal move, every illegal one refused,
and the native exchange walking the phases over fake transports (tests/gateway/test_native.py's
harness). The whole suite runs with TURNOUT_CHECK_PHASES=1 (tests/conftest.py), so every
exchange of every test — native and ASGI — has its moves checked too."""

from __future__ import annotations

import itertools

import pytest

from gateway import phase
from gateway.config import GatewayConfig
from gateway.exchange import Exchange
from gateway.phase import (
    ABORTED,
    DONE,
    HEAD,
    SENDING,
    TUNNEL,
    WAITING,
    IllegalPhase,
    check,
    transition,
)
from tests.gateway.test_native import Harness, head_of, request

ALL = (WAITING, HEAD, SENDING, TUNNEL, DONE, ABORTED)
LEGAL = {
    (WAITING, HEAD),
    (WAITING, SENDING),
    (WAITING, TUNNEL),
    (WAITING, ABORTED),
    (HEAD, WAITING),
    (HEAD, SENDING),
    (HEAD, ABORTED),
    (SENDING, DONE),
    (SENDING, ABORTED),
    (TUNNEL, DONE),
}


def test_the_checks_are_on_in_the_test_suite() -> None:
    assert phase.CHECKED, "tests/conftest.py sets TURNOUT_CHECK_PHASES=1 before gateway loads"


def test_the_table_is_the_expected_one() -> None:
    assert {(a, b) for a, tos in phase.TRANSITIONS.items() for b in tos} == LEGAL
    assert set(phase.TRANSITIONS) == set(ALL)
    assert [phase.phase_name(p) for p in ALL] == list(phase.NAMES)


@pytest.mark.parametrize(("current", "to"), sorted(LEGAL))
def test_every_legal_move_passes(current: int, to: int) -> None:
    check(current, to)


ILLEGAL = sorted(set(itertools.product(ALL, ALL)) - LEGAL)


@pytest.mark.parametrize(("current", "to"), ILLEGAL)
def test_every_illegal_move_is_refused(current: int, to: int) -> None:
    with pytest.raises(IllegalPhase, match=f"{phase.NAMES[current]} -> {phase.NAMES[to]}"):
        check(current, to)


def test_transition_returns_the_new_phase_and_refuses_an_illegal_move() -> None:
    assert transition(WAITING, HEAD) == HEAD and transition(SENDING, ABORTED) == ABORTED
    with pytest.raises(IllegalPhase, match="done -> sending"):
        transition(DONE, SENDING)


def test_an_unknown_phase_is_refused() -> None:
    with pytest.raises(IllegalPhase, match="phase 9 -> waiting"):
        check(9, WAITING)


def current(gw: Harness) -> Exchange:
    ex = gw.client.current
    assert ex is not None
    return ex


async def test_a_proxied_request_goes_waiting_head_sending_done() -> None:
    gw = Harness(GatewayConfig())
    gw.send(request("/"))
    ex = current(gw)
    assert ex.phase == WAITING  # sent upstream, no answer yet
    with pytest.raises(IllegalPhase):
        ex.advance(DONE)  # an exchange cannot skip the response
    assert ex.phase == WAITING
    # The head and part of the body: the head leaves with the first bytes (HEAD -> SENDING).
    out = gw.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok")
    assert head_of(out)[2] == b"ok" and ex.phase == SENDING
    assert gw.answer(b"!!") == b"!!"
    assert ex.phase == DONE and gw.client.current is None
    assert "done" in repr(ex)


async def test_a_response_cut_after_its_head_is_aborted() -> None:
    gw = Harness(GatewayConfig())
    gw.send(request("/"))
    ex = current(gw)
    gw.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart")
    assert ex.phase == SENDING
    gw.up.connection_lost(ConnectionResetError("reset by peer"))
    assert ex.phase == ABORTED and gw.wire.closed  # the client learns it from the close


async def test_a_failure_before_the_head_left_is_answered_cleanly() -> None:
    gw = Harness(GatewayConfig(max_response_headers=2))
    gw.send(request("/"))
    ex = current(gw)
    # Too many headers: refused when the head completes, before any of it went out.
    out = gw.answer(b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nContent-Length: 2\r\n\r\nok")
    assert head_of(out)[0] == b"HTTP/1.1 502 Bad Gateway"
    assert ex.phase == DONE  # WAITING -> SENDING (the gateway's answer) -> DONE


async def test_a_head_held_back_then_refused_goes_back_to_waiting() -> None:
    gw = Harness(GatewayConfig())
    gw.send(request("/"))
    ex = current(gw)
    # The head is complete and held back; an invalid body in the same read refuses the response
    # before the head left: HEAD -> WAITING, then the gateway's own answer.
    out = gw.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert head_of(out)[0] == b"HTTP/1.1 502 Bad Gateway"
    assert ex.phase == DONE
