"""SQL schema (SQLAlchemy Core) and engine set-up: the admin's durable authority.

The same code runs on SQLite (default: a file, WAL, foreign keys on) and PostgreSQL (asyncpg).
Schema changes go through Alembic migrations in ``admin/migrations`` (applied on start);
this module is the source the migrations mirror.

Ids are ``<prefix>_<26 chars>``: a millisecond timestamp and randomness (ULID-like), so they sort
by creation time — cursor paging orders by id.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def new_id(prefix: str) -> str:
    """``prefix_`` + 10 chars of millisecond time + 16 random chars, sortable by time."""
    ms = int(time.time() * 1000)
    t = ""
    for _ in range(10):
        t = _ALPHABET[ms & 31] + t
        ms >>= 5
    r = "".join(_ALPHABET[b & 31] for b in secrets.token_bytes(16))
    return f"{prefix}_{t}{r}"


def now_ms() -> int:
    return int(time.time() * 1000)


principals = sa.Table(
    "principals",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # user | service | system
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

spaces = sa.Table(
    "spaces",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # user | team | system
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("plan", sa.String(32), nullable=False, server_default="plan_free"),
    sa.Column("balance_cents", sa.BigInteger, nullable=False, server_default="0"),
    # active | blocked (over its request quota: hostnames published blocked; admin/billing)
    sa.Column("billing_status", sa.String(16), nullable=False, server_default="active"),
    sa.Column("billing_version", sa.Integer, nullable=False, server_default="1"),  # its ETag
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

memberships = sa.Table(
    "memberships",
    metadata,
    sa.Column(
        "space_id", sa.String(40), sa.ForeignKey("spaces.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column(
        "principal_id",
        sa.String(40),
        sa.ForeignKey("principals.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("role", sa.String(16), nullable=False),  # owner | admin | editor | viewer
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column(
        "principal_id",
        sa.String(40),
        sa.ForeignKey("principals.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("prefix", sa.String(12), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False, unique=True),
    sa.Column("scopes", sa.Text, nullable=False),  # JSON list
    sa.Column("expires_at", sa.BigInteger, nullable=True),
    sa.Column("revoked_at", sa.BigInteger, nullable=True),
    sa.Column("last_used_at", sa.BigInteger, nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    # The token that minted this one (None: a root, e.g. `turnout admin init`'s, or an orphan
    # issued by the system admin). A token never outlives its parent; revoking a token revokes
    # every token below it (admin/api/tokens.py).
    sa.Column("parent_id", sa.String(40), nullable=True),
    sa.Index(None, "parent_id"),
)

services = sa.Table(
    "services",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column(
        "space_id", sa.String(40), sa.ForeignKey("spaces.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("name", sa.String(63), nullable=False),
    # The app (manifest metadata.name) that deploys this service; None until one does.
    sa.Column("app_name", sa.String(63), nullable=True),
    sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("space_id", "name"),
)

# One claim per (hostname, space): several spaces may wait for their TXT proof on the same name,
# at most one holds it verified (the partial unique index); see admin/claims.py.
hostnames = sa.Table(
    "hostnames",
    metadata,
    sa.Column("host", sa.String(253), primary_key=True),
    sa.Column(
        "space_id",
        sa.String(40),
        sa.ForeignKey("spaces.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column(
        "service_id",
        sa.String(40),
        sa.ForeignKey("services.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("verified", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("verify_token", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("verified_at", sa.BigInteger, nullable=True),
    # An unverified claim can be proven until then (None: verified, or claimed before expiry).
    sa.Column("expires_at", sa.BigInteger, nullable=True),
    # Set when another space proved ownership first; the row stays so its space can see why.
    sa.Column("displaced_at", sa.BigInteger, nullable=True),
    # Under the base domain: SHA-256 of the UTS #39 skeleton of the label that owns the host's
    # subtree (admin/idn.py), so a confusable xn-- label is found by an index lookup.
    sa.Column("label_skeleton", sa.String(64), nullable=True),
    sa.Index(None, "service_id"),
    sa.Index(None, "label_skeleton"),
    sa.Index(
        "uq_hostnames_verified_host",
        "host",
        unique=True,
        sqlite_where=sa.text("verified"),
        postgresql_where=sa.text("verified"),
    ),
)

# Endpoints of a service as the latest app deployment declared them (path/method per host).
service_routes = sa.Table(
    "service_routes",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column(
        "service_id",
        sa.String(40),
        sa.ForeignKey("services.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("host", sa.String(253), nullable=True),  # None: every hostname of the service
    sa.Column("path_prefix", sa.String(1024), nullable=False),
    sa.Column("methods", sa.Text, nullable=False),  # JSON list
    sa.Index(None, "service_id"),
)

app_deployments = sa.Table(
    "app_deployments",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column(
        "space_id", sa.String(40), sa.ForeignKey("spaces.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("name", sa.String(63), nullable=False),
    sa.Column("strategy", sa.String(16), nullable=False),
    sa.Column("manifest_sha256", sa.String(64), nullable=False),
    sa.Column("principal_id", sa.String(40), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Index(None, "space_id"),
)

snapshots = sa.Table(
    "snapshots",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column(
        "service_id",
        sa.String(40),
        sa.ForeignKey("services.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("config", sa.Text, nullable=False),  # JSON: upstreams, limits, policy (plain)
    sa.Column(
        "secrets", sa.Text, nullable=False
    ),  # JSON: {"env": {...}, "secrets": {...}, "bindings": {...}} of envelopes
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

deployments = sa.Table(
    "deployments",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column(
        "service_id",
        sa.String(40),
        sa.ForeignKey("services.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("app_deployment_id", sa.String(40), nullable=True),
    sa.Column("snapshot_id", sa.String(40), sa.ForeignKey("snapshots.id"), nullable=False),
    sa.Column("number", sa.Integer, nullable=False),  # per-service monotonic version
    sa.Column("status", sa.String(16), nullable=False),  # pending | success | failed
    # active | canary | rollback | archived | rolled_back
    sa.Column("routing_status", sa.String(16), nullable=False),
    sa.Column("routing_weight", sa.Integer, nullable=False, server_default="0"),  # basis points
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),  # optimistic lock
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("service_id", "number"),
)

# Last published version per hostname (route record versions are monotonic per host).
route_versions = sa.Table(
    "route_versions",
    metadata,
    sa.Column("host", sa.String(253), primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
)

# Transactional outbox: hosts whose route record must be (re)published. Written in the same
# transaction as the change, drained by the publisher after commit; a crash between commit and
# publish leaves the rows here, and the next start publishes them.
publish_queue = sa.Table(
    "publish_queue",
    metadata,
    sa.Column("host", sa.String(253), primary_key=True),
    sa.Column("enqueued_at", sa.BigInteger, nullable=False),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("principal_id", sa.String(40), nullable=True),
    sa.Column("space_id", sa.String(40), nullable=True),
    sa.Column("action", sa.String(100), nullable=False),
    sa.Column("resource", sa.String(300), nullable=False),
    sa.Column("request_id", sa.String(128), nullable=False),  # the server's own id
    sa.Column("outcome", sa.String(32), nullable=False),  # success | <error code>
    # The client's X-Request-Id (validated), kept apart from the server's id (migration 0003).
    sa.Column("client_request_id", sa.String(128), nullable=True),
    # user | service | system | deployment (a managed deployment token); migration 0008.
    sa.Column("principal_kind", sa.String(16), nullable=True),
    sa.Index(None, "space_id", "id"),
)

# A space's common env (admin/common_env.py): merged under each service's own env at deploy
# time. Values are envelopes (admin/crypto.py) bound to the space and the entry's name.
common_env = sa.Table(
    "common_env",
    metadata,
    sa.Column(
        "space_id", sa.String(40), sa.ForeignKey("spaces.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),  # JSON envelope
    sa.Column("secret", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("principal_id", sa.String(40), primary_key=True),
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("method", sa.String(10), nullable=False),
    sa.Column("path", sa.String(1000), nullable=False),
    sa.Column("body_sha256", sa.String(64), nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("response", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)


def make_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """Async engine for ``sqlite+aiosqlite:///path`` or ``postgresql+asyncpg://...``.

    A bare file path is taken as SQLite. SQLite gets WAL, foreign keys and a busy timeout.
    """
    if "://" not in url:
        os.makedirs(os.path.dirname(os.path.abspath(url)) or ".", exist_ok=True)
        url = f"sqlite+aiosqlite:///{os.path.abspath(url)}"
    elif url.startswith("sqlite:///"):
        url = "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    elif url.startswith(("postgres://", "postgresql://")):
        url = "postgresql+asyncpg://" + url.split("://", 1)[1]
    kwargs: dict[str, Any] = {"echo": echo}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30}
        # One connection: SQLite has one writer anyway, and deferred transactions upgrading
        # to write locks concurrently would fail with "database is locked" instead of waiting.
        # (Several admin processes need PostgreSQL.)
        kwargs["pool_size"] = 1
        kwargs["max_overflow"] = 0
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    return engine
