"""Managed deployment tokens and the config pull (admin/managed.py, admin/api/runtime.py).

Deploy → take each service's token from the answer → ``GET /api/runtime/config`` returns the
exact decrypted values merged with the space's common env; the token reaches nothing of
another deployment or space (404), nothing its scopes do not name (403), and dies when its
deployment is archived, rolled back from or its service stopped (401); re-issue revokes the
old one; refresh leaves the old one a grace period; ETag/304; and no plaintext of a token or a
value anywhere else (logs, the SQLite files, audit rows, other answers).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from admin.db import audit_log, tokens
from tests.admin.conftest import (
    admin_settings,
    assert_error,
    auth,
    bootstrap,
    create_space,
    make_admin_app,
    make_user,
    rows,
)

SECRET = "s3cr3t-db-password-value"
COMMON_SECRET = "common-secret-api-key-42"


def manifest(
    name: str = "shop",
    greeting: str = "hello v1",
    access: dict[str, Any] | None = None,
    strategy: str = "direct",
) -> dict[str, Any]:
    web: dict[str, Any] = {
        "type": "http",
        "upstreams": ["http://127.0.0.1:9"],
        "env": {"GREETING": greeting, "REGION": "eu"},
        "secrets": {"DB_PASSWORD": SECRET},
        "bindings": {"cache": "kv-shop"},
    }
    if access is not None:
        web["access"] = access
    return {
        "apiVersion": "turnout/v1",
        "kind": "App",
        "metadata": {"name": name},
        "spec": {
            "services": {"web": web},
            "rollout": {
                "strategy": strategy,
                **({"canary_weight": 20} if strategy == "canary" else {}),
            },
        },
    }


class Api:
    def __init__(self, client: TestClient, token: str, space: str) -> None:
        self.client, self.token, self.space = client, token, space

    def deploy(self, body: dict[str, Any], token: str | None = None, **kw: Any) -> Any:
        return self.client.post(
            f"/api/spaces/{self.space}/app-deployments",
            json=body,
            headers={**auth(token or self.token), **kw.pop("headers", {})},
        )

    def deploy_ok(self, body: dict[str, Any]) -> dict[str, Any]:
        r = self.deploy(body)
        assert r.status_code == 201, r.text
        svc: dict[str, Any] = r.json()["services"][0]
        return svc

    def config(self, token: str, **headers: str) -> Any:
        return self.client.get("/api/runtime/config", headers={**auth(token), **headers})


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with TestClient(make_admin_app(str(tmp_path / "admin.db"))) as client:
        system = bootstrap(client)
        yield Api(client, system, create_space(client, system, "shop"))


def put_common(api: Api, entries: list[dict[str, Any]], **headers: str) -> Any:
    return api.client.put(
        f"/api/spaces/{api.space}/common-env",
        json={"entries": entries},
        headers={**auth(api.token), **headers},
    )


def test_deploy_token_pulls_exact_config_merged_with_common_env(api: Api) -> None:
    r = put_common(
        api,
        [
            {"name": "GREETING", "value": "overridden by the service"},
            {"name": "LOG_LEVEL", "value": "info"},
            {"name": "API_KEY", "value": COMMON_SECRET, "secret": True},
        ],
    )
    assert r.status_code == 200, r.text
    assert r.json()["applies_to"] == "next_deployment"
    assert "next deployment" in r.json()["message"]
    svc = api.deploy_ok(manifest())
    minted = svc["managed_token"]
    token = minted["token"]
    assert token.startswith("tak_dep_") and len(token) == 51
    assert minted["scopes"] == ["runtime:config"] and minted["prefix"] == token[:12]
    r = api.config(token)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["env"] == {"GREETING": "hello v1", "REGION": "eu", "LOG_LEVEL": "info"}
    assert body["secrets"] == {"DB_PASSWORD": SECRET, "API_KEY": COMMON_SECRET}
    assert body["bindings"] == {"cache": "kv-shop"}
    assert body["sources"] == {
        "env": {"GREETING": "service", "REGION": "service", "LOG_LEVEL": "common"},
        "secrets": {"DB_PASSWORD": "service", "API_KEY": "common"},
    }
    assert body["deployment_id"] == svc["deployment_id"]
    assert body["snapshot_id"] == svc["snapshot_id"]
    assert body["service_id"] == svc["service_id"] and body["space_id"] == api.space
    assert body["version"] == 1 and body["service"] == "web" and body["app"] == "shop"
    assert r.headers["cache-control"] == "no-store"
    # The snapshot records the sources too (its values stay masked).
    snap = api.client.get(
        f"/api/spaces/{api.space}/snapshots/{svc['snapshot_id']}", headers=auth(api.token)
    ).json()
    assert snap["config"]["sources"] == body["sources"]
    assert snap["secrets"]["API_KEY"] == "co****42"
    # Changing common env affects the next deployment only.
    assert put_common(api, [{"name": "LOG_LEVEL", "value": "debug"}]).status_code == 200
    assert api.config(token).json()["env"]["LOG_LEVEL"] == "info"


def test_etag_and_if_none_match(api: Api) -> None:
    token = api.deploy_ok(manifest())["managed_token"]["token"]
    first = api.config(token)
    tag = first.headers["etag"]
    assert tag.startswith('"rc.') and SECRET not in tag
    again = api.config(token, **{"if-none-match": tag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == tag
    assert api.config(token, **{"if-none-match": f'W/{tag}, "other"'}).status_code == 304
    assert api.config(token, **{"if-none-match": '"rc.stale"'}).status_code == 200


def test_every_read_is_audited_without_values(api: Api) -> None:
    svc = api.deploy_ok(manifest())
    token = svc["managed_token"]["token"]
    tag = api.config(token).headers["etag"]
    api.config(token, **{"if-none-match": tag})
    reads = rows(
        api.client,
        sa.select(audit_log)
        .where(audit_log.c.action == "get_runtime_config")
        .order_by(audit_log.c.id),
    )
    assert [r.outcome for r in reads] == ["success", "not_modified"]
    for r in reads:
        assert r.principal_id == svc["deployment_id"] and r.principal_kind == "deployment"
        assert r.space_id == api.space
        assert r.resource == (
            f"deployment:{svc['deployment_id']}/version:1/snapshot:{svc['snapshot_id']}"
        )
    listed = api.client.get(f"/api/spaces/{api.space}/audit", headers=auth(api.token)).json()
    kinds = {i["principal_kind"] for i in listed["items"]}
    assert {"deployment", "system"} <= kinds


def test_the_token_reaches_only_its_own_deployment_and_space(api: Api) -> None:
    svc = api.deploy_ok(
        manifest(access={"scopes": ["runtime:config", "pods:read", "deployments:read"]})
    )
    token = svc["managed_token"]["token"]
    other_space = create_space(api.client, api.token, "other")
    other = Api(api.client, api.token, other_space).deploy_ok(manifest(name="other"))
    # Another deployment's config: 404, also when named explicitly.
    r = api.client.get(
        f"/api/runtime/config?deployment={other['deployment_id']}", headers=auth(token)
    )
    assert_error(r, 404, "not_found")
    ok = api.client.get(
        f"/api/runtime/config?deployment={svc['deployment_id']}", headers=auth(token)
    )
    assert ok.status_code == 200
    # Another space's resources: 404, as for any outsider.
    for path in (
        f"/api/spaces/{other_space}/deployments/{other['deployment_id']}",
        f"/api/spaces/{other_space}/pods",
        f"/api/spaces/{api.space}/deployments/{other['deployment_id']}",
    ):
        assert_error(api.client.get(path, headers=auth(token)), 404, "not_found")
    # Its own space, with the scopes it holds: like a PAT.
    r = api.client.get(
        f"/api/spaces/{api.space}/deployments/{svc['deployment_id']}", headers=auth(token)
    )
    assert r.status_code == 200, r.text


def test_scopes_it_lacks_are_forbidden(api: Api) -> None:
    token = api.deploy_ok(manifest())["managed_token"]["token"]  # runtime:config only
    for method, path, body in (
        ("GET", f"/api/spaces/{api.space}/deployments/dep_x", None),
        ("GET", f"/api/spaces/{api.space}/pods", None),
        ("POST", f"/api/spaces/{api.space}/usage", {}),
        ("GET", "/api/spaces", None),
        ("POST", "/api/tokens", {"name": "x", "scopes": ["spaces:read"]}),
        ("POST", f"/api/spaces/{api.space}/app-deployments", manifest()),
        ("GET", f"/api/spaces/{api.space}/common-env", None),
    ):
        r = api.client.request(method, path, json=body, headers=auth(token))
        assert_error(r, 403, "forbidden")


def test_a_pat_cannot_read_runtime_config(api: Api) -> None:
    api.deploy_ok(manifest())
    assert_error(api.config(api.token), 403, "forbidden")  # the system admin's *
    r = api.client.post(
        "/api/tokens", json={"name": "x", "scopes": ["runtime:config"]}, headers=auth(api.token)
    )
    err = assert_error(r, 422)
    assert err["details"]["fields"][0]["path"] == "body.scopes"


def test_manifest_scopes_are_validated(api: Api) -> None:
    r = api.deploy(manifest(access={"scopes": ["runtime:config", "spaces:write"]}))
    err = assert_error(r, 422, "invalid_manifest")
    paths = [f["path"] for f in err["details"]["fields"]]
    assert "spec.services.web.access.scopes[1]" in paths
    assert "spaces:write" in err["message"]
    for bad, where in (
        ({"scopes": []}, "spec.services.web.access.scopes"),
        ({"scopes": "runtime:config"}, "spec.services.web.access.scopes"),
        ({"scopes": ["runtime:config"], "ttl": 5}, "spec.services.web.access.ttl"),
        ({"lifetime_seconds": 5}, "spec.services.web.access.lifetime_seconds"),
        ({"lifetime_seconds": True}, "spec.services.web.access.lifetime_seconds"),
        ("all", "spec.services.web.access"),
    ):
        err = assert_error(api.deploy(manifest(access=bad)), 422, "invalid_manifest")  # type: ignore[arg-type]
        assert where in [f["path"] for f in err["details"]["fields"]], (bad, err)


def test_deploying_token_bounds_the_scopes(api: Api) -> None:
    narrow = make_user(
        api.client, api.token, "ci", api.space, "editor", ["deployments:write", "deployments:read"]
    )
    r = api.deploy(manifest(access={"scopes": ["runtime:config", "pods:write"]}), token=narrow)
    err = assert_error(r, 403, "forbidden")
    assert "pods:write" in err["message"] and "access.scopes[1]" in err["message"]
    r = api.deploy(
        manifest(access={"scopes": ["runtime:config", "deployments:read"]}), token=narrow
    )
    assert r.status_code == 201, r.text


def test_usage_and_pods_accept_a_managed_token(api: Api) -> None:
    svc = api.deploy_ok(
        manifest(access={"scopes": ["runtime:config", "usage:write", "pods:read", "pods:write"]})
    )
    token = svc["managed_token"]["token"]
    r = api.client.post(
        f"/api/spaces/{api.space}/usage",
        json={"meter": "exec_seconds", "units": 3, "idempotency_key": "run-1"},
        headers=auth(token),
    )
    assert r.status_code == 201, r.text
    r = api.client.post(
        f"/api/spaces/{api.space}/pods",
        json={"name": "job", "scope": {"allow": [{"target": "/data", "permission": "write"}]}},
        headers=auth(token),
    )
    assert r.status_code in (200, 201), r.text
    assert api.client.get(f"/api/spaces/{api.space}/pods", headers=auth(token)).status_code == 200
    created = rows(
        api.client,
        sa.select(audit_log.c.action, audit_log.c.principal_kind).where(
            audit_log.c.principal_id == svc["deployment_id"], audit_log.c.outcome == "success"
        ),
    )
    assert {("record_usage", "deployment")} <= set(map(tuple, created))


def test_archive_revokes_and_rollback_issues_a_new_token(api: Api) -> None:
    v1 = api.deploy_ok(manifest())
    t1 = v1["managed_token"]["token"]
    v2 = api.deploy_ok(manifest(greeting="hello v2"))  # direct: v1 archived
    t2 = v2["managed_token"]["token"]
    assert_error(api.config(t1), 401, "invalid_token")
    assert api.config(t2).json()["env"]["GREETING"] == "hello v2"
    # Roll back from v2 to v1: v2's token dies, v1 gets a fresh one in the answer.
    r = api.client.post(
        f"/api/spaces/{api.space}/services/web/rollback", json={}, headers=auth(api.token)
    )
    assert r.status_code == 200, r.text
    assert r.json()["id"] == v1["deployment_id"]
    fresh = r.json()["managed_token"]["token"]
    assert_error(api.config(t2), 401, "invalid_token")
    assert_error(api.config(t1), 401, "invalid_token")
    assert api.config(fresh).json()["env"]["GREETING"] == "hello v1"


def test_canary_keeps_the_stable_token_until_promoted_away(api: Api) -> None:
    v1 = api.deploy_ok(manifest())
    v2 = api.deploy_ok(manifest(greeting="hello v2", strategy="canary"))
    t1, t2 = v1["managed_token"]["token"], v2["managed_token"]["token"]
    assert api.config(t1).json()["routing_status"] == "active"
    assert api.config(t2).json()["routing_status"] == "canary"
    # Dropping the canary (rollback) rolls back from it: its token dies, v1's stays.
    r = api.client.post(
        f"/api/spaces/{api.space}/services/web/rollback", json={}, headers=auth(api.token)
    )
    assert r.status_code == 200, r.text
    assert r.json().get("managed_token") is None
    assert_error(api.config(t2), 401, "invalid_token")
    assert api.config(t1).status_code == 200


def test_stopping_or_deleting_the_service_revokes(api: Api) -> None:
    token = api.deploy_ok(manifest())["managed_token"]["token"]
    r = api.client.patch(
        f"/api/spaces/{api.space}/services/web", json={"status": "stopped"}, headers=auth(api.token)
    )
    assert r.status_code == 200, r.text
    assert_error(api.config(token), 401, "invalid_token")
    token = api.deploy_ok(manifest())["managed_token"]["token"]
    assert api.config(token).status_code == 200
    r = api.client.delete(f"/api/spaces/{api.space}/services/web", headers=auth(api.token))
    assert r.status_code == 204, r.text
    assert_error(api.config(token), 401, "invalid_token")


def test_reissue_revokes_the_previous_token(api: Api) -> None:
    svc = api.deploy_ok(manifest())
    old = svc["managed_token"]["token"]
    url = f"/api/spaces/{api.space}/deployments/{svc['deployment_id']}/token"
    r = api.client.post(url, headers={**auth(api.token), "idempotency-key": "reissue-1"})
    assert r.status_code == 201, r.text
    assert r.headers["x-turnout-revoked"] == "1"
    new = r.json()["token"]
    assert new.startswith("tak_dep_") and new != old
    assert_error(api.config(old), 401, "invalid_token")
    assert api.config(new).status_code == 200
    # A replay never shows the plaintext again.
    again = api.client.post(url, headers={**auth(api.token), "idempotency-key": "reissue-1"})
    assert again.status_code == 200 and again.json()["token"] is None
    assert again.json()["id"] == r.json()["id"]
    assert api.config(new).status_code == 200
    # A viewer may not; another space's deployment is not found; an archived one has none.
    viewer = make_user(api.client, api.token, "v", api.space, "viewer")
    assert_error(api.client.post(url, headers=auth(viewer)), 403, "forbidden")
    other = create_space(api.client, api.token, "other")
    r = api.client.post(
        f"/api/spaces/{other}/deployments/{svc['deployment_id']}/token", headers=auth(api.token)
    )
    assert_error(r, 404, "not_found")
    api.deploy_ok(manifest(greeting="v2"))
    assert_error(api.client.post(url, headers=auth(api.token)), 409, "deployment_not_routed")


def test_refresh_and_grace_period(api: Api) -> None:
    svc = api.deploy_ok(manifest(access={"scopes": ["runtime:config"], "lifetime_seconds": 3600}))
    old = svc["managed_token"]
    assert old["expires_at"] is not None
    r = api.client.post("/api/runtime/token/refresh", headers=auth(old["token"]))
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["token"] != old["token"] and new["scopes"] == ["runtime:config"]
    assert new["expires_at"] >= old["expires_at"]
    grace = admin_settings("x").runtime_token_grace_seconds
    assert new["previous_expires_at"] <= new["created_at"] + grace * 1000
    # Both work during the grace period ...
    assert api.config(old["token"]).status_code == 200
    assert api.config(new["token"]).status_code == 200
    # ... and the old one stops when it ends (simulated: its expiry moved to the past).
    stored = rows(api.client, sa.select(tokens.c.expires_at).where(tokens.c.id == old["id"]))
    assert stored[0].expires_at == new["previous_expires_at"]
    _expire(api.client, old["id"])
    assert_error(api.config(old["token"]), 401, "invalid_token")
    assert api.config(new["token"]).status_code == 200
    # A PAT cannot refresh anything.
    assert_error(api.client.post("/api/runtime/token/refresh", headers=auth(api.token)), 403)


def test_expired_managed_token_is_refused(api: Api) -> None:
    svc = api.deploy_ok(manifest(access={"scopes": ["runtime:config"], "lifetime_seconds": 60}))
    _expire(api.client, svc["managed_token"]["id"])
    assert_error(api.config(svc["managed_token"]["token"]), 401, "invalid_token")
    r = api.client.post("/api/runtime/token/refresh", headers=auth(svc["managed_token"]["token"]))
    assert_error(r, 401, "invalid_token")


def _expire(client: TestClient, token_id: str) -> None:
    from tests.admin.conftest import sql

    async def go(conn: Any) -> None:
        await conn.execute(sa.update(tokens).where(tokens.c.id == token_id).values(expires_at=1))

    sql(client, go)


def test_deploy_replay_never_shows_or_stores_the_token(api: Api) -> None:
    headers = {"idempotency-key": "deploy-1"}
    first = api.deploy(manifest(), headers=headers)
    assert first.status_code == 201
    token = first.json()["services"][0]["managed_token"]["token"]
    again = api.deploy(manifest(), headers=headers)
    assert again.status_code == 201
    replayed = again.json()["services"][0]["managed_token"]
    assert replayed["token"] is None
    assert replayed["id"] == first.json()["services"][0]["managed_token"]["id"]
    assert token not in again.text


def test_deployment_principals_cannot_be_members_or_get_pats(api: Api) -> None:
    svc = api.deploy_ok(manifest())
    r = api.client.post(
        f"/api/spaces/{api.space}/members",
        json={"principal_id": svc["deployment_id"], "role": "viewer"},
        headers=auth(api.token),
    )
    assert_error(r, 422)
    r = api.client.post(
        f"/api/principals/{svc['deployment_id']}/tokens",
        json={"name": "x", "scopes": ["pods:read"]},
        headers=auth(api.token),
    )
    assert_error(r, 422)


def test_common_env_api(api: Api) -> None:
    r = api.client.get(f"/api/spaces/{api.space}/common-env", headers=auth(api.token))
    assert r.status_code == 200 and r.json()["items"] == []
    tag = r.headers["etag"]
    r = put_common(
        api,
        [{"name": "API_KEY", "value": COMMON_SECRET, "secret": True}, {"name": "A", "value": "x"}],
        **{"if-match": tag},
    )
    assert r.status_code == 200, r.text
    assert r.json()["items"] == [
        {"name": "A", "value": "****", "secret": False},
        {"name": "API_KEY", "value": "co****42", "secret": True},
    ]
    assert COMMON_SECRET not in r.text
    assert_error(put_common(api, [], **{"if-match": tag}), 412)
    for entries, where in (
        ([{"name": "lower", "value": "x"}], "body.entries[0].name"),
        ([{"name": "A", "value": 1}], "body.entries[0].value"),
        ([{"name": "A", "value": "x"}, {"name": "A", "value": "y"}], "body.entries[1].name"),
        ([{"name": "A", "value": "x", "extra": 1}], "body.entries[0].extra"),
        ([{"name": "A", "value": "x" * 40_000}], "body.entries[0].value"),
    ):
        err = assert_error(put_common(api, entries), 422)
        assert where in [f["path"] for f in err["details"]["fields"]], (entries, err)
    # A lone surrogate (JSON escape) is refused as the body's, never a 500.
    r = api.client.put(
        f"/api/spaces/{api.space}/common-env",
        content=b'{"entries": [{"name": "A", "value": "\\ud800"}]}',
        headers={**auth(api.token), "content-type": "application/json"},
    )
    assert_error(r, 422)
    # The admin role: an editor may not read or write it.
    editor = make_user(api.client, api.token, "ed", api.space, "editor")
    assert_error(api.client.get(f"/api/spaces/{api.space}/common-env", headers=auth(editor)), 403)


def test_no_plaintext_anywhere_else(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    db = tmp_path / "admin.db"
    seen: list[str] = []
    with TestClient(make_admin_app(str(db))) as client:
        system = bootstrap(client)
        space = create_space(client, system, "shop")
        api = Api(client, system, space)
        assert (
            put_common(
                api, [{"name": "API_KEY", "value": COMMON_SECRET, "secret": True}]
            ).status_code
            == 200
        )
        body = manifest(
            access={"scopes": ["runtime:config", "deployments:read"], "lifetime_seconds": 600}
        )
        first = api.deploy(body, headers={"idempotency-key": "k1"})
        svc = first.json()["services"][0]
        token = svc["managed_token"]["token"]
        api.deploy(body, headers={"idempotency-key": "k1"})  # a replay
        api.config(token)
        refreshed = client.post("/api/runtime/token/refresh", headers=auth(token)).json()["token"]
        url = f"/api/spaces/{space}/deployments/{svc['deployment_id']}/token"
        reissued = client.post(url, headers=auth(system)).json()["token"]
        # Every other answer a caller can get about this world.
        for path in (
            f"/api/spaces/{space}/app-deployments",
            f"/api/spaces/{space}/services/web/deployments",
            f"/api/spaces/{space}/deployments/{svc['deployment_id']}",
            f"/api/spaces/{space}/snapshots/{svc['snapshot_id']}",
            f"/api/spaces/{space}/common-env",
            f"/api/spaces/{space}/audit",
            "/api/system/audit",
            f"/api/principals/{svc['deployment_id']}/tokens",
            "/api/principals",
        ):
            r = client.get(path, headers=auth(system))
            assert r.status_code == 200, (path, r.text)
            seen.append(r.text)
        r = client.get(
            f"/api/spaces/{space}/deployments/{svc['deployment_id']}", headers=auth(reissued)
        )
        seen.append(r.text)
    plaintexts = [token, refreshed, reissued, SECRET, COMMON_SECRET]
    for text in seen:
        for p in plaintexts:
            assert p not in text
    for record in caplog.records:
        line = record.getMessage()
        for p in plaintexts:
            assert p not in line
    files = [p for p in tmp_path.iterdir() if p.name.startswith("admin.db")]
    assert files
    for f in files:
        data = f.read_bytes()
        for p in plaintexts:
            assert p.encode() not in data, f"{p[:6]}… in {f.name}"
    assert first.status_code == 201


def test_staged_rollout_abort_and_promote_retire_tokens(api: Api) -> None:
    stages = {"strategy": "staged", "stages": [{"weight": 10, "pause_minutes": 5}]}
    v1 = api.deploy_ok(manifest())
    staged = manifest(greeting="v2")
    staged["spec"]["rollout"] = stages
    r = api.deploy(staged)
    assert r.status_code == 201, r.text
    app, v2 = r.json()["id"], r.json()["services"][0]
    t1, t2 = v1["managed_token"]["token"], v2["managed_token"]["token"]
    assert api.config(t2).json()["routing_status"] == "canary"
    base = f"/api/spaces/{api.space}/app-deployments/{app}/rollout"
    assert api.client.post(f"{base}/abort", json={}, headers=auth(api.token)).status_code == 200
    assert_error(api.config(t2), 401, "invalid_token")  # the canary is archived
    assert api.config(t1).status_code == 200
    # Again, promoted this time: the baseline is archived.
    r = api.deploy(staged)
    app, v3 = r.json()["id"], r.json()["services"][0]
    base = f"/api/spaces/{api.space}/app-deployments/{app}/rollout"
    assert api.client.post(f"{base}/promote", json={}, headers=auth(api.token)).status_code == 200
    assert_error(api.config(t1), 401, "invalid_token")
    assert api.config(v3["managed_token"]["token"]).json()["routing_status"] == "active"


def test_usage_write_scope_and_billing_write_still_record_usage(api: Api) -> None:
    event = {"meter": "exec_seconds", "units": 1}
    for i, scopes in enumerate((["usage:write"], ["billing:write"])):
        token = make_user(api.client, api.token, f"meter{i}", api.space, "editor", scopes)
        r = api.client.post(
            f"/api/spaces/{api.space}/usage",
            json={**event, "idempotency_key": f"k{i}"},
            headers=auth(token),
        )
        assert r.status_code == 201, (scopes, r.text)
    narrow = make_user(api.client, api.token, "reader", api.space, "editor", ["billing:read"])
    r = api.client.post(
        f"/api/spaces/{api.space}/usage",
        json={**event, "idempotency_key": "k9"},
        headers=auth(narrow),
    )
    assert_error(r, 403, "forbidden")


def test_rollback_by_a_narrower_token_succeeds_without_a_token(api: Api) -> None:
    wide = {"scopes": ["runtime:config", "pods:write"]}
    v1 = api.deploy_ok(manifest(access=wide))
    api.deploy_ok(manifest(greeting="v2", access=wide))
    narrow = make_user(api.client, api.token, "ops", api.space, "editor", ["deployments:write"])
    r = api.client.post(
        f"/api/spaces/{api.space}/services/web/rollback", json={}, headers=auth(narrow)
    )
    assert r.status_code == 200, r.text
    assert r.json()["id"] == v1["deployment_id"] and r.json().get("managed_token") is None
    assert "pods:write" in r.headers["x-turnout-warning"]
    url = f"/api/spaces/{api.space}/deployments/{v1['deployment_id']}/token"
    assert_error(api.client.post(url, headers=auth(narrow)), 403, "forbidden")
    r = api.client.post(url, headers=auth(api.token))
    assert r.status_code == 201, r.text
    assert api.config(r.json()["token"]).json()["version"] == 1
