"""SQL tables of staged rollouts (on :data:`admin.db.metadata`; migration 0007).

* ``rollouts`` — one per app deployment with ``strategy: staged`` that had something to roll
  out: the state, the current stage, the stages and gate as the manifest declared them, when the
  current stage began and when the reconciler next decides, and an optimistic-lock ``version``.
* ``rollout_services`` — the rollout's legs: per service, the new (canary) deployment and the
  stable (baseline) one it is measured against and falls back to. ``active_service_id`` is the
  service id while the rollout runs and NULL once it ended; its unique index makes "at most one
  running rollout per service" a database fact, not only a check.
* ``rollout_events`` — the history: every transition with who (principal or reconciler), when,
  why, and the gate's measured inputs.
"""

from __future__ import annotations

import sqlalchemy as sa

from admin.db import metadata

rollouts = sa.Table(
    "rollouts",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column(
        "space_id", sa.String(40), sa.ForeignKey("spaces.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column(
        "app_deployment_id",
        sa.String(40),
        sa.ForeignKey("app_deployments.id", ondelete="CASCADE"),
        nullable=False,
        unique=True,
    ),
    sa.Column("state", sa.String(16), nullable=False),  # admin/rollouts/machine.py State
    sa.Column("stage", sa.Integer, nullable=False),  # 0-based index into stages
    sa.Column("stages", sa.Text, nullable=False),  # JSON [{weight, pause_minutes}], ends at 100
    sa.Column("health_check", sa.Text, nullable=False),  # JSON, as the manifest declared it
    sa.Column("auto_promote", sa.Boolean, nullable=False),
    # ms: when the current stage's weight took effect (the gate's evidence starts there) ...
    sa.Column("stage_started_at", sa.BigInteger, nullable=False),
    # ... and when its pause (re)started: the same, or the last resume.
    sa.Column("pause_started_at", sa.BigInteger, nullable=False),
    sa.Column("next_decision_at", sa.BigInteger, nullable=True),  # ms; None unless in_progress
    sa.Column("waiting", sa.Text, nullable=True),  # why an elapsed stage did not advance
    sa.Column("fail_reason", sa.Text, nullable=True),
    sa.Column("principal_id", sa.String(40), nullable=False),
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),  # optimistic lock
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("finished_at", sa.BigInteger, nullable=True),
    sa.Index(None, "state"),
)

rollout_services = sa.Table(
    "rollout_services",
    metadata,
    sa.Column(
        "rollout_id",
        sa.String(40),
        sa.ForeignKey("rollouts.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column(
        "service_id",
        sa.String(40),
        sa.ForeignKey("services.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("canary_deployment_id", sa.String(40), nullable=False),
    sa.Column("baseline_deployment_id", sa.String(40), nullable=False),
    # = service_id while the rollout runs, NULL after: one running rollout per service.
    sa.Column("active_service_id", sa.String(40), nullable=True, unique=True),
)

rollout_events = sa.Table(
    "rollout_events",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),  # time-sortable: history order
    sa.Column(
        "rollout_id",
        sa.String(40),
        sa.ForeignKey("rollouts.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("from_state", sa.String(16), nullable=True),  # None for initiate
    sa.Column("to_state", sa.String(16), nullable=False),
    sa.Column("from_stage", sa.Integer, nullable=True),
    sa.Column("to_stage", sa.Integer, nullable=False),
    sa.Column("from_weight", sa.Integer, nullable=True),  # canary percent
    sa.Column("to_weight", sa.Integer, nullable=False),
    sa.Column("actor", sa.String(16), nullable=False),  # principal | reconciler
    sa.Column("principal_id", sa.String(40), nullable=True),
    sa.Column("request_id", sa.String(128), nullable=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("inputs", sa.Text, nullable=True),  # JSON: the gate's measurement, if any
    sa.Index(None, "rollout_id", "id"),
)
