"""The route record: one per hostname, what the gateway needs to dispatch it.

Records are immutable values. :func:`decode_record` is strict (every malformed input is a
:class:`~routing.errors.RecordError` naming the field path and the reason, in the words of
:mod:`routing.validation`; the first problem found is raised) and
:func:`encode_record` is canonical: the same record always encodes to the same bytes (sorted
keys, policy defaults written out, no whitespace), so bytes can be compared and hashed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import orjson

from routing.errors import RecordError
from routing.hostnames import validate_hostname
from routing.validation import (
    ROOT,
    expect_bool,
    expect_list,
    expect_mapping,
    expect_string,
    index_path,
    integer,
    key_problems,
    one_of,
    type_error,
)

TOTAL_WEIGHT: Final = 10000
STATUSES: Final = ("active", "canary", "rollback")
BLOCK_REASONS: Final = ("payment_required", "suspended")
MAX_ENDPOINTS: Final = 256
MAX_TARGETS: Final = 64
MAX_UPSTREAMS: Final = 256
MAX_ID_LEN: Final = 128
MAX_INT64: Final = (1 << 63) - 1  # versions and timestamps: signed 64-bit

Status = Literal["active", "canary", "rollback"]

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")  # RFC 9110 token (methods, header names)
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
_COOKIE_NAME = _TOKEN
_PATH_BAD = re.compile(r"[\x00-\x20\x7f?#]")
_URL_BAD = re.compile(r"[\x00-\x20\x7f]")


@dataclass(frozen=True, slots=True)
class Policy:
    """Per-record dispatch policy; defaults are the spec's."""

    connect_timeout_ms: int = 2000
    read_timeout_ms: int = 30000
    max_body_bytes: int = 25 * 1024 * 1024
    retries: int = 1
    sticky: str = "ip"
    allow_override: bool = False
    # Protocols a request may switch to (Upgrade + 101, tunnelled); others are not forwarded.
    upgrades: tuple[str, ...] = ("websocket",)

    def __reduce__(self) -> tuple[type[Policy], tuple[Any, ...]]:
        # Pickled by constructor (the admin's parse workers return these): compiled by mypyc, a
        # frozen dataclass's default unpickling sets fields one by one and is refused.
        return (
            Policy,
            (
                self.connect_timeout_ms,
                self.read_timeout_ms,
                self.max_body_bytes,
                self.retries,
                self.sticky,
                self.allow_override,
                self.upgrades,
            ),
        )


DEFAULT_POLICY: Final = Policy()

# name -> (min, max) for integer policy fields
_POLICY_INTS: Final[dict[str, tuple[int, int]]] = {
    "connect_timeout_ms": (1, 60_000),
    "read_timeout_ms": (1, 3_600_000),
    "max_body_bytes": (0, 1 << 40),
    "retries": (0, 5),
}
MAX_UPGRADES: Final = 8


