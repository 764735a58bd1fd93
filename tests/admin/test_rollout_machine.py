"""The rollout state machine and the routing plans: pure, table-driven.

The expected table below is written from the spec (control-plane.md, "Rollouts"), not derived
from ``TRANSITIONS``: every (state, action) pair, including "no rollout yet", has its answer.
"""

from __future__ import annotations

from typing import Any

import pytest

from admin.errors import NotFound
from admin.rollouts.machine import (
    TRANSITIONS,
    Action,
    Dep,
    IllegalTransition,
    Leg,
    LegChanged,
    NoRollbackTarget,
    Stage,
    State,
    canary_weight,
    next_automatic,
    plan_deploy,
    plan_rollback,
    plan_step,
    step_moves,
    transition,
)

IN, PAUSED, DONE, ABORTED, FAILED = (
    State.IN_PROGRESS,
    State.PAUSED,
    State.COMPLETED,
    State.ABORTED,
    State.FAILED,
)
X = None  # illegal: 409 naming the current state

# state -> action -> state after (X: illegal). Columns in Action order:
#              initiate advance  pause   resume  abort    promote fail
SPEC: dict[State | None, tuple[State | None, ...]] = {
    None: (IN, X, X, X, X, X, X),
    IN: (X, IN, PAUSED, X, ABORTED, DONE, FAILED),
    PAUSED: (X, X, X, IN, ABORTED, DONE, X),
    DONE: (X, X, X, X, X, X, X),
    ABORTED: (X, X, X, X, X, X, X),
    FAILED: (X, X, X, X, X, X, X),
}
ACTIONS = list(Action)
PAIRS = [
    pytest.param(state, action, SPEC[state][i], id=f"{state}-{action}")
    for state in SPEC
    for i, action in enumerate(ACTIONS)
]
STAGES = (Stage(1, 5), Stage(5, 10), Stage(25, 15), Stage(50, 15), Stage(100, 0))


def test_the_spec_table_covers_every_pair_and_matches_the_module() -> None:
    assert list(SPEC) == [None, *State]
    assert all(len(row) == len(ACTIONS) for row in SPEC.values())
    legal = {(s, a): SPEC[s][i] for s in SPEC for i, a in enumerate(ACTIONS) if SPEC[s][i]}
    assert dict(TRANSITIONS) == legal


@pytest.mark.parametrize(("state", "action", "expected"), PAIRS)
def test_every_state_action_pair(
    state: State | None, action: Action, expected: State | None
) -> None:
    if expected is None:
        with pytest.raises(IllegalTransition) as info:
            transition(state, action)
        err = info.value
        assert err.status == 409 and err.code == "illegal_transition"
        named = state.value if state is not None else "no rollout"
        assert named in err.message and action.value in err.message
        assert err.details["state"] == (state.value if state is not None else None)
        assert err.details["action"] == action.value
        assert err.body()["error"]["code"] == "illegal_transition"
        # and a plan for it is refused the same way, before anything is computed
        with pytest.raises(IllegalTransition):
            plan_step(state, STAGES, None if state is None else 1, action)
    else:
        assert transition(state, action) is expected
        step = plan_step(state, STAGES, None if state is None else 1, action)
        assert (step.from_state, step.to_state, step.action) == (state, expected, action)


def test_pause_message_names_the_current_state() -> None:
    with pytest.raises(IllegalTransition) as info:
        transition(State.PAUSED, Action.PAUSE)
    assert info.value.message == (
        "cannot pause a rollout that is paused (pause is allowed from in_progress)"
    )
    with pytest.raises(IllegalTransition) as info:
        transition(State.COMPLETED, Action.ABORT)
    assert "is completed" in info.value.message
    assert info.value.details["allowed_from"] == ["in_progress", "paused"]


# ------------------------------------------------------------------------------ steps


def dep(ident: str, routing: str, weight: int, number: int = 1, version: int = 1) -> Dep:
    return Dep(ident, number, "success", routing, weight, version)


def moves_of(step_moves_out: list[Any]) -> dict[str, tuple[str, int]]:
    return {m.dep.id: (m.routing_status, m.routing_weight) for m in step_moves_out}


