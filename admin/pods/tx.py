"""One pod transaction: the space lock, the clock reading, and the pods it changed.

Every operation of :mod:`admin.pods.authority` runs in the caller's transaction through a
:class:`PodTx`: it starts with the space lock (:func:`admin.pods.records.lock_space`), decides
from what SQL holds *now*, writes, and finally (:meth:`PodTx.finish`) bumps the version of every
pod whose mirror changed and computes those mirrors — which the caller writes to the runtime
state only after the commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from admin.pods.mirror import MirrorRecord, record_of
from admin.pods.records import PodState, load_states, lock_space
from admin.pods.schema import pods


@dataclass(slots=True)
class PodTx:
    """One pod transaction: connection, space, the clock reading, and what it changed."""

    conn: AsyncConnection
    space_id: str
    now: int
    lease_ms: int
    touched: dict[str, None] = field(default_factory=dict)
    reclaimed: list[dict[str, Any]] = field(default_factory=list)
    states: dict[str, PodState] = field(default_factory=dict)  # touched pods, after finish()

    async def lock(self) -> None:
        await lock_space(self.conn, self.space_id)

    def touch(self, *pod_ids: str | None) -> None:
        for pid in pod_ids:
            if pid is not None:
                self.touched[pid] = None

    async def finish(self) -> list[MirrorRecord]:
        """Bump the version of every touched pod; the mirrors to write after commit."""
        ids = list(self.touched)
        if not ids:
            return []
        await self.conn.execute(
            sa.update(pods)
            .where(pods.c.id.in_(ids))
            .values(version=pods.c.version + 1, updated_at=self.now)
        )
        self.states = await load_states(self.conn, self.space_id, ids)
        return [record_of(st) for st in self.states.values()]
