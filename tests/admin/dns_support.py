"""An admin app whose TXT lookups read a JSON file (``TURNOUT_DNS_FIXTURE``), and helpers to
prove hostname ownership through it — for tests of hostnames, claims and route edits.

A test module takes the fixtures with ``dns = DNS_FIXTURE`` and ``client = CLIENT_FIXTURE``."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from admin.app import create_app
from admin.settings import Settings
from routing.store import MemoryRouteStore
from tests.admin.conftest import admin_settings, auth

BASE = "turnout.localhost"


def empty_dns(tmp_path: Path) -> Path:
    path = tmp_path / "dns.json"
    path.write_text("{}")
    return path


def _dns(tmp_path: Path) -> Path:
    return empty_dns(tmp_path)


def _client(tmp_path: Path, dns: Path) -> Iterator[TestClient]:
    with dns_client(tmp_path, dns) as c:
        yield c


DNS_FIXTURE = pytest.fixture(_dns, name="dns")
CLIENT_FIXTURE = pytest.fixture(_client, name="client")


@contextlib.contextmanager
def dns_client(tmp_path: Path, dns: Path, **overrides: Any) -> Iterator[TestClient]:
    base = admin_settings(str(tmp_path / "admin.db"))
    settings = Settings(
        db_url=base.db_url, keys=base.keys, base_domain=BASE, dns_fixture=str(dns), **overrides
    )
    with TestClient(create_app(settings, store=MemoryRouteStore())) as c:
        yield c


def set_txt(dns: Path, name: str, *values: str) -> None:
    data = json.loads(dns.read_text())
    data[name] = list(values)
    dns.write_text(json.dumps(data))


def hostname_url(space: str, service: str, host: str | None = None) -> str:
    url = f"/api/spaces/{space}/services/{service}/hostnames"
    return url if host is None else f"{url}/{host}"


def prove(
    client: TestClient, dns: Path, token: str, space: str, service: str, host: str
) -> dict[str, Any]:
    """Publish the claim's TXT record and verify it; returns the hostname as answered (200)."""
    url = hostname_url(space, service, host)
    claim = client.get(url, headers=auth(token))
    assert claim.status_code == 200, claim.text
    v = claim.json()["verification"]
    assert v is not None, claim.text
    set_txt(dns, v["name"], v["value"])
    r = client.post(f"{url}/verify", headers=auth(token))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body
