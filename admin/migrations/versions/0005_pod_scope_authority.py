"""pod scope authority: pods, sessions and segments with lineage, delegation edges, leases

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

The tables are defined in admin/pods/schema.py (on admin.db.metadata); this mirrors them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pod_spaces",
        sa.Column("space_id", sa.String(length=40), nullable=False),
        sa.Column("clock", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["space_id"],
            ["spaces.id"],
            name=op.f("fk_pod_spaces_space_id_spaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("space_id", name=op.f("pk_pod_spaces")),
    )
    op.create_table(
        "pods",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("space_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("base_allow", sa.Text(), nullable=False),
        sa.Column("base_deny", sa.Text(), nullable=False),
        sa.Column("grant_rules", sa.Text(), nullable=False),
        sa.Column("session_id", sa.String(length=40), nullable=True),
        sa.Column("segment_id", sa.String(length=40), nullable=True),
        sa.Column("version", sa.BigInteger(), server_default="1", nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["space_id"], ["spaces.id"], name=op.f("fk_pods_space_id_spaces"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pods")),
        sa.UniqueConstraint("space_id", "name", name=op.f("uq_pods_space_id_name")),
    )
    op.create_table(
        "pod_edges",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("space_id", sa.String(length=40), nullable=False),
        sa.Column("parent_pod_id", sa.String(length=40), nullable=False),
        sa.Column("child_pod_id", sa.String(length=40), nullable=False),
        sa.Column("rules", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("reclaimed_at", sa.BigInteger(), nullable=True),
        sa.Column("first_parent_id", sa.String(length=40), nullable=False),
        sa.Column("reparented_at", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "(state = 'reclaimed') = (reason IS NOT NULL AND reclaimed_at IS NOT NULL)",
            name=op.f("ck_pod_edges_reclaimed"),
        ),
        sa.CheckConstraint(
            "state IN ('outstanding', 'reclaimed')", name=op.f("ck_pod_edges_state")
        ),
        sa.ForeignKeyConstraint(
            ["child_pod_id"],
            ["pods.id"],
            name=op.f("fk_pod_edges_child_pod_id_pods"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["parent_pod_id"],
            ["pods.id"],
            name=op.f("fk_pod_edges_parent_pod_id_pods"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pod_edges")),
        sa.UniqueConstraint("child_pod_id", name=op.f("uq_pod_edges_child_pod_id")),
    )
    with op.batch_alter_table("pod_edges", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_pod_edges_parent_pod_id_state"), ["parent_pod_id", "state"], unique=False
        )

    op.create_table(
        "pod_leases",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("space_id", sa.String(length=40), nullable=False),
        sa.Column("pod_id", sa.String(length=40), nullable=False),
        sa.Column("segment_id", sa.String(length=40), nullable=False),
        sa.Column("parent_pod_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("ended_at", sa.BigInteger(), nullable=True),
        sa.Column("end_reason", sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(
            ["pod_id"], ["pods.id"], name=op.f("fk_pod_leases_pod_id_pods"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pod_leases")),
    )
    with op.batch_alter_table("pod_leases", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_pod_leases_ended_at_expires_at"),
            ["ended_at", "expires_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_pod_leases_pod_id_created_at"), ["pod_id", "created_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_pod_leases_segment_id"), ["segment_id"], unique=False)
        batch_op.create_index(
            "uq_pod_leases_open_pod_id",
            ["pod_id"],
            unique=True,
            sqlite_where=sa.text("ended_at IS NULL"),
            postgresql_where=sa.text("ended_at IS NULL"),
        )

    op.create_table(
        "pod_sessions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("space_id", sa.String(length=40), nullable=False),
        sa.Column("pod_id", sa.String(length=40), nullable=False),
        sa.Column("forked_from", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["pod_id"], ["pods.id"], name=op.f("fk_pod_sessions_pod_id_pods"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pod_sessions")),
    )
    with op.batch_alter_table("pod_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pod_sessions_pod_id"), ["pod_id"], unique=False)

    op.create_table(
        "pod_write_targets",
        sa.Column("pod_id", sa.String(length=40), nullable=False),
        sa.Column("target", sa.String(length=1024), nullable=False),
        sa.Column("space_id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["pod_id"],
            ["pods.id"],
            name=op.f("fk_pod_write_targets_pod_id_pods"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pod_id", "target", name=op.f("pk_pod_write_targets")),
    )
    with op.batch_alter_table("pod_write_targets", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_pod_write_targets_space_id_target"), ["space_id", "target"], unique=False
        )

    op.create_table(
        "pod_segments",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("space_id", sa.String(length=40), nullable=False),
        sa.Column("pod_id", sa.String(length=40), nullable=False),
        sa.Column("session_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("parent_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "(kind = 'root') = (parent_id IS NULL)", name=op.f("ck_pod_segments_lineage")
        ),
        sa.CheckConstraint(
            "kind IN ('root', 'compact', 'fork')", name=op.f("ck_pod_segments_kind")
        ),
        sa.ForeignKeyConstraint(
            ["pod_id"], ["pods.id"], name=op.f("fk_pod_segments_pod_id_pods"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["pod_sessions.id"],
            name=op.f("fk_pod_segments_session_id_pod_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pod_segments")),
    )
    with op.batch_alter_table("pod_segments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_pod_segments_session_id"), ["session_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("pod_segments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pod_segments_session_id"))

    op.drop_table("pod_segments")
    with op.batch_alter_table("pod_write_targets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pod_write_targets_space_id_target"))

    op.drop_table("pod_write_targets")
    with op.batch_alter_table("pod_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pod_sessions_pod_id"))

    op.drop_table("pod_sessions")
    with op.batch_alter_table("pod_leases", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_pod_leases_open_pod_id",
            sqlite_where=sa.text("ended_at IS NULL"),
            postgresql_where=sa.text("ended_at IS NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_pod_leases_segment_id"))
        batch_op.drop_index(batch_op.f("ix_pod_leases_pod_id_created_at"))
        batch_op.drop_index(batch_op.f("ix_pod_leases_ended_at_expires_at"))

    op.drop_table("pod_leases")
    with op.batch_alter_table("pod_edges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pod_edges_parent_pod_id_state"))

    op.drop_table("pod_edges")
    op.drop_table("pods")
    op.drop_table("pod_spaces")
