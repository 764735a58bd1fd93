"""A service belongs to the app that deployed it; another app of the space cannot take it."""

from __future__ import annotations

import sqlalchemy as sa
from starlette.testclient import TestClient

from admin.db import deployments
from admin.settings import Settings
from tests.admin.conftest import assert_error, bootstrap, create_space, rows
from tests.admin.test_deployments import Api, manifest


def test_second_app_cannot_redeploy_another_apps_service(client: TestClient) -> None:
    token = bootstrap(client)
    api = Api(client, token, create_space(client, token, "t"))
    api.deploy_ok(manifest())
    r = api.deploy(manifest(app="other"))
    assert_error(r, 409, "service_taken")
    assert "belongs to app shop" in r.json()["error"]["message"]
    assert len(rows(client, sa.select(deployments))) == 1  # nothing written


def test_reconcile_and_retry_intervals_from_env() -> None:
    env = {"TURNOUT_RECONCILE_INTERVAL": "0.5", "TURNOUT_PUBLISH_RETRY": "0.2"}
    s = Settings.from_env(env)
    assert (s.reconcile_interval, s.publish_retry_seconds) == (0.5, 0.2)
    for bad in ("abc", "0", "99999"):
        try:
            Settings.from_env({"TURNOUT_RECONCILE_INTERVAL": bad})
        except SystemExit as exc:
            assert "TURNOUT_RECONCILE_INTERVAL" in str(exc)
        else:
            raise AssertionError(f"{bad!r} was accepted")
