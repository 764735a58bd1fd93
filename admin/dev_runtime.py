"""The demo tenant runtimes of ``turnout dev``: tiny HTTP servers that pull their config.

A :class:`DemoRuntime` answers every request with its name and the ``GREETING`` of the config
it pulled from the admin (``GET /api/runtime/config``) with the managed token its deployment
was given, then polls that config cheaply with ``If-None-Match`` (a 304 costs no decryption on
its side). When its token is revoked (its deployment archived or rolled back from) it keeps the
last config it had and stops polling — as a real runtime would until it is handed a new token.

Runtime-side code: it speaks to the admin over HTTP only, like any tenant runtime
(``examples/runtime.py`` is the stand-alone version).
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.error
import urllib.request
from typing import Any

import orjson

POLL_SECONDS = 5.0


class DemoRuntime:
    """One demo runtime (``v1``, ``v2``): its server, its token and the config it pulled."""

    def __init__(self, name: str, admin_url: str, poll_seconds: float = POLL_SECONDS) -> None:
        self.name = name
        self.admin_url = admin_url.rstrip("/")
        self.poll_seconds = poll_seconds
        self.config: dict[str, Any] = {}
        self.pulls = 0  # answers with a body (200)
        self.not_modified = 0  # 304s
        self._token = ""
        self._etag: str | None = None
        self._server: asyncio.Server | None = None
        self._poller: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"DemoRuntime({self.name!r}, deployment={self.config.get('deployment_id')!r}, "
            f"pulls={self.pulls}, not_modified={self.not_modified})"
        )

    @property
    def greeting(self) -> str | None:
        env = self.config.get("env") or {}
        value = env.get("GREETING")
        return value if isinstance(value, str) else None

    async def serve(self, host: str, port: int) -> asyncio.Server:
        self._server = await asyncio.start_server(self._handle, host, port)
        return self._server

    async def attach(self, token: str) -> None:
        """Take a new managed token: pull the config with it now, then keep polling."""
        self._token, self._etag = token, None
        await self.pull()
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name=f"runtime-{self.name}-config")

    async def pull(self) -> int:
        """One ``GET /api/runtime/config`` (with ``If-None-Match`` once it has an ETag)."""
        status, etag, body = await asyncio.to_thread(self._get)
        if status == 200:
            self.config, self._etag = orjson.loads(body), etag
            self.pulls += 1
        elif status == 304:
            self.not_modified += 1
        return status

    def _get(self) -> tuple[int, str | None, bytes]:
        req = urllib.request.Request(f"{self.admin_url}/api/runtime/config")
        req.add_header("Authorization", f"Bearer {self._token}")
        if self._etag:
            req.add_header("If-None-Match", self._etag)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.headers.get("etag"), resp.read()
        except urllib.error.HTTPError as err:  # 304 and 4xx arrive here
            return err.code, err.headers.get("etag"), b""

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            with contextlib.suppress(OSError):
                if await self.pull() == 401:
                    return  # revoked: keep serving the last config until a new token comes

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._server is not None:
            self._server.close()

    def answer(self, path: str) -> bytes:
        return orjson.dumps({"runtime": self.name, "greeting": self.greeting, "path": path}) + b"\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v.strip() or 0)
                if length:
                    await reader.readexactly(length)
                body = self.answer(head.split(b" ", 2)[1].decode("latin-1"))
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


def managed_tokens(deploy_answer: bytes) -> dict[str, str]:
    """Service name → the managed token in an app deployment's answer."""
    doc = orjson.loads(deploy_answer)
    return {s["name"]: s["managed_token"]["token"] for s in doc.get("services", [])}
