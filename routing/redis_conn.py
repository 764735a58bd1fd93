"""One way to build a Redis client from a URL, for every process (gateway, admin, CLI).

Accepted URLs (the same for ``--redis`` and ``TURNOUT_REDIS_URL``)::

    redis://[user[:password]@]host[:port][/db][?options]
    rediss://…                                     the same over TLS
    unix://[user[:password]@]/path/to/socket[?db=N]
    redis+sentinel://[user[:password]@]host[:port][,host[:port]…]/service_name[/db][?options]
    rediss+sentinel://…                            TLS to the Sentinels and to the primary

``user``/``password`` are the Redis ACL credentials of the data nodes (percent-encode ``@``,
``:`` and ``/`` in them). Sentinel ports default to 26379, Redis ports to 6379. Options:

* TLS (``rediss`` schemes only): ``ssl_cert_reqs`` (``none``/``optional``/``required``),
  ``ssl_ca_certs``, ``ssl_ca_path``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_password``,
  ``ssl_check_hostname`` (``true``/``false``), ``ssl_ciphers``;
* Sentinel (sentinel schemes only): ``sentinel_username``, ``sentinel_password`` — the
  Sentinels' own credentials, when they have ``requirepass``/ACLs of their own;
* ``client_name`` (``CLIENT SETNAME``).

A Sentinel URL gives a client whose connections ask the Sentinels for the current primary
(``redis.asyncio.sentinel.Sentinel(...).master_for(service)``): after a failover, the next
connection goes to the new primary, and a connection still open to a demoted primary is closed
on its first ``READONLY`` answer. No process needs a restart.

Anything else is refused with :class:`RedisUrlError` naming the part that is wrong. Passwords
never leave this module in clear: :func:`redact_url` is what logs, ``repr`` and error messages
show, and :func:`url_secrets` lists the strings a caller may want to scrub from text it did not
write itself (:func:`scrub`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, unquote

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff

__all__ = [
    "RedisUrl",
    "RedisUrlError",
    "SentinelRedis",
    "connect",
    "parse_redis_url",
    "redact_url",
    "scrub",
    "url_secrets",
]

REDACTED: Final = "***"
_SCHEMES: Final = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")
_TLS_OPTIONS: Final = (
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_password",
    "ssl_check_hostname",
    "ssl_ciphers",
)
_SENTINEL_OPTIONS: Final = ("sentinel_username", "sentinel_password")
_SECRET_OPTIONS: Final = frozenset({"ssl_password", "sentinel_password"})
_CERT_REQS: Final = ("none", "optional", "required")
_BOOLS: Final = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


class RedisUrlError(ValueError):
    """A Redis URL that cannot be used; the message names the part (never a password)."""


@dataclass(frozen=True, slots=True)
class RedisUrl:
    """A parsed Redis URL. ``repr`` and :meth:`redacted` hide every secret."""

    scheme: str
    hosts: tuple[tuple[str, int], ...]  # one for redis/rediss, the Sentinels otherwise
    db: int = 0
    service: str | None = None  # sentinel schemes: the monitored master's name
    path: str | None = None  # unix sockets
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    options: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def tls(self) -> bool:
        return self.scheme.startswith("rediss")

    @property
    def sentinel(self) -> bool:
        return self.scheme.endswith("+sentinel")

    def secrets(self) -> list[str]:
        """Every secret this URL carries (passwords), longest first."""
        found = [self.password or ""] + [self.options.get(k, "") for k in _SECRET_OPTIONS]
        return sorted({s for s in found if s}, key=len, reverse=True)

    def redacted(self) -> str:
        """The URL with every password replaced by ``***`` (safe for logs and answers)."""
        auth = ""
        if self.username or self.password:
            auth = (self.username or "") + (f":{REDACTED}" if self.password else "") + "@"
        if self.scheme == "unix":
            where = self.path or ""
        else:
            where = ",".join(_hostport(h, p) for h, p in self.hosts)
            where += f"/{self.service}/{self.db}" if self.sentinel else f"/{self.db}"
        opts = "&".join(
            f"{k}={REDACTED if k in _SECRET_OPTIONS else v}" for k, v in self.options.items()
        )
        if self.scheme == "unix" and self.db:
            opts = f"db={self.db}" + (f"&{opts}" if opts else "")
        return f"{self.scheme}://{auth}{where}" + (f"?{opts}" if opts else "")

    def __str__(self) -> str:
        return self.redacted()


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_host(text: str, default_port: int, what: str) -> tuple[str, int]:
    if not text:
        raise RedisUrlError(f"{what}: empty host")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise RedisUrlError(f"{what}: bad IPv6 address {text!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
        if ":" in port_text:
            raise RedisUrlError(f"{what}: put IPv6 addresses in brackets: {text!r}")
    if not host:
        raise RedisUrlError(f"{what}: empty host in {text!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise RedisUrlError(f"{what}: port must be 1..65535, not {port_text!r}")
    return host, int(port_text)


def _parse_db(text: str, what: str) -> int:
    if not text.isdigit():
        raise RedisUrlError(f"{what}: database number must be a non-negative integer, not {text!r}")
    return int(text)


def parse_redis_url(url: str) -> RedisUrl:
    """Parse and validate ``url`` (see the module docstring); raises :class:`RedisUrlError`."""
    if not isinstance(url, str) or "://" not in url:
        raise RedisUrlError(
            "not a Redis URL (expected redis://, rediss://, unix:// or redis+sentinel://)"
        )
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme not in _SCHEMES:
        raise RedisUrlError(f"unknown scheme {scheme!r}; use one of {', '.join(_SCHEMES)}")
    # Credentials first, up to the last "@": a password may hold "/", "?", "#" or "," that the
    # user forgot to percent-encode, and no part of it may end up in an error message.
    userinfo, at, rest = rest.rpartition("@")
    username = password = None
    if at:
        user_text, colon, pass_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = (unquote(pass_text) or None) if colon else None
    # urlsplit() cannot read a comma-separated host list; split the other parts by hand.
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise RedisUrlError("a Redis URL has no #fragment")
    rest, _, query = rest.partition("?")
    if scheme == "unix":
        hostlist, slash, path = "", "/", rest  # unix:///run/redis.sock
    else:
        hostlist, slash, path = rest.partition("/")
    options: dict[str, str] = {}
    db_option: str | None = None
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key == "db" and scheme == "unix":
            db_option = value
            continue
        options[key] = value
    _check_options(scheme, options)

    if scheme == "unix":
        sock = unquote(path)
        if not sock.startswith("/"):
            raise RedisUrlError("unix:// needs an absolute socket path (unix:///run/redis.sock)")
        db = _parse_db(db_option, "db option") if db_option is not None else 0
        return RedisUrl(scheme, (), db, None, sock, username, password, options)

    if scheme.endswith("+sentinel"):
        hosts = tuple(
            _parse_host(h.strip(), 26379, f"sentinel {i + 1}")
            for i, h in enumerate(hostlist.split(","))
        )
        parts = path.split("/") if slash else []
        if not parts or not parts[0]:
            raise RedisUrlError(
                "a Sentinel URL names the monitored service: "
                "redis+sentinel://host:26379[,host:26379…]/service_name[/db]"
            )
        if len(parts) > 2 or (len(parts) == 2 and not parts[1]):
            raise RedisUrlError(
                "after the service name only a database number may follow (/service_name/db)"
            )
        service = unquote(parts[0])
        db = _parse_db(parts[1], "database") if len(parts) == 2 else 0
        return RedisUrl(scheme, hosts, db, service, None, username, password, options)

    if "," in hostlist:
        raise RedisUrlError(
            f"{scheme}:// takes one host; list several Sentinels with redis+sentinel://"
        )
    host = _parse_host(hostlist, 6379, "host")
    db = 0
    if slash and path:
        if "/" in path:
            raise RedisUrlError(f"the path of a {scheme}:// URL is only the database number")
        db = _parse_db(path, "database")
    return RedisUrl(scheme, (host,), db, None, None, username, password, options)


def _check_options(scheme: str, options: dict[str, str]) -> None:
    allowed = {"client_name"}
    if scheme.startswith("rediss"):
        allowed.update(_TLS_OPTIONS)
    if scheme.endswith("+sentinel"):
        allowed.update(_SENTINEL_OPTIONS)
    for key, value in options.items():
        if key not in allowed:
            if key in _TLS_OPTIONS:
                raise RedisUrlError(f"option {key!r} needs a TLS scheme (rediss:// …)")
            if key in _SENTINEL_OPTIONS:
                raise RedisUrlError(f"option {key!r} needs a Sentinel URL (redis+sentinel://)")
            raise RedisUrlError(
                f"unknown option {key!r}; known: {', '.join(sorted(allowed))}"
                if allowed
                else f"unknown option {key!r}"
            )
        if key == "ssl_cert_reqs" and value not in _CERT_REQS:
            raise RedisUrlError(f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}")
        if key == "ssl_check_hostname" and value.lower() not in _BOOLS:
            raise RedisUrlError("ssl_check_hostname must be true or false")


def redact_url(url: str) -> str:
    """``url`` with its passwords hidden. Never raises: text that does not parse is shown only
    up to its scheme (it may be a password pasted in the wrong place)."""
    try:
        return parse_redis_url(url).redacted()
    except RedisUrlError:
        scheme = url.partition("://")[0] if "://" in url else ""
        return f"{scheme}://<unparseable URL>" if scheme.isalnum() else "<unparseable URL>"


def url_secrets(url: str | None) -> list[str]:
    """The passwords in ``url`` (none when it does not parse or is None)."""
    if not url:
        return []
    try:
        return parse_redis_url(url).secrets()
    except RedisUrlError:
        return []


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret replaced by ``***``."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


# ---------------------------------------------------------------------- clients


class SentinelRedis(aioredis.Redis):
    """The client :meth:`Sentinel.master_for` returns, closing the Sentinel clients too."""

    # Not "sentinel": that name is the SENTINEL command's method.
    sentinel_manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            manager, self.sentinel_manager = self.sentinel_manager, None
            if manager is not None:
                await manager.aclose()

    def __repr__(self) -> str:
        return f"SentinelRedis({self.connection_pool!r})"


class _Sentinel(Sentinel):
    """redis-py's Sentinel manager with two repairs: discoveries run one at a time (redis-py
    reorders its Sentinel list after awaiting, so concurrent ones can duplicate one Sentinel
    and drop another for good), and the "no primary" error is short enough for a log line
    (redis-py's embeds the full ``repr`` of every Sentinel client it asked)."""

    _discovering: asyncio.Lock | None = None

    async def discover_master(self, service_name: str) -> Any:
        if self._discovering is None:
            self._discovering = asyncio.Lock()
        try:
            async with self._discovering:
                return await super().discover_master(service_name)
        except MasterNotFoundError:
            asked = ", ".join(
                _hostport(str(kw.get("host")), int(kw.get("port", 0)))
                for kw in (c.connection_pool.connection_kwargs for c in self.sentinels)
            )
            raise MasterNotFoundError(
                f"no Sentinel at {asked} names a reachable primary for {service_name!r}"
            ) from None


def _tls_kwargs(u: RedisUrl) -> dict[str, Any]:
    if not u.tls:
        return {}
    out: dict[str, Any] = {"ssl": True}
    for key in _TLS_OPTIONS:
        if key not in u.options:
            continue
        value: Any = u.options[key]
        if key == "ssl_check_hostname":
            value = _BOOLS[value.lower()]
        elif key == "ssl_cert_reqs":
            value = {
                "none": ssl.CERT_NONE,
                "optional": ssl.CERT_OPTIONAL,
                "required": ssl.CERT_REQUIRED,
            }[value]
        out[key] = value
    return out


def _command_retry() -> Retry:
    # Reconnect once or twice inside a call (a pooled connection the server closed, a primary
    # that just moved) and then let the caller's own policy take over: the route table's
    # backoff, the outbox retry timer, the flusher's give-back, the lease's fencing deadline.
    return Retry(ExponentialWithJitterBackoff(cap=0.2, base=0.02), 2)


def connect(
    url: str | RedisUrl,
    *,
    connect_timeout: float = 2.0,
    socket_timeout: float | None = 5.0,
    health_check_interval: int = 0,
) -> aioredis.Redis:
    """A ``redis.asyncio`` client (bytes in, bytes out) for ``url``. Connects lazily: a bad
    address shows on the first command, a bad URL here (:class:`RedisUrlError`). The caller
    owns the client and closes it with ``aclose()`` (a Sentinel client closes its Sentinel
    connections too)."""
    u = parse_redis_url(url) if isinstance(url, str) else url
    common: dict[str, Any] = {
        "username": u.username,
        "password": u.password,
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": socket_timeout,
        "health_check_interval": health_check_interval,
        "decode_responses": False,
        "retry": _command_retry(),
    }
    if "client_name" in u.options:
        common["client_name"] = u.options["client_name"]
    tls = _tls_kwargs(u)
    if u.scheme == "unix":
        return aioredis.Redis(unix_socket_path=u.path, db=u.db, **common)
    if not u.sentinel:
        host, port = u.hosts[0]
        return aioredis.Redis(host=host, port=port, db=u.db, **common, **tls)
    sentinel_kwargs: dict[str, Any] = {
        "username": u.options.get("sentinel_username"),
        "password": u.options.get("sentinel_password"),
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": connect_timeout,
        # A dead Sentinel must cost one refused connect, not a retry ladder: discovery asks
        # the next one.
        "retry": Retry(NoBackoff(), 0),
        **tls,
    }
    assert u.service is not None  # parse_redis_url guarantees it for sentinel schemes
    manager = _Sentinel(list(u.hosts), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    client: SentinelRedis = manager.master_for(
        u.service, redis_class=SentinelRedis, db=u.db, **common, **tls
    )
    client.sentinel_manager = manager
    return client
