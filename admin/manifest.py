"""The app manifest: Takos-style YAML or JSON, parsed safely and validated into frozen values.

Loading (:mod:`admin.manifest_load`) turns the text into plain data with every cost bounded —
size, characters, libyaml's C parser under a counting composer, depth, aliases, values — and
errors that carry a position or a field path but never document content.

Validation collects every problem it can as ``(path, message)`` issues
(``spec.services.web.upstreams[0]``) under a :class:`~routing.validation.Collector` and raises
one :class:`ManifestError`, so the API answers a single 422 listing all failing fields. Type
names, field paths and the shared checks are :mod:`routing.validation`'s, the words route
records use too. Forms written for Takos get hints naming the Turnout
equivalent (:mod:`admin.manifest_hints`), listed first. Field rules shared with route records
(hostnames, upstream URLs, path prefixes) reuse :mod:`routing.models` and
:mod:`routing.hostnames`. Values of ``env``, ``secrets`` and ``bindings`` are only ever checked
for type and length here, and no message quotes them.
"""

from __future__ import annotations

import copyreg
import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

from admin.crypto import Secret
from admin.errors import Unprocessable
from admin.inputs import unprocessable
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
    load_document,
)
from routing.errors import FieldError
from routing.health import HEALTH_TTL
from routing.hostnames import validate_hostname
from routing.models import Upstream, normalize_prefix, parse_upstream
from routing.validation import (
    ROOT,
    Collector,
    expect_bool,
    expect_list,
    expect_mapping,
    expect_string,
    field_path,
    index_path,
    integer,
    key_problems,
    one_of,
    type_error,
)

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
        raise unprocessable(exc, code="invalid_manifest") from None


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
    issues = Collector(MAX_ISSUES)
    root = issues.check(expect_mapping, doc, ROOT)
    if root is None:
        raise ManifestError(issues.items)
    _keys(issues, root, ROOT, required=("apiVersion", "kind", "metadata", "spec"))
    api_version = None
    if "apiVersion" in root:
        api_version = issues.check(one_of, root["apiVersion"], "apiVersion", API_VERSIONS)
    if "kind" in root:
        issues.check(one_of, root["kind"], "kind", (KIND,))
    name = None
    if "metadata" in root:
        meta = issues.check(expect_mapping, root["metadata"], "metadata")
        if meta is not None:
            _keys(issues, meta, "metadata", required=("name",))
            if "name" in meta:
                name = issues.check(_dns_name, meta["name"], "metadata.name")
    services: dict[str, Service] = {}
    routes: tuple[Route, ...] = ()
    rollout = Rollout()
    spec = issues.check(expect_mapping, root["spec"], "spec") if "spec" in root else None
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


def _services(issues: Collector, value: Any, declared: set[str]) -> dict[str, Service]:
    path = "spec.services"
    obj = issues.check(expect_mapping, value, path)
    if obj is None:
        return {}
    if not obj:
        issues.add(path, "must declare at least one service")
    if len(obj) > MAX_SERVICES:
        issues.add(path, f"at most {MAX_SERVICES} services")
    services: dict[str, Service] = {}
    for key, svc_obj in obj.items():
        spath = field_path(path, key)
        if not isinstance(key, str) or not _NAME.fullmatch(key):
            issues.add(spath, "service name must be a DNS label ([a-z0-9-], at most 63 chars)")
            continue
        declared.add(key)
        svc = _service(issues, key, svc_obj, spath)
        if svc is not None:
            services[key] = svc
    return services


def _service(issues: Collector, name: str, value: Any, path: str) -> Service | None:
    obj = issues.check(expect_mapping, value, path)
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
        issues.check(one_of, kind, f"{path}.type", ("http",))
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


def _upstreams(issues: Collector, value: Any, path: str) -> tuple[Upstream, ...]:
    items = issues.check(expect_list, value, path)
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
        upath = index_path(path, i)
        up = issues.check(parse_upstream, item, upath)
        if up is None:
            continue
        if up.url in seen:
            issues.add(upath, f"duplicate upstream (also {index_path(path, seen[up.url])})")
            continue
        seen[up.url] = i
        ups.append(up)
    return tuple(ups)


def _string_map(
    issues: Collector, value: Any, path: str, key_pattern: re.Pattern[str], key_rule: str
) -> dict[str, str]:
    obj = issues.check(expect_mapping, value, path)
    if obj is None:
        return {}
    if len(obj) > MAX_VARS:
        issues.add(path, f"at most {MAX_VARS} entries")
        return {}
    out: dict[str, str] = {}
    for key, item in obj.items():
        kpath = field_path(path, key)
        if not isinstance(key, str) or not key_pattern.fullmatch(key):
            issues.add(kpath, f"name must be {key_rule}")
            continue
        if not isinstance(item, str):
            issues.add(kpath, f"{type_error(kpath, 'a string', item).reason} (quote it in YAML)")
            continue
        if len(item) > MAX_VALUE_LEN:
            issues.add(kpath, f"must be at most {MAX_VALUE_LEN} characters")
            continue
        out[key] = item
    return out


def _limits(issues: Collector, value: Any, path: str) -> Limits | None:
    obj = issues.check(expect_mapping, value, path)
    if obj is None:
        return None
    _keys(issues, obj, path, optional=("timeout_ms", "max_body_bytes"))
    timeout = body = None
    if "timeout_ms" in obj:
        timeout = issues.check(integer, obj["timeout_ms"], f"{path}.timeout_ms", 1, MAX_TIMEOUT_MS)
    if "max_body_bytes" in obj:
        body = issues.check(
            integer, obj["max_body_bytes"], f"{path}.max_body_bytes", 0, MAX_BODY_BYTES
        )
    return Limits(timeout_ms=timeout, max_body_bytes=body)


