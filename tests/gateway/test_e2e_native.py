"""End-to-end tests of the native gateway: real ``turnout gateway``, Redis and upstream
processes on loopback, HTTP over real sockets.

One gateway (``--header-timeout 1 --eject-after 1``) and a handful of upstream servers serve the
whole module; every test publishes its own hostnames (through the admin's store code) and waits
for the gateway to apply them (:meth:`Publisher.barrier`), so tests do not depend on each other.
Replicas pointed at refused ports always use a fresh port: passive ejection is per URL.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import psutil
import pytest

from tests.support.build import EXPECT_COMPILED
from tests.support.gateway_proc import GatewayProcess, Publisher, gateway_error
from tests.support.net import free_port
from tests.support.rawhttp import (
    RawConnection,
    RawResponse,
    build_request,
    chunked,
    request,
)
from tests.support.redis_server import RedisServer
from tests.support.upstream import (
    UpstreamProcess,
    expected_bytes_sha256,
    fetch_json,
    started_upstreams,
    ws_frame,
)

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
BIG = 200 * MiB
RSS_LIMIT = 50 * MiB
_hosts = itertools.count(1)


# ---------------------------------------------------------------------- fixtures


@dataclass
class Upstreams:
    main: UpstreamProcess  # normal
    idle: UpstreamProcess  # closes kept-alive connections idle for 200 ms
    stale: UpstreamProcess  # drops every second request on a connection
    drop: UpstreamProcess  # reads every request and closes without answering


@dataclass
class Env:
    gw: GatewayProcess
    pub: Publisher
    ups: Upstreams

    def route(self, upstreams: list[str], **kw: Any) -> str:
        """Publish a fresh host routed to ``upstreams``; returns it once the gateway has it."""
        host = f"h{next(_hosts)}.e2e.test"
        self.pub.publish(host, upstreams, **kw)
        self.pub.barrier(self.gw)
        return host

    def get(
        self,
        target: str,
        host: str | None,
        headers: list[tuple[str, str]] | None = None,
        *,
        method: str = "GET",
        body: bytes | None = None,
        timeout: float = 5.0,
    ) -> RawResponse:
        return request(self.gw.port, method, target, host, headers, body, timeout=timeout)

    def conn(self, timeout: float = 5.0) -> RawConnection:
        return RawConnection(self.gw.port, timeout=timeout)


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    workdir = tmp_path_factory.mktemp("upstreams")
    with started_upstreams(
        workdir,
        "main",
        ("idle", {"idle_close_ms": 200}),
        ("stale", {"mode": "stale"}),
        ("drop", {"mode": "drop"}),
    ) as started:
        yield Upstreams(*started)


@pytest.fixture(scope="module")
def env(
    redis_server: RedisServer, upstreams: Upstreams, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    if not redis_server.is_running():
        redis_server.start()
    prefix = f"e2e{os.getpid()}"
    pub = Publisher(redis_server.url, prefix)
    gw = GatewayProcess(
        redis_server.url,
        tmp_path_factory.mktemp("gateway"),
        prefix=prefix,
        extra_args=["--header-timeout", "1", "--eject-after", "1", "--eject-seconds", "60"],
    )
    gw.start()
    try:
        yield Env(gw, pub, upstreams)
    finally:
        code = gw.stop()
        assert code == 0, f"gateway exited with {code}\n{gw.stderr_text()[-4000:]}"


# ---------------------------------------------------------------------- helpers


def refused_url() -> str:
    """An upstream URL on a loopback port nobody listens on."""
    return f"http://127.0.0.1:{free_port()}"


def assert_answer(resp: RawResponse, status: int, code: str) -> dict[str, Any]:
    """``resp`` is the gateway's own answer: status, JSON error body, matching X-Request-Id."""
    assert resp.status == status, resp
    assert (resp.header("content-type") or "").startswith("application/json"), resp
    err = gateway_error(resp.body)
    assert set(err) == {"code", "message", "request_id"}, err
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["request_id"], str) and err["request_id"], err
    assert resp.header_all("x-request-id") == [err["request_id"]], resp
    return err


def echoed(resp: RawResponse) -> dict[str, Any]:
    """The upstream's ``/echo`` JSON, after checking it really came from an upstream."""
    assert resp.status == 200, resp
    obj = resp.json()
    assert isinstance(obj, dict) and "headers" in obj, obj
    return obj


def header_values(echo: dict[str, Any], name: str) -> list[str]:
    lname = name.lower()
    return [v for k, v in echo["headers"] if k.lower() == lname]


