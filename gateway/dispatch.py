"""The transport-free dispatch core: host → record → endpoint → target → plan or answer.

Both front-ends (native and ASGI) call :meth:`Dispatcher.prepare` once per request with the
request line and headers as ``bytes``; it returns a :class:`Plan` (where to forward, with the
rewritten header block) or an :class:`~gateway.errors.Answer`. Nothing here does I/O.

Header rules (spec "Forwarding"), both computed in one pass over the request headers:

* hop-by-hop headers (``Connection``, ``Keep-Alive``, ``Proxy-*``, ``TE``, ``Trailer``,
  ``Transfer-Encoding``, ``Upgrade`` unless upgrading) and every header named in ``Connection``
  are dropped; framing (``Content-Length`` / chunked) is re-emitted by the front-end;
* client-supplied internal headers (every ``X-Turnout-*``, ``X-Forwarded-Host``) are dropped,
  then ``X-Forwarded-For`` (appended), ``X-Forwarded-Proto``, ``X-Forwarded-Host``,
  ``X-Request-Id`` (the client's when it is a sane token of at most 128 chars),
  ``X-Turnout-Space``, ``X-Turnout-Service`` and ``X-Turnout-Deployment`` are set;
* ``Host`` is forwarded unchanged.
"""

from __future__ import annotations

import ipaddress
import os
import random
from typing import Final, Protocol

from gateway.config import GatewayConfig, Network
from gateway.errors import (
    BAD_HOST,
    BAD_LENGTH,
    BAD_TE,
    CL_AND_TE,
    NO_ROUTE,
    NO_UPSTREAM,
    NOT_FOUND,
    PAYLOAD_TOO_LARGE,
    PAYMENT_REQUIRED,
    SUSPENDED,
    Answer,
)
from gateway.headers import (
    H_CONNECTION,
    H_CONTENT_LENGTH,
    H_DROP,
    H_EXPECT,
    H_FORWARD,
    H_HOST,
    H_OVERRIDE,
    H_TRANSFER_ENCODING,
    H_UPGRADE,
    H_X_FORWARDED_FOR,
    H_X_FORWARDED_PROTO,
    H_X_REQUEST_ID,
    HEAD_CHUNKED,
    HEAD_EXPECT_CONTINUE,
    HEAD_RARE,
    HEAD_REFRAMED,
    PLAIN_CONNECTION,
    request_header_class,
)
from routing.compiled import (
    STICKY_COOKIE,
    STICKY_HEADER,
    STICKY_NONE,
    CompiledEndpoint,
    CompiledRoute,
    CompiledTarget,
)
from routing.flat import find_route
from routing.hostnames import normalize_request_host
from routing.table import RouteTable
from routing.upstreams import Replica

_REQUEST_ID_OK: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"
# Connection tokens that are options, not header names, or that name headers we must keep.
_NOT_NOMINABLE: Final = frozenset({b"close", b"keep-alive", b"upgrade", b"host"})


# RequestHead.summary: (method, target, path, host, hostkey, kept, content_length, flags,
# match_path)
HeadSummary = tuple[bytes, bytes, bytes, bytes | None, bytes | None, bytes, int | None, int, bytes]


class ParsedHead(Protocol):
    """What the native front-end and :meth:`Dispatcher.prepare_head` read of a parsed request
    head (:class:`gateway.head.RequestHead`, or its compiled twin: a protocol, so either
    passes): ``end``, ``summary`` on every request, the rest only under ``HEAD_RARE``."""

    @property
    def end(self) -> int: ...
    @property
    def kept_h2(self) -> bytes | None: ...
    @property
    def upgrade_value(self) -> bytes | None: ...
    @property
    def xff(self) -> bytes | None: ...
    @property
    def xfproto(self) -> bytes | None: ...
    @property
    def cookie(self) -> bytes | None: ...
    @property
    def override(self) -> bytes | None: ...
    @property
    def request_id(self) -> bytes | None: ...
    @property
    def verdict(self) -> Answer | None: ...
    @property
    def verdict_rid(self) -> bytes | None: ...
    @property
    def summary(self) -> HeadSummary: ...
    def header_value(self, lname: bytes) -> bytes | None: ...


