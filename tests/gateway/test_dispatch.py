"""Dispatch core (transport-free): Host handling for absolute-form targets and Connection."""

from __future__ import annotations

from gateway.config import GatewayConfig
from gateway.dispatch import Dispatcher, Plan
from routing.compiled import CompiledRoute
from routing.models import decode_record
from routing.store import MemoryRouteStore
from routing.table import RouteTable


def _dispatcher(policy: dict[str, object] | None = None) -> Dispatcher:
    table = RouteTable(MemoryRouteStore())
    for host in ("a.test", "b.test"):
        record = decode_record(
            {
                "host": host,
                "version": 1,
                "space_id": "sp",
                "service_id": "svc",
                "policy": policy or {},
                "endpoints": [
                    {
                        "path_prefix": "/",
                        "targets": [
                            {
                                "deployment_id": "d",
                                "weight": 10000,
                                "status": "active",
                                "upstreams": ["http://127.0.0.1:9"],
                            }
                        ],
                    }
                ],
            }
        )
        table.routes[host.encode()] = CompiledRoute(record, table.registry)
    return Dispatcher(table, GatewayConfig())


def _hosts(plan: Plan) -> list[bytes]:
    lines = plan.header_block.split(b"\r\n")
    return [line.split(b": ", 1)[1] for line in lines if line.lower().startswith(b"host: ")]


def test_absolute_form_authority_replaces_the_host_header() -> None:
    d = _dispatcher()
    plan = d.prepare(b"GET", b"/reset", b"a.test", [(b"Host", b"evil.example")], "10.0.0.1", 0.0)
    assert isinstance(plan, Plan)
    assert plan.host == b"a.test"
    assert _hosts(plan) == [b"a.test"]  # routed by a.test, so the upstream sees a.test


def test_absolute_form_without_host_header_gets_one() -> None:
    plan = _dispatcher().prepare(b"GET", b"/", b"b.test", [], "10.0.0.1", 0.0)
    assert isinstance(plan, Plan)
    assert _hosts(plan) == [b"b.test"]


def test_connection_cannot_nominate_host_away() -> None:
    headers = [(b"Host", b"a.test"), (b"Connection", b"host, x-drop"), (b"X-Drop", b"1")]
    plan = _dispatcher().prepare(b"GET", b"/", None, headers, "10.0.0.1", 0.0)
    assert isinstance(plan, Plan)
    assert _hosts(plan) == [b"a.test"]
    assert b"x-drop" not in plan.header_block.lower()


def test_header_rules_hold_in_any_letter_case() -> None:
    """The per-name class cache is keyed by the name as received: every spelling is classified."""
    headers = [
        (b"HOST", b"a.test"),
        (b"x-TURNOUT-space", b"forged"),
        (b"Proxy-Authorization", b"secret"),
        (b"KEEP-ALIVE", b"timeout=5"),
        (b"X-Forwarded-HOST", b"forged.example"),
        (b"x-forwarded-for", b"198.51.100.7"),
        (b"X-REQUEST-ID", b"abc-123"),
        (b"Cookie", b"a=1"),
        (b"X-Custom", b"kept"),
        (b"x-custom-2", b"kept too"),
    ]
    plan = _dispatcher().prepare(b"GET", b"/p?q=1", None, headers, "10.0.0.1", 0.0)
    assert isinstance(plan, Plan)
    block = plan.header_block
    lines = block.split(b"\r\n")
    assert b"X-Custom: kept" in lines and b"x-custom-2: kept too" in lines
    assert b"Cookie: a=1" in lines
    assert b"forged" not in block and b"secret" not in block and b"timeout=5" not in block
    assert b"X-Forwarded-For: 198.51.100.7, 10.0.0.1" in lines
    assert b"X-Forwarded-Host: a.test" in lines
    assert b"X-Request-Id: abc-123" in lines
    assert b"X-Turnout-Space: sp" in lines
    assert block.endswith(b"\r\n\r\n")


def test_header_class_cache_stays_bounded_and_correct() -> None:
    from gateway import headers

    for i in range(3 * headers._CLASS_CACHE_MAX):
        assert headers.request_header_class(b"X-Made-Up-%d" % i) == headers.H_FORWARD
        assert headers.response_header_class(b"X-Made-Up-%d" % i) == headers.R_FORWARD
    assert len(headers._request_class_cache) <= headers._CLASS_CACHE_MAX
    assert len(headers._response_class_cache) <= headers._CLASS_CACHE_MAX
    assert headers.request_header_class(b"Content-LENGTH") == headers.H_CONTENT_LENGTH
    assert headers.request_header_class(b"X-Turnout-Deployment") == headers.H_OVERRIDE
    assert headers.request_header_class(b"x-turnout-anything") == headers.H_DROP
    assert headers.request_header_class(b"proxy-connection") == headers.H_DROP
    assert headers.response_header_class(b"Transfer-Encoding") == headers.R_TRANSFER_ENCODING
    assert headers.response_header_class(b"X-Request-ID") == headers.R_DROP
    assert headers.response_header_class(b"Proxy-Authenticate") == headers.R_DROP


