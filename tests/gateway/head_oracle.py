"""Today's decisions for a request head, from the pieces the native server used before
``gateway.head``: httptools' ``HttpRequestParser`` with the callbacks and limits of
``gateway/native.py``, its ``_start`` checks, then ``Dispatcher.prepare`` on a route that matches
any host (so every verdict of the head's own is visible, and the forwarded header block).

The differential tests compare :func:`gateway.head.parse_request` with :func:`today`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import httptools

from gateway.config import GatewayConfig
from gateway.dispatch import Dispatcher, Plan
from gateway.errors import (
    BAD_HOST,
    BAD_LENGTH,
    BAD_REQUEST,
    BAD_TE,
    CL_AND_TE,
    HEADERS_TOO_LARGE,
    Answer,
)
from gateway.head import Refused, Rejected, RequestHead, ResponseHead, reference_parse_request
from gateway.headers import (
    PLAIN_CONNECTION,
    R_CONNECTION,
    R_CONTENT_LENGTH,
    R_FORWARD,
    R_TRANSFER_ENCODING,
    R_UPGRADE,
    response_header_class,
)
from gateway.headers import absolute_form as _absolute_form
from routing.compiled import CompiledRoute
from routing.models import decode_record
from routing.store import MemoryRouteStore
from routing.table import RouteTable


class _Limit(Exception):
    pass


class _Callbacks:
    def __init__(self, max_bytes: int, max_headers: int) -> None:
        self.max_bytes = max_bytes
        self.max_headers = max_headers
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.bytes = 0
        self.done = False
        self.method = b""
        self.version = ""
        self.keep_alive = False
        self.parser: httptools.HttpRequestParser | None = None
        self.begun = 0  # >1: past this head's message, an error there is another request's

    def on_message_begin(self) -> None:
        self.begun += 1

    def on_message_complete(self) -> None:
        self.begun += 1  # whatever comes next is another request's

    def on_url(self, url: bytes) -> None:
        if self.begun > 1:
            return
        self.url += url
        self.bytes += len(url)
        if self.bytes > self.max_bytes:
            raise _Limit

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.begun > 1:
            return
        self.headers.append((name, value))
        self.bytes += len(name) + len(value) + 4
        if self.bytes > self.max_bytes or len(self.headers) > self.max_headers:
            raise _Limit

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        if self.begun > 1:
            return
        self.done = True
        self.method = self.parser.get_method()
        self.version = self.parser.get_http_version()
        self.keep_alive = self.parser.should_keep_alive()
        self.upgrade = self.parser.should_upgrade()


@dataclass
class Verdict:
    """What the native server decided for one complete head given in one read."""

    kind: str  # "reject" (parse error), "answer" (a verdict), "plan" (routed), "incomplete"
    status: int = 0
    answer: Answer | None = None
    method: bytes = b""
    target: bytes = b""
    keep_alive: bool = False
    upgrade: bool = False
    block_prefix: bytes | None = (
        b""  # the forwarded lines (the plan's block before X-Forwarded-For)
    )


_TABLE = RouteTable(MemoryRouteStore())
_ROUTE = CompiledRoute(
    decode_record(
        {
            "host": "any.test",
            "version": 1,
            "space_id": "sp",
            "service_id": "svc",
            "policy": {"upgrades": ["websocket", "h2c"], "max_body_bytes": 1 << 40},
            "endpoints": [
                {
                    "path_prefix": "/",
                    "targets": [
                        {
                            "deployment_id": "d",
                            "weight": 10000,
                            "status": "active",
                            "upstreams": ["http://127.0.0.1:9"],
                        }
                    ],
                }
            ],
        }
    ),
    _TABLE.registry,
)
_DISPATCHER = Dispatcher(_TABLE, GatewayConfig())
_HEAD_ANSWERS = (BAD_HOST, BAD_LENGTH, BAD_REQUEST, BAD_TE, CL_AND_TE)


def today(buf: bytes, max_bytes: int, max_headers: int) -> Verdict:
    """Today's decision for the head at the start of ``buf``. When the reference finds a whole
    head, only its bytes are fed: what follows (a body, the next request) is not this head's."""
    ref = reference_parse_request(buf, max_bytes, max_headers)
    if isinstance(ref, RequestHead):
        buf = buf[: ref.end]
    cb = _Callbacks(max_bytes, max_headers)
    parser = httptools.HttpRequestParser(cb)
    cb.parser = parser
    upgraded = False
    try:
        parser.feed_data(buf)
    except httptools.HttpParserUpgrade:
        upgraded = True
    except httptools.HttpParserCallbackError as exc:
        if cb.begun > 1:
            pass  # in the next request's bytes
        elif isinstance(exc.__context__, _Limit) or isinstance(exc.__cause__, _Limit):
            return Verdict("reject", 431, HEADERS_TOO_LARGE)
        else:
            raise
    except httptools.HttpParserError:
        if cb.begun < 2:
            return Verdict("reject", 400, BAD_REQUEST)
    if not cb.done:
        return Verdict("incomplete")
    v = Verdict("plan", method=cb.method, target=cb.url, keep_alive=cb.keep_alive)
    v.upgrade = upgraded
    url = cb.url
    host: bytes | None = None
    if url[:1] != b"/" and not (url == b"*" and cb.method == b"OPTIONS"):
        target = _absolute_form(url)
        if target is None:
            v.kind, v.answer = "answer", BAD_REQUEST
            return v
        host, url = target
    if cb.method == b"CONNECT":
        v.kind, v.answer = "answer", BAD_REQUEST
        return v
    for name, value in cb.headers:  # route every host the dispatcher can normalise
        if name.lower() == b"host" and host is None:
            _TABLE.routes.clear()
            _add_route(value)
    if host is not None:
        _TABLE.routes.clear()
        _add_route(host)
    result = _DISPATCHER.prepare(cb.method, url, host, cb.headers, "192.0.2.1", 0.0)
    if isinstance(result, Plan):
        v.block_prefix = result.header_block[: result.header_block.index(b"X-Forwarded-For: ")]
        if v.block_prefix and result.header_block.find(b"\r\nX-Forwarded-For: ") < 0:
            raise AssertionError("X-Forwarded-For not at a line start")
        return v
    if result[0] in _HEAD_ANSWERS:
        v.kind, v.answer = "answer", result[0]
    else:
        v.block_prefix = None  # a routing answer (no route for the path, ...): no block to see
    return v


