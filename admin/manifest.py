"""The app manifest: Takos-style YAML or JSON, parsed safely and validated into frozen values.

Loading (:mod:`admin.manifest_load`) turns the text into plain data with every cost bounded —
size, characters, libyaml's C parser under a counting composer, depth, aliases, values — and
errors that carry a position or a field path but never document content.

Validation collects every problem it can as ``(path, message)`` issues
(``spec.services.web.upstreams[0]``) and raises one :class:`ManifestError`, so the API answers a
single 422 listing all failing fields. Forms written for Takos get hints naming the Turnout
equivalent (:mod:`admin.manifest_hints`), listed first. Field rules shared with route records
(hostnames, upstream URLs, path prefixes) reuse :mod:`routing.models` and
:mod:`routing.hostnames`. Values of ``env``, ``secrets`` and ``bindings`` are only ever checked
for type and length here, and no message quotes them.
"""

from __future__ import annotations

import copyreg
import dataclasses
import datetime
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, ParamSpec, TypeVar

from admin.crypto import Secret
from admin.errors import Unprocessable
from admin.manifest_access import Access, parse_access
from admin.manifest_hints import takos_hints
from admin.manifest_load import (
    MAX_ALIASES,
    MAX_DEPTH,
    MAX_ISSUES,
    MAX_MANIFEST_BYTES,
    MAX_VALUES,
    Issue,
    ManifestError,
    key_text,
    load_document,
)
from routing.errors import RecordError
from routing.health import HEALTH_TTL
from routing.hostnames import validate_hostname
from routing.models import Upstream, normalize_prefix, parse_upstream

__all__ = [
    "MAX_ALIASES",
    "MAX_DEPTH",
    "MAX_MANIFEST_BYTES",
    "MAX_VALUES",
    "Issue",
    "Manifest",
    "ManifestError",
    "ManifestParcel",
    "load_document",
    "manifest_body",
    "manifest_from_obj",
    "parse_manifest",
]


# A Manifest travels from the parsing worker process to the admin by pickle
# (admin.limits.BodyParsers, in a ManifestParcel); its read-only maps go as plain copies.
def _read_only(items: dict[Any, Any]) -> MappingProxyType[Any, Any]:
    return MappingProxyType(items)


copyreg.pickle(MappingProxyType, lambda m: (_read_only, (dict(m),)))

API_VERSIONS: Final = ("takos.dev/v1alpha1", "turnout/v1")
KIND: Final = "App"

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
# A canary is not gated: saying it is would be a promise nothing keeps.
_GATED_ONLY: Final = (
    "only valid with strategy: staged (a canary is not health-gated; for a gated canary use "
    "strategy: staged with one stage, e.g. stages: [{weight: 20, pause_minutes: 30}])"
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
    access: Access = field(default_factory=Access)  # its managed token (admin.manifest_access)
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


@dataclass(frozen=True, slots=True)
class ManifestParcel:
    """A validated manifest on its way out of a parsing worker process.

    :class:`Secret` refuses to be pickled, so the secrets travel beside a skeleton whose
    services have none, and :meth:`open` wraps them again. (The request body holding them went
    to the worker the same way: the plaintext only ever moves between the admin's processes.)"""

    skeleton: Manifest
    secrets: Mapping[str, Mapping[str, str]] = field(repr=False)

    @classmethod
    def pack(cls, manifest: Manifest) -> ManifestParcel:
        empty: Mapping[str, Secret[str]] = MappingProxyType({})
        services = {n: dataclasses.replace(s, secrets=empty) for n, s in manifest.services.items()}
        return cls(
            skeleton=dataclasses.replace(manifest, services=MappingProxyType(services)),
            secrets={
                n: {k: v.reveal() for k, v in s.secrets.items()}
                for n, s in manifest.services.items()
            },
        )

    def open(self) -> Manifest:
        services = {
            name: dataclasses.replace(
                svc,
                secrets=MappingProxyType(
                    {k: Secret(v) for k, v in self.secrets.get(name, {}).items()}
                ),
            )
            for name, svc in self.skeleton.services.items()
        }
        return dataclasses.replace(self.skeleton, services=MappingProxyType(services))


def manifest_body(raw: bytes) -> ManifestParcel:
    """An app deployment's request body as a manifest, or 422 ``invalid_manifest`` listing
    every problem (run by the framework in a parsing worker, before any transaction)."""
    if not raw.strip():
        raise Unprocessable(
            "a manifest body is required", [{"path": "body", "message": "required"}]
        )
    try:
        return ManifestParcel.pack(parse_manifest(raw))
    except ManifestError as exc:
        raise Unprocessable(str(exc), exc.as_details(), code="invalid_manifest") from None


def manifest_from_obj(doc: Any) -> Manifest:
    """Validate an already-loaded manifest object (e.g. a JSON request body).

    Takos forms get their hints first (they are the most actionable problems: each names the
    Turnout equivalent), then every other issue that no hint already explains."""
    hints = takos_hints(doc)
    try:
        return _validate(doc, bool(hints))
    except ManifestError as exc:
        explained = {h.issue.path for h in hints} | {p for h in hints for p in h.replaces}
        rest = [i for i in exc.issues if i.path not in explained]
        raise ManifestError([h.issue for h in hints] + rest) from None


def _validate(doc: Any, hinted: bool) -> Manifest:
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
    if issues.items or hinted or api_version is None or name is None:
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
        spath = f"{path}.{key_text(key)}"
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
    if kind == "worker":  # its hint (admin.manifest_hints) says what to write instead
        issues.add(f"{path}.type", "worker services are not supported")
        return None
    before = len(issues.items)
    _keys(
        issues,
        obj,
        path,
        required=("type", "upstreams"),
        optional=("env", "secrets", "bindings", "limits", "access"),
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
    access = (
        parse_access(issues.add, obj["access"], f"{path}.access") if "access" in obj else Access()
    )
    if len(issues.items) != before or limits is None or access is None:
        return None
    return Service(
        name=name,
        upstreams=upstreams,
        env=MappingProxyType(env),
        secrets=MappingProxyType({k: Secret(v) for k, v in secret_values.items()}),
        bindings=MappingProxyType(bindings),
        limits=limits,
        access=access,
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
        kpath = f"{path}.{key_text(key)}"
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
            issues.add(f"{prefix}{key_text(key)}", f"unknown field (allowed: {allowed})")
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
        shown = value if abs(value) < 10**15 else f"a number of {len(str(abs(value)))} digits"
        raise RecordError(path, f"must be between {lo} and {hi}, got {shown}")
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
