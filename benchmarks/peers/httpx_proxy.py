"""Peer: Starlette + httpx reverse proxy, written plainly (run under uvicorn)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

UPSTREAM = os.environ.get("PEER_UPSTREAM", "http://127.0.0.1:9000")
HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer", "host"}


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.client = httpx.AsyncClient(
        base_url=UPSTREAM, limits=httpx.Limits(max_connections=None)
    )
    yield
    await app.state.client.aclose()


async def proxy(request: Request) -> Response:
    headers = {k: v for k, v in request.headers.items() if k not in HOP}
    headers["x-forwarded-for"] = request.client.host if request.client else ""
    headers["x-request-id"] = uuid.uuid4().hex
    resp = await request.app.state.client.request(
        request.method,
        request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        headers=headers,
        content=await request.body(),
    )
    out_headers = {
        k: v for k, v in resp.headers.items() if k.lower() not in HOP | {"content-length"}
    }
    return Response(resp.content, status_code=resp.status_code, headers=out_headers)


app = Starlette(
    routes=[Route("/{path:path}", proxy, methods=["GET", "POST", "PUT", "DELETE"])],
    lifespan=lifespan,
)
