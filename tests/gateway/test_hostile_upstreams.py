"""Differential harness: hostile upstream behaviours × {one client, two clients sharing the
pool} × {native, ASGI} front-ends (issue 17).

Every behaviour of :mod:`tests.support.hostile_upstream` — the defect classes found by the
outside probe and their neighbours: early answers, unrequested or wrong 101s, oversized,
endless and stalled heads, 1xx storms, CL+TE, duplicate and bad lengths, bad chunk sizes,
obs-fold, bare CR, LF-only, bad status lines, transfer codings, HEAD/204/304 with bodies, extra
and late bytes, close-delimited bodies — is run in two modes:

* ``one``: one client sends the hostile request, then its next request (on the same client
  connection when the answer kept it open) to *another tenant* routed to the same origin;
* ``two``: a second client's request to that other tenant is sent while the hostile exchange is
  in flight; with ``--pool-max-per-origin 1`` both must go through the origin's single pool slot.

and each time the test asserts:

1. **a framed answer to the client**: the expected status read by its framing — the gateway's
   own JSON answer with its error code, or the upstream's response passed on — or, where the
   upstream broke off after the head went out, a connection closed before the framing ended
   (the only way left to tell the client), and ``Connection: close`` where the answer promises
   the connection ends;
2. **no bytes of one exchange in another**: the other request gets exactly its own answer
   (``ok <token>``), reaches the upstream as a complete request of its own, and nothing of the
   hostile exchange (``hostile-SECRET``) reaches that client;
3. **the pool connection discarded**: the upstream connection that carried the hostile exchange
   ends and never carries another request;
4. **counters counted once**: each deployment's health rows in Redis count its request exactly
   once, in the expected class (the deployments are unique per case).

One gateway process per front-end serves the module (``--server native`` and ``--server
uvicorn``), with short deadlines by flags (``--response-header-timeout 0.5``) and a 20 ms
counter flush; every case's hosts are published once at start-up.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from tests.support.gateway_proc import GatewayProcess, Publisher, gateway_error, health_totals
from tests.support.hostile_upstream import BEHAVIOURS, HostileUpstream, gateway_args
from tests.support.rawhttp import ConnectionClosed, RawConnection, RawResponse
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.e2e

FRONTS = ("native", "uvicorn")
MODES = ("one", "two")
FLUSH = 0.02  # --flush-interval
HEAD_TIMEOUT = 0.5  # --response-header-timeout
EXIT_OK = (0, -15)  # uvicorn re-raises the SIGTERM it handled gracefully
SECRET = b"hostile-SECRET"
UPLOAD = 100_000  # declared body of the early-answer request; 1 000 bytes are sent first


@dataclass(frozen=True)
class Case:
    behaviour: str
    status: int
    code: str | None = None  # the gateway's own answer (its error code); None: the upstream's
    cut: bool = False  # the head went out, then the connection closed before the framing ended
    discard: bool = True  # the upstream connection must never carry another request
    close: frozenset[str] = field(default_factory=frozenset)  # fronts answering Connection: close
    method: str = "GET"
    health: str = "5xx"  # the health field that counts it
    timeout: bool = False

    @property
    def id(self) -> str:
        return self.behaviour


BOTH = frozenset(FRONTS)


def bad(behaviour: str, code: str = "bad_gateway", **kw: Any) -> Case:
    return Case(behaviour, 502, code, **kw)


def too_large(behaviour: str) -> Case:
    return Case(behaviour, 502, "upstream_header_too_large")


def late(behaviour: str) -> Case:
    return Case(behaviour, 504, "gateway_timeout", timeout=True)


CASES = [
    Case("ok", 200, discard=False, health="2xx"),
    Case("early-401", 401, method="POST", close=frozenset({"native"}), health="4xx"),
    bad("unrequested-101", close=BOTH),
    bad("101-without-upgrade", close=BOTH),
    bad("101-wrong-protocol", close=BOTH),
    too_large("huge-header"),
    too_large("huge-head"),
    too_large("many-headers"),
    too_large("101-headers"),
    Case("100-headers", 200, discard=False, health="2xx"),
    too_large("endless-head"),
    late("trickle-head"),
    late("stalled-head"),
    too_large("continue-storm"),
    Case("early-hints", 200, discard=False, health="2xx"),
    Case("continue-no-reason", 200, discard=False, health="2xx"),
    bad("cl-and-te"),
    bad("duplicate-cl"),
    bad("duplicate-cl-same"),
    bad("negative-cl"),
    bad("bad-chunk-size"),
    bad("chunk-size-overflow"),
    Case("bad-chunk-late", 200, cut=True),
    bad("obs-fold"),
    bad("bare-cr"),
    bad("lf-only"),
    bad("nul-in-header"),
    bad("space-in-name"),
    bad("status-4-digits"),
    bad("status-2-digits"),
    bad("not-http"),
    bad("garbage"),
    bad("te-gzip"),
    bad("te-gzip-chunked"),
    bad("te-chunked-gzip"),
    Case("head-with-body", 200, method="HEAD", health="2xx"),
    Case("204-with-body", 204, health="2xx"),
    Case("304-with-body", 304, health="other"),
    Case("extra-response", 200, health="2xx"),
    Case("late-bytes", 200, health="2xx"),
    Case("close-mid-body", 200, cut=True),
    Case("close-delimited", 200, health="2xx"),
    Case("http10-close-delimited", 200, health="2xx"),
    Case("connection-close", 200, health="2xx"),
]


def test_every_behaviour_has_a_case() -> None:
    assert sorted(c.behaviour for c in CASES) == sorted(BEHAVIOURS)


# ---------------------------------------------------------------------- fixtures


@dataclass
class Front:
    server: str
    gw: GatewayProcess
    hostile: HostileUpstream
    redis: redis.Redis
    prefix: str

    def hosts(self, case: Case, mode: str) -> tuple[str, str]:
        base = f"{_slug(case.behaviour)}-{mode}.{self.server}.hostile.test"
        return f"a.{base}", f"b.{base}"

    def health(self, deployment: str) -> dict[str, int]:
        return health_totals(self.redis, self.prefix, deployment)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _deployments(case: Case, mode: str) -> tuple[str, str]:
    slug = _slug(case.behaviour)
    return f"a-{slug}-{mode}", f"b-{slug}-{mode}"


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileUpstream]:
    with HostileUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module", params=FRONTS)
def front(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    hostile: HostileUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Front]:
    server: str = request.param
    if not redis_server.is_running():
        redis_server.start()
    prefix = f"hostile{os.getpid()}{server}"
    gw = GatewayProcess(
        redis_server.url,
        tmp_path_factory.mktemp(f"gateway-{server}"),
        prefix=prefix,
        extra_args=gateway_args(server, head_timeout=HEAD_TIMEOUT, flush=FLUSH),
        name=f"gw-{server}",
    )
    gw.start()
    client = redis.Redis.from_url(redis_server.url)
    try:
        pub = Publisher(redis_server.url, prefix)
        records = []
        for case in CASES:
            for mode in MODES:
                host_a, host_b = Front(server, gw, hostile, client, prefix).hosts(case, mode)
                dep_a, dep_b = _deployments(case, mode)
                policy = {"read_timeout_ms": 2000}
                records.append(
                    pub.record(host_a, [hostile.url], deployment_id=dep_a, policy=policy)
                )
                records.append(
                    pub.record(host_b, [hostile.url], deployment_id=dep_b, policy=policy)
                )
        pub.publish_records(records)
        pub.barrier(gw)
        yield Front(server, gw, hostile, client, prefix)
    finally:
        client.close()
        code = gw.stop()
        assert code in EXIT_OK, f"gateway exited with {code}\n{gw.stderr_text()[-4000:]}"


# ---------------------------------------------------------------------- the table


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_upstream(front: Front, case: Case, mode: str) -> None:
    hostile = front.hostile
    host_a, host_b = front.hosts(case, mode)
    token_a = f"{_slug(case.behaviour)}-{mode}-{front.server}-a"
    token_b = f"{_slug(case.behaviour)}-{mode}-{front.server}-b"
    conn = RawConnection(front.gw.port, timeout=10)
    other: dict[str, Any] = {}
    thread: threading.Thread | None = None
    try:
        _send_hostile(conn, case, host_a, token_a)
        hostile.wait_request(token_a)
        if case.behaviour == "late-bytes":  # the unsolicited bytes must have landed first
            carrier = hostile.conn_with(token_a)
            assert carrier is not None
            hostile.wait_ended(carrier)
        if mode == "two":
            thread = threading.Thread(target=_other_client, args=(front, host_b, token_b, other))
            thread.start()
        resp, cut = _read_outcome(conn, case)
        _check_outcome(front, case, resp, cut)
        if case.behaviour == "continue-no-reason" and front.server == "native":
            # each head keeps its own reason: the final one has none, not the 100's "Continue"
            assert resp.raw_head.startswith(b"HTTP/1.1 200 \r\n"), resp.raw_head[:40]
        if case.method == "HEAD":  # the head of the GET answer, none of the body sent after it
            assert resp.header("content-length") == str(len(f"ok {token_a}")), resp
            assert resp.body == b"", resp
        if mode == "one":
            next_conn = conn
            if cut or _closes(resp) or conn.eof:
                next_conn = RawConnection(front.gw.port, timeout=10)
            elif case.method == "POST":
                next_conn.send(b"x" * (UPLOAD - 1000))  # what the request still owed
            try:
                next_conn.send(_request("GET", host_b, f"/ok/{token_b}"))
                other["resp"] = next_conn.read_response()
            finally:
                if next_conn is not conn:
                    next_conn.close()
    finally:
        if thread is not None:
            thread.join(15)
        conn.close()

    # 2. the other request got exactly its own answer, as a complete request of its own
    got = other.get("resp")
    assert isinstance(got, RawResponse), f"[{front.server}] other client: {other}"
    assert got.status == 200 and got.body == f"ok {token_b}".encode(), got
    assert SECRET not in got.raw_head + got.body
    seen_b = hostile.request(token_b)
    assert seen_b is not None and seen_b.complete and seen_b.method == "GET", seen_b

    # 3. the hostile exchange's upstream connection was discarded
    carrier = hostile.conn_with(token_a)
    assert carrier is not None
    if case.discard:
        hostile.wait_ended(carrier)
        tokens = carrier.tokens()
        assert tokens[-1] == token_a, f"reused after the hostile exchange: {tokens}"
    assert SECRET not in carrier.extra  # nothing ever flowed back into a tunnel
    if case.behaviour.endswith("101") or "101-" in case.behaviour:
        assert carrier.extra == b"", carrier.extra[:200]

    # 4. each request counted once, in its class
    dep_a, dep_b = _deployments(case, mode)
    _wait_counted(front, dep_a, case.health, case.timeout)
    _wait_counted(front, dep_b, "2xx", False)


def _request(method: str, host: str, target: str, extra: bytes = b"") -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n".encode() + extra + b"\r\n"


def _send_hostile(conn: RawConnection, case: Case, host: str, token: str) -> None:
    target = f"/{case.behaviour}/{token}"
    if case.method == "POST":
        # An upload the origin answers before reading: 1 000 of 100 000 bytes sent so far.
        head = _request("POST", host, target, b"Content-Length: %d\r\n" % UPLOAD)
        conn.send(head + b"x" * 1000)
    else:
        conn.send(_request(case.method, host, target))


def _other_client(front: Front, host: str, token: str, out: dict[str, Any]) -> None:
    try:
        with RawConnection(front.gw.port, timeout=10) as conn:
            conn.send(_request("GET", host, f"/ok/{token}", b"Cookie: session=other-tenant\r\n"))
            out["resp"] = conn.read_response()
    except Exception as exc:  # reported by the test's assertion on out["resp"]
        out["error"] = repr(exc)


def _read_outcome(conn: RawConnection, case: Case) -> tuple[RawResponse, bool]:
    resp = conn.read_head()
    try:
        conn.read_body(resp, method=case.method)
    except ConnectionClosed:
        return resp, True
    return resp, False


def _closes(resp: RawResponse) -> bool:
    return (resp.header("connection") or "").lower() == "close"


def _check_outcome(front: Front, case: Case, resp: RawResponse, cut: bool) -> None:
    where = f"[{front.server}] {case.behaviour}"
    assert resp.status == case.status, f"{where}: {resp}"
    assert cut == case.cut, f"{where}: cut={cut}: {resp}"
    assert SECRET not in resp.raw_head + resp.body, f"{where}: {resp}"
    rid = resp.header("x-request-id")
    assert rid, f"{where}: no X-Request-Id: {resp}"
    if case.code is not None:
        assert (resp.header("content-type") or "").startswith("application/json"), resp
        err = gateway_error(resp.body)
        assert err["code"] == case.code and err["request_id"] == rid, f"{where}: {err}"
    if front.server in case.close:
        assert _closes(resp), f"{where}: no Connection: close: {resp}"


def _wait_counted(front: Front, deployment: str, field_name: str, timeout: bool) -> None:
    """Exactly one request counted for ``deployment``, in ``field_name`` — still so after two
    more flushes (a second report would land in the same flush or the next)."""
    deadline = time.monotonic() + 5
    row = front.health(deployment)
    while row.get("total", 0) < 1 and time.monotonic() < deadline:
        time.sleep(FLUSH)
        row = front.health(deployment)
    time.sleep(3 * FLUSH)
    row = front.health(deployment)
    assert row.get("total") == 1, f"[{front.server}] {deployment}: {row}"
    if field_name != "other":
        assert row.get(field_name) == 1, f"[{front.server}] {deployment}: {row}"
    assert row.get("timeouts", 0) == (1 if timeout else 0), f"[{front.server}] {deployment}: {row}"
