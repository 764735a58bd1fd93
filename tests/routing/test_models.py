"""Route record model: strict decoding (one test per malformed input) and canonical encoding."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.errors import RecordError, RoutingError
from routing.models import (
    DEFAULT_POLICY,
    Policy,
    RouteRecord,
    Upstream,
    decode_record,
    encode_record,
    parse_upstream,
    policy_from_obj,
    record_to_obj,
)

UP = "http://10.0.0.1:8080"


def minimal() -> dict[str, Any]:
    """The smallest valid record: one endpoint, one target, one replica, no policy."""
    return {
        "host": "app.example.com",
        "version": 1,
        "space_id": "space-1",
        "service_id": "svc-1",
        "endpoints": [
            {
                "path_prefix": "/",
                "targets": [
                    {
                        "deployment_id": "dep-1",
                        "weight": 10000,
                        "status": "active",
                        "upstreams": [UP],
                    }
                ],
            }
        ],
    }


def rich() -> dict[str, Any]:
    """A record that uses every field, with non-default values wherever possible."""
    return {
        "host": "*.tenants.example.com",
        "version": 42,
        "space_id": "space_1.a:b",
        "service_id": "svc-9",
        "blocked": "suspended",
        "updated_at": 1_700_000_000_123,
        "policy": {
            "connect_timeout_ms": 500,
            "read_timeout_ms": 12000,
            "max_body_bytes": 1024,
            "retries": 3,
            "sticky": "header:X-User",
            "allow_override": True,
        },
        "endpoints": [
            {
                "path_prefix": "/api/",
                "methods": ["POST", "GET"],
                "targets": [
                    {
                        "deployment_id": "dep-stable",
                        "weight": 7500,
                        "status": "active",
                        "upstreams": ["http://10.0.0.1:8080", "http://[::1]:9000/base/"],
                    },
                    {
                        "deployment_id": "dep-canary",
                        "weight": 2000,
                        "status": "canary",
                        "upstreams": ["http://Canary.Internal:80/v2"],
                    },
                    {
                        "deployment_id": "dep-old",
                        "weight": 500,
                        "status": "rollback",
                        "upstreams": ["http://old.internal:81"],
                    },
                ],
            },
            {
                "path_prefix": "/",
                "methods": [],
                "targets": [
                    {
                        "deployment_id": "dep-web",
                        "weight": 10000,
                        "status": "active",
                        "upstreams": ["http://web.internal:3000"],
                    }
                ],
            },
        ],
    }


def reverse_keys(value: Any) -> Any:
    """The same JSON value with every object's keys in reverse order."""
    if isinstance(value, dict):
        return {k: reverse_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reverse_keys(v) for v in value]
    return value


# ------------------------------------------------------------------------- valid records


def test_minimal_record_decodes_with_defaults() -> None:
    rec = decode_record(minimal())
    assert rec.host == "app.example.com"
    assert rec.version == 1
    assert rec.space_id == "space-1"
    assert rec.service_id == "svc-1"
    assert rec.blocked is None
    assert rec.updated_at == 0
    assert rec.policy == DEFAULT_POLICY
    assert rec.policy == Policy(
        connect_timeout_ms=2000,
        read_timeout_ms=30000,
        max_body_bytes=25 * 1024 * 1024,
        retries=1,
        sticky="ip",
        allow_override=False,
    )
    (ep,) = rec.endpoints
    assert ep.path_prefix == "/"
    assert ep.methods == ()
    (target,) = ep.targets
    assert target.deployment_id == "dep-1"
    assert target.weight == 10000
    assert target.status == "active"
    assert target.upstreams == (Upstream(url=UP, host="10.0.0.1", port=8080, base_path=""),)


def test_rich_record_decodes_every_field() -> None:
    rec = decode_record(rich())
    assert rec.host == "*.tenants.example.com"
    assert rec.version == 42
    assert rec.blocked == "suspended"
    assert rec.updated_at == 1_700_000_000_123
    assert rec.policy == Policy(
        connect_timeout_ms=500,
        read_timeout_ms=12000,
        max_body_bytes=1024,
        retries=3,
        sticky="header:x-user",  # header names are case-insensitive: stored lower-case
        allow_override=True,
    )
    api, root = rec.endpoints
    assert api.path_prefix == "/api"  # trailing slash dropped
    assert api.methods == ("POST", "GET")
    assert [t.deployment_id for t in api.targets] == ["dep-stable", "dep-canary", "dep-old"]
    assert [t.status for t in api.targets] == ["active", "canary", "rollback"]
    assert api.targets[0].upstreams[1] == Upstream(
        url="http://[::1]:9000/base", host="::1", port=9000, base_path="/base"
    )
    assert api.targets[1].upstreams[0] == Upstream(
        url="http://canary.internal:80/v2", host="canary.internal", port=80, base_path="/v2"
    )
    assert root.path_prefix == "/"


@pytest.mark.parametrize("make", [minimal, rich], ids=["minimal", "rich"])
def test_round_trip_decode_encode_decode(make: Any) -> None:
    first = decode_record(make())
    encoded = encode_record(first)
    second = decode_record(encoded)
    assert second == first
    assert encode_record(second) == encoded


