"""``spec.services.<name>.access``: what the service's managed deployment token may do.

    access:
      scopes: [runtime:config, usage:write]   # default [runtime:config]
      lifetime_seconds: 86400                 # optional; without it the token lives as long
                                              # as its deployment carries traffic

Scopes are a subset of :data:`MANAGED_SCOPES`; anything else is an issue naming the scope and
its field path (``spec.services.web.access.scopes[1]``). The token itself is minted at deploy
time (:mod:`admin.managed`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from admin.manifest_load import key_text

MANAGED_SCOPES: Final = (
    "runtime:config",
    "usage:write",
    "pods:read",
    "pods:write",
    "deployments:read",
)
DEFAULT_SCOPES: Final = ("runtime:config",)
MIN_LIFETIME: Final = 60
MAX_LIFETIME: Final = 365 * 24 * 3600
_FIELDS: Final = ("scopes", "lifetime_seconds")


@dataclass(frozen=True, slots=True)
class Access:
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    lifetime_seconds: int | None = None  # None: until the deployment stops carrying traffic

    def to_json(self) -> dict[str, Any]:
        return {"scopes": list(self.scopes), "lifetime_seconds": self.lifetime_seconds}

    @classmethod
    def from_json(cls, data: Any) -> Access:
        """From a snapshot's ``config.access`` (absent in snapshots written before: default)."""
        if not isinstance(data, dict):
            return cls()
        scopes = tuple(s for s in data.get("scopes", DEFAULT_SCOPES) if s in MANAGED_SCOPES)
        lifetime = data.get("lifetime_seconds")
        return cls(scopes or DEFAULT_SCOPES, lifetime if isinstance(lifetime, int) else None)


def parse_access(add: Callable[[str, str], None], value: Any, path: str) -> Access | None:
    """Validate an ``access`` mapping; problems go to ``add(path, message)`` (None then)."""
    if not isinstance(value, dict):
        add(path, "must be a mapping with scopes (and optionally lifetime_seconds)")
        return None
    ok = True
    for key in value:
        if key not in _FIELDS:
            add(f"{path}.{key_text(key)}", f"unknown field (allowed: {', '.join(_FIELDS)})")
            ok = False
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    if "scopes" in value:
        raw = value["scopes"]
        if not isinstance(raw, list) or not raw:
            add(f"{path}.scopes", "must be a non-empty list of scopes")
            return None
        picked: list[str] = []
        for i, scope in enumerate(raw):
            if not isinstance(scope, str) or scope not in MANAGED_SCOPES:
                shown = key_text(scope) if isinstance(scope, str) else "a non-string"
                add(
                    f"{path}.scopes[{i}]",
                    f"{shown} is not a scope a deployment token may hold "
                    f"(allowed: {', '.join(MANAGED_SCOPES)})",
                )
                ok = False
            elif scope not in picked:
                picked.append(scope)
        scopes = tuple(picked)
    lifetime = value.get("lifetime_seconds")
    if lifetime is not None and (
        isinstance(lifetime, bool)
        or not isinstance(lifetime, int)
        or not MIN_LIFETIME <= lifetime <= MAX_LIFETIME
    ):
        add(
            f"{path}.lifetime_seconds",
            f"must be an integer between {MIN_LIFETIME} and {MAX_LIFETIME}",
        )
        ok = False
    return Access(scopes, lifetime) if ok else None
