"""The admin app's routing answers: 405 with ``Allow`` (D10), HEAD where GET is, 404."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from admin.app import allow_header, load_resources
from admin.framework import REGISTRY
from tests.admin.conftest import assert_error

load_resources()
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
BY_PATH: dict[str, set[str]] = {}
for _ep in REGISTRY:
    BY_PATH.setdefault(_ep.path, set()).add(_ep.method)
BY_PATH.update({p: {"GET"} for p in ("/openapi.json", "/healthz", "/readyz", "/metrics")})


def _url(path: str) -> str:
    return path.replace("{", "x").replace("}", "")  # unknown ids: routing decides before them


@pytest.mark.parametrize("path", sorted(BY_PATH))
def test_every_405_lists_the_allowed_methods(client: TestClient, path: str) -> None:
    allowed = BY_PATH[path] | ({"HEAD"} if "GET" in BY_PATH[path] else set())
    refused = [m for m in METHODS if m not in allowed] + ["OPTIONS"]
    for method in refused:
        r = client.request(method, _url(path))
        assert r.status_code == 405, method
        assert r.headers["allow"] == allow_header(BY_PATH[path]), method
        assert set(r.headers["allow"].split(", ")) == allowed
        if method != "HEAD":  # (no body)
            err = assert_error(r, 405, "method_not_allowed")
            assert err["details"] == {"allow": r.headers["allow"].split(", ")}


def test_allow_header_order() -> None:
    assert allow_header({"POST", "GET"}) == "GET, HEAD, POST"
    assert allow_header({"DELETE", "PATCH"}) == "PATCH, DELETE"


def test_head_where_get_is(client: TestClient) -> None:
    r = client.head("/healthz")
    assert r.status_code == 200 and r.content == b""
    assert client.head("/api/spaces").status_code == 401  # the GET endpoint, without a token


def test_unknown_paths(client: TestClient) -> None:
    r = client.get("/api/nothing-here")
    assert_error(r, 404, "not_found")
    assert len(r.headers["x-request-id"]) == 32
