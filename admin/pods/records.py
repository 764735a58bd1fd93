"""Reading the pod authority: parsed rows, the state a pod's effective scope is computed from,
and the per-space lock every pod transaction starts with.

The space lock
--------------
Two concurrent spawns of overlapping regions must not both win, on SQLite and on PostgreSQL.
Each pod transaction therefore starts with :func:`lock_space`: an upsert that bumps the space's
row in ``pod_spaces``. Both engines hold that write until commit:

* PostgreSQL: the upsert takes the row lock, so every other pod transaction of the space waits
  at its first statement; under READ COMMITTED its later statements then see what the first one
  committed. Chosen over ``pg_advisory_xact_lock``: the same statement works on SQLite, the lock
  is per space by construction (no hash collisions, no keyspace shared with other features) and
  visible in ``pg_locks`` as an ordinary row lock.
* SQLite: the upsert is the transaction's first write, so it takes the database's write lock
  before any of the transaction's reads (the driver opens its transaction at the first write),
  which is what ``BEGIN IMMEDIATE`` would do. A second admin process on the same file waits
  (busy timeout) and then reads the committed state; a reader that had already begun could not
  upgrade to a writer after someone else's commit, and that situation never arises.

Reads that decide nothing (a check, a GET) take no lock. A heartbeat takes none either: it is
one conditional ``UPDATE`` on its lease row (``ended_at IS NULL AND expires_at > now``), which
either extends a live lease or touches nothing; the reaper ends leases with the mirror-image
condition, so the two cannot both win.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from admin.pods.algebra import Delegation, Rule, Scope, ScopeError, effective, parse_rules
from admin.pods.edges import EdgeState
from admin.pods.errors import PodMissing, SnapshotCorrupt
from admin.pods.schema import pod_edges, pod_leases, pod_spaces, pods

_CHUNK = 500  # ids per IN (...) list


async def lock_space(conn: AsyncConnection, space_id: str) -> None:
    """Serialise pod transactions of one space (module docstring)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt: Any = pg_insert(pod_spaces)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(pod_spaces)
    stmt = stmt.values(space_id=space_id, clock=1).on_conflict_do_update(
        index_elements=[pod_spaces.c.space_id], set_={"clock": pod_spaces.c.clock + 1}
    )
    await conn.execute(stmt)


# ------------------------------------------------------------------------------ rows


@dataclass(frozen=True, slots=True)
class PodRow:
    id: str
    space_id: str
    name: str
    base: Scope
    grant: tuple[Rule, ...]
    session_id: str | None
    segment_id: str | None
    version: int
    created_at: int
    updated_at: int


@dataclass(frozen=True, slots=True)
class EdgeRow:
    id: str
    parent_pod_id: str
    child_pod_id: str
    rules: tuple[Rule, ...]
    state: EdgeState
    reason: str | None
    created_at: int
    reclaimed_at: int | None
    first_parent_id: str
    reparented_at: int | None

    @property
    def outstanding(self) -> bool:
        return self.state is EdgeState.OUTSTANDING


@dataclass(frozen=True, slots=True)
class LeaseRow:
    id: str
    pod_id: str
    segment_id: str
    parent_pod_id: str | None
    created_at: int
    expires_at: int
    ended_at: int | None
    end_reason: str | None

    def live(self, now: int) -> bool:
        return self.ended_at is None and self.expires_at > now

    def status(self, now: int) -> str:
        if self.ended_at is not None:
            return "ended"
        return "live" if self.expires_at > now else "expired"


def _rules(text: str, what: str, pod: str) -> tuple[Rule, ...]:
    try:
        return parse_rules(orjson.loads(text), what)
    except (orjson.JSONDecodeError, ScopeError) as exc:
        raise SnapshotCorrupt(
            f"the stored {what} of pod {pod} does not decode ({exc}); restore it from a backup "
            "or recreate the pod",
            details={"pod": pod, "field": what},
        ) from None


