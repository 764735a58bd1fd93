"""The native gateway's wire handling since issue 13 step 4 (heads parsed by
:mod:`gateway.head` in one call, bodies by their framing and :mod:`gateway.chunked`), attacked
from both sides with raw sockets, split at every byte or at several offsets across reads.

One native gateway serves the module (``--pool-max-per-origin 1``: a desynced upstream
connection would be the only one there is; small request and response head limits; a 1 s
header timeout). The origin is :class:`ScriptedUpstream`, a raw-socket server in a thread of the
test process: it records every connection, every request it read on it (the head, the body bytes
exactly as they came on the wire, whether the body was complete) and any other bytes, and answers
each request by the script a test registered for its token (pieces of raw bytes written one by
one with a pause between them, so that each arrives in its own read), or ``200 ok <token>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import pytest

from tests.support.gateway_proc import GatewayProcess, Publisher, gateway_error
from tests.support.rawhttp import ConnectionClosed, RawConnection, RawResponse, first_header
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.e2e

MAX_HEAD = 8192  # --max-header-bytes (request heads, and trailers)
MAX_FIELDS = 20  # --max-headers
MAX_RESPONSE_HEAD = 4096  # --max-response-header-bytes
HEADER_TIMEOUT = 1.0
_hosts = itertools.count(1)
_tokens = itertools.count(1)


def token(name: str) -> str:
    return f"{name}-{next(_tokens)}"


# ---------------------------------------------------------------------- the scripted upstream


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    raw_body: bytes = b""  # the body exactly as it came (chunked framing included)
    body: bytes = b""  # decoded
    complete: bool = False

    @property
    def token(self) -> str:
        return self.target.split("?", 1)[0].rsplit("/", 1)[-1]

    def header(self, name: str) -> str | None:
        return first_header(self.headers, name)


@dataclass
class Conn:
    id: int
    requests: list[Seen] = field(default_factory=list)
    extra: bytes = b""  # bytes that were not part of a request (after a 101: the tunnel)
    ended: str | None = None  # eof | reset | server

    def tokens(self) -> list[str]:
        return [r.token for r in self.requests]


@dataclass
class Script:
    pieces: list[bytes]
    delay: float = 0.002
    then: str = "keep"  # keep (serve the next request) | close | hold (read until EOF) | echo
    before: float = 0.0  # pause before the first piece
    read_body: bool = True  # read the request body before answering


class _Closed(Exception):
    pass


class ScriptedUpstream:
    """Raw HTTP/1.1 origin on 127.0.0.1:<free>, served from a background thread."""

    def __init__(self) -> None:
        self.port = 0
        self.scripts: dict[str, Script] = {}
        self._conns: list[Conn] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, tok: str, *pieces: bytes, **kw: Any) -> None:
        self.scripts[tok] = Script(list(pieces), **kw)

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, name="scripted-upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("scripted upstream did not start")
        return self

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._server = server
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if tasks:
                _, stuck = await asyncio.wait(tasks, timeout=2)
                for task in stuck:
                    task.cancel()
                await asyncio.gather(*stuck, return_exceptions=True)
            asyncio.get_running_loop().stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        self._thread.join(10)

    # ------------------------------------------------------------------ what it saw

    def connections(self) -> list[Conn]:
        with self._lock:
            return list(self._conns)

    def conn_with(self, tok: str) -> Conn | None:
        for conn in self.connections():
            if tok in conn.tokens():
                return conn
        return None

    def request(self, tok: str) -> Seen | None:
        conn = self.conn_with(tok)
        if conn is None:
            return None
        return next(r for r in conn.requests if r.token == tok)

    def all_targets(self) -> list[str]:
        return [r.target for c in self.connections() for r in c.requests]

    def wait(self, what: Any, timeout: float = 5.0, message: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not what():
            if time.monotonic() > deadline:
                raise AssertionError(f"scripted upstream: {message} within {timeout} s")
            time.sleep(0.005)

    def wait_request(self, tok: str) -> Seen:
        self.wait(lambda: self.request(tok) is not None, message=f"request {tok}")
        req = self.request(tok)
        assert req is not None
        return req

    def wait_ended(self, conn: Conn) -> str:
        self.wait(lambda: conn.ended is not None, message=f"connection {conn.id} ended")
        assert conn.ended is not None
        return conn.ended

    # ------------------------------------------------------------------ serving

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            conn = Conn(len(self._conns) + 1)
            self._conns.append(conn)
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    conn.extra += exc.partial
                    conn.ended = "eof"
                    return
                req = self._parse_head(head)
                with self._lock:
                    conn.requests.append(req)
                script = self.scripts.get(req.token)
                if script is None or script.read_body:
                    await self._read_body(reader, req)
                if script is None:
                    body = f"ok {req.token}".encode()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
                    )
                    continue
                if script.before:
                    await asyncio.sleep(script.before)
                for piece in script.pieces:
                    writer.write(piece)
                    await writer.drain()
                    if script.delay:
                        await asyncio.sleep(script.delay)
                if script.then == "keep":
                    continue
                if script.then in ("hold", "echo"):
                    while True:
                        data = await reader.read(65536)
                        if not data:
                            raise _Closed
                        conn.extra += data
                        if script.then == "echo":
                            writer.write(data)
                await writer.drain()
                conn.ended = "server"
                return
        except (_Closed, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            conn.ended = "eof"
        except ConnectionError:
            conn.ended = "reset"
        except asyncio.CancelledError:
            conn.ended = conn.ended or "server"
            raise
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    @staticmethod
    def _parse_head(head: bytes) -> Seen:
        lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, _ = [*lines[0].split(" ", 2), "", ""][:3]
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
        return Seen(method, target, headers)

    @staticmethod
    async def _read_body(reader: asyncio.StreamReader, req: Seen) -> None:
        if "chunked" in (req.header("transfer-encoding") or "").lower():
            while True:
                line = await reader.readuntil(b"\r\n")
                req.raw_body += line
                size = int(line.split(b";", 1)[0], 16)
                if size == 0:
                    while True:
                        line = await reader.readuntil(b"\r\n")
                        req.raw_body += line
                        if line == b"\r\n":
                            break
                    break
                data = await reader.readexactly(size + 2)
                req.raw_body += data
                req.body += data[:-2]
        else:
            left = int(req.header("content-length") or 0)
            while left > 0:
                data = await reader.read(min(left, 65536))
                if not data:
                    raise _Closed
                req.raw_body += data
                req.body += data
                left -= len(data)
        req.complete = True


# ---------------------------------------------------------------------- fixtures


@dataclass
class Env:
    gw: GatewayProcess
    pub: Publisher
    up: ScriptedUpstream

    def route(self, **kw: Any) -> str:
        host = f"h{next(_hosts)}.wire.test"
        self.pub.publish(host, [self.up.url], **kw)
        self.pub.barrier(self.gw)
        return host

    def conn(self, timeout: float = 5.0) -> RawConnection:
        return RawConnection(self.gw.port, timeout=timeout)


@pytest.fixture(scope="module")
def env(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    if not redis_server.is_running():
        redis_server.start()
    prefix = f"wire{os.getpid()}"
    args = [
        "--server",
        "native",
        "--pool-max-per-origin",
        "1",
        "--header-timeout",
        str(HEADER_TIMEOUT),
        "--max-header-bytes",
        str(MAX_HEAD),
        "--max-headers",
        str(MAX_FIELDS),
        "--max-response-header-bytes",
        str(MAX_RESPONSE_HEAD),
        "--response-header-timeout",
        "3",
        "--eject-after",
        "1000",
    ]
    with ScriptedUpstream() as up:
        gw = GatewayProcess(
            redis_server.url, tmp_path_factory.mktemp("wire"), prefix=prefix, extra_args=args
        ).start()
        try:
            yield Env(gw, Publisher(redis_server.url, prefix), up)
        finally:
            code = gw.stop()
            assert code == 0, f"gateway exited with {code}\n{gw.stderr_text()[-4000:]}"


@pytest.fixture
def host(env: Env) -> str:
    return env.route()


# ---------------------------------------------------------------------- helpers


def send_split(conn: RawConnection, data: bytes, cuts: list[int], pause: float = 0.01) -> None:
    """``data`` in pieces cut at ``cuts``, each in its own segment (and, with the pause, read)."""
    last = 0
    for cut in [*cuts, len(data)]:
        if cut > last:
            conn.send(data[last:cut])
            time.sleep(pause)
        last = max(last, cut)


def send_bytewise(conn: RawConnection, data: bytes, pause: float = 0.001) -> None:
    send_split(conn, data, list(range(1, len(data))), pause)


def assert_ok(resp: RawResponse, tok: str) -> None:
    assert resp.status == 200 and resp.body == f"ok {tok}".encode(), resp


def assert_answer(resp: RawResponse, status: int, code: str | None = None) -> None:
    assert resp.status == status, resp
    err = gateway_error(resp.body)
    if code is not None:
        assert err["code"] == code, err


def closes(resp: RawResponse) -> bool:
    return (resp.header("connection") or "").lower() == "close"


def get(tok: str, host: str, extra: str = "") -> bytes:
    return f"GET /r/{tok} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def chunk_body(pieces: list[bytes], ext: bytes = b"", trailers: bytes = b"") -> bytes:
    out = b"".join(b"%x%b\r\n%b\r\n" % (len(p), ext, p) for p in pieces)
    return out + b"0" + ext + b"\r\n" + trailers + b"\r\n"


def decode_rechunked(raw: bytes) -> tuple[bytes, list[bytes]]:
    """The data of a chunked body the gateway wrote, and its size lines (strictly checked)."""
    data = b""
    lines = []
    pos = 0
    while True:
        eol = raw.index(b"\r\n", pos)
        line = raw[pos:eol]
        lines.append(line)
        size = int(line, 16)  # no extension survives: int() refuses ";"
        pos = eol + 2
        if size == 0:
            assert raw[pos:] == b"\r\n", raw[pos:]  # no trailers forwarded
            return data, lines
        data += raw[pos : pos + size]
        assert raw[pos + size : pos + size + 2] == b"\r\n"
        pos += size + 2


# A body that would be a request if it were ever parsed as one.
def smuggled(tag: str) -> bytes:
    return f"GET /r/smuggled-{tag} HTTP/1.1\r\nHost: other.wire.test\r\n\r\n".encode()


def smuggled_seen(env: Env, tag: str) -> list[str]:
    """The targets of requests the upstream read that were smuggled in ``tag``'s body."""
    return [t for t in env.up.all_targets() if f"smuggled-{tag}" in t]


