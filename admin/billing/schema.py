"""Billing tables (SQLAlchemy Core, on :data:`admin.db.metadata`; migration ``0006``).

The billing *account* of a space is three columns of ``spaces`` (``plan``, ``balance_cents``,
``billing_status``, with ``billing_version`` as its ETag): one row per space, no second source
of truth for the plan, gone with the space. Everything else lives here:

* ``meters``, ``plans``, ``plan_quotas`` — the catalogue (seeded by the migration, edited by
  the system admin);
* ``usage_events`` — usage reported by runtimes and agents, unique per (space, idempotency key);
* ``usage_rollups`` — units and cost per (space, period, meter): what quotas are checked against;
* ``usage_checkpoints`` — the last cumulative value folded per gateway counter field, written in
  the same transaction as the rollup it fed (exactly-once folding, ``collector.py``);
* ``billing_ledger`` — every balance and plan change (credit, debit, plan) with the balance
  after it; credits are unique per (space, idempotency key).
"""

from __future__ import annotations

import sqlalchemy as sa

from admin.db import metadata

meters = sa.Table(
    "meters",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("unit", sa.String(32), nullable=False),
)

plans = sa.Table(
    "plans",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

plan_quotas = sa.Table(
    "plan_quotas",
    metadata,
    sa.Column(
        "plan_id", sa.String(40), sa.ForeignKey("plans.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("meter", sa.String(64), sa.ForeignKey("meters.name"), primary_key=True),
    sa.Column("quota", sa.BigInteger, nullable=False),  # units per month; 0 unavailable; -1 gated
    sa.Column("rate_cents", sa.BigInteger, nullable=True),  # per unit beyond the quota
)

usage_events = sa.Table(
    "usage_events",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column(
        "space_id", sa.String(40), sa.ForeignKey("spaces.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("idempotency_key", sa.String(200), nullable=False),
    sa.Column("meter", sa.String(64), nullable=False),
    sa.Column("units", sa.BigInteger, nullable=False),
    sa.Column("period", sa.String(7), nullable=False),  # YYYY-MM (UTC) of ``at``
    sa.Column("at", sa.BigInteger, nullable=False),  # epoch ms
    sa.Column("at_given", sa.Boolean, nullable=False),  # ``at`` came with the event
    sa.Column("cost_cents", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("principal_id", sa.String(40), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("space_id", "idempotency_key"),
    sa.Index(None, "space_id", "period"),
)

usage_rollups = sa.Table(
    "usage_rollups",
    metadata,
    sa.Column(
        "space_id", sa.String(40), sa.ForeignKey("spaces.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("period", sa.String(7), primary_key=True),
    sa.Column("meter", sa.String(64), primary_key=True),
    sa.Column("units", sa.BigInteger, nullable=False),
    sa.Column("cost_cents", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

usage_checkpoints = sa.Table(
    "usage_checkpoints",
    metadata,
    sa.Column(
        "space_id", sa.String(40), sa.ForeignKey("spaces.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("period", sa.String(7), primary_key=True),
    sa.Column("meter", sa.String(64), primary_key=True),
    sa.Column("writer", sa.String(64), primary_key=True),  # the gateway worker's id
    sa.Column("value", sa.BigInteger, nullable=False),  # last cumulative value folded
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Index(None, "period"),
)

billing_ledger = sa.Table(
    "billing_ledger",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column(
        "space_id", sa.String(40), sa.ForeignKey("spaces.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # credit | debit | plan
    sa.Column("amount_cents", sa.BigInteger, nullable=False),  # + credit, - debit, 0 plan
    sa.Column("balance_after_cents", sa.BigInteger, nullable=False),
    sa.Column("plan", sa.String(40), nullable=False),  # the plan after the change
    sa.Column("meter", sa.String(64), nullable=True),
    sa.Column("units", sa.BigInteger, nullable=True),
    sa.Column("period", sa.String(7), nullable=True),
    sa.Column("idempotency_key", sa.String(200), nullable=True),
    sa.Column("principal_id", sa.String(40), nullable=True),  # None: the usage collector
    sa.Column("detail", sa.String(300), nullable=True),
    sa.UniqueConstraint("space_id", "kind", "idempotency_key"),
    sa.Index(None, "space_id", "id"),
)
