"""The app manifest: Takos-style YAML or JSON, parsed safely and validated into frozen values.

Parsing is defensive because the text comes from users: the raw text is size-limited before any
parser sees it; YAML goes through a :class:`yaml.SafeLoader` subclass (plain data only, so
``!!python/object`` and friends fail) that also caps nesting depth while composing, caps the number
of aliases (the "billion laughs" expansion needs many) and rejects duplicate keys; the loaded
object is then walked once with a depth and value budget (JSON input and alias sharing included).

Validation collects every problem it can as ``(path, message)`` issues
(``spec.services.web.upstreams[0]``) and raises one :class:`ManifestError`, so the API answers a
single 422 listing all failing fields. Field rules shared with route records (hostnames,
upstream URLs, path prefixes) reuse :mod:`routing.models` and :mod:`routing.hostnames`.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple, ParamSpec, TypeVar

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node

from admin.crypto import Secret
from routing.errors import RecordError
from routing.health import HEALTH_TTL
from routing.hostnames import validate_hostname
from routing.models import Upstream, normalize_prefix, parse_upstream

API_VERSIONS: Final = ("takos.dev/v1alpha1", "turnout/v1")
KIND: Final = "App"
MAX_MANIFEST_BYTES: Final = 1024 * 1024
MAX_DEPTH: Final = 32
MAX_ALIASES: Final = 16
MAX_VALUES: Final = 25_000  # scalars + collections (after alias expansion); bounds parse CPU
MAX_ISSUES: Final = 50

MAX_SERVICES: Final = 64
MAX_UPSTREAMS: Final = 64
MAX_ROUTES: Final = 256
MAX_STAGES: Final = 20
MAX_VARS: Final = 256  # per env / secrets / bindings map
MAX_VALUE_LEN: Final = 32 * 1024
MAX_TIMEOUT_MS: Final = 30_000
MAX_BODY_BYTES: Final = 1024 * 1024 * 1024
MAX_PAUSE_MINUTES: Final = 7 * 24 * 60
# The gateway's health hashes live HEALTH_TTL seconds: a longer window would read nothing more.
MAX_WINDOW_MINUTES: Final = HEALTH_TTL // 60
MAX_P99_LATENCY_MS: Final = 600_000
MAX_MIN_REQUESTS: Final = 1_000_000_000

Strategy = Literal["direct", "canary", "staged"]
STRATEGIES: Final[tuple[Strategy, ...]] = ("direct", "canary", "staged")

_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
_BINDING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_METHOD = re.compile(r"[A-Z][A-Z0-9!#$%&'*+.^_`|~-]{0,31}")
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"

# A canary is not gated: saying it is would be a promise nothing keeps.
_GATED_ONLY: Final = (
    "only valid with strategy: staged (a canary is not health-gated; for a gated canary use "
    "strategy: staged with one stage, e.g. stages: [{weight: 20, pause_minutes: 30}])"
)

_WORKER_MESSAGE: Final = (
    "worker services (built from .takos/workflows/) are not supported: Turnout runs HTTP "
    "runtimes; run the worker as an HTTP server and declare it as type: http with upstreams"
)


# --------------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-service limits; ``None`` means the platform default."""

    timeout_ms: int | None = None
    max_body_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    upstreams: tuple[Upstream, ...]
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    secrets: Mapping[str, Secret[str]] = field(default_factory=lambda: MappingProxyType({}))
    bindings: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    limits: Limits = field(default_factory=Limits)
    type: Literal["http"] = "http"


@dataclass(frozen=True, slots=True)
class Route:
    service: str
    hostname: str | None = None  # None: the service's platform hostname
    path: str = "/"
    methods: tuple[str, ...] = ()  # empty: every method


@dataclass(frozen=True, slots=True)
class Stage:
    weight: int  # percent of traffic on the new deployment, 1..100
    pause_minutes: int


@dataclass(frozen=True, slots=True)
class HealthCheck:
    error_rate_threshold: float = 0.05
    min_requests: int = 100
    window_minutes: int = 5
    p99_latency_ms: int | None = None  # None: no latency gate


DEFAULT_STAGES: Final = (
    Stage(1, 5),
    Stage(5, 10),
    Stage(25, 15),
    Stage(50, 15),
    Stage(100, 0),
)


