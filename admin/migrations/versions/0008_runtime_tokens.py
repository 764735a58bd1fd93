"""runtime tokens: a space's common env, and the principal kind of audit rows

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "common_env",
        sa.Column("space_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("secret", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["space_id"],
            ["spaces.id"],
            name=op.f("fk_common_env_space_id_spaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("space_id", "name", name=op.f("pk_common_env")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("principal_kind", sa.String(length=16), nullable=True))
    # Rows written before: the kind of their principal, where it still exists.
    op.execute(
        "UPDATE audit_log SET principal_kind = (SELECT kind FROM principals"
        " WHERE principals.id = audit_log.principal_id) WHERE principal_id IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_column("principal_kind")
    op.drop_table("common_env")