class Plan:
    """Where and how to forward one request. Built once per request by :meth:`prepare`."""

    __slots__ = (
        "attempts",
        "chunked",
        "content_length",
        "endpoint",
        "expect_continue",
        "header_block",
        "host",
        "method",
        "path",
        "reframed",
        "replica",
        "request_id",
        "route",
        "target",
        "upgrade",
    )

    method: bytes
    path: bytes
    host: bytes
    route: CompiledRoute
    endpoint: CompiledEndpoint
    target: CompiledTarget
    request_id: bytes
    header_block: bytes
    chunked: bool
    content_length: int | None
    expect_continue: bool
    upgrade: bytes | None
    reframed: bool

    def __init__(self) -> None:
        self.replica: Replica | None = None
        self.attempts = 0

    def request_head(self, replica: Replica) -> bytes:
        """Request line for ``replica`` (its base path prefixed) plus the header block."""
        base = replica.base_path
        return b"%b %b%b HTTP/1.1\r\n%b" % (self.method, base, self.path, self.header_block)

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def retryable(self, sent: bool) -> bool:
        """Spec retry rule: nothing reached the upstream, or an idempotent method without body;
        never a request with a body once any byte left; bounded by ``policy.retries``."""
        if self.attempts > self.route.policy.retries:
            return False
        if not sent:
            return True
        return self.method in _IDEMPOTENT and not self.has_body

    def __repr__(self) -> str:
        return f"Plan({self.method!r} {self.host!r}{self.path!r} -> {self.target!r})"


_IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class RequestIds:
    """Cheap unique request ids: a random per-process prefix and a hex counter.

    ``<12 hex>-<counter in hex, at least 3 digits>``. The counter's low 12 bits come from a
    precomputed table and the rest is re-encoded once per 4 096 ids, so an id is one
    concatenation (a formatted int per id cost ~1k instructions, 2 % of a request)."""

    __slots__ = ("_head", "_n", "_prefix")

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex().encode()
        self._n = 0
        self._head = self._prefix + b"-"

    def next(self) -> bytes:
        n = self._n + 1
        self._n = n
        low = n & 0xFFF
        if low == 0:
            self._head = self._prefix + b"-%x" % (n >> 12)
        return self._head + _LOW_HEX[low]


_LOW_HEX: Final = tuple(b"%03x" % i for i in range(0x1000))


