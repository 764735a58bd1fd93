"""D5: the manifest is the truth for its routes — every route edit, against the published record.

A hostname serves exactly the routes the latest app manifest declares for it: a path or method
edit is published as it is, a hostname moved to another service of the app follows with its
claim, and a hostname no route names any more is withdrawn (a tombstone: the gateway answers
404) while its space keeps the verified claim, so routing it again needs no new proof. Never a
catch-all ``/`` for every method, which is what dropping a route used to publish.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from admin.db import service_routes
from tests.admin.conftest import assert_error, auth, bootstrap, create_space, rows
from tests.admin.dns_support import (
    BASE,
    CLIENT_FIXTURE,
    DNS_FIXTURE,
    dns_client,
    hostname_url,
    prove,
)
from tests.admin.publishing import add_host, drain, store_get, store_log

CUSTOM = "shop.example.com"
UPSTREAMS = {"web": "http://127.0.0.1:9001", "api": "http://127.0.0.1:9002"}


dns = DNS_FIXTURE
client = CLIENT_FIXTURE


@pytest.fixture
def world(client: TestClient) -> dict[str, str]:
    system = bootstrap(client)
    return {"system": system, "space": create_space(client, system, "team")}


def app_manifest(
    routes: list[dict[str, Any]], *, app: str = "shop", services: tuple[str, ...] = ("web", "api")
) -> dict[str, Any]:
    return {
        "apiVersion": "turnout/v1",
        "kind": "App",
        "metadata": {"name": app},
        "spec": {
            "services": {
                s: {"type": "http", "upstreams": [UPSTREAMS.get(s, "http://127.0.0.1:9003")]}
                for s in services
            },
            "routes": routes,
        },
    }


def deploy(client: TestClient, w: dict[str, str], doc: dict[str, Any]) -> Any:
    return client.post(
        f"/api/spaces/{w['space']}/app-deployments",
        content=orjson.dumps(doc),
        headers={**auth(w["system"]), "content-type": "application/json"},
    )


def deploy_ok(client: TestClient, w: dict[str, str], doc: dict[str, Any]) -> dict[str, str]:
    """Deploy, publish, and return ``{service name: service id}``."""
    r = deploy(client, w, doc)
    assert r.status_code == 201, r.text
    drain(client)
    return {s["name"]: s["service_id"] for s in r.json()["services"]}


def served(client: TestClient, host: str) -> tuple[str, list[tuple[str, list[str]]]] | None:
    """``(service id, [(path prefix, methods)])`` of the host's published record (or None)."""
    drain(client)
    record = store_get(client, host)
    if record is None:
        return None
    ends = sorted((e["path_prefix"], list(e["methods"])) for e in record["endpoints"])
    return record["service_id"], ends


def hostname(client: TestClient, w: dict[str, str], service: str, host: str) -> dict[str, Any]:
    r = client.get(hostname_url(w["space"], service, host), headers=auth(w["system"]))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


ROUTE = {"service": "web", "hostname": CUSTOM, "path": "/api", "methods": ["GET", "POST"]}


def test_dropping_a_route_withdraws_its_hostname_and_keeps_the_claim(
    client: TestClient, world: dict[str, str], dns: Path
) -> None:
    """The probe's case: the route dropped, the verified hostname was republished as ``/``
    with every method. Now: withdrawn, still claimed and verified, back without a new proof."""
    ids = deploy_ok(client, world, app_manifest([ROUTE, {"service": "web"}]))
    assert served(client, CUSTOM) is None  # not proven yet
    prove(client, dns, world["system"], world["space"], "web", CUSTOM)
    assert served(client, CUSTOM) == (ids["web"], [("/api", ["GET", "POST"])])

    deploy_ok(client, world, app_manifest([{"service": "web"}]))
    assert served(client, CUSTOM) is None
    assert store_log(client, CUSTOM)[-1].record is None  # a tombstone went out
    claim = hostname(client, world, "web", CUSTOM)
    assert (claim["status"], claim["verified"], claim["routed"]) == ("verified", True, False)
    # The platform hostname still serves what its route says.
    platform = f"web.shop.{BASE}"
    assert served(client, platform) == (ids["web"], [("/", [])])
    assert hostname(client, world, "web", platform)["routed"] is True

    # Routing it again needs no new proof.
    deploy_ok(client, world, app_manifest([ROUTE, {"service": "web"}]))
    assert served(client, CUSTOM) == (ids["web"], [("/api", ["GET", "POST"])])
    assert hostname(client, world, "web", CUSTOM)["routed"] is True


