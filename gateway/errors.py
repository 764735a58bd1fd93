"""The gateway's answers (spec: "Gateway answers"), as exceptions and prebuilt bytes.

Every answer is JSON ``{"error": {"code", "message", "request_id"}}`` with ``X-Request-Id``.
They are produced in exactly one place per front-end from :class:`Answer` values; which
answer an upstream failure gets is :mod:`gateway.forwarding`'s table.
"""

from __future__ import annotations

import enum
from typing import Final

import orjson


class GatewayError(Exception):
    """Base of the gateway's exceptions."""


class UpstreamErrorKind(enum.StrEnum):
    """What went wrong talking to an upstream (``gateway.forwarding.ANSWERS`` maps each to the
    client's answer)."""

    CONNECT = "connect"  # the connection could not be made
    TIMEOUT = "timeout"  # connect, response head or read idle deadline passed
    RESET = "reset"  # the upstream closed or reset the connection
    CLOSED = "closed"  # the gateway gave up on the exchange (e.g. the request body too large)
    POOL = "pool"  # no connection could be had (pool wait, shutdown)
    PROTOCOL = "protocol"  # an invalid response
    HEAD_TOO_LARGE = "head_too_large"  # a response head over the limits
    UPGRADE = "upgrade"  # a 101 the request did not ask for


class UpstreamError(GatewayError):
    """Talking to an upstream failed; ``kind`` says how (:class:`UpstreamErrorKind`, or its
    string value)."""

    def __init__(self, kind: str, message: str, *, sent: bool = False, reused: bool = False):
        self.kind = UpstreamErrorKind(kind)
        self.sent = sent  # whether any request byte may have reached the upstream
        self.reused = reused  # it happened on a kept-alive connection (maybe stale)
        super().__init__(message)

    @property
    def timed_out(self) -> bool:
        """A deadline passed (the request counts as a timeout: 504)."""
        return self.kind is UpstreamErrorKind.TIMEOUT


class Answer:
    """A response the gateway gives itself: status, error code, message."""

    __slots__ = ("close", "code", "message", "status")

    def __init__(self, status: int, code: str, message: str, *, close: bool = False) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.close = close

    def body(self, request_id: bytes) -> bytes:
        return orjson.dumps(
            {
                "error": {
                    "code": self.code,
                    "message": self.message,
                    "request_id": request_id.decode("latin-1"),
                }
            }
        )

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.code!r})"


REASONS: Final[dict[int, bytes]] = {
    100: b"Continue",
    101: b"Switching Protocols",
    200: b"OK",
    201: b"Created",
    202: b"Accepted",
    204: b"No Content",
    206: b"Partial Content",
    301: b"Moved Permanently",
    302: b"Found",
    303: b"See Other",
    304: b"Not Modified",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    401: b"Unauthorized",
    402: b"Payment Required",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    409: b"Conflict",
    411: b"Length Required",
    412: b"Precondition Failed",
    413: b"Content Too Large",
    414: b"URI Too Long",
    417: b"Expectation Failed",
    422: b"Unprocessable Content",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}

NOT_FOUND: Final = Answer(404, "not_found", "no route for this host")
NO_ROUTE: Final = Answer(404, "no_route", "no route for this path and method")
PAYMENT_REQUIRED: Final = Answer(402, "payment_required", "the space is over its quota")
SUSPENDED: Final = Answer(503, "suspended", "the service is suspended")
NO_UPSTREAM: Final = Answer(503, "no_upstream", "no healthy upstream for the deployment")
BAD_GATEWAY: Final = Answer(502, "bad_gateway", "the upstream could not be reached")
BAD_GATEWAY_RESPONSE: Final = Answer(502, "bad_gateway", "the upstream sent an invalid response")
UPSTREAM_HEADER_TOO_LARGE: Final = Answer(
    502, "upstream_header_too_large", "the upstream's response head is over the gateway's limits"
)
# The client connection is closed after it: the upstream claimed to switch protocols.
BAD_GATEWAY_UPGRADE: Final = Answer(
    502,
    "bad_gateway",
    "the upstream switched to a protocol the request did not ask for",
    close=True,
)
GATEWAY_TIMEOUT: Final = Answer(504, "gateway_timeout", "the upstream did not answer in time")
PAYLOAD_TOO_LARGE: Final = Answer(413, "payload_too_large", "request body too large", close=True)
HEADERS_TOO_LARGE: Final = Answer(431, "headers_too_large", "request headers too large", close=True)
BAD_REQUEST: Final = Answer(400, "bad_request", "malformed request", close=True)
BAD_HOST: Final = Answer(400, "bad_request", "missing or malformed Host header", close=True)
CL_AND_TE: Final = Answer(
    400, "bad_request", "both Content-Length and Transfer-Encoding", close=True
)
BAD_LENGTH: Final = Answer(400, "bad_request", "invalid Content-Length", close=True)
BAD_TE: Final = Answer(501, "not_implemented", "unsupported Transfer-Encoding", close=True)
