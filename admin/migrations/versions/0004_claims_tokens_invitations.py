"""hostname claims per space with expiry, token lineage, invitations, explicit routes

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

- hostnames: primary key (host, space_id) — several spaces may wait on the same name — with at
  most one verified claim per host (partial unique index); ``expires_at`` (unverified claims
  made before this revision expire 72 h after it), ``displaced_at``, ``label_skeleton``.
- tokens.parent_id: the token that minted a token (existing tokens are roots).
- invitations: pending membership offers the invitee accepts or declines.
- service_routes: a deployed service without any route row served every hostname as ``/``; it
  gets that route written down (host NULL: every hostname), because records are no longer
  widened to a catch-all when no route names a hostname.
- every hostname is queued for republishing, so records computed under the old rules go away.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

from admin.db import new_id

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_LEGACY_CLAIM_TTL_MS = 72 * 3600 * 1000


def upgrade() -> None:
    now = int(time.time() * 1000)
    sqlite = op.get_context().dialect.name == "sqlite"

    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_id", sa.String(length=40), nullable=True))
        batch_op.create_index(batch_op.f("ix_tokens_parent_id"), ["parent_id"], unique=False)

    if sqlite:
        with op.batch_alter_table(
            "hostnames",
            schema=None,
            recreate="always",
            reflect_args=(
                sa.Column("host", sa.String(length=253), primary_key=True),
                sa.Column(
                    "space_id",
                    sa.String(length=40),
                    sa.ForeignKey(
                        "spaces.id", name="fk_hostnames_space_id_spaces", ondelete="CASCADE"
                    ),
                    primary_key=True,
                ),
            ),
        ) as batch_op:
            batch_op.add_column(sa.Column("expires_at", sa.BigInteger(), nullable=True))
            batch_op.add_column(sa.Column("displaced_at", sa.BigInteger(), nullable=True))
            batch_op.add_column(sa.Column("label_skeleton", sa.String(length=64), nullable=True))
    else:
        op.add_column("hostnames", sa.Column("expires_at", sa.BigInteger(), nullable=True))
        op.add_column("hostnames", sa.Column("displaced_at", sa.BigInteger(), nullable=True))
        op.add_column("hostnames", sa.Column("label_skeleton", sa.String(length=64), nullable=True))
        op.drop_constraint("pk_hostnames", "hostnames", type_="primary")
        op.create_primary_key("pk_hostnames", "hostnames", ["host", "space_id"])
    # (label_skeleton stays NULL for existing rows: the base domain is a setting, unknown here;
    # admin/api/services.py compares such rows by computing their skeleton when it needs to.)
    op.create_index(op.f("ix_hostnames_label_skeleton"), "hostnames", ["label_skeleton"])
    op.create_index(
        "uq_hostnames_verified_host",
        "hostnames",
        ["host"],
        unique=True,
        sqlite_where=sa.text("verified"),
        postgresql_where=sa.text("verified"),
    )
    op.execute(
        sa.text("UPDATE hostnames SET expires_at = :at WHERE NOT verified").bindparams(
            at=now + _LEGACY_CLAIM_TTL_MS
        )
    )

    op.create_table(
        "invitations",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("space_id", sa.String(length=40), nullable=False),
        sa.Column("principal_id", sa.String(length=40), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("invited_by", sa.String(length=40), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("answered_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["principal_id"],
            ["principals.id"],
            name=op.f("fk_invitations_principal_id_principals"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["space_id"],
            ["spaces.id"],
            name=op.f("fk_invitations_space_id_spaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invitations")),
    )
    op.create_index(op.f("ix_invitations_principal_id_id"), "invitations", ["principal_id", "id"])
    op.create_index(op.f("ix_invitations_space_id_id"), "invitations", ["space_id", "id"])
    op.create_index(
        "uq_invitations_pending_member",
        "invitations",
        ["space_id", "principal_id"],
        unique=True,
        sqlite_where=sa.text("status = 'pending'"),
        postgresql_where=sa.text("status = 'pending'"),
    )

    conn = op.get_bind()
    unrouted = conn.execute(
        sa.text(
            "SELECT s.id FROM services s WHERE"
            " EXISTS (SELECT 1 FROM deployments d WHERE d.service_id = s.id)"
            " AND NOT EXISTS (SELECT 1 FROM service_routes r WHERE r.service_id = s.id)"
        )
    ).all()
    for (service_id,) in unrouted:
        conn.execute(
            sa.text(
                "INSERT INTO service_routes (id, service_id, host, path_prefix, methods)"
                " VALUES (:id, :service, NULL, '/', '[]')"
            ).bindparams(id=new_id("rte"), service=service_id)
        )
    op.execute(
        sa.text(
            "INSERT INTO publish_queue (host, enqueued_at)"
            " SELECT DISTINCT h.host, :at FROM hostnames h"
            " WHERE NOT EXISTS (SELECT 1 FROM publish_queue q WHERE q.host = h.host)"
        ).bindparams(at=now)
    )


def downgrade() -> None:
    # Claims of several spaces on one name cannot share the old single-column key: keep the
    # verified one (or the oldest) per host.
    op.execute(
        sa.text(
            "DELETE FROM hostnames WHERE EXISTS (SELECT 1 FROM hostnames o"
            " WHERE o.host = hostnames.host AND o.space_id <> hostnames.space_id"
            " AND (o.verified > hostnames.verified OR (o.verified = hostnames.verified"
            " AND (o.created_at < hostnames.created_at OR (o.created_at = hostnames.created_at"
            " AND o.space_id < hostnames.space_id)))))"
        )
    )
    op.drop_index("uq_invitations_pending_member", table_name="invitations")
    op.drop_index(op.f("ix_invitations_space_id_id"), table_name="invitations")
    op.drop_index(op.f("ix_invitations_principal_id_id"), table_name="invitations")
    op.drop_table("invitations")
    op.drop_index("uq_hostnames_verified_host", table_name="hostnames")
    op.drop_index(op.f("ix_hostnames_label_skeleton"), table_name="hostnames")
    if op.get_context().dialect.name == "sqlite":
        # A batch copy cannot take a column out of a reflected primary key: copy by hand.
        op.drop_index("ix_hostnames_service_id", table_name="hostnames")
        op.create_table(
            "_hostnames_0002",
            sa.Column("host", sa.String(length=253), nullable=False),
            sa.Column("space_id", sa.String(length=40), nullable=False),
            sa.Column("service_id", sa.String(length=40), nullable=False),
            sa.Column("verified", sa.Boolean(), server_default=sa.false(), nullable=False),
            sa.Column("verify_token", sa.String(length=64), nullable=False),
            sa.Column("version", sa.Integer(), server_default="1", nullable=False),
            sa.Column("created_at", sa.BigInteger(), nullable=False),
            sa.Column("verified_at", sa.BigInteger(), nullable=True),
            sa.ForeignKeyConstraint(
                ["service_id"],
                ["services.id"],
                name="fk_hostnames_service_id_services",
                ondelete="CASCADE",
            ),
            sa.ForeignKeyConstraint(
                ["space_id"], ["spaces.id"], name="fk_hostnames_space_id_spaces", ondelete="CASCADE"
            ),
            sa.PrimaryKeyConstraint("host", name="pk_hostnames"),
        )
        columns = (
            "host, space_id, service_id, verified, verify_token, version, created_at, verified_at"
        )
        op.execute(f"INSERT INTO _hostnames_0002 ({columns}) SELECT {columns} FROM hostnames")
        op.drop_table("hostnames")
        op.rename_table("_hostnames_0002", "hostnames")
        op.create_index("ix_hostnames_service_id", "hostnames", ["service_id"])
    else:
        op.drop_constraint("pk_hostnames", "hostnames", type_="primary")
        op.create_primary_key("pk_hostnames", "hostnames", ["host"])
        op.drop_column("hostnames", "label_skeleton")
        op.drop_column("hostnames", "displaced_at")
        op.drop_column("hostnames", "expires_at")
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tokens_parent_id"))
        batch_op.drop_column("parent_id")
