"""Dispatch core (transport-free): Host handling for absolute-form targets and Connection."""

from __future__ import annotations

from gateway.config import GatewayConfig
from gateway.dispatch import Dispatcher, Plan
from routing.compiled import CompiledRoute
from routing.models import decode_record
from routing.store import MemoryRouteStore
from routing.table import RouteTable


def _dispatcher() -> Dispatcher:
    table = RouteTable(MemoryRouteStore())
    for host in ("a.test", "b.test"):
        record = decode_record(
            {
                "host": host,
                "version": 1,
                "space_id": "sp",
                "service_id": "svc",
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
