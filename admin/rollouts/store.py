"""Rollouts in SQL: load them, create one, apply a planned step — always in the caller's
transaction, with optimistic locking (a row's ``version``) on the rollout and on every
deployment it moves. The caller publishes the returned services' hostnames through the outbox.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from admin import managed
from admin.db import app_deployments, deployments, hostnames, new_id, services
from admin.errors import Conflict
from admin.rollouts.gate import Gate, Measurement, pause_ends
from admin.rollouts.machine import (
    FINAL,
    RUNNING,
    Action,
    Dep,
    Leg,
    Move,
    Stage,
    State,
    Step,
    canary_weight,
    plan_step,
    step_moves,
)
from admin.rollouts.schema import rollout_events, rollout_services, rollouts


@dataclass(frozen=True, slots=True)
class Rollout:
    """A ``rollouts`` row, decoded."""

    id: str
    space_id: str
    app_deployment_id: str
    app: str
    state: State
    stage: int
    stages: tuple[Stage, ...]
    gate: Gate
    auto_promote: bool
    stage_started_at: int
    pause_started_at: int
    next_decision_at: int | None
    waiting: str | None
    fail_reason: str | None
    principal_id: str
    version: int
    created_at: int
    updated_at: int
    finished_at: int | None

    @property
    def weight(self) -> int:
        """The canary's share now (percent)."""
        return canary_weight(self.state, self.stages, self.stage)


@dataclass(frozen=True, slots=True)
class Cause:
    """Who takes a step and why: the history event's author and its evidence."""

    actor: str  # principal | reconciler
    reason: str
    principal_id: str | None = None
    request_id: str | None = None
    inputs: Measurement | None = None  # what the gate measured for this step


@dataclass(frozen=True, slots=True)
class LegRow:
    service_id: str
    service: str
    canary: Dep
    baseline: Dep

    @property
    def leg(self) -> Leg:
        return Leg(self.service_id, self.canary, self.baseline)


_SELECT = sa.select(rollouts, app_deployments.c.name.label("app")).join(
    app_deployments, app_deployments.c.id == rollouts.c.app_deployment_id
)


def _decode(row: Any) -> Rollout:
    return Rollout(
        id=row.id,
        space_id=row.space_id,
        app_deployment_id=row.app_deployment_id,
        app=row.app,
        state=State(row.state),
        stage=row.stage,
        stages=tuple(Stage(s["weight"], s["pause_minutes"]) for s in orjson.loads(row.stages)),
        gate=Gate.from_json(orjson.loads(row.health_check)),
        auto_promote=bool(row.auto_promote),
        stage_started_at=row.stage_started_at,
        pause_started_at=row.pause_started_at,
        next_decision_at=row.next_decision_at,
        waiting=row.waiting,
        fail_reason=row.fail_reason,
        principal_id=row.principal_id,
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
    )


async def load(conn: AsyncConnection, rollout_id: str) -> Rollout | None:
    row = (await conn.execute(_SELECT.where(rollouts.c.id == rollout_id))).first()
    return None if row is None else _decode(row)


async def load_for_app(
    conn: AsyncConnection, space_id: str, app_deployment_id: str
) -> Rollout | None:
    row = (
        await conn.execute(
            _SELECT.where(
                rollouts.c.app_deployment_id == app_deployment_id,
                rollouts.c.space_id == space_id,
            )
        )
    ).first()
    return None if row is None else _decode(row)


async def ids_in_progress(conn: AsyncConnection) -> list[str]:
    rows = await conn.execute(
        sa.select(rollouts.c.id)
        .where(rollouts.c.state == State.IN_PROGRESS.value)
        .order_by(rollouts.c.id)
    )
    return [str(r) for r in rows.scalars().all()]


