"""App deployments from manifests: strategies, rollback, hostnames, masked snapshots, secrecy.

Everything goes through the in-process admin app (SQLite file + MemoryRouteStore). Publishing is
observed by draining the publisher on the app's loop and reading the store, and SQL is checked
directly. A response hook records every API response body of each test; at teardown none may
contain a plaintext env/secret/binding value of the manifests deployed here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.testclient import TestClient

from admin.app import create_app
from admin.crypto import KeyRing, mask
from admin.db import (
    app_deployments,
    audit_log,
    deployments,
    hostnames,
    make_engine,
    now_ms,
    publish_queue,
    service_routes,
    services,
    snapshots,
)
from admin.manifest import parse_manifest
from admin.rekey import run_rekey
from admin.settings import Settings
from routing.models import RouteRecord, decode_record
from routing.store import MemoryRouteStore
from tests.admin.conftest import (
    TEST_KEYS,
    assert_error,
    auth,
    bootstrap,
    call,
    create_space,
    make_user,
    rows,
    sql,
    state_of,
)

BASE = "turnout.localhost"  # Settings.base_domain default

# Plaintext values that must never leave the admin except masked (or, for env/bindings, inside
# the encrypted envelope): long ones mask to ``ab****yz``, 8 chars and shorter to ``****``.
ENV_VALUE = "verbose-env-value-93"
SECRET_LONG = "tok-live-0123456789abcdef"
SECRET_SHORT = "zq-short"  # exactly 8 chars: fully masked
SECRET_CANARY = "canary-secret-value-4242"
BINDING_VALUE = "binding-target-xyz-55"
PLAINTEXTS = (ENV_VALUE, SECRET_LONG, SECRET_SHORT, SECRET_CANARY, BINDING_VALUE)

KEY_1 = base64.b64encode(bytes(range(32))).decode()  # the conftest ring's k1
KEY_2 = base64.b64encode(bytes(range(64, 96))).decode()


# ------------------------------------------------------------------------------ helpers


def manifest(
    *,
    app: str = "shop",
    strategy: str | None = None,
    canary_weight: int | None = None,
    upstreams: tuple[str, ...] = ("http://127.0.0.1:9001", "http://127.0.0.1:9002/base"),
    routes: list[dict[str, Any]] | None = None,
    secret: str = SECRET_LONG,
    timeout_ms: int = 1500,
) -> dict[str, Any]:
    """A one-service (``web``) manifest with env, secrets, bindings and limits."""
    doc: dict[str, Any] = {
        "apiVersion": "takos.dev/v1alpha1",
        "kind": "App",
        "metadata": {"name": app},
        "spec": {
            "services": {
                "web": {
                    "type": "http",
                    "upstreams": list(upstreams),
                    "env": {"LOG_LEVEL": ENV_VALUE},
                    "secrets": {"API_TOKEN": secret, "PIN": SECRET_SHORT},
                    "bindings": {"db": BINDING_VALUE},
                    "limits": {"timeout_ms": timeout_ms, "max_body_bytes": 65536},
                }
            },
            "routes": routes
            if routes is not None
            else [{"service": "web", "path": "/api", "methods": ["GET", "POST"]}],
        },
    }
    if strategy is not None:
        doc["spec"]["rollout"] = {"strategy": strategy}
        if canary_weight is not None:
            doc["spec"]["rollout"]["canary_weight"] = canary_weight
    return doc


@dataclass
class Api:
    """The client, a system-admin token and a team space to deploy into."""

    client: TestClient
    token: str
    space: str
    bodies: list[bytes] = field(default_factory=list)

    def deploy(
        self,
        body: dict[str, Any] | str | bytes,
        *,
        space: str | None = None,
        token: str | None = None,
    ) -> httpx2.Response:
        if isinstance(body, dict):
            content, ctype = orjson.dumps(body), "application/json"
        else:
            content = body.encode() if isinstance(body, str) else body
            ctype = "application/yaml"
        r: httpx2.Response = self.client.post(
            f"/api/spaces/{space or self.space}/app-deployments",
            content=content,
            headers={**auth(token or self.token), "content-type": ctype},
        )
        self.settle()
        return r

    def deploy_ok(self, body: dict[str, Any] | str | bytes) -> dict[str, Any]:
        r = self.deploy(body)
        assert r.status_code == 201, r.text
        out: dict[str, Any] = r.json()
        return out

    def get(self, path: str, token: str | None = None) -> httpx2.Response:
        r: httpx2.Response = self.client.get(path, headers=auth(token or self.token))
        return r

    def post(self, path: str, body: Any, token: str | None = None) -> httpx2.Response:
        r: httpx2.Response = self.client.post(path, json=body, headers=auth(token or self.token))
        self.settle()
        return r

    def settle(self) -> None:
        """Let the publisher finish with this change before the next one is made.

        The tests check what each change publishes, not how the outbox copes with a change
        committed while the publisher is busy with the same host (see the publisher's tests).
        """
        call(self.client, state_of(self.client).publisher.drain)

    def rollback(self, service: str = "web", body: Any = None) -> httpx2.Response:
        return self.post(
            f"/api/spaces/{self.space}/services/{service}/rollback", body if body else {}
        )

    def snapshot(self, snapshot_id: str) -> httpx2.Response:
        return self.get(f"/api/spaces/{self.space}/snapshots/{snapshot_id}")


def record_bodies(client: TestClient) -> list[bytes]:
    """Keep every response body this client receives from now on."""
    bodies: list[bytes] = []

    def hook(response: httpx2.Response) -> None:
        response.read()
        bodies.append(response.content)

    client.event_hooks = {"request": [], "response": [hook]}
    return bodies


def assert_no_plaintext(blobs: list[bytes], where: str) -> None:
    for value in PLAINTEXTS:
        needle = value.encode()
        for blob in blobs:
            assert needle not in blob, f"plaintext {value!r} found in {where}: {blob[:300]!r}"


@pytest.fixture
def api(client: TestClient) -> Iterator[Api]:
    bodies = record_bodies(client)
    token = bootstrap(client)
    space = create_space(client, token, "team")
    yield Api(client, token, space, bodies)
    assert bodies, "no API response was recorded"
    assert_no_plaintext(bodies, "an API response body")


def published(client: TestClient, host: str) -> RouteRecord | None:
    """Publish everything queued, then read ``host``'s record from the route store."""
    state = state_of(client)
    call(client, state.publisher.drain)
    data = call(client, lambda: state.store.get(host))
    return None if data is None else decode_record(data)


def deps_of(client: TestClient, service_id: str) -> dict[int, Any]:
    found = rows(client, sa.select(deployments).where(deployments.c.service_id == service_id))
    return {d.number: d for d in found}


def routing(client: TestClient, service_id: str) -> dict[int, tuple[str, int]]:
    return {n: (d.routing_status, d.routing_weight) for n, d in deps_of(client, service_id).items()}


def targets_of(record: RouteRecord) -> list[tuple[str, int, str]]:
    """(deployment id, weight, status) of the record's first endpoint."""
    return [(t.deployment_id, t.weight, t.status) for t in record.endpoints[0].targets]


def count(client: TestClient, table: sa.Table) -> int:
    return len(rows(client, sa.select(table)))


# ------------------------------------------------------------------------------ direct


YAML_MANIFEST = f"""\
apiVersion: takos.dev/v1alpha1
kind: App
metadata:
  name: shop
spec:
  services:
    web:
      type: http
      upstreams:
        - http://127.0.0.1:9001
        - http://127.0.0.1:9002/base
      env:
        LOG_LEVEL: "{ENV_VALUE}"
      secrets:
        API_TOKEN: "{SECRET_LONG}"
        PIN: "{SECRET_SHORT}"
      bindings:
        db: "{BINDING_VALUE}"
      limits:
        timeout_ms: 1500
        max_body_bytes: 65536
  routes:
    - service: web
      path: /api
      methods: [get, POST]
  rollout:
    strategy: direct
"""


def test_direct_deploy_from_yaml_writes_sql_and_publishes_the_record(api: Api) -> None:
    c = api.client
    out = api.deploy_ok(YAML_MANIFEST)
    host = f"web.shop.{BASE}"
    assert out["name"] == "shop" and out["strategy"] == "direct"
    [svc] = out["services"]
    assert svc["name"] == "web"
    assert svc["number"] == 1
    assert svc["strategy_applied"] == "direct"
    assert (svc["routing_status"], svc["routing_weight"]) == ("active", 10000)
    assert svc["hostnames"] == [host]
    assert svc["verification"] == []

    [app_row] = rows(c, sa.select(app_deployments))
    assert (app_row.id, app_row.space_id, app_row.name, app_row.strategy) == (
        out["id"],
        api.space,
        "shop",
        "direct",
    )
    assert len(app_row.manifest_sha256) == 64

    [svc_row] = rows(c, sa.select(services))
    assert (svc_row.id, svc_row.space_id, svc_row.name, svc_row.status) == (
        svc["service_id"],
        api.space,
        "web",
        "deployed",
    )

    [dep] = rows(c, sa.select(deployments))
    assert dep.id == svc["deployment_id"]
    assert dep.number == 1 and dep.status == "success"
    assert (dep.routing_status, dep.routing_weight) == ("active", 10000)
    assert dep.app_deployment_id == out["id"]
    assert dep.snapshot_id == svc["snapshot_id"]

    [snap] = rows(c, sa.select(snapshots))
    assert snap.id == svc["snapshot_id"] and snap.service_id == svc_row.id
    config = orjson.loads(snap.config)
    assert config["upstreams"] == ["http://127.0.0.1:9001", "http://127.0.0.1:9002/base"]
    assert config["policy"] == {"read_timeout_ms": 1500, "max_body_bytes": 65536}
    sealed = orjson.loads(snap.secrets)
    assert set(sealed) == {"env", "secrets", "bindings"}
    assert set(sealed["secrets"]) == {"API_TOKEN", "PIN"}
    for part in sealed.values():
        for envelope in part.values():
            assert envelope["v"] == 2 and envelope["kid"] == "k1"
            assert envelope["alg"] == "AES-256-GCM"

    [route] = rows(c, sa.select(service_routes))
    assert (route.service_id, route.host, route.path_prefix) == (svc_row.id, host, "/api")
    assert sorted(orjson.loads(route.methods)) == ["GET", "POST"]

    [hn] = rows(c, sa.select(hostnames))
    assert (hn.host, hn.space_id, hn.service_id) == (host, api.space, svc_row.id)
    assert hn.verified and hn.verified_at is not None

    record = published(c, host)
    assert record is not None
    assert record.host == host
    assert (record.space_id, record.service_id) == (api.space, svc_row.id)
    assert record.policy.read_timeout_ms == 1500
    assert record.policy.max_body_bytes == 65536
    [endpoint] = record.endpoints
    assert endpoint.path_prefix == "/api"
    assert sorted(endpoint.methods) == ["GET", "POST"]
    [target] = endpoint.targets
    assert (target.deployment_id, target.weight, target.status) == (dep.id, 10000, "active")
    assert [u.url for u in target.upstreams] == [
        "http://127.0.0.1:9001",
        "http://127.0.0.1:9002/base",
    ]
    assert rows(c, sa.select(publish_queue)) == []

    # Listing endpoints show the same.
    r = api.get(f"/api/spaces/{api.space}/app-deployments")
    assert r.status_code == 200, r.text
    assert [a["id"] for a in r.json()["items"]] == [out["id"]]
    r = api.get(f"/api/spaces/{api.space}/services/web/deployments")
    assert r.status_code == 200, r.text
    [listed] = r.json()["items"]
    assert (listed["id"], listed["number"], listed["routing_status"]) == (dep.id, 1, "active")
    r = api.get(f"/api/spaces/{api.space}/deployments/{dep.id}")
    assert r.status_code == 200 and r.json()["routing_weight"] == 10000
    assert r.headers["etag"] == r.json()["etag"]

    # The mutation was audited, naming the app deployment.
    audits = rows(c, sa.select(audit_log).where(audit_log.c.action == "create_app_deployment"))
    assert [(a.outcome, a.resource) for a in audits] == [("success", f"app-deployment:{out['id']}")]


def test_direct_deploy_from_json_body(api: Api) -> None:
    c = api.client
    doc = manifest(routes=[{"service": "web"}])
    out = api.deploy_ok(doc)
    [svc] = out["services"]
    assert (svc["number"], svc["routing_status"], svc["routing_weight"]) == (1, "active", 10000)
    host = f"web.shop.{BASE}"
    assert svc["hostnames"] == [host]
    record = published(c, host)
    assert record is not None
    [endpoint] = record.endpoints
    assert (endpoint.path_prefix, endpoint.methods) == ("/", ())
    [target] = endpoint.targets
    assert target.weight == 10000
    # A second direct deploy: number 2 active, number 1 archived, one target again.
    out2 = api.deploy_ok(doc)
    [svc2] = out2["services"]
    assert svc2["number"] == 2 and svc2["service_id"] == svc["service_id"]
    assert routing(c, svc["service_id"]) == {1: ("archived", 0), 2: ("active", 10000)}
    record = published(c, host)
    assert record is not None
    assert targets_of(record) == [(svc2["deployment_id"], 10000, "active")]
    assert count(c, app_deployments) == 2 and count(c, snapshots) == 2


def test_deploy_without_routes_claims_the_platform_hostname(api: Api) -> None:
    doc = manifest()
    del doc["spec"]["routes"]
    out = api.deploy_ok(doc)
    host = f"web.shop.{BASE}"
    assert out["services"][0]["hostnames"] == [host]
    record = published(api.client, host)
    assert record is not None
    assert [(e.path_prefix, e.methods) for e in record.endpoints] == [("/", ())]


def test_two_services_of_one_app_each_get_their_platform_hostname(api: Api) -> None:
    c = api.client
    doc = manifest()
    doc["spec"]["services"]["api"] = {"type": "http", "upstreams": ["http://127.0.0.1:9301"]}
    doc["spec"]["routes"] = [
        {"service": "web", "path": "/"},
        {"service": "api", "path": "/v1", "methods": ["GET"]},
    ]
    out = api.deploy_ok(doc)
    by_name = {s["name"]: s for s in out["services"]}
    assert sorted(by_name) == ["api", "web"]
    assert by_name["web"]["hostnames"] == [f"web.shop.{BASE}"]
    assert by_name["api"]["hostnames"] == [f"api.shop.{BASE}"]
    assert {s["number"] for s in out["services"]} == {1}
    assert count(c, deployments) == 2 and count(c, snapshots) == 2
    assert count(c, app_deployments) == 1
    api_record = published(c, f"api.shop.{BASE}")
    web_record = published(c, f"web.shop.{BASE}")
    assert api_record is not None and web_record is not None
    assert [(e.path_prefix, e.methods) for e in api_record.endpoints] == [("/v1", ("GET",))]
    assert [u.url for u in api_record.endpoints[0].targets[0].upstreams] == [
        "http://127.0.0.1:9301"
    ]
    assert api_record.policy.read_timeout_ms == 30000  # api declares no limits
    assert web_record.policy.read_timeout_ms == 1500
    # Versions are per service: a second deploy of the app makes both number 2.
    again = api.deploy_ok(doc)
    assert {s["number"] for s in again["services"]} == {2}


# ------------------------------------------------------------------------------ canary


def test_canary_splits_traffic_and_a_new_canary_replaces_the_old(api: Api) -> None:
    c = api.client
    host = f"web.shop.{BASE}"
    first = api.deploy_ok(manifest())["services"][0]
    sid = first["service_id"]

    second = api.deploy_ok(
        manifest(strategy="canary", canary_weight=20, upstreams=("http://127.0.0.1:9101",))
    )
    assert second["strategy"] == "canary"
    [svc] = second["services"]
    assert svc["strategy_applied"] == "canary"
    assert (svc["number"], svc["routing_status"], svc["routing_weight"]) == (2, "canary", 2000)
    assert routing(c, sid) == {1: ("active", 8000), 2: ("canary", 2000)}
    record = published(c, host)
    assert record is not None
    assert targets_of(record) == [
        (first["deployment_id"], 8000, "active"),
        (svc["deployment_id"], 2000, "canary"),
    ]
    by_status = {t.status: [u.url for u in t.upstreams] for t in record.endpoints[0].targets}
    assert by_status == {
        "active": ["http://127.0.0.1:9001", "http://127.0.0.1:9002/base"],
        "canary": ["http://127.0.0.1:9101"],
    }
    assert record.policy.read_timeout_ms == 1500  # the stable deployment's policy

    third = api.deploy_ok(
        manifest(strategy="canary", canary_weight=35, upstreams=("http://127.0.0.1:9201",))
    )["services"][0]
    assert (third["number"], third["routing_status"], third["routing_weight"]) == (
        3,
        "canary",
        3500,
    )
    assert routing(c, sid) == {
        1: ("active", 6500),
        2: ("archived", 0),
        3: ("canary", 3500),
    }
    record = published(c, host)
    assert record is not None
    assert targets_of(record) == [
        (first["deployment_id"], 6500, "active"),
        (third["deployment_id"], 3500, "canary"),
    ]

    # A direct deploy ends the canary: only the new deployment carries traffic.
    fourth = api.deploy_ok(manifest(strategy="direct"))["services"][0]
    assert routing(c, sid) == {
        1: ("archived", 0),
        2: ("archived", 0),
        3: ("archived", 0),
        4: ("active", 10000),
    }
    record = published(c, host)
    assert record is not None
    assert targets_of(record) == [(fourth["deployment_id"], 10000, "active")]


def test_canary_as_the_first_deployment_is_applied_as_direct(api: Api) -> None:
    out = api.deploy_ok(manifest(strategy="canary", canary_weight=20))
    assert out["strategy"] == "canary"
    [svc] = out["services"]
    assert svc["strategy_applied"] == "direct"
    assert (svc["routing_status"], svc["routing_weight"]) == ("active", 10000)
    assert routing(api.client, svc["service_id"]) == {1: ("active", 10000)}
    record = published(api.client, f"web.shop.{BASE}")
    assert record is not None
    assert targets_of(record) == [(svc["deployment_id"], 10000, "active")]


def test_a_canary_never_sets_the_policy_even_when_the_stable_one_has_no_limits(api: Api) -> None:
    doc = manifest()
    del doc["spec"]["services"]["web"]["limits"]
    api.deploy_ok(doc)
    api.deploy_ok(manifest(strategy="canary", canary_weight=10, timeout_ms=1000))
    record = published(api.client, f"web.shop.{BASE}")
    assert record is not None
    assert [t.status for t in record.endpoints[0].targets] == ["active", "canary"]
    # The platform defaults of the stable deployment, not the canary's 1000 ms / 64 KiB.
    assert record.policy.read_timeout_ms == 30000
    assert record.policy.max_body_bytes == 25 * 1024 * 1024


def test_staged_as_the_first_deployment_is_applied_as_direct_without_a_rollout(api: Api) -> None:
    out = api.deploy_ok(manifest(strategy="staged"))
    assert (out["strategy"], out["rollout"]) == ("staged", None)
    [svc] = out["services"]
    assert (svc["strategy_applied"], svc["routing_status"], svc["routing_weight"]) == (
        "direct",
        "active",
        10000,
    )
    r = api.get(f"/api/spaces/{api.space}/app-deployments/{out['id']}/rollout")
    assert "no rollout" in assert_error(r, 404, "not_found")["message"]


# ------------------------------------------------------------------------------ rollback


def test_rollback_to_the_previous_deployment_then_to_a_named_version(api: Api) -> None:
    c = api.client
    host = f"web.shop.{BASE}"
    v1 = api.deploy_ok(manifest(upstreams=("http://127.0.0.1:9001",)))["services"][0]
    v2 = api.deploy_ok(manifest(upstreams=("http://127.0.0.1:9002",)))["services"][0]
    v3 = api.deploy_ok(
        manifest(strategy="canary", canary_weight=10, upstreams=("http://127.0.0.1:9003",))
    )["services"][0]
    sid = v1["service_id"]
    assert routing(c, sid) == {1: ("archived", 0), 2: ("active", 9000), 3: ("canary", 1000)}

    # During a canary a rollback drops the canary: the stable deployment serves 100 %.
    r = api.rollback()
    assert r.status_code == 200, r.text
    assert (r.json()["number"], r.json()["routing_status"], r.json()["routing_weight"]) == (
        2,
        "rollback",
        10000,
    )
    assert routing(c, sid) == {1: ("archived", 0), 2: ("rollback", 10000), 3: ("archived", 0)}
    record = published(c, host)
    assert record is not None
    assert targets_of(record) == [(v2["deployment_id"], 10000, "rollback")]

    r = api.rollback()
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["id"], body["number"]) == (v1["deployment_id"], 1)
    assert (body["routing_status"], body["routing_weight"]) == ("rollback", 10000)
    assert body["snapshot_id"] == v1["snapshot_id"]  # a pointer switch: its own snapshot
    assert routing(c, sid) == {
        1: ("rollback", 10000),
        2: ("rolled_back", 0),
        3: ("archived", 0),
    }
    record = published(c, host)
    assert record is not None
    assert targets_of(record) == [(v1["deployment_id"], 10000, "rollback")]
    assert [u.url for u in record.endpoints[0].targets[0].upstreams] == ["http://127.0.0.1:9001"]
    assert count(c, snapshots) == 3  # no new snapshot

    # Nothing older than version 1 to go back to.
    assert_error(api.rollback(), 409, "no_rollback_target")

    # A named version: back to 3 (the archived canary), 1 is rolled back in turn.
    r = api.rollback(body={"version": 3})
    assert r.status_code == 200, r.text
    assert (r.json()["number"], r.json()["routing_status"]) == (3, "rollback")
    assert routing(c, sid) == {
        1: ("rolled_back", 0),
        2: ("rolled_back", 0),
        3: ("rollback", 10000),
    }
    record = published(c, host)
    assert record is not None
    assert targets_of(record) == [(v3["deployment_id"], 10000, "rollback")]

    # Without a version now: the previous successful one below 3 is 2.
    r = api.rollback()
    assert r.status_code == 200, r.text
    assert r.json()["id"] == v2["deployment_id"]
    assert routing(c, sid) == {
        1: ("rolled_back", 0),
        2: ("rollback", 10000),
        3: ("rolled_back", 0),
    }
    # The version already serving everything is no target.
    assert_error(api.rollback(body={"version": 2}), 409, "no_rollback_target")

    # A later deploy after a rollback is a normal direct deploy: number 4.
    v4 = api.deploy_ok(manifest())["services"][0]
    assert v4["number"] == 4
    assert routing(c, sid)[4] == ("active", 10000)
    assert routing(c, sid)[2] == ("archived", 0)

    audits = rows(c, sa.select(audit_log.c.outcome).where(audit_log.c.action == "rollback"))
    assert sorted(a.outcome for a in audits) == [
        "no_rollback_target",
        "no_rollback_target",
        "success",
        "success",
        "success",
        "success",
    ]


