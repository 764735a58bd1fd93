"""Gateway configuration: one frozen object built at start-up and passed down.

One source for every setting: :data:`SETTINGS` names each value's flag (``turnout gateway``,
:mod:`gateway.launcher`), its ``TURNOUT_*`` variable (:func:`config_from_env`, what the ASGI
workers read) and its one parser; the defaults are :class:`GatewayConfig`'s.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final

from routing.redis_conn import RedisUrlError, parse_redis_url
from routing.upstreams import EjectionPolicy

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
SERVERS: Final = ("native", "uvicorn", "granian")
_AT_LEAST_ONE = (
    "max_header_bytes",
    "max_headers",
    "max_response_header_bytes",
    "max_response_headers",
)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    listen_host: str = "0.0.0.0"
    listen_port: int = 8080
    workers: int = 1
    server: str = "native"  # native | uvicorn | granian
    # None: in-process store (embedded mode). May carry a password: not in repr.
    redis_url: str | None = field(default=None, repr=False)
    redis_prefix: str = "turnout"
    snapshot_path: str | None = None
    # memory: every worker decodes the whole table; flat: the snapshot file is a flat table
    # memory-mapped by every worker (routing/flat.py), with a bounded per-worker hot cache
    route_table: str = "memory"
    hot_cache: int = 65_536
    internal_host: str = "127.0.0.1"
    internal_port: int = 9901  # 0 disables the internal listener
    # edge limits (nginx-like defaults)
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0  # whole request head must arrive within this (slowloris)
    keepalive_timeout: float = 75.0  # idle client keep-alive
    drain_timeout: float = 30.0
    high_water: int = 256 * 1024  # pause reading above this much buffered
    # upstream response heads (nginx-like: the request side's limits; over -> 502)
    max_response_header_bytes: int = 64 * 1024  # status line + headers, interim 1xx included
    max_response_headers: int = 100  # per response head
    response_header_timeout: float = 30.0  # request sent -> final head; capped by the read timeout
    # upstream pool
    pool_max_per_origin: int = 512
    pool_wait_timeout: float = 5.0
    pool_idle_timeout: float = 60.0
    ejection: EjectionPolicy = field(default_factory=EjectionPolicy)
    # client identity
    trusted_proxies: tuple[Network, ...] = ()
    # counters and logs
    flush_interval: float = 1.0
    counters_max_keys: int = 100_000
    access_log: bool = False
    access_log_sample: float = 1.0
    sweep_interval: float = 0.1

    def __post_init__(self) -> None:
        if self.server not in SERVERS:
            raise ValueError(f"server must be native, uvicorn or granian, not {self.server!r}")
        if self.route_table not in ("memory", "flat"):
            raise ValueError(f"route_table must be memory or flat, not {self.route_table!r}")
        if self.route_table == "flat" and not self.snapshot_path:
            raise ValueError("--route-table flat needs --snapshot (the file all workers map)")
        if self.hot_cache < 1:
            raise ValueError("hot_cache must be at least 1")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if not 0.0 <= self.access_log_sample <= 1.0:
            raise ValueError("access_log_sample must be within 0..1")
        for name in _AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not self.response_header_timeout > 0:
            raise ValueError("response_header_timeout must be positive")
        if self.redis_url is not None:
            try:
                parse_redis_url(self.redis_url)
            except RedisUrlError as exc:
                raise ValueError(f"--redis / TURNOUT_REDIS_URL: {exc}") from None


def parse_networks(values: list[str] | tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip())


# ================================================================ one parser per value
#
# Each parser takes the text of a flag or of a TURNOUT_* variable and returns the value or raises
# ValueError with a message that does not name the setting: the caller prefixes the flag or the
# variable name. The CLI (gateway/launcher.py) and the environment (config_from_env, what the
# ASGI workers read) go through the same ones, with the defaults of GatewayConfig.

_DEFAULTS: Final = GatewayConfig()
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})
_OFF: Final = frozenset({"off", "", "0"})


def parse_hostport(value: str, default_host: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or a bare ``port`` (on ``default_host``)."""
    host, sep, port = value.strip().rpartition(":")
    if not sep:
        host, port = default_host, value.strip()
    host = host.strip("[]") or default_host
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"invalid port in {value!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return host, number


def parse_listen(value: str) -> tuple[str, int]:
    return parse_hostport(value, _DEFAULTS.listen_host)


def parse_internal(value: str) -> tuple[str, int]:
    """The internal listener's address, or ``off`` (port 0)."""
    if value.strip().lower() in _OFF:
        return _DEFAULTS.internal_host, 0
    return parse_hostport(value, _DEFAULTS.internal_host)


