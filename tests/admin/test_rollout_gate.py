"""The health gate: window, verdicts and the reconciler's decision (pure functions)."""

from __future__ import annotations

import pytest

from admin.rollouts.gate import (
    MINUTE_MS,
    Gate,
    Measurement,
    Reading,
    Verdict,
    Window,
    assess,
    decide,
    judge,
    window_for,
)
from admin.rollouts.machine import Action, Stage, State
from routing.health import LATENCY_BUCKETS, Health, latency_bucket

STAGES = (Stage(1, 5), Stage(5, 0), Stage(100, 0))
T0 = 1_700_000_000_000 - 1_700_000_000_000 % MINUTE_MS  # a minute boundary
WINDOW = Window(T0 // MINUTE_MS - 4, T0 // MINUTE_MS)


def health(total: int, errors: int = 0, latency_ms: float | None = 2.0) -> Health:
    h = Health(total=total, ok=total - errors, errors=errors)
    if latency_ms is not None:
        h.hist[latency_bucket(latency_ms)] = total
    return h


def reading(h: Health | None, name: str = "web", error: str | None = None) -> Reading:
    return Reading(f"svc-{name}", name, f"dep-{name}", h, error)


def test_window_is_the_last_minutes_but_never_before_the_stage() -> None:
    now = T0 + 30_000
    m = now // MINUTE_MS
    assert window_for(now, now - 3_600_000, 5) == Window(m - 4, m)
    assert window_for(now, now - 90_000, 5) == Window(m - 1, m)  # stage began a minute ago
    assert window_for(now, now, 5) == Window(m, m)
    assert window_for(now, now + MINUTE_MS, 5) == Window(m, m)  # clock skew: never empty
    assert list(Window(3, 5).minutes) == [3, 4, 5]


@pytest.mark.parametrize(
    ("h", "gate", "verdict", "fragment"),
    [
        (health(99), Gate(min_requests=100), Verdict.INSUFFICIENT, "99 of the 100 requests"),
        (health(100), Gate(min_requests=100), Verdict.PASS, "error rate 0.00 %"),
        (
            health(100, errors=5),
            Gate(min_requests=100),
            Verdict.PASS,
            "5 of 100",
        ),  # 5 % is not above the 5 % threshold
        (
            health(100, errors=6),
            Gate(min_requests=100),
            Verdict.ERROR_RATE,
            "error rate 6.00 % (6 of 100 requests in 5 min) is above the threshold 5.00 %",
        ),
        (
            health(500, errors=1),
            Gate(error_rate_threshold=0.0, min_requests=1),
            Verdict.ERROR_RATE,
            "0.20 %",
        ),
        (
            health(200, latency_ms=300.0),
            Gate(min_requests=100, p99_latency_ms=250),
            Verdict.LATENCY,
            "p99 latency 30",
        ),
        (
            health(200, latency_ms=3.0),
            Gate(min_requests=100, p99_latency_ms=250),
            Verdict.PASS,
            "p99 3",
        ),
        (
            health(200, latency_ms=None),
            Gate(min_requests=100, p99_latency_ms=250),
            Verdict.INSUFFICIENT,
            "no latency samples",
        ),
        (None, Gate(), Verdict.UNAVAILABLE, "counters unavailable: boom"),
    ],
)
def test_judge(h: Health | None, gate: Gate, verdict: Verdict, fragment: str) -> None:
    result = judge(reading(h, error="boom"), gate, WINDOW)
    assert result.verdict is verdict, result.reason
    assert fragment in result.reason
    assert result.reason.startswith("web: ")
    doc = result.to_json()
    assert doc["verdict"] == verdict.value and doc["service"] == "web"
    if h is not None:
        assert (doc["requests"], doc["errors"]) == (h.total, h.errors)


def test_errors_below_min_requests_do_not_fail_the_gate() -> None:
    # 10 of 10 failing, but 10 requests are no evidence yet: wait for more, then decide.
    result = judge(reading(health(10, errors=10)), Gate(min_requests=100), WINDOW)
    assert result.verdict is Verdict.INSUFFICIENT


def measure(*legs: Health | None, gate: Gate | None = None) -> Measurement:
    readings = [reading(h, name=f"s{i}", error="down") for i, h in enumerate(legs)]
    return assess(readings, gate or Gate(min_requests=100, p99_latency_ms=250), WINDOW, T0)


def test_the_worst_leg_decides() -> None:
    assert measure(health(200), health(200)).verdict is Verdict.PASS
    assert measure(health(200), health(50)).verdict is Verdict.INSUFFICIENT
    assert measure(health(50), None).verdict is Verdict.UNAVAILABLE
    m = measure(None, health(200, errors=100), health(200, latency_ms=900.0))
    assert m.verdict is Verdict.ERROR_RATE
    assert m.reason.startswith("s1: error rate 50.00 %")  # only the worst legs are named
    doc = m.to_json()
    assert [s["verdict"] for s in doc["services"]] == ["unavailable", "error_rate", "latency"]
    assert (doc["window_start"], doc["window_end"]) == (
        WINDOW.first * MINUTE_MS,
        (WINDOW.last + 1) * MINUTE_MS,
    )


def run(
    m: Measurement,
    *,
    now: int,
    stage: int = 0,
    started: int = T0,
    auto: bool = True,
    state: State = State.IN_PROGRESS,
) -> tuple[Action | None, int | None, str | None]:
    d = decide(
        state=state,
        stages=STAGES,
        stage=stage,
        auto_promote=auto,
        pause_started_at=started,
        measurement=m,
        now_ms=now,
        recheck_ms=60_000,
    )
    return d.action, d.next_decision_at, d.waiting


def test_decide_fails_at_once_even_during_the_pause() -> None:
    action, _, _ = run(measure(health(200, errors=50)), now=T0 + 1000)
    assert action is Action.FAIL


def test_decide_waits_for_the_pause_then_for_evidence_then_advances() -> None:
    pause_end = T0 + 5 * MINUTE_MS
    assert run(measure(health(200)), now=T0 + 1000) == (None, pause_end, None)
    action, nxt, waiting = run(measure(health(20)), now=pause_end)
    assert action is None and nxt == pause_end + 60_000
    assert waiting is not None and "waiting for evidence" in waiting and "20 of the 100" in waiting
    action, nxt, waiting = run(measure(None), now=pause_end)
    assert action is None and waiting is not None and "unavailable" in waiting
    assert run(measure(health(200)), now=pause_end)[0] is Action.ADVANCE


def test_decide_promotes_at_the_end_or_holds_without_auto_promote() -> None:
    now = T0 + MINUTE_MS
    assert run(measure(health(200)), now=now, stage=1)[0] is Action.PROMOTE
    action, nxt, waiting = run(measure(health(200)), now=now, stage=1, auto=False)
    assert action is None and nxt == now + 60_000
    assert waiting is not None and "awaiting promotion" in waiting
    # holding still guards: a canary going bad while it waits is reverted
    assert run(measure(health(200, errors=90)), now=now, stage=1, auto=False)[0] is Action.FAIL


def test_decide_does_nothing_unless_in_progress() -> None:
    assert run(measure(health(200, errors=200)), now=T0, state=State.PAUSED) == (None, None, None)


def test_gate_round_trips_json() -> None:
    g = Gate(0.02, 50, 10, 250)
    assert Gate.from_json(g.to_json()) == g
    assert Gate.from_json(Gate().to_json()).p99_latency_ms is None
    assert len(Health().hist) == LATENCY_BUCKETS