async def load_legs(conn: AsyncConnection, rollout_id: str) -> list[LegRow]:
    canary = deployments.alias("canary")
    base = deployments.alias("base")
    rows = await conn.execute(
        sa.select(
            rollout_services.c.service_id,
            services.c.name,
            *[c.label(f"c_{c.name}") for c in canary.c],
            *[c.label(f"b_{c.name}") for c in base.c],
        )
        .join(services, services.c.id == rollout_services.c.service_id)
        .join(canary, canary.c.id == rollout_services.c.canary_deployment_id)
        .join(base, base.c.id == rollout_services.c.baseline_deployment_id)
        .where(rollout_services.c.rollout_id == rollout_id)
        .order_by(services.c.name)
    )
    out = []
    for r in rows:
        m = r._mapping

        def dep(prefix: str, m: Any = m) -> Dep:
            return Dep(
                m[f"{prefix}id"],
                m[f"{prefix}number"],
                m[f"{prefix}status"],
                m[f"{prefix}routing_status"],
                m[f"{prefix}routing_weight"],
                m[f"{prefix}version"],
            )

        out.append(LegRow(m["service_id"], m["name"], dep("c_"), dep("b_")))
    return out


async def load_history(conn: AsyncConnection, rollout_id: str) -> list[dict[str, Any]]:
    rows = await conn.execute(
        sa.select(rollout_events)
        .where(rollout_events.c.rollout_id == rollout_id)
        .order_by(rollout_events.c.id)
    )
    return [
        {
            "at": r.at,
            "action": r.action,
            "from_state": r.from_state,
            "to_state": r.to_state,
            "from_stage": None if r.from_stage is None else r.from_stage + 1,
            "to_stage": r.to_stage + 1,
            "from_weight": r.from_weight,
            "to_weight": r.to_weight,
            "actor": r.actor,
            "principal_id": r.principal_id,
            "request_id": r.request_id,
            "reason": r.reason,
            "inputs": None if r.inputs is None else orjson.loads(r.inputs),
        }
        for r in rows
    ]


async def running_for(conn: AsyncConnection, service_ids: Iterable[str]) -> dict[str, Rollout]:
    """service id -> the rollout running on it (in progress or paused)."""
    ids = list(service_ids)
    if not ids:
        return {}
    rows = await conn.execute(
        _SELECT.add_columns(rollout_services.c.service_id)
        .join(rollout_services, rollout_services.c.rollout_id == rollouts.c.id)
        .where(
            rollout_services.c.active_service_id.in_(ids),
            rollouts.c.state.in_([s.value for s in RUNNING]),
        )
    )
    return {r.service_id: _decode(r) for r in rows}


async def hosts_of(conn: AsyncConnection, service_ids: Iterable[str]) -> list[str]:
    ids = list(service_ids)
    if not ids:
        return []
    rows = await conn.execute(
        sa.select(hostnames.c.host)
        .where(hostnames.c.service_id.in_(ids))
        .order_by(hostnames.c.host)
    )
    return [str(h) for h in rows.scalars().all()]


async def apply_moves(conn: AsyncConnection, moves: Sequence[Move], now: int) -> None:
    """Apply routing moves under optimistic locking (409 when a row moved meanwhile)."""
    for m in moves:
        res = await conn.execute(
            sa.update(deployments)
            .where(deployments.c.id == m.dep.id, deployments.c.version == m.dep.version)
            .values(
                routing_status=m.routing_status,
                routing_weight=m.routing_weight,
                version=m.dep.version + 1,
                updated_at=now,
            )
        )
        if res.rowcount != 1:
            raise Conflict("a deployment changed concurrently; retry")
    # A deployment that stops carrying traffic loses its runtime's credential (admin.managed).
    await managed.revoke(
        conn, [m.dep.id for m in moves if m.routing_status in managed.RETIRED], now
    )


async def _event(
    conn: AsyncConnection, rollout_id: str, step: Step, now: int, cause: Cause
) -> None:
    inputs = cause.inputs
    await conn.execute(
        sa.insert(rollout_events).values(
            id=new_id("rev"),
            rollout_id=rollout_id,
            at=now,
            action=step.action.value,
            from_state=None if step.from_state is None else step.from_state.value,
            to_state=step.to_state.value,
            from_stage=step.from_stage,
            to_stage=step.to_stage,
            from_weight=step.from_weight,
            to_weight=step.to_weight,
            actor=cause.actor,
            principal_id=cause.principal_id,
            request_id=cause.request_id,
            reason=cause.reason,
            inputs=None if inputs is None else orjson.dumps(inputs.to_json()).decode(),
        )
    )