def seen_targets(up: UpstreamProcess) -> list[str]:
    return [target for _method, target in fetch_json(up.port, "/__seen")["requests"]]


def conncount(up: UpstreamProcess) -> int:
    n = fetch_json(up.port, "/conncount")["connections"]
    assert isinstance(n, int)
    return n


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds in a thread; ``growth`` is the peak
    minus the baseline taken on entry."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.baseline = 0
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self.proc.memory_info().rss
            self.peak = max(self.peak, rss)
            self.samples += 1
            self._stop.wait(self.interval)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def __enter__(self) -> Self:
        self.baseline = self.proc.memory_info().rss
        self.peak = self.baseline
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def big_upload(env: Env, host: str, *, use_chunked: bool) -> tuple[RawResponse, str, RssSampler]:
    """Stream ``BIG`` bytes to ``/upload`` through the gateway; returns the response, the
    client-side sha256 and the gateway's RSS samples."""
    piece = os.urandom(MiB)
    sha = hashlib.sha256()
    head_headers = (
        [("Transfer-Encoding", "chunked")] if use_chunked else [("Content-Length", str(BIG))]
    )
    # Warm up the connection pool and the allocator first, so the baseline is representative.
    assert env.get("/upload", host, method="POST", body=piece).status == 200
    with RssSampler(env.gw.pid) as rss, env.conn(timeout=60) as conn:
        conn.send(build_request("POST", "/upload", host, head_headers))
        for _ in range(BIG // MiB):
            sha.update(piece)
            if use_chunked:
                conn.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
            else:
                conn.send(piece)
        if use_chunked:
            conn.send(b"0\r\n\r\n")
        resp = conn.read_response(timeout=60)
    return resp, sha.hexdigest(), rss


# ====================================================================== the answers table


def test_not_found_for_unknown_host(env: Env) -> None:
    resp = env.get("/", "nobody-routes-this.e2e.test")
    assert_answer(resp, 404, "not_found")


def test_no_route_for_path(env: Env) -> None:
    host = env.route([env.ups.main.url], path_prefix="/api")
    assert echoed(env.get("/api/x", host))["target"] == "/api/x"
    assert_answer(env.get("/other", host), 404, "no_route")
    assert_answer(env.get("/apiary", host), 404, "no_route")  # segment-safe prefix


def test_no_route_for_method(env: Env) -> None:
    host = env.route([env.ups.main.url], methods=["GET"])
    assert echoed(env.get("/echo", host))["method"] == "GET"
    assert_answer(env.get("/echo", host, method="POST", body=b"x"), 404, "no_route")


def test_payment_required_when_blocked(env: Env) -> None:
    host = env.route([env.ups.main.url], blocked="payment_required")
    before = seen_targets(env.ups.main)
    assert_answer(env.get("/echo?blocked", host), 402, "payment_required")
    assert seen_targets(env.ups.main) == before  # never forwarded


def test_suspended(env: Env) -> None:
    host = env.route([env.ups.main.url], blocked="suspended")
    assert_answer(env.get("/echo", host), 503, "suspended")


def test_bad_gateway_when_refused(env: Env) -> None:
    host = env.route([refused_url()])
    assert_answer(env.get("/", host), 502, "bad_gateway")


def test_no_upstream_once_every_replica_is_ejected(env: Env) -> None:
    host = env.route([refused_url()])
    assert_answer(env.get("/", host), 502, "bad_gateway")  # --eject-after 1: now ejected
    assert_answer(env.get("/", host), 503, "no_upstream")


def test_gateway_timeout_on_slow_upstream(env: Env) -> None:
    host = env.route([env.ups.main.url], policy={"read_timeout_ms": 500})
    t0 = time.monotonic()
    resp = env.get("/slow/3000", host)
    elapsed = time.monotonic() - t0
    assert_answer(resp, 504, "gateway_timeout")
    assert 0.4 < elapsed < 2.0, elapsed
    # the replica was not ejected by a read timeout: the host still works
    assert echoed(env.get("/echo", host))["target"] == "/echo"


def test_payload_too_large_by_content_length(env: Env) -> None:
    host = env.route([env.ups.main.url], policy={"max_body_bytes": 1000})
    assert env.get("/upload", host, method="POST", body=b"x" * 1000).json()["length"] == 1000
    with env.conn() as conn:
        conn.send(build_request("POST", "/upload", host, body=b"x" * 5000))
        resp = conn.read_response()
        assert_answer(resp, 413, "payload_too_large")
        assert conn.closed_by_peer()


def test_payload_too_large_chunked_growing(env: Env) -> None:
    host = env.route([env.ups.main.url], policy={"max_body_bytes": 1000})
    body = chunked([b"a" * 600, b"b" * 600, b"c" * 600])
    with env.conn() as conn:
        conn.send(build_request("POST", "/upload", host, [("Transfer-Encoding", "chunked")]) + body)
        resp = conn.read_response()
        assert_answer(resp, 413, "payload_too_large")
        assert conn.closed_by_peer()


def test_headers_too_large_by_size(env: Env) -> None:
    host = env.route([env.ups.main.url])
    with env.conn() as conn:
        conn.send(build_request("GET", "/echo", host, [("X-Big", "a" * (70 * 1024))]))
        resp = conn.read_response()
        assert_answer(resp, 431, "headers_too_large")
        assert conn.closed_by_peer()


def test_headers_too_large_by_count(env: Env) -> None:
    host = env.route([env.ups.main.url])
    ninety_nine = [(f"X-H{i}", "v") for i in range(99)]
    # Host + 99 = 100 headers: at the limit, forwarded
    echo = echoed(env.get("/echo", host, ninety_nine))
    assert len(header_values(echo, "X-H98")) == 1
    # Host + 100 = 101 headers: over it
    with env.conn() as conn:
        conn.send(build_request("GET", "/echo", host, [*ninety_nine, ("X-H99", "v")]))
        assert_answer(conn.read_response(), 431, "headers_too_large")
        assert conn.closed_by_peer()


def test_bad_request_for_content_length_with_transfer_encoding(env: Env) -> None:
    host = env.route([env.ups.main.url])
    with env.conn() as conn:
        conn.send(
            build_request(
                "POST",
                "/upload",
                host,
                [("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
            )
            + chunked([b"hello"])
        )
        assert_answer(conn.read_response(), 400, "bad_request")
        assert conn.closed_by_peer()


def test_bad_request_for_malformed_host(env: Env) -> None:
    with env.conn() as conn:
        conn.send(b"GET / HTTP/1.1\r\nHost: exa mple.com\r\n\r\n")
        assert_answer(conn.read_response(), 400, "bad_request")
        assert conn.closed_by_peer()


def test_bad_request_for_missing_host_on_http11(env: Env) -> None:
    with env.conn() as conn:
        conn.send(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n")
        assert_answer(conn.read_response(), 400, "bad_request")
        assert conn.closed_by_peer()


# ====================================================================== header rules


def test_internal_headers_stripped_and_set_by_gateway(env: Env) -> None:
    host = env.route(
        [env.ups.main.url], space_id="space-hdr", service_id="svc-hdr", deployment_id="dep-hdr"
    )
    echo = echoed(
        env.get(
            "/echo",
            host,
            [
                ("X-Turnout-Space", "evil-space"),
                ("X-Turnout-Service", "evil-service"),
                ("X-Turnout-Deployment", "evil-dep"),  # allow_override is false
                ("X-Turnout-Whatever", "evil"),
                ("X-Forwarded-Host", "evil.example"),
                ("X-Forwarded-Proto", "https"),  # the client is not a trusted proxy
            ],
        )
    )
    assert header_values(echo, "X-Turnout-Space") == ["space-hdr"]
    assert header_values(echo, "X-Turnout-Service") == ["svc-hdr"]
    assert header_values(echo, "X-Turnout-Deployment") == ["dep-hdr"]
    assert header_values(echo, "X-Turnout-Whatever") == []
    assert header_values(echo, "X-Forwarded-Host") == [host]
    assert header_values(echo, "X-Forwarded-Proto") == ["http"]


def test_x_forwarded_for_appended(env: Env) -> None:
    host = env.route([env.ups.main.url])
    echo = echoed(env.get("/echo", host, [("X-Forwarded-For", "1.2.3.4")]))
    assert header_values(echo, "X-Forwarded-For") == ["1.2.3.4, 127.0.0.1"]
    echo = echoed(env.get("/echo", host))
    assert header_values(echo, "X-Forwarded-For") == ["127.0.0.1"]


def test_hop_by_hop_and_connection_nominated_headers_removed(env: Env) -> None:
    host = env.route([env.ups.main.url])
    echo = echoed(
        env.get(
            "/echo",
            host,
            [
                ("Connection", "keep-alive, X-Secret"),
                ("X-Secret", "1"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Trailer", "X-T"),
                ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
                ("Upgrade", "h2c"),  # not named in Connection: no upgrade, and dropped
                ("X-Kept", "yes"),
            ],
        )
    )
    names = {k.lower() for k, _ in echo["headers"]}
    for gone in ("connection", "x-secret", "keep-alive", "te", "trailer", "upgrade"):
        assert gone not in names, (gone, echo["headers"])
    assert "proxy-authorization" not in names, echo["headers"]
    assert header_values(echo, "X-Kept") == ["yes"]


def test_host_forwarded_unchanged_with_port(env: Env) -> None:
    host = env.route([env.ups.main.url])
    echo = echoed(env.get("/echo", f"{host}:8080"))
    assert header_values(echo, "Host") == [f"{host}:8080"]
    echo = echoed(env.get("/echo", host.upper()))
    assert header_values(echo, "Host") == [host.upper()]  # routed case-insensitively, kept as is


def test_request_line_forwarded_unchanged(env: Env) -> None:
    host = env.route([env.ups.main.url])
    target = "/echo/a%20b/%2F/c?q=1&r=%2F&empty=&x=y+z"
    echo = echoed(env.get(target, host))
    assert echo["target"] == target
    assert echo["method"] == "GET"
    echo = echoed(env.get(target, host, method="PATCH", body=b"{}"))
    assert echo["method"] == "PATCH"
    assert echo["body_length"] == 2


def test_client_request_id_kept_when_sane(env: Env) -> None:
    host = env.route([env.ups.main.url])
    for rid in ("abc-123.DEF_x:y", "r" * 128):
        resp = env.get("/echo", host, [("X-Request-Id", rid)])
        assert header_values(echoed(resp), "X-Request-Id") == [rid]
        assert resp.header_all("X-Request-Id") == [rid]


def test_client_request_id_replaced_when_insane(env: Env) -> None:
    host = env.route([env.ups.main.url])
    for rid in ("has space", "r" * 129, "x" * 200, "semi;colon", 'quote"d'):
        resp = env.get("/echo", host, [("X-Request-Id", rid)])
        upstream_ids = header_values(echoed(resp), "X-Request-Id")
        assert len(upstream_ids) == 1 and upstream_ids[0] != rid, (rid, upstream_ids)
        assert resp.header_all("X-Request-Id") == upstream_ids
    # and a gateway answer carries the replaced id too
    err = assert_answer(
        env.get("/", "unknown-rid.e2e.test", [("X-Request-Id", "a b")]), 404, "not_found"
    )
    assert err["request_id"] != "a b"


def test_generated_request_ids_are_unique(env: Env) -> None:
    host = env.route([env.ups.main.url])
    ids = {env.get("/status/204", host).header("X-Request-Id") for _ in range(20)}
    assert None not in ids
    assert len(ids) == 20


def test_response_hop_by_hop_headers_removed(env: Env) -> None:
    host = env.route([env.ups.main.url])
    resp = env.get("/hop", host)
    assert resp.status == 200, resp
    assert resp.body == b"hop\n"
    assert resp.header("X-Normal") == "kept"
    assert not resp.has_header("X-Up"), resp
    assert not resp.has_header("Keep-Alive"), resp
    for value in resp.header_all("Connection"):
        assert "x-up" not in value.lower(), resp
    assert resp.has_header("X-Request-Id")


def test_upstream_base_path_prefixed(env: Env) -> None:
    host = env.route([f"{env.ups.main.url}/base"])
    echo = echoed(env.get("/echo?x=1", host))
    assert echo["target"] == "/base/echo?x=1"
    echo = echoed(env.get("/", host))
    assert echo["target"] == "/base/"  # the base path, then the request's own "/"


# ====================================================================== streaming


def test_upload_200mib_content_length_streams(env: Env) -> None:
    host = env.route([env.ups.main.url], policy={"max_body_bytes": 1 << 30})
    resp, sha, rss = big_upload(env, host, use_chunked=False)
    assert resp.status == 200, resp
    assert resp.json()["length"] == BIG
    assert resp.json()["sha256"] == sha
    assert rss.samples > 3
    print(f"gateway RSS growth {rss.growth / MiB:.1f} MiB over {rss.samples} samples")
    assert rss.growth < RSS_LIMIT, f"gateway RSS grew {rss.growth / MiB:.1f} MiB"


def test_upload_200mib_chunked_streams(env: Env) -> None:
    host = env.route([env.ups.main.url], policy={"max_body_bytes": 1 << 30})
    resp, sha, rss = big_upload(env, host, use_chunked=True)
    assert resp.status == 200, resp
    assert resp.json()["length"] == BIG
    assert resp.json()["sha256"] == sha
    print(f"gateway RSS growth {rss.growth / MiB:.1f} MiB over {rss.samples} samples")
    assert rss.growth < RSS_LIMIT, f"gateway RSS grew {rss.growth / MiB:.1f} MiB"


def test_download_200mib_streams(env: Env) -> None:
    host = env.route([env.ups.main.url])
    assert env.get("/bytes/1048576", host).body_length == MiB  # warm up
    sha = hashlib.sha256()
    with RssSampler(env.gw.pid) as rss, env.conn(timeout=60) as conn:
        conn.send(build_request("GET", f"/bytes/{BIG}", host))
        resp = conn.read_response(timeout=60, sink=sha.update)
    assert resp.status == 200, resp
    assert resp.header("Content-Length") == str(BIG)
    assert resp.body_length == BIG
    assert sha.hexdigest() == expected_bytes_sha256(BIG)
    assert rss.samples > 3
    print(f"gateway RSS growth {rss.growth / MiB:.1f} MiB over {rss.samples} samples")
    assert rss.growth < RSS_LIMIT, f"gateway RSS grew {rss.growth / MiB:.1f} MiB"


def test_server_sent_events_are_not_buffered(env: Env) -> None:
    host = env.route([env.ups.main.url])
    arrivals: list[tuple[float, bytes]] = []
    with env.conn() as conn:
        t0 = time.monotonic()
        conn.send(build_request("GET", "/stream/5/200", host, [("Accept", "text/event-stream")]))
        resp = conn.read_response(sink=lambda piece: arrivals.append((time.monotonic(), piece)))
        total = time.monotonic() - t0
    assert resp.status == 200, resp
    assert resp.header("Content-Type") == "text/event-stream"
    body = b"".join(piece for _, piece in arrivals)
    assert body == b"".join(b"data: %d\n\n" % i for i in range(5))
    first = next(t for t, piece in arrivals if b"data: 0" in piece) - t0
    assert first < 0.6, f"first event after {first:.3f} s (whole stream {total:.3f} s)"
    assert total > 0.9, total
    assert len(arrivals) >= 5  # one piece per event at least: nothing was held back


def test_chunked_request_and_response(env: Env) -> None:
    host = env.route([env.ups.main.url])
    pieces = [b"alpha", b"b" * 70000, b"", b"gamma"]
    data = b"".join(pieces)
    with env.conn() as conn:
        conn.send(
            build_request("POST", "/upload", host, [("Transfer-Encoding", "chunked")])
            + chunked(pieces)
        )
        resp = conn.read_response()
        assert resp.status == 200, resp
        assert resp.json() == {
            "length": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "name": "main",
        }
        # same connection: a chunked response comes back chunked to an HTTP/1.1 client
        conn.send(build_request("GET", "/stream/3/0", host))
        resp = conn.read_response()
        assert resp.status == 200, resp
        assert resp.framing == "chunked"
        assert resp.body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    # and the chunked request reaches the upstream chunked, never with a Content-Length too
    echo = echoed(
        env.get(
            "/echo",
            host,
            [("Transfer-Encoding", "chunked")],
            method="POST",
            body=chunked([b"abc", b"def"]),
        )
    )
    assert echo["body_length"] == 6
    assert header_values(echo, "Content-Length") == []
    assert [v.lower() for v in header_values(echo, "Transfer-Encoding")] == ["chunked"]


def test_head_request_gets_head_only(env: Env) -> None:
    host = env.route([env.ups.main.url])
    with env.conn() as conn:
        conn.send(build_request("HEAD", "/bytes/1000", host))
        resp = conn.read_response(method="HEAD")
        assert resp.status == 200, resp
        assert resp.header("Content-Length") == "1000"
        # the next request on the same connection is answered correctly: no body was expected
        conn.send(build_request("GET", "/echo?after-head", host))
        assert echoed(conn.read_response())["target"] == "/echo?after-head"


def test_websocket_echo_through_gateway(env: Env) -> None:
    host = env.route([env.ups.main.url])
    key = base64.b64encode(os.urandom(16)).decode()
    accept = base64.b64encode(
        hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
    ).decode()
    with env.conn() as conn:
        conn.send(
            build_request(
                "GET",
                "/ws",
                host,
                [
                    ("Upgrade", "websocket"),
                    ("Connection", "Upgrade"),
                    ("Sec-WebSocket-Key", key),
                    ("Sec-WebSocket-Version", "13"),
                ],
            )
        )
        resp = conn.read_head()
        assert resp.status == 101, resp
        assert resp.header("Sec-WebSocket-Accept") == accept
        assert (resp.header("Upgrade") or "").lower() == "websocket"
        for payload in (b"hello", os.urandom(70000)):
            opcode = 0x1 if payload == b"hello" else 0x2
            conn.send(ws_frame(opcode, payload, mask=os.urandom(4)))
            expected = ws_frame(opcode, payload)
            assert conn.read_exact(len(expected)) == expected


# ====================================================================== native edge duties


def test_pipelined_requests_answered_in_order(env: Env) -> None:
    host = env.route([env.ups.main.url])
    with env.conn() as conn:
        conn.send(
            build_request("GET", "/slow/300?i=1", host)
            + build_request("GET", "/echo?i=2", host)
            + build_request("GET", "/status/201?i=3", host)
        )
        first = conn.read_response()
        second = conn.read_response()
        third = conn.read_response()
    assert (first.status, first.body) == (200, b"slow\n"), first
    assert echoed(second)["target"] == "/echo?i=2"
    assert (third.status, third.body) == (201, b"status 201\n"), third
    ids = {r.header("X-Request-Id") for r in (first, second, third)}
    assert len(ids) == 3


def test_pipelined_request_bodies_buffered_in_order(env: Env) -> None:
    """A request body that arrives while an earlier response is still in flight waits (reading
    pauses above the high-water mark) and is forwarded intact afterwards."""
    host = env.route([env.ups.main.url])
    big = os.urandom(600 * 1024)
    with env.conn(timeout=10) as conn:
        conn.send(
            build_request("GET", "/slow/300?p=1", host)
            + build_request("POST", "/upload?p=2", host, body=big)
            + build_request("GET", "/echo?p=3", host)
        )
        first = conn.read_response()
        second = conn.read_response()
        third = conn.read_response()
    assert (first.status, first.body) == (200, b"slow\n"), first
    assert second.status == 200, second
    assert second.json()["length"] == len(big)
    assert second.json()["sha256"] == hashlib.sha256(big).hexdigest()
    assert echoed(third)["target"] == "/echo?p=3"


def test_connection_kept_after_gateway_answers(env: Env) -> None:
    """The gateway's own non-fatal answers keep the client connection usable, also when the
    refused request carried a (small) body that has to be read and dropped."""
    host = env.route([env.ups.main.url], path_prefix="/api")
    with env.conn() as conn:
        conn.send(build_request("GET", "/", "unknown-keepalive.e2e.test"))
        assert_answer(conn.read_response(), 404, "not_found")
        conn.send(build_request("POST", "/nope", host, body=b"z" * 3000))
        assert_answer(conn.read_response(), 404, "no_route")
        conn.send(build_request("GET", "/api/after", host))
        assert echoed(conn.read_response())["target"] == "/api/after"


def test_client_abandoning_a_download_leaves_the_gateway_healthy(env: Env) -> None:
    host = env.route([env.ups.main.url])
    for _ in range(3):
        with env.conn() as conn:
            conn.send(build_request("GET", f"/bytes/{50 * MiB}", host))
            head = conn.read_head()
            assert head.status == 200, head
            conn.read_exact(256 * 1024)
        # closed mid-body; the abandoned upstream connection must not be pooled half-read
        assert echoed(env.get("/echo?after-abandon", host))["target"] == "/echo?after-abandon"


def test_slowloris_cut_at_header_timeout(env: Env) -> None:
    host = env.route([env.ups.main.url])
    payload = build_request("GET", "/echo", host)
    received = b""
    closed_after: float | None = None
    with socket.create_connection(("127.0.0.1", env.gw.port), timeout=5) as sock:
        t0 = time.monotonic()
        for i in range(len(payload) - 1):  # never completes the head
            try:
                sock.sendall(payload[i : i + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - t0
                break
            sock.settimeout(0.5)
            try:
                data = sock.recv(4096)
            except TimeoutError:
                if time.monotonic() - t0 > 6:
                    break
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                closed_after = time.monotonic() - t0
                break
            received += data
    assert closed_after is not None, "the gateway kept a slowloris connection open for 6 s"
    assert closed_after < 2.5, closed_after
    assert not received.startswith(b"HTTP/1.1 2"), received  # nothing was forwarded


def test_cl_te_smuggling_is_refused(env: Env) -> None:
    host = env.route([env.ups.main.url])
    before = seen_targets(env.ups.main)
    with env.conn() as conn:
        conn.send(
            f"POST /smuggle-front HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            f"GET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        )
        resp = conn.read_response()
        assert_answer(resp, 400, "bad_request")
        assert resp.header("Connection") == "close"
        assert conn.closed_by_peer(), "a second response followed the 400"
    time.sleep(0.2)
    after = seen_targets(env.ups.main)[len(before) :]
    assert "/smuggled" not in after
    assert "/smuggle-front" not in after


def test_http10_client_gets_response_then_close(env: Env) -> None:
    host = env.route([env.ups.main.url])
    with env.conn() as conn:
        conn.send(build_request("GET", "/echo", host, version="HTTP/1.0"))
        resp = conn.read_response()
        assert resp.framing in ("content-length", "close"), resp
        assert echoed(resp)["target"] == "/echo"
        assert resp.framing == "close" or conn.closed_by_peer()
    # a chunked upstream response is re-framed for HTTP/1.0: close-delimited, never chunked
    with env.conn() as conn:
        conn.send(build_request("GET", "/stream/3/0", host, version="HTTP/1.0"))
        resp = conn.read_response()
        assert resp.status == 200, resp
        assert not resp.has_header("Transfer-Encoding"), resp
        assert resp.framing in ("content-length", "close"), resp
        assert resp.body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        assert resp.framing == "close" or conn.closed_by_peer()


@pytest.mark.parametrize("spelling", ["Connection", "CONNECTION", "connection"])
def test_http10_keep_alive_client(env: Env, spelling: str) -> None:
    """HTTP/1.0 + Connection: keep-alive (any case): kept alive, told so, never sent chunked."""
    host = env.route([env.ups.main.url])
    with env.conn() as conn:
        for _ in range(2):
            conn.send(
                build_request("GET", "/echo", host, [(spelling, "Keep-Alive")], version="HTTP/1.0")
            )
            resp = conn.read_response()
            assert resp.status == 200, resp
            assert resp.framing == "content-length", resp
            assert resp.header("Connection") == "keep-alive", resp
            assert echoed(resp)["target"] == "/echo"
        # a chunked upstream answer cannot be re-framed for HTTP/1.0 but by closing
        conn.send(
            build_request(
                "GET", "/stream/2/0", host, [(spelling, "keep-alive")], version="HTTP/1.0"
            )
        )
        resp = conn.read_response()
        assert resp.status == 200, resp
        assert not resp.has_header("Transfer-Encoding"), resp
        assert resp.body == b"data: 0\n\ndata: 1\n\n"
        assert resp.framing == "close" or conn.closed_by_peer()


def test_http11_connection_header_does_not_make_it_http10(env: Env) -> None:
    host = env.route([env.ups.main.url])
    with env.conn() as conn:
        conn.send(build_request("GET", "/stream/2/0", host, [("Connection", "keep-alive")]))
        resp = conn.read_response()
        assert resp.status == 200, resp
        assert resp.framing == "chunked", resp  # an HTTP/1.1 client may get chunked
        conn.send(build_request("GET", "/echo", host, [("Connection", "close")]))
        resp = conn.read_response()
        assert resp.status == 200, resp
        assert resp.header("Connection") == "close", resp


def test_expect_100_continue(env: Env) -> None:
    host = env.route([env.ups.main.url], policy={"max_body_bytes": 1000})
    with env.conn() as conn:
        conn.send(
            build_request(
                "POST", "/upload", host, [("Content-Length", "5"), ("Expect", "100-continue")]
            )
        )
        interim = conn.read_head()
        assert interim.status == 100, interim
        assert interim.raw_head.startswith(b"HTTP/1.1 100 Continue\r\n"), interim.raw_head
        conn.send(b"hello")
        resp = conn.read_response()
        assert resp.status == 200, resp
        assert resp.json()["length"] == 5
        assert resp.json()["sha256"] == hashlib.sha256(b"hello").hexdigest()


def test_expect_100_continue_refused_when_too_large(env: Env) -> None:
    host = env.route([env.ups.main.url], policy={"max_body_bytes": 1000})
    with env.conn() as conn:
        conn.send(
            build_request(
                "POST", "/upload", host, [("Content-Length", "5000"), ("Expect", "100-continue")]
            )
        )
        resp = conn.read_response()
        assert_answer(resp, 413, "payload_too_large")  # and no 100 before it
        assert conn.closed_by_peer()


# ====================================================================== keep-alive and the pool


def test_keepalive_connections_reused(env: Env) -> None:
    host = env.route([env.ups.main.url])
    env.get("/echo?warm", host)
    before = conncount(env.ups.main)
    for c in range(4):
        with env.conn() as conn:
            for i in range(50):
                conn.send(build_request("GET", f"/status/204?c={c}&i={i}", host))
                resp = conn.read_response()
                assert resp.status == 204, resp
    opened = conncount(env.ups.main) - before - 1  # minus our own /conncount query
    print(f"keep-alive: {opened} upstream connections for 200 requests")
    assert opened <= 10, f"{opened} upstream connections for 200 requests"


def test_stale_pooled_connection_after_idle_close(env: Env) -> None:
    host = env.route([env.ups.idle.url])
    assert echoed(env.get("/echo?1", host))["name"] == "idle"
    before = conncount(env.ups.idle)
    time.sleep(0.4)  # the upstream closed the kept-alive connection at 200 ms
    assert echoed(env.get("/echo?2", host))["name"] == "idle"
    assert echoed(env.get("/echo?3", host))["name"] == "idle"
    # one new upstream connection after the idle close (plus our own /conncount query)
    assert conncount(env.ups.idle) - before == 2


def test_stale_pooled_connection_dropped_on_reuse_is_retried(env: Env) -> None:
    """The upstream answers the first request on a connection and drops any later one: a
    reused pooled connection fails before any response byte, so the request goes once more on a
    fresh connection."""
    host = env.route([env.ups.stale.url])
    marker = f"stale-{time.monotonic_ns()}"
    for i in range(4):
        resp = env.get(f"/echo?{marker}={i}", host)
        assert echoed(resp)["name"] == "stale", resp
    # Each request after the first went out on the reused connection (dropped), then again on a
    # fresh one: the path under test really ran.
    seen = [t for t in seen_targets(env.ups.stale) if marker in t]
    assert seen == [f"/echo?{marker}={i}" for i in (0, 1, 1, 2, 2, 3, 3)], seen


def test_upstream_closing_mid_response(env: Env) -> None:
    host = env.route([env.ups.main.url])
    for _ in range(3):
        with env.conn() as conn:
            conn.send(build_request("GET", "/close-mid", host))
            head = conn.read_head()
            assert head.status == 200, head
            assert head.header("Content-Length") == "1000"
            body = conn.read_until_close()
            assert len(body) < 1000, "a truncated body must end in a close, not be padded"
        # the pool is healthy afterwards
        assert echoed(env.get("/echo?after-close-mid", host))["target"] == "/echo?after-close-mid"


def test_get_retried_on_other_replica_when_refused(env: Env) -> None:
    host = env.route([refused_url(), env.ups.main.url])  # round robin starts at the refused one
    for i in range(6):
        assert echoed(env.get(f"/echo?r={i}", host))["name"] == "main"


def test_post_retried_when_connect_refused(env: Env) -> None:
    """Nothing reached the upstream: even a POST with a body may go to another replica."""
    host = env.route([refused_url(), env.ups.main.url])
    echo = echoed(env.get("/echo?post-refused", host, method="POST", body=b"payload"))
    assert echo["body_length"] == 7


def test_post_never_retried_after_bytes_were_sent(env: Env) -> None:
    host = env.route([env.ups.drop.url, env.ups.main.url])
    # GET: a replica that read the request and closed is retried on the other one
    marker = f"get-{time.monotonic_ns()}"
    for i in range(6):
        assert echoed(env.get(f"/echo?{marker}={i}", host))["name"] == "main"
    dropped_gets = [t for t in seen_targets(env.ups.drop) if marker in t]
    assert dropped_gets, "no GET ever went to the dropping replica: the test proves nothing"
    # POST with a body: the dropping replica saw it once, the client gets 502, no retry
    marker = f"post-{time.monotonic_ns()}"
    statuses: dict[str, int] = {}
    for i in range(6):
        target = f"/echo?{marker}={i}"
        resp = env.get(target, host, method="POST", body=b"not idempotent")
        statuses[target] = resp.status
        if resp.status != 200:
            assert_answer(resp, 502, "bad_gateway")
    on_drop = [t for t in seen_targets(env.ups.drop) if marker in t]
    on_main = [t for t in seen_targets(env.ups.main) if marker in t]
    failed = sorted(t for t, s in statuses.items() if s == 502)
    ok = sorted(t for t, s in statuses.items() if s == 200)
    print(f"retry rules: {len(dropped_gets)} GETs retried, POST statuses {statuses}")
    assert failed, statuses
    assert sorted(on_drop) == failed  # each failed POST reached the upstream exactly once
    assert sorted(on_main) == ok  # and was never sent again to the other replica


def test_gateway_still_healthy(env: Env) -> None:
    """Last: after everything above, the process is alive and /readyz still answers."""
    assert env.gw.is_running(), env.gw.stderr_text()[-4000:]
    resp = request(env.gw.internal_port, "GET", "/readyz", "localhost")
    assert resp.status == 200, resp
    assert "Traceback" not in env.gw.stderr_text(), env.gw.stderr_text()[-4000:]
    # The process runs the build this test run is about (scripts/test runs this file twice).
    assert resp.json()["compiled"] is EXPECT_COMPILED, resp.json()
