"""A staged rollout's document and the operator's actions on it.

``GET /api/spaces/{space}/app-deployments/{id}/rollout`` answers the rollout of app deployment
``id``: state, stage, weight, the gate's inputs measured now (every canary's request count,
error rate and p99 over the window, against the limits), when the reconciler decides next, and
the history of every transition with who, when, why and what the gate measured then.
``POST …/rollout/pause|resume|abort|promote`` take the operator's actions (admins only: the
spec's "admin manages rollouts"); each is one SQL transaction with optimistic locking, then a
publish, and an illegal one answers 409 ``illegal_transition`` naming the current state.

The gate's inputs come from the runtime state (Redis), so these endpoints are declared
``transactional=False``: SQL is read in short transactions and the counters in between, never
with a database connection held while Redis answers.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from admin.api.models import Strict
from admin.errors import NotFound
from admin.framework import Ctx, endpoint, etag
from admin.rollouts import store
from admin.rollouts.gate import Measurement
from admin.rollouts.machine import RUNNING, Action, transition
from admin.rollouts.reconciler import measure, reconciler_of
from admin.rollouts.store import LegRow, Rollout

BASE = "/api/spaces/{space}/app-deployments/{id}/rollout"


class RolloutActionIn(Strict):
    reason: str | None = Field(default=None, max_length=500, description="why (the history)")


class StageOut(Strict):
    weight: int
    pause_minutes: int


class HealthCheckOut(Strict):
    error_rate_threshold: float
    min_requests: int
    window_minutes: int
    p99_latency_ms: int | None


class LegOut(Strict):
    service_id: str
    service: str
    canary_deployment_id: str
    baseline_deployment_id: str
    canary_weight: int  # basis points, as the deployments carry them now
    baseline_weight: int


class LegGateOut(Strict):
    service_id: str
    service: str
    deployment_id: str
    requests: int
    errors: int
    error_rate: float | None
    p99_ms: float | None
    latency_samples: int
    verdict: str
    reason: str


class GateOut(Strict):
    measured_at: int
    window_start: int
    window_end: int
    verdict: str  # pass | insufficient | error_rate | latency | unavailable
    reason: str
    services: list[LegGateOut]


class EventOut(Strict):
    at: int
    action: str
    from_state: str | None
    to_state: str
    from_stage: int | None
    to_stage: int
    from_weight: int | None
    to_weight: int
    actor: str  # principal | reconciler
    principal_id: str | None
    request_id: str | None
    reason: str
    inputs: GateOut | None


class RolloutOut(Strict):
    id: str
    app_deployment_id: str
    app: str
    state: str
    stage: int  # 1-based
    weight: int  # the canary's share now, percent
    stages: list[StageOut]
    health_check: HealthCheckOut
    auto_promote: bool
    stage_started_at: int  # when the current weight took effect (the gate's evidence starts)
    pause_started_at: int  # when the current stage's pause (re)started
    next_decision_at: int | None
    waiting: str | None
    fail_reason: str | None
    services: list[LegOut]
    gate: GateOut | None  # measured now; None once the rollout has ended
    history: list[EventOut]
    etag: str
    created_at: int
    updated_at: int
    finished_at: int | None


def render(
    rollout: Rollout,
    legs: list[LegRow],
    history: list[dict[str, Any]],
    gate: Measurement | None,
) -> dict[str, Any]:
    return {
        "id": rollout.id,
        "app_deployment_id": rollout.app_deployment_id,
        "app": rollout.app,
        "state": rollout.state.value,
        "stage": rollout.stage + 1,
        "weight": rollout.weight,
        "stages": [{"weight": s.weight, "pause_minutes": s.pause_minutes} for s in rollout.stages],
        "health_check": rollout.gate.to_json(),
        "auto_promote": rollout.auto_promote,
        "stage_started_at": rollout.stage_started_at,
        "pause_started_at": rollout.pause_started_at,
        "next_decision_at": rollout.next_decision_at,
        "waiting": rollout.waiting,
        "fail_reason": rollout.fail_reason,
        "services": [
            {
                "service_id": leg.service_id,
                "service": leg.service,
                "canary_deployment_id": leg.canary.id,
                "baseline_deployment_id": leg.baseline.id,
                "canary_weight": leg.canary.routing_weight,
                "baseline_weight": leg.baseline.routing_weight,
            }
            for leg in legs
        ],
        "gate": None if gate is None else gate.to_json(),
        "history": history,
        "etag": etag(rollout.id, rollout.version),
        "created_at": rollout.created_at,
        "updated_at": rollout.updated_at,
        "finished_at": rollout.finished_at,
    }


async def _load(ctx: Ctx) -> tuple[Rollout, list[LegRow]]:
    app_id = ctx.params["id"]
    rollout = await store.load_for_app(ctx.conn, str(ctx.space_id), app_id)
    if rollout is None:
        raise NotFound(f"app deployment {app_id} has no rollout")
    return rollout, await store.load_legs(ctx.conn, rollout.id)


async def _live(ctx: Ctx, rollout: Rollout, legs: list[LegRow]) -> Measurement | None:
    if rollout.state not in RUNNING or not legs:
        return None
    return await measure(ctx.state.runtime, rollout, legs, reconciler_of(ctx.state).now_ms())


@endpoint(
    "GET",
    BASE,
    scope="deployments:read",
    role="viewer",
    response=RolloutOut,
    tag="rollouts",
    transactional=False,  # the gate's inputs are read from Redis between SQL reads
    summary="A staged rollout: state, stage, weight, the gate's inputs now, and its history",
)
async def get_rollout(ctx: Ctx) -> dict[str, Any]:
    async with ctx.transaction() as conn:  # one consistent read of the rollout and its history
        rollout, legs = await _load(ctx)
        history = await store.load_history(conn, rollout.id)
    gate = await _live(ctx, rollout, legs)
    ctx.headers["etag"] = etag(rollout.id, rollout.version)
    return render(rollout, legs, history, gate)


async def _act(ctx: Ctx, action: Action) -> dict[str, Any]:
    body: RolloutActionIn = ctx.body
    async with ctx.transaction():
        rollout, legs = await _load(ctx)
        transition(rollout.state, action)  # 409 before anything is measured
    # What the gate sees now goes into the history with the operator's action.
    measured = await _live(ctx, rollout, legs)
    now = reconciler_of(ctx.state).now_ms()
    async with ctx.transaction() as conn:
        rollout, legs = await _load(ctx)
        ctx.if_match(etag(rollout.id, rollout.version))
        cause = store.Cause(
            "principal",
            body.reason or f"{action.value} requested by {ctx.principal.name}",
            ctx.principal.id,
            ctx.request_id,
            measured,
        )
        step = await store.apply(conn, rollout, legs, action, cause, now)
        ctx.enqueue_publish(await store.hosts_of(conn, [leg.service_id for leg in legs]))
        ctx.resource = f"rollout:{rollout.id}/{step.action.value}"
        rollout, legs = await _load(ctx)
        history = await store.load_history(conn, rollout.id)
    ctx.headers["etag"] = etag(rollout.id, rollout.version)
    return render(rollout, legs, history, measured if step.to_state in RUNNING else None)


def _action_endpoint(action: Action, summary: str) -> None:
    async def handler(ctx: Ctx) -> dict[str, Any]:
        return await _act(ctx, action)

    handler.__name__ = f"{action.value}_rollout"
    endpoint(
        "POST",
        f"{BASE}/{action.value}",
        scope="rollouts:write",
        role="admin",
        body=RolloutActionIn,
        response=RolloutOut,
        tag="rollouts",
        transactional=False,
        summary=summary,
    )(handler)


_action_endpoint(Action.PAUSE, "Pause a rollout in progress: weights stay, no step is taken")
_action_endpoint(Action.RESUME, "Resume a paused rollout: the current stage's pause restarts")
_action_endpoint(
    Action.ABORT, "Abort a rollout: 100 % back to the baseline deployments, canaries archived"
)
_action_endpoint(
    Action.PROMOTE, "Promote a rollout now: the canaries become active at 100 %, baselines archived"
)