@pytest.mark.parametrize("make", [minimal, rich], ids=["minimal", "rich"])
def test_decode_accepts_dict_str_and_bytes_alike(make: Any) -> None:
    obj = make()
    raw = orjson.dumps(obj)
    assert decode_record(obj) == decode_record(raw) == decode_record(raw.decode())


def test_same_record_encodes_to_same_bytes() -> None:
    a = decode_record(rich())
    b = decode_record(rich())
    assert a is not b
    assert encode_record(a) == encode_record(b)
    assert encode_record(a) == encode_record(a)


def test_key_order_of_input_json_is_irrelevant() -> None:
    obj = rich()
    shuffled = reverse_keys(obj)
    assert list(shuffled) != list(obj)  # the test really does reorder
    assert list(shuffled["policy"]) != list(obj["policy"])
    assert encode_record(decode_record(orjson.dumps(shuffled))) == encode_record(
        decode_record(orjson.dumps(obj))
    )


def test_encoding_is_compact_with_sorted_keys_at_every_level() -> None:
    raw = encode_record(decode_record(rich()))
    assert b" " not in raw and b"\n" not in raw

    def check(value: Any) -> None:
        if isinstance(value, dict):
            assert list(value) == sorted(value)
            for v in value.values():
                check(v)
        elif isinstance(value, list):
            for v in value:
                check(v)

    check(orjson.loads(raw))


def test_minimal_record_encodes_to_exact_canonical_bytes() -> None:
    raw = encode_record(decode_record(minimal()))
    assert raw == (
        b'{"blocked":null,"endpoints":[{"methods":[],"path_prefix":"/","targets":'
        b'[{"deployment_id":"dep-1","status":"active","upstreams":["http://10.0.0.1:8080"],'
        b'"weight":10000}]}],"host":"app.example.com","policy":{"allow_override":false,'
        b'"connect_timeout_ms":2000,"max_body_bytes":26214400,"read_timeout_ms":30000,'
        b'"retries":1,"sticky":"ip"},"service_id":"svc-1","space_id":"space-1",'
        b'"updated_at":0,"version":1}'
    )


def test_policy_defaults_are_written_out() -> None:
    obj = orjson.loads(encode_record(decode_record(minimal())))
    assert obj["policy"] == {
        "connect_timeout_ms": 2000,
        "read_timeout_ms": 30000,
        "max_body_bytes": 25 * 1024 * 1024,
        "retries": 1,
        "sticky": "ip",
        "allow_override": False,
    }
    assert obj["blocked"] is None
    assert obj["updated_at"] == 0
    assert obj["endpoints"][0]["methods"] == []


def test_explicit_defaults_and_omitted_defaults_encode_identically() -> None:
    explicit = minimal()
    explicit["policy"] = {
        "connect_timeout_ms": 2000,
        "read_timeout_ms": 30000,
        "max_body_bytes": 25 * 1024 * 1024,
        "retries": 1,
        "sticky": "ip",
        "allow_override": False,
    }
    explicit["blocked"] = None
    explicit["updated_at"] = 0
    explicit["endpoints"][0]["methods"] = []
    assert encode_record(decode_record(explicit)) == encode_record(decode_record(minimal()))


def test_partial_policy_keeps_other_defaults() -> None:
    obj = minimal()
    obj["policy"] = {"retries": 0}
    assert decode_record(obj).policy == Policy(retries=0)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        pytest.param(
            "http://A.example.com:80/base/", "http://a.example.com:80/base", id="case-and-slash"
        ),
        pytest.param("HTTP://a.example.com:80", "http://a.example.com:80", id="scheme-case"),
        pytest.param("http://a.example.com:0080", "http://a.example.com:80", id="port-zeros"),
        pytest.param("http://a.example.com:80/", "http://a.example.com:80", id="root-path"),
        pytest.param("http://a.example.com:80/a/b//", "http://a.example.com:80/a/b", id="slashes"),
        pytest.param("http://[::FFFF:1]:80/x/", "http://[::ffff:1]:80/x", id="ipv6"),
        pytest.param("http://10.1.2.3:65535", "http://10.1.2.3:65535", id="ipv4"),
    ],
)
def test_upstream_url_is_canonicalised(raw: str, canonical: str) -> None:
    obj = minimal()
    obj["endpoints"][0]["targets"][0]["upstreams"] = [raw]
    rec = decode_record(obj)
    assert rec.endpoints[0].targets[0].upstreams[0].url == canonical
    assert orjson.loads(encode_record(rec))["endpoints"][0]["targets"][0]["upstreams"] == [
        canonical
    ]


def test_parse_upstream_splits_host_port_and_base() -> None:
    up = parse_upstream("http://A.example.com:80/base/", "u")
    assert up == Upstream(
        url="http://a.example.com:80/base", host="a.example.com", port=80, base_path="/base"
    )
    assert up.origin == "a.example.com:80"


def test_path_prefix_trailing_slash_is_dropped_except_root() -> None:
    obj = minimal()
    ep = obj["endpoints"][0]
    obj["endpoints"] = [
        {**copy.deepcopy(ep), "path_prefix": "/api/v1/"},
        {**copy.deepcopy(ep), "path_prefix": "/"},
    ]
    rec = decode_record(obj)
    assert [e.path_prefix for e in rec.endpoints] == ["/api/v1", "/"]