def assert_nothing_forwarded(env: Env, tok: str, settle: float = 0.1) -> None:
    """After ``settle`` seconds the upstream has read neither ``tok``'s request nor anything
    smuggled in its body."""
    time.sleep(settle)
    assert env.up.request(tok) is None
    assert not smuggled_seen(env, tok)


# ---------------------------------------------------------------------- pipelining after bodies


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_pipelined_request_after_a_body_one_read_and_split_at_every_offset(
    env: Env, host: str, framing: str
) -> None:
    """POST (a body that looks like a request) then GET, in one read and cut at every offset
    across two reads: two answers in order, the body forwarded whole, never parsed."""
    with env.conn() as conn:
        probe = b""
        offsets: list[int | None] = [None]
        for cut in offsets:
            ta, tb = token("post"), token("next")
            sm = smuggled(ta)
            if framing == "chunked":
                body = chunk_body([sm[:10], sm[10:]])
                post = (
                    f"POST /r/{ta} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
                ).encode() + body
            else:
                post = (
                    f"POST /r/{ta} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(sm)}\r\n\r\n"
                ).encode() + sm
            data = post + get(tb, host)
            if not probe:
                probe = data
                offsets.extend(range(1, len(data)))
            if cut is None:
                conn.send(data)
            else:
                send_split(conn, data, [cut], pause=0.003)
            assert_ok(conn.read_response(), ta)
            assert_ok(conn.read_response(), tb)
            seen = env.up.wait_request(ta)
            assert seen.body == sm and seen.complete, (cut, seen)
            assert env.up.request(tb) is not None
            assert not smuggled_seen(env, ta)


