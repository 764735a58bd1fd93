"""The health gate: reads a canary's counters and decides advance, fail, or wait.

What it reads. The gateways count every forwarded request per deployment per minute into
``{p}:health:<deployment>:<epoch-minute>`` hashes (format: :mod:`routing.health`). For a canary
the gate adds up the minutes of its *window*: the last ``window_minutes`` minutes up to and
including the current one, but none that ended before the current stage's weight took effect —
evidence is taken at the weight being judged (a pause and resume keep the weight, so the
evidence gathered while paused counts). Minutes are whole: the oldest one may hold up to 59 s from
before the stage, the current one is still filling (the gateways flush every second).

What it measures per canary: ``requests`` (every forwarded request, 4xx included), ``errors``
(5xx: upstream 5xx, gateway 502/503/504, timeouts), the error rate, and the p99 latency estimated
from the latency histogram (:func:`routing.health.quantile_ms`: linear inside the bucket holding
the rank-⌈0.99·n⌉ request, off by less than one bucket width, i.e. under 25 % of the true value).

How it decides (:func:`decide`, pure; the reconciler runs it for every rollout in progress):

1. a canary with at least ``min_requests`` requests whose error rate is above
   ``error_rate_threshold``, or whose p99 is above ``p99_latency_ms`` → **fail** (revert), at any
   time, not only when a pause ends: a bad canary is not left serving until its next step;
2. the stage's pause has not elapsed → wait until it has;
3. a canary below ``min_requests`` (or without latency samples when a latency limit is set), or
   counters that cannot be read → wait, check again at the next reconcile (never advance
   without evidence);
4. otherwise advance to the next stage — or promote at the end of the walk (or hold for an
   operator when ``auto_promote`` is false).

Every decision carries the measured inputs, which the history records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from admin.rollouts.machine import Action, Stage, State, next_automatic
from routing.errors import StoreError
from routing.health import Health, sum_health
from routing.runtime_state import RuntimeState

MINUTE_MS: Final = 60_000


@dataclass(frozen=True, slots=True)
class Gate:
    """A rollout's ``health_check``."""

    error_rate_threshold: float = 0.05
    min_requests: int = 100
    window_minutes: int = 5
    p99_latency_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "error_rate_threshold": self.error_rate_threshold,
            "min_requests": self.min_requests,
            "window_minutes": self.window_minutes,
            "p99_latency_ms": self.p99_latency_ms,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Gate:
        p99 = obj.get("p99_latency_ms")
        return cls(
            error_rate_threshold=float(obj["error_rate_threshold"]),
            min_requests=int(obj["min_requests"]),
            window_minutes=int(obj["window_minutes"]),
            p99_latency_ms=None if p99 is None else int(p99),
        )


@dataclass(frozen=True, slots=True)
class Window:
    """Epoch minutes ``first..last`` (inclusive)."""

    first: int
    last: int

    @property
    def minutes(self) -> range:
        return range(self.first, self.last + 1)


def window_for(now_ms: int, stage_started_at: int, window_minutes: int) -> Window:
    last = now_ms // MINUTE_MS
    first = max(last - window_minutes + 1, stage_started_at // MINUTE_MS)
    return Window(min(first, last), last)


class Verdict(StrEnum):
    PASS = "pass"
    INSUFFICIENT = "insufficient"  # not enough evidence yet
    ERROR_RATE = "error_rate"  # fails the error-rate gate
    LATENCY = "latency"  # fails the p99 gate
    UNAVAILABLE = "unavailable"  # the counters could not be read


FAILING: Final = frozenset({Verdict.ERROR_RATE, Verdict.LATENCY})


@dataclass(frozen=True, slots=True)
class Reading:
    """One canary's counters over the window, or why they could not be read."""

    service_id: str
    service: str  # its name
    deployment_id: str
    health: Health | None
    error: str | None = None


def _pct(rate: float) -> str:
    return f"{rate * 100:.2f} %"


def _ms(value: float) -> str:
    return f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.2f} s"


@dataclass(frozen=True, slots=True)
class LegResult:
    reading: Reading
    verdict: Verdict
    reason: str
    p99_ms: float | None

    def to_json(self) -> dict[str, Any]:
        h = self.reading.health
        rate = h.error_rate if h is not None else None
        return {
            "service_id": self.reading.service_id,
            "service": self.reading.service,
            "deployment_id": self.reading.deployment_id,
            "requests": h.total if h is not None else 0,
            "errors": h.errors if h is not None else 0,
            "error_rate": None if rate is None else round(rate, 6),
            "p99_ms": None if self.p99_ms is None else round(self.p99_ms, 3),
            "latency_samples": h.latency_samples if h is not None else 0,
            "verdict": self.verdict.value,
            "reason": self.reason,
        }