def same(a: Verdict, b: Verdict) -> bool:
    """Equal decisions; a routing answer on one side hides the block."""
    if a.block_prefix is None or b.block_prefix is None:
        return dataclasses.replace(a, block_prefix=b"") == dataclasses.replace(b, block_prefix=b"")
    return a == b


def _add_route(raw: bytes) -> None:
    from routing.hostnames import normalize_request_host

    key = normalize_request_host(raw)
    if key is not None:
        _TABLE.routes[key] = _ROUTE


def decided(result: RequestHead | Rejected | None) -> Verdict:
    """The same summary for ``gateway.head``'s result."""
    if result is None:
        return Verdict("incomplete")
    if isinstance(result, Rejected):
        return Verdict("reject", result.answer.status, result.answer)
    v = Verdict(
        "plan",
        method=result.method,
        target=result.target,
        keep_alive=result.keep_alive,
        upgrade=result.upgrade,
    )
    if result.verdict is not None:
        v.kind, v.answer = "answer", result.verdict
        return v
    v.block_prefix = result.kept
    if (
        result.kept_h2 is not None
        and result.upgrade_value is not None
        and _ROUTE.allowed_upgrade(result.upgrade_value) is not None
    ):
        v.block_prefix = result.kept_h2
    return v


# ------------------------------------------------------------------------------ response heads


