"""Gateway configuration: one frozen object built at start-up and passed down."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from routing.redis_conn import RedisUrlError, parse_redis_url
from routing.upstreams import EjectionPolicy

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
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
    write_timeout: float = 30.0
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
        if self.server not in ("native", "uvicorn", "granian"):
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
