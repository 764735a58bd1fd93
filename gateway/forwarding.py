"""The forwarding policy both front-ends follow: no sockets, no ASGI, no parser.

After an upstream failure a front-end asks :func:`after_failure` (before any response byte went
to the client) or :func:`after_abort` (the upstream broke its response) what to do, and gets one
of three verdicts:

* :class:`Retry` — send the request again: on a fresh connection to the same replica (a reused
  keep-alive connection died before answering: once), or to the next replica of the target
  (``plan.retryable`` and another replica available; ``plan.attempts``/``plan.replica`` are
  updated here);
* an :class:`~gateway.errors.Answer` — the gateway answers the client itself; which one comes
  from one table keyed by :class:`~gateway.errors.UpstreamErrorKind` (:func:`upstream_answer`);
* :data:`ABORT` — the response head already went out: the client can only learn of the failure
  from its connection being cut.

Passive health (a replica's connect failures and timeouts) is fed here too, so both front-ends
count alike. What is done with a verdict (which pool call, which bytes or ASGI messages) is the
front-end's business.

:class:`Outcomes` is the one place an answered request is recorded: the per-deployment counters,
the per-worker answer counters and the access log line — for a forwarded response, the gateway's
own answers and a response cut short by the upstream alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from gateway.errors import (
    BAD_GATEWAY,
    BAD_GATEWAY_RESPONSE,
    BAD_GATEWAY_UPGRADE,
    GATEWAY_TIMEOUT,
    NO_UPSTREAM,
    UPSTREAM_HEADER_TOO_LARGE,
    Answer,
    UpstreamError,
    UpstreamErrorKind,
)

if TYPE_CHECKING:
    from gateway.accesslog import AccessLog
    from gateway.counters import Counters
    from gateway.dispatch import Plan
    from gateway.pool import UpstreamPool
    from gateway.upstream import Sink
    from routing.upstreams import Replica

# kind -> (the answer while the upstream had sent nothing, the answer once it had responded)
ANSWERS: Final[dict[str, tuple[Answer, Answer]]] = {
    UpstreamErrorKind.CONNECT: (BAD_GATEWAY, BAD_GATEWAY_RESPONSE),
    UpstreamErrorKind.RESET: (BAD_GATEWAY, BAD_GATEWAY_RESPONSE),
    UpstreamErrorKind.CLOSED: (BAD_GATEWAY, BAD_GATEWAY_RESPONSE),
    UpstreamErrorKind.TIMEOUT: (GATEWAY_TIMEOUT, GATEWAY_TIMEOUT),
    UpstreamErrorKind.POOL: (NO_UPSTREAM, NO_UPSTREAM),
    UpstreamErrorKind.PROTOCOL: (BAD_GATEWAY_RESPONSE, BAD_GATEWAY_RESPONSE),
    UpstreamErrorKind.HEAD_TOO_LARGE: (UPSTREAM_HEADER_TOO_LARGE, UPSTREAM_HEADER_TOO_LARGE),
    UpstreamErrorKind.UPGRADE: (BAD_GATEWAY_UPGRADE, BAD_GATEWAY_UPGRADE),
}

# Failures that say the replica itself is unwell (when no request byte reached it).
_HEALTH_FAILURES: Final = frozenset({UpstreamErrorKind.CONNECT, UpstreamErrorKind.TIMEOUT})


def upstream_answer(error: UpstreamError, *, responded: bool) -> Answer:
    """The client's answer for an upstream failure before any response byte reached it.
    ``responded``: the upstream had sent bytes (so a reset means a broken response, not an
    unreachable upstream)."""
    before, after = ANSWERS[error.kind]
    return after if responded else before


class Retry:
    """Send the request again to ``replica``: on a fresh connection (``fresh``: the reused one
    was stale), or through the pool (a failover to another replica)."""

    __slots__ = ("fresh", "replica")

    def __init__(self, replica: Replica, *, fresh: bool) -> None:
        self.replica = replica
        self.fresh = fresh

    def send(self, pool: UpstreamPool, sink: Sink, plan: Plan) -> None:
        """Send the request again, as decided (the pool calls ``sink`` back)."""
        timeout = plan.route.policy.connect_timeout_ms / 1000
        if self.fresh:
            pool.connect_fresh(self.replica, sink, timeout)
        else:
            pool.acquire(self.replica, sink, timeout)

    def __repr__(self) -> str:
        return f"Retry({self.replica!r}, fresh={self.fresh})"


class Abort:
    """The response already started: cut the client's response short."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ABORT"