def pod_row(row: Any) -> PodRow:
    """A ``pods`` row parsed; :class:`SnapshotCorrupt` when its snapshotted scope is unreadable."""
    allow = _rules(row.base_allow, "scope.allow", row.name)
    if not allow:
        raise SnapshotCorrupt(
            f"the stored scope of pod {row.name} has no allow rule",
            details={"pod": row.name, "field": "scope.allow"},
        )
    return PodRow(
        id=row.id,
        space_id=row.space_id,
        name=row.name,
        base=Scope.of(allow, _rules(row.base_deny, "scope.deny", row.name)),
        grant=_rules(row.grant_rules, "grant", row.name),
        session_id=row.session_id,
        segment_id=row.segment_id,
        version=int(row.version),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def edge_row(row: Any) -> EdgeRow:
    return EdgeRow(
        **_columns(row, EdgeRow, skip=("rules", "state")),
        rules=_rules(row.rules, "delegation rules", row.child_pod_id),
        state=EdgeState(row.state),
    )


def lease_row(row: Any) -> LeaseRow:
    return LeaseRow(**_columns(row, LeaseRow))


def _columns(row: Any, cls: type[Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The row's values for the dataclass fields of ``cls`` (same names), but ``skip``."""
    return {f.name: getattr(row, f.name) for f in dataclasses.fields(cls) if f.name not in skip}


# ------------------------------------------------------------------------------ pod state


@dataclass(slots=True)
class PodState:
    """What a pod's effective scope, mirror and views are computed from."""

    pod: PodRow
    out_edges: list[EdgeRow]  # outstanding edges where this pod is the parent
    in_edge: EdgeRow | None  # the delegation that created it (None: a root pod)
    lease: LeaseRow | None  # the open lease (None: none open)
    names: dict[str, str]  # pod id -> name, for the pods the edges name

    @property
    def retired(self) -> bool:
        """Its own delegation was reclaimed: it holds nothing any more."""
        return self.in_edge is not None and not self.in_edge.outstanding

    @property
    def parent_id(self) -> str | None:
        return self.in_edge.parent_pod_id if self.in_edge is not None else None

    def effective(self) -> Scope:
        return effective(
            self.pod.base,
            [
                Delegation(e.id, self.names.get(e.child_pod_id, "?"), e.rules)
                for e in self.out_edges
            ],
            retired=self.retired,
        )

    def status(self) -> str:
        """``retired`` | ``inactive`` (no pointer) | ``pending`` (no segment) | ``active``."""
        if self.retired:
            return "retired"
        if self.pod.session_id is None:
            return "inactive"
        if self.pod.segment_id is None:
            return "pending"
        return "active"


def _chunks(ids: Sequence[str]) -> Iterable[list[str]]:
    for i in range(0, len(ids), _CHUNK):
        yield list(ids[i : i + _CHUNK])


async def get_pod(conn: AsyncConnection, space_id: str, name: str) -> PodRow:
    row = (
        await conn.execute(sa.select(pods).where(pods.c.space_id == space_id, pods.c.name == name))
    ).first()
    if row is None:
        raise PodMissing(f"no pod named {name} in this space", details={"pod": name})
    return pod_row(row)


async def load_states(
    conn: AsyncConnection, space_id: str, pod_ids: Sequence[str] | None = None
) -> dict[str, PodState]:
    """The states of ``pod_ids`` (default: every pod of the space) in four queries a chunk."""
    if pod_ids is None:
        rows = (await conn.execute(sa.select(pods).where(pods.c.space_id == space_id))).all()
        ids = [r.id for r in rows]
        edge_rows = (
            await conn.execute(sa.select(pod_edges).where(pod_edges.c.space_id == space_id))
        ).all()
        lease_rows = (
            await conn.execute(
                sa.select(pod_leases).where(
                    pod_leases.c.space_id == space_id, pod_leases.c.ended_at.is_(None)
                )
            )
        ).all()
    else:
        ids = list(dict.fromkeys(pod_ids))
        rows, edge_rows, lease_rows = [], [], []
        for chunk in _chunks(ids):
            rows += (await conn.execute(sa.select(pods).where(pods.c.id.in_(chunk)))).all()
            edge_rows += (
                await conn.execute(
                    sa.select(pod_edges).where(
                        sa.or_(
                            pod_edges.c.child_pod_id.in_(chunk),
                            sa.and_(
                                pod_edges.c.parent_pod_id.in_(chunk),
                                pod_edges.c.state == EdgeState.OUTSTANDING.value,
                            ),
                        )
                    )
                )
            ).all()
            lease_rows += (
                await conn.execute(
                    sa.select(pod_leases).where(
                        pod_leases.c.pod_id.in_(chunk), pod_leases.c.ended_at.is_(None)
                    )
                )
            ).all()
    states: dict[str, PodState] = {}
    for r in rows:
        states[r.id] = PodState(pod_row(r), [], None, None, {})
    seen: set[str] = set()
    for er in edge_rows:
        if er.id in seen:
            continue
        seen.add(er.id)
        edge = edge_row(er)
        child = states.get(edge.child_pod_id)
        if child is not None:
            child.in_edge = edge
        parent = states.get(edge.parent_pod_id)
        if parent is not None and edge.outstanding:
            parent.out_edges.append(edge)
    for each in states.values():  # deny layers in delegation order, whatever order SQL chose
        each.out_edges.sort(key=lambda e: (e.created_at, e.id))
    for lr in lease_rows:
        st = states.get(lr.pod_id)
        if st is not None:
            st.lease = lease_row(lr)
    await _fill_names(conn, states.values())
    return {i: states[i] for i in ids if i in states}


async def load_state(conn: AsyncConnection, pod: PodRow) -> PodState:
    return (await load_states(conn, pod.space_id, [pod.id]))[pod.id]


async def _fill_names(conn: AsyncConnection, states: Iterable[PodState]) -> None:
    states = list(states)
    known = {st.pod.id: st.pod.name for st in states}
    wanted: set[str] = set()
    for st in states:
        for e in st.out_edges:
            wanted.add(e.child_pod_id)
        if st.in_edge is not None:
            wanted.update((st.in_edge.parent_pod_id, st.in_edge.first_parent_id))
        if st.lease is not None and st.lease.parent_pod_id is not None:
            wanted.add(st.lease.parent_pod_id)
    unknown = [i for i in wanted if i not in known]
    names = await pod_names(conn, unknown) if unknown else {}
    names.update(known)
    for st in states:
        st.names = names


async def pod_names(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for chunk in _chunks(list(ids)):
        rows = await conn.execute(sa.select(pods.c.id, pods.c.name).where(pods.c.id.in_(chunk)))
        out.update({r.id: r.name for r in rows})
    return out


async def depth_of(conn: AsyncConnection, pod_id: str, limit: int = 10_000) -> int:
    """How many outstanding delegations lie between ``pod_id`` and its root."""
    depth, current = 0, pod_id
    while depth < limit:
        parent = (
            await conn.execute(
                sa.select(pod_edges.c.parent_pod_id).where(
                    pod_edges.c.child_pod_id == current,
                    pod_edges.c.state == EdgeState.OUTSTANDING.value,
                )
            )
        ).scalar()
        if parent is None:
            return depth
        depth, current = depth + 1, str(parent)
    return depth