def test_rollback_during_a_first_canary_drops_the_canary(api: Api) -> None:
    """Issue 15 N2: v1 active 80 %, v2 canary 20 % — rollback means "drop the canary"."""
    c = api.client
    v1 = api.deploy_ok(manifest(upstreams=("http://127.0.0.1:9001",)))["services"][0]
    v2 = api.deploy_ok(
        manifest(strategy="canary", canary_weight=20, upstreams=("http://127.0.0.1:9002",))
    )["services"][0]
    sid = v1["service_id"]
    assert routing(c, sid) == {1: ("active", 8000), 2: ("canary", 2000)}
    r = api.rollback()
    assert r.status_code == 200, r.text
    assert (r.json()["id"], r.json()["routing_weight"]) == (v1["deployment_id"], 10000)
    assert routing(c, sid) == {1: ("rollback", 10000), 2: ("archived", 0)}
    record = published(c, f"web.shop.{BASE}")
    assert record is not None
    assert targets_of(record) == [(v1["deployment_id"], 10000, "rollback")]
    # Naming the stable version during a canary means the same.
    api.deploy_ok(manifest(strategy="canary", canary_weight=30))
    r = api.rollback(body={"version": 1})
    assert r.status_code == 200, r.text
    assert routing(c, sid) == {1: ("rollback", 10000), 2: ("archived", 0), 3: ("archived", 0)}
    # With no canary left, nothing is older than version 1.
    assert_error(api.rollback(), 409, "no_rollback_target")
    assert v2["number"] == 2


