"""Hot-path form of a route record: matching and sticky weighted selection, precomputed once.

A :class:`CompiledRoute` is built when a record is applied to a route table, never per request.
It holds everything the gateway needs as ``bytes`` and small ints:

* endpoints sorted longest prefix first, so the first hit is the longest segment-safe match;
* per endpoint, the targets laid out on [0, 10000) **canary first**, then rollback, then
  active, with cumulative upper bounds for one ``bisect`` per request;
* the CRC32 of ``space_id + ":"`` so a sticky bucket is one ``zlib.crc32(key, seed)`` call:
  ``crc32(space_id:key) == crc32(key, crc32(space_id:))`` (CRC32 chains);
* interned :class:`~routing.upstreams.Replica` objects whose health outlives the record.

Why canary first: when a canary grows from w1 to w2 basis points, exactly the buckets
[w1, w2) change owner, from stable to canary; nobody ever moves back (one-way stickiness).
"""

from __future__ import annotations

import random
import zlib
from bisect import bisect_right
from typing import Final

from routing.hostnames import wildcard_parent
from routing.models import TOTAL_WEIGHT, Endpoint, Policy, RouteRecord, Target
from routing.upstreams import Replica, UpstreamRegistry

STICKY_IP: Final = 0
STICKY_HEADER: Final = 1
STICKY_COOKIE: Final = 2
STICKY_NONE: Final = 3

_LAYOUT_ORDER: Final = {"canary": 0, "rollback": 1, "active": 2}


def bucket_of(space_id: str, key: bytes) -> int:
    """The spec's sticky bucket: ``crc32(space_id + ":" + key) mod 10000``."""
    return zlib.crc32(space_id.encode() + b":" + key) % TOTAL_WEIGHT


class CompiledTarget:
    __slots__ = ("deployment_b", "deployment_id", "replicas", "rr", "status", "weight")

    def __init__(self, target: Target, registry: UpstreamRegistry) -> None:
        self.deployment_id = target.deployment_id
        self.deployment_b = target.deployment_id.encode("ascii")
        self.status = target.status
        self.weight = target.weight
        self.replicas: tuple[Replica, ...] = tuple(registry.get(u) for u in target.upstreams)
        self.rr = 0

    def next_replica(self, now: float, exclude: Replica | None = None) -> Replica | None:
        """Round robin over replicas that are not ejected (and not ``exclude``)."""
        replicas = self.replicas
        n = len(replicas)
        i = self.rr
        for _ in range(n):
            replica = replicas[i % n]
            i += 1
            if replica.ejected_until <= now and replica is not exclude:
                self.rr = i % n
                return replica
        return None

    def __repr__(self) -> str:
        return f"CompiledTarget({self.deployment_id!r}, {self.status}, weight={self.weight})"


class CompiledEndpoint:
    __slots__ = ("bounds", "by_id", "layout", "methods", "prefix", "prefix_slash", "single")

    def __init__(self, endpoint: Endpoint, registry: UpstreamRegistry) -> None:
        self.prefix = endpoint.path_prefix.encode("utf-8")
        # "/api" matches "/api" and "/api/..." only; "/" matches everything.
        self.prefix_slash = self.prefix if self.prefix == b"/" else self.prefix + b"/"
        self.methods: frozenset[bytes] | None = (
            frozenset(m.encode("ascii") for m in endpoint.methods) if endpoint.methods else None
        )
        targets = [CompiledTarget(t, registry) for t in endpoint.targets]
        self.by_id: dict[bytes, CompiledTarget] = {t.deployment_b: t for t in targets}
        # Stable sort keeps the record's order within one status.
        self.layout: tuple[CompiledTarget, ...] = tuple(
            sorted((t for t in targets if t.weight > 0), key=lambda t: _LAYOUT_ORDER[t.status])
        )
        bounds: list[int] = []
        acc = 0
        for t in self.layout:
            acc += t.weight
            bounds.append(acc)
        self.bounds = bounds
        self.single: CompiledTarget | None = self.layout[0] if len(self.layout) == 1 else None

    def matches(self, method: bytes, path: bytes) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return path == self.prefix or path.startswith(self.prefix_slash)

    def pick(self, bucket: int) -> CompiledTarget:
        """The target owning ``bucket`` (0..9999)."""
        single = self.single
        if single is not None:
            return single
        return self.layout[bisect_right(self.bounds, bucket)]

    def __repr__(self) -> str:
        return f"CompiledEndpoint({self.prefix!r}, targets={list(self.layout)})"


