"""Compiled routes: host lookup, segment-safe endpoint matching, sticky weighted selection."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.compiled import (
    STICKY_COOKIE,
    STICKY_HEADER,
    STICKY_IP,
    STICKY_NONE,
    CompiledEndpoint,
    CompiledRoute,
    Interner,
    bucket_of,
    compile_record,
)
from routing.errors import RecordError
from routing.models import RouteRecord, decode_record, encode_record, parse_upstream
from routing.store import MemoryRouteStore
from routing.table import RouteTable
from routing.upstreams import UpstreamRegistry

ROOT = Path(__file__).resolve().parents[2]
SPACE = "space-1"


def target(dep: str, weight: int, status: str = "active", port: int = 0) -> dict[str, Any]:
    port = port or 8000 + (zlib.crc32(dep.encode()) % 1000)
    return {
        "deployment_id": dep,
        "weight": weight,
        "status": status,
        "upstreams": [f"http://10.0.0.1:{port}"],
    }


def endpoint(
    prefix: str, targets: list[dict[str, Any]] | None = None, methods: list[str] | None = None
) -> dict[str, Any]:
    ep: dict[str, Any] = {
        "path_prefix": prefix,
        "targets": targets or [target(f"dep{prefix.replace('/', '-')}", 10000)],
    }
    if methods is not None:
        ep["methods"] = methods
    return ep


def record(
    endpoints: list[dict[str, Any]],
    *,
    host: str = "app.example.com",
    version: int = 1,
    space: str = SPACE,
    policy: dict[str, Any] | None = None,
) -> RouteRecord:
    obj: dict[str, Any] = {
        "host": host,
        "version": version,
        "space_id": space,
        "service_id": "svc-1",
        "endpoints": endpoints,
    }
    if policy is not None:
        obj["policy"] = policy
    return decode_record(obj)


def compiled(
    endpoints: list[dict[str, Any]],
    registry: UpstreamRegistry | None = None,
    **kwargs: Any,
) -> CompiledRoute:
    return compile_record(
        record(endpoints, **kwargs), registry if registry is not None else UpstreamRegistry()
    )


def canary_route(
    canary_weight: int, registry: UpstreamRegistry | None = None, **kwargs: Any
) -> CompiledRoute:
    """One catch-all endpoint: active listed first in the record, canary second."""
    return compiled(
        [
            endpoint(
                "/",
                [
                    target("stable", 10000 - canary_weight, "active"),
                    target("canary", canary_weight, "canary"),
                ],
            )
        ],
        registry,
        **kwargs,
    )


def random_keys(n: int, seed: int = 1234) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(12) for _ in range(n)]


def key_with_bucket(space: str, lo: int, hi: int) -> bytes:
    """Some sticky key whose bucket falls in [lo, hi)."""
    for i in range(1_000_000):
        key = f"user-{i}".encode()
        if lo <= bucket_of(space, key) < hi:
            return key
    raise AssertionError("no key found")


# ------------------------------------------------------------------------- host lookup


def table_with(*routes: CompiledRoute) -> RouteTable:
    table = RouteTable(MemoryRouteStore())
    for r in routes:
        table.routes[r.host.encode()] = r
    return table


def test_lookup_exact_host_beats_wildcard() -> None:
    exact = compiled([endpoint("/")], host="api.example.com")
    wild = compiled([endpoint("/")], host="*.example.com")
    table = table_with(wild, exact)
    assert table.lookup(b"api.example.com") is exact
    assert table.lookup(b"web.example.com") is wild
    assert table.lookup(b"other.example.com") is wild


def test_lookup_wildcard_is_one_level_and_not_the_apex() -> None:
    wild = compiled([endpoint("/")], host="*.example.com")
    table = table_with(wild)
    assert table.lookup(b"x.example.com") is wild
    assert table.lookup(b"a.b.example.com") is None  # would need *.b.example.com
    assert table.lookup(b"example.com") is None  # a wildcard never covers its apex
    assert table.lookup(b"x.example.org") is None


def test_lookup_deeper_wildcard_used_for_its_own_level() -> None:
    shallow = compiled([endpoint("/")], host="*.example.com")
    deep = compiled([endpoint("/")], host="*.b.example.com")
    table = table_with(shallow, deep)
    assert table.lookup(b"a.b.example.com") is deep
    assert table.lookup(b"b.example.com") is shallow


def test_lookup_no_record() -> None:
    table = table_with(compiled([endpoint("/")], host="api.example.com"))
    assert table.lookup(b"nope.example.com") is None
    assert table.lookup(b"") is None
    assert table_with().lookup(b"api.example.com") is None


# ------------------------------------------------------------------------- endpoint match


def prefix_of(ep: CompiledEndpoint | None) -> str | None:
    return None if ep is None else ep.prefix.decode()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param(b"/api", "/api", id="exact"),
        pytest.param(b"/api/", "/api", id="exact-slash"),
        pytest.param(b"/api/x", "/api", id="below"),
        pytest.param(b"/api/x/y", "/api", id="deep-below"),
        pytest.param(b"/apiary", None, id="not-segment-boundary"),
        pytest.param(b"/api-v2", None, id="not-segment-boundary-hyphen"),
        pytest.param(b"/ap", None, id="shorter"),
        pytest.param(b"/", None, id="root"),
        pytest.param(b"/API", None, id="case-sensitive"),
    ],
)
def test_prefix_matches_at_segment_boundary_only(path: bytes, expected: str | None) -> None:
    route = compiled([endpoint("/api")])
    assert prefix_of(route.match(b"GET", path)) == expected


def test_trailing_slash_of_prefix_is_ignored() -> None:
    route = compiled([endpoint("/api/")])
    assert prefix_of(route.match(b"GET", b"/api")) == "/api"
    assert prefix_of(route.match(b"GET", b"/api/x")) == "/api"
    assert route.match(b"GET", b"/apiary") is None


@pytest.mark.parametrize(
    "path", [b"/", b"/x", b"/apiary", b"/a/b/c", b"/?q", b"//"], ids=lambda p: repr(p)
)
def test_root_prefix_matches_everything(path: bytes) -> None:
    route = compiled([endpoint("/")])
    assert prefix_of(route.match(b"DELETE", path)) == "/"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param(b"/api/v1/users", "/api/v1", id="longest"),
        pytest.param(b"/api/v1", "/api/v1", id="longest-exact"),
        pytest.param(b"/api/v2", "/api", id="middle"),
        pytest.param(b"/api/v10", "/api", id="middle-not-v1"),
        pytest.param(b"/apiary", "/", id="root-fallback"),
        pytest.param(b"/", "/", id="root"),
    ],
)
def test_longest_prefix_wins_regardless_of_record_order(path: bytes, expected: str) -> None:
    route = compiled([endpoint("/"), endpoint("/api"), endpoint("/api/v1")])
    assert prefix_of(route.match(b"GET", path)) == expected
    reordered = compiled([endpoint("/api/v1"), endpoint("/"), endpoint("/api")])
    assert prefix_of(reordered.match(b"GET", path)) == expected


def test_method_filter_falls_through_to_catch_all() -> None:
    route = compiled([endpoint("/api", methods=["POST"]), endpoint("/")])
    assert prefix_of(route.match(b"GET", b"/api/x")) == "/"
    assert prefix_of(route.match(b"POST", b"/api/x")) == "/api"
    assert prefix_of(route.match(b"post", b"/api/x")) == "/"  # methods are case-sensitive


def test_method_filter_without_catch_all_means_no_match() -> None:
    route = compiled([endpoint("/api", methods=["POST", "PUT"])])
    assert route.match(b"GET", b"/api") is None
    assert prefix_of(route.match(b"PUT", b"/api")) == "/api"


def test_same_prefix_split_by_method() -> None:
    route = compiled(
        [
            endpoint("/api", [target("reads", 10000)], methods=["GET", "HEAD"]),
            endpoint("/api", [target("writes", 10000)], methods=["POST"]),
        ]
    )
    get = route.match(b"GET", b"/api/x")
    post = route.match(b"POST", b"/api/x")
    assert get is not None and post is not None
    assert route.select(get, b"k").deployment_id == "reads"
    assert route.select(post, b"k").deployment_id == "writes"
    assert route.match(b"DELETE", b"/api/x") is None


def test_no_endpoint_matches_returns_none() -> None:
    route = compiled([endpoint("/api"), endpoint("/static")])
    assert route.match(b"GET", b"/") is None
    assert route.match(b"GET", b"/other") is None


# ------------------------------------------------------------------------- buckets


def test_bucket_of_is_crc32_of_space_colon_key() -> None:
    for key in [*random_keys(500), b"", b"user-1", "ü".encode()]:
        expected = zlib.crc32(SPACE.encode() + b":" + key) % 10000
        assert bucket_of(SPACE, key) == expected


def test_bucket_known_answers() -> None:
    # Pinned values: a change here moves every tenant's users between deployments.
    assert zlib.crc32(b"123456789") == 0xCBF43926  # the standard CRC-32 check value
    assert bucket_of("space-1", b"user-42") == zlib.crc32(b"space-1:user-42") % 10000
    assert bucket_of("space-1", b"user-42") == 9703
    assert bucket_of("space-2", b"user-42") == 50
    assert bucket_of("s", b"10.0.0.1") == 8379


@settings(max_examples=200, deadline=None)
@given(
    space=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", fullmatch=True),
    key=st.binary(max_size=64),
)
def test_route_bucket_matches_bucket_of(space: str, key: bytes) -> None:
    route = canary_route(2000, space=space)
    assert route.bucket(key) == bucket_of(space, key)
    assert route.bucket(key) == zlib.crc32(f"{space}:".encode() + key) % 10000
    assert 0 <= route.bucket(key) < 10000


_CHILD = """
import json, sys
from routing.compiled import bucket_of, compile_record
from routing.models import decode_record
from routing.upstreams import UpstreamRegistry
req = json.load(sys.stdin)
keys = [bytes.fromhex(k) for k in req["keys"]]
route = compile_record(decode_record(req["record"]), UpstreamRegistry())
ep = route.match(b"GET", b"/")
json.dump(
    {
        "buckets": [bucket_of(req["space"], k) for k in keys],
        "route_buckets": [route.bucket(k) for k in keys],
        "picks": [route.select(ep, k).deployment_id for k in keys],
        "hash": hash("probe"),
    },
    sys.stdout,
)
"""


def _child(seed: str, request: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_buckets_deterministic_across_processes() -> None:
    keys = [*random_keys(300, seed=99), b"10.0.0.1", b"user-42", b""]
    rec_obj: dict[str, Any] = {
        "host": "app.example.com",
        "version": 1,
        "space_id": SPACE,
        "service_id": "svc-1",
        "endpoints": [endpoint("/", [target("stable", 7000), target("canary", 3000, "canary")])],
    }
    request = {"keys": [k.hex() for k in keys], "space": SPACE, "record": rec_obj}
    one = _child("1", request)
    two = _child("4242", request)
    assert one["hash"] != two["hash"]  # the salts really differ, so hash() would disagree

    route = compile_record(decode_record(rec_obj), UpstreamRegistry())
    ep = route.match(b"GET", b"/")
    assert ep is not None
    here = [bucket_of(SPACE, k) for k in keys]
    assert here == [zlib.crc32(f"{SPACE}:".encode() + k) % 10000 for k in keys]
    picks = [route.select(ep, k).deployment_id for k in keys]
    for child in (one, two):
        assert child["buckets"] == here
        assert child["route_buckets"] == here
        assert child["picks"] == picks
    assert set(picks) == {"stable", "canary"}


# ------------------------------------------------------------------------- selection


@pytest.mark.parametrize("canary_bp", [100, 2000, 5000, 9000], ids=lambda w: f"{w}bp")
def test_bucket_distribution_tracks_weight(canary_bp: int) -> None:
    route = canary_route(canary_bp)
    ep = route.match(b"GET", b"/")
    assert ep is not None
    keys = random_keys(100_000, seed=canary_bp)
    hits = sum(1 for k in keys if route.select(ep, k).deployment_id == "canary")
    share = hits / len(keys)
    assert abs(share - canary_bp / 10000) <= 0.005, share


def test_canary_laid_out_first_then_rollback_then_active() -> None:
    route = compiled(
        [
            endpoint(
                "/",
                [
                    target("stable", 7000, "active"),
                    target("old", 1000, "rollback"),
                    target("canary", 2000, "canary"),
                ],
            )
        ]
    )
    (ep,) = route.endpoints
    assert [t.deployment_id for t in ep.layout] == ["canary", "old", "stable"]
    assert ep.bounds == (2000, 3000, 10000)
    assert ep.pick(0).deployment_id == "canary"
    assert ep.pick(1999).deployment_id == "canary"
    assert ep.pick(2000).deployment_id == "old"
    assert ep.pick(2999).deployment_id == "old"
    assert ep.pick(3000).deployment_id == "stable"
    assert ep.pick(9999).deployment_id == "stable"


def test_low_buckets_go_to_canary() -> None:
    route = canary_route(2000)
    ep = route.match(b"GET", b"/")
    assert ep is not None
    for _ in range(3):
        low = key_with_bucket(SPACE, 0, 2000)
        high = key_with_bucket(SPACE, 2000, 10000)
        assert route.select(ep, low).deployment_id == "canary"
        assert route.select(ep, high).deployment_id == "stable"
    for key in random_keys(2000):
        expected = "canary" if bucket_of(SPACE, key) < 2000 else "stable"
        assert route.select(ep, key).deployment_id == expected


def test_selection_is_sticky_for_a_key() -> None:
    route = canary_route(5000)
    ep = route.match(b"GET", b"/")
    assert ep is not None
    for key in random_keys(200):
        first = route.select(ep, key)
        assert all(route.select(ep, key) is first for _ in range(5))


def test_weight_zero_target_never_selected_by_bucket() -> None:
    route = compiled(
        [endpoint("/", [target("stable", 10000), target("dark", 0, "canary")])],
        policy={"allow_override": True},
    )
    ep = route.match(b"GET", b"/")
    assert ep is not None
    assert [t.deployment_id for t in ep.layout] == ["stable"]
    assert ep.single is not None and ep.single.deployment_id == "stable"
    assert {route.select(ep, k).deployment_id for k in random_keys(5000)} == {"stable"}
    rng = random.Random(5)
    assert {route.select(ep, None, rng=rng).deployment_id for _ in range(1000)} == {"stable"}
    # ...but an allowed override can still pin it (testing a dark deployment).
    assert route.select(ep, b"k", override=b"dark").deployment_id == "dark"


def test_weight_zero_in_the_middle_of_the_layout_is_skipped() -> None:
    route = compiled(
        [
            endpoint(
                "/",
                [
                    target("stable", 6000),
                    target("old", 0, "rollback"),
                    target("canary", 4000, "canary"),
                ],
            )
        ]
    )
    (ep,) = route.endpoints
    assert [t.deployment_id for t in ep.layout] == ["canary", "stable"]
    assert ep.bounds == (4000, 10000)
    assert "old" not in {route.select(ep, k).deployment_id for k in random_keys(5000)}


def test_full_canary_takes_everything() -> None:
    route = canary_route(10000)
    ep = route.match(b"GET", b"/")
    assert ep is not None
    assert {route.select(ep, k).deployment_id for k in random_keys(2000)} == {"canary"}


WEIGHT_STEPS = (100, 500, 2500, 5000, 10000)


@settings(max_examples=40, deadline=None)
@given(keys=st.lists(st.binary(min_size=0, max_size=24), min_size=1, max_size=300, unique=True))
def test_growing_canary_only_moves_keys_stable_to_canary(keys: list[bytes]) -> None:
    registry = UpstreamRegistry()
    previous: dict[bytes, str] | None = None
    prev_weight = 0
    for weight in WEIGHT_STEPS:
        route = canary_route(weight, registry)
        ep = route.match(b"GET", b"/")
        assert ep is not None
        now = {k: route.select(ep, k).deployment_id for k in keys}
        for k, dep in now.items():
            assert dep == ("canary" if bucket_of(SPACE, k) < weight else "stable")
        if previous is not None:
            for k in keys:
                if previous[k] == "canary":
                    assert now[k] == "canary", "a key moved back from canary to stable"
                moved = previous[k] != now[k]
                assert moved == (prev_weight <= bucket_of(SPACE, k) < weight)
        previous, prev_weight = now, weight
    assert previous is not None
    assert set(previous.values()) == {"canary"}


def test_growing_canary_with_concrete_keys_ratchets() -> None:
    keys = random_keys(20_000, seed=7)
    owners: list[set[bytes]] = []
    for weight in WEIGHT_STEPS:
        route = canary_route(weight)
        ep = route.match(b"GET", b"/")
        assert ep is not None
        owners.append({k for k in keys if route.select(ep, k).deployment_id == "canary"})
    for smaller, larger in itertools.pairwise(owners):
        assert smaller < larger  # strictly growing, and nobody leaves the canary
    assert owners[-1] == set(keys)


# ------------------------------------------------------------------------- override


def _override_route(allow: bool) -> tuple[CompiledRoute, CompiledEndpoint, bytes]:
    route = compiled(
        [
            endpoint("/", [target("stable", 9000), target("canary", 1000, "canary")]),
            endpoint("/other", [target("elsewhere", 10000)]),
        ],
        policy={"allow_override": allow},
    )
    ep = route.match(b"GET", b"/")
    assert ep is not None and ep.prefix == b"/"
    key = key_with_bucket(SPACE, 1000, 10000)  # the bucket alone picks "stable"
    assert route.select(ep, key).deployment_id == "stable"
    return route, ep, key


def test_override_honoured_when_allowed() -> None:
    route, ep, key = _override_route(allow=True)
    assert route.allow_override
    assert route.select(ep, key, override=b"canary").deployment_id == "canary"
    assert route.select(ep, key, override=b"stable").deployment_id == "stable"
    assert route.select(ep, None, override=b"canary").deployment_id == "canary"


def test_override_ignored_when_not_allowed() -> None:
    route, ep, key = _override_route(allow=False)
    assert not route.allow_override
    assert route.select(ep, key, override=b"canary").deployment_id == "stable"


def test_override_ignored_for_unknown_deployment() -> None:
    route, ep, key = _override_route(allow=True)
    assert route.select(ep, key, override=b"nope").deployment_id == "stable"
    assert route.select(ep, key, override=b"").deployment_id == "stable"
    assert route.select(ep, key, override=b"CANARY").deployment_id == "stable"


def test_override_ignored_for_another_endpoints_deployment() -> None:
    route, ep, key = _override_route(allow=True)
    other = route.match(b"GET", b"/other/x")
    assert other is not None and other.prefix == b"/other"
    assert route.select(other, key, override=b"elsewhere").deployment_id == "elsewhere"
    assert route.select(ep, key, override=b"elsewhere").deployment_id == "stable"
    assert route.select(other, key, override=b"canary").deployment_id == "elsewhere"


# ------------------------------------------------------------------------- sticky kinds


def test_sticky_none_uses_injected_rng() -> None:
    route = canary_route(3000, policy={"sticky": "none"})
    assert route.sticky_kind == STICKY_NONE
    ep = route.match(b"GET", b"/")
    assert ep is not None
    picks = [route.select(ep, None, rng=random.Random(seed)).deployment_id for seed in range(200)]
    expected = [
        "canary" if random.Random(seed).randrange(10000) < 3000 else "stable" for seed in range(200)
    ]
    assert picks == expected
    assert set(picks) == {"canary", "stable"}


def test_sticky_none_same_seed_same_sequence_and_weighted() -> None:
    route = canary_route(3000, policy={"sticky": "none"})
    ep = route.match(b"GET", b"/")
    assert ep is not None
    a, b = random.Random(11), random.Random(11)
    seq_a = [route.select(ep, None, rng=a).deployment_id for _ in range(20_000)]
    seq_b = [route.select(ep, None, rng=b).deployment_id for _ in range(20_000)]
    assert seq_a == seq_b
    share = seq_a.count("canary") / len(seq_a)
    assert abs(share - 0.3) < 0.015


@pytest.mark.parametrize(
    ("sticky", "kind", "name"),
    [
        pytest.param("ip", STICKY_IP, b"", id="ip"),
        pytest.param("none", STICKY_NONE, b"", id="none"),
        pytest.param("header:X-User-Id", STICKY_HEADER, b"x-user-id", id="header"),
        pytest.param("cookie:SessionID", STICKY_COOKIE, b"SessionID", id="cookie"),
    ],
)
def test_sticky_kind_compiled(sticky: str, kind: int, name: bytes) -> None:
    route = canary_route(1000, policy={"sticky": sticky})
    assert route.sticky_kind == kind
    assert route.sticky_name == name


def test_default_sticky_is_ip() -> None:
    assert canary_route(1000).sticky_kind == STICKY_IP


# ------------------------------------------------------------------------- compiled fields


def test_compiled_route_carries_record_fields() -> None:
    rec = record(
        [endpoint("/", [target("stable", 10000)])],
        host="*.example.com",
        version=7,
        policy={"retries": 2},
    )
    route = compile_record(rec, UpstreamRegistry())
    assert route.record == rec  # rebuilt from the compiled form, not kept
    assert route.host == "*.example.com"
    assert route.version == 7
    assert route.blocked is None
    assert route.space_b == SPACE.encode()
    assert route.service_b == b"svc-1"
    assert route.space_seed == zlib.crc32(f"{SPACE}:".encode())
    assert route.policy.retries == 2
    assert not route.allow_override
    (ep,) = route.endpoints
    assert ep.prefix == b"/" and ep.prefix_slash == b"/"
    assert ep.methods is None
    assert ep.single is not None and ep.single.deployment_b == b"stable"


def test_blocked_record_compiles_blocked() -> None:
    obj: dict[str, Any] = {
        "host": "app.example.com",
        "version": 1,
        "space_id": SPACE,
        "service_id": "svc-1",
        "blocked": "payment_required",
        "endpoints": [endpoint("/")],
    }
    route = compile_record(decode_record(obj), UpstreamRegistry())
    assert route.blocked == "payment_required"


def test_endpoint_methods_compiled_to_bytes() -> None:
    route = compiled([endpoint("/api/", methods=["GET", "POST"])])
    (ep,) = route.endpoints
    assert ep.methods == frozenset({b"GET", b"POST"})
    assert ep.prefix == b"/api"
    assert ep.prefix_slash == b"/api/"


# ------------------------------------------------------------------------- compact form, sharing


def _shared_record(host: str, version: int = 1, **kwargs: Any) -> RouteRecord:
    """Two hosts built from this carry equal targets, bounds, policy and replicas."""
    return record(
        [
            endpoint(
                "/",
                [
                    target("stable", 9000, "active", port=9001),
                    target("canary", 1000, "canary", port=9001),
                ],
            ),
            endpoint("/api", [target("stable", 10000, port=9002)], methods=["POST", "GET"]),
        ],
        host=host,
        version=version,
        policy={"retries": 2, "allow_override": True},
        **kwargs,
    )


def test_interner_shares_immutable_parts_between_routes() -> None:
    registry = UpstreamRegistry()
    interner = Interner(registry)
    a = compile_record(_shared_record("a.example.com"), registry, interner)
    b = compile_record(_shared_record("b.example.com"), registry, interner)
    assert a.policy is b.policy and a.space_b is b.space_b  # (ints may be unboxed: no `is`)
    for ea, eb in zip(a.endpoints, b.endpoints, strict=True):
        assert ea is not eb
        assert ea.prefix is eb.prefix and ea.bounds is eb.bounds and ea.methods is eb.methods
        for ta, tb in zip(ea.targets, eb.targets, strict=True):
            assert ta is not tb  # mutable round-robin state is never shared
            assert ta.replicas is tb.replicas
    # One bytes object per deployment id within a record, shared across its endpoints.
    stable_root = a.endpoints[1].target(b"stable")
    stable_api = a.endpoints[0].target(b"stable")
    assert stable_root is not None and stable_api is not None
    assert stable_root.deployment_b is stable_api.deployment_b


def test_routes_sharing_parts_round_robin_independently() -> None:
    registry = UpstreamRegistry()
    interner = Interner(registry)
    objs = []
    for host in ("a.example.com", "b.example.com"):
        t = target("dep", 10000)
        t["upstreams"] = ["http://10.0.0.1:1", "http://10.0.0.2:2", "http://10.0.0.3:3"]
        objs.append(record([endpoint("/", [t])], host=host))
    a, b = (compile_record(r, registry, interner) for r in objs)
    ta, tb = a.endpoints[0].single, b.endpoints[0].single
    assert ta is not None and tb is not None and ta.replicas is tb.replicas
    seq_a = [ta.next_replica(0.0) for _ in range(4)]
    first_b = tb.next_replica(0.0)
    assert [r.url for r in seq_a if r is not None] == [
        "http://10.0.0.1:1",
        "http://10.0.0.2:2",
        "http://10.0.0.3:3",
        "http://10.0.0.1:1",
    ]
    assert first_b is not None and first_b.url == "http://10.0.0.1:1"  # b's own position


def test_interner_of_another_registry_is_not_used() -> None:
    mine, other = UpstreamRegistry(), UpstreamRegistry()
    foreign = Interner(other)
    route = compile_record(_shared_record("a.example.com"), mine, foreign)
    replica = route.endpoints[0].targets[0].replicas[0]
    assert replica is mine.get(parse_upstream(replica.url, "u"))
    assert len(other) == 0


def test_full_interner_starts_over_and_stays_correct() -> None:
    registry = UpstreamRegistry()
    interner = Interner(registry, limit=2)
    routes = [
        compile_record(
            record(
                [endpoint(f"/p{i}", [target(f"d{i}", 10000, port=9000 + i)])],
                host=f"h{i}.example.com",
                space=f"space-{i}",
            ),
            registry,
            interner,
        )
        for i in range(7)
    ]
    for i, route in enumerate(routes):
        assert route.space_b == f"space-{i}".encode()
        (ep,) = route.endpoints
        assert ep.prefix == f"/p{i}".encode()
        assert ep.single is not None and ep.single.replicas[0].port == 9000 + i
    assert "spaces=" in repr(interner)


@settings(max_examples=60, deadline=None)
@given(
    prefixes=st.lists(
        st.sampled_from(["/", "/a", "/api", "/api/v1", "/b/c"]), min_size=1, max_size=4
    ),
    methods=st.lists(st.sampled_from(["GET", "POST", "PUT", "DELETE"]), unique=True),
    statuses=st.lists(st.sampled_from(["active", "canary", "rollback"]), min_size=1, max_size=4),
    zero=st.integers(min_value=0, max_value=3),
    policy=st.sampled_from([None, {"sticky": "header:X-U"}, {"sticky": "cookie:sid"}]),
    blocked=st.sampled_from([None, "payment_required", "suspended"]),
    updated_at=st.integers(min_value=0, max_value=1 << 62),
)
def test_to_record_rebuilds_the_record_exactly(
    prefixes: list[str],
    methods: list[str],
    statuses: list[str],
    zero: int,
    policy: dict[str, Any] | None,
    blocked: str | None,
    updated_at: int,
) -> None:
    """Snapshots are written from compiled routes: record order, zero weights, all of it."""
    eps = []
    for i, prefix in enumerate(prefixes):
        n = len(statuses)
        weights = [0 if j < min(zero, n - 1) else 10000 // n for j in range(n)]
        weights[-1] += 10000 - sum(weights)
        targets = [
            target(f"d{i}-{j}", w, s, port=7000 + j)
            for j, (w, s) in enumerate(zip(weights, statuses, strict=True))
        ]
        # The same prefix twice needs different method filters.
        eps.append(endpoint(prefix, targets, methods=methods[: i + 1] if i else methods))
    obj: dict[str, Any] = {
        "host": "app.example.com",
        "version": 3,
        "space_id": SPACE,
        "service_id": "svc-1",
        "endpoints": eps,
        "blocked": blocked,
        "updated_at": updated_at,
    }
    if policy is not None:
        obj["policy"] = policy
    try:
        rec = decode_record(obj)
    except RecordError:
        return  # a duplicate (prefix, methods) pair: not a record
    route = compile_record(rec, UpstreamRegistry())
    rebuilt = route.to_record()
    assert rebuilt == rec
    assert encode_record(rebuilt) == encode_record(rec)
    assert route.encode() == encode_record(rec)  # what the table writes to its snapshot


async def test_updating_one_host_leaves_a_host_sharing_its_parts_alone() -> None:
    store = MemoryRouteStore()
    await store.replace_all([_shared_record("a.example.com"), _shared_record("b.example.com")])
    table = RouteTable(store, block_ms=20, check_interval=0.05)
    assert await table.start()
    try:
        b_before = table.lookup(b"b.example.com")
        assert b_before is not None
        b_targets = [t for ep in b_before.endpoints for t in ep.targets]
        b_target = b_before.endpoints[1].target(b"stable")
        assert b_target is not None
        b_target.next_replica(0.0)
        rr = b_target.rr
        new_a = record(
            [endpoint("/", [target("other", 10000, port=9100)])],
            host="a.example.com",
            version=2,
        )
        await store.publish(new_a)
        for _ in range(200):
            route = table.lookup(b"a.example.com")
            if route is not None and route.version == 2:
                break
            await asyncio.sleep(0.01)
        a_now = table.lookup(b"a.example.com")
        assert a_now is not None and a_now.record == new_a
        b_now = table.lookup(b"b.example.com")
        assert b_now is b_before
        assert [t for ep in b_now.endpoints for t in ep.targets] == b_targets
        assert b_now.record == _shared_record("b.example.com")
        assert b_target.rr == rr
    finally:
        await table.stop()
