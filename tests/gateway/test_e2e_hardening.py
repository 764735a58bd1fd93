"""Regression tests for the upstream-side defects of issue 17, one (or a few) per defect, on the
real gateway with raw-socket clients and the raw-socket hostile upstream
(:mod:`tests.support.hostile_upstream`). Each of them failed on the code before the fix.

One gateway per front-end (``--server native`` and ``--server uvicorn``) serves the module, with
``--pool-max-per-origin 1`` (a desynced connection would be the only one there is) and a short
response-head deadline; every test publishes its own hostnames. Defects 5 and 6 are about
parsing *requests*, which under an ASGI server is the server's job: their native tests check the
gateway's own parser, and defect 6's upstream side (the request aborted, never completed) is
checked on both front-ends. The differential table over every hostile behaviour is
``test_hostile_upstreams.py``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import pytest
import redis

from tests.support.gateway_proc import GatewayProcess, Publisher, gateway_error, health_totals
from tests.support.hostile_upstream import HostileUpstream, gateway_args
from tests.support.rawhttp import RawConnection, RawResponse, request
from tests.support.redis_server import RedisServer
from tests.support.upstream import UpstreamProcess

pytestmark = pytest.mark.e2e

FRONTS = ("native", "uvicorn")
HEAD_TIMEOUT = 0.5
FLUSH = 0.02
EXIT_OK = (0, -15)  # uvicorn re-raises the SIGTERM it handled gracefully
_hosts = itertools.count(1)
_tokens = itertools.count(1)


@dataclass
class Env:
    gws: dict[str, GatewayProcess]
    pub: Publisher
    hostile: HostileUpstream
    good: UpstreamProcess
    redis: redis.Redis
    prefix: str

    def route(self, upstream: str | None = None, **kw: Any) -> str:
        """A fresh host (on both gateways) routed to ``upstream`` (default: the hostile one)."""
        host = f"h{next(_hosts)}.hardening.test"
        self.pub.publish(host, [upstream or self.hostile.url], **kw)
        for gw in self.gws.values():
            self.pub.barrier(gw)
        return host

    def conn(self, server: str, timeout: float = 5.0) -> RawConnection:
        return RawConnection(self.gws[server].port, timeout=timeout)

    def get(self, server: str, target: str, host: str, **kw: Any) -> RawResponse:
        return request(self.gws[server].port, "GET", target, host, **kw)

    def health(self, deployment: str) -> dict[str, int]:
        return health_totals(self.redis, self.prefix, deployment)


def token(name: str) -> str:
    return f"{name}-{next(_tokens)}"


@pytest.fixture(scope="module")
def env(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    if not redis_server.is_running():
        redis_server.start()
    prefix = f"hard{os.getpid()}"
    workdir = tmp_path_factory.mktemp("hardening")
    gws: dict[str, GatewayProcess] = {}
    client = redis.Redis.from_url(redis_server.url)
    with HostileUpstream() as hostile, UpstreamProcess("good", workdir=workdir) as good:
        try:
            for server in FRONTS:
                gws[server] = GatewayProcess(
                    redis_server.url,
                    workdir / server,
                    prefix=prefix,
                    extra_args=gateway_args(server, head_timeout=HEAD_TIMEOUT, flush=FLUSH),
                    name=f"gw-{server}",
                ).start()
            yield Env(gws, Publisher(redis_server.url, prefix), hostile, good, client, prefix)
        finally:
            client.close()
            codes = {server: gw.stop() for server, gw in gws.items()}
            for server, code in codes.items():
                assert code in EXIT_OK, f"{server} exited with {code}\n{gws[server].stderr_text()}"


def assert_answer(resp: RawResponse, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, resp
    assert (resp.header("content-type") or "").startswith("application/json"), resp
    err = gateway_error(resp.body)
    assert err["code"] == code, err
    assert err["request_id"] == resp.header("x-request-id"), resp
    return err


def closes(resp: RawResponse) -> bool:
    return (resp.header("connection") or "").lower() == "close"


def wait_total(env: Env, deployment: str, expected: int) -> dict[str, int]:
    """The deployment's health rows once ``expected`` requests are in — and still after a few
    more flushes, so a request counted twice cannot hide."""
    deadline = time.monotonic() + 5
    while env.health(deployment).get("total", 0) < expected and time.monotonic() < deadline:
        time.sleep(FLUSH)
    time.sleep(4 * FLUSH)
    return env.health(deployment)


# ---------------------------------------------------------------------- defect 1


@pytest.mark.parametrize("server", FRONTS)
def test_early_answer_never_leaves_a_desynced_connection_in_the_pool(env: Env, server: str) -> None:
    """Defect 1. Client A uploads 1 000 of 100 000 bytes and the origin answers 401 at once;
    client B's request (with its cookies) must get its own 200 on a fresh connection, not be
    read by the origin as the rest of A's body."""
    host_a, host_b = env.route(), env.route()
    ta, tb = token("upload"), token("other")
    with env.conn(server) as a:
        a.send(
            f"POST /early-401/{ta} HTTP/1.1\r\nHost: {host_a}\r\nContent-Length: 100000\r\n\r\n".encode()
            + b"x" * 1000
        )
        env.hostile.wait_request(ta)
        t0 = time.monotonic()
        b = env.get(server, f"/ok/{tb}", host_b, headers=[("Cookie", "session=b-secret")])
        assert b.status == 200 and b.body == f"ok {tb}".encode(), b
        assert time.monotonic() - t0 < 2.0
        resp = a.read_response()
        assert resp.status == 401 and resp.body == b"unauthorized", resp
        if server == "native":
            # The rest of A's request is never forwarded: the answer says so, and the
            # connection closes lingering — A may keep writing and still reads its answer.
            assert closes(resp), resp
            a.send(b"x" * 99_000)
            assert a.closed_by_peer(timeout=3), "the lingering close did not end"
    seen_a, seen_b = env.hostile.request(ta), env.hostile.request(tb)
    assert seen_a is not None and seen_b is not None
    assert seen_b.complete and seen_b.header("cookie") == "session=b-secret"
    assert set(seen_a.body) <= {ord("x")} and not seen_a.complete, seen_a.body[-200:]
    carrier_a, carrier_b = env.hostile.conn_with(ta), env.hostile.conn_with(tb)
    assert carrier_a is not None and carrier_a is not carrier_b
    assert env.hostile.wait_ended(carrier_a) in ("reset", "eof")
    assert carrier_a.tokens()[-1] == ta  # never reused


