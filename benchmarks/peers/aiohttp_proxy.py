"""Peer: a plain aiohttp reverse proxy (server + pooled ClientSession), written as an aiohttp
user would, with the same basic header work (X-Forwarded-For, request id)."""

from __future__ import annotations

import argparse
import uuid

import aiohttp
from aiohttp import web

HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer"}


def make_app(upstream: str) -> web.Application:
    async def on_startup(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            auto_decompress=False,
        )

    async def on_cleanup(app: web.Application) -> None:
        await app["session"].close()

    async def handler(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        headers["X-Forwarded-For"] = request.remote or ""
        headers["X-Request-Id"] = uuid.uuid4().hex
        body = await request.read()
        async with request.app["session"].request(
            request.method, upstream + request.path_qs, headers=headers, data=body or None
        ) as resp:
            out = web.Response(status=resp.status, body=await resp.read())
            for k, v in resp.headers.items():
                if k.lower() not in HOP and k.lower() != "content-length":
                    out.headers[k] = v
            return out

    app = web.Application()
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    args = ap.parse_args()
    import uvloop

    uvloop.install()
    web.run_app(
        make_app(args.upstream),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=lambda *_: print(f"ready {args.port}", flush=True),
    )
