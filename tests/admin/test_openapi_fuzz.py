"""Schema-driven fuzzing of the admin API (schemathesis) against its own ``/openapi.json``.

For every operation the document declares, schemathesis generates requests (bounded and
derandomized: the same examples on every run) and sends them to the in-process ASGI app as the
system principal. Whatever the input, the app must never answer 5xx, and every answer must match
the schema the document declares for its status code.

Both generation modes run: positive (inputs the schema allows) and negative (inputs it forbids).
The credentials are always valid, so the fuzzing reaches the handlers rather than stopping at
401: the system token, or — for the runtime endpoints always, and for every other endpoint a
managed deployment token may call in one example of two — the world's deployment's managed
token (principal kind ``deployment``).

A request whose ids are all random only ever reaches the 404 branch, so a :class:`World` of real
resources exists (a space with a deployed service, a member, spare tokens, spare spaces, a pod
with a child) and
two examples in three get real path ids (:meth:`World.prepare`). Destructive operations get
their own victims (a spare space for ``DELETE /api/spaces/{space}``, a spare token for token
revocation, never the caller's own), and the world is repaired after every mutation (a deleted
or stopped service is deployed again, a removed member added back).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import response_schema_conformance
from starlette.applications import Starlette

from admin.app import load_resources
from admin.auth import RUNTIME_SCOPES
from admin.bootstrap import bootstrap_system
from admin.db import make_engine
from admin.framework import REGISTRY
from admin.manifest_access import MANAGED_SCOPES
from admin.migrate import upgrade
from tests.admin.conftest import make_admin_app

MAX_EXAMPLES = 15

MANIFEST = {
    "apiVersion": "turnout/v1",
    "kind": "App",
    "metadata": {"name": "fuzz"},
    "spec": {
        "services": {
            "web": {
                "type": "http",
                "upstreams": ["http://127.0.0.1:9"],
                "env": {"GREETING": "fuzz"},
                "access": {"scopes": list(MANAGED_SCOPES)},
            }
        },
        "routes": [{"service": "web"}],
    },
}
# Which endpoints the managed token calls: every one it holds the scope of.
MANAGED_HOLDS = {*MANAGED_SCOPES, *RUNTIME_SCOPES}


# The parts of the world ensure() keeps alive, and which of them a mutation can reach.
SPACE_PARTS = frozenset({"space", "members", "service", "managed", "rollout", "pods"})
PARTS = SPACE_PARTS | {"invitation"}
_DEPLOYED = frozenset({"service", "managed", "rollout"})
_NOTHING: frozenset[str] = frozenset()
# Exact paths first: creating a space, a principal or a token breaks nothing of the world's
# (deletes name spare ones); plans, usage reports, credits and a resync change nothing a check
# could put back.
REACH_EXACT = {
    "/api/spaces": _NOTHING,
    "/api/spaces/{space}/pods:rebuild": frozenset({"pods"}),
    "/api/spaces/{space}/usage": _NOTHING,
    "/api/spaces/{space}/billing/credit": _NOTHING,
    "/api/system/resync": _NOTHING,
}
REACH: list[tuple[str, frozenset[str]]] = [  # the first prefix that matches decides
    ("/api/plans", _NOTHING),
    ("/api/tokens", frozenset({"managed"})),
    ("/api/principals", frozenset({"members", "managed"})),
    ("/api/spaces/{space}/pods", frozenset({"pods"})),
    ("/api/spaces/{space}/members", frozenset({"members"})),
    ("/api/spaces/{space}/invitations", frozenset({"invitation"})),
    ("/api/invitations", frozenset({"invitation"})),
    ("/api/runtime", frozenset({"managed"})),
    ("/api/spaces/{space}/services", _DEPLOYED),
    ("/api/spaces/{space}/app-deployments", _DEPLOYED),
    ("/api/spaces/{space}/deployments", _DEPLOYED),
    ("/api/spaces/{space}/snapshots", _DEPLOYED),
    ("/api/spaces/{space}/common-env", _DEPLOYED),
]


def reach(path: str) -> frozenset[str]:
    """What a mutation of ``path`` may break: a part it cannot reach is not checked again.
    Anything not listed (billing, the space itself) may reach everything."""
    if path in REACH_EXACT:
        return REACH_EXACT[path]
    for prefix, parts in REACH:
        if path == prefix or path.startswith(prefix + "/"):
            return parts
    return PARTS


def rollout_manifest(strategy: str) -> dict[str, Any]:
    """A second app whose staged deploys give the rollout endpoints a real ``{id}``."""
    return {
        "apiVersion": "turnout/v1",
        "kind": "App",
        "metadata": {"name": "fuzzroll"},
        "spec": {
            "services": {"roll": {"type": "http", "upstreams": ["http://127.0.0.1:9"]}},
            "rollout": {"strategy": strategy},
        },
    }


def _ok(resp: requests.Response, *codes: int) -> Any:
    assert resp.status_code in codes, (
        f"{resp.request.method} {resp.url}: {resp.status_code} {resp.text}"
    )
    return resp.json() if resp.content else None


class World:
    """Real resources for the fuzzer to hit, kept alive between examples."""

    def __init__(self, app: Starlette, token: str) -> None:
        self.app = app
        self.token = token
        self.client = asgi.get_client(cast(Any, app))
        self.space = ""
        self.service_id = ""
        self.deployment_id = ""
        self.snapshot_id = ""
        self.host = ""
        self.user_id = ""
        self.invitation = ""  # a pending invitation of the caller (the system principal)
        self.invitation_space = ""
        self.inviter = ""  # a user's token: it invites the system principal to its spaces
        self.rollout_app = ""  # an app deployment with a running staged rollout
        self.rollout_space = ""
        self.pod_child = ""  # an outstanding child of the pod "fuzz"
        self.managed = ""  # the managed token of the deployment of "web"
        self.spawned = 0
        self.examples = 0
        self.dirty: set[str] = set(PARTS)  # what a mutation since the last ensure() may have broken

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _call(self, method: str, path: str, *codes: int, **kw: Any) -> Any:
        return _ok(self.client.request(method, path, headers=self.auth, **kw), *codes)

    def spare_space(self) -> str:
        body = self._call("POST", "/api/spaces", 201, json={"name": "spare"})
        return str(body["id"])

    def spare_token(self, principal: str | None = None) -> str:
        path = f"/api/principals/{principal}/tokens" if principal else "/api/tokens"
        body = self._call("POST", path, 201, json={"name": "spare", "scopes": ["spaces:read"]})
        return str(body["id"])

    def ensure_invitation(self) -> None:
        """A pending invitation addressed to the caller, in a space of another user's."""
        if not self.inviter:
            body = self._call("POST", "/api/principals", 201, json={"kind": "user", "name": "i"})
            made = self._call(
                "POST",
                f"/api/principals/{body['id']}/tokens",
                201,
                json={"name": "i", "scopes": ["*"]},
            )
            self.inviter = made["token"]
        pending = self._call("GET", "/api/invitations?status=pending&limit=500", 200)
        if self.invitation in {i["id"] for i in pending["items"]}:
            return
        system = self._call("GET", "/api/principals?limit=500", 200)
        [system_id] = [p["id"] for p in system["items"] if p["kind"] == "system"]
        inviter = {"Authorization": f"Bearer {self.inviter}"}
        space = _ok(self.client.post("/api/spaces", json={"name": "inv"}, headers=inviter), 201)
        invited = _ok(
            self.client.post(
                f"/api/spaces/{space['id']}/members",
                json={"principal_id": system_id, "role": "viewer"},
                headers=inviter,
            ),
            202,
        )
        self.invitation, self.invitation_space = invited["id"], space["id"]

    def ensure(self) -> None:
        """(Re)create whatever a mutation since the last call may have deleted or stopped.

        Only the parts the mutations since the last call could reach (:func:`reach`) are
        checked: the checks were most of the run's time when every part was checked after
        every mutation."""
        dirty, self.dirty = self.dirty, set()
        if not dirty:
            return
        if "invitation" in dirty:
            self.ensure_invitation()
        if not self.user_id:
            body = self._call("POST", "/api/principals", 201, json={"kind": "user", "name": "u"})
            self.user_id = body["id"]
        if "space" in dirty and (
            not self.space
            or self.client.get(f"/api/spaces/{self.space}", headers=self.auth).status_code != 200
        ):
            self.space = self.spare_space()
            dirty |= SPACE_PARTS  # a new space: everything in it is to be made
        space = self.space
        if "members" in dirty:
            self._ensure_member(space)
        if "service" in dirty:
            self._ensure_service(space)
        if "managed" in dirty:
            self._ensure_managed(space)
        if "rollout" in dirty:
            self._ensure_rollout(space)
        if "pods" in dirty:
            self.ensure_pods(space)

    def _ensure_member(self, space: str) -> None:
        members = self._call("GET", f"/api/spaces/{space}/members?limit=500", 200)
        if self.user_id not in {m["principal_id"] for m in members["items"]}:
            self._call(
                "POST",
                f"/api/spaces/{space}/members",
                201,
                json={"principal_id": self.user_id, "role": "editor"},
            )

    def _ensure_service(self, space: str) -> None:
        svc = self.client.get(f"/api/spaces/{space}/services/web", headers=self.auth)
        hosts = self.client.get(f"/api/spaces/{space}/services/web/hostnames", headers=self.auth)
        if (
            svc.status_code != 200
            or svc.json()["status"] != "deployed"
            or hosts.status_code != 200
            or not hosts.json()["items"]
        ):
            body = self._call("POST", f"/api/spaces/{space}/app-deployments", 201, json=MANIFEST)
            dep = body["services"][0]
            self.service_id = dep["service_id"]
            self.deployment_id = dep["deployment_id"]
            self.snapshot_id = dep["snapshot_id"]
            self.host = dep["hostnames"][0]
            self.managed = dep["managed_token"]["token"]

    def _ensure_managed(self, space: str) -> None:
        """A working managed token (a generated re-issue or refresh may have retired it)."""
        probe = {"Authorization": f"Bearer {self.managed}"}
        if self.client.get("/api/runtime/config", headers=probe).status_code == 200:
            return
        path = f"/api/spaces/{space}/deployments/{self.deployment_id}/token"
        self.managed = self._call("POST", path, 201)["token"]

    def _ensure_rollout(self, space: str) -> None:
        if self.rollout_space != space:
            self.rollout_space, self.rollout_app = space, ""
        if self.rollout_app:
            path = f"/api/spaces/{space}/app-deployments/{self.rollout_app}/rollout"
            r = self.client.get(path, headers=self.auth)
            if r.status_code == 200 and r.json()["state"] in ("in_progress", "paused"):
                return
        else:
            path = f"/api/spaces/{space}/app-deployments"
            self._call("POST", path, 201, json=rollout_manifest("direct"))
        path = f"/api/spaces/{space}/app-deployments"
        body = self._call("POST", path, 201, json=rollout_manifest("staged"))
        assert body["rollout"] is not None, body
        self.rollout_app = body["id"]

    def ensure_pods(self, space: str) -> None:
        """The pod "fuzz" (write /fuzz, may delegate it) with one outstanding child."""
        base = f"/api/spaces/{space}/pods"
        if self.client.get(f"{base}/fuzz", headers=self.auth).status_code != 200:
            rule = {"target": "/fuzz", "permission": "write"}
            body = {"name": "fuzz", "scope": {"allow": [rule]}, "grant": [rule]}
            self._call("POST", base, 201, json=body)
        view = self._call("GET", f"{base}/fuzz", 200)
        live = [c["child"] for c in view["children"] if c["state"] == "outstanding"]
        if self.pod_child in live:
            return
        for child in live:  # generated spawns may have taken /fuzz: hand it back
            self._call("POST", f"{base}/fuzz/children/{child}/stop", 200)
        self.spawned += 1
        self.pod_child = f"kid{self.spawned}"
        rule = {"target": f"/fuzz/{self.pod_child}", "permission": "write"}
        self._call(
            "POST", f"{base}/fuzz/children", 201, json={"name": self.pod_child, "rules": [rule]}
        )

    def prepare(self, case: Case[Any]) -> None:
        """Authenticate the case as the system principal and give most examples real path ids.

        Deterministic by example number: one in three keeps every generated id, one in three
        gets real ids throughout, one in three real ids except the last (a real parent with an
        unknown child)."""
        # Negative generation also drops or mangles the credentials; this fuzzes the handlers,
        # not the 401 branch (tests/admin/test_auth_matrix.py covers that).
        for name in [k for k in case.headers if k.lower() == "authorization"]:
            del case.headers[name]
        case.headers.update(self.auth)
        path, method = case.operation.path, case.method.upper()
        scope = SCOPE_OF[(method, path)]
        if scope in RUNTIME_SCOPES or (scope in MANAGED_HOLDS and self.examples % 2 == 0):
            case.headers["Authorization"] = f"Bearer {self.managed}"
        if method != "GET":
            self.dirty |= reach(path)
        self.examples += 1
        params = case.path_parameters
        if not params or self.examples % 3 == 0:
            return
        names = list(params)
        if self.examples % 3 == 2 and len(names) > 1:
            names = names[:-1]
        real: dict[str, str] = {
            "space": self.space,
            "service": "web" if self.examples % 2 else self.service_id,
            "deployment": self.deployment_id,
            "snapshot": self.snapshot_id,
            "host": self.host,
            "principal": self.user_id,
            "plan": "plan_plus",
            "invitation": self.invitation,
            "id": self.rollout_app,
            "name": "fuzz",  # a pod
            "child": self.pod_child,
        }
        if "invitation" in names:
            real["space"] = self.invitation_space
        for name in names:
            if name == "space" and method == "DELETE" and path == "/api/spaces/{space}":
                params[name] = self.spare_space()  # never the world's own space
            elif name == "token":  # never the caller's own token
                if "principal" in params:
                    params["principal"] = self.user_id
                    params[name] = self.spare_token(self.user_id)
                else:
                    params[name] = self.spare_token()
            elif name in real:
                params[name] = real[name]


