"""ASGI message helpers shared by the HTTP exchange and the WebSocket proxy: the request target,
framing an HTTP/2 request for an HTTP/1.1 upstream, the gateway's own answers, and the one
reusable wake-up future a request's coroutine waits on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from gateway import wsframes
from gateway.errors import (
    Answer,
)

if TYPE_CHECKING:
    from gateway.asgi.app import GatewayApp

log = logging.getLogger("turnout.gateway.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_LAST_CHUNK: Final = b"0\r\n\r\n"
JSON_TYPE: Final = (b"content-type", b"application/json")
CONNECTION_CLOSE: Final = (b"connection", b"close")
_SAFE_PATH: Final = "/!$&'()*+,;=:@-._~"

# =============================================================================== helpers


def request_target(scope: Scope) -> bytes:
    """Origin-form request target: the raw path (or the quoted path) and the query string."""
    raw = scope.get("raw_path")
    path: bytes = raw if raw else quote(scope["path"], safe=_SAFE_PATH).encode("ascii")
    query: bytes = scope.get("query_string") or b""
    return path + b"?" + query if query else path


async def frame_unframed(
    headers: list[tuple[bytes, bytes]], receive: Receive
) -> tuple[list[tuple[bytes, bytes]], Message | None]:
    """HTTP/2 and /3 need no length header; upstream HTTP/1.1 does. Peek at the first body
    message: a whole body gets ``Content-Length``, a longer one is sent chunked."""
    for name, _ in headers:
        lname = name.lower()
        if lname == b"content-length" or lname == b"transfer-encoding":
            return headers, None
    first = await receive()
    if first["type"] != "http.request":
        return headers, first
    body: bytes = first.get("body", b"")
    if first.get("more_body", False):
        return [*headers, (b"transfer-encoding", b"chunked")], first
    if body:
        return [*headers, (b"content-length", b"%d" % len(body))], first
    return headers, first


async def send_answer(
    send: Send, answer: Answer, request_id: bytes, *, head_only: bool = False, close: bool = False
) -> int:
    """One of the gateway's own JSON answers; returns the body length."""
    body = answer.body(request_id)
    headers = [JSON_TYPE, (b"content-length", b"%d" % len(body)), (b"x-request-id", request_id)]
    if answer.close or close:
        headers.append(CONNECTION_CLOSE)
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head_only else body})
    return len(body)


async def ws_reject_answer(scope: Scope, send: Send, answer: Answer, request_id: bytes) -> None:
    """Refuse a WebSocket with one of the gateway's answers."""
    body = answer.body(request_id)
    headers = [JSON_TYPE, (b"content-length", b"%d" % len(body)), (b"x-request-id", request_id)]
    await ws_reject(scope, send, answer.status, headers, body)


async def ws_reject(
    scope: Scope, send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    """Refuse a WebSocket before accepting it: an HTTP response where the server supports the
    ``websocket.http.response`` extension, else a close with code 1011."""
    with contextlib.suppress(OSError):
        if "websocket.http.response" in (scope.get("extensions") or {}):
            await send(
                {"type": "websocket.http.response.start", "status": status, "headers": headers}
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": wsframes.CLOSE_INTERNAL_ERROR})


# =============================================================================== one request


class Waiting:
    """One reusable wake-up future for a request's coroutine (shared by HTTP and WebSocket):
    callbacks from the protocol objects call ``_wake``; the coroutine awaits ``_wait``."""

    __slots__ = ("waiter",)
    waiter: asyncio.Future[None] | None
    app: GatewayApp

    async def _wait(self) -> None:
        waiter = self.waiter = self.app.loop.create_future()
        try:
            await waiter
        finally:
            self.waiter = None

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