# ---------------------------------------------------------------------- defect 2


@pytest.mark.parametrize("server", FRONTS)
def test_unrequested_101_never_becomes_a_tunnel(env: Env, server: str) -> None:
    """Defect 2. A 101 to a request that asked for no upgrade is a 502 and the connection
    closes; the client's next bytes (another host, a forged internal header) reach nobody."""
    host = env.route()
    t = token("no-upgrade")
    with env.conn(server) as conn:
        conn.send(f"GET /unrequested-101/{t} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        resp = conn.read_response()
        assert_answer(resp, 502, "bad_gateway")
        assert closes(resp), resp
        with contextlib.suppress(OSError):  # closed already
            conn.send(
                b"GET /internal/admin HTTP/1.1\r\nHost: other.test\r\n"
                b"X-Turnout-Space: forged\r\n\r\n"
            )
        assert conn.closed_by_peer(timeout=3)
    carrier = env.hostile.conn_with(t)
    assert carrier is not None
    env.hostile.wait_ended(carrier)
    assert carrier.extra == b"", carrier.extra  # nothing was tunnelled


H2C = [
    ("Connection", "Upgrade, HTTP2-Settings"),
    ("Upgrade", "h2c"),
    ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
    ("X-Turnout-Space", "forged"),
]


@pytest.mark.parametrize("server", FRONTS)
def test_h2c_upgrade_is_not_forwarded_unless_the_route_opts_in(env: Env, server: str) -> None:
    """Defect 2, h2c: without ``policy.upgrades`` naming it, ``Upgrade: h2c`` goes up as an
    ordinary request — no Upgrade, no HTTP2-Settings, the gateway's own X-Turnout-Space."""
    host = env.route(space_id="space-h2c")
    t = token("h2c")
    with env.conn(server) as conn:
        conn.send_request("GET", f"/ok/{t}", host, H2C)
        resp = conn.read_response()
    assert resp.status == 200 and resp.body == f"ok {t}".encode(), resp
    seen = env.hostile.request(t)
    assert seen is not None
    names = {k.lower() for k, _ in seen.headers}
    assert not names & {"upgrade", "http2-settings", "connection"}, seen.headers
    assert seen.header("x-turnout-space") == "space-h2c"


def test_h2c_upgrade_is_tunnelled_for_a_route_that_opts_in(env: Env) -> None:
    host = env.route(policy={"upgrades": ["websocket", "h2c"]})
    t = token("h2c-ok")
    with env.conn("native") as conn:
        conn.send_request("GET", f"/101-wrong-protocol/{t}", host, H2C)  # answers 101 h2c
        head = conn.read_head()
        assert head.status == 101 and head.header("upgrade") == "h2c", head
        conn.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        env.hostile.wait_for(
            lambda: (c := env.hostile.conn_with(t)) is not None and c.extra.startswith(b"PRI"),
            message="the h2c preface tunnelled",
        )
    seen = env.hostile.request(t)
    assert seen is not None and seen.header("upgrade") == "h2c", seen


def test_websocket_request_answered_with_another_protocol_is_refused(env: Env) -> None:
    """Defect 2: a 101 must name a protocol the request offered."""
    host = env.route()
    t = token("ws-h2c")
    with env.conn("native") as conn:
        conn.send_request(
            "GET",
            f"/101-wrong-protocol/{t}",
            host,
            [
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("Sec-WebSocket-Version", "13"),
            ],
        )
        resp = conn.read_response()
        assert_answer(resp, 502, "bad_gateway")
        assert closes(resp) and conn.closed_by_peer(timeout=3)


# ---------------------------------------------------------------------- defect 3


@pytest.mark.parametrize("server", FRONTS)
@pytest.mark.parametrize(
    "behaviour", ["huge-header", "huge-head", "many-headers", "endless-head", "continue-storm"]
)
def test_response_heads_over_the_limits_are_refused(env: Env, server: str, behaviour: str) -> None:
    """Defect 3: a 1 MiB header, a 16 MiB head, 20 000 headers, a head that never ends, a storm
    of 100 Continue: 502 ``upstream_header_too_large`` at once; the connection is usable."""
    host = env.route()
    t = token(behaviour)
    with env.conn(server) as conn:
        t0 = time.monotonic()
        conn.send_request("GET", f"/{behaviour}/{t}", host)
        resp = conn.read_response()
        assert_answer(resp, 502, "upstream_header_too_large")
        assert time.monotonic() - t0 < 2.0
        assert not closes(resp)
        conn.send_request("GET", f"/ok/{t}-next", host)
        assert conn.read_response().body == f"ok {t}-next".encode()


@pytest.mark.parametrize("server", FRONTS)
def test_a_head_that_never_completes_times_out(env: Env, server: str) -> None:
    """Defect 3: a head that trickles in, each line under every limit, never completes: 504
    after ``--response-header-timeout``, although bytes keep arriving (the read-idle deadline
    alone would never fire)."""
    deployment = f"dep-trickle-{server}"
    host = env.route(deployment_id=deployment)
    t0 = time.monotonic()
    resp = env.get(server, f"/trickle-head/{token('trickle')}", host, timeout=5)
    elapsed = time.monotonic() - t0
    assert_answer(resp, 504, "gateway_timeout")
    assert HEAD_TIMEOUT * 0.9 <= elapsed < HEAD_TIMEOUT + 1.0, elapsed
    row = wait_total(env, deployment, 1)
    assert row.get("total") == 1 and row.get("timeouts") == 1, row


@pytest.mark.parametrize("server", FRONTS)
def test_a_hostile_origin_has_no_head_of_line_effect_on_other_hosts(env: Env, server: str) -> None:
    """Defect 3: while four clients keep asking a host whose origin streams an endless head
    (1 MiB every 50 ms), another host's requests stay fast, none fails and its healthy replica
    is not ejected; the gateway's memory stays flat.

    The cause before the fix: httptools accumulated the endless head (quadratic copying), which
    starved the event loop; the other host's connects then timed out on the starved loop and
    were charged to its healthy replica (ejected: 503 ``no_upstream``), and the parser <->
    protocol cycles of dropped connections kept their buffers until a rare cyclic GC."""
    attacked = env.route()
    victim = env.route(env.good.url, deployment_id=f"dep-victim-{server}")
    proc = psutil.Process(env.gws[server].pid)
    rss0 = proc.memory_info().rss
    stop = threading.Event()
    attacks: list[int] = []

    def attack() -> None:
        while not stop.is_set():
            try:
                resp = env.get(server, f"/endless-head/{token('hol')}", attacked, timeout=10)
                attacks.append(resp.status)
            except OSError as exc:
                attacks.append(-1)
                print("attack failed:", exc)

    threads = [threading.Thread(target=attack) for _ in range(4)]
    for th in threads:
        th.start()
    latencies: list[float] = []
    failures: list[Any] = []
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            resp = env.get(server, "/echo", victim, timeout=10)
            latencies.append(time.monotonic() - t0)
            if resp.status != 200:
                failures.append(resp)
            time.sleep(0.01)
    finally:
        stop.set()
        for th in threads:
            th.join(15)
    rss1 = proc.memory_info().rss
    print(
        f"[{server}] victim: {len(latencies)} requests, p50 {statistics.median(latencies) * 1000:.1f}"
        f" ms, max {max(latencies) * 1000:.1f} ms; {len(attacks)} attacks; RSS "
        f"{rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MiB"
    )
    assert not failures, failures[:3]
    assert len(attacks) >= 20 and set(attacks) == {502}, attacks[:20]
    # Before the fix: 5.5-9.1 s, then 504, then 503. A loaded 2-core box still answers in ms.
    assert max(latencies) < 1.0, sorted(latencies)[-5:]
    assert rss1 - rss0 < 40 * 2**20, (rss0, rss1)


# ---------------------------------------------------------------------- defect 4


@pytest.mark.parametrize("server", FRONTS)
def test_invalid_response_is_counted_once_and_the_connection_stays_usable(
    env: Env, server: str
) -> None:
    """Defect 4: CL + TE from the upstream is a 502 that keeps the client connection usable
    (the request was read whole: nothing on the client side is ambiguous; nginx does the same),
    and the health row counts one error for one request."""
    deployment = f"dep-clte-{server}"
    host = env.route(deployment_id=deployment)
    with env.conn(server) as conn:
        conn.send_request("GET", f"/cl-and-te/{token('clte')}", host)
        resp = conn.read_response()
        assert_answer(resp, 502, "bad_gateway")
        assert not closes(resp)
        t = token("after-clte")
        conn.send_request("GET", f"/ok/{t}", env.route())
        after = conn.read_response()
        assert after.status == 200 and after.body == f"ok {t}".encode(), after
    row = wait_total(env, deployment, 1)
    assert row.get("total") == 1 and row.get("5xx") == 1, row


# ---------------------------------------------------------------------- defect 5 (native)


@pytest.mark.parametrize("pool", ["cold", "warm"])
def test_pipelined_requests_then_garbage_get_200_200_400(env: Env, pool: str) -> None:
    """Defect 5, as nginx: two valid pipelined requests followed by garbage are answered
    200, 200, then 400 and the connection closes — on a cold pool (connects still in flight
    when the garbage is parsed) as on a warm one."""
    with HostileUpstream() as origin:  # an origin no pool has a connection to yet
        host = env.route(origin.url)
        if pool == "warm":
            assert env.get("native", f"/ok/{token('warm')}", host).status == 200
        t1, t2 = token("p1"), token("p2")
        with env.conn("native") as conn:
            conn.send(
                f"GET /ok/{t1} HTTP/1.1\r\nHost: {host}\r\n\r\n"
                f"GET /ok/{t2} HTTP/1.1\r\nHost: {host}\r\n\r\nGARBAGE\r\n\r\n".encode()
            )
            first, second, third = (conn.read_response(timeout=3) for _ in range(3))
            assert first.status == 200 and first.body == f"ok {t1}".encode(), first
            assert second.status == 200 and second.body == f"ok {t2}".encode(), second
            assert_answer(third, 400, "bad_request")
            assert closes(third) and conn.closed_by_peer(timeout=2)


# ---------------------------------------------------------------------- defect 6


def test_malformed_chunked_body_in_the_first_read_gets_400_and_nothing_upstream(
    env: Env,
) -> None:
    """Defect 6: the error is in the read that completed the head, so nothing is forwarded —
    even with a warm pool, where the head could have gone upstream at once."""
    host = env.route()
    assert env.get("native", f"/ok/{token('warm6')}", host).status == 200  # a pooled connection
    t = token("chunk-first")
    with env.conn("native") as conn:
        conn.send(
            f"POST /ok/{t} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
            "Z\r\nZZ\r\n".encode()
        )
        resp = conn.read_response()
        assert_answer(resp, 400, "bad_request")
        assert closes(resp) and conn.closed_by_peer(timeout=2)
    time.sleep(0.2)
    assert env.hostile.request(t) is None  # the origin never saw it


@pytest.mark.parametrize("server", FRONTS)
def test_malformed_chunked_body_later_aborts_the_upstream_request(env: Env, server: str) -> None:
    """Defect 6: the head and a first chunk were forwarded; the bad chunk size comes later. The
    client gets a 400 and the origin's request is cut off (reset), never completed."""
    host = env.route()
    t = token("chunk-later")
    with env.conn(server) as conn:
        conn.send(
            f"POST /ok/{t} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
            "5\r\nhello\r\n".encode()
        )
        env.hostile.wait_for(
            lambda: (r := env.hostile.request(t)) is not None and r.body == b"hello",
            message="the first chunk forwarded",
        )
        conn.send(b"Z\r\nZZ\r\n")
        resp = conn.read_response()
        assert resp.status == 400, resp
        if server == "native":
            assert_answer(resp, 400, "bad_request")
        assert closes(resp)
    carrier = env.hostile.conn_with(t)
    assert carrier is not None
    assert env.hostile.wait_ended(carrier) == "reset"
    seen = env.hostile.request(t)
    assert seen is not None and not seen.complete and seen.body == b"hello", seen


# ---------------------------------------------------------------------- defect 7


@pytest.mark.parametrize("server", FRONTS)
@pytest.mark.parametrize("behaviour", ["te-gzip", "te-gzip-chunked"])
def test_transfer_codings_other_than_chunked_get_a_complete_502(
    env: Env, server: str, behaviour: str
) -> None:
    """Defect 7: a close-delimited ``Transfer-Encoding: gzip`` body (or gzip under chunked)
    cannot be passed on faithfully — the coding is hop-by-hop and the client never asked for
    it. The answer is a complete, framed 502, as nginx's ("upstream sent unknown
    Transfer-Encoding"); before, it was re-chunked and cut without its last chunk."""
    host = env.route()
    with env.conn(server) as conn:
        conn.send_request("GET", f"/{behaviour}/{token('te')}", host)
        resp = conn.read_response()
        assert resp.framing == "content-length", resp
        assert_answer(resp, 502, "bad_gateway")
        t = token("after-te")
        conn.send_request("GET", f"/ok/{t}", host)
        assert conn.read_response().body == f"ok {t}".encode()


# ---------------------------------------------------------------------- https:// absolute-form


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("https://{host}/ok/{t}?q=1", "/ok/{t}?q=1"),
        ("HTTPS://{host}/ok/{t}", "/ok/{t}"),
        ("http://{host}/ok/{t}", "/ok/{t}"),
    ],
)
def test_absolute_form_targets_route_by_their_authority(env: Env, target: str, path: str) -> None:
    """``https://`` absolute-form is accepted as nginx does: RFC 9112 §3.2.2, the authority
    replaces the Host header (routing and the Host the upstream sees); the scheme is a claim of
    the client's and does not change ``X-Forwarded-Proto`` (the connection's)."""
    host = env.route()
    t = token("abs")
    with env.conn("native") as conn:
        conn.send(
            f"GET {target.format(host=host, t=t)} HTTP/1.1\r\nHost: other.example\r\n\r\n".encode()
        )
        resp = conn.read_response()
    assert resp.status == 200 and resp.body == f"ok {t}".encode(), resp
    seen = env.hostile.request(t)
    assert seen is not None
    assert seen.target == path.format(t=t)
    assert seen.header("host") == host and seen.header("x-forwarded-proto") == "http"


