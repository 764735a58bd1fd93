"""App manifest parsing: a full valid manifest, one test per malformed field, hostile YAML."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from admin.crypto import Secret
from admin.errors import Unprocessable
from admin.manifest import (
    DEFAULT_STAGES,
    MAX_MANIFEST_BYTES,
    MAX_VALUES,
    HealthCheck,
    Issue,
    Limits,
    ManifestError,
    Rollout,
    Stage,
    manifest_body,
    manifest_from_obj,
    parse_manifest,
)
from routing.errors import InvalidFields, RecordError
from routing.models import decode_record

FULL_YAML = """\
apiVersion: takos.dev/v1alpha1
kind: App
metadata:
  name: shop
spec:
  services:
    web:
      type: http
      upstreams:
        - http://10.0.0.1:8080
        - http://WEB-2.internal:8080/base/
      env:
        LOG_LEVEL: info
        PORT: "8080"
      secrets:
        DATABASE_URL: postgres://u:p@db:5432/shop
      bindings:
        cache: redis-main
      limits:
        timeout_ms: 15000
        max_body_bytes: 1048576
    api:
      type: http
      upstreams: [http://10.0.0.2:9000]
  routes:
    - service: web
      hostname: Shop.Example.com
    - service: api
      hostname: shop.example.com
      path: /api/
      methods: [get, POST]
    - service: api
  rollout:
    strategy: staged
    stages:
      - {weight: 10, pause_minutes: 5}
      - {weight: 50, pause_minutes: 10}
    health_check:
      error_rate_threshold: 0.02
      min_requests: 50
      window_minutes: 10
    auto_promote: false
"""


def base() -> dict[str, Any]:
    """A small valid manifest as an object; tests break one field at a time."""
    return {
        "apiVersion": "turnout/v1",
        "kind": "App",
        "metadata": {"name": "shop"},
        "spec": {
            "services": {"web": {"type": "http", "upstreams": ["http://10.0.0.1:8080"]}},
            "routes": [{"service": "web", "hostname": "shop.example.com"}],
        },
    }


def issues_of(doc: Any) -> list[Issue]:
    with pytest.raises(ManifestError) as info:
        manifest_from_obj(doc)
    return list(info.value.issues)


def paths_of(doc: Any) -> list[str]:
    return [i.path for i in issues_of(doc)]


def text_issues(text: str | bytes) -> list[Issue]:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text)
    return list(info.value.issues)


def with_change(path: str, value: Any) -> dict[str, Any]:
    """``base()`` with the dotted ``path`` set to ``value`` (``...`` deletes it)."""
    doc = copy.deepcopy(base())
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is ...:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


# --------------------------------------------------------------------------------- valid


def test_full_manifest() -> None:
    m = parse_manifest(FULL_YAML)
    assert m.api_version == "takos.dev/v1alpha1"
    assert m.name == "shop"
    assert list(m.services) == ["web", "api"]
    web = m.services["web"]
    assert web.type == "http"
    assert [u.url for u in web.upstreams] == [
        "http://10.0.0.1:8080",
        "http://web-2.internal:8080/base",
    ]
    assert dict(web.env) == {"LOG_LEVEL": "info", "PORT": "8080"}
    assert web.secrets["DATABASE_URL"] == Secret("postgres://u:p@db:5432/shop")
    assert "u:p@db" not in repr(m)
    assert dict(web.bindings) == {"cache": "redis-main"}
    assert web.limits == Limits(timeout_ms=15000, max_body_bytes=1048576)
    assert m.services["api"].limits == Limits()

    r0, r1, r2 = m.routes
    assert (r0.service, r0.hostname, r0.path, r0.methods) == ("web", "shop.example.com", "/", ())
    assert (r1.hostname, r1.path, r1.methods) == ("shop.example.com", "/api", ("GET", "POST"))
    assert (r2.service, r2.hostname, r2.path) == ("api", None, "/")

    assert m.rollout == Rollout(
        strategy="staged",
        stages=(Stage(10, 5), Stage(50, 10), Stage(100, 0)),  # final 100 % appended
        health_check=HealthCheck(error_rate_threshold=0.02, min_requests=50, window_minutes=10),
        auto_promote=False,
    )


def test_json_input_accepted() -> None:
    doc = yaml.safe_load(FULL_YAML)
    as_json = json.dumps(doc, indent=2)
    assert parse_manifest(as_json) == parse_manifest(FULL_YAML)
    assert parse_manifest(as_json.encode()) == parse_manifest(FULL_YAML)


def test_flow_style_yaml_starting_with_brace() -> None:
    text = "{apiVersion: turnout/v1, kind: App, metadata: {name: a}, spec: {services: {web: {type: http, upstreams: [http://h:1]}}}}"
    assert parse_manifest(text).name == "a"


def test_defaults() -> None:
    m = manifest_from_obj(base())
    assert m.rollout == Rollout(strategy="direct")
    assert m.rollout.stages == ()
    assert m.rollout.health_check == HealthCheck(0.05, 100, 5)
    assert dict(m.services["web"].env) == {}


def test_staged_default_stages() -> None:
    m = manifest_from_obj(with_change("spec.rollout", {"strategy": "staged"}))
    assert m.rollout.stages == DEFAULT_STAGES
    assert [(s.weight, s.pause_minutes) for s in DEFAULT_STAGES] == [
        (1, 5),
        (5, 10),
        (25, 15),
        (50, 15),
        (100, 0),
    ]


def test_staged_latency_gate() -> None:
    hc = {"min_requests": 20, "window_minutes": 30, "p99_latency_ms": 250}
    m = manifest_from_obj(with_change("spec.rollout", {"strategy": "staged", "health_check": hc}))
    assert m.rollout.health_check == HealthCheck(0.05, 20, 30, 250)
    hc = {"p99_latency_ms": None}  # explicitly no latency gate
    m = manifest_from_obj(with_change("spec.rollout", {"strategy": "staged", "health_check": hc}))
    assert m.rollout.health_check == HealthCheck()
    assert m.rollout.health_check.p99_latency_ms is None


def test_canary() -> None:
    m = manifest_from_obj(with_change("spec.rollout", {"strategy": "canary", "canary_weight": 10}))
    assert m.rollout.strategy == "canary"
    assert m.rollout.canary_weight == 10


def test_staged_explicit_final_stage_not_duplicated() -> None:
    rollout = {
        "strategy": "staged",
        "stages": [{"weight": 50, "pause_minutes": 1}, {"weight": 100, "pause_minutes": 0}],
    }
    m = manifest_from_obj(with_change("spec.rollout", rollout))
    assert m.rollout.stages == (Stage(50, 1), Stage(100, 0))


def test_yaml_merge_keys_allowed() -> None:
    text = FULL_YAML.replace(
        "    api:\n      type: http\n",
        "    api:\n      <<: {type: http}\n",
    )
    assert parse_manifest(text).services["api"].type == "http"


# --------------------------------------------------------------------------------- envelope


@pytest.mark.parametrize(
    ("path", "value", "issue_path", "fragment"),
    [
        ("apiVersion", "v1", "apiVersion", "must be one of"),
        ("apiVersion", ..., "apiVersion", "is required"),
        ("kind", "Deployment", "kind", "must be one of App"),
        ("kind", 3, "kind", "must be a string, not integer"),
        ("metadata", "shop", "metadata", "must be a mapping, not string"),
        ("metadata.name", "Shop_1", "metadata.name", "DNS label"),
        ("metadata.name", "-shop", "metadata.name", "DNS label"),
        ("metadata.name", "a" * 64, "metadata.name", "DNS label"),
        ("metadata.labels", {}, "metadata.labels", "unknown field"),
        ("spec", [], "spec", "must be a mapping, not list"),
        ("spec.services", ..., "spec.services", "is required"),
        ("spec.extra", 1, "spec.extra", "unknown field"),
        ("surprise", 1, "surprise", "unknown field"),
    ],
)
def test_envelope_errors(path: str, value: Any, issue_path: str, fragment: str) -> None:
    issues = issues_of(with_change(path, value))
    assert any(i.path == issue_path and fragment in i.message for i in issues), issues


def test_root_must_be_mapping() -> None:
    assert issues_of(["a"]) == [Issue("$", "must be a mapping, not list")]
    assert text_issues("just a string")[0] == Issue("$", "must be a mapping, not string")


# --------------------------------------------------------------------------------- services

SVC = "spec.services.web"


@pytest.mark.parametrize(
    ("path", "value", "issue_path", "fragment"),
    [
        ("spec.services", {}, "spec.services", "at least one service"),
        ("spec.services", ["web"], "spec.services", "must be a mapping, not list"),
        (f"{SVC}.type", ..., f"{SVC}.type", "is required"),
        (f"{SVC}.type", "grpc", f"{SVC}.type", "must be one of http"),
        (f"{SVC}.upstreams", ..., f"{SVC}.upstreams", "is required"),
        (f"{SVC}.upstreams", "http://h:1", f"{SVC}.upstreams", "must be a list, not string"),
        (f"{SVC}.upstreams", [], f"{SVC}.upstreams", "at least one upstream"),
        (f"{SVC}.upstreams", ["https://h:1"], f"{SVC}.upstreams[0]", "http://"),
        (f"{SVC}.upstreams", ["http://h"], f"{SVC}.upstreams[0]", "port"),
        (f"{SVC}.upstreams", [8080], f"{SVC}.upstreams[0]", "must be a string, not integer"),
        (
            f"{SVC}.upstreams",
            ["http://h:1", "http://H:1/"],
            f"{SVC}.upstreams[1]",
            "duplicate upstream",
        ),
        (
            f"{SVC}.upstreams",
            [f"http://h:{1000 + i}" for i in range(65)],
            f"{SVC}.upstreams",
            "at most 64",
        ),
        (f"{SVC}.env", ["A=b"], f"{SVC}.env", "must be a mapping, not list"),
        (f"{SVC}.env", {"PORT": 8080}, f"{SVC}.env.PORT", "must be a string, not integer"),
        (f"{SVC}.env", {"lower": "x"}, f"{SVC}.env.lower", "environment variable name"),
        (f"{SVC}.secrets", {"API-KEY": "x"}, f"{SVC}.secrets.API-KEY", "environment variable"),
        (f"{SVC}.secrets", {"1ABC": "x"}, f"{SVC}.secrets.1ABC", "environment variable"),
        (f"{SVC}.secrets", {"TOKEN": None}, f"{SVC}.secrets.TOKEN", "must be a string, not null"),
        (f"{SVC}.bindings", {"db": True}, f"{SVC}.bindings.db", "must be a string, not boolean"),
        (f"{SVC}.bindings", {"a b": "x"}, f"{SVC}.bindings.a b", "identifier"),
        (f"{SVC}.limits", 5, f"{SVC}.limits", "must be a mapping, not integer"),
        (f"{SVC}.limits", {"timeout_ms": 0}, f"{SVC}.limits.timeout_ms", "between 1 and 30000"),
        (f"{SVC}.limits", {"timeout_ms": 30001}, f"{SVC}.limits.timeout_ms", "between 1 and"),
        (f"{SVC}.limits", {"timeout_ms": 1.5}, f"{SVC}.limits.timeout_ms", "not number"),
        (f"{SVC}.limits", {"timeout_ms": True}, f"{SVC}.limits.timeout_ms", "not boolean"),
        (
            f"{SVC}.limits",
            {"max_body_bytes": 2**30 + 1},
            f"{SVC}.limits.max_body_bytes",
            "between 0 and 1073741824",
        ),
        (f"{SVC}.limits", {"max_body_bytes": -1}, f"{SVC}.limits.max_body_bytes", "between 0"),
        (f"{SVC}.limits", {"cpu": 1}, f"{SVC}.limits.cpu", "unknown field"),
        (f"{SVC}.replicas", 3, f"{SVC}.replicas", "unknown field"),
        (SVC, "http://h:1", SVC, "must be a mapping, not string"),
    ],
)
def test_service_errors(path: str, value: Any, issue_path: str, fragment: str) -> None:
    issues = issues_of(with_change(path, value))
    assert any(i.path == issue_path and fragment in i.message for i in issues), issues


def test_service_name_must_be_dns_label() -> None:
    doc = base()
    doc["spec"]["services"] = {"Web_1": doc["spec"]["services"]["web"]}
    doc["spec"]["routes"] = []
    assert paths_of(doc) == ["spec.services.Web_1"]


def test_env_and_secrets_may_not_overlap() -> None:
    doc = with_change(f"{SVC}.env", {"TOKEN": "a"})
    doc["spec"]["services"]["web"]["secrets"] = {"TOKEN": "b"}
    assert paths_of(doc) == [f"{SVC}.secrets.TOKEN"]


def test_worker_service_rejected_with_alternative() -> None:
    doc = with_change(SVC, {"type": "worker", "build": {"fromWorkflow": ".takos/workflows/x"}})
    issues = issues_of(doc)
    assert [i.path for i in issues] == [f"{SVC}.type"]
    message = issues[0].message
    assert "worker services" in message
    assert ".takos/workflows/" in message
    assert "type: http" in message and "upstreams" in message


def test_many_issues_collected_at_once() -> None:
    doc = base()
    doc["kind"] = "Job"
    doc["metadata"]["name"] = "BAD"
    doc["spec"]["services"]["web"]["upstreams"] = ["ftp://x:1", "http://ok:1", 3]
    doc["spec"]["routes"][0]["path"] = "no-slash"
    assert paths_of(doc) == [
        "kind",
        "metadata.name",
        f"{SVC}.upstreams[0]",
        f"{SVC}.upstreams[2]",
        "spec.routes[0].path",
    ]


# --------------------------------------------------------------------------------- routes

R0 = "spec.routes.0"


@pytest.mark.parametrize(
    ("path", "value", "issue_path", "fragment"),
    [
        ("spec.routes", {"service": "web"}, "spec.routes", "must be a list, not mapping"),
        (R0, "web", "spec.routes[0]", "must be a mapping, not string"),
        (f"{R0}.service", ..., "spec.routes[0].service", "is required"),
        (f"{R0}.service", "api", "spec.routes[0].service", "unknown service 'api'"),
        (f"{R0}.service", ["web"], "spec.routes[0].service", "must be a string, not list"),
        (f"{R0}.hostname", "bad_host.example.com", "spec.routes[0].hostname", "may only hold"),
        (f"{R0}.hostname", "example.com.", "spec.routes[0].hostname", "must not end with a dot"),
        (f"{R0}.hostname", 42, "spec.routes[0].hostname", "must be a string, not integer"),
        (f"{R0}.path", "api", "spec.routes[0].path", "must start with '/'"),
        (f"{R0}.path", "/a//b", "spec.routes[0].path", "empty segment"),
        (f"{R0}.path", "/a?b=1", "spec.routes[0].path", "'?'"),
        (f"{R0}.methods", "GET", "spec.routes[0].methods", "must be a list, not string"),
        (f"{R0}.methods", ["GE T"], "spec.routes[0].methods[0]", "HTTP method token"),
        (f"{R0}.methods", ["GET", "get"], "spec.routes[0].methods[1]", "duplicate method GET"),
        (f"{R0}.methods", [1], "spec.routes[0].methods[0]", "must be a string, not integer"),
        (f"{R0}.weight", 5, "spec.routes[0].weight", "unknown field"),
    ],
)
def test_route_errors(path: str, value: Any, issue_path: str, fragment: str) -> None:
    issues = issues_of(with_change(path, value))
    assert any(i.path == issue_path and fragment in i.message for i in issues), issues


def test_duplicate_route() -> None:
    doc = base()
    doc["spec"]["routes"].append({"service": "web", "hostname": "SHOP.example.com", "path": "/"})
    issues = issues_of(doc)
    assert [i.path for i in issues] == ["spec.routes[1]"]
    assert "duplicates spec.routes[0]" in issues[0].message


def test_wildcard_hostname_allowed() -> None:
    m = manifest_from_obj(with_change(f"{R0}.hostname", "*.Apps.Example.com"))
    assert m.routes[0].hostname == "*.apps.example.com"


# --------------------------------------------------------------------------------- rollout

RO = "spec.rollout"


@pytest.mark.parametrize(
    ("rollout", "issue_path", "fragment"),
    [
        ("canary", RO, "must be a mapping, not string"),
        ({}, f"{RO}.strategy", "is required"),
        ({"strategy": "blue-green"}, f"{RO}.strategy", "must be one of direct, canary, staged"),
        ({"strategy": "canary"}, f"{RO}.canary_weight", "is required with strategy: canary"),
        ({"strategy": "canary", "canary_weight": 0}, f"{RO}.canary_weight", "between 1 and 99"),
        ({"strategy": "canary", "canary_weight": 100}, f"{RO}.canary_weight", "between 1 and 99"),
        ({"strategy": "canary", "canary_weight": "10"}, f"{RO}.canary_weight", "not string"),
        ({"strategy": "direct", "canary_weight": 10}, f"{RO}.canary_weight", "only valid"),
        ({"strategy": "canary", "canary_weight": 5, "stages": []}, f"{RO}.stages", "only valid"),
        ({"strategy": "staged", "stages": []}, f"{RO}.stages", "at least one stage"),
        ({"strategy": "staged", "stages": {}}, f"{RO}.stages", "must be a list, not mapping"),
        ({"strategy": "staged", "stages": [5]}, f"{RO}.stages[0]", "must be a mapping"),
        (
            {"strategy": "staged", "stages": [{"weight": 0, "pause_minutes": 1}]},
            f"{RO}.stages[0].weight",
            "between 1 and 100",
        ),
        (
            {"strategy": "staged", "stages": [{"weight": 101, "pause_minutes": 1}]},
            f"{RO}.stages[0].weight",
            "between 1 and 100",
        ),
        (
            {"strategy": "staged", "stages": [{"weight": 5, "pause_minutes": -1}]},
            f"{RO}.stages[0].pause_minutes",
            "between 0 and",
        ),
        (
            {"strategy": "staged", "stages": [{"weight": 5}]},
            f"{RO}.stages[0].pause_minutes",
            "is required",
        ),
        (
            {
                "strategy": "staged",
                "stages": [{"weight": 50, "pause_minutes": 1}, {"weight": 25, "pause_minutes": 1}],
            },
            f"{RO}.stages[1].weight",
            "weights must ascend",
        ),
        (
            {
                "strategy": "staged",
                "stages": [{"weight": 50, "pause_minutes": 1}, {"weight": 50, "pause_minutes": 1}],
            },
            f"{RO}.stages[1].weight",
            "weights must ascend",
        ),
        (
            {"strategy": "staged", "stages": [{"weight": 5, "pause_minutes": 1, "x": 1}]},
            f"{RO}.stages[0].x",
            "unknown field",
        ),
        (
            {"strategy": "staged", "health_check": {"error_rate_threshold": 1.5}},
            f"{RO}.health_check.error_rate_threshold",
            "between 0 and 1",
        ),
        (
            {"strategy": "staged", "health_check": {"error_rate_threshold": "5%"}},
            f"{RO}.health_check.error_rate_threshold",
            "must be a number, not string",
        ),
        (
            {"strategy": "staged", "health_check": {"min_requests": 0}},
            f"{RO}.health_check.min_requests",
            "between 1 and",
        ),
        (
            {"strategy": "staged", "health_check": {"window_minutes": 0}},
            f"{RO}.health_check.window_minutes",
            "between 1 and",
        ),
        (
            {"strategy": "staged", "health_check": {"window_minutes": 31}},
            f"{RO}.health_check.window_minutes",
            "between 1 and 30, got 31 (the gateway keeps health counters for 30 minutes)",
        ),
        (
            {"strategy": "staged", "health_check": {"p99_latency_ms": 0}},
            f"{RO}.health_check.p99_latency_ms",
            "between 1 and 600000",
        ),
        (
            {"strategy": "staged", "health_check": {"p99_latency_ms": "250ms"}},
            f"{RO}.health_check.p99_latency_ms",
            "must be an integer, not string",
        ),
        (
            {"strategy": "staged", "health_check": {"p99_latency_ms": 2.5}},
            f"{RO}.health_check.p99_latency_ms",
            "must be an integer, not number",
        ),
        (
            {"strategy": "staged", "health_check": {"interval": 1}},
            f"{RO}.health_check.interval",
            "unknown field",
        ),
        (
            {"strategy": "staged", "health_check": []},
            f"{RO}.health_check",
            "must be a mapping, not list",
        ),
        ({"strategy": "direct", "health_check": {}}, f"{RO}.health_check", "only valid"),
        (
            {"strategy": "staged", "auto_promote": "yes"},
            f"{RO}.auto_promote",
            "must be a boolean, not string",
        ),
        ({"strategy": "direct", "auto_promote": True}, f"{RO}.auto_promote", "only valid"),
        (
            {"strategy": "canary", "canary_weight": 5, "health_check": {"min_requests": 10}},
            f"{RO}.health_check",
            "only valid with strategy: staged (a canary is not health-gated",
        ),
        (
            {"strategy": "canary", "canary_weight": 5, "auto_promote": False},
            f"{RO}.auto_promote",
            "use strategy: staged with one stage",
        ),
        ({"strategy": "direct", "speed": 1}, f"{RO}.speed", "unknown field"),
    ],
)
def test_rollout_errors(rollout: Any, issue_path: str, fragment: str) -> None:
    issues = issues_of(with_change(RO, rollout))
    assert any(i.path == issue_path and fragment in i.message for i in issues), issues


def test_health_check_partial_keeps_defaults() -> None:
    rollout = {"strategy": "staged", "health_check": {"min_requests": 10}}
    m = manifest_from_obj(with_change(RO, rollout))
    assert m.rollout.health_check == HealthCheck(0.05, 10, 5)


# --------------------------------------------------------------------------------- hostile input


def test_size_limit_checked_before_parsing() -> None:
    # Far over the limit and not valid YAML: the size issue must come first.
    text = "a: [" * (MAX_MANIFEST_BYTES // 4 + 1)
    assert text_issues(text) == [Issue("$", f"manifest exceeds {MAX_MANIFEST_BYTES} bytes")]
    padded = FULL_YAML + "#" * (MAX_MANIFEST_BYTES - len(FULL_YAML) + 1)
    assert "exceeds" in text_issues(padded.encode())[0].message
    # Multi-byte characters count as bytes, not characters.
    wide = FULL_YAML + "# " + "é" * (MAX_MANIFEST_BYTES // 2)
    assert "exceeds" in text_issues(wide)[0].message


def test_just_under_size_limit_is_accepted() -> None:
    padded = FULL_YAML + "#" * (MAX_MANIFEST_BYTES - len(FULL_YAML) - 1) + "\n"
    assert len(padded.encode()) == MAX_MANIFEST_BYTES
    assert parse_manifest(padded).name == "shop"


@pytest.mark.parametrize("depth", [33, 5000])
def test_depth_limit_yaml(depth: int) -> None:
    text = "spec: " + "[" * depth + "]" * depth
    issues = text_issues(text)
    assert issues[0].path == "$"
    assert "nested deeper than 32" in issues[0].message


@pytest.mark.parametrize("depth", [33, 2000])  # 5000 brackets are over the value budget
def test_depth_limit_json(depth: int) -> None:
    text = '{"spec": ' + "[" * depth + "]" * depth + "}"
    assert text_issues(text) == [Issue("$", "nested deeper than 32")]


def test_depth_within_limit_reaches_validation() -> None:
    text = "spec: " + "[" * 10 + "]" * 10
    paths = [i.path for i in text_issues(text)]
    assert "spec" in paths  # a validation issue, not a parse issue


@pytest.mark.parametrize("style", ["yaml", "json"])
def test_value_budget(style: str) -> None:
    items = ",".join(["1"] * (MAX_VALUES + 1))
    text = f"spec: [{items}]" if style == "yaml" else f'{{"spec": [{items}]}}'
    issues = text_issues(text)
    assert issues[0].path == "$"
    assert f"more than {MAX_VALUES} values" in issues[0].message


def test_yaml_alias_bomb_rejected() -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for n in range(1, 10):
        refs = ",".join([f"*a{n - 1}"] * 9)
        lines.append(f"a{n}: &a{n} [{refs}]")
    issues = text_issues("\n".join(lines))
    assert issues[0].path == "$"
    assert "more than 16 aliases" in issues[0].message


def test_recursive_alias_rejected() -> None:
    issues = text_issues("spec: &a [*a]")
    assert issues[0].path == "$"
    assert "nested deeper than 32" in issues[0].message


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system ['echo pwned']",
        "!!python/object:builtins.dict {}",
        "!!python/name:os.system",
        "!!binary aGVsbG8=",
        "!custom x",
    ],
)
def test_python_and_unknown_tags_rejected(tag: str) -> None:
    text = FULL_YAML.replace("kind: App", f"kind: {tag}")
    issues = text_issues(text)
    assert issues[0].path == "kind"  # a loading error names the field it is in, too
    if tag.startswith("!!binary"):  # safe YAML; it becomes bytes, which is not a string
        assert "must be a string" in issues[0].message
    else:
        assert "invalid YAML" in issues[0].message and "line 2" in issues[0].message


def test_python_object_tag_is_a_parse_error() -> None:
    issues = text_issues("apiVersion: !!python/object/apply:os.system ['true']")
    assert issues == [Issue("apiVersion", issues[0].message)]
    assert "could not determine a constructor" in issues[0].message
    assert "line 1" in issues[0].message


def test_duplicate_keys_rejected() -> None:
    text = FULL_YAML.replace('        PORT: "8080"\n', '        PORT: "8080"\n        PORT: "9"\n')
    assert text_issues(text) == [Issue(f"{SVC}.env.PORT", "duplicate key")]
    json_text = '{"kind": "App", "kind": "App"}'
    assert text_issues(json_text) == [Issue("kind", "duplicate key")]


def test_invalid_yaml_reports_line() -> None:
    issues = text_issues("apiVersion: turnout/v1\nkind: [App\n")
    assert issues[0].path == "kind"
    assert "invalid YAML" in issues[0].message and "line" in issues[0].message


def test_invalid_json_reported_as_json() -> None:
    issues = text_issues('{"apiVersion": "turnout/v1",, }')
    assert issues[0].path == "$"
    assert issues[0].message.startswith("invalid JSON")


def test_nan_threshold_rejected() -> None:
    rollout = {"strategy": "staged", "health_check": {"error_rate_threshold": 0.5}}
    as_json = json.dumps(with_change(RO, rollout)).replace("0.5", "NaN")
    as_yaml = FULL_YAML.replace("error_rate_threshold: 0.02", "error_rate_threshold: .nan")
    for text in (as_json, as_yaml):
        issues = text_issues(text)
        assert [i.path for i in issues] == [f"{RO}.health_check.error_rate_threshold"], issues


def test_multiple_documents_rejected() -> None:
    issues = text_issues("kind: App\n---\nkind: App\n")
    assert "invalid YAML" in issues[0].message


@pytest.mark.parametrize(
    ("text", "message"), [("", "empty"), ("  \n", "empty"), (b"\xff", "UTF-8")]
)
def test_empty_or_undecodable(text: str | bytes, message: str) -> None:
    assert message in text_issues(text)[0].message


def test_yaml_type_names_are_clear() -> None:
    text = FULL_YAML.replace("LOG_LEVEL: info", "LOG_LEVEL: 2024-01-01")
    issues = text_issues(text)
    assert issues == [Issue(f"{SVC}.env.LOG_LEVEL", issues[0].message)]
    assert "must be a string, not date" in issues[0].message


def test_manifest_error_details_and_message() -> None:
    with pytest.raises(ManifestError) as info:
        manifest_from_obj(with_change("kind", "Job"))
    assert info.value.as_details() == [{"path": "kind", "message": "must be one of App, not 'Job'"}]
    assert str(info.value) == "invalid manifest: kind: must be one of App, not 'Job'"


def test_secret_values_never_in_error_messages() -> None:
    doc = with_change(f"{SVC}.secrets", {"TOKEN": "super-secret-value", "bad key": "also-secret"})
    doc["spec"]["services"]["web"]["env"] = {"TOKEN": "x"}
    with pytest.raises(ManifestError) as info:
        manifest_from_obj(doc)
    assert "super-secret-value" not in str(info.value.issues)
    assert "also-secret" not in str(info.value.issues)


# --------------------------------------------------------------------------------- vocabulary
# The manifest and route records speak routing.validation's words (tests/routing/test_validation.py).


def _record_error(data: Any) -> tuple[str, str]:
    with pytest.raises(RecordError) as info:
        decode_record(data)
    return info.value.path, info.value.reason


def test_manifests_and_records_word_the_same_problem_alike() -> None:
    # A list where a mapping belongs, at the root and below it.
    assert issues_of([]) == [Issue("$", "must be a mapping, not list")]
    assert _record_error(b"[]") == ("$", "must be a mapping, not list")
    assert Issue("spec", "must be a mapping, not list") in issues_of(with_change("spec", []))
    # An integer where an upstream URL belongs (the same check: routing.models.parse_upstream).
    assert issues_of(with_change(f"{SVC}.upstreams", [80])) == [
        Issue(f"{SVC}.upstreams[0]", "must be a string, not integer")
    ]
    record = {
        "host": "a.example.com",
        "version": 1,
        "space_id": "s",
        "service_id": "v",
        "endpoints": [
            {
                "path_prefix": "/",
                "targets": [
                    {"deployment_id": "d", "weight": 10000, "status": "active", "upstreams": [80]}
                ],
            }
        ],
    }
    assert _record_error(record) == (
        "endpoints[0].targets[0].upstreams[0]",
        "must be a string, not integer",
    )
    # An unknown key: the same words, with the allowed keys.
    record["endpoints"][0]["colour"] = "blue"  # type: ignore[index]
    assert _record_error(record) == (
        "endpoints[0].colour",
        "unknown field (allowed: path_prefix, targets, methods)",
    )


def test_manifest_error_is_the_vocabularys_collect_all_error() -> None:
    with pytest.raises(InvalidFields) as info:
        manifest_from_obj(with_change("kind", "Job"))
    assert isinstance(info.value, ManifestError)


def test_manifest_body_answers_422_with_every_issue() -> None:
    doc = with_change("kind", "Job")
    doc["spec"]["services"]["web"]["upstreams"] = [80]
    with pytest.raises(Unprocessable) as info:
        manifest_body(json.dumps(doc).encode())
    err = info.value
    assert (err.status, err.code) == (422, "invalid_manifest")
    assert err.details == {
        "fields": [
            {"path": "kind", "message": "must be one of App, not 'Job'"},
            {"path": f"{SVC}.upstreams[0]", "message": "must be a string, not integer"},
        ]
    }
    assert str(err).startswith("invalid manifest: kind: must be one of App")
