"""A fast fixed-response HTTP/1.1 upstream for benchmarks (used when nginx is not installed).

``/small`` answers 13 bytes, ``/64k`` answers 64 KiB; keep-alive; pipelining-safe.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast

import httptools
import uvloop

SMALL = b"Hello, world\n"
BIG = b"x" * 65536
RESP_SMALL = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
    len(SMALL),
    SMALL,
)
RESP_BIG = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BIG),
    BIG,
)


NAMED: bytes | None = None  # --name: /small answers the name instead (scenario runs)


class Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_complete(self) -> None:
        if self.transport is not None:
            if self.url.startswith(b"/64k"):
                self.transport.write(RESP_BIG)
            elif NAMED is not None:
                self.transport.write(NAMED)
            else:
                self.transport.write(RESP_SMALL)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, "127.0.0.1", port, backlog=4096)
    print(f"ready {port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", default=None)
    ns = ap.parse_args()
    if ns.name:
        body = ns.name.encode() + b"\n"
        NAMED = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    uvloop.run(main(ns.port))
