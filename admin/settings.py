"""Admin settings: one frozen object built at start from flags and environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from admin.crypto import KeyRing
from routing.redis_conn import RedisUrlError, parse_redis_url


@dataclass(frozen=True, slots=True)
class Settings:
    # Both URLs may carry passwords: kept out of repr (log them with routing.redis_conn's
    # redact_url / the CLI's _safe_url).
    db_url: str = field(default="./.turnout/admin.db", repr=False)
    redis_url: str | None = field(default=None, repr=False)  # None: in-process (turnout dev)
    redis_prefix: str = "turnout"
    keys: KeyRing | None = field(default=None, repr=False)
    base_domain: str = "turnout.localhost"  # TURNOUT_BASE_DOMAIN: hostnames granted on request
    dns_fixture: str | None = None  # TXT records from a JSON file instead of system DNS
    max_hostnames_per_service: int = 20
    # TURNOUT_CLAIM_TTL_HOURS: an unverified hostname claim can be proven for this long
    claim_ttl_hours: float = 72.0
    publish_retry_seconds: float = 1.0
    reconcile_interval: float = 5.0
    usage_interval: float = 10.0  # TURNOUT_USAGE_INTERVAL: the usage collector's period
    rollout_interval: float = 60.0  # TURNOUT_ROLLOUT_INTERVAL: the rollout reconciler's period
    # TTL of the leader lease (admin/leader.py): a dead leader is replaced within about this.
    lease_seconds: float = 3.0
    max_body_bytes: int = 1024 * 1024
    pod_lease_seconds: float = 30.0  # TURNOUT_POD_LEASE_TTL: a pod lease's TTL (heartbeats extend)
    pod_reap_interval: float = 5.0  # TURNOUT_POD_REAP_INTERVAL: the lease reaper's period
    migrate_on_start: bool = True
    parse_workers: int = 1  # TURNOUT_PARSE_WORKERS: processes parsing manifests (admin.limits)
    parses_per_principal: int = 2  # TURNOUT_PARSES_PER_PRINCIPAL: more in flight → 429
    audit_failures_per_minute: int = 60  # TURNOUT_AUDIT_FAILURES_PER_MINUTE, per principal
    # TURNOUT_RUNTIME_TOKEN_GRACE_SECONDS: after POST /api/runtime/token/refresh the old managed
    # token keeps working this long (0..86400), so a runtime swaps tokens without downtime.
    runtime_token_grace_seconds: int = 300

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Settings:
        """Build from ``TURNOUT_*`` variables; refuses to build without a key ring."""
        env = dict(os.environ if env is None else env)
        keys_spec = env.get("TURNOUT_KEYS", "")
        values: dict[str, object] = {
            "db_url": env.get("TURNOUT_DB", "./.turnout/admin.db"),
            "redis_url": env.get("TURNOUT_REDIS_URL") or None,
            "redis_prefix": env.get("TURNOUT_REDIS_PREFIX", "turnout"),
            "base_domain": env.get("TURNOUT_BASE_DOMAIN", "turnout.localhost").lower(),
            "dns_fixture": env.get("TURNOUT_DNS_FIXTURE") or None,
        }
        for var, key in (
            ("TURNOUT_RECONCILE_INTERVAL", "reconcile_interval"),
            ("TURNOUT_PUBLISH_RETRY", "publish_retry_seconds"),
            ("TURNOUT_LEASE_SECONDS", "lease_seconds"),
            ("TURNOUT_USAGE_INTERVAL", "usage_interval"),
            ("TURNOUT_ROLLOUT_INTERVAL", "rollout_interval"),
            ("TURNOUT_POD_LEASE_TTL", "pod_lease_seconds"),
            ("TURNOUT_POD_REAP_INTERVAL", "pod_reap_interval"),
        ):
            raw = env.get(var)
            if raw:
                try:
                    seconds = float(raw)
                except ValueError:
                    raise SystemExit(f"turnout admin: {var} must be a number of seconds") from None
                if not 0.05 <= seconds <= 3600:
                    raise SystemExit(f"turnout admin: {var} must be within 0.05..3600 seconds")
                values[key] = seconds
        raw_ttl = env.get("TURNOUT_CLAIM_TTL_HOURS")
        if raw_ttl:
            values["claim_ttl_hours"] = _claim_ttl(raw_ttl)
        for var, key in (
            ("TURNOUT_PARSE_WORKERS", "parse_workers"),
            ("TURNOUT_PARSES_PER_PRINCIPAL", "parses_per_principal"),
            ("TURNOUT_AUDIT_FAILURES_PER_MINUTE", "audit_failures_per_minute"),
        ):
            raw = env.get(var)
            if raw:
                if not (
                    len(raw) <= 5 and raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 10_000
                ):
                    raise SystemExit(f"turnout admin: {var} must be an integer 1..10000")
                values[key] = int(raw)
        raw_grace = env.get("TURNOUT_RUNTIME_TOKEN_GRACE_SECONDS")
        if raw_grace:
            if not (
                len(raw_grace) <= 5
                and raw_grace.isascii()
                and raw_grace.isdigit()
                and int(raw_grace) <= MAX_GRACE_SECONDS
            ):
                raise SystemExit(
                    "turnout admin: TURNOUT_RUNTIME_TOKEN_GRACE_SECONDS must be an integer "
                    f"0..{MAX_GRACE_SECONDS}"
                )
            values["runtime_token_grace_seconds"] = int(raw_grace)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "keys" not in values:
            values["keys"] = KeyRing.parse(keys_spec) if keys_spec else None
        settings = cls(**values)  # type: ignore[arg-type]
        if settings.redis_url is not None:
            try:
                parse_redis_url(settings.redis_url)
            except RedisUrlError as exc:
                raise SystemExit(f"turnout admin: TURNOUT_REDIS_URL / --redis: {exc}") from None
        return settings

    @property
    def lease_ms(self) -> int:
        """The leader lease's TTL in ms (``TURNOUT_LEASE_SECONDS``, default 3 s); a dedicated
        heartbeat renews it every third of that (admin/leader.py)."""
        return int(self.lease_seconds * 1000)

    def require_keys(self) -> KeyRing:
        if self.keys is None:
            raise SystemExit(
                "turnout admin: no encryption key. Set TURNOUT_KEYS='*k1:<base64 32 bytes>' "
                "(generate one with: turnout admin keygen)"
            )
        return self.keys


MAX_CLAIM_TTL_HOURS = 24 * 365
MAX_GRACE_SECONDS = 86_400


def _claim_ttl(raw: str) -> float:
    """``TURNOUT_CLAIM_TTL_HOURS``: hours (fractions allowed), more than 0, at most a year."""
    try:
        hours = float(raw)
    except ValueError:
        raise SystemExit(
            "turnout admin: TURNOUT_CLAIM_TTL_HOURS must be a number of hours"
        ) from None
    if not 0 < hours <= MAX_CLAIM_TTL_HOURS:  # also refuses nan and inf
        raise SystemExit(
            f"turnout admin: TURNOUT_CLAIM_TTL_HOURS must be within 0..{MAX_CLAIM_TTL_HOURS} hours"
        )
    return hours