def test_sticky_header_name_lower_cased_cookie_name_kept() -> None:
    obj = minimal()
    obj["policy"] = {"sticky": "header:X-Session-Id"}
    assert decode_record(obj).policy.sticky == "header:x-session-id"
    obj["policy"] = {"sticky": "cookie:SessionID"}
    assert decode_record(obj).policy.sticky == "cookie:SessionID"
    obj["policy"] = {"sticky": "none"}
    assert decode_record(obj).policy.sticky == "none"


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("example.com", id="plain"),
        pytest.param("*.example.com", id="wildcard"),
        pytest.param("a-b.c0.example", id="hyphen-digit"),
        pytest.param("a" * 63 + ".example.com", id="label-63"),
        pytest.param(".".join(["a" * 63] * 3 + ["b" * 61]), id="len-253"),
        pytest.param("localhost", id="single-label"),
    ],
)
def test_valid_hostnames_accepted(host: str) -> None:
    obj = minimal()
    obj["host"] = host
    assert decode_record(obj).host == host


def test_weight_zero_target_and_full_weight_edges_accepted() -> None:
    obj = minimal()
    t = obj["endpoints"][0]["targets"][0]
    obj["endpoints"][0]["targets"] = [
        t,
        {**t, "deployment_id": "dep-2", "weight": 0, "status": "canary"},
    ]
    rec = decode_record(obj)
    assert [t.weight for t in rec.endpoints[0].targets] == [10000, 0]


def test_same_prefix_with_different_methods_is_not_a_duplicate() -> None:
    obj = minimal()
    ep = obj["endpoints"][0]
    obj["endpoints"] = [
        {**copy.deepcopy(ep), "path_prefix": "/api", "methods": ["GET"]},
        {**copy.deepcopy(ep), "path_prefix": "/api", "methods": ["POST"]},
        {**copy.deepcopy(ep), "path_prefix": "/api"},
    ]
    assert len(decode_record(obj).endpoints) == 3


def test_record_to_obj_is_the_decoded_form() -> None:
    rec = decode_record(rich())
    assert decode_record(record_to_obj(rec)) == rec
    assert isinstance(rec, RouteRecord)


_weights = st.integers(min_value=0, max_value=10000)


@settings(max_examples=50, deadline=None)
@given(
    canary=_weights,
    version=st.integers(min_value=1, max_value=(1 << 63) - 1),
    retries=st.integers(min_value=0, max_value=5),
    override=st.booleans(),
    blocked=st.sampled_from([None, "payment_required", "suspended"]),
    prefix=st.lists(st.from_regex(r"[a-z0-9._~-]{1,8}", fullmatch=True), max_size=4),
)
def test_round_trip_property(
    canary: int,
    version: int,
    retries: int,
    override: bool,
    blocked: str | None,
    prefix: list[str],
) -> None:
    obj = minimal()
    obj["version"] = version
    obj["blocked"] = blocked
    obj["policy"] = {"retries": retries, "allow_override": override}
    obj["endpoints"][0]["path_prefix"] = "/" + "/".join(prefix)
    t = obj["endpoints"][0]["targets"][0]
    t["weight"] = 10000 - canary
    obj["endpoints"][0]["targets"].append(
        {**t, "deployment_id": "dep-c", "weight": canary, "status": "canary"}
    )
    rec = decode_record(reverse_keys(obj))
    raw = encode_record(rec)
    assert decode_record(raw) == rec
    assert encode_record(decode_record(raw)) == raw
    assert raw == encode_record(decode_record(obj))


# ------------------------------------------------------------------------- malformed records

_DELETE = object()
T0 = ("endpoints", 0, "targets", 0)
U0 = (*T0, "upstreams", 0)
E0 = ("endpoints", 0)


def _target(dep: str, weight: int, status: str = "active") -> dict[str, Any]:
    return {"deployment_id": dep, "weight": weight, "status": status, "upstreams": [UP]}


def _endpoint(prefix: str, methods: list[str]) -> dict[str, Any]:
    return {"path_prefix": prefix, "methods": methods, "targets": [_target("dep-1", 10000)]}


def _set(obj: Any, where: tuple[str | int, ...], value: Any) -> None:
    for step in where[:-1]:
        obj = obj[step]
    if value is _DELETE:
        del obj[where[-1]]
    else:
        obj[where[-1]] = value