def test_path_and_method_edits_are_published_exactly(
    client: TestClient, world: dict[str, str], dns: Path
) -> None:
    ids = deploy_ok(client, world, app_manifest([ROUTE]))
    prove(client, dns, world["system"], world["space"], "web", CUSTOM)
    edits: list[tuple[list[dict[str, Any]], list[tuple[str, list[str]]]]] = [
        ([{**ROUTE, "path": "/v2"}], [("/v2", ["GET", "POST"])]),
        ([{**ROUTE, "methods": ["GET"]}], [("/api", ["GET"])]),
        ([{**ROUTE, "methods": ["DELETE", "get"]}], [("/api", ["DELETE", "GET"])]),
        (
            [{**ROUTE, "path": "/a"}, {**ROUTE, "path": "/b", "methods": ["PUT"]}],
            [("/a", ["GET", "POST"]), ("/b", ["PUT"])],
        ),
        ([{**ROUTE, "path": "/b", "methods": ["PUT"]}], [("/b", ["PUT"])]),
        ([{k: v for k, v in ROUTE.items() if k != "methods"}], [("/api", [])]),
    ]
    for routes, expected in edits:
        deploy_ok(client, world, app_manifest(routes))
        assert served(client, CUSTOM) == (ids["web"], expected), routes


@pytest.mark.parametrize("order", [("web", "api"), ("api", "web")])
def test_hostname_moved_to_another_service_of_the_app(
    client: TestClient, world: dict[str, str], dns: Path, order: tuple[str, str]
) -> None:
    ids = deploy_ok(client, world, app_manifest([ROUTE], services=order))
    prove(client, dns, world["system"], world["space"], "web", CUSTOM)
    moved = [{"service": "api", "hostname": CUSTOM, "path": "/v2"}, {"service": "web"}]
    assert deploy_ok(client, world, app_manifest(moved, services=order)) == ids
    assert served(client, CUSTOM) == (ids["api"], [("/v2", [])])
    record = store_get(client, CUSTOM)
    assert record is not None
    [target] = record["endpoints"][0]["targets"]
    assert target["upstreams"] == [UPSTREAMS["api"]]
    # The claim moved with its proof; web does not list it any more.
    claim = hostname(client, world, "api", CUSTOM)
    assert (claim["verified"], claim["routed"], claim["service_id"]) == (True, True, ids["api"])
    web = client.get(hostname_url(world["space"], "web"), headers=auth(world["system"]))
    assert CUSTOM not in [h["host"] for h in web.json()["items"]]
    # And back.
    deploy_ok(client, world, app_manifest([ROUTE], services=order))
    assert served(client, CUSTOM) == (ids["web"], [("/api", ["GET", "POST"])])


def test_a_move_respects_the_hostname_limit(tmp_path: Path, dns: Path) -> None:
    with dns_client(tmp_path, dns, max_hostnames_per_service=1) as c:
        system = bootstrap(c)
        w = {"system": system, "space": create_space(c, system, "team")}
        first = [{"service": "web", "hostname": f"a.{BASE}"}]  # api: its platform hostname
        ids = deploy_ok(c, w, app_manifest(first))
        moved = [{"service": "api", "hostname": f"a.{BASE}"}, {"service": "web"}]
        assert_error(deploy(c, w, app_manifest(moved)), 409, "hostname_limit")
        assert served(c, f"a.{BASE}") == (ids["web"], [("/", [])])  # nothing changed


def test_a_hostname_of_another_apps_service_does_not_move(
    client: TestClient, world: dict[str, str]
) -> None:
    host = f"blog.{BASE}"
    ids = deploy_ok(client, world, app_manifest([{"service": "web", "hostname": host}]))
    r = deploy(
        client,
        world,
        app_manifest([{"service": "feed", "hostname": host}], app="news", services=("feed",)),
    )
    err = assert_error(r, 409, "hostname_taken")
    assert "service web of this space" in err["message"]
    assert served(client, host) == (ids["web"], [("/", [])])