class _Stop(Exception):
    """Raised from the oracle's on_headers_complete once the final head is decided."""


@dataclass
class ResponseVerdict:
    """What UpstreamConnection decided for the bytes of one read (``buf``)."""

    kind: str  # "incomplete", "refused", "head", or "interim body" (not comparable, see below)
    refusal: tuple[str, str] | None = None
    status: int = 0
    reason: bytes = b""
    version: int = 0
    kept: list[tuple[bytes, bytes]] | None = None
    content_length: bytes | None = None
    body_expected: bool = False
    chunked: bool = False
    close_delimited: bool = False
    keep_alive: bool = False


class _ResponseCallbacks:
    """UpstreamConnection's httptools callbacks for a response head (gateway/upstream.py,
    on_status .. on_headers_complete and _check_upgrade), recording instead of calling a sink."""

    def __init__(
        self, seen: int, max_bytes: int, max_headers: int, head_only: bool, offered: bytes | None
    ) -> None:
        self.seen = seen  # _head_seen: the whole buffer is one read
        self.max_bytes = max_bytes
        self.max_headers = max_headers
        self.head_only = head_only
        self.offered = offered
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.interim_bytes = 0
        self.informational = False
        self.interim_body = False
        self.result: ResponseVerdict | None = None
        self.parser: httptools.HttpResponseParser | None = None

    def on_message_begin(self) -> None:
        # Not in upstream.py: there a final head without a reason keeps the reason of the
        # interim head before it ("HTTP/1.1 200 Continue" to the client). parse_response gives
        # each head its own reason; the oracle does too, to compare everything else.
        self.reason = b""

    def on_status(self, status: bytes) -> None:
        self.reason = status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.interim_body = True  # only reached for an interim head with a body (see _Stop)

    def on_headers_complete(self) -> None:

        assert self.parser is not None
        status = self.parser.get_status_code()
        headers, self.headers = self.headers, []
        if len(headers) > self.max_headers:
            raise _Refused(
                "head_too_large", f"upstream response head has over {self.max_headers} headers"
            )
        if 100 <= status < 200 and status != 101:
            self.informational = True
            self.interim_bytes += _head_size(self.reason, headers)
            return
        if (
            self.seen > self.max_bytes
            and self.interim_bytes + _head_size(self.reason, headers) > self.max_bytes
        ):
            raise _Refused("head_too_large", f"upstream response head over {self.max_bytes} bytes")
        kept: list[tuple[bytes, bytes]] = []
        length: bytes | None = None
        te: bytes | None = None
        conn_tokens: list[bytes] | None = None
        upgrade: bytes | None = None
        for name, value in headers:
            code = response_header_class(name)
            if code == R_FORWARD:
                kept.append((name, value))
            elif code == R_CONTENT_LENGTH:
                length = value
            elif code == R_TRANSFER_ENCODING:
                te = value if te is None else te + b", " + value
            elif code == R_CONNECTION:
                if value not in PLAIN_CONNECTION:
                    conn_tokens = [t.strip().lower() for t in value.split(b",")]
            elif code == R_UPGRADE:
                upgrade = value
        if conn_tokens:
            nominated = {t for t in conn_tokens if t not in (b"close", b"keep-alive", b"upgrade")}
            if nominated:
                kept = [(n, v) for n, v in kept if n.lower() not in nominated]
        if status == 101:
            self._check_upgrade(upgrade, conn_tokens)
            assert upgrade is not None
            kept.append((b"Connection", b"upgrade"))
            kept.append((b"Upgrade", upgrade))
        body_expected = not (self.head_only or status in (204, 304) or status == 101)
        chunked = te is not None
        if te is not None and body_expected and te != b"chunked" and not _only_chunked(te):
            raise _Refused("protocol", f"upstream sent unsupported Transfer-Encoding {te!r}")
        version = self.parser.get_http_version()
        self.result = ResponseVerdict(
            "head",
            status=status,
            reason=self.reason,
            version=int(version[0]) * 10 + int(version[2]),
            kept=kept,
            content_length=None if chunked else length,
            body_expected=body_expected,
            chunked=chunked,
            close_delimited=body_expected and not chunked and length is None,
            keep_alive=self.parser.should_keep_alive(),
        )
        raise _Stop

    def _check_upgrade(self, upgrade: bytes | None, conn_tokens: list[bytes] | None) -> None:
        offered = self.offered
        if offered is None:
            raise _Refused("upgrade", "upstream answered 101 to a request that asked for none")
        if upgrade is None or conn_tokens is None or b"upgrade" not in conn_tokens:
            raise _Refused("upgrade", "upstream 101 without Upgrade and Connection: upgrade")
        wanted = {t.strip().lower() for t in offered.split(b",")}
        for token in upgrade.split(b","):
            if token.strip().lower() not in wanted:
                raise _Refused("upgrade", f"upstream switched to {upgrade!r}, not {offered!r}")