class CompiledRoute:
    """One applied route record in the form the gateway dispatches from."""

    __slots__ = (
        "allow_override",
        "blocked",
        "endpoints",
        "host",
        "policy",
        "record",
        "service_b",
        "space_b",
        "space_seed",
        "sticky_kind",
        "sticky_name",
        "version",
    )

    def __init__(self, record: RouteRecord, registry: UpstreamRegistry) -> None:
        self.record = record
        self.host = record.host
        self.version = record.version
        self.blocked = record.blocked
        self.policy: Policy = record.policy
        self.space_b = record.space_id.encode("ascii")
        self.service_b = record.service_id.encode("ascii")
        self.space_seed = zlib.crc32(self.space_b + b":")
        self.allow_override = record.policy.allow_override
        eps = [CompiledEndpoint(e, registry) for e in record.endpoints]
        # Longest prefix first; Python's sort is stable so equal prefixes keep record order.
        eps.sort(key=lambda e: len(e.prefix), reverse=True)
        self.endpoints: tuple[CompiledEndpoint, ...] = tuple(eps)
        sticky = record.policy.sticky
        if sticky == "ip":
            self.sticky_kind, self.sticky_name = STICKY_IP, b""
        elif sticky == "none":
            self.sticky_kind, self.sticky_name = STICKY_NONE, b""
        elif sticky.startswith("header:"):
            self.sticky_kind, self.sticky_name = STICKY_HEADER, sticky[7:].lower().encode()
        else:
            self.sticky_kind, self.sticky_name = STICKY_COOKIE, sticky[7:].encode()

    def match(self, method: bytes, path: bytes) -> CompiledEndpoint | None:
        """Longest segment-safe prefix whose method filter admits ``method``."""
        for ep in self.endpoints:
            if ep.matches(method, path):
                return ep
        return None

    def bucket(self, key: bytes) -> int:
        return zlib.crc32(key, self.space_seed) % TOTAL_WEIGHT

    def select(
        self,
        endpoint: CompiledEndpoint,
        key: bytes | None,
        override: bytes | None = None,
        rng: random.Random | None = None,
    ) -> CompiledTarget:
        """Choose a target: override (if allowed and known), else sticky bucket, else random.

        ``key`` is the sticky key the front-end extracted per ``sticky_kind``; ``None`` means
        per-request random (``sticky: none``, or no key available).
        """
        if override is not None and self.allow_override:
            pinned = endpoint.by_id.get(override)
            if pinned is not None:
                return pinned
        if endpoint.single is not None:
            return endpoint.single
        if key is None:
            bucket = (rng or random).randrange(TOTAL_WEIGHT)
        else:
            bucket = zlib.crc32(key, self.space_seed) % TOTAL_WEIGHT
        return endpoint.layout[bisect_right(endpoint.bounds, bucket)]

    def __repr__(self) -> str:
        return f"CompiledRoute({self.host!r}, v{self.version}, endpoints={len(self.endpoints)})"


def compile_record(record: RouteRecord, registry: UpstreamRegistry) -> CompiledRoute:
    return CompiledRoute(record, registry)


def find_route(routes: dict[bytes, CompiledRoute], host: bytes) -> CompiledRoute | None:
    """Exact host first, then the wildcard of its parent domain; nothing further.

    A module function (compiled) so the gateway's hot path does not pay for a method call into
    the interpreted :class:`routing.table.RouteTable`."""
    route = routes.get(host)
    if route is None:
        parent = wildcard_parent(host)
        if parent is not None:
            route = routes.get(parent)
    return route