BAD: list[Any] = [
    # ---- hostnames
    pytest.param(("host",), "App.example.com", "host", "lower case", id="host-uppercase"),
    pytest.param(
        ("host",), ".".join(["a" * 63] * 4), "host", "at most 253 characters", id="host-too-long"
    ),
    pytest.param(
        ("host",), "a" * 64 + ".example.com", "host", "longer than 63", id="host-label-64"
    ),
    pytest.param(
        ("host",), "-a.example.com", "host", "not start or end with '-'", id="host-lead-hyphen"
    ),
    pytest.param(
        ("host",), "a-.example.com", "host", "not start or end with '-'", id="host-trail-hyphen"
    ),
    pytest.param(("host",), "a..example.com", "host", "empty label", id="host-empty-label"),
    pytest.param(("host",), ".example.com", "host", "empty label", id="host-leading-dot"),
    pytest.param(
        ("host",), "example.com.", "host", "must not end with a dot", id="host-trailing-dot"
    ),
    pytest.param(("host",), "a_b.example.com", "host", "may only hold a-z", id="host-underscore"),
    pytest.param(("host",), "a b.example.com", "host", "may only hold a-z", id="host-space"),
    pytest.param(("host",), "bücher.example.com", "host", "may only hold a-z", id="host-non-ascii"),
    pytest.param(("host",), "", "host", "must not be empty", id="host-empty"),
    pytest.param(("host",), 7, "host", "must be a string, not integer", id="host-int"),
    pytest.param(("host",), None, "host", "must be a string, not null", id="host-null"),
    pytest.param(("host",), _DELETE, "host", "is required", id="host-missing"),
    # ---- wildcards
    pytest.param(("host",), "*.com", "host", "at least two labels after '*.'", id="wild-tld"),
    pytest.param(("host",), "*", "host", "at least two labels after '*.'", id="wild-bare"),
    pytest.param(
        ("host",),
        "a.*.example.com",
        "host",
        "only allowed as the whole first label",
        id="wild-middle",
    ),
    pytest.param(
        ("host",),
        "*foo.example.com",
        "host",
        "only allowed as the whole first label",
        id="wild-partial",
    ),
    pytest.param(
        ("host",),
        "*.*.example.com",
        "host",
        "only allowed as the whole first label",
        id="wild-double",
    ),
    # ---- scalar fields
    pytest.param(
        ("version",), "1", "version", "must be an integer, not string", id="version-string"
    ),
    pytest.param(
        ("version",), True, "version", "must be an integer, not boolean", id="version-bool"
    ),
    pytest.param(
        ("version",), 1.0, "version", "must be an integer, not number", id="version-float"
    ),
    pytest.param(("version",), None, "version", "must be an integer, not null", id="version-null"),
    pytest.param(("version",), 0, "version", "between 1 and", id="version-zero"),
    pytest.param(("version",), _DELETE, "version", "is required", id="version-missing"),
    pytest.param(("space_id",), "", "space_id", "must not be empty", id="space-empty"),
    pytest.param(("space_id",), "a b", "space_id", "may only hold", id="space-space"),
    pytest.param(("space_id",), None, "space_id", "must be a string, not null", id="space-null"),
    pytest.param(
        ("service_id",), ["x"], "service_id", "must be a string, not list", id="service-list"
    ),
    pytest.param(("service_id",), "s" * 129, "service_id", "at most 128", id="service-too-long"),
    pytest.param(("updated_at",), -1, "updated_at", "between 0 and", id="updated-negative"),
    pytest.param(("updated_at",), "0", "updated_at", "not string", id="updated-string"),
    # ---- blocked
    pytest.param(("blocked",), "banned", "blocked", "must be null or one of", id="blocked-unknown"),
    pytest.param(("blocked",), "Suspended", "blocked", "must be null or one of", id="blocked-case"),
    pytest.param(("blocked",), "", "blocked", "must be null or one of", id="blocked-empty"),
    pytest.param(
        ("blocked",), True, "blocked", "must be null or a string, not boolean", id="blocked-bool"
    ),
    # ---- unknown keys at each level
    pytest.param(("extra",), 1, "extra", "unknown field", id="unknown-record-key"),
    pytest.param(
        ("policy",), {"timeout": 5}, "policy.timeout", "unknown field", id="unknown-policy-key"
    ),
    pytest.param(
        (*E0, "weight"), 1, "endpoints[0].weight", "unknown field", id="unknown-endpoint-key"
    ),
    pytest.param(
        (*T0, "region"),
        "eu",
        "endpoints[0].targets[0].region",
        "unknown field",
        id="unknown-target-key",
    ),
    # ---- wrong container types
    pytest.param(
        ("endpoints",),
        {"path_prefix": "/"},
        "endpoints",
        "must be a list, not mapping",
        id="endpoints-object",
    ),
    pytest.param(
        ("endpoints",), None, "endpoints", "must be a list, not null", id="endpoints-null"
    ),
    pytest.param(E0, [], "endpoints[0]", "must be a mapping, not list", id="endpoint-list"),
    pytest.param(E0, None, "endpoints[0]", "must be a mapping, not null", id="endpoint-null"),
    pytest.param(
        T0, "dep-1", "endpoints[0].targets[0]", "must be a mapping, not string", id="target-string"
    ),
    pytest.param(("policy",), [], "policy", "must be a mapping, not list", id="policy-list"),
    pytest.param(("policy",), None, "policy", "must be a mapping, not null", id="policy-null"),
    pytest.param(
        (*E0, "methods"),
        "GET",
        "endpoints[0].methods",
        "must be a list, not string",
        id="methods-string",
    ),
    pytest.param(
        (*T0, "upstreams"),
        UP,
        "endpoints[0].targets[0].upstreams",
        "must be a list, not string",
        id="upstreams-string",
    ),
    # ---- policy values
    pytest.param(
        ("policy",),
        {"retries": True},
        "policy.retries",
        "must be an integer, not boolean",
        id="policy-retries-bool",
    ),
    pytest.param(
        ("policy",), {"retries": 6}, "policy.retries", "between 0 and 5", id="policy-retries-high"
    ),
    pytest.param(
        ("policy",),
        {"connect_timeout_ms": 0},
        "policy.connect_timeout_ms",
        "between 1 and",
        id="policy-connect-zero",
    ),
    pytest.param(
        ("policy",),
        {"read_timeout_ms": "30s"},
        "policy.read_timeout_ms",
        "not string",
        id="policy-read-string",
    ),
    pytest.param(
        ("policy",),
        {"max_body_bytes": -1},
        "policy.max_body_bytes",
        "between 0 and",
        id="policy-body-negative",
    ),
    pytest.param(
        ("policy",),
        {"allow_override": "yes"},
        "policy.allow_override",
        "must be a boolean, not string",
        id="override-string",
    ),
    pytest.param(
        ("policy",),
        {"allow_override": 1},
        "policy.allow_override",
        "must be a boolean, not integer",
        id="override-int",
    ),
    # ---- upgrades
    pytest.param(
        ("policy",),
        {"upgrades": "websocket"},
        "policy.upgrades",
        "must be a list, not string",
        id="upgrades-string",
    ),
    pytest.param(
        ("policy",),
        {"upgrades": ["websocket", 2]},
        "policy.upgrades[1]",
        "must be a string, not integer",
        id="upgrades-int",
    ),
    pytest.param(
        ("policy",),
        {"upgrades": ["web socket"]},
        "policy.upgrades[0]",
        "must be a protocol name",
        id="upgrades-not-a-token",
    ),
    pytest.param(
        ("policy",),
        {"upgrades": ["h2c/2"]},
        "policy.upgrades[0]",
        "must be a protocol name",
        id="upgrades-with-version",
    ),
    pytest.param(
        ("policy",),
        {"upgrades": ["h2c", "H2C"]},
        "policy.upgrades[1]",
        "duplicate protocol 'H2C'",
        id="upgrades-duplicate",
    ),
    pytest.param(
        ("policy",),
        {"upgrades": [f"p{i}" for i in range(9)]},
        "policy.upgrades",
        "at most 8 protocols",
        id="upgrades-too-many",
    ),
    # ---- sticky
    pytest.param(
        ("policy",),
        {"sticky": "cookie"},
        "policy.sticky",
        "must be 'ip', 'none'",
        id="sticky-cookie-no-name",
    ),
    pytest.param(
        ("policy",),
        {"sticky": "cookie:"},
        "policy.sticky",
        "must be 'ip', 'none'",
        id="sticky-cookie-empty",
    ),
    pytest.param(
        ("policy",),
        {"sticky": "header:"},
        "policy.sticky",
        "must be 'ip', 'none'",
        id="sticky-header-empty",
    ),
    pytest.param(
        ("policy",),
        {"sticky": "header:X User"},
        "policy.sticky",
        "must be 'ip', 'none'",
        id="sticky-header-space",
    ),
    pytest.param(
        ("policy",), {"sticky": "IP"}, "policy.sticky", "must be 'ip', 'none'", id="sticky-upper-ip"
    ),
    pytest.param(
        ("policy",),
        {"sticky": "random"},
        "policy.sticky",
        "must be 'ip', 'none'",
        id="sticky-unknown",
    ),
    pytest.param(
        ("policy",),
        {"sticky": "query:user"},
        "policy.sticky",
        "must be 'ip', 'none'",
        id="sticky-unknown-kind",
    ),
    pytest.param(
        ("policy",),
        {"sticky": None},
        "policy.sticky",
        "must be a string, not null",
        id="sticky-null",
    ),
    # ---- endpoints
    pytest.param(("endpoints",), [], "endpoints", "must not be empty", id="endpoints-empty"),
    pytest.param(("endpoints",), _DELETE, "endpoints", "is required", id="endpoints-missing"),
    pytest.param(
        ("endpoints",),
        [_endpoint("/api", ["GET", "POST"]), _endpoint("/api/", ["POST", "GET"])],
        "endpoints[1].path_prefix",
        "duplicates endpoints[0]",
        id="endpoint-duplicate",
    ),
    pytest.param(
        ("endpoints",),
        [_endpoint("/", []), _endpoint("/x", []), _endpoint("/", [])],
        "endpoints[2].path_prefix",
        "duplicates endpoints[0]",
        id="endpoint-duplicate-catch-all",
    ),
    pytest.param(
        (*E0, "path_prefix"),
        "api",
        "endpoints[0].path_prefix",
        "must start with '/'",
        id="prefix-no-slash",
    ),
    pytest.param(
        (*E0, "path_prefix"),
        "",
        "endpoints[0].path_prefix",
        "must start with '/'",
        id="prefix-empty",
    ),
    pytest.param(
        (*E0, "path_prefix"), "/api?x=1", "endpoints[0].path_prefix", "'?'", id="prefix-query"
    ),
    pytest.param(
        (*E0, "path_prefix"), "/api#top", "endpoints[0].path_prefix", "'#'", id="prefix-fragment"
    ),
    pytest.param(
        (*E0, "path_prefix"), "/my api", "endpoints[0].path_prefix", "spaces", id="prefix-space"
    ),
    pytest.param(
        (*E0, "path_prefix"),
        "/a//b",
        "endpoints[0].path_prefix",
        "empty segment",
        id="prefix-double-slash",
    ),
    pytest.param(
        (*E0, "path_prefix"),
        "//",
        "endpoints[0].path_prefix",
        "empty segment",
        id="prefix-only-slashes",
    ),
    pytest.param(
        (*E0, "path_prefix"),
        "/" + "a" * 1024,
        "endpoints[0].path_prefix",
        "at most 1024",
        id="prefix-too-long",
    ),
    pytest.param(
        (*E0, "path_prefix"),
        5,
        "endpoints[0].path_prefix",
        "must be a string, not integer",
        id="prefix-int",
    ),
    pytest.param(
        (*E0, "path_prefix"),
        _DELETE,
        "endpoints[0].path_prefix",
        "is required",
        id="prefix-missing",
    ),
    # ---- methods
    pytest.param(
        (*E0, "methods"),
        ["get"],
        "endpoints[0].methods[0]",
        "upper-case HTTP method",
        id="method-lower",
    ),
    pytest.param(
        (*E0, "methods"),
        ["GET", "Post"],
        "endpoints[0].methods[1]",
        "upper-case HTTP method",
        id="method-mixed",
    ),
    pytest.param(
        (*E0, "methods"),
        ["GE T"],
        "endpoints[0].methods[0]",
        "upper-case HTTP method",
        id="method-space",
    ),
    pytest.param(
        (*E0, "methods"),
        [""],
        "endpoints[0].methods[0]",
        "upper-case HTTP method",
        id="method-empty",
    ),
    pytest.param(
        (*E0, "methods"),
        ["GET", "GET"],
        "endpoints[0].methods[1]",
        "duplicate method GET",
        id="method-duplicate",
    ),
    pytest.param(
        (*E0, "methods"),
        [1],
        "endpoints[0].methods[0]",
        "must be a string, not integer",
        id="method-int",
    ),
    # ---- targets
    pytest.param(
        (*E0, "targets"), [], "endpoints[0].targets", "must not be empty", id="targets-empty"
    ),
    pytest.param(
        (*E0, "targets"),
        [_target("a", 6000), _target("b", 3000, "canary")],
        "endpoints[0].targets",
        "weights must sum to 10000 basis points, got 9000",
        id="weights-sum-low",
    ),
    pytest.param(
        (*E0, "targets"),
        [_target("a", 10000), _target("b", 1, "canary")],
        "endpoints[0].targets",
        "weights must sum to 10000 basis points, got 10001",
        id="weights-sum-high",
    ),
    pytest.param(
        (*T0, "weight"),
        -1,
        "endpoints[0].targets[0].weight",
        "between 0 and 10000, got -1",
        id="weight-negative",
    ),
    pytest.param(
        (*T0, "weight"),
        10001,
        "endpoints[0].targets[0].weight",
        "between 0 and 10000, got 10001",
        id="weight-too-big",
    ),
    pytest.param(
        (*T0, "weight"),
        True,
        "endpoints[0].targets[0].weight",
        "must be an integer, not boolean",
        id="weight-bool",
    ),
    pytest.param(
        (*T0, "weight"),
        10000.0,
        "endpoints[0].targets[0].weight",
        "must be an integer, not number",
        id="weight-float",
    ),
    pytest.param(
        (*T0, "weight"),
        "10000",
        "endpoints[0].targets[0].weight",
        "must be an integer, not string",
        id="weight-string",
    ),
    pytest.param(
        (*E0, "targets"),
        [_target("same", 5000), _target("same", 5000, "canary")],
        "endpoints[0].targets[1].deployment_id",
        "duplicate deployment id 'same'",
        id="deployment-duplicate",
    ),
    pytest.param(
        (*T0, "deployment_id"),
        "",
        "endpoints[0].targets[0].deployment_id",
        "must not be empty",
        id="deployment-empty",
    ),
    pytest.param(
        (*T0, "deployment_id"),
        "-dep",
        "endpoints[0].targets[0].deployment_id",
        "may only hold",
        id="deployment-bad-char",
    ),
    pytest.param(
        (*T0, "status"),
        "live",
        "endpoints[0].targets[0].status",
        "must be one of active, canary, rollback",
        id="status-unknown",
    ),
    pytest.param(
        (*T0, "status"),
        "Active",
        "endpoints[0].targets[0].status",
        "must be one of",
        id="status-case",
    ),
    pytest.param(
        (*T0, "status"),
        None,
        "endpoints[0].targets[0].status",
        "must be a string, not null",
        id="status-null",
    ),
    pytest.param(
        (*T0, "status"),
        _DELETE,
        "endpoints[0].targets[0].status",
        "is required",
        id="status-missing",
    ),
    pytest.param(
        (*T0, "upstreams"),
        [],
        "endpoints[0].targets[0].upstreams",
        "must not be empty",
        id="upstreams-empty",
    ),
    pytest.param(
        (*T0, "upstreams"),
        ["http://a.example.com:80/", "http://A.example.com:80"],
        "endpoints[0].targets[0].upstreams",
        "duplicate upstream URL",
        id="upstreams-duplicate-canonical",
    ),
    # ---- upstream URLs
    pytest.param(
        U0,
        "https://a.example.com:443",
        "endpoints[0].targets[0].upstreams[0]",
        "must be an http:// URL",
        id="url-https",
    ),
    pytest.param(
        U0,
        "a.example.com:80",
        "endpoints[0].targets[0].upstreams[0]",
        "must be an http:// URL",
        id="url-no-scheme",
    ),
    pytest.param(
        U0,
        "http://a.example.com",
        "endpoints[0].targets[0].upstreams[0]",
        "must name a port",
        id="url-no-port",
    ),
    pytest.param(
        U0,
        "http://a.example.com:/x",
        "endpoints[0].targets[0].upstreams[0]",
        "must name a port",
        id="url-empty-port",
    ),
    pytest.param(
        U0,
        "http://a.example.com:80/x?y=1",
        "endpoints[0].targets[0].upstreams[0]",
        "query or fragment",
        id="url-query",
    ),
    pytest.param(
        U0,
        "http://a.example.com:80?",
        "endpoints[0].targets[0].upstreams[0]",
        "query or fragment",
        id="url-empty-query",
    ),
    pytest.param(
        U0,
        "http://a.example.com:80#frag",
        "endpoints[0].targets[0].upstreams[0]",
        "query or fragment",
        id="url-fragment",
    ),
    pytest.param(
        U0,
        "http://user:pw@a.example.com:80",
        "endpoints[0].targets[0].upstreams[0]",
        "user info",
        id="url-userinfo",
    ),
    pytest.param(
        U0,
        "http://user@a.example.com:80",
        "endpoints[0].targets[0].upstreams[0]",
        "user info",
        id="url-user",
    ),
    pytest.param(
        U0,
        "http://bad_host:80",
        "endpoints[0].targets[0].upstreams[0]",
        "invalid host 'bad_host'",
        id="url-bad-host",
    ),
    pytest.param(
        U0,
        "http://-a.example.com:80",
        "endpoints[0].targets[0].upstreams[0]",
        "invalid host",
        id="url-host-hyphen",
    ),
    pytest.param(
        U0,
        "http://*.example.com:80",
        "endpoints[0].targets[0].upstreams[0]",
        "invalid host",
        id="url-host-wildcard",
    ),
    pytest.param(
        U0,
        "http://:80",
        "endpoints[0].targets[0].upstreams[0]",
        "must name a host",
        id="url-no-host",
    ),
    pytest.param(
        U0,
        "http://[zz]:80",
        "endpoints[0].targets[0].upstreams[0]",
        "invalid URL",
        id="url-bad-ipv6",
    ),
    pytest.param(
        U0,
        "http://[::1:80",
        "endpoints[0].targets[0].upstreams[0]",
        "invalid URL",
        id="url-unclosed-ipv6",
    ),
    pytest.param(
        U0,
        "http://a.example.com:0",
        "endpoints[0].targets[0].upstreams[0]",
        "port must be 1..65535",
        id="url-port-0",
    ),
    pytest.param(
        U0,
        "http://a.example.com:70000",
        "endpoints[0].targets[0].upstreams[0]",
        "invalid URL",
        id="url-port-70000",
    ),
    pytest.param(
        U0,
        "http://a.example.com:http",
        "endpoints[0].targets[0].upstreams[0]",
        "invalid URL",
        id="url-port-name",
    ),
    pytest.param(
        U0,
        "http://a.example.com:+80",
        "endpoints[0].targets[0].upstreams[0]",
        "invalid URL",
        id="url-port-sign",
    ),
    pytest.param(
        U0,
        8080,
        "endpoints[0].targets[0].upstreams[0]",
        "must be a string, not integer",
        id="url-int",
    ),
    pytest.param(
        U0,
        None,
        "endpoints[0].targets[0].upstreams[0]",
        "must be a string, not null",
        id="url-null",
    ),
    pytest.param(
        U0,
        "http://a.example.com:80/" + "x" * 2048,
        "endpoints[0].targets[0].upstreams[0]",
        "at most 2048",
        id="url-too-long",
    ),
    pytest.param(
        U0,
        "http://a.example.com:80/b\u00e4se",
        "endpoints[0].targets[0].upstreams[0]",
        "ASCII",
        id="url-non-ascii-path",
    ),
    pytest.param(
        U0,
        "http://a.example.com:80/ba\nse",
        "endpoints[0].targets[0].upstreams[0]",
        "control characters",
        id="url-newline",
    ),
    pytest.param(
        U0,
        "http://a.example.com:80/a\tb",
        "endpoints[0].targets[0].upstreams[0]",
        "control characters",
        id="url-tab",
    ),
    pytest.param(
        U0,
        " http://a.example.com:80",
        "endpoints[0].targets[0].upstreams[0]",
        "spaces",
        id="url-leading-space",
    ),
    pytest.param(
        U0,
        "http://a.example.com:80/a b",
        "endpoints[0].targets[0].upstreams[0]",
        "spaces",
        id="url-space-in-path",
    ),
]


