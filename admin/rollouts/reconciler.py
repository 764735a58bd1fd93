"""The rollout reconciler: the leader job that moves staged rollouts along.

Every ``interval`` seconds (``TURNOUT_ROLLOUT_INTERVAL``, default 60 s) the admin holding the
leader lease (:mod:`admin.leader`) runs :meth:`RolloutReconciler.run`: for each rollout in
progress it reads the canaries' health counters (outside any transaction), lets the gate decide
(:func:`admin.rollouts.gate.decide`), and applies the decision in one SQL transaction that
first re-reads the rollout and acts only if its version is still the one the decision was made
on. Two instances that both think they lead (a stalled leader overlapping its successor) can
therefore never both advance a stage: the second one's update matches no row and changes
nothing. An admin that restarts simply finds the rollout where SQL says it is.

The clock is injectable (tests); it must be the wall clock in production, since it names the
minutes of the gateways' health hashes.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from admin.errors import Conflict
from admin.framework import enqueue_hosts
from admin.publisher import Publisher
from admin.rollouts import store
from admin.rollouts.gate import Measurement, assess, decide, read, window_for
from admin.rollouts.machine import Action, State
from admin.rollouts.store import LegRow, Rollout
from routing.runtime_state import RuntimeState

log = logging.getLogger("turnout.admin.rollouts")


async def measure(
    runtime: RuntimeState, rollout: Rollout, legs: Sequence[LegRow], now_ms: int
) -> Measurement:
    """The gate's inputs for ``rollout`` now: each canary's counters over its window."""
    window = window_for(now_ms, rollout.stage_started_at, rollout.gate.window_minutes)
    readings = await read(
        runtime, [(leg.service_id, leg.service, leg.canary.id) for leg in legs], window
    )
    return assess(readings, rollout.gate, window, now_ms)


class RolloutReconciler:
    """See the module docstring. ``run`` is the leader job."""

    def __init__(
        self,
        engine: AsyncEngine,
        runtime: RuntimeState,
        publisher: Publisher,
        *,
        interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.runtime = runtime
        self.publisher = publisher
        self.interval = interval
        self.clock = clock
        self.outcomes: Counter[str] = Counter()  # over the process lifetime

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def run(self) -> dict[str, int]:
        """One pass over every rollout in progress; returns how many ended how."""
        async with self.engine.connect() as conn:
            ids = await store.ids_in_progress(conn)
        report: Counter[str] = Counter()
        for rollout_id in ids:
            try:
                outcome = await self.reconcile(rollout_id)
            except Conflict as exc:  # moved by someone else meanwhile: look again next time
                log.info("rollout %s changed while reconciling: %s", rollout_id, exc.message)
                outcome = "conflict"
            except Exception:
                log.exception("reconciling rollout %s failed", rollout_id)
                outcome = "error"
            report[outcome] += 1
        if any(
            report[a.value] for a in (Action.ADVANCE, Action.PROMOTE, Action.FAIL, Action.ABORT)
        ):
            self.publisher.kick()
        self.outcomes.update(report)
        return dict(report)

    async def reconcile(self, rollout_id: str) -> str:
        """Decide and apply for one rollout; returns the action taken or why there was none."""
        now = self.now_ms()
        async with self.engine.connect() as conn:
            rollout = await store.load(conn, rollout_id)
            legs = await store.load_legs(conn, rollout_id) if rollout is not None else []
        if rollout is None or rollout.state is not State.IN_PROGRESS:
            return "skipped"
        if not legs:
            return await self._act(rollout, Action.ABORT, "its services were deleted", None, now)
        measurement = await measure(self.runtime, rollout, legs, now)
        decision = decide(
            state=rollout.state,
            stages=rollout.stages,
            stage=rollout.stage,
            auto_promote=rollout.auto_promote,
            pause_started_at=rollout.pause_started_at,
            measurement=measurement,
            now_ms=now,
            recheck_ms=int(self.interval * 1000),
        )
        if decision.action is None:
            async with self.engine.begin() as conn:
                current = await store.load(conn, rollout_id)
                if current is None or current.version != rollout.version:
                    return "changed"
                await store.note(
                    conn,
                    current,
                    waiting=decision.waiting,
                    next_decision_at=decision.next_decision_at,
                )
            return "waiting"
        return await self._act(rollout, decision.action, decision.reason, measurement, now)

    async def _act(
        self,
        rollout: Rollout,
        action: Action,
        reason: str,
        measurement: Measurement | None,
        now: int,
    ) -> str:
        async with self.engine.begin() as conn:
            current = await store.load(conn, rollout.id)
            if current is None or current.version != rollout.version:
                return "changed"  # decided on a state that is gone: decide again next time
            legs = await store.load_legs(conn, rollout.id)
            cause = store.Cause("reconciler", reason, inputs=measurement)
            await store.apply(conn, current, legs, action, cause, now)
            await enqueue_hosts(conn, await store.hosts_of(conn, [leg.service_id for leg in legs]))
        log.info("rollout %s: %s (%s)", rollout.id, action.value, reason)
        return action.value

    def __repr__(self) -> str:
        return f"RolloutReconciler(interval={self.interval}, outcomes={dict(self.outcomes)})"


def reconciler_of(state: Any) -> RolloutReconciler:
    """The admin's reconciler (``AdminState.extras["rollouts"]``): its clock is the one every
    rollout decision and timestamp uses, so a test that swaps it moves them all."""
    reconciler = state.extras["rollouts"]
    assert isinstance(reconciler, RolloutReconciler)
    return reconciler
