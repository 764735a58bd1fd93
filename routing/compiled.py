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

Memory (a table may hold a million of these): the decoded :class:`RouteRecord` is *not* kept.
A compiled route keeps only what dispatch needs plus the few fields a snapshot needs to rebuild
the record exactly (:meth:`CompiledRoute.to_record`: record order of endpoints, targets and
methods, ``updated_at``). Immutable values that repeat across records (space ids, policies,
method sets, weight bounds, path prefixes, replica tuples) are shared through an
:class:`Interner`; every mutable thing (a target's round-robin position) stays per route.
"""

from __future__ import annotations

import random
import zlib
from bisect import bisect_right
from typing import Any, Final

import orjson

from routing.models import (
    BLOCK_REASONS,
    STATUSES,
    TOTAL_WEIGHT,
    Endpoint,
    Policy,
    RouteRecord,
    Target,
    Upstream,
    policy_to_obj,
)
from routing.upstreams import Replica, UpstreamRegistry

STICKY_IP: Final = 0
STICKY_HEADER: Final = 1
STICKY_COOKIE: Final = 2
STICKY_NONE: Final = 3

_LAYOUT_ORDER: Final = {"canary": 0, "rollback": 1, "active": 2}
# The one str object per status / block reason, so a million targets share three strings.
_STATUS: Final[dict[str, str]] = {s: s for s in STATUSES}
_BLOCKED: Final[dict[str, str]] = {b: b for b in BLOCK_REASONS}
INTERN_LIMIT: Final = 1 << 16


def _inverse(positions: list[int]) -> tuple[int, ...]:
    """``where[i]`` = the sorted position of the i-th item in record order."""
    where = [0] * len(positions)
    for pos, i in enumerate(positions):
        where[i] = pos
    return tuple(where)


def bucket_of(space_id: str, key: bytes) -> int:
    """The spec's sticky bucket: ``crc32(space_id + ":" + key) mod 10000``."""
    return zlib.crc32(space_id.encode() + b":" + key) % TOTAL_WEIGHT


class Interner:
    """Shares equal immutable values between compiled routes (pure de-duplication).

    Each kind is a plain dict capped at ``limit`` entries; a full dict is simply emptied, which
    only stops sharing for values seen before (what was handed out stays valid). Replica tuples
    are interned per :class:`UpstreamRegistry`, so an interner serves exactly one registry.
    A route table starts a fresh interner with every full sync, so nothing outlives the table
    generation that used it for long (a replica referenced only from here lingers until then).
    """

    __slots__ = (
        "_bounds",
        "_bytes",
        "_methods",
        "_order",
        "_policies",
        "_replicas",
        "_spaces",
        "_weights",
        "limit",
        "registry",
    )

    def __init__(self, registry: UpstreamRegistry, limit: int = INTERN_LIMIT) -> None:
        self.registry = registry
        self.limit = limit
        self._bytes: dict[bytes, bytes] = {}
        self._bounds: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._order: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._methods: dict[tuple[str, ...], tuple[tuple[str, ...], frozenset[bytes]]] = {}
        self._policies: dict[Policy, tuple[Policy, int, bytes]] = {}
        self._spaces: dict[str, tuple[bytes, int]] = {}
        self._replicas: dict[tuple[str, ...], tuple[Replica, ...]] = {}
        self._weights: dict[int, int] = {}

    def bytes_(self, value: bytes) -> bytes:
        hit = self._bytes.get(value)
        if hit is not None:
            return hit
        if len(self._bytes) >= self.limit:
            self._bytes.clear()
        self._bytes[value] = value
        return value

    def bounds(self, value: tuple[int, ...]) -> tuple[int, ...]:
        hit = self._bounds.get(value)
        if hit is not None:
            return hit
        if len(self._bounds) >= self.limit:
            self._bounds.clear()
        self._bounds[value] = value
        return value

    def order(self, value: tuple[int, ...]) -> tuple[int, ...] | None:
        """A permutation back to record order; ``None`` for the identity (the common case)."""
        if value == tuple(range(len(value))):
            return None
        hit = self._order.get(value)
        if hit is not None:
            return hit
        if len(self._order) >= self.limit:
            self._order.clear()
        self._order[value] = value
        return value

    def weight(self, value: int) -> int:
        hit = self._weights.get(value)
        if hit is not None:
            return hit
        if len(self._weights) >= self.limit:
            self._weights.clear()
        self._weights[value] = value  # 0..10000 in a valid record
        return value

    def methods(self, names: tuple[str, ...]) -> tuple[tuple[str, ...], frozenset[bytes]]:
        hit = self._methods.get(names)
        if hit is not None:
            return hit
        if len(self._methods) >= self.limit:
            self._methods.clear()
        value = (names, frozenset(m.encode("ascii") for m in names))
        self._methods[names] = value
        return value

    def policy(self, policy: Policy) -> tuple[Policy, int, bytes]:
        """The shared equal policy, with its sticky kind and name."""
        hit = self._policies.get(policy)
        if hit is not None:
            return hit
        if len(self._policies) >= self.limit:
            self._policies.clear()
        sticky = policy.sticky
        if sticky == "ip":
            value = (policy, STICKY_IP, b"")
        elif sticky == "none":
            value = (policy, STICKY_NONE, b"")
        elif sticky.startswith("header:"):
            value = (policy, STICKY_HEADER, sticky[7:].lower().encode())
        else:
            value = (policy, STICKY_COOKIE, sticky[7:].encode())
        self._policies[policy] = value
        return value

    def space(self, space_id: str) -> tuple[bytes, int]:
        """``(space_id as bytes, crc32(space_id + ":"))``."""
        hit = self._spaces.get(space_id)
        if hit is not None:
            return hit
        if len(self._spaces) >= self.limit:
            self._spaces.clear()
        space_b = space_id.encode("ascii")
        value = (space_b, zlib.crc32(space_b + b":"))
        self._spaces[space_id] = value
        return value

    def replicas(self, upstreams: tuple[Upstream, ...]) -> tuple[Replica, ...]:
        key = tuple(u.url for u in upstreams)
        hit = self._replicas.get(key)
        if hit is not None:
            return hit
        if len(self._replicas) >= self.limit:
            self._replicas.clear()
        registry = self.registry
        value = tuple(registry.get(u) for u in upstreams)
        self._replicas[key] = value
        return value

    def __repr__(self) -> str:
        sizes = (
            len(self._bytes),
            len(self._bounds),
            len(self._methods),
            len(self._policies),
            len(self._spaces),
            len(self._replicas),
        )
        return f"Interner(bytes={sizes[0]}, bounds={sizes[1]}, methods={sizes[2]}, policies={sizes[3]}, spaces={sizes[4]}, replicas={sizes[5]})"


class CompiledTarget:
    """One deployment of one endpoint; owns its round-robin position (never shared).

    ``counted`` belongs to the gateway's counters (:meth:`gateway.counters.Counters.record`):
    the row this target's requests are being counted in, so counting one does not hash and
    look up a (space, service, deployment) key per request. Nothing else reads it."""

    __slots__ = ("counted", "deployment_b", "replicas", "rr", "status", "weight")

    def __init__(
        self, deployment_b: bytes, status: str, weight: int, replicas: tuple[Replica, ...]
    ) -> None:
        self.deployment_b = deployment_b
        self.status = status
        self.weight = weight
        self.replicas = replicas
        self.rr = 0
        self.counted: object = None

    @property
    def deployment_id(self) -> str:
        return self.deployment_b.decode("ascii")

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

    def to_target(self) -> Target:
        upstreams = tuple(
            Upstream(url=r.url, host=r.host, port=r.port, base_path=r.base_path.decode("ascii"))
            for r in self.replicas
        )
        return Target(
            deployment_id=self.deployment_id,
            weight=self.weight,
            status=self.status,  # type: ignore[arg-type]
            upstreams=upstreams,
        )

    def to_obj(self) -> dict[str, Any]:
        return {
            "deployment_id": self.deployment_id,
            "weight": self.weight,
            "status": self.status,
            "upstreams": [r.url for r in self.replicas],
        }

    def __repr__(self) -> str:
        return f"CompiledTarget({self.deployment_id!r}, {self.status}, weight={self.weight})"


class CompiledEndpoint:
    """One endpoint: prefix/method filter and the weighted layout of its targets.

    ``targets`` holds every target, the weighted ones first in layout order (canary, rollback,
    active), then the zero-weight ones (reachable only by override); ``layout`` is the weighted
    prefix of it and ``bounds`` their cumulative weights. ``order`` maps record order to
    positions in ``targets`` (``None`` when they are the same).
    """

    __slots__ = (
        "bounds",
        "layout",
        "method_names",
        "methods",
        "order",
        "prefix",
        "prefix_slash",
        "single",
        "targets",
    )

    def __init__(
        self,
        endpoint: Endpoint,
        registry: UpstreamRegistry,
        interner: Interner | None = None,
        deployments: dict[str, bytes] | None = None,
    ) -> None:
        if interner is None:
            interner = Interner(registry)
        if deployments is None:
            deployments = {}
        prefix = interner.bytes_(endpoint.path_prefix.encode("utf-8"))
        self.prefix = prefix
        # "/api" matches "/api" and "/api/..." only; "/" matches everything.
        self.prefix_slash = prefix if prefix == b"/" else interner.bytes_(prefix + b"/")
        if endpoint.methods:
            names, methods = interner.methods(endpoint.methods)
            self.method_names: tuple[str, ...] = names
            self.methods: frozenset[bytes] | None = methods
        else:
            self.method_names = ()
            self.methods = None
        compiled: list[CompiledTarget] = []
        for t in endpoint.targets:
            dep = deployments.get(t.deployment_id)
            if dep is None:  # one bytes object per deployment id within a record
                dep = t.deployment_id.encode("ascii")
                deployments[t.deployment_id] = dep
            compiled.append(
                CompiledTarget(
                    dep,
                    _STATUS[t.status],
                    interner.weight(t.weight),
                    interner.replicas(t.upstreams),
                )
            )
        if len(compiled) == 1:
            ordered: tuple[CompiledTarget, ...] = (compiled[0],)
            self.order: tuple[int, ...] | None = None
        else:
            # Stable sorts keep the record's order within one status.
            positions = sorted(
                range(len(compiled)),
                key=lambda i: (compiled[i].weight == 0, _LAYOUT_ORDER[compiled[i].status]),
            )
            ordered = tuple(compiled[i] for i in positions)
            self.order = interner.order(_inverse(positions))
        self.targets: tuple[CompiledTarget, ...] = ordered
        bounds: list[int] = []
        acc = 0
        for ct in ordered:
            if ct.weight == 0:
                break
            acc += ct.weight
            bounds.append(acc)
        self.bounds: tuple[int, ...] = interner.bounds(tuple(bounds))
        self.layout: tuple[CompiledTarget, ...] = (
            ordered if len(bounds) == len(ordered) else ordered[: len(bounds)]
        )
        self.single: CompiledTarget | None = ordered[0] if len(bounds) == 1 else None

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

    def target(self, deployment_b: bytes) -> CompiledTarget | None:
        """The target (of any weight) for a deployment id, or ``None``."""
        for t in self.targets:
            if t.deployment_b == deployment_b:
                return t
        return None

    def to_endpoint(self) -> Endpoint:
        ordered = self.targets
        order = self.order
        targets = ordered if order is None else tuple(ordered[i] for i in order)
        return Endpoint(
            path_prefix=self.prefix.decode("utf-8"),
            methods=self.method_names,
            targets=tuple(t.to_target() for t in targets),
        )

    def to_obj(self) -> dict[str, Any]:
        ordered = self.targets
        order = self.order
        targets = ordered if order is None else tuple(ordered[i] for i in order)
        return {
            "path_prefix": self.prefix.decode("utf-8"),
            "methods": list(self.method_names),
            "targets": [t.to_obj() for t in targets],
        }

    def __repr__(self) -> str:
        return f"CompiledEndpoint({self.prefix!r}, targets={list(self.layout)})"


class CompiledRoute:
    """One applied route record in the form the gateway dispatches from."""

    __slots__ = (
        "allow_override",
        "blocked",
        "endpoints",
        "host_b",
        "order",
        "policy",
        "service_b",
        "space_b",
        "space_seed",
        "sticky_kind",
        "sticky_name",
        "updated_at",
        "upgrades",
        "version",
    )

    def __init__(
        self,
        record: RouteRecord,
        registry: UpstreamRegistry,
        interner: Interner | None = None,
    ) -> None:
        if interner is None or interner.registry is not registry:
            interner = Interner(registry)
        self.host_b = record.host.encode("ascii")
        self.version = record.version
        self.updated_at = record.updated_at
        blocked = record.blocked
        self.blocked: str | None = None if blocked is None else _BLOCKED.get(blocked, blocked)
        policy, kind, name = interner.policy(record.policy)
        self.policy: Policy = policy
        self.sticky_kind = kind
        self.sticky_name = name
        self.allow_override = policy.allow_override
        self.upgrades = frozenset(name.encode("ascii") for name in policy.upgrades)
        self.space_b, self.space_seed = interner.space(record.space_id)
        self.service_b = record.service_id.encode("ascii")
        deployments: dict[str, bytes] = {}
        eps = [CompiledEndpoint(e, registry, interner, deployments) for e in record.endpoints]
        if len(eps) == 1:
            self.endpoints: tuple[CompiledEndpoint, ...] = (eps[0],)
            self.order: tuple[int, ...] | None = None
        else:
            # Longest prefix first; the sort is stable so equal prefixes keep record order.
            positions = sorted(range(len(eps)), key=lambda i: len(eps[i].prefix), reverse=True)
            self.endpoints = tuple(eps[i] for i in positions)
            self.order = interner.order(_inverse(positions))

    @property
    def host(self) -> str:
        return self.host_b.decode("ascii")

    @property
    def space_id(self) -> str:
        return self.space_b.decode("ascii")

    @property
    def service_id(self) -> str:
        return self.service_b.decode("ascii")

    @property
    def record(self) -> RouteRecord:
        """The route record this was compiled from (rebuilt: equal, not the same object)."""
        return self.to_record()

    def to_record(self) -> RouteRecord:
        eps = self.endpoints
        order = self.order
        if order is not None:
            eps = tuple(eps[i] for i in order)
        return RouteRecord(
            host=self.host,
            version=self.version,
            space_id=self.space_id,
            service_id=self.service_id,
            endpoints=tuple(e.to_endpoint() for e in eps),
            policy=self.policy,
            blocked=self.blocked,
            updated_at=self.updated_at,
        )

    def to_obj(self) -> dict[str, Any]:
        """:func:`routing.models.record_to_obj` of :meth:`to_record`, without building it."""
        eps = self.endpoints
        order = self.order
        if order is not None:
            eps = tuple(eps[i] for i in order)
        return {
            "host": self.host,
            "version": self.version,
            "space_id": self.space_id,
            "service_id": self.service_id,
            "blocked": self.blocked,
            "updated_at": self.updated_at,
            "policy": policy_to_obj(self.policy),
            "endpoints": [e.to_obj() for e in eps],
        }

    def encode(self) -> bytes:
        """The record's canonical bytes, as :func:`routing.models.encode_record` writes them."""
        return orjson.dumps(self.to_obj(), option=orjson.OPT_SORT_KEYS)

    def allowed_upgrade(self, upgrade: bytes) -> bytes | None:
        """The protocols of an ``Upgrade`` request header this route may switch to (in the
        client's order, compared by protocol name), or None: then the request goes up as an
        ordinary one, without its ``Upgrade``."""
        kept = [
            token
            for token in (t.strip() for t in upgrade.split(b","))
            if token.split(b"/", 1)[0].lower() in self.upgrades
        ]
        return b", ".join(kept) if kept else None

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
            pinned = endpoint.target(override)
            if pinned is not None:
                return pinned
        if endpoint.single is not None:
            return endpoint.single  # no bucket needed
        bucket = (rng or random).randrange(TOTAL_WEIGHT) if key is None else self.bucket(key)
        return endpoint.pick(bucket)

    def __repr__(self) -> str:
        return f"CompiledRoute({self.host!r}, v{self.version}, endpoints={len(self.endpoints)})"


def compile_record(
    record: RouteRecord, registry: UpstreamRegistry, interner: Interner | None = None
) -> CompiledRoute:
    return CompiledRoute(record, registry, interner)