@pytest.mark.parametrize(("where", "value", "path", "reason"), BAD)
def test_malformed_record_rejected(
    where: tuple[str | int, ...], value: Any, path: str, reason: str
) -> None:
    obj = minimal()
    _set(obj, where, value if value is _DELETE else copy.deepcopy(value))
    with pytest.raises(RecordError) as info:
        decode_record(obj)
    err = info.value
    assert err.path == path
    assert reason in err.reason
    assert str(err) == f"{path}: {err.reason}"
    # The same failure through the JSON-bytes entry point.
    with pytest.raises(RecordError) as again:
        decode_record(orjson.dumps(obj))
    assert (again.value.path, again.value.reason) == (err.path, err.reason)


def test_unknown_key_in_second_target_names_its_index() -> None:
    obj = minimal()
    t = obj["endpoints"][0]["targets"][0]
    t["weight"] = 5000
    obj["endpoints"][0]["targets"].append({**t, "deployment_id": "dep-2", "colour": "blue"})
    with pytest.raises(RecordError) as info:
        decode_record(obj)
    assert info.value.path == "endpoints[0].targets[1].colour"
    assert info.value.reason == "unknown field (allowed: deployment_id, weight, status, upstreams)"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{", id="truncated"),
        pytest.param(b'{"host": }', id="missing-value"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b"{'host': 'a'}", id="single-quotes"),
        pytest.param(b'{"host":"a",}', id="trailing-comma"),
        pytest.param("{nope", id="str-input"),
    ],
)
def test_invalid_json_rejected_at_root(raw: bytes | str) -> None:
    with pytest.raises(RecordError) as info:
        decode_record(raw)
    assert info.value.path == "$"
    assert info.value.reason.startswith("invalid JSON")


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        pytest.param(b"[]", "list", id="array"),
        pytest.param(b"null", "null", id="null"),
        pytest.param(b'"host"', "string", id="string"),
        pytest.param(b"42", "integer", id="number"),
    ],
)
def test_json_root_must_be_a_mapping(raw: bytes, kind: str) -> None:
    with pytest.raises(RecordError) as info:
        decode_record(raw)
    assert info.value.path == "$"
    assert info.value.reason == f"must be a mapping, not {kind}"