def test_pipelined_requests_answered_in_order_with_slow_first_answer(env: Env, host: str) -> None:
    """Three pipelined requests, the first answered slowly: the answers keep the order."""
    t1, t2, t3 = token("slow"), token("fast"), token("fast")
    env.up.script(t1, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n", b"sl", b"ow", delay=0.1)
    with env.conn() as conn:
        conn.send(get(t1, host) + get(t2, host) + get(t3, host))
        first = conn.read_response()
        assert first.status == 200 and first.body == b"slow", first
        assert_ok(conn.read_response(), t2)
        assert_ok(conn.read_response(), t3)


# ---------------------------------------------------------------------- chunked request bodies


def test_chunked_body_with_extensions_and_trailers_is_rechunked_without_them(
    env: Env, host: str
) -> None:
    """Extensions and trailers, sent one byte per read: the upstream gets a plain re-chunked
    body (no extension, no trailer) and the next pipelined request is answered."""
    ta, tb = token("ext"), token("after")
    body = chunk_body(
        [b"hello ", b"chunked ", b"world"],
        ext=b';name=value;q="quoted \\" str";flag',
        trailers=b"X-Trailer: secret-trailer\r\nX-Other: 1\r\n",
    )
    head = f"POST /r/{ta} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
    with env.conn() as conn:
        send_bytewise(conn, head.encode() + body + get(tb, host))
        assert_ok(conn.read_response(), ta)
        assert_ok(conn.read_response(), tb)
    seen = env.up.wait_request(ta)
    data, _ = decode_rechunked(seen.raw_body)
    assert data == b"hello chunked world"
    assert b"secret-trailer" not in seen.raw_body and b";" not in seen.raw_body
    assert seen.header("x-trailer") is None


@pytest.mark.parametrize("over", ["bytes", "fields"])
@pytest.mark.parametrize("split", [False, True])
def test_trailers_over_the_limits_are_431(env: Env, host: str, over: str, split: bool) -> None:
    """A trailer section over the byte or field limit: 431, the connection closes; nothing
    after it is parsed; an upstream request already under way is reset, never completed."""
    tok = token("trailers")
    if over == "bytes":
        trailers = b"X-Big: " + b"t" * (MAX_HEAD + 10) + b"\r\n"
    else:
        trailers = b"".join(b"X-T%d: v\r\n" % i for i in range(MAX_FIELDS + 2))
    head = (
        f"POST /r/{tok} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"
    ).encode()
    rest = b"0\r\n" + trailers + b"\r\n" + get(token("never"), host)
    with env.conn() as conn:
        if split:
            conn.send(head)
            env.up.wait_request(tok)
            conn.send(rest)
        else:
            conn.send(head + rest)
        resp = conn.read_response()
        assert_answer(resp, 431)
        assert closes(resp), resp
        assert conn.closed_by_peer(timeout=3)
    if split:
        carrier = env.up.conn_with(tok)
        assert carrier is not None
        assert env.up.wait_ended(carrier) in ("reset", "eof")
        seen = env.up.request(tok)
        assert seen is not None and not seen.complete, seen
    else:
        assert env.up.request(tok) is None  # refused before anything was forwarded
    assert not [t for t in env.up.all_targets() if "never" in t]


@pytest.mark.parametrize(
    "bad", [b"ZZ\r\n", b"5 \r\nabcde\r\n", b"5\nabcde\r\n", b"3\r\nabcde\r\n", b"-1\r\n"]
)
def test_bad_chunk_mid_stream_resets_the_upstream_request(env: Env, host: str, bad: bytes) -> None:
    """A valid first chunk forwarded, then bad bytes in a later read: the upstream request is
    reset (never complete), the client gets a 400 and the connection closes."""
    tok = token("badchunk")
    with env.conn() as conn:
        conn.send(
            f"POST /r/{tok} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
            "5\r\nfirst\r\n".encode()
        )
        seen = env.up.wait_request(tok)
        env.up.wait(lambda: seen.raw_body.startswith(b"5\r\nfirst\r\n"), message="first chunk")
        conn.send(bad + b"0\r\n\r\n" + get(token("never"), host))
        resp = conn.read_response()
        assert_answer(resp, 400)
        assert conn.closed_by_peer(timeout=3)
    carrier = env.up.conn_with(tok)
    assert carrier is not None
    assert env.up.wait_ended(carrier) in ("reset", "eof")
    assert not seen.complete
    assert not [t for t in env.up.all_targets() if "never" in t]


# ---------------------------------------------------------------------- connection close, upgrades


@pytest.mark.parametrize("cut", [None, 5, -3, -1])
def test_bytes_after_a_connection_close_request_are_never_answered(
    env: Env, host: str, cut: int | None
) -> None:
    t1, t2 = token("closing"), token("after-close")
    first = get(t1, host, "Connection: close\r\n")
    data = first + get(t2, host)
    with env.conn() as conn:
        if cut is None:
            conn.send(data)
        else:
            send_split(conn, data, [len(first) + cut], pause=0.02)
        resp = conn.read_response()
        assert_ok(resp, t1)
        assert closes(resp), resp
        assert conn.closed_by_peer(timeout=3)
    assert env.up.request(t2) is None


@pytest.mark.parametrize("answer", ["101", "200"])
@pytest.mark.parametrize("split", [False, True])
def test_upgrade_request_with_a_body_is_refused_not_smuggled(
    env: Env, host: str, split: bool, answer: str
) -> None:
    """An upgrade request with ``Content-Length`` (or chunked): the upgrade head goes upstream
    without its framing, so the body after it would be the origin's next request (``smuggled()``,
    past routing and the gateway's headers) — it was. Now: 400, the connection closes, nothing
    reaches the upstream, whether the origin would have answered 101 or 200."""
    tok = token("upgrade-body")
    sm = smuggled(tok)
    if answer == "101":
        env.up.script(
            tok,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            then="echo",
            read_body=False,
        )
    head = (
        f"GET /r/{tok} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Content-Length: {len(sm)}\r\n\r\n"
    ).encode()
    with env.conn() as conn:
        if split:
            send_split(conn, head + sm, [len(head) + 7], pause=0.05)
        else:
            conn.send(head + sm)
        resp = conn.read_response()
        assert_answer(resp, 400, "bad_request")
        assert closes(resp), resp
        assert conn.closed_by_peer(timeout=3)
    assert_nothing_forwarded(env, tok)


def test_chunked_upgrade_request_is_refused(env: Env, host: str) -> None:
    tok = token("upgrade-chunked")
    with env.conn() as conn:
        conn.send(
            f"GET /r/{tok} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n"
            "Upgrade: websocket\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + chunk_body([smuggled(tok)])
        )
        assert_answer(conn.read_response(), 400, "bad_request")
        assert conn.closed_by_peer(timeout=3)
    assert_nothing_forwarded(env, tok)


def test_upgrade_request_with_empty_content_length_still_upgrades(env: Env, host: str) -> None:
    tok = token("upgrade-cl0")
    env.up.script(
        tok,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        then="echo",
    )
    with env.conn() as conn:
        conn.send(
            f"GET /r/{tok} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n"
            "Upgrade: websocket\r\nContent-Length: 0\r\n\r\nping".encode()
        )
        assert conn.read_head().status == 101
        assert conn.read_exact(4) == b"ping"


def test_connect_is_not_tunnelled_and_what_follows_is_never_parsed(env: Env, host: str) -> None:
    tok = token("after-connect")
    with env.conn() as conn:
        conn.send(
            f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode() + get(tok, host)
        )
        resp = conn.read_response()
        assert resp.status >= 400, resp
        assert conn.closed_by_peer(timeout=3)
    assert env.up.request(tok) is None


@pytest.mark.parametrize("split", [False, True])
def test_bytes_after_an_upgrade_request_wait_for_the_101(env: Env, host: str, split: bool) -> None:
    """Bytes sent after an upgrade request, before the 101: never parsed as a request; they
    reach the upstream only as tunnel data after its 101, in order."""
    tok = token("ws")
    env.up.script(
        tok,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        before=0.3,
        then="echo",
    )
    head = (
        f"GET /r/{tok} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    early = b"early-" + smuggled(tok)
    with env.conn() as conn:
        if split:
            conn.send(head)
            env.up.wait_request(tok)
            conn.send(early[:9])
            time.sleep(0.05)
            conn.send(early[9:])
        else:
            conn.send(head + early)
        resp = conn.read_head()
        assert resp.status == 101, resp
        assert conn.read_exact(len(early)) == early
        conn.send(b"later")
        assert conn.read_exact(5) == b"later"
    carrier = env.up.conn_with(tok)
    assert carrier is not None
    env.up.wait(lambda: carrier.extra == early + b"later", message="tunnel bytes")
    assert carrier.tokens() == [tok]
    assert not smuggled_seen(env, tok)


# ---------------------------------------------------------------------- slow and huge heads


def test_slowloris_head_one_byte_per_read_is_cut_by_the_header_timeout(env: Env, host: str) -> None:
    tok = token("slowloris")
    data = get(tok, host, "X-Pad: " + "p" * 200 + "\r\n")
    with env.conn() as conn:
        t0 = time.monotonic()
        with contextlib.suppress(OSError):
            for i in range(len(data) - 1):  # never the last byte
                conn.send(data[i : i + 1])
                time.sleep(0.01)
                if time.monotonic() - t0 > HEADER_TIMEOUT + 3:
                    break
        assert conn.closed_by_peer(timeout=HEADER_TIMEOUT + 3)
        assert time.monotonic() - t0 < HEADER_TIMEOUT + 3
    assert env.up.request(tok) is None


def test_slow_head_over_the_limit_is_431_at_the_limit(env: Env, host: str) -> None:
    """A head sent in small reads grows past --max-header-bytes: 431 once over it."""
    tok = token("slow-huge")
    data = get(tok, host, "X-Big: " + "b" * (MAX_HEAD + 100) + "\r\n")
    with env.conn() as conn:
        sent = 0
        with contextlib.suppress(OSError):
            for i in range(0, len(data), 64):
                conn.send(data[i : i + 64])
                sent = i + 64
                time.sleep(0.0005)
        resp = conn.read_response()
        assert_answer(resp, 431)
        assert closes(resp), resp
    assert sent >= MAX_HEAD
    assert env.up.request(tok) is None


def test_huge_incomplete_head_is_refused_without_being_buffered(env: Env, host: str) -> None:
    """Megabytes of a head that never ends, as fast as the socket takes them: 431 at the limit,
    then the gateway stops reading (the sender blocks) instead of buffering it all."""
    with env.conn() as conn:
        conn.send(f"GET /r/x HTTP/1.1\r\nHost: {host}\r\nX-Endless: ".encode())
        conn.sock.setblocking(False)
        sent = 0
        piece = b"e" * 65536
        deadline = time.monotonic() + 3
        stuck_since = None
        while time.monotonic() < deadline:
            try:
                sent += conn.sock.send(piece)
                stuck_since = None
            except BlockingIOError:
                stuck_since = stuck_since or time.monotonic()
                if time.monotonic() - stuck_since > 0.5:
                    break
                time.sleep(0.01)
            except OSError:
                break
        conn.sock.setblocking(True)
        resp = conn.read_response()
        assert_answer(resp, 431)
    # The kernel buffers on loopback hold a few MiB at most; the gateway read far less than 64.
    assert sent < 64 * 1024 * 1024, sent


# ---------------------------------------------------------------------- the upstream side

OK_CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
)


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def test_chunked_response_split_at_every_byte(env: Env, host: str) -> None:
    tok, tok2 = token("chunked-resp"), token("reuse")
    env.up.script(tok, *bytewise(OK_CHUNKED), delay=0.002)
    with env.conn() as conn:
        conn.send(get(tok, host))
        resp = conn.read_response()
        assert resp.status == 200 and resp.body == b"hello world", resp
        conn.send(get(tok2, host))
        assert_ok(conn.read_response(), tok2)
    # A clean end: the pooled connection carried the next request too.
    carrier = env.up.conn_with(tok)
    assert carrier is not None and carrier.tokens()[-2:] == [tok, tok2], carrier


def test_close_delimited_response_is_framed_for_the_client(env: Env, host: str) -> None:
    tok, tok2 = token("close-delim"), token("after")
    env.up.script(
        tok, b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n", b"body ", b"until ", b"close", then="close"
    )
    with env.conn() as conn:
        conn.send(get(tok, host))
        resp = conn.read_response()
        assert resp.status == 200 and resp.body == b"body until close", resp
        assert resp.framing == "chunked", resp
        conn.send(get(tok2, host))
        assert_ok(conn.read_response(), tok2)
    assert env.up.conn_with(tok) is not env.up.conn_with(tok2)


@pytest.mark.parametrize("late", [False, True])
def test_head_response_with_stray_bytes_is_not_reused(env: Env, host: str, late: bool) -> None:
    """A HEAD answered with a body (in the same read, or later on the idle connection): the
    client never gets those bytes and the next request gets a fresh upstream connection."""
    tok, tok2 = token("head-stray"), token("next")
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n"
    if late:
        env.up.script(tok, head, b"hostile-SECRET", delay=0.1, then="hold")
    else:
        env.up.script(tok, head + b"hostile-SECRET", then="hold")
    with env.conn() as conn:
        conn.send(f"HEAD /r/{tok} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        resp = conn.read_response(method="HEAD")
        assert resp.status == 200 and resp.header("content-length") == "14", resp
        time.sleep(0.3)
        conn.send(get(tok2, host))
        assert_ok(conn.read_response(), tok2)
        assert conn.buffered == b""
    first, second = env.up.conn_with(tok), env.up.conn_with(tok2)
    assert first is not None and second is not None and first is not second
    assert env.up.wait_ended(first) in ("eof", "reset")


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 204 No Content\r\nContent-Length: 14\r\n\r\nhostile-SECRET",
        b"HTTP/1.1 304 Not Modified\r\n\r\nhostile-SECRET",
        b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\nhostile-SECRET",
    ],
)
def test_204_and_304_with_a_body_do_not_pass_it_on_nor_poison_the_pool(
    env: Env, host: str, answer: bytes
) -> None:
    tok, tok2 = token("nobody"), token("next")
    env.up.script(tok, answer, then="hold")
    with env.conn() as conn:
        conn.send(get(tok, host) + get(tok2, host))  # pipelined: a stray body would show here
        resp = conn.read_response()
        assert resp.status in (204, 304) and resp.body == b"", resp
        assert_ok(conn.read_response(), tok2)
        time.sleep(0.1)
        assert b"SECRET" not in conn.buffered
    first, second = env.up.conn_with(tok), env.up.conn_with(tok2)
    assert first is not None and second is not None and first is not second