def test_request_ids_are_unique_and_sane_across_the_table_boundaries() -> None:
    from gateway.dispatch import _REQUEST_ID_OK, RequestIds

    ids = RequestIds()
    seen = [ids.next() for _ in range(3 * 0x1000 + 5)]
    assert len(set(seen)) == len(seen)
    prefix = seen[0].split(b"-")[0]
    assert len(prefix) == 12
    for n, rid in enumerate(seen, start=1):
        head, _, counter = rid.partition(b"-")
        assert head == prefix and int(counter, 16) == n, (n, rid)
        assert not rid.translate(None, _REQUEST_ID_OK)  # the gateway would accept it back
    # seen[i] is id number i + 1
    assert seen[0].endswith(b"-001") and seen[0xFFE].endswith(b"-fff")
    assert seen[0xFFF].endswith(b"-1000") and seen[0x2004].endswith(b"-2005")


H2C = [
    (b"Host", b"a.test"),
    (b"Connection", b"Upgrade, HTTP2-Settings"),
    (b"Upgrade", b"h2c"),
    (b"HTTP2-Settings", b"AAMAAABkAARAAAAAAAIAAAAA"),
]
WEBSOCKET = [(b"Host", b"a.test"), (b"Connection", b"upgrade"), (b"Upgrade", b"websocket")]


def test_upgrades_only_to_protocols_the_route_allows() -> None:
    """Default ``policy.upgrades`` is ``["websocket"]``: h2c goes up as an ordinary request,
    without Upgrade and without the HTTP2-Settings its Connection header names."""
    plan = _dispatcher().prepare(b"GET", b"/", None, H2C, "10.0.0.1", 0.0)
    assert isinstance(plan, Plan) and plan.upgrade is None
    block = plan.header_block.lower()
    assert b"upgrade" not in block and b"http2-settings" not in block, block
    ws = _dispatcher().prepare(b"GET", b"/", None, WEBSOCKET, "10.0.0.1", 0.0)
    assert isinstance(ws, Plan) and ws.upgrade == b"websocket"
    assert b"Connection: upgrade\r\nUpgrade: websocket\r\n" in ws.header_block
    refused = _dispatcher({"upgrades": []}).prepare(b"GET", b"/", None, WEBSOCKET, "10.0.0.1", 0.0)
    assert isinstance(refused, Plan) and refused.upgrade is None
    assert b"upgrade" not in refused.header_block.lower()


def test_an_h2c_opt_in_forwards_the_settings_with_the_upgrade() -> None:
    d = _dispatcher({"upgrades": ["websocket", "h2c"]})
    plan = d.prepare(b"GET", b"/", None, H2C, "10.0.0.1", 0.0)
    assert isinstance(plan, Plan) and plan.upgrade == b"h2c"
    lines = plan.header_block.split(b"\r\n")
    assert b"Connection: upgrade, HTTP2-Settings" in lines
    assert b"Upgrade: h2c" in lines and b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA" in lines


def test_only_the_allowed_protocols_of_a_list_are_offered() -> None:
    headers = [
        (b"Host", b"a.test"),
        (b"Connection", b"upgrade"),
        (b"Upgrade", b"h2c, WebSocket, foo/2"),
    ]
    plan = _dispatcher({"upgrades": ["websocket", "foo"]}).prepare(
        b"GET", b"/", None, headers, "10.0.0.1", 0.0
    )
    assert isinstance(plan, Plan) and plan.upgrade == b"WebSocket, foo/2"


def test_upstream_failures_map_to_one_answer_each() -> None:
    from gateway import errors
    from gateway.errors import UpstreamError
    from gateway.forwarding import upstream_answer

    def answer(kind: str, responded: bool = False) -> errors.Answer:
        return upstream_answer(UpstreamError(kind, "x"), responded=responded)

    assert answer("timeout") is errors.GATEWAY_TIMEOUT
    assert answer("timeout", True) is errors.GATEWAY_TIMEOUT
    assert answer("pool") is errors.NO_UPSTREAM
    assert answer("connect") is errors.BAD_GATEWAY
    assert answer("reset") is errors.BAD_GATEWAY
    assert answer("reset", True) is errors.BAD_GATEWAY_RESPONSE
    assert answer("protocol", True) is errors.BAD_GATEWAY_RESPONSE
    assert answer("head_too_large", True).code == "upstream_header_too_large"
    upgrade = answer("upgrade", True)
    assert (upgrade.status, upgrade.code, upgrade.close) == (502, "bad_gateway", True)
