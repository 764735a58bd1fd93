"""The rollout state machine, and every routing move of a service planned in one place.

Theory of operation
-------------------
A *staged rollout* walks a new deployment (the canary) of each service of an app deployment up
a list of stages (weight %, pause minutes; the last one is 100 %), against the service's stable
deployment (the baseline), gated on the canary's own error rate and latency as the gateways
counted them. Its states and the actions that move between them::

                 initiate                 advance (next stage)
       (none) ───────────► in_progress ◄──────────────┐
                            │  │  │  ▲ └──────────────┘
                      pause │  │  │  │ resume
                            ▼  │  │  │
                          paused ┘  │
          abort (in_progress|paused)│ promote (in_progress|paused)   fail (in_progress)
                 ▼                  ▼                                  ▼
              aborted           completed                            failed

* **initiate** — the deploy that created the rollout: the canary gets the first stage's weight,
  the baseline keeps the rest.
* **advance** — the reconciler, when the stage's pause has elapsed and the gate passed: the
  next stage's weight (the canary's weight only ever grows, so sticky users only ever move
  baseline → canary, never back; see ``routing/compiled.py``).
* **pause** / **resume** — an operator holds the weights / lets the walk go on; resume restarts
  the current stage's full pause.
* **abort** (operator) and **fail** (the gate) — 100 % back to the baseline, canary archived.
* **promote** — the operator, or the reconciler at the end of the walk: the canary becomes the
  active deployment at 100 %, the baseline is archived.

:data:`TRANSITIONS` is the whole table; :func:`transition` raises :class:`IllegalTransition`
(409 naming the current state) for every pair not in it. ``completed``, ``aborted`` and
``failed`` are final.

Every routing change of a service goes through a plan from this module — the direct and canary
deploys (:func:`plan_deploy`), rollback (:func:`plan_rollback`) and each rollout step
(:func:`plan_step` + :func:`step_moves`): the callers load the rows, ask for a plan, and apply
its :class:`Move` list in one SQL transaction with optimistic locking on each row's ``version``
(``admin/rollouts/store.py``), then publish through the outbox. Nothing here does I/O.

Weights: a stage weight is a percentage; deployments carry basis points (``routing_weight``,
summing to 10000 over a service's routed deployments).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, Literal

from admin.errors import Conflict, NotFound

TOTAL: Final = 10000
ROUTED: Final = ("active", "canary", "rollback")
STABLE: Final = ("active", "rollback")


class State(StrEnum):
    IN_PROGRESS = "in_progress"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"
    FAILED = "failed"


class Action(StrEnum):
    INITIATE = "initiate"
    ADVANCE = "advance"
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    PROMOTE = "promote"
    FAIL = "fail"


# (state before, action) -> state after; ``None`` is "no rollout yet". Nothing else is legal.
TRANSITIONS: Final[Mapping[tuple[State | None, Action], State]] = MappingProxyType(
    {
        (None, Action.INITIATE): State.IN_PROGRESS,
        (State.IN_PROGRESS, Action.ADVANCE): State.IN_PROGRESS,
        (State.IN_PROGRESS, Action.PAUSE): State.PAUSED,
        (State.PAUSED, Action.RESUME): State.IN_PROGRESS,
        (State.IN_PROGRESS, Action.ABORT): State.ABORTED,
        (State.PAUSED, Action.ABORT): State.ABORTED,
        (State.IN_PROGRESS, Action.PROMOTE): State.COMPLETED,
        (State.PAUSED, Action.PROMOTE): State.COMPLETED,
        (State.IN_PROGRESS, Action.FAIL): State.FAILED,
    }
)
RUNNING: Final = frozenset({State.IN_PROGRESS, State.PAUSED})
FINAL: Final = frozenset({State.COMPLETED, State.ABORTED, State.FAILED})


def allowed_from(action: Action) -> list[State | None]:
    """The states ``action`` may be taken from, in table order."""
    return [state for (state, act) in TRANSITIONS if act is action]


class IllegalTransition(Conflict):
    """409: ``action`` is not allowed in ``state`` (the message names both)."""

    code = "illegal_transition"

    def __init__(self, state: State | None, action: Action) -> None:
        allowed = [s.value if s is not None else "(none)" for s in allowed_from(action)]
        where = f"a rollout that is {state.value}" if state is not None else "no rollout"
        super().__init__(
            f"cannot {action.value} {where} ({action.value} is allowed from "
            f"{' or '.join(allowed)})",
            details={
                "state": state.value if state is not None else None,
                "action": action.value,
                "allowed_from": allowed,
            },
        )
        self.state = state
        self.action = action


def transition(state: State | None, action: Action) -> State:
    """The state after ``action``; raises :class:`IllegalTransition` if it is not allowed."""
    after = TRANSITIONS.get((state, action))
    if after is None:
        raise IllegalTransition(state, action)
    return after


class RolloutInProgress(Conflict):
    """409 ``rollout_in_progress``: a service already has a running rollout."""

    code = "rollout_in_progress"


class NoRollbackTarget(Conflict):
    code = "no_rollback_target"


class LegChanged(Conflict):
    """A rollout's deployments no longer route as the rollout left them."""

    code = "rollout_conflict"