@dataclass(frozen=True, slots=True)
class Upstream:
    """One replica address: ``http://host:port[/base]``."""

    url: str
    host: str
    port: int
    base_path: str  # "" or "/base" without a trailing slash

    def __reduce__(self) -> tuple[type[Upstream], tuple[Any, ...]]:
        return (Upstream, (self.url, self.host, self.port, self.base_path))  # see Policy

    @property
    def origin(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Target:
    deployment_id: str
    weight: int
    status: Status
    upstreams: tuple[Upstream, ...]

    def __reduce__(self) -> tuple[type[Target], tuple[Any, ...]]:
        return (Target, (self.deployment_id, self.weight, self.status, self.upstreams))


@dataclass(frozen=True, slots=True)
class Endpoint:
    path_prefix: str
    methods: tuple[str, ...]
    targets: tuple[Target, ...]

    def __reduce__(self) -> tuple[type[Endpoint], tuple[Any, ...]]:
        return (Endpoint, (self.path_prefix, self.methods, self.targets))


@dataclass(frozen=True, slots=True)
class RouteRecord:
    host: str
    version: int
    space_id: str
    service_id: str
    endpoints: tuple[Endpoint, ...]
    policy: Policy = field(default=DEFAULT_POLICY)
    blocked: str | None = None
    updated_at: int = 0

    def __reduce__(self) -> tuple[type[RouteRecord], tuple[Any, ...]]:
        return (
            RouteRecord,
            (
                self.host,
                self.version,
                self.space_id,
                self.service_id,
                self.endpoints,
                self.policy,
                self.blocked,
                self.updated_at,
            ),
        )


# --------------------------------------------------------------------------------- decoding


def decode_record(data: bytes | str | dict[str, Any]) -> RouteRecord:
    """Parse and validate one route record (JSON bytes/str, or an already-parsed dict)."""
    if isinstance(data, dict):
        obj: Any = data
    else:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise RecordError(ROOT, f"invalid JSON: {exc}") from None
    return record_from_obj(obj)


def record_from_obj(obj: Any) -> RouteRecord:
    rec = expect_mapping(obj, ROOT)
    _keys(
        rec,
        ROOT,
        required=("host", "version", "space_id", "service_id", "endpoints"),
        optional=("policy", "blocked", "updated_at"),
    )
    host = validate_hostname(rec["host"], "host")
    version = integer(rec["version"], "version", 1, MAX_INT64)
    space_id = _ident(rec["space_id"], "space_id")
    service_id = _ident(rec["service_id"], "service_id")
    blocked = rec.get("blocked")
    if blocked is not None:
        if not isinstance(blocked, str):
            raise type_error("blocked", "null or a string", blocked)
        if blocked not in BLOCK_REASONS:
            raise RecordError("blocked", f"must be null or one of {', '.join(BLOCK_REASONS)}")
    updated_at = integer(rec.get("updated_at", 0), "updated_at", 0, MAX_INT64)
    policy = policy_from_obj(rec.get("policy", {}), "policy")
    eps = expect_list(rec["endpoints"], "endpoints")
    if not eps:
        raise RecordError("endpoints", "must not be empty")
    if len(eps) > MAX_ENDPOINTS:
        raise RecordError("endpoints", f"at most {MAX_ENDPOINTS} endpoints")
    endpoints = tuple(_endpoint(e, f"endpoints[{i}]") for i, e in enumerate(eps))
    seen: dict[tuple[str, tuple[str, ...]], int] = {}
    for i, ep in enumerate(endpoints):
        key = (ep.path_prefix, tuple(sorted(ep.methods)))
        if key in seen:
            raise RecordError(
                f"endpoints[{i}].path_prefix",
                f"duplicates endpoints[{seen[key]}] (same path_prefix and methods)",
            )
        seen[key] = i
    return RouteRecord(
        host=host,
        version=version,
        space_id=space_id,
        service_id=service_id,
        endpoints=endpoints,
        policy=policy,
        blocked=blocked,
        updated_at=updated_at,
    )


_POLICY_CACHE: dict[tuple[tuple[str, type, Any], ...], Policy] = {}
_POLICY_CACHE_MAX = 4096


def policy_from_obj(obj: Any, path: str = "policy") -> Policy:
    """Validate a policy object. Valid results are memoised by their exact keys, value types and
    values (``True`` and ``1`` are different keys), since nearly every record carries one of a
    handful of policies and a full sync decodes each of them again."""
    key: tuple[tuple[str, type, Any], ...] | None = None
    if type(obj) is dict:
        try:
            key = tuple([(k, type(v), tuple(v) if type(v) is list else v) for k, v in obj.items()])
            hit = _POLICY_CACHE.get(key)
        except TypeError:  # an unhashable value (array or object): not valid anyway
            key = hit = None
        if hit is not None:
            return hit
    policy = _policy_from_obj(obj, path)
    if key is not None:
        if len(_POLICY_CACHE) >= _POLICY_CACHE_MAX:
            _POLICY_CACHE.clear()
        _POLICY_CACHE[key] = policy
    return policy


def _policy_from_obj(obj: Any, path: str) -> Policy:
    pol = expect_mapping(obj, path)
    _keys(pol, path, required=(), optional=(*_POLICY_INTS, "sticky", "allow_override", "upgrades"))
    values: dict[str, Any] = {}
    for name, (lo, hi) in _POLICY_INTS.items():
        if name in pol:
            values[name] = integer(pol[name], f"{path}.{name}", lo, hi)
    if "sticky" in pol:
        values["sticky"] = validate_sticky(pol["sticky"], f"{path}.sticky")
    if "allow_override" in pol:
        values["allow_override"] = expect_bool(pol["allow_override"], f"{path}.allow_override")
    if "upgrades" in pol:
        values["upgrades"] = validate_upgrades(pol["upgrades"], f"{path}.upgrades")
    if not values:
        return DEFAULT_POLICY
    return Policy(**values)


def validate_upgrades(value: Any, path: str = "policy.upgrades") -> tuple[str, ...]:
    """Upgrade protocol names (RFC 9110 §7.8 ``protocol-name``, tokens), stored lower-case."""
    items = expect_list(value, path)
    if len(items) > MAX_UPGRADES:
        raise RecordError(path, f"must hold at most {MAX_UPGRADES} protocols")
    out: list[str] = []
    for i, item in enumerate(items):
        ipath = index_path(path, i)
        expect_string(item, ipath)
        if not _TOKEN.fullmatch(item) or len(item) > 64:
            raise RecordError(ipath, "must be a protocol name (an HTTP token, ≤ 64 chars)")
        name = item.lower()
        if name in out:
            raise RecordError(ipath, f"duplicate protocol {item!r}")
        out.append(name)
    return tuple(out)


def validate_sticky(value: Any, path: str = "policy.sticky") -> str:
    if not isinstance(value, str):
        raise type_error(path, "a string", value)
    if value in ("ip", "none"):
        return str(value)
    kind, sep, name = value.partition(":")
    if sep and kind == "header" and _TOKEN.fullmatch(name) and len(name) <= 128:
        return f"header:{name.lower()}"
    if sep and kind == "cookie" and _COOKIE_NAME.fullmatch(name) and len(name) <= 128:
        return value
    raise RecordError(
        path, "must be 'ip', 'none', 'header:<header-name>' or 'cookie:<cookie-name>'"
    )


_UPSTREAM_CACHE: dict[str, Upstream] = {}
_UPSTREAM_CACHE_MAX = 65536


def parse_upstream(value: Any, path: str) -> Upstream:
    """Accept only ``http://host:port[/base]``: no userinfo, query, fragment or default port.

    Valid results are memoised by URL: replicas repeat across records and versions, and a full
    sync of a large table would otherwise spend most of its time in ``urlsplit``."""
    if isinstance(value, str):
        hit = _UPSTREAM_CACHE.get(value)
        if hit is not None:
            return hit
    upstream = _parse_upstream(value, path)
    if len(_UPSTREAM_CACHE) >= _UPSTREAM_CACHE_MAX:
        _UPSTREAM_CACHE.clear()
    _UPSTREAM_CACHE[value] = upstream
    return upstream


def _parse_upstream(value: Any, path: str) -> Upstream:
    expect_string(value, path)
    if len(value) > 2048:
        raise RecordError(path, "must be at most 2048 characters")
    if not value.isascii() or _URL_BAD.search(value):
        # urlsplit would silently drop tabs/newlines, and a non-ASCII base path cannot be sent.
        raise RecordError(path, "must be ASCII without spaces or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise RecordError(path, f"invalid URL: {exc}") from None
    if parts.scheme != "http":
        raise RecordError(path, "must be an http:// URL (http://host:port[/base])")
    if parts.username is not None or parts.password is not None:
        raise RecordError(path, "must not contain user info")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise RecordError(path, "must not contain a query or fragment")
    host = parts.hostname
    if not host:
        raise RecordError(path, "must name a host")
    if port is None:
        raise RecordError(path, "must name a port (http://host:port[/base])")
    if not 1 <= port <= 65535:
        raise RecordError(path, "port must be 1..65535")
    if ":" in host:  # IPv6 literal; urlsplit strips the brackets
        if host.translate({ord(c): None for c in "0123456789abcdef:."}):
            raise RecordError(path, "invalid IPv6 literal")
    else:
        try:
            validate_hostname(host, path, allow_wildcard=False)
        except RecordError:
            raise RecordError(path, f"invalid host {host!r}") from None
    base = parts.path.rstrip("/")
    if base and (_PATH_BAD.search(base) or not base.startswith("/")):
        raise RecordError(path, "base path may not contain spaces, controls, '?' or '#'")
    # Canonical spelling, so equal records encode to equal bytes: lower-case host, no "/" tail.
    netloc = f"[{host}]" if ":" in host else host
    return Upstream(url=f"http://{netloc}:{port}{base}", host=host, port=port, base_path=base)


def _endpoint(obj: Any, path: str) -> Endpoint:
    ep = expect_mapping(obj, path)
    _keys(ep, path, required=("path_prefix", "targets"), optional=("methods",))
    prefix = normalize_prefix(ep["path_prefix"], f"{path}.path_prefix")
    methods_obj = expect_list(ep.get("methods", []), f"{path}.methods")
    methods: list[str] = []
    for i, m in enumerate(methods_obj):
        mpath = f"{path}.methods[{i}]"
        expect_string(m, mpath)
        if not _TOKEN.fullmatch(m) or m != m.upper() or len(m) > 32:
            raise RecordError(mpath, "must be an upper-case HTTP method token")
        if m in methods:
            raise RecordError(mpath, f"duplicate method {m}")
        methods.append(m)
    tobjs = expect_list(ep["targets"], f"{path}.targets")
    if not tobjs:
        raise RecordError(f"{path}.targets", "must not be empty")
    if len(tobjs) > MAX_TARGETS:
        raise RecordError(f"{path}.targets", f"at most {MAX_TARGETS} targets")
    targets = tuple(_target(t, f"{path}.targets[{i}]") for i, t in enumerate(tobjs))
    ids: dict[str, int] = {}
    for i, t in enumerate(targets):
        if t.deployment_id in ids:
            raise RecordError(
                f"{path}.targets[{i}].deployment_id",
                f"duplicate deployment id {t.deployment_id!r} (also targets[{ids[t.deployment_id]}])",
            )
        ids[t.deployment_id] = i
    total = sum(t.weight for t in targets)
    if total != TOTAL_WEIGHT:
        raise RecordError(
            f"{path}.targets", f"weights must sum to {TOTAL_WEIGHT} basis points, got {total}"
        )
    return Endpoint(path_prefix=prefix, methods=tuple(methods), targets=targets)


def normalize_prefix(value: Any, path: str) -> str:
    if not isinstance(value, str):  # inline: it runs for every record on a sync
        raise type_error(path, "a string", value)
    if not value.startswith("/"):
        raise RecordError(path, "must start with '/'")
    if len(value) > 1024:
        raise RecordError(path, "must be at most 1024 characters")
    if _PATH_BAD.search(value):
        raise RecordError(path, "may not contain spaces, control characters, '?' or '#'")
    if "//" in value:
        raise RecordError(path, "may not contain an empty segment ('//')")
    prefix: str = value
    return prefix if prefix == "/" else prefix.rstrip("/")


def _target(obj: Any, path: str) -> Target:
    t = expect_mapping(obj, path)
    _keys(t, path, required=("deployment_id", "weight", "status", "upstreams"), optional=())
    dep = _ident(t["deployment_id"], f"{path}.deployment_id")
    weight = integer(t["weight"], f"{path}.weight", 0, TOTAL_WEIGHT)
    status = t["status"]
    if status not in STATUSES:  # the common, valid case costs one lookup
        one_of(status, f"{path}.status", STATUSES)  # raises, naming what is wrong
    ups = expect_list(t["upstreams"], f"{path}.upstreams")
    if not ups:
        raise RecordError(f"{path}.upstreams", "must not be empty")
    if len(ups) > MAX_UPSTREAMS:
        raise RecordError(f"{path}.upstreams", f"at most {MAX_UPSTREAMS} upstreams")
    upstreams = tuple(parse_upstream(u, f"{path}.upstreams[{i}]") for i, u in enumerate(ups))
    urls = [u.url for u in upstreams]
    if len(set(urls)) != len(urls):
        raise RecordError(f"{path}.upstreams", "duplicate upstream URL")
    return Target(deployment_id=dep, weight=weight, status=status, upstreams=upstreams)


# (required, optional) -> (allowed keys, required keys), for the fast check in _keys
_ALLOWED: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[frozenset[str], frozenset[str]]] = {}


def _keys(
    obj: dict[str, Any], path: str, *, required: tuple[str, ...], optional: tuple[str, ...]
) -> None:
    sets = _ALLOWED.get((required, optional))
    if sets is None:
        sets = _ALLOWED[(required, optional)] = (
            frozenset(required + optional),
            frozenset(required),
        )
    keys = obj.keys()
    if keys <= sets[0] and keys >= sets[1]:
        return  # the common, valid case; the loops below name what is wrong otherwise
    raise RecordError(*key_problems(obj, path, required, optional)[0])


def _ident(value: Any, path: str) -> str:
    if not isinstance(value, str):  # inline: it runs for every record on a sync
        raise type_error(path, "a string", value)
    if not value:
        raise RecordError(path, "must not be empty")
    if len(value) > MAX_ID_LEN:
        raise RecordError(path, f"must be at most {MAX_ID_LEN} characters")
    if not _ID.fullmatch(value):
        raise RecordError(path, "may only hold letters, digits, '.', '_', ':' and '-'")
    return value


# --------------------------------------------------------------------------------- encoding


def policy_to_obj(p: Policy) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "connect_timeout_ms": p.connect_timeout_ms,
        "read_timeout_ms": p.read_timeout_ms,
        "max_body_bytes": p.max_body_bytes,
        "retries": p.retries,
        "sticky": p.sticky,
        "allow_override": p.allow_override,
    }
    # Written only when not the default: gateways that predate the field (strict decoders)
    # keep applying every record that does not use it during a rolling upgrade.
    if p.upgrades != DEFAULT_POLICY.upgrades:
        obj["upgrades"] = list(p.upgrades)
    return obj


def record_to_obj(record: RouteRecord) -> dict[str, Any]:
    return {
        "host": record.host,
        "version": record.version,
        "space_id": record.space_id,
        "service_id": record.service_id,
        "blocked": record.blocked,
        "updated_at": record.updated_at,
        "policy": policy_to_obj(record.policy),
        "endpoints": [
            {
                "path_prefix": e.path_prefix,
                "methods": list(e.methods),
                "targets": [
                    {
                        "deployment_id": t.deployment_id,
                        "weight": t.weight,
                        "status": t.status,
                        "upstreams": [u.url for u in t.upstreams],
                    }
                    for t in e.targets
                ],
            }
            for e in record.endpoints
        ],
    }


def encode_record(record: RouteRecord) -> bytes:
    """Canonical JSON bytes of ``record`` (sorted keys, defaults explicit, compact)."""
    return orjson.dumps(record_to_obj(record), option=orjson.OPT_SORT_KEYS)