def today_response(
    buf: bytes, max_bytes: int, max_headers: int, head_only: bool, offered: bytes | None
) -> ResponseVerdict:
    """Today's decision for ``buf`` arriving in one read on a connection waiting for its
    response head (UpstreamConnection.data_received: the head limit, the parser, _refusal)."""
    cb = _ResponseCallbacks(len(buf), max_bytes, max_headers, head_only, offered)
    parser = httptools.HttpResponseParser(cb)
    cb.parser = parser
    try:
        parser.feed_data(buf)
    except httptools.HttpParserUpgrade:
        raise AssertionError("upgraded before the final head was decided") from None
    except httptools.HttpParserError as exc:
        if cb.interim_body:
            return ResponseVerdict("interim body")
        if cb.result is not None:
            return cb.result  # _Stop: the head was handed on
        kind, message = _refusal(exc)
        return ResponseVerdict("refused", refusal=(kind, message))
    if cb.interim_body:
        return ResponseVerdict("interim body")
    if len(buf) > max_bytes:
        return ResponseVerdict(
            "refused", refusal=("head_too_large", f"upstream response head over {max_bytes} bytes")
        )
    return ResponseVerdict("incomplete")


def decided_response(result: ResponseHead | Refused | None) -> ResponseVerdict:
    """The same summary for gateway.head.parse_response's result."""
    if result is None:
        return ResponseVerdict("incomplete")
    if isinstance(result, Refused):
        return ResponseVerdict("refused", refusal=(result.kind, result.message))
    return ResponseVerdict(
        "head",
        status=result.status,
        reason=result.reason,
        version=result.version,
        kept=list(result.kept),
        content_length=result.content_length,
        body_expected=result.body_expected,
        chunked=result.chunked,
        close_delimited=result.close_delimited,
        keep_alive=result.keep_alive,
    )


# ---- gateway/upstream.py's helpers of the httptools path, kept verbatim as the oracle's own
# (upstream.py parses with gateway.head.parse_response now).

_STATUS_LINE_BYTES = 17


class _Refused(Exception):
    """Raised from a parser callback: a response the gateway will not pass on."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _head_size(reason: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """A response head's size on the wire (as sent, without obs-fold or extra whitespace)."""
    n = _STATUS_LINE_BYTES + len(reason)
    for name, value in headers:
        n += len(name) + len(value) + 4
    return n


def _refusal(exc: httptools.HttpParserError) -> tuple[str, str]:
    """The ``UpstreamError`` kind and message for a parse that failed."""
    refused = exc.__context__ or exc.__cause__
    if isinstance(refused, _Refused):
        return refused.kind, str(refused)
    return "protocol", f"invalid response: {exc}"


def _only_chunked(te: bytes) -> bool:
    """``Transfer-Encoding`` lists ``chunked`` and no other coding (any case and spacing)."""
    return [c.strip().lower() for c in te.split(b",")] == [b"chunked"]