# ------------------------------------------------------------------------------ plan values


@dataclass(frozen=True, slots=True)
class Dep:
    """What planning needs of a deployment row (``version`` is its optimistic lock)."""

    id: str
    number: int
    status: str  # pending | success | failed
    routing_status: str  # active | canary | rollback | archived | rolled_back
    routing_weight: int
    version: int

    @classmethod
    def of(cls, row: Any) -> Dep:
        return cls(
            row.id,
            row.number,
            row.status,
            row.routing_status,
            row.routing_weight,
            row.version,
        )

    @property
    def routed(self) -> bool:
        return self.routing_status in ROUTED


@dataclass(frozen=True, slots=True)
class Move:
    """Set ``dep``'s routing to ``routing_status`` at ``routing_weight`` basis points."""

    dep: Dep
    routing_status: str
    routing_weight: int


def _move(dep: Dep, status: str, weight: int) -> list[Move]:
    """A move, or none when ``dep`` routes like that already."""
    if dep.routing_status == status and dep.routing_weight == weight:
        return []
    return [Move(dep, status, weight)]


Strategy = Literal["direct", "canary", "staged"]


@dataclass(frozen=True, slots=True)
class DeployPlan:
    """A new deployment of one service: its own routing, and what happens to the others."""

    applied: Strategy  # canary/staged without a stable deployment are applied as direct
    routing_status: str
    routing_weight: int
    moves: tuple[Move, ...]
    baseline: Dep | None  # canary/staged: the stable deployment that keeps the rest


def plan_deploy(strategy: Strategy, current: Sequence[Dep], weight_pct: int | None) -> DeployPlan:
    """Route a new deployment: ``direct`` at 100 % (everything else archived); ``canary`` and
    ``staged`` at ``weight_pct`` next to the newest stable deployment (an older canary is
    archived). Without a stable deployment there is no baseline: applied as direct."""
    routed = [d for d in current if d.routed]
    stable = [d for d in routed if d.routing_status in STABLE]
    if strategy != "direct" and stable:
        if weight_pct is None or not 1 <= weight_pct <= 100:
            raise ValueError(f"a {strategy} deploy needs a weight of 1..100 %, not {weight_pct}")
        weight = weight_pct * 100
        base = max(stable, key=lambda d: d.number)
        moves: list[Move] = []
        for d in routed:
            if d.id == base.id:
                moves += _move(d, d.routing_status, TOTAL - weight)
            else:
                moves += _move(d, "archived", 0)
        return DeployPlan(strategy, "canary", weight, tuple(moves), base)
    moves = [m for d in routed for m in _move(d, "archived", 0)]
    return DeployPlan("direct", "active", TOTAL, tuple(moves), None)


@dataclass(frozen=True, slots=True)
class RollbackPlan:
    target: Dep
    target_status: str
    moves: tuple[Move, ...]
    dropped_canary: bool  # the rollback only dropped a canary (the stable one keeps serving)


def plan_rollback(deps: Sequence[Dep], version: int | None) -> RollbackPlan:
    """Roll a service back (``deps``: all its deployments).

    During a canary (a stable deployment next to a canary) a rollback without a version — or
    to the stable deployment's own version — drops the canary: the stable deployment serves
    100 % (as ``rollback``, like every rollback target), the canary is ``archived`` (as a
    canary is by every rollback).
    Otherwise the target is the named version, or the newest successful deployment older than
    the current stable one that carries no traffic; it serves 100 % as ``rollback``, the previous
    stable deployment becomes ``rolled_back`` and any canary ``archived``.
    """
    routed = [d for d in deps if d.routed]
    canaries = [d for d in routed if d.routing_status == "canary"]
    current = max(
        (d for d in routed if d.routing_status in STABLE), key=lambda d: d.number, default=None
    )
    target: Dep | None
    if version is not None:
        target = next((d for d in deps if d.number == version), None)
        if target is None:
            raise NotFound(f"version {version} not found")
        if target.status != "success":
            raise NoRollbackTarget(f"version {version} did not deploy successfully")
    elif current is not None and canaries:
        target = current
    else:
        below = current.number if current is not None else 1 << 62
        target = max(
            (
                d
                for d in deps
                if d.status == "success"
                and d.number < below
                and d.routing_status in ("archived", "rolled_back")
            ),
            key=lambda d: d.number,
            default=None,
        )
        if target is None:
            raise NoRollbackTarget("no previous successful deployment to roll back to")
    if current is not None and target.id == current.id:
        if not canaries:
            raise NoRollbackTarget(f"version {target.number} is already serving all traffic")
        moves = [m for d in canaries for m in _move(d, "archived", 0)]
        moves += _move(current, "rollback", TOTAL)
        return RollbackPlan(current, "rollback", tuple(moves), True)
    moves = []
    for d in routed:
        if d.id != target.id:
            moves += _move(d, "rolled_back" if d.routing_status in STABLE else "archived", 0)
    moves += _move(target, "rollback", TOTAL)
    return RollbackPlan(target, "rollback", tuple(moves), False)