@pytest.mark.parametrize(
    ("state", "stage", "action", "to_stage", "weights", "restart"),
    [
        (None, None, Action.INITIATE, 0, (None, 1), True),
        (IN, 0, Action.ADVANCE, 1, (1, 5), True),
        (IN, 3, Action.ADVANCE, 4, (50, 100), True),
        (IN, 2, Action.PAUSE, 2, (25, 25), False),
        (PAUSED, 2, Action.RESUME, 2, (25, 25), True),  # the stage's full pause restarts
        (IN, 2, Action.ABORT, 2, (25, 0), False),
        (PAUSED, 2, Action.ABORT, 2, (25, 0), False),
        (IN, 1, Action.FAIL, 1, (5, 0), False),
        (IN, 1, Action.PROMOTE, 4, (5, 100), False),  # a promote ends at the last stage
        (PAUSED, 3, Action.PROMOTE, 4, (50, 100), False),
    ],
)
def test_plan_step(
    state: State | None,
    stage: int | None,
    action: Action,
    to_stage: int,
    weights: tuple[int | None, int],
    restart: bool,
) -> None:
    step = plan_step(state, STAGES, stage, action)
    assert step.to_stage == to_stage
    assert (step.from_weight, step.to_weight) == weights
    assert step.restart_pause is restart


def test_advance_past_the_last_stage_is_a_bug_not_a_transition() -> None:
    with pytest.raises(ValueError, match="no stage after the last"):
        plan_step(IN, STAGES, 4, Action.ADVANCE)
    with pytest.raises(ValueError, match="end at 100"):
        plan_step(None, (Stage(5, 1),), None, Action.INITIATE)


def test_step_moves_for_each_kind_of_step() -> None:
    leg = Leg("svc", dep("can", "canary", 500, 2), dep("base", "active", 9500, 1))
    advance = plan_step(IN, STAGES, 1, Action.ADVANCE)
    assert moves_of(step_moves(advance, [leg])) == {
        "can": ("canary", 2500),
        "base": ("active", 7500),
    }
    pause = plan_step(IN, STAGES, 1, Action.PAUSE)
    assert step_moves(pause, [leg]) == []  # weights unchanged: nothing to write
    for action in (Action.ABORT, Action.FAIL):
        step = plan_step(IN, STAGES, 1, action)
        assert moves_of(step_moves(step, [leg])) == {
            "can": ("archived", 0),
            "base": ("active", 10000),
        }
    promote = plan_step(PAUSED, STAGES, 1, Action.PROMOTE)
    assert moves_of(step_moves(promote, [leg])) == {
        "can": ("active", 10000),
        "base": ("archived", 0),
    }
    # a baseline that is itself a rollback keeps that status while it carries traffic
    rb = Leg("svc", dep("can", "canary", 500, 3), dep("old", "rollback", 9500, 1))
    assert moves_of(step_moves(advance, [rb]))["old"] == ("rollback", 7500)


def test_step_moves_refuse_legs_changed_outside_the_rollout() -> None:
    moved = Leg("svc", dep("can", "archived", 0, 2), dep("base", "active", 10000))
    with pytest.raises(LegChanged) as info:
        step_moves(plan_step(IN, STAGES, 0, Action.ADVANCE), [moved])
    assert info.value.status == 409 and "changed outside the rollout" in info.value.message


def test_canary_weight_by_state() -> None:
    assert canary_weight(IN, STAGES, 2) == canary_weight(PAUSED, STAGES, 2) == 25
    assert canary_weight(DONE, STAGES, 2) == 100
    assert canary_weight(ABORTED, STAGES, 2) == canary_weight(FAILED, STAGES, 2) == 0


@pytest.mark.parametrize(
    ("stages", "stage", "auto", "expected"),
    [
        (STAGES, 0, True, Action.ADVANCE),
        (STAGES, 3, True, Action.PROMOTE),  # next is the final 100 % without a pause
        (STAGES, 3, False, None),  # auto_promote off: an operator promotes
        (STAGES, 2, False, Action.ADVANCE),
        ((Stage(10, 1), Stage(100, 5)), 0, True, Action.ADVANCE),  # 100 % held for 5 min first
        ((Stage(10, 1), Stage(100, 5)), 1, True, Action.PROMOTE),
        ((Stage(10, 1), Stage(100, 5)), 0, False, None),
        ((Stage(100, 0),), 0, True, Action.PROMOTE),
        ((Stage(100, 0),), 0, False, None),
    ],
)
def test_next_automatic(
    stages: tuple[Stage, ...], stage: int, auto: bool, expected: Action | None
) -> None:
    assert next_automatic(stages, stage, auto) is expected


