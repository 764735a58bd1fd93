"""Admin settings: one frozen object built at start from flags and environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from admin.crypto import KeyRing


@dataclass(frozen=True, slots=True)
class Settings:
    db_url: str = "./.turnout/admin.db"
    redis_url: str | None = None  # None: in-process route store (turnout dev)
    redis_prefix: str = "turnout"
    keys: KeyRing | None = field(default=None, repr=False)
    base_domain: str = "turnout.localhost"  # TURNOUT_BASE_DOMAIN: hostnames granted on request
    dns_fixture: str | None = None  # TXT records from a JSON file instead of system DNS
    max_hostnames_per_service: int = 20
    publish_retry_seconds: float = 1.0
    reconcile_interval: float = 5.0
    # TTL of the leader lease (admin/leader.py); 0: derived from reconcile_interval (>= 30 s).
    lease_seconds: float = 0.0
    max_body_bytes: int = 1024 * 1024
    pod_lease_seconds: float = 30.0  # TURNOUT_POD_LEASE_TTL: a pod lease's TTL (heartbeats extend)
    pod_reap_interval: float = 5.0  # TURNOUT_POD_REAP_INTERVAL: the lease reaper's period
    migrate_on_start: bool = True

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
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "keys" not in values:
            values["keys"] = KeyRing.parse(keys_spec) if keys_spec else None
        settings = cls(**values)  # type: ignore[arg-type]
        return settings

    @property
    def lease_ms(self) -> int:
        """The leader lease's TTL: ``lease_seconds``, or by default 3 reconcile intervals and
        at least 30 s (every leader check renews it)."""
        if self.lease_seconds > 0:
            return int(self.lease_seconds * 1000)
        return max(30_000, int(self.reconcile_interval * 3000))

    def require_keys(self) -> KeyRing:
        if self.keys is None:
            raise SystemExit(
                "turnout admin: no encryption key. Set TURNOUT_KEYS='*k1:<base64 32 bytes>' "
                "(generate one with: turnout admin keygen)"
            )
        return self.keys