async def create(
    conn: AsyncConnection,
    *,
    space_id: str,
    app_deployment_id: str,
    stages: Sequence[Stage],
    gate: Gate,
    auto_promote: bool,
    legs: Sequence[tuple[str, str, str]],
    principal_id: str,
    request_id: str | None,
    now: int,
) -> tuple[str, Step]:
    """Record a new rollout (``initiate``) whose canaries the deploy already routed at the first
    stage's weight. ``legs``: (service id, canary deployment id, baseline deployment id)."""
    step = plan_step(None, stages, None, Action.INITIATE)
    rollout_id = new_id("rol")
    await conn.execute(
        sa.insert(rollouts).values(
            id=rollout_id,
            space_id=space_id,
            app_deployment_id=app_deployment_id,
            state=step.to_state.value,
            stage=step.to_stage,
            stages=orjson.dumps(
                [{"weight": s.weight, "pause_minutes": s.pause_minutes} for s in stages]
            ).decode(),
            health_check=orjson.dumps(gate.to_json()).decode(),
            auto_promote=auto_promote,
            stage_started_at=now,
            pause_started_at=now,
            next_decision_at=pause_ends(stages, 0, now),
            principal_id=principal_id,
            version=1,
            created_at=now,
            updated_at=now,
        )
    )
    for service_id, canary_id, baseline_id in legs:
        await conn.execute(
            sa.insert(rollout_services).values(
                rollout_id=rollout_id,
                service_id=service_id,
                canary_deployment_id=canary_id,
                baseline_deployment_id=baseline_id,
                active_service_id=service_id,
            )
        )
    cause = Cause(
        "principal", f"staged rollout started at {step.to_weight} %", principal_id, request_id
    )
    await _event(conn, rollout_id, step, now, cause)
    return rollout_id, step


async def apply(
    conn: AsyncConnection,
    rollout: Rollout,
    legs: Sequence[LegRow],
    action: Action,
    cause: Cause,
    now: int,
) -> Step:
    """Take ``action`` on ``rollout`` as read in this transaction: the rollout row (locked on
    its version), every deployment move, the history event. 409 when anything moved."""
    step = plan_step(rollout.state, rollout.stages, rollout.stage, action)
    moves = step_moves(step, [leg.leg for leg in legs])
    paused_from = now if step.restart_pause else rollout.pause_started_at
    new_stage = step.to_stage != step.from_stage
    values: dict[str, Any] = {
        "state": step.to_state.value,
        "stage": step.to_stage,
        "stage_started_at": now if new_stage else rollout.stage_started_at,
        "pause_started_at": paused_from,
        "next_decision_at": (
            pause_ends(rollout.stages, step.to_stage, paused_from)
            if step.to_state is State.IN_PROGRESS
            else None
        ),
        "waiting": None,
        "version": rollout.version + 1,
        "updated_at": now,
    }
    if step.to_state is State.FAILED:
        values["fail_reason"] = cause.reason
    if step.to_state in FINAL:
        values["finished_at"] = now
    res = await conn.execute(
        sa.update(rollouts)
        .where(rollouts.c.id == rollout.id, rollouts.c.version == rollout.version)
        .values(**values)
    )
    if res.rowcount != 1:
        raise Conflict("the rollout changed concurrently; read it again")
    await apply_moves(conn, moves, now)
    if step.to_state in FINAL:
        await conn.execute(
            sa.update(rollout_services)
            .where(rollout_services.c.rollout_id == rollout.id)
            .values(active_service_id=None)
        )
    await _event(conn, rollout.id, step, now, cause)
    return step


async def note(
    conn: AsyncConnection,
    rollout: Rollout,
    *,
    waiting: str | None,
    next_decision_at: int | None,
) -> bool:
    """Record why the rollout waits and when it is looked at next (no transition); False when
    the rollout changed since it was read (the next reconcile sees the new state).

    Advisory fields only, so the version (the resource's ETag) stays: an operator's action
    based on what they read is not refused because the reconciler looked again meanwhile."""
    if waiting == rollout.waiting and next_decision_at == rollout.next_decision_at:
        return True
    res = await conn.execute(
        sa.update(rollouts)
        .where(rollouts.c.id == rollout.id, rollouts.c.version == rollout.version)
        .values(waiting=waiting, next_decision_at=next_decision_at)
    )
    return bool(res.rowcount == 1)
