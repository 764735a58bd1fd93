"""Live replica state shared across record versions: round robin and passive ejection.

A :class:`Replica` is interned per URL by an :class:`UpstreamRegistry`, so a replica keeps its
failure count and ejection when a new version of its record arrives. Passive health, as nginx's
``max_fails``/``fail_timeout``: ``max_fails`` consecutive connect failures eject the replica for
``eject_seconds``; after that it gets traffic again, and one success resets the count.
The clock is passed in (``now``, seconds on a monotonic clock) so tests can drive it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Final

from mypy_extensions import mypyc_attr

from routing.models import Upstream


@dataclass(frozen=True, slots=True)
class EjectionPolicy:
    max_fails: int = 3
    eject_seconds: float = 10.0


DEFAULT_EJECTION: Final = EjectionPolicy()


@mypyc_attr(native_class=False)  # weak references (UpstreamRegistry); mypyc natives have none
class Replica:
    """One replica of one deployment, as the gateway dials it."""

    __slots__ = (
        "__weakref__",
        "base_path",
        "ejected_until",
        "failures",
        "host",
        "key",
        "policy",
        "port",
        "url",
    )

    def __init__(self, upstream: Upstream, policy: EjectionPolicy) -> None:
        self.url = upstream.url
        self.host = upstream.host
        self.port = upstream.port
        self.base_path = upstream.base_path.encode("ascii")
        self.key = (upstream.host, upstream.port)  # pool key: one pool per origin
        self.policy = policy
        self.failures = 0
        self.ejected_until = 0.0

    def available(self, now: float) -> bool:
        return self.ejected_until <= now

    def record_failure(self, now: float) -> bool:
        """Count a connect failure; returns True when this failure ejected the replica."""
        self.failures += 1
        if self.failures >= self.policy.max_fails:
            self.failures = 0
            self.ejected_until = now + self.policy.eject_seconds
            return True
        return False

    def record_success(self) -> None:
        if self.failures:
            self.failures = 0

    def __repr__(self) -> str:
        return f"Replica({self.url!r}, failures={self.failures}, ejected_until={self.ejected_until:.3f})"


class UpstreamRegistry:
    """Interns :class:`Replica` objects by URL; unreferenced replicas disappear by themselves."""

    __slots__ = ("_by_url", "policy")

    def __init__(self, policy: EjectionPolicy = DEFAULT_EJECTION) -> None:
        self.policy = policy
        self._by_url: weakref.WeakValueDictionary[str, Replica] = weakref.WeakValueDictionary()

    def get(self, upstream: Upstream) -> Replica:
        replica = self._by_url.get(upstream.url)
        if replica is None:
            replica = Replica(upstream, self.policy)
            self._by_url[upstream.url] = replica
        return replica

    def __len__(self) -> int:
        return len(self._by_url)

    def __bool__(self) -> bool:
        return True  # an empty registry is still a registry (``registry or default`` idioms)

    def __repr__(self) -> str:
        return f"UpstreamRegistry(replicas={len(self._by_url)}, policy={self.policy})"