ABORT: Final = Abort()

Verdict = Retry | Answer | Abort


def after_failure(
    plan: Plan,
    error: UpstreamError,
    *,
    now: float,
    counters: Counters,
    started: bool,
    replayable: bool,
    stale_retried: bool,
) -> Verdict:
    """What to do after the request could not be (completely) sent or answered.

    ``started``: the response head went out to the client; ``replayable``: the request (its
    body included) is still entirely in hand; ``stale_retried``: the one retry on a fresh
    connection was spent already."""
    replica = plan.replica
    assert replica is not None
    if error.kind in _HEALTH_FAILURES and not error.sent:
        replica.record_failure(now)
        counters.connect_errors += 1
    if started:
        return ABORT
    if error.reused and not stale_retried and replayable:
        return Retry(replica, fresh=True)
    if replayable and plan.retryable(error.sent):
        nxt = plan.target.next_replica(now, exclude=replica)
        if nxt is not None:
            plan.attempts += 1
            plan.replica = nxt
            return Retry(nxt, fresh=False)
    return upstream_answer(error, responded=False)


def after_abort(error: UpstreamError, *, started: bool) -> Answer | Abort:
    """The upstream broke off (or sent an invalid) response: a clean answer while the client
    has seen nothing of it, else cut."""
    if started:
        return ABORT
    return upstream_answer(error, responded=True)


def answer_bytes(answer: Answer, body_bytes: int) -> int:
    """What an answer of the gateway's own counts as sent bytes: its body for the 5xx (a
    failure of a deployment's upstream, counted in its usage as such), else nothing."""
    return body_bytes if answer.status >= 500 else 0


class Outcomes:
    """Records how each request ended: counters and the access log, in one place."""

    __slots__ = ("access_log", "counters", "time")

    def __init__(
        self, counters: Counters, access_log: AccessLog | None, time: Callable[[], float]
    ) -> None:
        self.counters = counters
        self.access_log = access_log
        self.time = time  # the clock request start times (t0) were read from

    def answered(
        self,
        plan: Plan | None,
        peer: str,
        method: bytes,
        url: bytes,
        t0: float,
        status: int,
        nbytes: int,
        timed_out: bool,
        request_id: bytes,
    ) -> None:
        """A response went out whole: a forwarded one, or one of the gateway's answers.
        ``plan`` None: the request was never routed (counted only as an answer)."""
        latency = (self.time() - t0) * 1000.0 if t0 else 0.0
        if plan is not None:
            self._record(plan, status, nbytes, latency, timed_out)
        self.counters.answered(status, timed_out)
        access_log = self.access_log
        if access_log is not None and access_log.sampled():
            access_log.write(
                peer=peer,
                method=method,
                url=url,
                host=plan.host if plan is not None else None,
                status=status,
                nbytes=nbytes,
                latency_ms=latency,
                request_id=plan.request_id if plan is not None else request_id,
                deployment=plan.target.deployment_b if plan is not None else None,
            )

    def cut(self, plan: Plan | None, t0: float, status: int, nbytes: int, timed_out: bool) -> None:
        """The upstream failed after the response head (``status``) went out. For the
        deployment's health this is a gateway failure (502, or 504 after a read timeout), not a
        success; no access log line (the response never completed)."""
        if plan is not None:
            latency = (self.time() - t0) * 1000.0
            self._record(plan, 504 if timed_out else 502, nbytes, latency, timed_out)
        self.counters.answered(status, timed_out)

    def _record(
        self, plan: Plan, status: int, nbytes: int, latency: float, timed_out: bool
    ) -> None:
        """Count one request of the plan's deployment (its health and usage)."""
        route = plan.route
        self.counters.count(
            plan.target,
            route.space_b,
            route.service_b,
            status,
            nbytes,
            latency,
            timed_out,
        )