# ------------------------------------------------------------------------------ rollout steps


@dataclass(frozen=True, slots=True)
class Stage:
    weight: int  # percent, 1..100
    pause_minutes: int


@dataclass(frozen=True, slots=True)
class Leg:
    """One service of a rollout: its canary and baseline deployments as they are now."""

    service_id: str
    canary: Dep
    baseline: Dep


@dataclass(frozen=True, slots=True)
class Step:
    """What one action does to a rollout: its state, stage and canary weight afterwards."""

    action: Action
    from_state: State | None
    to_state: State
    from_stage: int | None
    to_stage: int  # 0-based
    from_weight: int | None  # canary percent
    to_weight: int
    restart_pause: bool  # the stage's pause starts (again) now


def canary_weight(state: State, stages: Sequence[Stage], stage: int) -> int:
    """The canary's share (percent) of a rollout in ``state`` at ``stage``."""
    if state is State.COMPLETED:
        return 100
    if state in (State.ABORTED, State.FAILED):
        return 0
    return stages[stage].weight


def plan_step(
    state: State | None, stages: Sequence[Stage], stage: int | None, action: Action
) -> Step:
    """The step ``action`` takes from ``state`` at ``stage`` (None with ``initiate``)."""
    to_state = transition(state, action)
    if not stages or stages[-1].weight != 100:
        raise ValueError("stages must end at 100 %")
    if state is None or stage is None:
        return Step(action, None, to_state, None, 0, None, stages[0].weight, True)
    before = canary_weight(state, stages, stage)
    to_stage = stage
    if action is Action.ADVANCE:
        if stage + 1 >= len(stages):  # the reconciler promotes instead (next_automatic)
            raise ValueError("there is no stage after the last one")
        to_stage = stage + 1
    elif action is Action.PROMOTE:
        to_stage = len(stages) - 1  # the walk's end: the final 100 % stage
    after = canary_weight(to_state, stages, to_stage)
    restart = action in (Action.ADVANCE, Action.RESUME)
    return Step(action, state, to_state, stage, to_stage, before, after, restart)


def step_moves(step: Step, legs: Iterable[Leg]) -> list[Move]:
    """The routing moves of ``step`` for every leg. Raises :class:`LegChanged` when a leg's
    deployments were moved outside the rollout (then nothing is applied)."""
    moves: list[Move] = []
    for leg in legs:
        canary, base = leg.canary, leg.baseline
        if canary.routing_status != "canary" or base.routing_status not in STABLE:
            raise LegChanged(
                f"the rollout's deployments of service {leg.service_id} were changed outside "
                f"the rollout (canary {canary.id} is {canary.routing_status}, baseline "
                f"{base.id} is {base.routing_status})"
            )
        if step.to_state is State.COMPLETED:
            moves += _move(canary, "active", TOTAL)
            moves += _move(base, "archived", 0)
        elif step.to_state in (State.ABORTED, State.FAILED):
            moves += _move(canary, "archived", 0)
            moves += _move(base, base.routing_status, TOTAL)
        else:
            bp = step.to_weight * 100
            moves += _move(canary, "canary", bp)
            moves += _move(base, base.routing_status, TOTAL - bp)
    return moves


def next_automatic(stages: Sequence[Stage], stage: int, auto_promote: bool) -> Action | None:
    """What the reconciler does once the current stage passed its gate: ``advance`` to the next
    stage, ``promote`` (the next stage is the final 100 % one without a pause, or the walk is
    at its final stage), or None (``auto_promote`` is off and only promotion is left: an
    operator promotes)."""
    last = len(stages) - 1
    if stage >= last:
        return Action.PROMOTE if auto_promote else None
    nxt = stages[stage + 1]
    if nxt.weight == 100 and not auto_promote:
        return None
    if stage + 1 == last and nxt.pause_minutes == 0:
        return Action.PROMOTE
    return Action.ADVANCE