def judge(reading: Reading, gate: Gate, window: Window) -> LegResult:
    """The verdict on one canary (see the module docstring for the rules)."""
    name, h = reading.service, reading.health
    span = f"in {len(window.minutes)} min"
    if h is None:
        return LegResult(
            reading, Verdict.UNAVAILABLE, f"{name}: counters unavailable: {reading.error}", None
        )
    p99 = h.p99_ms()
    if h.total < gate.min_requests:
        return LegResult(
            reading,
            Verdict.INSUFFICIENT,
            f"{name}: {h.total} of the {gate.min_requests} requests needed {span}",
            p99,
        )
    rate = h.errors / h.total
    if rate > gate.error_rate_threshold:
        return LegResult(
            reading,
            Verdict.ERROR_RATE,
            f"{name}: error rate {_pct(rate)} ({h.errors} of {h.total} requests {span}) is "
            f"above the threshold {_pct(gate.error_rate_threshold)}",
            p99,
        )
    if gate.p99_latency_ms is not None:
        if p99 is None:
            return LegResult(
                reading, Verdict.INSUFFICIENT, f"{name}: no latency samples {span}", None
            )
        if p99 > gate.p99_latency_ms:
            return LegResult(
                reading,
                Verdict.LATENCY,
                f"{name}: p99 latency {_ms(p99)} (over {h.latency_samples} requests {span}) "
                f"is above the limit {_ms(gate.p99_latency_ms)}",
                p99,
            )
    latency = f", p99 {_ms(p99)}" if p99 is not None else ""
    return LegResult(
        reading,
        Verdict.PASS,
        f"{name}: error rate {_pct(rate)} ({h.errors} of {h.total} requests {span}){latency}",
        p99,
    )


_SEVERITY: Final = {
    Verdict.ERROR_RATE: 4,
    Verdict.LATENCY: 3,
    Verdict.UNAVAILABLE: 2,
    Verdict.INSUFFICIENT: 1,
    Verdict.PASS: 0,
}


@dataclass(frozen=True, slots=True)
class Measurement:
    """The gate's inputs at one moment, for every leg of a rollout."""

    measured_at: int  # ms
    window: Window
    gate: Gate
    legs: tuple[LegResult, ...]

    @property
    def verdict(self) -> Verdict:
        """The worst leg's verdict (a rollout advances only when every leg passes)."""
        return max(
            (leg.verdict for leg in self.legs), key=_SEVERITY.__getitem__, default=Verdict.PASS
        )

    @property
    def reason(self) -> str:
        worst = self.verdict
        return "; ".join(leg.reason for leg in self.legs if leg.verdict is worst) or "no services"

    def to_json(self) -> dict[str, Any]:
        return {
            "measured_at": self.measured_at,
            "window_start": self.window.first * MINUTE_MS,
            "window_end": (self.window.last + 1) * MINUTE_MS,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "services": [leg.to_json() for leg in self.legs],
        }


def assess(
    readings: Iterable[Reading], gate: Gate, window: Window, measured_at: int
) -> Measurement:
    return Measurement(measured_at, window, gate, tuple(judge(r, gate, window) for r in readings))


async def read(
    runtime: RuntimeState, legs: Sequence[tuple[str, str, str]], window: Window
) -> list[Reading]:
    """Each canary's counters over ``window``; ``legs`` are (service id, name, deployment id).
    The one I/O of this module; a store failure becomes a reading with ``error`` set."""
    out: list[Reading] = []
    for service_id, name, dep_id in legs:
        keys = [runtime.keys.health(dep_id, m) for m in window.minutes]
        try:
            hashes = await runtime.hgetall_many(keys)
        except StoreError as exc:
            out.append(Reading(service_id, name, dep_id, None, str(exc)))
            continue
        out.append(Reading(service_id, name, dep_id, sum_health(hashes)))
    return out


@dataclass(frozen=True, slots=True)
class Decision:
    """What the reconciler does now: ``action`` (None: nothing yet), why, and when to look
    again (``next_decision_at``) — with ``waiting`` saying what an elapsed stage waits for."""

    action: Action | None
    reason: str
    next_decision_at: int | None
    waiting: str | None = None


def pause_ends(stages: Sequence[Stage], stage: int, pause_started_at: int) -> int:
    return pause_started_at + stages[stage].pause_minutes * MINUTE_MS


def decide(
    *,
    state: State,
    stages: Sequence[Stage],
    stage: int,
    auto_promote: bool,
    pause_started_at: int,
    measurement: Measurement,
    now_ms: int,
    recheck_ms: int,
) -> Decision:
    """The reconciler's decision for one rollout (rules in the module docstring)."""
    if state is not State.IN_PROGRESS:
        return Decision(None, f"the rollout is {state.value}", None)
    verdict = measurement.verdict
    if verdict in FAILING:
        return Decision(Action.FAIL, measurement.reason, None)
    due = pause_ends(stages, stage, pause_started_at)
    if now_ms < due:
        return Decision(None, f"stage {stage + 1} pauses until {due}", due)
    recheck = now_ms + max(1, recheck_ms)
    if verdict is Verdict.UNAVAILABLE:
        return Decision(None, measurement.reason, recheck, measurement.reason)
    if verdict is Verdict.INSUFFICIENT:
        return Decision(
            None, measurement.reason, recheck, f"waiting for evidence: {measurement.reason}"
        )
    action = next_automatic(stages, stage, auto_promote)
    if action is None:
        note = "awaiting promotion: auto_promote is false (POST …/rollout/promote finishes it)"
        return Decision(None, note, recheck, note)
    return Decision(action, f"gate passed: {measurement.reason}", None)