INTERIM = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
)


@pytest.mark.parametrize("mode", ["bytewise", "at-interim-ends"])
def test_interim_heads_arriving_in_pieces(env: Env, host: str, mode: str) -> None:
    tok, tok2 = token("interim"), token("reuse")
    if mode == "bytewise":
        pieces = bytewise(INTERIM)
    else:
        first = INTERIM.index(b"HTTP/1.1 103")
        second = INTERIM.index(b"HTTP/1.1 200")
        pieces = [INTERIM[:first], INTERIM[first:second], INTERIM[second:]]
    env.up.script(tok, *pieces, delay=0.002)
    with env.conn() as conn:
        conn.send(get(tok, host))
        resp = conn.read_response()
        while 100 <= resp.status < 200:
            resp = conn.read_response()
        assert resp.status == 200 and resp.body == b"final", resp
        conn.send(get(tok2, host))
        assert_ok(conn.read_response(), tok2)
    carrier = env.up.conn_with(tok)
    assert carrier is not None and carrier.tokens()[-2:] == [tok, tok2]


def test_response_head_over_the_limit_one_byte_at_a_time(env: Env, host: str) -> None:
    tok, tok2 = token("resp-huge"), token("next")
    big = b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * (MAX_RESPONSE_HEAD + 200) + b"\r\n\r\n"
    # one byte per write for the first 200 bytes, then small pieces (the deadline is 3 s)
    pieces = bytewise(big[:200]) + [big[i : i + 16] for i in range(200, len(big), 16)]
    env.up.script(tok, *pieces, delay=0.0005, then="hold")
    with env.conn() as conn:
        conn.send(get(tok, host))
        resp = conn.read_response()
        assert_answer(resp, 502, "upstream_header_too_large")
        conn.send(get(tok2, host))  # the client connection stays usable
        assert_ok(conn.read_response(), tok2)
    carrier = env.up.conn_with(tok)
    assert carrier is not None
    assert env.up.wait_ended(carrier) in ("eof", "reset")
    assert env.up.conn_with(tok2) is not carrier