async def _bootstrap(db: Path) -> str:
    """What ``turnout admin init`` does: migrate, create the system principal, a ``*`` token."""
    engine = make_engine(str(db))
    try:
        await upgrade(engine)
        return (await bootstrap_system(engine)).token
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    db = tmp_path_factory.mktemp("fuzz") / "admin.db"
    app = make_admin_app(str(db))
    w = World(app, asyncio.run(_bootstrap(db)))
    with w.client:  # runs the app's lifespan (kept until shutdown_lifespans)
        try:
            w.ensure()
            yield w
        finally:
            asgi.shutdown_lifespans()


@pytest.fixture(scope="module")
def admin_schema(world: World) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", world.app)


def _operations() -> list[tuple[str, str]]:
    load_resources()
    return [(ep.method, ep.path) for ep in REGISTRY]


load_resources()
SCOPE_OF = {(ep.method, ep.path): ep.scope for ep in REGISTRY}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("method", "path"), _operations())
def test_no_server_errors_and_responses_match_schema(
    method: str,
    path: str,
    mode: GenerationMode,
    admin_schema: schemathesis.BaseSchema,
    world: World,
) -> None:
    operation = admin_schema[path][method]

    # (schemathesis' own pytest loader for fixtures breaks on pytest 9, hence plain hypothesis)
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    def run(case: Case[Any]) -> None:
        world.ensure()
        world.prepare(case)
        case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])

    run()
