"""A small admin world for tests that call every endpoint: a space with a deployed service
(``web``), its deployment, snapshot and hostname, and a member; ids by path parameter name."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from starlette.testclient import TestClient

from admin.framework import Endpoint
from tests.admin.conftest import auth, bootstrap, create_space, make_admin_app

MANIFEST = {
    "apiVersion": "turnout/v1",
    "kind": "App",
    "metadata": {"name": "shop"},
    "spec": {"services": {"web": {"type": "http", "upstreams": ["http://127.0.0.1:9"]}}},
}


@dataclass
class World:
    client: TestClient
    token: str  # the system principal's
    ids: dict[str, str]  # path parameter name -> a real value
    managed: str = ""  # the deployment's managed token (for the runtime endpoints)

    def token_for(self, ep: Endpoint) -> str:
        """The token that passes ``ep``'s scope check: the managed one for runtime scopes."""
        return self.managed if ep.scope.startswith("runtime:") else self.token

    def url(self, ep: Endpoint) -> str:
        path = ep.path
        for name in ep.params:
            path = path.replace("{" + name + "}", self.ids.get(name, "x"))
        return path


@contextlib.contextmanager
def deployed_world(db: Path) -> Iterator[World]:
    with TestClient(make_admin_app(str(db))) as client:
        token = bootstrap(client)
        space = create_space(client, token)
        r = client.post(f"/api/spaces/{space}/app-deployments", json=MANIFEST, headers=auth(token))
        assert r.status_code == 201, r.text
        dep = r.json()["services"][0]
        r = client.post("/api/principals", json={"kind": "user", "name": "u"}, headers=auth(token))
        member = r.json()["id"]
        r = client.post(
            f"/api/spaces/{space}/members",
            json={"principal_id": member, "role": "viewer"},
            headers=auth(token),
        )
        assert r.status_code == 201, r.text
        yield World(
            client,
            token,
            {
                "space": space,
                "service": "web",
                "deployment": dep["deployment_id"],
                "snapshot": dep["snapshot_id"],
                "host": dep["hostnames"][0],
                "principal": member,
            },
            managed=dep["managed_token"]["token"],
        )
