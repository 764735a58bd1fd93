"""A real upstream HTTP/1.1 server for end-to-end tests: plain asyncio streams, no frameworks.

Run it as a subprocess (the usual way, see :class:`UpstreamProcess`)::

    python -m tests.support.upstream --port 0 --name v1 [--mode normal|drop|stale]
                                     [--idle-close-ms N] [--fail-every N] [--delay-ms N]

It prints ``ready <port>`` on stdout once listening (``--port 0`` picks a free port).

Paths (any method; a ``HEAD`` gets the same head as ``GET`` and no body):

* ``/echo`` and every unknown path — JSON: method, target (path and query as received),
  headers as a list of ``[name, value]`` in arrival order, body length and sha256, server name;
* ``/upload`` — the request body's length and sha256 (streamed; never held whole);
* ``/status/<code>`` — that status;
* ``/slow/<ms>`` — sleeps, then answers;
* ``/stream/<n>/<ms>`` — chunked ``text/event-stream``: ``n`` events ``data: i\\n\\n``, one
  every ``ms``;
* ``/bytes/<n>`` — ``n`` bytes with ``Content-Length``, written in 64 KiB pieces;
* ``/close-mid`` — ``Content-Length: 1000``, 10 bytes, then the connection is closed;
* ``/hop`` — a response carrying hop-by-hop headers (``Connection: X-Up``, ``X-Up``,
  ``Keep-Alive``) next to an ordinary ``X-Normal`` header;
* ``/drop`` — reads the request, then closes the connection without answering;
* ``/ws`` — WebSocket echo (``101`` with ``Sec-WebSocket-Accept``; frames echoed unmasked);
* ``/ws-refuse/<code>`` — answers even a WebSocket upgrade with an ordinary ``<code>`` response
  (``refused <code>\n``, ``Content-Length``), keeping the connection open as for any keep-alive
  request: what a server that does not speak WebSocket on that path does;
* ``/conncount`` — ``{"connections": <TCP connections accepted so far>}``;
* ``/__seen`` — control: every request seen so far (``[method, target]``), never logged itself
  and answered in every mode.

Modes: ``normal``; ``drop`` (every request but the control paths is read and then the
connection closed without an answer: the request reached the server, no response came back);
``stale`` (the first request on a connection is answered with keep-alive, any later request on
that connection is read and dropped, which is what a server that closed an idle keep-alive
connection at the moment a request arrived looks like). ``--idle-close-ms N`` closes a
kept-alive connection that stays idle for N ms (a short server-side keep-alive timeout).
``--fail-every N`` answers every N-th request (control paths aside) with a 500 instead
(``N = 5``: exactly 20 % errors); ``--delay-ms N`` answers every such request N ms late — a bad
or a slow version of a service, for the rollout gate's tests.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PIECE = 64 * 1024
_STATUS_RE = re.compile(r"^/status/(\d{3})$")
_SLOW_RE = re.compile(r"^/slow/(\d+)$")
_STREAM_RE = re.compile(r"^/stream/(\d+)/(\d+)$")
_BYTES_RE = re.compile(r"^/bytes/(\d+)$")
_WS_REFUSE_RE = re.compile(r"^/ws-refuse/(\d{3})$")
REASONS = {
    101: "Switching Protocols",
    200: "OK",
    201: "Created",
    204: "No Content",
    304: "Not Modified",
    400: "Bad Request",
    404: "Not Found",
    500: "Internal Server Error",
}


class BadRequest(Exception):
    """The request could not be parsed: answer 400 and close."""


class Request:
    __slots__ = ("body_len", "body_sha", "headers", "method", "path", "target", "version")

    def __init__(
        self, method: str, target: str, version: str, headers: list[tuple[str, str]]
    ) -> None:
        self.method = method
        self.target = target
        self.path = target.split("?", 1)[0]
        self.version = version
        self.headers = headers
        self.body_len = 0
        self.body_sha = hashlib.sha256().hexdigest()

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    def tokens(self, name: str) -> set[str]:
        lname = name.lower()
        out: set[str] = set()
        for k, v in self.headers:
            if k.lower() == lname:
                out.update(t.strip().lower() for t in v.split(",") if t.strip())
        return out


class UpstreamServer:
    """The server itself; :func:`main` runs one on a port."""

    def __init__(
        self,
        name: str,
        mode: str = "normal",
        idle_close_ms: int = 0,
        fail_every: int = 0,
        delay_ms: int = 0,
    ) -> None:
        self.name = name
        self.mode = mode
        self.idle_close = idle_close_ms / 1000 if idle_close_ms > 0 else None
        self.fail_every = fail_every
        self.delay = delay_ms / 1000
        self.connections = 0
        self.seen: list[list[str]] = []

    # ------------------------------------------------------------------ connection loop

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                timeout = self.idle_close if served else None
                try:
                    async with asyncio.timeout(timeout):
                        head = await reader.readuntil(b"\r\n\r\n")
                except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                try:
                    req = _parse_head(head)
                    await self._read_body(req, reader)
                except BadRequest:
                    writer.write(_response(400, [], b"bad request\n", close=True))
                    await writer.drain()
                    return
                control = req.path.startswith("/__")
                if not control:
                    self.seen.append([req.method, req.target])
                    if (
                        self.mode == "drop"
                        or (self.mode == "stale" and served)
                        or (req.path == "/drop")
                    ):
                        return  # read, never answered: the connection just closes
                served += 1
                if not control and self.delay:
                    await asyncio.sleep(self.delay)
                if not control and self.fail_every and len(self.seen) % self.fail_every == 0:
                    close = "close" in req.tokens("connection") or req.version == "HTTP/1.0"
                    body = f"injected failure ({self.name})\n".encode()
                    writer.write(
                        _response(500, [("Content-Type", "text/plain")], body, close=close)
                    )
                    await writer.drain()
                    if close:
                        return
                    continue
                keep = await self._respond(req, reader, writer)
                if not keep:
                    return
        except (ConnectionError, OSError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()
                await writer.wait_closed()

    async def _read_body(self, req: Request, reader: asyncio.StreamReader) -> None:
        sha = hashlib.sha256()
        total = 0
        te = req.tokens("transfer-encoding")
        if te:
            if "chunked" not in te:
                raise BadRequest
            while True:
                line = await reader.readuntil(b"\r\n")
                size_s = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_s, 16)
                except ValueError:
                    raise BadRequest from None
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                        pass
                    break
                left = size
                while left:
                    data = await reader.read(min(left, PIECE))
                    if not data:
                        raise asyncio.IncompleteReadError(b"", left)
                    sha.update(data)
                    total += len(data)
                    left -= len(data)
                if await reader.readexactly(2) != b"\r\n":
                    raise BadRequest
        else:
            cl = req.header("content-length")
            if cl is not None:
                if not cl.strip().isdigit():
                    raise BadRequest
                left = int(cl)
                while left:
                    data = await reader.read(min(left, PIECE))
                    if not data:
                        raise asyncio.IncompleteReadError(b"", left)
                    sha.update(data)
                    total += len(data)
                    left -= len(data)
        req.body_len = total
        req.body_sha = sha.hexdigest()

    # ------------------------------------------------------------------ handlers

    async def _respond(
        self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer ``req``; returns whether the connection stays open."""
        close = "close" in req.tokens("connection") or req.version == "HTTP/1.0"
        head_only = req.method == "HEAD"
        path = req.path

        if path == "/ws":
            await self._websocket(req, reader, writer)
            return False
        if path == "/conncount":
            body = json.dumps({"connections": self.connections, "name": self.name}).encode()
            await self._send(
                writer, 200, [("Content-Type", "application/json")], body, close, head_only
            )
            return not close
        if path == "/__seen":
            body = json.dumps(
                {"requests": self.seen, "connections": self.connections, "name": self.name}
            ).encode()
            await self._send(
                writer, 200, [("Content-Type", "application/json")], body, close, head_only
            )
            return not close
        if path == "/upload":
            body = json.dumps(
                {"length": req.body_len, "sha256": req.body_sha, "name": self.name}
            ).encode()
            await self._send(
                writer, 200, [("Content-Type", "application/json")], body, close, head_only
            )
            return not close
        m = _STATUS_RE.match(path)
        if m:
            code = int(m.group(1))
            body = b"" if code in (204, 304) else f"status {code}\n".encode()
            await self._send(writer, code, [("Content-Type", "text/plain")], body, close, head_only)
            return not close
        m = _WS_REFUSE_RE.match(path)
        if m:
            code = int(m.group(1))
            body = f"refused {code}\n".encode()
            await self._send(writer, code, [("Content-Type", "text/plain")], body, close, head_only)
            return not close
        m = _SLOW_RE.match(path)
        if m:
            await asyncio.sleep(int(m.group(1)) / 1000)
            await self._send(
                writer, 200, [("Content-Type", "text/plain")], b"slow\n", close, head_only
            )
            return not close
        m = _STREAM_RE.match(path)
        if m:
            n, ms = int(m.group(1)), int(m.group(2))
            head = _head(
                200,
                [
                    ("Content-Type", "text/event-stream"),
                    ("Cache-Control", "no-cache"),
                    ("Transfer-Encoding", "chunked"),
                ],
                close,
            )
            writer.write(head)
            await writer.drain()
            if head_only:
                return not close
            for i in range(n):
                if ms:
                    await asyncio.sleep(ms / 1000)
                event = f"data: {i}\n\n".encode()
                writer.write(b"%x\r\n%b\r\n" % (len(event), event))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return not close
        m = _BYTES_RE.match(path)
        if m:
            n = int(m.group(1))
            writer.write(
                _head(
                    200,
                    [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))],
                    close,
                )
            )
            if not head_only:
                piece = _pattern(PIECE)
                left = n
                while left:
                    k = min(left, PIECE)
                    writer.write(piece if k == PIECE else piece[:k])
                    left -= k
                    await writer.drain()
            await writer.drain()
            return not close
        if path == "/close-mid":
            writer.write(
                _head(200, [("Content-Type", "text/plain"), ("Content-Length", "1000")], False)
            )
            writer.write(b"0123456789")
            await writer.drain()
            return False
        if path == "/hop":
            headers = [
                ("Content-Type", "text/plain"),
                ("Connection", "X-Up"),
                ("X-Up", "1"),
                ("Keep-Alive", "timeout=5"),
                ("X-Normal", "kept"),
            ]
            await self._send(writer, 200, headers, b"hop\n", close, head_only, raw_connection=True)
            return not close
        # /echo and anything else
        body = json.dumps(
            {
                "name": self.name,
                "method": req.method,
                "target": req.target,
                "version": req.version,
                "headers": [[k, v] for k, v in req.headers],
                "body_length": req.body_len,
                "body_sha256": req.body_sha,
            }
        ).encode()
        await self._send(
            writer, 200, [("Content-Type", "application/json")], body, close, head_only
        )
        return not close

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        close: bool,
        head_only: bool,
        *,
        raw_connection: bool = False,
    ) -> None:
        hdrs = list(headers)
        if status not in (204, 304):
            hdrs.append(("Content-Length", str(len(body))))
        writer.write(_head(status, hdrs, close, raw_connection=raw_connection))
        if not head_only and status not in (204, 304):
            writer.write(body)
        await writer.drain()

    async def _websocket(
        self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        key = req.header("sec-websocket-key")
        if key is None or "websocket" not in req.tokens("upgrade"):
            writer.write(_response(400, [], b"not a websocket upgrade\n", close=True))
            await writer.drain()
            return
        accept = base64.b64encode(hashlib.sha1(key.strip().encode() + WS_GUID).digest()).decode()
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept.encode() + b"\r\n\r\n"
        )
        await writer.drain()
        while True:
            try:
                b0, b1 = await reader.readexactly(2)
            except asyncio.IncompleteReadError:
                return
            opcode = b0 & 0x0F
            masked = b1 & 0x80
            length = b1 & 0x7F
            if length == 126:
                length = int.from_bytes(await reader.readexactly(2), "big")
            elif length == 127:
                length = int.from_bytes(await reader.readexactly(8), "big")
            mask = await reader.readexactly(4) if masked else b"\0\0\0\0"
            payload = bytearray(await reader.readexactly(length))
            for i in range(length):
                payload[i] ^= mask[i % 4]
            if opcode == 0x9:  # ping -> pong
                writer.write(ws_frame(0xA, bytes(payload)))
            elif opcode == 0x8:  # close -> echo close, done
                writer.write(ws_frame(0x8, bytes(payload)))
                await writer.drain()
                return
            else:
                writer.write(ws_frame(opcode, bytes(payload), fin=bool(b0 & 0x80)))
            await writer.drain()


