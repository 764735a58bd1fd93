"""A tiny raw-socket HTTP/1.1 client for tests that need exact bytes on the wire.

Pipelining, request smuggling, slowloris, ``Expect: 100-continue``, HTTP/1.0: all need control
over what is written when, and a view of exactly what comes back. :class:`RawConnection` sends
bytes and reads whole responses (``Content-Length``, chunked, or close-delimited framing),
with timeouts on every read. Response bodies can be streamed to a callback instead of being
held, for transfers of hundreds of MiB.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self


def first_header(headers: list[tuple[str, str]], name: str) -> str | None:
    """The first value of header ``name`` (case-insensitive) in ``headers``, or None."""
    lname = name.lower()
    for k, v in headers:
        if k.lower() == lname:
            return v
    return None


class ConnectionClosed(Exception):
    """The peer closed the connection before a complete response arrived."""

    def __init__(self, message: str, partial: bytes = b"") -> None:
        super().__init__(message)
        self.partial = partial


@dataclass
class RawResponse:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    body_length: int = 0  # bytes of body received (also when streamed to a sink)
    framing: str = "none"  # content-length | chunked | close | none
    raw_head: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        return first_header(self.headers, name)

    def header_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    def has_header(self, name: str) -> bool:
        return self.header(name) is not None

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return (
            f"RawResponse({self.status} {self.reason!r}, headers={self.headers!r}, "
            f"body={self.body[:200]!r}{'...' if len(self.body) > 200 else ''})"
        )


class RawConnection:
    """One TCP connection to ``host:port``; all reads time out after ``timeout`` seconds."""

    def __init__(self, port: int, host: str = "127.0.0.1", *, timeout: float = 5.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray()
        self.eof = False

    # ------------------------------------------------------------------ writing

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_request(
        self,
        method: str,
        target: str,
        host: str | None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        *,
        version: str = "HTTP/1.1",
    ) -> None:
        self.send(build_request(method, target, host, headers, body, version=version))

    # ------------------------------------------------------------------ reading

    def _fill(self, deadline: float) -> bool:
        """Read more bytes into the buffer; False at EOF. Raises TimeoutError at the deadline."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out reading from the gateway")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(256 * 1024)
        except ConnectionResetError:
            data = b""
        finally:
            self.sock.settimeout(self.timeout)
        if not data:
            self.eof = True
            return False
        self._buf += data
        return True

    def _read_line(self, deadline: float) -> bytes:
        while True:
            i = self._buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self._buf[:i])
                del self._buf[: i + 2]
                return line
            if not self._fill(deadline):
                raise ConnectionClosed("closed while reading a line", bytes(self._buf))

    def _read_exact(
        self, n: int, deadline: float, sink: Callable[[bytes], None] | None, out: bytearray
    ) -> None:
        while n:
            if not self._buf and not self._fill(deadline):
                raise ConnectionClosed(f"closed with {n} body bytes missing", bytes(out))
            take = min(n, len(self._buf))
            piece = bytes(self._buf[:take])
            del self._buf[:take]
            n -= take
            if sink is not None:
                sink(piece)
            else:
                out += piece

    def read_head(self, timeout: float | None = None) -> RawResponse:
        """Read one response head (status line and headers) only."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            i = self._buf.find(b"\r\n\r\n")
            if i >= 0:
                break
            if not self._fill(deadline):
                raise ConnectionClosed("closed before a response head", bytes(self._buf))
        raw = bytes(self._buf[: i + 4])
        del self._buf[: i + 4]
        lines = raw[:-4].decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
        return RawResponse(version, int(code), reason, headers, raw_head=raw)

    def read_response(
        self,
        *,
        method: str = "GET",
        timeout: float | None = None,
        sink: Callable[[bytes], None] | None = None,
    ) -> RawResponse:
        """Read one complete response; interim 1xx responses (not 101) are returned as they are,
        so a caller expecting ``100 Continue`` sees it."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        resp = self.read_head(timeout=deadline - time.monotonic())
        return self.read_body(resp, method=method, timeout=deadline - time.monotonic(), sink=sink)

    def read_body(
        self,
        resp: RawResponse,
        *,
        method: str = "GET",
        timeout: float | None = None,
        sink: Callable[[bytes], None] | None = None,
    ) -> RawResponse:
        """Read the body of ``resp`` (a head from :meth:`read_head`) by its framing; raises
        :class:`ConnectionClosed` if the connection ends before the framing does."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        body = bytearray()
        count = [0]

        def counted(piece: bytes) -> None:
            count[0] += len(piece)
            if sink is not None:
                sink(piece)

        use_sink: Callable[[bytes], None] | None = counted if sink is not None else None
        status = resp.status
        te = (resp.header("transfer-encoding") or "").lower()
        cl = resp.header("content-length")
        if method == "HEAD" or 100 <= status < 200 or status in (204, 304):
            resp.framing = "none"
        elif "chunked" in te:
            resp.framing = "chunked"
            while True:
                line = self._read_line(deadline)
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while True:
                        trailer = self._read_line(deadline)
                        if not trailer:
                            break
                        name, _, value = trailer.decode("latin-1").partition(":")
                        resp.trailers.append((name, value.strip()))
                    break
                self._read_exact(size, deadline, use_sink, body)
                if self._read_line(deadline) != b"":
                    raise AssertionError("chunk not followed by CRLF")
        elif cl is not None:
            resp.framing = "content-length"
            self._read_exact(int(cl), deadline, use_sink, body)
        else:
            resp.framing = "close"
            while True:
                if self._buf:
                    piece = bytes(self._buf)
                    self._buf.clear()
                    if use_sink is not None:
                        use_sink(piece)
                    else:
                        body += piece
                if not self._fill(deadline):
                    break
        resp.body = bytes(body)
        resp.body_length = count[0] if sink is not None else len(body)
        return resp

    def read_exact(self, n: int, timeout: float | None = None) -> bytes:
        """Exactly ``n`` raw bytes (e.g. WebSocket frames after a 101)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        out = bytearray()
        self._read_exact(n, deadline, None, out)
        return bytes(out)

    def read_until_close(self, timeout: float | None = None) -> bytes:
        """Everything until the peer closes (raises TimeoutError if it does not)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while self._fill(deadline):
            pass
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def closed_by_peer(self, timeout: float = 2.0) -> bool:
        """True when the peer closes within ``timeout`` with no further bytes; False on timeout.
        Raises AssertionError if bytes arrive instead."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
        except TimeoutError:
            return False
        if self._buf:
            raise AssertionError(f"unexpected bytes before close: {bytes(self._buf[:200])!r}")
        return True

    @property
    def buffered(self) -> bytes:
        return bytes(self._buf)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def build_request(
    method: str,
    target: str,
    host: str | None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes | None = None,
    *,
    version: str = "HTTP/1.1",
) -> bytes:
    """Request bytes; ``Content-Length`` is added for a body unless the headers frame it."""
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    hdrs = list(headers or [])
    names = {k.lower() for k, _ in hdrs}
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        hdrs.append(("Content-Length", str(len(body))))
    lines += [f"{k}: {v}" for k, v in hdrs]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def chunked(pieces: list[bytes]) -> bytes:
    """A chunked body (with the last chunk) made of ``pieces``."""
    out = bytearray()
    for piece in pieces:
        if piece:
            out += b"%x\r\n%b\r\n" % (len(piece), piece)
    out += b"0\r\n\r\n"
    return bytes(out)


def request(
    port: int,
    method: str,
    target: str,
    host: str | None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes | None = None,
    *,
    timeout: float = 5.0,
    version: str = "HTTP/1.1",
) -> RawResponse:
    """One request on a fresh connection, closed afterwards."""
    with RawConnection(port, timeout=timeout) as conn:
        conn.send_request(method, target, host, headers, body, version=version)
        return conn.read_response(method=method)
