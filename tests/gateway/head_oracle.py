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
from gateway.head import Rejected, RequestHead, reference_parse_request
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