def test_absolute_form_without_a_path_is_the_root(env: Env) -> None:
    host = env.route(env.good.url)
    resp = request(env.gws["native"].port, "GET", f"https://{host}?x=1", None)
    assert resp.status == 200, resp
    assert resp.json()["target"] == "/?x=1", resp.json()


@pytest.mark.parametrize(
    "target", ["https://user:pw@{host}/", "ftp://{host}/", "https:///x", "https://"]
)
def test_malformed_absolute_form_targets_get_400(env: Env, target: str) -> None:
    host = env.route(env.good.url)
    with env.conn("native") as conn:
        conn.send(f"GET {target.format(host=host)} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        resp = conn.read_response()
    assert_answer(resp, 400, "bad_request")


def test_asgi_front_end_routes_absolute_form_by_the_host_header(env: Env) -> None:
    """Under an ASGI server the authority of an absolute-form target never reaches the app
    (uvicorn puts only the path in the scope): the gateway routes by the Host header, and the
    upstream sees that same Host — routing and forwarding still agree."""
    host = env.route()
    t = token("abs-asgi")
    with env.conn("uvicorn") as conn:
        conn.send(f"GET https://elsewhere.example/ok/{t} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        resp = conn.read_response()
    assert resp.status == 200, resp
    seen = env.hostile.request(t)
    assert seen is not None and seen.header("host") == host


def test_hostile_upstream_records_resets() -> None:
    """The support server tells a reset from a close (defect 6's assertion relies on it)."""
    with HostileUpstream() as origin:
        sock = socket.create_connection(("127.0.0.1", origin.port))
        sock.sendall(b"POST /ok/r HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        origin.wait_request("r")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
        carrier = origin.conn_with("r")
        assert carrier is not None and origin.wait_ended(carrier) == "reset"
