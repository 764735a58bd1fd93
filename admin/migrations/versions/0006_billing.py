"""billing: meters, plans and seeded quotas, usage events, rollups and checkpoints, ledger

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Frozen copy of the seed (spec/control-plane.md); admin/billing/meters.py must agree (tested).
UNITS = {
    "llm_tokens_input": "tokens",
    "llm_tokens_output": "tokens",
    "embedding_count": "embeddings",
    "vector_search_count": "searches",
    "exec_seconds": "seconds",
    "browser_seconds": "seconds",
    "web_search_count": "searches",
    "r2_storage_gb_month": "GB-months",
    "wfp_requests": "requests",
    "queue_messages": "messages",
}
# meter: (Free quota, Plus quota, PayG rate in cents)
SEED = {
    "llm_tokens_input": (20_000, 250_000, 3),
    "llm_tokens_output": (10_000, 125_000, 15),
    "embedding_count": (200, 2_500, 1),
    "vector_search_count": (100, 1_250, 2),
    "exec_seconds": (600, 1_800, 5),
    "browser_seconds": (0, 120, 10),
    "web_search_count": (20, 400, 5),
    "r2_storage_gb_month": (1, 5, 2_300),
    "wfp_requests": (100, 1_000, 1),
    "queue_messages": (100, 1_000, 1),
}


def upgrade() -> None:
    with op.batch_alter_table("spaces", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "billing_status", sa.String(length=16), server_default="active", nullable=False
            )
        )
        batch_op.add_column(
            sa.Column("billing_version", sa.Integer(), server_default="1", nullable=False)
        )

    meters = op.create_table(
        "meters",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("unit", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_meters")),
    )
    plans = op.create_table(
        "plans",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plans")),
    )
    plan_quotas = op.create_table(
        "plan_quotas",
        sa.Column("plan_id", sa.String(length=40), nullable=False),
        sa.Column("meter", sa.String(length=64), nullable=False),
        sa.Column("quota", sa.BigInteger(), nullable=False),
        sa.Column("rate_cents", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["meter"], ["meters.name"], name=op.f("fk_plan_quotas_meter_meters")
        ),
        sa.ForeignKeyConstraint(
            ["plan_id"],
            ["plans.id"],
            name=op.f("fk_plan_quotas_plan_id_plans"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("plan_id", "meter", name=op.f("pk_plan_quotas")),
    )
    op.create_table(
        "usage_events",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("space_id", sa.String(length=40), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("meter", sa.String(length=64), nullable=False),
        sa.Column("units", sa.BigInteger(), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("at_given", sa.Boolean(), nullable=False),
        sa.Column("cost_cents", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("principal_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["space_id"],
            ["spaces.id"],
            name=op.f("fk_usage_events_space_id_spaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_events")),
        sa.UniqueConstraint(
            "space_id", "idempotency_key", name=op.f("uq_usage_events_space_id_idempotency_key")
        ),
    )
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_usage_events_space_id_period"), ["space_id", "period"], unique=False
        )
    op.create_table(
        "usage_rollups",
        sa.Column("space_id", sa.String(length=40), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("meter", sa.String(length=64), nullable=False),
        sa.Column("units", sa.BigInteger(), nullable=False),
        sa.Column("cost_cents", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["space_id"],
            ["spaces.id"],
            name=op.f("fk_usage_rollups_space_id_spaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("space_id", "period", "meter", name=op.f("pk_usage_rollups")),
    )
    op.create_table(
        "usage_checkpoints",
        sa.Column("space_id", sa.String(length=40), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("meter", sa.String(length=64), nullable=False),
        sa.Column("writer", sa.String(length=64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["space_id"],
            ["spaces.id"],
            name=op.f("fk_usage_checkpoints_space_id_spaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "space_id", "period", "meter", "writer", name=op.f("pk_usage_checkpoints")
        ),
    )
    with op.batch_alter_table("usage_checkpoints", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_usage_checkpoints_period"), ["period"], unique=False)
    op.create_table(
        "billing_ledger",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("space_id", sa.String(length=40), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("balance_after_cents", sa.BigInteger(), nullable=False),
        sa.Column("plan", sa.String(length=40), nullable=False),
        sa.Column("meter", sa.String(length=64), nullable=True),
        sa.Column("units", sa.BigInteger(), nullable=True),
        sa.Column("period", sa.String(length=7), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("principal_id", sa.String(length=40), nullable=True),
        sa.Column("detail", sa.String(length=300), nullable=True),
        sa.ForeignKeyConstraint(
            ["space_id"],
            ["spaces.id"],
            name=op.f("fk_billing_ledger_space_id_spaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_ledger")),
        sa.UniqueConstraint(
            "space_id",
            "kind",
            "idempotency_key",
            name=op.f("uq_billing_ledger_space_id_kind_idempotency_key"),
        ),
    )
    with op.batch_alter_table("billing_ledger", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_billing_ledger_space_id_id"), ["space_id", "id"], unique=False
        )

    now = int(time.time() * 1000)
    op.bulk_insert(meters, [{"name": m, "unit": u} for m, u in UNITS.items()])
    op.bulk_insert(
        plans,
        [
            {"id": pid, "name": name, "version": 1, "created_at": now, "updated_at": now}
            for pid, name in (
                ("plan_free", "Free"),
                ("plan_plus", "Plus"),
                ("plan_payg", "Pay as you go"),
            )
        ],
    )
    rows = []
    for meter, (free, plus, rate) in SEED.items():
        rows += [
            {"plan_id": "plan_free", "meter": meter, "quota": free, "rate_cents": None},
            {"plan_id": "plan_plus", "meter": meter, "quota": plus, "rate_cents": None},
            {"plan_id": "plan_payg", "meter": meter, "quota": -1, "rate_cents": rate},
        ]
    op.bulk_insert(plan_quotas, rows)


def downgrade() -> None:
    for table in (
        "billing_ledger",
        "usage_checkpoints",
        "usage_rollups",
        "usage_events",
        "plan_quotas",
        "plans",
        "meters",
    ):
        op.drop_table(table)
    with op.batch_alter_table("spaces", schema=None) as batch_op:
        batch_op.drop_column("billing_version")
        batch_op.drop_column("billing_status")