def parse_workers(value: str) -> int:
    """``N`` or ``auto`` (one per CPU this process may run on, as nginx's ``worker_processes``)."""
    if value.strip() == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"expected a positive integer or 'auto', got {value!r}") from None
    if number < 1:
        raise ValueError(f"must be at least 1, got {number}")
    return number


def parse_int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"expected an integer, got {value!r}") from None


def parse_at_least_one(value: str) -> int:
    number = parse_int(value)
    if number < 1:
        raise ValueError(f"must be at least 1, got {number}")
    return number


def parse_number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"expected a number, got {value!r}") from None


def parse_seconds(value: str) -> float:
    """A positive, finite number of seconds."""
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"expected seconds, got {value!r}") from None
    if not number > 0 or number == math.inf:
        raise ValueError(f"must be a positive number, got {value}")
    return number


def parse_bool(value: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected 0 or 1, not {value!r}")


def parse_text(value: str) -> str:
    return value.strip()


def parse_route_table(value: str) -> str:
    text = value.strip()
    if text not in ("memory", "flat"):
        raise ValueError(f"expected memory or flat, not {value!r}")
    return text


def parse_proxies(value: str) -> tuple[Network, ...]:
    """Comma-separated CIDRs (a bare address is its /32 or /128)."""
    return parse_networks(value.split(","))


@dataclass(frozen=True, slots=True)
class Setting:
    """One configurable value: its flag, its variable, its parser, its text form."""

    name: str  # a GatewayConfig field, or a part of one (listen, internal, eject_*)
    flag: str
    env: str
    parse: Callable[[str], Any]
    dump: Callable[[Any], str]
    help: str = ""


def _hostport_text(value: tuple[str, int]) -> str:
    return f"{value[0]}:{value[1]}"


def _internal_text(value: tuple[str, int]) -> str:
    return _hostport_text(value) if value[1] else "off"


SETTINGS: Final[tuple[Setting, ...]] = (
    Setting("listen", "--listen", "TURNOUT_LISTEN", parse_listen, _hostport_text, "address:port"),
    Setting(
        "workers",
        "--workers",
        "TURNOUT_WORKERS",
        parse_workers,
        str,
        "worker processes: N or 'auto' = one per CPU",
    ),
    Setting("server", "--server", "TURNOUT_SERVER", parse_text, str, "native, uvicorn or granian"),
    Setting(
        "redis_url",
        "--redis",
        "TURNOUT_REDIS_URL",
        parse_text,
        str,
        "redis://[user:pw@]host:port/db, rediss://…, or "
        "redis+sentinel://[user:pw@]host:port[,host:port…]/service[/db]",
    ),
    Setting("redis_prefix", "--redis-prefix", "TURNOUT_REDIS_PREFIX", parse_text, str),
    Setting(
        "snapshot_path",
        "--snapshot",
        "TURNOUT_SNAPSHOT",
        parse_text,
        str,
        "last-known-good route snapshot file",
    ),
    Setting(
        "route_table",
        "--route-table",
        "TURNOUT_ROUTE_TABLE",
        parse_route_table,
        str,
        "memory: each worker decodes the whole table; flat: the --snapshot file is a flat "
        "table shared by all workers through mmap, hot routes cached per worker",
    ),
    Setting(
        "hot_cache",
        "--hot-cache",
        "TURNOUT_HOT_CACHE",
        parse_at_least_one,
        str,
        "flat mode: compiled routes each worker keeps (names the file lacks: apart, up to 4096)",
    ),
    Setting(
        "internal",
        "--internal",
        "TURNOUT_INTERNAL",
        parse_internal,
        _internal_text,
        "health/metrics listener; worker N uses port+N; 'off' disables",
    ),
    Setting(
        "trusted_proxies",
        "--trusted-proxy",
        "TURNOUT_TRUSTED_PROXIES",
        parse_proxies,
        lambda nets: ",".join(str(n) for n in nets),
        "honour X-Forwarded-For from these peers (CIDR, repeatable; the variable: comma-separated)",
    ),
    Setting("header_timeout", "--header-timeout", "TURNOUT_HEADER_TIMEOUT", parse_number, repr),
    Setting(
        "keepalive_timeout", "--keepalive-timeout", "TURNOUT_KEEPALIVE_TIMEOUT", parse_number, repr
    ),
    Setting("drain_timeout", "--drain-timeout", "TURNOUT_DRAIN_TIMEOUT", parse_number, repr),
    Setting(
        "max_header_bytes",
        "--max-header-bytes",
        "TURNOUT_MAX_HEADER_BYTES",
        parse_at_least_one,
        str,
    ),
    Setting("max_headers", "--max-headers", "TURNOUT_MAX_HEADERS", parse_at_least_one, str),
    Setting(
        "max_response_header_bytes",
        "--max-response-header-bytes",
        "TURNOUT_MAX_RESPONSE_HEADER_BYTES",
        parse_at_least_one,
        str,
        "upstream response head size limit, interim 1xx heads included",
    ),
    Setting(
        "max_response_headers",
        "--max-response-headers",
        "TURNOUT_MAX_RESPONSE_HEADERS",
        parse_at_least_one,
        str,
        "headers per upstream response head",
    ),
    Setting(
        "response_header_timeout",
        "--response-header-timeout",
        "TURNOUT_RESPONSE_HEADER_TIMEOUT",
        parse_seconds,
        repr,
        "seconds from request sent to the upstream's final response head; never longer than "
        "the route's read timeout",
    ),
    Setting(
        "pool_max_per_origin",
        "--pool-max-per-origin",
        "TURNOUT_POOL_MAX_PER_ORIGIN",
        parse_int,
        str,
    ),
    Setting(
        "eject_after",
        "--eject-after",
        "TURNOUT_EJECT_AFTER",
        parse_int,
        str,
        "consecutive connect failures",
    ),
    Setting("eject_seconds", "--eject-seconds", "TURNOUT_EJECT_SECONDS", parse_number, repr),
    Setting("flush_interval", "--flush-interval", "TURNOUT_FLUSH_INTERVAL", parse_number, repr),
    Setting(
        "access_log",
        "--access-log",
        "TURNOUT_ACCESS_LOG",
        parse_bool,
        lambda on: "1" if on else "0",
        "one JSON line per request",
    ),
    Setting(
        "access_log_sample",
        "--access-log-sample",
        "TURNOUT_ACCESS_LOG_SAMPLE",
        parse_number,
        repr,
    ),
)
SETTING: Final[dict[str, Setting]] = {s.name: s for s in SETTINGS}


def default_value(name: str) -> Any:
    """The parsed default of a setting, from GatewayConfig's defaults."""
    d = _DEFAULTS
    if name == "listen":
        return (d.listen_host, d.listen_port)
    if name == "internal":
        return (d.internal_host, d.internal_port)
    if name == "eject_after":
        return d.ejection.max_fails
    if name == "eject_seconds":
        return d.ejection.eject_seconds
    return getattr(d, name)


def config_from_values(values: Mapping[str, Any]) -> GatewayConfig:
    """A config from parsed setting values (by :class:`Setting` name; the others default)."""

    def get(name: str) -> Any:
        return values[name] if name in values else default_value(name)

    listen_host, listen_port = get("listen")
    internal_host, internal_port = get("internal")
    fields = {
        s.name: get(s.name)
        for s in SETTINGS
        if s.name not in ("listen", "internal", "eject_after", "eject_seconds")
    }
    return GatewayConfig(
        listen_host=listen_host,
        listen_port=listen_port,
        internal_host=internal_host,
        internal_port=internal_port,
        ejection=EjectionPolicy(get("eject_after"), get("eject_seconds")),
        **fields,
    )


def config_from_env(environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """The configuration from the ``TURNOUT_*`` variables of :data:`SETTINGS` (what
    :func:`export_config` writes; the ASGI app reads it once, at startup). Unset or blank: the
    default (``TURNOUT_REDIS_URL`` unset: the in-process store, i.e. an empty table)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for s in SETTINGS:
        raw = env.get(s.env)
        if raw is None or not raw.strip():
            continue
        try:
            values[s.name] = s.parse(raw)
        except ValueError as exc:
            raise ValueError(f"{s.env}: {exc}") from None
    return config_from_values(values)


def export_config(config: GatewayConfig, environ: MutableMapping[str, str] | None = None) -> None:
    """Write ``config`` as the ``TURNOUT_*`` variables :func:`config_from_env` reads back."""
    env: MutableMapping[str, str] = os.environ if environ is None else environ
    for s in SETTINGS:
        value = setting_value(config, s.name)
        if value is None:
            env.pop(s.env, None)
        else:
            env[s.env] = s.dump(value)


def setting_value(config: GatewayConfig, name: str) -> Any:
    if name == "listen":
        return (config.listen_host, config.listen_port)
    if name == "internal":
        return (config.internal_host, config.internal_port)
    if name == "eject_after":
        return config.ejection.max_fails
    if name == "eject_seconds":
        return config.ejection.eject_seconds
    return getattr(config, name)