@pytest.mark.parametrize("same_read", [True, False])
def test_bytes_after_a_complete_response_drop_the_connection(
    env: Env, host: str, same_read: bool
) -> None:
    tok, tok2 = token("trailing"), token("next")
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    extra = b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\nhostile-SECRET"
    if same_read:
        env.up.script(tok, ok + extra, then="hold")
    else:
        env.up.script(tok, ok, extra, delay=0.05, then="hold")
    with env.conn() as conn:
        conn.send(get(tok, host))
        resp = conn.read_response()
        assert resp.status == 200 and resp.body == b"ok", resp
        time.sleep(0.3)
        conn.send(get(tok2, host))
        assert_ok(conn.read_response(), tok2)
    first, second = env.up.conn_with(tok), env.up.conn_with(tok2)
    assert first is not None and second is not None and first is not second


def test_bad_chunk_mid_response_cuts_the_client_and_drops_the_upstream(env: Env, host: str) -> None:
    tok, tok2 = token("bad-resp-chunk"), token("next")
    env.up.script(
        tok,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
        b"ZZ\r\nhostile-SECRET\r\n0\r\n\r\n",
        delay=0.1,
        then="hold",
    )
    with env.conn() as conn:
        conn.send(get(tok, host))
        head = conn.read_head()
        assert head.status == 200
        with pytest.raises(ConnectionClosed) as cut:
            conn.read_body(head)
        assert b"SECRET" not in cut.value.partial
    carrier = env.up.conn_with(tok)
    assert carrier is not None
    assert env.up.wait_ended(carrier) in ("eof", "reset")
    with env.conn() as conn:
        conn.send(get(tok2, host))
        assert_ok(conn.read_response(), tok2)
    assert env.up.conn_with(tok2) is not carrier