def test_rollback_without_a_previous_deployment_is_409(api: Api) -> None:
    sid = api.deploy_ok(manifest())["services"][0]["service_id"]
    err = assert_error(api.rollback(), 409, "no_rollback_target")
    assert "previous" in err["message"]
    assert routing(api.client, sid) == {1: ("active", 10000)}
    # Also by id instead of name.
    assert_error(api.rollback(service=sid), 409, "no_rollback_target")


def test_rollback_to_an_unknown_version_or_service_is_404(api: Api) -> None:
    api.deploy_ok(manifest())
    api.deploy_ok(manifest())
    assert_error(api.rollback(body={"version": 7}), 404, "not_found")
    assert_error(api.rollback(service="nope"), 404, "not_found")
    err = assert_error(api.rollback(body={"version": 0}), 422)
    assert err["details"]["fields"][0]["path"] == "body.version"


# ------------------------------------------------------------------------------ bad manifests


def _without(path: tuple[str, ...]) -> dict[str, Any]:
    doc = manifest()
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return doc


def _with(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    doc = manifest()
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


def _worker() -> dict[str, Any]:
    doc = manifest()
    doc["spec"]["services"]["jobs"] = {"type": "worker", "build": ".takos/workflows/jobs.yml"}
    return doc


def _canary_without_weight() -> dict[str, Any]:
    doc = manifest()
    doc["spec"]["rollout"] = {"strategy": "canary"}
    return doc


BAD_MANIFESTS: dict[str, tuple[dict[str, Any] | str, str, str]] = {
    # name: (body, failing path, a word of the message)
    "api_version": (_with(("apiVersion",), "v9"), "apiVersion", "takos.dev/v1alpha1"),
    "kind": (_with(("kind",), "Deployment"), "kind", "App"),
    "missing_name": (_without(("metadata", "name")), "metadata.name", "required"),
    "worker": (_worker(), "spec.services.jobs.type", "type: http"),
    "upstream_url": (
        _with(("spec", "services", "web", "upstreams"), ["ftp://example.com"]),
        "spec.services.web.upstreams[0]",
        "",
    ),
    "unknown_key": (
        _with(("spec", "services", "web", "replicas"), 3),
        "spec.services.web.replicas",
        "unknown field",
    ),
    "canary_without_weight": (
        _canary_without_weight(),
        "spec.rollout.canary_weight",
        "required",
    ),
    "route_unknown_service": (
        _with(("spec", "routes"), [{"service": "api"}]),
        "spec.routes[0].service",
        "unknown service",
    ),
    "yaml_syntax": ("apiVersion: takos.dev/v1alpha1\nkind: [App\nmetadata: {", "kind", "YAML"),
    "not_a_mapping": ("- apiVersion\n- kind\n", "$", "mapping"),
    "timeout_out_of_range": (
        _with(("spec", "services", "web", "limits", "timeout_ms"), 30001),
        "spec.services.web.limits.timeout_ms",
        "30000",
    ),
    "python_object_tag": ("!!python/object/apply:os.system ['true']\n", "$", "YAML"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_malformed_manifest_is_422_with_field_paths(api: Api, case: str) -> None:
    body, path, word = BAD_MANIFESTS[case]
    r = api.deploy(body)
    err = assert_error(r, 422, "invalid_manifest")
    fields = err["details"]["fields"]
    assert fields and all(set(f) == {"path", "message"} for f in fields), fields
    matching = [f for f in fields if f["path"] == path]
    assert matching, f"{path} not among {fields}"
    assert word in matching[0]["message"], matching
    assert path in err["message"]
    # Nothing was written.
    assert count(api.client, app_deployments) == 0
    assert count(api.client, services) == 0
    assert count(api.client, snapshots) == 0


def test_worker_service_error_names_the_alternative(api: Api) -> None:
    err = assert_error(api.deploy(_worker()), 422, "invalid_manifest")
    [field_] = [f for f in err["details"]["fields"] if f["path"] == "spec.services.jobs.type"]
    assert "worker" in field_["message"]
    assert "type: http" in field_["message"] and "upstreams" in field_["message"]


@pytest.mark.parametrize("body", [b"", b"   \n\t\n"])
def test_empty_body_is_422(api: Api, body: bytes) -> None:
    err = assert_error(api.deploy(body), 422)
    assert [f["path"] for f in err["details"]["fields"]] == ["body"]


def test_oversized_body_is_413_from_the_framework(api: Api) -> None:
    big = YAML_MANIFEST + "# " + "x" * (1024 * 1024) + "\n"
    err = assert_error(api.deploy(big), 413, "payload_too_large")
    assert str(1024 * 1024) in err["message"]
    assert count(api.client, app_deployments) == 0


# ------------------------------------------------------------------------------ hostnames


def test_hostname_owned_by_another_space_is_409_and_nothing_is_written(api: Api) -> None:
    c = api.client
    other = create_space(c, api.token, "other")
    custom = "api.example.com"
    out = api.deploy(
        manifest(routes=[{"service": "web"}, {"service": "web", "hostname": custom}]),
        space=other,
    )
    assert out.status_code == 201, out.text

    async def prove(conn: AsyncConnection) -> None:  # as the verification endpoint would
        await conn.execute(
            sa.update(hostnames)
            .where(hostnames.c.host == custom)
            .values(verified=True, verified_at=now_ms(), expires_at=None)
        )

    sql(c, prove)  # (an unverified claim blocks nobody: tests/admin/test_claims.py)
    before = {t.name: count(c, t) for t in (app_deployments, deployments, snapshots, services)}
    before_routes = count(c, service_routes)
    before_audit = count(c, audit_log)

    # The same custom hostname from the team space.
    r = api.deploy(manifest(app="store", routes=[{"service": "web", "hostname": custom}]))
    err = assert_error(r, 409, "hostname_taken")
    assert custom in err["message"]
    # The platform hostname web.shop.<base> is the other space's too.
    r = api.deploy(manifest(app="shop"))
    assert_error(r, 409, "hostname_taken")

    after = {t.name: count(c, t) for t in (app_deployments, deployments, snapshots, services)}
    assert after == before, "the failed deploys left rows behind"
    assert count(c, service_routes) == before_routes
    assert rows(c, sa.select(services).where(services.c.space_id == api.space)) == []
    assert rows(c, sa.select(app_deployments).where(app_deployments.c.space_id == api.space)) == []
    owners = {h.host: h.space_id for h in rows(c, sa.select(hostnames))}
    assert owners == {f"web.shop.{BASE}": other, custom: other}
    # The failures were audited (outside the rolled-back transaction).
    failed = rows(c, sa.select(audit_log).where(audit_log.c.outcome == "hostname_taken"))
    assert len(failed) == 2 and count(c, audit_log) == before_audit + 2


def test_custom_hostname_needs_verification_before_it_publishes(api: Api) -> None:
    c = api.client
    custom = "shop.example.com"
    out = api.deploy_ok(
        manifest(routes=[{"service": "web", "hostname": custom.upper(), "path": "/"}])
    )
    [svc] = out["services"]
    assert svc["hostnames"] == [custom]
    [instructions] = svc["verification"]
    assert instructions["host"] == custom
    assert instructions["type"] == "TXT"
    assert instructions["name"] == f"_turnout-verify.{custom}"
    [hn] = rows(c, sa.select(hostnames))
    assert (hn.host, hn.verified, hn.verified_at) == (custom, False, None)
    assert instructions["value"] == f"turnout-verify={hn.verify_token}"

    # Deployed, but nothing is served for the unverified host.
    assert routing(c, svc["service_id"]) == {1: ("active", 10000)}
    assert published(c, custom) is None

    # A redeploy repeats the same instructions (same token), still nothing published.
    again = api.deploy_ok(manifest(routes=[{"service": "web", "hostname": custom}]))
    assert again["services"][0]["verification"] == [instructions]
    assert published(c, custom) is None

    # Once verified (as the verification endpoint would mark it), the record goes out.
    async def verify(conn: AsyncConnection) -> None:
        await conn.execute(
            sa.update(hostnames)
            .where(hostnames.c.host == custom)
            .values(verified=True, verified_at=now_ms())
        )
        await conn.execute(sa.insert(publish_queue).values(host=custom, enqueued_at=now_ms()))

    sql(c, verify)
    record = published(c, custom)
    assert record is not None and record.host == custom
    assert targets_of(record)[0][1:] == (10000, "active")


def test_one_verification_per_custom_host_with_several_routes(api: Api) -> None:
    c = api.client
    custom = "multi.example.com"
    out = api.deploy_ok(
        manifest(
            routes=[
                {"service": "web", "hostname": custom, "path": "/a"},
                {"service": "web", "hostname": custom, "path": "/b", "methods": ["GET"]},
            ]
        )
    )
    [svc] = out["services"]
    assert [v["host"] for v in svc["verification"]] == [custom]
    assert len(rows(c, sa.select(service_routes))) == 2
    assert published(c, custom) is None

    async def verify(conn: AsyncConnection) -> None:
        await conn.execute(sa.update(hostnames).values(verified=True, verified_at=now_ms()))
        await conn.execute(sa.insert(publish_queue).values(host=custom, enqueued_at=now_ms()))

    sql(c, verify)
    record = published(c, custom)
    assert record is not None
    assert sorted((e.path_prefix, e.methods) for e in record.endpoints) == [
        ("/a", ()),
        ("/b", ("GET",)),
    ]


def test_invalid_route_hostname_is_422(api: Api) -> None:
    r = api.deploy(manifest(routes=[{"service": "web", "hostname": "bad_host!.example.com"}]))
    err = assert_error(r, 422, "invalid_manifest")
    assert "spec.routes[0].hostname" in [f["path"] for f in err["details"]["fields"]]


# ------------------------------------------------------------------------------ snapshots


def test_snapshot_read_masks_env_secrets_and_bindings(api: Api) -> None:
    svc = api.deploy_ok(manifest())["services"][0]
    r = api.snapshot(svc["snapshot_id"])
    assert r.status_code == 200, r.text
    snap = r.json()
    assert snap["id"] == svc["snapshot_id"] and snap["service_id"] == svc["service_id"]
    assert snap["env"] == {"LOG_LEVEL": "ve****93"}
    assert snap["secrets"] == {"API_TOKEN": "to****ef", "PIN": "****"}
    assert snap["bindings"] == {"db": "bi****55"}
    assert snap["env"]["LOG_LEVEL"] == mask(ENV_VALUE)
    # The runtime config is plain.
    assert snap["config"]["upstreams"] == ["http://127.0.0.1:9001", "http://127.0.0.1:9002/base"]
    assert snap["config"]["policy"] == {"read_timeout_ms": 1500, "max_body_bytes": 65536}
    assert snap["config"]["limits"] == {"timeout_ms": 1500, "max_body_bytes": 65536}
    assert_error(api.snapshot("snp_missing"), 404, "not_found")


def test_snapshot_with_nothing_secret_reads_empty_maps(api: Api) -> None:
    doc = manifest()
    web = doc["spec"]["services"]["web"]
    for key in ("env", "secrets", "bindings", "limits"):
        del web[key]
    svc = api.deploy_ok(doc)["services"][0]
    snap = api.snapshot(svc["snapshot_id"]).json()
    assert (snap["env"], snap["secrets"], snap["bindings"]) == ({}, {}, {})
    assert snap["config"]["policy"] == {}
    record = published(api.client, f"web.shop.{BASE}")
    assert record is not None
    assert record.policy.read_timeout_ms == 30000  # the platform default


def _tamper(client: TestClient, snapshot_id: str, edit: Callable[[dict[str, Any]], None]) -> None:
    async def run(conn: AsyncConnection) -> None:
        row = (
            await conn.execute(sa.select(snapshots.c.secrets).where(snapshots.c.id == snapshot_id))
        ).one()
        sealed = orjson.loads(row.secrets)
        edit(sealed)
        await conn.execute(
            sa.update(snapshots)
            .where(snapshots.c.id == snapshot_id)
            .values(secrets=orjson.dumps(sealed).decode())
        )

    sql(client, run)


def test_flipped_ciphertext_byte_reads_as_snapshot_corrupt(api: Api) -> None:
    svc = api.deploy_ok(manifest())["services"][0]

    def flip(sealed: dict[str, Any]) -> None:
        envelope = sealed["secrets"]["API_TOKEN"]
        ct = bytearray(base64.b64decode(envelope["ct"]))
        ct[0] ^= 0x01
        envelope["ct"] = base64.b64encode(bytes(ct)).decode()

    _tamper(api.client, svc["snapshot_id"], flip)
    err = assert_error(api.snapshot(svc["snapshot_id"]), 409, "snapshot_corrupt")
    assert "secrets.API_TOKEN" in err["message"]


@pytest.mark.parametrize(
    "stored",
    ["{not json", "[]", '{"secrets": []}', '{"secrets": {"API_TOKEN": {"v": 2}}}'],
    ids=["invalid_json", "list", "part_not_a_map", "envelope_incomplete"],
)
def test_unreadable_stored_secrets_read_as_snapshot_corrupt(api: Api, stored: str) -> None:
    svc = api.deploy_ok(manifest())["services"][0]

    async def garble(conn: AsyncConnection) -> None:
        await conn.execute(
            sa.update(snapshots).where(snapshots.c.id == svc["snapshot_id"]).values(secrets=stored)
        )

    sql(api.client, garble)
    assert_error(api.snapshot(svc["snapshot_id"]), 409, "snapshot_corrupt")


def test_a_changed_character_of_the_stored_ciphertext_text_is_detected(api: Api) -> None:
    svc = api.deploy_ok(manifest())["services"][0]

    def edit(sealed: dict[str, Any]) -> None:
        envelope = sealed["env"]["LOG_LEVEL"]
        ct: str = envelope["ct"]
        envelope["ct"] = ("B" if ct[0] == "A" else "A") + ct[1:]

    _tamper(api.client, svc["snapshot_id"], edit)
    err = assert_error(api.snapshot(svc["snapshot_id"]), 409, "snapshot_corrupt")
    assert "env.LOG_LEVEL" in err["message"]


def test_ciphertext_copied_to_another_snapshot_does_not_decrypt(api: Api) -> None:
    c = api.client
    a = api.deploy_ok(manifest())["services"][0]
    b = api.deploy_ok(manifest(secret=SECRET_CANARY))["services"][0]
    assert api.snapshot(b["snapshot_id"]).status_code == 200

    [row_a] = rows(c, sa.select(snapshots.c.secrets).where(snapshots.c.id == a["snapshot_id"]))

    async def copy(conn: AsyncConnection) -> None:
        await conn.execute(
            sa.update(snapshots)
            .where(snapshots.c.id == b["snapshot_id"])
            .values(secrets=row_a.secrets)
        )

    sql(c, copy)
    assert_error(api.snapshot(b["snapshot_id"]), 409, "snapshot_corrupt")
    assert api.snapshot(a["snapshot_id"]).status_code == 200

    # Moving one envelope to another field of the same snapshot fails the same way.
    def swap(sealed: dict[str, Any]) -> None:
        sealed["secrets"]["PIN"] = sealed["secrets"]["API_TOKEN"]

    _tamper(c, a["snapshot_id"], swap)
    err = assert_error(api.snapshot(a["snapshot_id"]), 409, "snapshot_corrupt")
    assert "secrets.PIN" in err["message"]


# ------------------------------------------------------------------------------ keys, secrecy


@contextlib.contextmanager
def app_client(db: Path, keys: str) -> Iterator[TestClient]:
    settings = Settings(
        db_url=str(db), keys=KeyRing.parse(keys), redis_url=None, migrate_on_start=True
    )
    with TestClient(create_app(settings, store=MemoryRouteStore())) as c:
        yield c


def envelopes(db: Path) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(snapshot id, part, name, envelope) of every envelope in the database."""

    async def fetch() -> list[Any]:
        engine = make_engine(str(db))
        try:
            async with engine.connect() as conn:
                return list((await conn.execute(sa.select(snapshots))).all())
        finally:
            await engine.dispose()

    out = []
    for row in asyncio.run(fetch()):
        for part, entries in orjson.loads(row.secrets).items():
            for name, env in entries.items():
                out.append((row.id, part, name, env))
    return out


def test_key_rotation_old_envelopes_read_rekey_moves_them_to_the_new_key(db_path: Path) -> None:
    ring_1 = TEST_KEYS
    ring_21 = f"*k2:{KEY_2}, k1:{KEY_1}"
    ring_2 = f"k2:{KEY_2}"
    expected = {
        "env": {"LOG_LEVEL": "ve****93"},
        "secrets": {"API_TOKEN": "to****ef", "PIN": "****"},
    }

    with app_client(db_path, ring_1) as c:
        token = bootstrap(c)
        space = create_space(c, token, "team")
        api = Api(c, token, space)
        snap_ids = [
            api.deploy_ok(manifest())["services"][0]["snapshot_id"],
            api.deploy_ok(manifest(strategy="canary", canary_weight=5))["services"][0][
                "snapshot_id"
            ],
        ]
    assert {env["kid"] for *_, env in envelopes(db_path)} == {"k1"}

    def reads_everything(keys: str, new: bool = False) -> None:
        with app_client(db_path, keys) as c:
            token = bootstrap(c)
            api = Api(c, token, space)
            for sid in snap_ids:
                r = api.snapshot(sid)
                assert r.status_code == 200, r.text
                assert {k: r.json()[k] for k in expected} == expected
            if new:  # a deploy under the new ring writes k2 envelopes
                snap_ids.append(api.deploy_ok(manifest())["services"][0]["snapshot_id"])

    reads_everything(ring_21, new=True)
    kids = [env["kid"] for *_, env in envelopes(db_path)]
    assert kids.count("k2") == 4 and kids.count("k1") == 8  # 4 envelopes per snapshot

    settings = Settings(db_url=str(db_path), keys=KeyRing.parse(ring_21))
    counts = asyncio.run(run_rekey(settings))
    assert counts == {
        "snapshots": 3,
        "snapshots_changed": 2,
        "envelopes_rekeyed": 8,
        "envelopes_current": 4,
        "active_kid": "k2",
    }
    assert {env["kid"] for *_, env in envelopes(db_path)} == {"k2"}
    again = asyncio.run(run_rekey(settings))
    assert again["envelopes_rekeyed"] == 0 and again["snapshots_changed"] == 0
    assert again["envelopes_current"] == 12

    # k1 can go now: a ring holding only k2 reads everything.
    reads_everything(ring_2)


def test_a_ring_without_the_old_key_cannot_read_old_snapshots(db_path: Path) -> None:
    with app_client(db_path, TEST_KEYS) as c:
        token = bootstrap(c)
        space = create_space(c, token, "team")
        sid = Api(c, token, space).deploy_ok(manifest())["services"][0]["snapshot_id"]
    with app_client(db_path, f"k2:{KEY_2}") as c:
        api = Api(c, bootstrap(c), space)
        err = assert_error(api.snapshot(sid), 409, "snapshot_corrupt")
        assert "k1" in err["message"] and KEY_1 not in err["message"]


def test_plaintext_never_reaches_responses_sql_audit_or_logs(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ring_1 = TEST_KEYS
    ring_21 = f"*k2:{KEY_2}, k1:{KEY_1}"
    bodies: list[bytes] = []
    with app_client(db_path, ring_1) as c:
        bodies_1 = record_bodies(c)
        token = bootstrap(c)
        space = create_space(c, token, "team")
        viewer = make_user(c, token, "viewer", space, "viewer")
        api = Api(c, token, space)
        first = api.deploy_ok(YAML_MANIFEST)["services"][0]
        second = api.deploy_ok(manifest(strategy="canary", canary_weight=30, secret=SECRET_CANARY))[
            "services"
        ][0]
        for sid in (first["snapshot_id"], second["snapshot_id"]):
            assert api.snapshot(sid).status_code == 200
            assert api.get(f"/api/spaces/{space}/snapshots/{sid}", viewer).status_code == 200
        assert api.get(f"/api/spaces/{space}/services/web/deployments").status_code == 200
        assert api.get(f"/api/spaces/{space}/app-deployments").status_code == 200
        assert (
            api.get(f"/api/spaces/{space}/deployments/{second['deployment_id']}").status_code == 200
        )
        assert api.rollback().status_code == 200  # drops the canary (version 2)
        assert api.rollback().status_code == 409  # nothing older than 1 is archived
        assert api.rollback(body={"version": 2}).status_code == 200
        # Idempotent replay stores and returns only the (masked-free) response.
        headers = {**auth(token), "content-type": "application/json", "idempotency-key": "k-1"}
        url = f"/api/spaces/{space}/app-deployments"
        doc = orjson.dumps(manifest(secret=SECRET_CANARY))
        r1 = c.post(url, content=doc, headers=headers)
        r2 = c.post(url, content=doc, headers=headers)
        assert r1.status_code == r2.status_code == 201
        assert r2.headers.get("idempotent-replay") == "true"
        # Failing requests answer without echoing the manifest either.
        bad = manifest()
        bad["spec"]["services"]["web"]["secrets"]["bad-name"] = SECRET_LONG
        r = api.deploy(bad)
        assert_error(r, 422, "invalid_manifest")
        r = c.post(
            url, content=YAML_MANIFEST.replace("kind: App", "kind: [App"), headers=auth(token)
        )
        assert_error(r, 422, "invalid_manifest")
        audit = [str(tuple(a)) for a in rows(c, sa.select(audit_log))]
        assert len(audit) >= 6
        published(c, f"web.shop.{BASE}")
        bodies += bodies_1

    counts = asyncio.run(run_rekey(Settings(db_url=str(db_path), keys=KeyRing.parse(ring_21))))
    assert counts["envelopes_rekeyed"] > 0
    with app_client(db_path, ring_21) as c:
        bodies_2 = record_bodies(c)
        api = Api(c, bootstrap(c), space)
        snap = api.snapshot(first["snapshot_id"])
        assert snap.status_code == 200 and snap.json()["secrets"]["API_TOKEN"] == "to****ef"
        bodies += bodies_2

    assert_no_plaintext(bodies, "an API response body")
    assert_no_plaintext([a.encode() for a in audit], "the audit log")
    files = sorted(db_path.parent.glob(db_path.name + "*"))
    assert db_path in files
    assert_no_plaintext([f.read_bytes() for f in files], "the SQLite files")

    assert caplog.records, "nothing was logged at all (is the capture working?)"
    logged = []
    for rec in caplog.records:
        logged.append(rec.getMessage().encode())
        logged.append(repr(rec.args).encode())
        logged.append(repr(rec.msg).encode())
        if rec.exc_text:
            logged.append(rec.exc_text.encode())
    logged.append(caplog.text.encode())
    assert_no_plaintext(logged, "a log record")
    for key in (KEY_1, KEY_2):
        for blob in logged:
            assert key.encode() not in blob

    # Nor do the objects that hold them show them in a repr.
    settings = Settings(db_url=str(db_path), keys=KeyRing.parse(ring_21))
    ring = KeyRing.parse(ring_21)
    parsed = parse_manifest(YAML_MANIFEST)
    for text in (repr(settings), str(settings), repr(ring), str(ring)):
        for key in (KEY_1, KEY_2):
            assert key not in text
            assert base64.b64decode(key).hex() not in text
        assert repr(base64.b64decode(KEY_2)) not in text
    manifest_text = repr(parsed) + str(parsed)
    for value in (SECRET_LONG, SECRET_SHORT):
        assert value not in manifest_text
    assert "Secret('****')" in manifest_text
    assert repr(parsed.services["web"].secrets["API_TOKEN"]) == "Secret('****')"


# ------------------------------------------------------------------------------ cross-space


def test_another_space_member_gets_404_for_this_space_deployments(api: Api) -> None:
    c = api.client
    svc = api.deploy_ok(manifest())["services"][0]
    outsider = make_user(c, api.token, "outsider", None, "owner")
    theirs = create_space(c, outsider, "theirs")
    s, dep, snap = api.space, svc["deployment_id"], svc["snapshot_id"]

    # Through this space's paths: the space itself is not found.
    for path in (
        f"/api/spaces/{s}/app-deployments",
        f"/api/spaces/{s}/services/web/deployments",
        f"/api/spaces/{s}/deployments/{dep}",
        f"/api/spaces/{s}/snapshots/{snap}",
    ):
        assert_error(api.get(path, outsider), 404, "not_found")
    assert_error(api.post(f"/api/spaces/{s}/services/web/rollback", {}, outsider), 404)
    assert_error(api.deploy(manifest(app="evil"), token=outsider), 404, "not_found")

    # Through their own space's paths, naming this space's ids: not found either.
    for path in (
        f"/api/spaces/{theirs}/services/web/deployments",
        f"/api/spaces/{theirs}/services/{svc['service_id']}/deployments",
        f"/api/spaces/{theirs}/deployments/{dep}",
        f"/api/spaces/{theirs}/snapshots/{snap}",
    ):
        assert_error(api.get(path, outsider), 404, "not_found")
    for ident in ("web", svc["service_id"]):
        r = api.post(f"/api/spaces/{theirs}/services/{ident}/rollback", {}, outsider)
        assert_error(r, 404, "not_found")
    r = api.get(f"/api/spaces/{theirs}/app-deployments", outsider)
    assert r.status_code == 200 and r.json()["items"] == []

    # Nothing moved.
    assert routing(c, svc["service_id"]) == {1: ("active", 10000)}


def test_viewer_reads_but_cannot_deploy_or_roll_back(api: Api) -> None:
    c = api.client
    svc = api.deploy_ok(manifest())["services"][0]
    viewer = make_user(c, api.token, "viewer", api.space, "viewer")
    editor = make_user(c, api.token, "editor", api.space, "editor")
    assert api.snapshot(svc["snapshot_id"]).status_code == 200
    r = api.get(f"/api/spaces/{api.space}/snapshots/{svc['snapshot_id']}", viewer)
    assert r.status_code == 200
    assert_error(api.deploy(manifest(), token=viewer), 403, "forbidden")
    assert_error(api.post(f"/api/spaces/{api.space}/services/web/rollback", {}, viewer), 403)
    r = api.deploy(manifest(), token=editor)
    assert r.status_code == 201, r.text
    r = api.post(f"/api/spaces/{api.space}/services/web/rollback", {}, editor)
    assert r.status_code == 200, r.text