class Dispatcher:
    """Turns a request head into a :class:`Plan` or an :class:`Answer`."""

    __slots__ = ("clock", "ids", "proto", "rng", "table", "trusted")

    def __init__(
        self,
        table: RouteTable,
        config: GatewayConfig,
        *,
        rng: random.Random | None = None,
        proto: bytes = b"http",
    ) -> None:
        self.table = table
        self.trusted: tuple[Network, ...] = config.trusted_proxies
        self.ids = RequestIds()
        self.rng = rng or random.Random()
        self.proto = proto

    def request_id(self, client_value: bytes | None) -> bytes:
        if (
            client_value
            and len(client_value) <= 128
            and not client_value.translate(None, _REQUEST_ID_OK)
        ):
            return client_value
        return self.ids.next()

    def prepare(
        self,
        method: bytes,
        path: bytes,
        host: bytes | None,
        headers: list[tuple[bytes, bytes]],
        peer: str,
        now: float,
        *,
        strict_framing: bool = True,
        peer_b: bytes | None = None,
    ) -> Plan | tuple[Answer, bytes]:
        """Resolve one request. ``path`` is the request target (path and query, origin-form).
        ``peer_b`` is ``peer`` encoded, when the caller keeps it per connection.

        Returns a plan, or an answer with the request id to send it with."""
        # One pass: everything the decision needs, and the headers that go upstream.
        kept: list[bytes] = []
        conn_tokens: list[bytes] | None = None
        content_length: bytes | None = None
        te: bytes | None = None
        xff: bytes | None = None
        xfproto: bytes | None = None
        req_id: bytes | None = None
        override: bytes | None = None
        expect = False
        upgrade: bytes | None = None
        cookie: bytes | None = None
        header_host: bytes | None = None
        for name, value in headers:
            code = request_header_class(name)
            if code == H_FORWARD:
                kept += (name, b": ", value, b"\r\n")  # joined once, below
            elif code == H_DROP:
                pass
            elif code == H_CONTENT_LENGTH:
                if content_length is not None and content_length != value:
                    return BAD_LENGTH, self.request_id(req_id)
                content_length = value
            elif code == H_TRANSFER_ENCODING:
                te = value if te is None else te + b", " + value
            elif code == H_CONNECTION:
                if value not in PLAIN_CONNECTION:  # keep-alive/close nominate nothing
                    conn_tokens = (conn_tokens or []) + [
                        t.strip().lower() for t in value.split(b",")
                    ]
            elif code == H_X_FORWARDED_FOR:
                xff = value if xff is None else xff + b", " + value
            elif code == H_X_REQUEST_ID:
                req_id = value
            elif code == H_EXPECT:
                expect = value.lower() == b"100-continue"
            elif code == H_UPGRADE:
                upgrade = value
            elif code == H_HOST:
                if header_host is not None:
                    return BAD_HOST, self.request_id(req_id)  # RFC 9112 §3.2
                header_host = value
                kept += (b"Host", b": ", value, b"\r\n")
            elif code == H_X_FORWARDED_PROTO:
                xfproto = value
            elif code == H_OVERRIDE:
                override = value.strip()
            else:  # H_COOKIE
                cookie = value if cookie is None else cookie + b"; " + value
                kept += (name, b": ", value, b"\r\n")

        rid = self.request_id(req_id)
        if host is None:
            host = header_host
        elif host != header_host:
            # RFC 9112 §3.2.2: an absolute-form target's authority replaces the Host header;
            # the upstream must see the host the request was routed by, never another one.
            kept = _drop_nominated(kept, {b"host"})
            kept += (b"Host", b": ", host, b"\r\n")
        if host is None:
            return BAD_HOST, rid
        hostkey = normalize_request_host(host)
        if hostkey is None:
            return BAD_HOST, rid

        # Framing. RFC 9112 §6.3: CL with TE is a smuggling vector; the native server refuses.
        chunked = False
        length = 0
        if te is not None:
            if content_length is not None and strict_framing:
                return CL_AND_TE, rid
            codings = [c.strip().lower() for c in te.split(b",")]
            if codings[-1] != b"chunked":
                return BAD_TE, rid
            chunked = True
        elif content_length is not None:
            if not content_length.isdigit() or len(content_length) > 18:
                return BAD_LENGTH, rid
            length = int(content_length)

        # Connection-nominated headers go; HTTP2-Settings only unless the upgrade is allowed.
        conn_upgrade = conn_tokens is not None and b"upgrade" in conn_tokens
        kept_h2: bytes | None = None
        if conn_tokens:
            nominated = {t for t in conn_tokens if t not in _NOT_NOMINABLE}
            if nominated:
                if b"http2-settings" in nominated and upgrade is not None and conn_upgrade:
                    nominated.discard(b"http2-settings")
                    kept_h2 = b"".join(_drop_nominated(kept, nominated))
                    nominated.add(b"http2-settings")
                kept = _drop_nominated(kept, nominated)
        return self._plan(
            method,
            path,
            None,
            host,
            hostkey,
            rid,
            b"".join(kept),
            kept_h2,
            chunked,
            length if content_length is not None else None,
            te is not None and content_length is not None,
            expect,
            upgrade if conn_upgrade else None,
            xff,
            xfproto,
            cookie,
            override,
            headers,
            None,
            peer,
            peer_b,
            now,
        )

    def prepare_head(
        self, head: ParsedHead, summary: HeadSummary, peer: str, peer_b: bytes, now: float
    ) -> Plan | tuple[Answer, bytes]:
        """:meth:`prepare` for a head parsed in one call (:func:`gateway.head.parse_request`):
        the header pass, Host checks, framing and the forwarded lines are already done.
        ``summary`` is ``head.summary``; the head's other fields are read only when its
        ``HEAD_RARE`` flag says one of them is set."""
        method, _, path, host, hostkey, kept, content_length, flags, match_path = summary
        if flags & HEAD_RARE:
            verdict = head.verdict
            if verdict is not None:
                return verdict, self.request_id(head.verdict_rid)
            rid = self.request_id(head.request_id)
            kept_h2 = head.kept_h2
            upgrade = head.upgrade_value
            xff = head.xff
            xfproto = head.xfproto
            cookie = head.cookie
            override = head.override
        else:
            rid = self.ids.next()
            kept_h2 = upgrade = xff = xfproto = cookie = override = None
        if hostkey is None or host is None:
            return BAD_HOST, rid  # unreachable: the head has a verdict then
        return self._plan(
            method,
            path,
            match_path,
            host,
            hostkey,
            rid,
            kept,
            kept_h2,
            bool(flags & HEAD_CHUNKED),
            content_length,
            bool(flags & HEAD_REFRAMED),
            bool(flags & HEAD_EXPECT_CONTINUE),
            upgrade,
            xff,
            xfproto,
            cookie,
            override,
            None,
            head,
            peer,
            peer_b,
            now,
        )

    def _plan(
        self,
        method: bytes,
        path: bytes,
        match_path: bytes | None,
        host: bytes,
        hostkey: bytes,
        rid: bytes,
        kept: bytes,
        kept_h2: bytes | None,
        chunked: bool,
        content_length: int | None,
        reframed: bool,
        expect: bool,
        upgrade: bytes | None,
        xff: bytes | None,
        xfproto: bytes | None,
        cookie: bytes | None,
        override: bytes | None,
        headers: list[tuple[bytes, bytes]] | None,
        head: ParsedHead | None,
        peer: str,
        peer_b: bytes | None,
        now: float,
    ) -> Plan | tuple[Answer, bytes]:
        """Route, select and assemble: what both entry points share once the head is read.
        ``upgrade`` is the Upgrade value when Connection nominates "upgrade"; ``kept`` the
        forwarded lines (Host included, nominated ones dropped) and ``kept_h2`` the same with
        HTTP2-Settings kept, used when the route allows the (h2c) upgrade."""
        route = find_route(self.table.routes, hostkey, self.table.cold)
        if route is None:
            return NOT_FOUND, rid
        if route.blocked is not None:
            return (PAYMENT_REQUIRED if route.blocked == "payment_required" else SUSPENDED), rid
        if match_path is None:
            qpos = path.find(b"?")  # not `b"?" in path`: bytes.__contains__ tries int() first
            # and pays for a formatted TypeError each time
            match_path = path if qpos < 0 else path[:qpos]
        endpoint = route.match(method, match_path)
        if endpoint is None:
            return NO_ROUTE, rid
        length = content_length if content_length is not None else 0
        if length > route.policy.max_body_bytes:
            return PAYLOAD_TOO_LARGE, rid

        if peer_b is None:
            peer_b = peer.encode()  # once: the sticky key and X-Forwarded-For both use it
        client_ip = self.client_ip(peer, peer_b, xff)
        target = self._select(route, endpoint, client_ip, headers, head, cookie, override)
        replica = target.next_replica(now)
        if replica is None:
            return NO_UPSTREAM, rid

        upgrade_line = b"Connection: upgrade\r\n"
        if upgrade is not None:
            # only to protocols the route allows (policy.upgrades): h2c is opt-in
            upgrade = route.allowed_upgrade(upgrade)
            if upgrade is not None and kept_h2 is not None:
                # RFC 9113 §3.2 (h2c): the settings go with the upgrade, hop-by-hop again.
                kept = kept_h2
                upgrade_line = b"Connection: upgrade, HTTP2-Settings\r\n"

        xff_out = peer_b if xff is None else xff + b", " + peer_b
        proto = xfproto if (xfproto is not None and self._trusted(peer)) else self.proto
        if upgrade is not None:
            framing = upgrade_line + b"Upgrade: " + upgrade + b"\r\n\r\n"
        elif chunked:
            framing = b"Transfer-Encoding: chunked\r\n\r\n"
        elif content_length is not None:
            framing = b"Content-Length: %d\r\n\r\n" % length
        else:
            framing = b"\r\n"

        plan = Plan()
        plan.method = method
        plan.path = path
        plan.host = hostkey
        plan.route = route
        plan.endpoint = endpoint
        plan.target = target
        plan.replica = replica
        plan.request_id = rid
        # one allocation (compiled, a literal format is one build)
        plan.header_block = (
            b"%bX-Forwarded-For: %b\r\nX-Forwarded-Proto: %b\r\nX-Forwarded-Host: %b\r\n"
            b"X-Request-Id: %b\r\nX-Turnout-Space: %b\r\nX-Turnout-Service: %b\r\n"
            b"X-Turnout-Deployment: %b\r\n%b"
        ) % (
            kept,
            xff_out,
            proto,
            host,
            rid,
            route.space_b,
            route.service_b,
            target.deployment_b,
            framing,
        )
        plan.chunked = chunked
        plan.content_length = content_length
        plan.expect_continue = expect
        plan.upgrade = upgrade
        plan.reframed = reframed
        return plan

    def _select(
        self,
        route: CompiledRoute,
        endpoint: CompiledEndpoint,
        client_ip: bytes,
        headers: list[tuple[bytes, bytes]] | None,
        head: ParsedHead | None,
        cookie: bytes | None,
        override: bytes | None,
    ) -> CompiledTarget:
        kind = route.sticky_kind
        key: bytes | None
        if kind == STICKY_NONE:
            key = None
        elif kind == STICKY_HEADER:
            wanted = route.sticky_name
            found = head.header_value(wanted) if head is not None else None
            if headers is not None:
                for name, value in headers:
                    if name.lower() == wanted:
                        found = value
                        break
            key = client_ip if found is None else found
        elif kind == STICKY_COOKIE:
            key = _cookie_value(cookie, route.sticky_name) or client_ip
        else:
            key = client_ip
        return route.select(endpoint, key, override, self.rng)

    def _trusted(self, peer: str) -> bool:
        if not self.trusted:
            return False
        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)

    def client_ip(self, peer: str, peer_b: bytes, xff: bytes | None) -> bytes:
        """The client address: the peer, or — only behind configured trusted proxies — the
        right-most address in ``X-Forwarded-For`` that is not itself a trusted proxy."""
        if xff is None or not self.trusted or not self._trusted(peer):
            return peer_b
        for part in reversed(xff.split(b",")):
            candidate = part.strip().decode("latin-1")
            if not self._trusted(candidate):
                try:
                    ipaddress.ip_address(candidate)
                except ValueError:
                    break
                return candidate.encode()
        return peer_b


def _drop_nominated(kept: list[bytes], nominated: set[bytes]) -> list[bytes]:
    """``kept`` holds (name, ": ", value, CRLF) runs; drop the runs whose name is nominated."""
    out: list[bytes] = []
    for i in range(0, len(kept), 4):
        if kept[i].lower() not in nominated:
            out += kept[i : i + 4]
    return out


def _cookie_value(cookie: bytes | None, name: bytes) -> bytes | None:
    if not cookie:
        return None
    for part in cookie.split(b";"):
        k, sep, v = part.strip().partition(b"=")
        if sep and k == name:
            return v.strip(b'"') or None
    return None