def test_one_hostname_for_two_services_is_422(client: TestClient, world: dict[str, str]) -> None:
    two = [
        {"service": "web", "hostname": CUSTOM, "path": "/web"},
        {"service": "api", "hostname": CUSTOM, "path": "/api"},
    ]
    err = assert_error(deploy(client, world, app_manifest(two)), 422, "invalid_manifest")
    assert [f["path"] for f in err["details"]["fields"]] == ["spec.routes[1].hostname"]
    # A service without routes serves its platform hostname: nobody else may route it.
    steal = [{"service": "api", "hostname": f"web.shop.{BASE}"}]
    err = assert_error(deploy(client, world, app_manifest(steal)), 422, "invalid_manifest")
    assert [f["path"] for f in err["details"]["fields"]] == ["spec.routes[0].hostname"]
    assert "service web" in err["message"]


def test_a_hostname_added_through_the_api_is_not_routed_until_a_route_names_it(
    client: TestClient, world: dict[str, str]
) -> None:
    ids = deploy_ok(client, world, app_manifest([{"service": "web", "path": "/api"}]))
    extra = f"extra.{BASE}"
    r = add_host(client, world["system"], world["space"], "web", extra)
    assert r.status_code == 201, r.text
    assert (r.json()["verified"], r.json()["routed"]) == (True, False)
    assert served(client, extra) is None  # no widening to the service's other routes either
    routes = [{"service": "web", "path": "/api"}, {"service": "web", "hostname": extra}]
    deploy_ok(client, world, app_manifest(routes))
    assert served(client, extra) == (ids["web"], [("/", [])])
    assert hostname(client, world, "web", extra)["routed"] is True


def test_a_service_without_routes_gets_its_catch_all_written_down(
    client: TestClient, world: dict[str, str]
) -> None:
    ids = deploy_ok(client, world, app_manifest([{"service": "web", "path": "/w"}]))
    found = rows(
        client,
        sa.select(
            service_routes.c.host, service_routes.c.path_prefix, service_routes.c.methods
        ).where(service_routes.c.service_id == ids["api"]),
    )
    assert [(r.host, r.path_prefix, r.methods) for r in found] == [(f"api.shop.{BASE}", "/", "[]")]
    assert served(client, f"api.shop.{BASE}") == (ids["api"], [("/", [])])
    # Once web has a route of its own, its old platform hostname is not routed any more.
    assert served(client, f"web.shop.{BASE}") == (ids["web"], [("/w", [])])


# ------------------------------------------------------------------------------ generative

HOSTS = ("a", "b", "c")
PATHS = ("/", "/api", "/v2")
METHODS = ("GET", "POST", "DELETE")

# One manifest's routes: each of a few hostnames goes to one service with a few endpoints.
_endpoint = st.tuples(st.sampled_from(PATHS), st.frozensets(st.sampled_from(METHODS)))
_host_routes = st.tuples(st.sampled_from(("web", "api")), st.frozensets(_endpoint, min_size=1))
_manifest_routes = st.dictionaries(st.sampled_from(HOSTS), _host_routes, max_size=3)
_examples = itertools.count()


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=st.lists(_manifest_routes, min_size=1, max_size=4))
def test_every_published_record_is_exactly_what_the_latest_manifest_declares(
    client: TestClient, world: dict[str, str], history: list[dict[str, Any]]
) -> None:
    """Random sequences of manifests over a few hostnames, services, paths and methods: after
    each deployment, every hostname ever routed serves exactly the latest manifest's routes for
    it (by the declaring service), or nothing."""
    n = next(_examples)
    w = {**world, "space": create_space(client, world["system"], f"gen{n}")}
    seen: set[str] = set()
    for declared in history:
        routes: list[dict[str, Any]] = []
        expected: dict[str, tuple[str, list[tuple[str, list[str]]]]] = {}
        for label, (service, ends) in sorted(declared.items()):
            host = f"{label}{n}.{BASE}"
            for path, methods in sorted(ends, key=lambda e: (e[0], sorted(e[1]))):
                routes.append(
                    {"service": service, "hostname": host, "path": path, "methods": sorted(methods)}
                )
            expected[host] = (service, sorted((p, sorted(m)) for p, m in ends))
        for service in ("web", "api"):  # a service without routes serves its platform name
            if all(s != service for s, _ in declared.values()):
                expected[f"{service}.app{n}.{BASE}"] = (service, [("/", [])])
        ids = deploy_ok(client, w, app_manifest(routes, app=f"app{n}"))
        seen |= set(expected)
        for host in sorted(seen):
            want = expected.get(host)
            got = served(client, host)
            assert got == (None if want is None else (ids[want[0]], want[1])), (host, declared)