# ------------------------------------------------------------------------------ deploy plans


def test_plan_direct_archives_everything_routed() -> None:
    current = [dep("a", "active", 8000, 1), dep("b", "canary", 2000, 2), dep("c", "archived", 0)]
    plan = plan_deploy("direct", current, None)
    assert (plan.applied, plan.routing_status, plan.routing_weight) == ("direct", "active", 10000)
    assert moves_of(list(plan.moves)) == {"a": ("archived", 0), "b": ("archived", 0)}
    assert plan.baseline is None


@pytest.mark.parametrize("strategy", ["canary", "staged"])
def test_plan_canary_and_staged_keep_the_newest_stable_one(strategy: Any) -> None:
    current = [
        dep("old", "rollback", 0, 1),
        dep("base", "active", 7000, 2),
        dep("can", "canary", 3000, 3),
    ]
    plan = plan_deploy(strategy, current, 5)
    assert (plan.applied, plan.routing_status, plan.routing_weight) == (strategy, "canary", 500)
    assert plan.baseline is not None and plan.baseline.id == "base"
    assert moves_of(list(plan.moves)) == {
        "base": ("active", 9500),
        "can": ("archived", 0),  # an older canary is replaced
        "old": ("archived", 0),
    }


@pytest.mark.parametrize("strategy", ["canary", "staged"])
def test_plan_without_a_stable_deployment_is_applied_as_direct(strategy: Any) -> None:
    plan = plan_deploy(strategy, [], 20)
    assert (plan.applied, plan.routing_status, plan.routing_weight, plan.baseline) == (
        "direct",
        "active",
        10000,
        None,
    )
    with pytest.raises(ValueError):
        plan_deploy(strategy, [dep("a", "active", 10000)], None)


# ------------------------------------------------------------------------------ rollback plans


def test_rollback_during_a_canary_drops_the_canary() -> None:
    """Issue 15 N2: v1 active 80 %, v2 canary 20 % → v1 at 100 %, not 409."""
    deps = [dep("v1", "active", 8000, 1), dep("v2", "canary", 2000, 2)]
    for version in (None, 1):
        plan = plan_rollback(deps, version)
        assert plan.dropped_canary and plan.target.id == "v1" and plan.target_status == "rollback"
        assert moves_of(list(plan.moves)) == {"v1": ("rollback", 10000), "v2": ("archived", 0)}


def test_rollback_to_the_previous_or_a_named_version() -> None:
    deps = [dep("v1", "archived", 0, 1), dep("v2", "active", 10000, 2)]
    plan = plan_rollback(deps, None)
    assert (plan.target.id, plan.dropped_canary) == ("v1", False)
    assert moves_of(list(plan.moves)) == {"v1": ("rollback", 10000), "v2": ("rolled_back", 0)}
    # a named version during a canary: the canary is archived, the stable one rolled back
    deps = [dep("v1", "archived", 0, 1), dep("v2", "active", 9000, 2), dep("v3", "canary", 1000, 3)]
    plan = plan_rollback(deps, 1)
    assert moves_of(list(plan.moves)) == {
        "v1": ("rollback", 10000),
        "v2": ("rolled_back", 0),
        "v3": ("archived", 0),
    }


def test_rollback_refusals() -> None:
    only = [dep("v1", "active", 10000, 1)]
    with pytest.raises(NoRollbackTarget, match="no previous successful"):
        plan_rollback(only, None)
    with pytest.raises(NoRollbackTarget, match="already serving all traffic"):
        plan_rollback(only, 1)
    with pytest.raises(NotFound):
        plan_rollback(only, 9)
    failed = [Dep("v1", 1, "failed", "archived", 0, 1), dep("v2", "active", 10000, 2)]
    with pytest.raises(NoRollbackTarget, match="did not deploy successfully"):
        plan_rollback(failed, 1)
    with pytest.raises(NoRollbackTarget):
        plan_rollback(failed, None)  # a failed deployment is no rollback target