@dataclass(frozen=True, slots=True)
class Rollout:
    strategy: Strategy = "direct"
    canary_weight: int | None = None  # percent; set exactly when strategy == "canary"
    stages: tuple[Stage, ...] = ()  # non-empty exactly when strategy == "staged"; ends at 100
    health_check: HealthCheck = field(default_factory=HealthCheck)
    auto_promote: bool = True


@dataclass(frozen=True, slots=True)
class Manifest:
    api_version: str
    name: str
    services: Mapping[str, Service]  # in manifest order
    routes: tuple[Route, ...] = ()
    rollout: Rollout = field(default_factory=Rollout)


class Issue(NamedTuple):
    path: str
    message: str


class ManifestError(Exception):
    """The manifest is invalid; ``issues`` lists every ``(path, message)`` found (→ 422)."""

    def __init__(self, issues: Iterable[tuple[str, str]]) -> None:
        self.issues: tuple[Issue, ...] = tuple(Issue(p, m) for p, m in issues)
        shown = "; ".join(f"{i.path}: {i.message}" for i in self.issues[:5])
        more = f" (and {len(self.issues) - 5} more)" if len(self.issues) > 5 else ""
        super().__init__(f"invalid manifest: {shown}{more}")

    def as_details(self) -> list[dict[str, str]]:
        """The issues as JSON-ready ``{"path", "message"}`` objects for the error envelope."""
        return [{"path": i.path, "message": i.message} for i in self.issues]


# --------------------------------------------------------------------------------- loading


class _SafeLoader(yaml.SafeLoader):
    """SafeLoader that caps depth and aliases while composing and rejects duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self._nodes = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise ComposerError(
                    None,
                    None,
                    f"more than {MAX_ALIASES} aliases",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        self._nodes += 1
        if self._nodes > MAX_VALUES:
            raise ComposerError(
                None,
                None,
                f"more than {MAX_VALUES} values",
                self.peek_event().start_mark,  # type: ignore[no-untyped-call]
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ComposerError(
                    None,
                    None,
                    f"nested deeper than {MAX_DEPTH}",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # merged keys may be overridden on purpose
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable key: the base class reports it
            if duplicate:
                raise ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {str(key)[:64]!r}",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key[:64]!r}")
        obj[key] = value
    return obj


def load_document(text: str | bytes) -> Any:
    """Size-check, then parse JSON or YAML (safely) into plain data; :class:`ManifestError`."""
    if isinstance(text, bytes):
        if len(text) > MAX_MANIFEST_BYTES:
            raise ManifestError([Issue("$", f"manifest exceeds {MAX_MANIFEST_BYTES} bytes")])
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ManifestError([Issue("$", "manifest is not valid UTF-8")]) from None
    elif (
        len(text) > MAX_MANIFEST_BYTES or len(text.encode("utf-8", "replace")) > MAX_MANIFEST_BYTES
    ):
        raise ManifestError([Issue("$", f"manifest exceeds {MAX_MANIFEST_BYTES} bytes")])
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise ManifestError([Issue("$", "manifest is empty")])
    doc: Any
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text, object_pairs_hook=_json_pairs, parse_constant=_reject_constant)
        except RecursionError:
            raise ManifestError([Issue("$", f"nested deeper than {MAX_DEPTH}")]) from None
        except ValueError as exc:
            # A flow-style YAML mapping also starts with "{": give YAML a chance, but report
            # the JSON error if both fail (the author most likely meant JSON).
            try:
                doc = _load_yaml(text)
            except ManifestError:
                raise ManifestError([Issue("$", f"invalid JSON: {exc}")]) from None
    else:
        doc = _load_yaml(text)
    _check_shape(doc)
    return doc


def _load_yaml(text: str) -> Any:
    loader = _SafeLoader(text)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise ManifestError([Issue("$", f"invalid YAML: {problem}{where}")]) from None
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        reason = "nesting too deep" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise ManifestError([Issue("$", f"invalid YAML: {reason}")]) from None
    finally:
        loader.dispose()


def _check_shape(doc: Any) -> None:
    """Walk the loaded value once, bounding depth and the number of values (aliases expanded)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ManifestError([Issue("$", f"manifest holds more than {MAX_VALUES} values")])
        if depth > MAX_DEPTH:
            raise ManifestError([Issue("$", f"nested deeper than {MAX_DEPTH}")])
        if isinstance(value, dict | list):
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)


# --------------------------------------------------------------------------------- validation

_T = TypeVar("_T")
_P = ParamSpec("_P")