def test_response_split_across_reads_at_every_offset_keeps_the_pool(env: Env, host: str) -> None:
    """A Content-Length response cut in two at every offset: each answered whole, and the one
    pooled connection carries them all (no spurious drop, no leftover)."""
    body = b"0123456789"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-A: b\r\n\r\n" + body
    toks = []
    with env.conn() as conn:
        for cut in range(1, len(resp)):
            tok = token("cut")
            toks.append(tok)
            env.up.script(tok, resp[:cut], resp[cut:], delay=0.003)
            conn.send(get(tok, host))
            got = conn.read_response()
            assert got.status == 200 and got.body == body, (cut, got)
    carriers = {id(env.up.conn_with(t)) for t in toks}
    assert len(carriers) == 1


# ---------------------------------------------------------------------- more request-side edges

SMUGGLING_HEADS = {
    "cl-then-te": "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
    "te-then-cl": "Transfer-Encoding: chunked\r\nContent-Length: 6\r\n",
    "te-identity": "Transfer-Encoding: identity\r\n",
    "te-chunked-identity": "Transfer-Encoding: chunked, identity\r\n",
    "te-space-before-colon": "Transfer-Encoding : chunked\r\n",
    "te-obs-fold": "Transfer-Encoding:\r\n chunked\r\n",
    "cl-duplicate": "Content-Length: 6\r\nContent-Length: 5\r\n",
    "cl-plus": "Content-Length: +6\r\n",
    "cl-comma": "Content-Length: 6, 6\r\n",
    "te-bare-lf": "Transfer-Encoding: chunked\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING_HEADS))
@pytest.mark.parametrize("split", [False, True])
def test_ambiguous_framing_is_400_and_nothing_after_it_is_parsed(
    env: Env, host: str, name: str, split: bool
) -> None:
    tok = token(f"smuggle-{name}")
    head = f"POST /r/{tok} HTTP/1.1\r\nHost: {host}\r\n{SMUGGLING_HEADS[name]}\r\n".encode()
    data = head + b"0\r\n\r\n" + smuggled(tok)
    with env.conn() as conn:
        if split:
            # Refused at the bad byte: the gateway may close before the rest is sent.
            with contextlib.suppress(OSError):
                send_bytewise(conn, data, pause=0.0005)
        else:
            conn.send(data)
        resp = conn.read_response()
        assert_answer(resp, 400)
        assert conn.closed_by_peer(timeout=3)
    assert_nothing_forwarded(env, tok, settle=0.05)


def test_a_hundred_pipelined_requests_in_one_write_are_answered_in_order(
    env: Env, host: str
) -> None:
    """More than the pipeline bound (16) in one write: reading pauses and resumes, and every
    answer comes in order."""
    toks = [token("many") for _ in range(100)]
    with env.conn(timeout=10) as conn:
        conn.send(b"".join(get(t, host) for t in toks))
        for t in toks:
            assert_ok(conn.read_response(), t)


def test_expect_continue_with_the_body_split_at_every_byte(env: Env, host: str) -> None:
    tok = token("expect")
    body = b"expected body"
    with env.conn() as conn:
        conn.send(
            f"POST /r/{tok} HTTP/1.1\r\nHost: {host}\r\nExpect: 100-continue\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        interim = conn.read_response()
        assert interim.status == 100, interim
        send_bytewise(conn, body + get(token("after"), host), pause=0.001)
        assert_ok(conn.read_response(), tok)
        conn.read_response()
    assert env.up.wait_request(tok).body == body


def test_http10_keep_alive_pipelined_with_a_body(env: Env, host: str) -> None:
    ta, tb = token("h10"), token("h10-next")
    with env.conn() as conn:
        conn.send(
            f"POST /r/{ta} HTTP/1.0\r\nHost: {host}\r\nConnection: keep-alive\r\n"
            f"Content-Length: 5\r\n\r\nhello".encode()
            + f"GET /r/{tb} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()
        )
        first = conn.read_response()
        assert_ok(first, ta)
        assert (first.header("connection") or "").lower() == "keep-alive", first
        second = conn.read_response()
        assert_ok(second, tb)
        assert conn.closed_by_peer(timeout=3)  # HTTP/1.0 without keep-alive: closed after
    assert env.up.wait_request(ta).body == b"hello"


def test_response_trailers_over_the_limit_cut_the_response(env: Env, host: str) -> None:
    tok, tok2 = token("resp-trailers"), token("next")
    # over --max-response-headers (default 100 per head; trailers count like a head)
    trailers = b"".join(b"X-T%d: v\r\n" % i for i in range(150))
    env.up.script(
        tok,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
        b"0\r\n" + trailers + b"\r\n",
        delay=0.05,
        then="hold",
    )
    with env.conn() as conn:
        conn.send(get(tok, host))
        head = conn.read_head()
        assert head.status == 200
        with pytest.raises(ConnectionClosed):
            conn.read_body(head)
    carrier = env.up.conn_with(tok)
    assert carrier is not None
    assert env.up.wait_ended(carrier) in ("eof", "reset")
    with env.conn() as conn:
        conn.send(get(tok2, host))
        assert_ok(conn.read_response(), tok2)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("cut", [None, 20, -30, -5, -1])
def test_body_of_a_request_the_gateway_answers_itself_is_dropped_not_parsed(
    env: Env, host: str, framing: str, cut: int | None
) -> None:
    """A POST to a host with no route (the gateway's own 404, deferred to the body's end) with a
    body that looks like a request, then a pipelined GET: 404, then the GET's own answer; the
    body is read and dropped, never parsed as a request, never forwarded."""
    tok, tb = token("own-answer"), token("after-own")
    sm = smuggled(tok)
    if framing == "chunked":
        post = (
            b"POST /r/x HTTP/1.1\r\nHost: nowhere.wire.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunk_body([sm[:7], sm[7:]])
        )
    else:
        post = (
            b"POST /r/x HTTP/1.1\r\nHost: nowhere.wire.test\r\nContent-Length: %d\r\n\r\n" % len(sm)
            + sm
        )
    data = post + get(tb, host)
    with env.conn() as conn:
        if cut is None:
            conn.send(data)
        else:
            send_split(conn, data, [len(post) + cut], pause=0.02)
        first = conn.read_response()
        assert first.status == 404, first
        assert not closes(first), first
        assert_ok(conn.read_response(), tb)
    assert not smuggled_seen(env, tok)


def test_slowloris_on_a_second_request_is_cut_by_the_header_timeout(env: Env, host: str) -> None:
    tok, slow = token("first"), token("slow-second")
    with env.conn() as conn:
        conn.send(get(tok, host))
        assert_ok(conn.read_response(), tok)
        t0 = time.monotonic()
        data = get(slow, host)
        with contextlib.suppress(OSError):
            for i in range(len(data) - 1):
                conn.send(data[i : i + 1])
                time.sleep(0.05)
                if time.monotonic() - t0 > HEADER_TIMEOUT + 3:
                    break
        assert conn.closed_by_peer(timeout=HEADER_TIMEOUT + 3)
        assert time.monotonic() - t0 < HEADER_TIMEOUT + 3
    assert env.up.request(slow) is None


@pytest.mark.parametrize(
    "line",
    [
        b"5;" + b"e" * (MAX_HEAD + 10) + b"\r\n",  # an extension over the line limit
        b"0" * (MAX_HEAD + 10) + b"5\r\n",  # leading zeros over it
        b"1" * 17 + b"\r\n",  # over 2^64 - 1
        b"5;" + b"e" * (MAX_HEAD + 10),  # never ends
    ],
)
@pytest.mark.parametrize("split", [False, True])
def test_chunk_size_line_over_the_limit_is_400(
    env: Env, host: str, line: bytes, split: bool
) -> None:
    tok = token("size-line")
    head = f"POST /r/{tok} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    with env.conn() as conn:
        if split:
            conn.send(head)
            env.up.wait_request(tok)
            with contextlib.suppress(OSError):
                send_split(conn, line, list(range(512, len(line), 512)), pause=0.001)
        else:
            conn.send(head + line)
        resp = conn.read_response()
        assert_answer(resp, 400)
        assert conn.closed_by_peer(timeout=3)
    if split:
        carrier = env.up.conn_with(tok)
        assert carrier is not None
        assert env.up.wait_ended(carrier) in ("reset", "eof")
        seen = env.up.request(tok)
        assert seen is not None and not seen.complete
    else:
        assert env.up.request(tok) is None


@pytest.mark.parametrize("split", [False, True])
def test_bad_bytes_after_pipelined_requests_answer_those_first(
    env: Env, host: str, split: bool
) -> None:
    """GET, GET, then a chunked POST with a bad chunk: 200, 200, 400, close (nginx's order);
    the bad request never reaches the upstream whole."""
    t1, t2, t3 = token("p1"), token("p2"), token("p3-bad")
    bad = (
        f"POST /r/{t3} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + b"5\r\nfirst\r\nZZ\r\n"
        + smuggled(t3)
    )
    data = get(t1, host) + get(t2, host) + bad
    with env.conn() as conn:
        if split:
            send_split(conn, data, [len(data) - len(bad) + 3, len(data) - 20], pause=0.02)
        else:
            conn.send(data)
        assert_ok(conn.read_response(), t1)
        assert_ok(conn.read_response(), t2)
        assert_answer(conn.read_response(), 400)
        assert conn.closed_by_peer(timeout=3)
    seen = env.up.request(t3)
    assert seen is None or not seen.complete
    assert not smuggled_seen(env, t3)


@pytest.mark.parametrize("where", ["same-read", "later-read"])
def test_chunked_body_over_the_route_limit_while_streaming_is_413(env: Env, where: str) -> None:
    host = env.route(policy={"max_body_bytes": 100})
    tok = token("too-big")
    head = f"POST /r/{tok} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
    first, second = chunk_body([b"a" * 60])[:-5], b"%x\r\n%b\r\n" % (60, b"b" * 60)
    with env.conn() as conn:
        if where == "same-read":
            conn.send(head.encode() + first + second)
        else:
            conn.send(head.encode() + first)
            seen = env.up.wait_request(tok)
            env.up.wait(lambda: len(seen.raw_body) > 0, message="first chunk forwarded")
            conn.send(second)
        resp = conn.read_response()
        assert_answer(resp, 413)
        assert closes(resp), resp
    seen_final = env.up.request(tok)
    if where == "same-read":
        assert seen_final is None or not seen_final.complete
    else:
        assert seen_final is not None and not seen_final.complete
        carrier = env.up.conn_with(tok)
        assert carrier is not None
        assert env.up.wait_ended(carrier) in ("reset", "eof")


def test_partial_pipelined_head_during_a_slow_response(env: Env, host: str) -> None:
    """A slow response (2 s, longer than the 1 s header timeout) with the start of the next
    request already sent: the response in flight is delivered whole; the incomplete head is
    then cut by the header timeout."""
    tok = token("slow-stream")
    env.up.script(
        tok,
        b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n",
        *[b"abcde"] * 4,
        delay=0.5,
    )
    with env.conn(timeout=8) as conn:
        conn.send(get(tok, host) + b"GET /r/next HT")
        resp = conn.read_response()
        assert resp.status == 200 and resp.body == b"abcde" * 4, resp
        assert conn.closed_by_peer(timeout=HEADER_TIMEOUT + 3)
