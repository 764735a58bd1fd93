"""SQL tables of the pod scope authority, on the admin's one :data:`admin.db.metadata`.

What is stored (and what is not): pods with their base scope and grant (snapshotted at creation,
never edited), their sessions and segments with lineage, delegation edges with their state and
reclaim history, and live allocations (leases) with expiry. The effective scope is never
stored: it is computed from the pod and its outstanding edges (:mod:`admin.pods.algebra`).

``pods.version`` grows with every change to what the pod's runtime mirror shows (effective
scope, lease, active segment); the mirror carries the version it was computed at, and a check
compares it with this column (:mod:`admin.pods.mirror`). ``pod_spaces`` holds one row per space
that is locked at the start of every pod transaction (:func:`admin.pods.records.lock_space`).
``pod_write_targets`` indexes the targets of every pod's base write rules, so a write-conflict
check reads the few pods whose paths are related to the request instead of the whole space.
"""

from __future__ import annotations

import sqlalchemy as sa

from admin.db import metadata


def _space_fk() -> sa.ForeignKey:
    return sa.ForeignKey("spaces.id", ondelete="CASCADE")


def _pod_fk() -> sa.ForeignKey:
    return sa.ForeignKey("pods.id", ondelete="CASCADE")


pod_spaces = sa.Table(
    "pod_spaces",
    metadata,
    sa.Column("space_id", sa.String(40), _space_fk(), primary_key=True),
    sa.Column("clock", sa.BigInteger, nullable=False, server_default="0"),  # pod transactions
)

pods = sa.Table(
    "pods",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("space_id", sa.String(40), _space_fk(), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("base_allow", sa.Text, nullable=False),  # JSON rules
    sa.Column("base_deny", sa.Text, nullable=False),  # JSON rules (a multiset)
    sa.Column("grant_rules", sa.Text, nullable=False),  # JSON rules
    # The active pointer: None = inactive (cleared, e.g. by a reclaim); a session whose
    # segment_id is None = pending (no first segment yet).
    sa.Column("session_id", sa.String(40), nullable=True),
    sa.Column("segment_id", sa.String(40), nullable=True),
    sa.Column("version", sa.BigInteger, nullable=False, server_default="1"),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("space_id", "name"),
)

pod_sessions = sa.Table(
    "pod_sessions",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("space_id", sa.String(40), nullable=False),
    sa.Column("pod_id", sa.String(40), _pod_fk(), nullable=False),
    sa.Column("forked_from", sa.String(40), nullable=True),  # a segment id (fork)
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Index(None, "pod_id"),
)

pod_segments = sa.Table(
    "pod_segments",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("space_id", sa.String(40), nullable=False),
    sa.Column("pod_id", sa.String(40), _pod_fk(), nullable=False),  # the pod that started it
    sa.Column(
        "session_id",
        sa.String(40),
        sa.ForeignKey("pod_sessions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("kind", sa.String(8), nullable=False),  # root | compact | fork
    sa.Column("parent_id", sa.String(40), nullable=True),  # lineage: the segment it continues
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.CheckConstraint("kind IN ('root', 'compact', 'fork')", name="kind"),
    sa.CheckConstraint("(kind = 'root') = (parent_id IS NULL)", name="lineage"),
    sa.Index(None, "session_id"),
)

pod_edges = sa.Table(
    "pod_edges",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("space_id", sa.String(40), nullable=False),
    sa.Column("parent_pod_id", sa.String(40), _pod_fk(), nullable=False),
    # One edge per child: a child pod exists because of exactly one delegation.
    sa.Column("child_pod_id", sa.String(40), _pod_fk(), nullable=False, unique=True),
    sa.Column("rules", sa.Text, nullable=False),  # JSON rules
    sa.Column("state", sa.String(16), nullable=False),  # outstanding | reclaimed
    sa.Column("reason", sa.String(16), nullable=True),  # why it was reclaimed
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("reclaimed_at", sa.BigInteger, nullable=True),
    sa.Column("first_parent_id", sa.String(40), nullable=False),  # the pod that delegated it
    sa.Column("reparented_at", sa.BigInteger, nullable=True),
    sa.CheckConstraint("state IN ('outstanding', 'reclaimed')", name="state"),
    sa.CheckConstraint(
        "(state = 'reclaimed') = (reason IS NOT NULL AND reclaimed_at IS NOT NULL)",
        name="reclaimed",
    ),
    sa.Index(None, "parent_pod_id", "state"),
)

pod_leases = sa.Table(
    "pod_leases",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("space_id", sa.String(40), nullable=False),
    sa.Column("pod_id", sa.String(40), _pod_fk(), nullable=False),
    sa.Column("segment_id", sa.String(40), nullable=False),
    sa.Column("parent_pod_id", sa.String(40), nullable=True),  # the live-allocation parent
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Column("ended_at", sa.BigInteger, nullable=True),
    sa.Column("end_reason", sa.String(16), nullable=True),
    sa.Index(None, "ended_at", "expires_at"),  # the reaper: un-ended leases by expiry
    sa.Index(None, "segment_id"),
    sa.Index(None, "pod_id", "created_at"),
)
# One lease per pod: at most one un-ended row (expired but not yet reaped rows count).
sa.Index(
    "uq_pod_leases_open_pod_id",
    pod_leases.c.pod_id,
    unique=True,
    sqlite_where=pod_leases.c.ended_at.is_(None),
    postgresql_where=pod_leases.c.ended_at.is_(None),
)

pod_write_targets = sa.Table(
    "pod_write_targets",
    metadata,
    sa.Column("pod_id", sa.String(40), _pod_fk(), primary_key=True),
    sa.Column("target", sa.String(1024), primary_key=True),
    sa.Column("space_id", sa.String(40), nullable=False),
    sa.Index(None, "space_id", "target"),
)
