"""The ``invitations`` table (on :data:`admin.db.metadata`, so migrations see one metadata).

One row per invitation: who is invited to which space with which role, by whom, and where the
invitation stands (:mod:`admin.invitations.states`). Rows are kept after they are answered, so
the space's admins can see what became of an invitation; at most one is pending per (space,
principal) — the partial unique index.
"""

from __future__ import annotations

import sqlalchemy as sa

from admin.db import metadata

invitations = sa.Table(
    "invitations",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column(
        "space_id", sa.String(40), sa.ForeignKey("spaces.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column(
        "principal_id",
        sa.String(40),
        sa.ForeignKey("principals.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("role", sa.String(16), nullable=False),  # owner | admin | editor | viewer
    sa.Column("invited_by", sa.String(40), nullable=True),  # principal id (None: deleted since)
    # pending | accepted | declined | cancelled (expiry is derived from expires_at)
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Column("answered_at", sa.BigInteger, nullable=True),
    sa.Index(None, "principal_id", "id"),
    sa.Index(None, "space_id", "id"),
    sa.Index(
        "uq_invitations_pending_member",
        "space_id",
        "principal_id",
        unique=True,
        sqlite_where=sa.text("status = 'pending'"),
        postgresql_where=sa.text("status = 'pending'"),
    ),
)
