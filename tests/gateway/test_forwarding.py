"""The forwarding policy (gateway/forwarding.py), without any transport: verdicts after an
upstream failure, the error -> answer table, and the outcome recorder."""

from __future__ import annotations

import io

import orjson
import pytest

from gateway import errors
from gateway.accesslog import AccessLog
from gateway.config import GatewayConfig
from gateway.counters import Counters
from gateway.dispatch import Dispatcher, Plan
from gateway.errors import UpstreamError, UpstreamErrorKind
from gateway.forwarding import (
    ABORT,
    ANSWERS,
    Outcomes,
    Retry,
    after_abort,
    after_failure,
    upstream_answer,
)
from routing.compiled import CompiledRoute
from routing.models import decode_record
from routing.store import MemoryRouteStore
from routing.table import RouteTable


def _plan(method: bytes = b"GET", *, replicas: int = 2, retries: int = 1) -> Plan:
    table = RouteTable(MemoryRouteStore())
    record = decode_record(
        {
            "host": "a.test",
            "version": 1,
            "space_id": "sp",
            "service_id": "svc",
            "policy": {"retries": retries},
            "endpoints": [
                {
                    "path_prefix": "/",
                    "targets": [
                        {
                            "deployment_id": "d",
                            "weight": 10000,
                            "status": "active",
                            "upstreams": [f"http://127.0.0.1:{9000 + i}" for i in range(replicas)],
                        }
                    ],
                }
            ],
        }
    )
    table.routes[b"a.test"] = CompiledRoute(record, table.registry)
    plan = Dispatcher(table, GatewayConfig()).prepare(
        method, b"/", None, [(b"Host", b"a.test")], "10.0.0.1", 0.0
    )
    assert isinstance(plan, Plan)
    plan.attempts = 1
    return plan


def _decide(plan: Plan, error: UpstreamError, **kw: bool) -> object:
    args = {"started": False, "replayable": True, "stale_retried": False} | kw
    return after_failure(plan, error, now=1.0, counters=Counters(), **args)


def test_every_error_kind_has_an_answer_before_and_after_a_response() -> None:
    assert set(ANSWERS) == set(UpstreamErrorKind)
    for kind in UpstreamErrorKind:
        error = UpstreamError(kind, "x")
        assert upstream_answer(error, responded=False) is ANSWERS[kind][0]
        assert upstream_answer(error, responded=True) is ANSWERS[kind][1]
    with pytest.raises(ValueError):
        UpstreamError("no-such-kind", "x")


def test_a_started_response_is_aborted_and_the_replica_blamed() -> None:
    plan = _plan()
    counters = Counters()
    verdict = after_failure(
        plan,
        UpstreamError("connect", "refused"),
        now=1.0,
        counters=counters,
        started=True,
        replayable=True,
        stale_retried=False,
    )
    assert verdict is ABORT
    assert counters.connect_errors == 1  # a connect failure counts whatever the verdict


def test_a_stale_reused_connection_is_retried_once_on_a_fresh_one() -> None:
    plan = _plan()
    first = plan.replica
    error = UpstreamError("reset", "closed", sent=True, reused=True)
    verdict = _decide(plan, error)
    assert isinstance(verdict, Retry) and verdict.fresh and verdict.replica is first
    assert plan.attempts == 1  # not a failover: the same replica, the same attempt
    # the fresh retry spent: an idempotent request without body fails over instead
    verdict = _decide(plan, error, stale_retried=True)
    assert isinstance(verdict, Retry) and not verdict.fresh and verdict.replica is not first
    assert plan.attempts == 2 and plan.replica is verdict.replica


def test_connect_failure_fails_over_until_the_retries_are_spent() -> None:
    plan = _plan(retries=1)
    verdict = _decide(plan, UpstreamError("connect", "refused"))
    assert isinstance(verdict, Retry) and not verdict.fresh
    verdict = _decide(plan, UpstreamError("connect", "refused"))
    assert verdict is errors.BAD_GATEWAY
    timeout = _decide(_plan(retries=0), UpstreamError("timeout", "slow"))
    assert timeout is errors.GATEWAY_TIMEOUT


def test_a_request_not_in_hand_is_never_sent_again() -> None:
    verdict = _decide(_plan(), UpstreamError("reset", "x", reused=True), replayable=False)
    assert verdict is errors.BAD_GATEWAY
    # a non-idempotent request that may have reached the upstream: no failover either
    verdict = _decide(_plan(b"POST"), UpstreamError("reset", "x", sent=True))
    assert verdict is errors.BAD_GATEWAY


def test_no_other_replica_means_an_answer() -> None:
    verdict = _decide(_plan(replicas=1), UpstreamError("connect", "refused"))
    assert verdict is errors.BAD_GATEWAY


def test_after_abort() -> None:
    error = UpstreamError("protocol", "bad framing")
    assert after_abort(error, started=True) is ABORT
    assert after_abort(error, started=False) is errors.BAD_GATEWAY_RESPONSE


def test_outcomes_count_and_log_every_answer_once() -> None:
    counters = Counters()
    stream = io.StringIO()
    outcomes = Outcomes(counters, AccessLog(1.0, stream), lambda: 2.0)
    plan = _plan()
    outcomes.answered(plan, "10.0.0.1", b"GET", b"/x", 1.5, 200, 12, False, b"")
    outcomes.answered(None, "10.0.0.2", b"GET", b"/y", 1.0, 404, 0, False, b"rid-1")
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [(x["status"], x["request_id"], x["host"]) for x in lines] == [
        (200, plan.request_id.decode(), "a.test"),
        (404, "rid-1", None),
    ]
    assert lines[0]["latency_ms"] == 500.0 and lines[0]["deployment"] == "d"
    assert counters.requests_total == 2
    assert list(counters.pending) == [(b"sp", b"svc", b"d")]  # only the routed one


def test_a_cut_response_counts_as_a_gateway_failure_without_a_log_line() -> None:
    counters = Counters()
    stream = io.StringIO()
    outcomes = Outcomes(counters, AccessLog(1.0, stream), lambda: 2.0)
    outcomes.cut(_plan(), 1.0, 200, 100, timed_out=True)
    assert stream.getvalue() == ""
    assert counters.timeouts_total == 1 and counters.by_class[2] == 1  # the status sent: 200
    (row,) = counters.pending.values()
    assert (row.requests, row.c2, row.c5, row.timeouts, row.bytes) == (1, 0, 1, 1, 100)