def test_record_error_is_a_value_error_and_routing_error() -> None:
    with pytest.raises(RecordError) as info:
        decode_record(b"[]")
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, RoutingError)


@pytest.mark.parametrize("bad", [True, 1.0, "1"])
def test_policy_memo_tells_equal_values_of_other_types_apart(bad: Any) -> None:
    """Valid policies are memoised; ``True == 1 == 1.0`` must not let a bad one through."""
    assert policy_from_obj({"retries": 1, "sticky": "ip"}).retries == 1
    assert policy_from_obj({"retries": 1, "sticky": "ip"}) is policy_from_obj(
        {"retries": 1, "sticky": "ip"}
    )
    with pytest.raises(RecordError, match=r"policy\.retries"):
        policy_from_obj({"retries": bad, "sticky": "ip"})
    with pytest.raises(RecordError, match=r"policy\.sticky"):
        policy_from_obj({"retries": 1, "sticky": ["ip"]})


def test_policy_upgrades_are_stored_lower_case_and_encoded() -> None:
    rec = minimal()
    rec["policy"] = {"upgrades": ["WebSocket", "h2c"]}
    decoded = decode_record(rec)
    assert decoded.policy.upgrades == ("websocket", "h2c")
    assert orjson.loads(encode_record(decoded))["policy"]["upgrades"] == ["websocket", "h2c"]
    rec["policy"] = {"upgrades": []}
    assert decode_record(rec).policy.upgrades == ()
    assert orjson.loads(encode_record(decode_record(rec)))["policy"]["upgrades"] == []
    # The default is not written (older gateways reject unknown fields), and an explicit
    # default encodes like an omitted one.
    rec["policy"] = {"upgrades": ["WebSocket"]}
    assert "upgrades" not in orjson.loads(encode_record(decode_record(rec)))["policy"]
    assert encode_record(decode_record(rec)) == encode_record(decode_record(minimal()))
    # memoised by value: the same list again is the same policy, another list another one
    rec["policy"] = {"upgrades": ["h2c"]}
    assert decode_record(rec).policy is decode_record(rec).policy
    assert decode_record(rec).policy.upgrades == ("h2c",)


def test_an_unknown_key_is_named_printable_and_bounded() -> None:
    obj = minimal()
    obj["x\n" + "y" * 100] = 1
    with pytest.raises(RecordError) as info:
        decode_record(obj)
    assert info.value.path == "x\\u000a" + "y" * 54 + "..."  # 64 characters in all
    assert info.value.reason.startswith("unknown field (allowed: host, version, ")


def test_a_huge_integer_is_shown_by_its_digit_count() -> None:
    obj = minimal()
    obj["version"] = 10**30
    with pytest.raises(RecordError) as info:
        decode_record(obj)
    assert info.value.reason == f"must be between 1 and {2**63 - 1}, got a number of 31 digits"


def test_an_unknown_status_is_quoted() -> None:
    obj = minimal()
    obj["endpoints"][0]["targets"][0]["status"] = "live"
    with pytest.raises(RecordError) as info:
        decode_record(obj)
    assert info.value.path == "endpoints[0].targets[0].status"
    assert info.value.reason == "must be one of active, canary, rollback, not 'live'"