def _routes(issues: Collector, value: Any, declared: set[str]) -> tuple[Route, ...]:
    path = "spec.routes"
    items = issues.check(expect_list, value, path)
    if items is None:
        return ()
    if len(items) > MAX_ROUTES:
        issues.add(path, f"at most {MAX_ROUTES} routes")
        return ()
    routes: list[Route] = []
    seen: dict[tuple[str, str, tuple[str, ...]], int] = {}
    for i, item in enumerate(items):
        rpath = index_path(path, i)
        route = _route(issues, item, rpath, declared)
        if route is None:
            continue
        # Without a hostname a route lands on its service's own platform hostname, so two
        # services' hostname-less routes never collide.
        host_key = route.hostname if route.hostname is not None else f"<platform:{route.service}>"
        key = (host_key, route.path, tuple(sorted(route.methods)))
        if key in seen:
            issues.add(
                rpath, f"duplicates {index_path(path, seen[key])} (same hostname, path and methods)"
            )
            continue
        seen[key] = i
        routes.append(route)
    return tuple(routes)


def _route(issues: Collector, value: Any, path: str, declared: set[str]) -> Route | None:
    obj = issues.check(expect_mapping, value, path)
    if obj is None:
        return None
    before = len(issues.items)
    _keys(issues, obj, path, required=("service",), optional=("hostname", "path", "methods"))
    service = None
    if "service" in obj:
        service = issues.check(expect_string, obj["service"], f"{path}.service")
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


def _methods(issues: Collector, value: Any, path: str) -> tuple[str, ...]:
    items = issues.check(expect_list, value, path)
    if items is None:
        return ()
    methods: list[str] = []
    for i, item in enumerate(items):
        mpath = index_path(path, i)
        item = issues.check(expect_string, item, mpath)
        if item is None:
            continue
        method = item.upper()
        if not _METHOD.fullmatch(method):
            issues.add(mpath, "must be an HTTP method token (GET, POST, ...)")
        elif method in methods:
            issues.add(mpath, f"duplicate method {method}")
        else:
            methods.append(method)
    return tuple(methods)


def _rollout(issues: Collector, value: Any, path: str) -> Rollout | None:
    obj = issues.check(expect_mapping, value, path)
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
        strategy = issues.check(one_of, obj["strategy"], f"{path}.strategy", STRATEGIES)
    canary_weight = None
    if "canary_weight" in obj:
        if strategy not in (None, "canary"):
            issues.add(f"{path}.canary_weight", "only valid with strategy: canary")
        else:
            canary_weight = issues.check(
                integer, obj["canary_weight"], f"{path}.canary_weight", 1, 99
            )
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
        if strategy in ("direct", "canary"):
            issues.add(f"{path}.auto_promote", _GATED_ONLY)
        else:
            flag = issues.check(expect_bool, obj["auto_promote"], f"{path}.auto_promote")
            auto_promote = True if flag is None else flag
    if len(issues.items) != before or strategy is None:
        return None
    return Rollout(
        strategy=strategy,
        canary_weight=canary_weight,
        stages=stages,
        health_check=health,
        auto_promote=auto_promote,
    )


def _stages(issues: Collector, value: Any, path: str) -> tuple[Stage, ...]:
    items = issues.check(expect_list, value, path)
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
        spath = index_path(path, i)
        obj = issues.check(expect_mapping, item, spath)
        if obj is None:
            continue
        _keys(issues, obj, spath, required=("weight", "pause_minutes"))
        weight = (
            issues.check(integer, obj.get("weight"), f"{spath}.weight", 1, 100)
            if "weight" in obj
            else None
        )
        pause = (
            issues.check(
                integer, obj.get("pause_minutes"), f"{spath}.pause_minutes", 0, MAX_PAUSE_MINUTES
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


def _health_check(issues: Collector, value: Any, path: str) -> HealthCheck | None:
    obj = issues.check(expect_mapping, value, path)
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
        integer,
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
            integer, obj["p99_latency_ms"], f"{path}.p99_latency_ms", 1, MAX_P99_LATENCY_MS
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
# The shared checks are routing.validation's; these are the manifest's own. Each raises
# FieldError(path, reason) for one field; Collector.check turns it into an issue.


def _keys(
    issues: Collector,
    obj: dict[Any, Any],
    path: str,
    *,
    required: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
) -> None:
    issues.extend(key_problems(obj, path, required, optional))


def _dns_name(value: Any, path: str) -> str:
    text = expect_string(value, path)
    if not _NAME.fullmatch(text):
        raise FieldError(
            path, "must be a DNS label: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'"
        )
    return text


def _window(value: Any, path: str) -> int:
    try:
        return integer(value, path, 1, MAX_WINDOW_MINUTES)
    except FieldError as exc:
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_WINDOW_MINUTES:
            raise FieldError(
                path,
                f"{exc.reason} (the gateway keeps health counters for "
                f"{MAX_WINDOW_MINUTES} minutes)",
            ) from None
        raise


def _rate(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise type_error(path, "a number", value)
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise FieldError(path, f"must be between 0 and 1, got {value}")
    return float(value)