# ---------------------------------------------------------------------- wire helpers


def _parse_head(head: bytes) -> Request:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
        raise BadRequest from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest
        headers.append((name, value.strip()))
    return Request(parts[0], parts[1], parts[2], headers)


def _head(
    status: int, headers: list[tuple[str, str]], close: bool, *, raw_connection: bool = False
) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if close and not raw_connection:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _response(status: int, headers: list[tuple[str, str]], body: bytes, *, close: bool) -> bytes:
    return _head(status, [*headers, ("Content-Length", str(len(body)))], close) + body


_PATTERNS: dict[int, bytes] = {}


def _pattern(n: int) -> bytes:
    """Deterministic filler: byte i is ``i % 251`` (a prime, so pieces do not line up)."""
    data = _PATTERNS.get(n)
    if data is None:
        data = _PATTERNS[n] = bytes(i % 251 for i in range(n))
    return data


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """One WebSocket frame (masked when ``mask`` is given, as a client must)."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    mbit = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes([b0, mbit | n])
    elif n < 1 << 16:
        head = bytes([b0, mbit | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, mbit | 127]) + n.to_bytes(8, "big")
    if mask is None:
        return head + payload
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def expected_bytes_sha256(n: int) -> str:
    """sha256 of what ``/bytes/<n>`` sends."""
    sha = hashlib.sha256()
    piece = _pattern(PIECE)
    left = n
    while left:
        k = min(left, PIECE)
        sha.update(piece if k == PIECE else piece[:k])
        left -= k
    return sha.hexdigest()


# ---------------------------------------------------------------------- entry point


async def serve(port: int, server: UpstreamServer, host: str = "127.0.0.1") -> None:
    srv = await asyncio.start_server(server.handle, host, port, limit=1 << 20, backlog=1024)
    bound = srv.sockets[0].getsockname()[1]
    print(f"ready {bound}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with srv:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.support.upstream")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--name", default="upstream")
    p.add_argument("--mode", choices=("normal", "drop", "stale"), default="normal")
    p.add_argument("--idle-close-ms", type=int, default=0)
    p.add_argument("--fail-every", type=int, default=0)
    p.add_argument("--delay-ms", type=int, default=0)
    args = p.parse_args(argv)
    server = UpstreamServer(
        args.name, args.mode, args.idle_close_ms, args.fail_every, args.delay_ms
    )
    asyncio.run(serve(args.port, server, args.host))
    return 0


# ---------------------------------------------------------------------- fixture helper


class UpstreamProcess:
    """The upstream server as a child process on a free loopback port.

    ``start()`` waits for its ``ready <port>`` line; ``stop()`` terminates it. Its stderr goes to
    a file (see :meth:`stderr_text`) so a chatty server can never block on a full pipe.
    """

    START_TIMEOUT = 10.0

    def __init__(
        self,
        name: str = "v1",
        *,
        mode: str = "normal",
        idle_close_ms: int = 0,
        workdir: Path | None = None,
        fail_every: int = 0,
        delay_ms: int = 0,
    ) -> None:
        self.name = name
        self.mode = mode
        self.idle_close_ms = idle_close_ms
        self.fail_every = fail_every
        self.delay_ms = delay_ms
        self._workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr_path: Path | None = None
        self._stderr: IO[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> Self:
        import tempfile

        root = Path(__file__).resolve().parents[2]
        base = self._workdir or Path(tempfile.mkdtemp(prefix="turnout-upstream-"))
        base.mkdir(parents=True, exist_ok=True)
        self._stderr_path = base / f"upstream-{self.name}-{os.getpid()}-{id(self)}.err"
        self._stderr = self._stderr_path.open("wb")
        cmd = [
            sys.executable,
            "-m",
            "tests.support.upstream",
            "--port",
            "0",
            "--name",
            self.name,
            "--mode",
            self.mode,
            "--idle-close-ms",
            str(self.idle_close_ms),
            "--fail-every",
            str(self.fail_every),
            "--delay-ms",
            str(self.delay_ms),
        ]
        self._proc = subprocess.Popen(
            cmd,
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        line = _readline_with_timeout(self._proc, self.START_TIMEOUT)
        if not line.startswith(b"ready "):
            self.stop()
            raise RuntimeError(
                f"upstream {self.name} did not start (got {line!r}):\n{self.stderr_text()}"
            )
        self.port = int(line.split()[1])
        return self

    def stderr_text(self) -> str:
        if self._stderr_path is None:
            return ""
        try:
            return self._stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<UpstreamProcess {self.name} {self.mode} 127.0.0.1:{self.port}>"


def _readline_with_timeout(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert proc.stdout is not None
    result: list[bytes] = []
    stdout = proc.stdout

    def reader() -> None:
        result.append(stdout.readline())

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout)
    deadline = time.monotonic() + 0.1
    while not result and time.monotonic() < deadline:  # pragma: no cover - race with join
        time.sleep(0.01)
    return result[0] if result else b""


def fetch_json(port: int, path: str, timeout: float = 5.0) -> Any:
    """GET ``path`` from a server on 127.0.0.1 directly (not through the gateway)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: direct\r\nConnection: close\r\n\r\n".encode())
        chunks: list[bytes] = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    _, _, body = raw.partition(b"\r\n\r\n")
    return json.loads(body)


if __name__ == "__main__":
    sys.exit(main())


@contextlib.contextmanager
def started_upstreams(
    workdir: Path, *specs: str | tuple[str, dict[str, Any]]
) -> Iterator[list[UpstreamProcess]]:
    """Start one :class:`UpstreamProcess` per spec (a name, or ``(name, kwargs)``), in order;
    stop every one that started, whatever happens."""
    started: list[UpstreamProcess] = []
    try:
        for spec in specs:
            name, kw = (spec, {}) if isinstance(spec, str) else spec
            started.append(UpstreamProcess(name, workdir=workdir, **kw).start())
        yield started
    finally:
        for proc in started:
            proc.stop()