class _Issues:
    """Collects issues; :meth:`check` runs one field validator and records its failure."""

    def __init__(self) -> None:
        self.items: list[Issue] = []

    def add(self, path: str, message: str) -> None:
        if len(self.items) < MAX_ISSUES:
            self.items.append(Issue(path, message))

    def check(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T | None:
        try:
            return fn(*args, **kwargs)
        except RecordError as exc:
            self.add(exc.path, exc.reason)
            return None


def parse_manifest(text: str | bytes) -> Manifest:
    """Parse and validate a manifest (YAML or JSON); raise :class:`ManifestError` with issues."""
    return manifest_from_obj(load_document(text))


def manifest_from_obj(doc: Any) -> Manifest:
    """Validate an already-loaded manifest object (e.g. a JSON request body)."""
    issues = _Issues()
    root = issues.check(_object, doc, "$")
    if root is None:
        raise ManifestError(issues.items)
    _keys(issues, root, "", required=("apiVersion", "kind", "metadata", "spec"))
    api_version = None
    if "apiVersion" in root:
        api_version = issues.check(_choice, root["apiVersion"], "apiVersion", API_VERSIONS)
    if "kind" in root:
        issues.check(_choice, root["kind"], "kind", (KIND,))
    name = None
    if "metadata" in root:
        meta = issues.check(_object, root["metadata"], "metadata")
        if meta is not None:
            _keys(issues, meta, "metadata", required=("name",))
            if "name" in meta:
                name = issues.check(_dns_name, meta["name"], "metadata.name")
    services: dict[str, Service] = {}
    routes: tuple[Route, ...] = ()
    rollout = Rollout()
    spec = issues.check(_object, root["spec"], "spec") if "spec" in root else None
    if spec is not None:
        _keys(issues, spec, "spec", required=("services",), optional=("routes", "rollout"))
        declared: set[str] = set()
        if "services" in spec:
            services = _services(issues, spec["services"], declared)
        if "routes" in spec:
            routes = _routes(issues, spec["routes"], declared)
        if "rollout" in spec:
            rollout = _rollout(issues, spec["rollout"], "spec.rollout") or rollout
    if issues.items or api_version is None or name is None:
        raise ManifestError(issues.items or [Issue("$", "invalid manifest")])
    return Manifest(
        api_version=api_version,
        name=name,
        services=MappingProxyType(services),
        routes=routes,
        rollout=rollout,
    )


def _services(issues: _Issues, value: Any, declared: set[str]) -> dict[str, Service]:
    path = "spec.services"
    obj = issues.check(_object, value, path)
    if obj is None:
        return {}
    if not obj:
        issues.add(path, "must declare at least one service")
    if len(obj) > MAX_SERVICES:
        issues.add(path, f"at most {MAX_SERVICES} services")
    services: dict[str, Service] = {}
    for key, svc_obj in obj.items():
        spath = f"{path}.{_key_text(key)}"
        if not isinstance(key, str) or not _NAME.fullmatch(key):
            issues.add(spath, "service name must be a DNS label ([a-z0-9-], at most 63 chars)")
            continue
        declared.add(key)
        svc = _service(issues, key, svc_obj, spath)
        if svc is not None:
            services[key] = svc
    return services


def _service(issues: _Issues, name: str, value: Any, path: str) -> Service | None:
    obj = issues.check(_object, value, path)
    if obj is None:
        return None
    kind = obj.get("type")
    if kind == "worker":
        issues.add(f"{path}.type", _WORKER_MESSAGE)
        return None
    before = len(issues.items)
    _keys(
        issues,
        obj,
        path,
        required=("type", "upstreams"),
        optional=("env", "secrets", "bindings", "limits"),
    )
    if "type" in obj:
        issues.check(_choice, kind, f"{path}.type", ("http",))
    upstreams = (
        _upstreams(issues, obj["upstreams"], f"{path}.upstreams") if "upstreams" in obj else ()
    )
    env = _string_map(
        issues,
        obj.get("env", {}),
        f"{path}.env",
        _ENV_NAME,
        "an environment variable name ([A-Z_][A-Z0-9_]*)",
    )
    secret_values = _string_map(
        issues,
        obj.get("secrets", {}),
        f"{path}.secrets",
        _ENV_NAME,
        "an environment variable name ([A-Z_][A-Z0-9_]*)",
    )
    for key in secret_values.keys() & env.keys():
        issues.add(f"{path}.secrets.{key}", "also declared in env")
    bindings = _string_map(
        issues,
        obj.get("bindings", {}),
        f"{path}.bindings",
        _BINDING_NAME,
        "an identifier ([A-Za-z_][A-Za-z0-9_]*)",
    )
    limits = _limits(issues, obj.get("limits", {}), f"{path}.limits")
    if len(issues.items) != before or limits is None:
        return None
    return Service(
        name=name,
        upstreams=upstreams,
        env=MappingProxyType(env),
        secrets=MappingProxyType({k: Secret(v) for k, v in secret_values.items()}),
        bindings=MappingProxyType(bindings),
        limits=limits,
    )


def _upstreams(issues: _Issues, value: Any, path: str) -> tuple[Upstream, ...]:
    items = issues.check(_list, value, path)
    if items is None:
        return ()
    if not items:
        issues.add(path, "must list at least one upstream")
    if len(items) > MAX_UPSTREAMS:
        issues.add(path, f"at most {MAX_UPSTREAMS} upstreams")
        return ()
    ups: list[Upstream] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        up = issues.check(parse_upstream, item, f"{path}[{i}]")
        if up is None:
            continue
        if up.url in seen:
            issues.add(f"{path}[{i}]", f"duplicate upstream (also {path}[{seen[up.url]}])")
            continue
        seen[up.url] = i
        ups.append(up)
    return tuple(ups)


def _string_map(
    issues: _Issues, value: Any, path: str, key_pattern: re.Pattern[str], key_rule: str
) -> dict[str, str]:
    obj = issues.check(_object, value, path)
    if obj is None:
        return {}
    if len(obj) > MAX_VARS:
        issues.add(path, f"at most {MAX_VARS} entries")
        return {}
    out: dict[str, str] = {}
    for key, item in obj.items():
        kpath = f"{path}.{_key_text(key)}"
        if not isinstance(key, str) or not key_pattern.fullmatch(key):
            issues.add(kpath, f"name must be {key_rule}")
            continue
        if not isinstance(item, str):
            issues.add(kpath, f"must be a string, not {_type_name(item)} (quote it in YAML)")
            continue
        if len(item) > MAX_VALUE_LEN:
            issues.add(kpath, f"must be at most {MAX_VALUE_LEN} characters")
            continue
        out[key] = item
    return out


def _limits(issues: _Issues, value: Any, path: str) -> Limits | None:
    obj = issues.check(_object, value, path)
    if obj is None:
        return None
    _keys(issues, obj, path, optional=("timeout_ms", "max_body_bytes"))
    timeout = body = None
    if "timeout_ms" in obj:
        timeout = issues.check(_int, obj["timeout_ms"], f"{path}.timeout_ms", 1, MAX_TIMEOUT_MS)
    if "max_body_bytes" in obj:
        body = issues.check(
            _int, obj["max_body_bytes"], f"{path}.max_body_bytes", 0, MAX_BODY_BYTES
        )
    return Limits(timeout_ms=timeout, max_body_bytes=body)


def _routes(issues: _Issues, value: Any, declared: set[str]) -> tuple[Route, ...]:
    path = "spec.routes"
    items = issues.check(_list, value, path)
    if items is None:
        return ()
    if len(items) > MAX_ROUTES:
        issues.add(path, f"at most {MAX_ROUTES} routes")
        return ()
    routes: list[Route] = []
    seen: dict[tuple[str, str, tuple[str, ...]], int] = {}
    for i, item in enumerate(items):
        rpath = f"{path}[{i}]"
        route = _route(issues, item, rpath, declared)
        if route is None:
            continue
        # Without a hostname a route lands on its service's own platform hostname, so two
        # services' hostname-less routes never collide.
        host_key = route.hostname if route.hostname is not None else f"<platform:{route.service}>"
        key = (host_key, route.path, tuple(sorted(route.methods)))
        if key in seen:
            issues.add(rpath, f"duplicates {path}[{seen[key]}] (same hostname, path and methods)")
            continue
        seen[key] = i
        routes.append(route)
    return tuple(routes)


def _route(issues: _Issues, value: Any, path: str, declared: set[str]) -> Route | None:
    obj = issues.check(_object, value, path)
    if obj is None:
        return None
    before = len(issues.items)
    _keys(issues, obj, path, required=("service",), optional=("hostname", "path", "methods"))
    service = None
    if "service" in obj:
        service = issues.check(_string, obj["service"], f"{path}.service")
        if service is not None and service not in declared:
            known = ", ".join(sorted(declared)) or "none"
            issues.add(f"{path}.service", f"unknown service {service[:64]!r} (declared: {known})")
    hostname = None
    if "hostname" in obj:
        raw = obj["hostname"]
        lowered = raw.lower() if isinstance(raw, str) else raw
        hostname = issues.check(validate_hostname, lowered, f"{path}.hostname")
    prefix = issues.check(normalize_prefix, obj.get("path", "/"), f"{path}.path")
    methods = _methods(issues, obj["methods"], f"{path}.methods") if "methods" in obj else ()
    if len(issues.items) != before or service is None or prefix is None:
        return None
    return Route(service=service, hostname=hostname, path=prefix, methods=methods)


def _methods(issues: _Issues, value: Any, path: str) -> tuple[str, ...]:
    items = issues.check(_list, value, path)
    if items is None:
        return ()
    methods: list[str] = []
    for i, item in enumerate(items):
        mpath = f"{path}[{i}]"
        if not isinstance(item, str):
            issues.add(mpath, f"must be a string, not {_type_name(item)}")
            continue
        method = item.upper()
        if not _METHOD.fullmatch(method):
            issues.add(mpath, "must be an HTTP method token (GET, POST, ...)")
        elif method in methods:
            issues.add(mpath, f"duplicate method {method}")
        else:
            methods.append(method)
    return tuple(methods)


def _rollout(issues: _Issues, value: Any, path: str) -> Rollout | None:
    obj = issues.check(_object, value, path)
    if obj is None:
        return None
    before = len(issues.items)
    _keys(
        issues,
        obj,
        path,
        required=("strategy",),
        optional=("canary_weight", "stages", "health_check", "auto_promote"),
    )
    strategy = None
    if "strategy" in obj:
        strategy = issues.check(_choice, obj["strategy"], f"{path}.strategy", STRATEGIES)
    canary_weight = None
    if "canary_weight" in obj:
        if strategy not in (None, "canary"):
            issues.add(f"{path}.canary_weight", "only valid with strategy: canary")
        else:
            canary_weight = issues.check(_int, obj["canary_weight"], f"{path}.canary_weight", 1, 99)
    elif strategy == "canary":
        issues.add(f"{path}.canary_weight", "is required with strategy: canary (1..99)")
    stages: tuple[Stage, ...] = ()
    if "stages" in obj:
        if strategy not in (None, "staged"):
            issues.add(f"{path}.stages", "only valid with strategy: staged")
        else:
            stages = _stages(issues, obj["stages"], f"{path}.stages")
    elif strategy == "staged":
        stages = DEFAULT_STAGES
    health = HealthCheck()
    if "health_check" in obj:
        if strategy in ("direct", "canary"):
            issues.add(f"{path}.health_check", _GATED_ONLY)
        else:
            health = _health_check(issues, obj["health_check"], f"{path}.health_check") or health
    auto_promote = True
    if "auto_promote" in obj:
        flag = obj["auto_promote"]
        if strategy in ("direct", "canary"):
            issues.add(f"{path}.auto_promote", _GATED_ONLY)
        elif not isinstance(flag, bool):
            issues.add(f"{path}.auto_promote", f"must be a boolean, not {_type_name(flag)}")
        else:
            auto_promote = flag
    if len(issues.items) != before or strategy is None:
        return None
    return Rollout(
        strategy=strategy,
        canary_weight=canary_weight,
        stages=stages,
        health_check=health,
        auto_promote=auto_promote,
    )


def _stages(issues: _Issues, value: Any, path: str) -> tuple[Stage, ...]:
    items = issues.check(_list, value, path)
    if items is None:
        return ()
    if not items:
        issues.add(path, "must list at least one stage (or be omitted for the defaults)")
        return ()
    if len(items) > MAX_STAGES:
        issues.add(path, f"at most {MAX_STAGES} stages")
        return ()
    stages: list[Stage] = []
    for i, item in enumerate(items):
        spath = f"{path}[{i}]"
        obj = issues.check(_object, item, spath)
        if obj is None:
            continue
        _keys(issues, obj, spath, required=("weight", "pause_minutes"))
        weight = (
            issues.check(_int, obj.get("weight"), f"{spath}.weight", 1, 100)
            if "weight" in obj
            else None
        )
        pause = (
            issues.check(
                _int, obj.get("pause_minutes"), f"{spath}.pause_minutes", 0, MAX_PAUSE_MINUTES
            )
            if "pause_minutes" in obj
            else None
        )
        if weight is None or pause is None:
            continue
        if stages and weight <= stages[-1].weight:
            issues.add(
                f"{spath}.weight", f"weights must ascend: {weight} is not above {stages[-1].weight}"
            )
            continue
        stages.append(Stage(weight, pause))
    if stages and stages[-1].weight != 100:
        stages.append(Stage(100, 0))
    return tuple(stages)


def _health_check(issues: _Issues, value: Any, path: str) -> HealthCheck | None:
    obj = issues.check(_object, value, path)
    if obj is None:
        return None
    before = len(issues.items)
    _keys(
        issues,
        obj,
        path,
        optional=("error_rate_threshold", "min_requests", "window_minutes", "p99_latency_ms"),
    )
    default = HealthCheck()
    threshold = issues.check(
        _rate,
        obj.get("error_rate_threshold", default.error_rate_threshold),
        f"{path}.error_rate_threshold",
    )
    min_requests = issues.check(
        _int,
        obj.get("min_requests", default.min_requests),
        f"{path}.min_requests",
        1,
        MAX_MIN_REQUESTS,
    )
    window = issues.check(
        _window, obj.get("window_minutes", default.window_minutes), f"{path}.window_minutes"
    )
    p99 = None
    if obj.get("p99_latency_ms") is not None:
        p99 = issues.check(
            _int, obj["p99_latency_ms"], f"{path}.p99_latency_ms", 1, MAX_P99_LATENCY_MS
        )
    if len(issues.items) != before or threshold is None or min_requests is None or window is None:
        return None
    return HealthCheck(
        error_rate_threshold=threshold,
        min_requests=min_requests,
        window_minutes=window,
        p99_latency_ms=p99,
    )


# --------------------------------------------------------------------------------- primitives
# Each raises RecordError(path, reason) for one field; _Issues.check turns it into an issue.


def _keys(
    issues: _Issues,
    obj: dict[Any, Any],
    path: str,
    *,
    required: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
) -> None:
    prefix = f"{path}." if path else ""
    for key in obj:
        if key not in required and key not in optional:
            allowed = ", ".join((*required, *optional))
            issues.add(f"{prefix}{_key_text(key)}", f"unknown field (allowed: {allowed})")
    for key in required:
        if key not in obj:
            issues.add(f"{prefix}{key}", "is required")


def _object(value: Any, path: str) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise RecordError(path, f"must be a mapping, not {_type_name(value)}")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise RecordError(path, f"must be a list, not {_type_name(value)}")
    return value


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise RecordError(path, f"must be a string, not {_type_name(value)}")
    return value


def _choice(value: Any, path: str, choices: tuple[_T, ...]) -> _T:
    text = _string(value, path)
    for choice in choices:
        if text == choice:
            return choice
    raise RecordError(path, f"must be one of {', '.join(map(str, choices))}, not {text[:64]!r}")


def _dns_name(value: Any, path: str) -> str:
    text = _string(value, path)
    if not _NAME.fullmatch(text):
        raise RecordError(
            path, "must be a DNS label: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'"
        )
    return text


def _int(value: Any, path: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(path, f"must be an integer, not {_type_name(value)}")
    if not lo <= value <= hi:
        raise RecordError(path, f"must be between {lo} and {hi}, got {value}")
    return value


def _window(value: Any, path: str) -> int:
    try:
        return _int(value, path, 1, MAX_WINDOW_MINUTES)
    except RecordError as exc:
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_WINDOW_MINUTES:
            raise RecordError(
                path,
                f"{exc.reason} (the gateway keeps health counters for "
                f"{MAX_WINDOW_MINUTES} minutes)",
            ) from None
        raise


def _rate(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(path, f"must be a number, not {_type_name(value)}")
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise RecordError(path, f"must be between 0 and 1, got {value}")
    return float(value)


def _key_text(key: object) -> str:
    text = key if isinstance(key, str) else str(key)
    return text if len(text) <= 64 else f"{text[:61]}..."


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, datetime.datetime):
        return "timestamp"
    if isinstance(value, datetime.date):
        return "date"
    return type(value).__name__
