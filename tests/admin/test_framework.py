"""The framework's raw-body parse hook: off the event loop, before any SQL transaction, bounded
per principal (429), and checked again at commit.

The app deployment endpoint is rebuilt with a parse function that waits for a file before it
parses (it runs in a worker process, so an event would not reach it): while it waits, the test
looks at what the admin can still do.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from admin.app import load_resources
from admin.db import app_deployments, memberships
from admin.framework import REGISTRY
from admin.manifest import ManifestParcel, manifest_body
from tests.admin.conftest import (
    assert_error,
    auth,
    bootstrap,
    create_space,
    make_admin_app,
    make_user,
    principal_of,
    rows,
    sql,
)
from tests.admin.deployed import MANIFEST

load_resources()


def gated_manifest(raw: bytes) -> ManifestParcel:
    """``{"gate": <path>, "manifest": {...}}``: touch ``<gate>.started``, wait for ``<gate>``."""
    body = json.loads(raw)
    Path(body["gate"] + ".started").touch()
    deadline = time.monotonic() + 30
    while not os.path.exists(body["gate"]):
        if time.monotonic() > deadline:
            raise TimeoutError("the test never opened the gate")
        time.sleep(0.005)
    return manifest_body(json.dumps(body["manifest"]).encode())


@pytest.fixture
def gated(db_path: Path) -> Iterator[TestClient]:
    [index] = [
        i
        for i, ep in enumerate(REGISTRY)
        if ep.method == "POST" and ep.path == "/api/spaces/{space}/app-deployments"
    ]
    real = REGISTRY[index]
    REGISTRY[index] = dataclasses.replace(real, parse=gated_manifest)
    try:
        app = make_admin_app(str(db_path))  # its routes are built from the registry now
    finally:
        REGISTRY[index] = real
    with TestClient(app) as client:
        yield client


def wait_for(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


class Deploy(threading.Thread):
    """One app deployment POST in a thread (the test client is thread-safe)."""

    def __init__(self, client: TestClient, space: str, token: str, gate: Path, name: str) -> None:
        super().__init__(daemon=True)
        svc = MANIFEST["spec"]["services"]["web"]  # type: ignore[index]
        doc = {**MANIFEST, "metadata": {"name": name}, "spec": {"services": {name: svc}}}
        self.args_ = (client, space, token, json.dumps({"gate": str(gate), "manifest": doc}))
        self.response: httpx2.Response | None = None
        self.start()

    def run(self) -> None:
        client, space, token, body = self.args_
        self.response = client.post(
            f"/api/spaces/{space}/app-deployments",
            content=body,
            headers={**auth(token), "content-type": "application/json"},
        )

    def result(self) -> httpx2.Response:
        self.join(30)
        assert self.response is not None, "the deploy did not finish"
        return self.response


def test_parsing_holds_no_connection_and_is_bounded_per_principal(
    gated: TestClient, tmp_path: Path
) -> None:
    system = bootstrap(gated)
    space = create_space(gated, system)
    gate = tmp_path / "gate"
    first = Deploy(gated, space, system, gate, "one")
    second = Deploy(gated, space, system, gate, "two")
    wait_for(lambda: state_in_flight(gated, system) == 2)

    # Both parses wait in workers; the event loop and the (single, SQLite) connection are free.
    t0 = time.monotonic()
    r = gated.get("/api/spaces", headers=auth(system))
    assert r.status_code == 200 and time.monotonic() - t0 < 5
    # A third parse by the same principal is refused at once, before its body is read.
    r = gated.post(
        f"/api/spaces/{space}/app-deployments",
        content=json.dumps({"gate": str(gate), "manifest": MANIFEST}),
        headers={**auth(system), "content-type": "application/json"},
    )
    err = assert_error(r, 429, "too_many_requests")
    assert "at most 2" in err["message"]
    assert r.headers["retry-after"] == "1"
    # Someone else is not held up by it.
    other = make_user(gated, system, "other", space, "editor")
    assert gated.get(f"/api/spaces/{space}", headers=auth(other)).status_code == 200

    gate.touch()
    assert first.result().status_code == 201, first.result().text
    assert second.result().status_code == 201, second.result().text


def state_in_flight(client: TestClient, token: str) -> int:
    from tests.admin.conftest import state_of

    return state_of(client).parsers.in_flight(principal_of(client, token))


def test_authorisation_is_checked_again_after_the_parse(gated: TestClient, tmp_path: Path) -> None:
    system = bootstrap(gated)
    space = create_space(gated, system)
    editor = make_user(gated, system, "ed", space, "editor")
    editor_id = principal_of(gated, editor)
    gate = tmp_path / "gate"
    deploy = Deploy(gated, space, editor, gate, "late")
    wait_for(lambda: Path(f"{gate}.started").exists())

    async def remove(conn: Any) -> None:
        await conn.execute(
            sa.delete(memberships).where(
                memberships.c.space_id == space, memberships.c.principal_id == editor_id
            )
        )

    sql(gated, remove)  # the editor leaves the space while the manifest is being parsed
    gate.touch()
    assert_error(deploy.result(), 404, "not_found")
    assert rows(gated, sa.select(app_deployments)) == []


def test_an_idempotent_replay_skips_the_parse(gated: TestClient, tmp_path: Path) -> None:
    system = bootstrap(gated)
    space = create_space(gated, system)
    gate = tmp_path / "gate"
    gate.touch()  # open from the start
    body = json.dumps({"gate": str(gate), "manifest": MANIFEST})
    headers = {**auth(system), "content-type": "application/json", "idempotency-key": "k-1"}
    url = f"/api/spaces/{space}/app-deployments"
    first = gated.post(url, content=body, headers=headers)
    assert first.status_code == 201, first.text
    Path(f"{gate}.started").unlink()
    again = gated.post(url, content=body, headers=headers)
    assert again.status_code == 201 and again.headers["idempotent-replay"] == "true"
    expected = first.json()
    for svc in expected["services"]:  # a replay never shows a managed token's plaintext
        svc["managed_token"]["token"] = None
    assert again.json() == expected
    assert not Path(f"{gate}.started").exists(), "a replay parsed the body again"
