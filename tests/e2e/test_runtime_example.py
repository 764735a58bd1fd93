"""``examples/runtime.py`` against a real ``turnout dev``: deploy → hand the example runtime its
managed token → it pulls its config, serves the GREETING through the gateway, polls with
If-None-Match (audited 304s) and notices when a redeploy retires its token."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.net import free_port, terminate, wait_until

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
_LAUNCH = "import sys; from turnout.cli import main; sys.exit(main(sys.argv[1:]))"


def _call(
    port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        payload = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=payload, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _manifest(upstream: str, greeting: str) -> dict[str, Any]:
    return {
        "apiVersion": "turnout/v1",
        "kind": "App",
        "metadata": {"name": "example"},
        "spec": {
            "services": {
                "web": {
                    "type": "http",
                    "upstreams": [upstream],
                    "env": {"GREETING": greeting},
                    "secrets": {"DB_PASSWORD": "example-secret-value"},
                }
            }
        },
    }


def test_example_runtime_pulls_and_polls_its_config(tmp_path: Path) -> None:
    gport, aport, rport = free_port(), free_port(), free_port()
    dev_out = (tmp_path / "dev.out").open("w+")
    dev = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _LAUNCH,
            "dev",
            "--dir",
            str(tmp_path / "dev"),
            "--gateway",
            f"127.0.0.1:{gport}",
            "--admin",
            f"127.0.0.1:{aport}",
            "--runtimes",
            f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}",
        ],
        cwd=ROOT,
        stdout=dev_out,
        stderr=subprocess.STDOUT,
    )
    runtime: subprocess.Popen[bytes] | None = None
    rt_out = (tmp_path / "runtime.out").open("w+")
    try:

        def banner() -> tuple[str, str] | None:
            text = (tmp_path / "dev.out").read_text()
            token = re.search(r"export TOKEN=(\S+)", text)
            space = re.search(r"/api/spaces/(spc_\w+)/app-deployments", text)
            return (token.group(1), space.group(1)) if token and space else None

        (token, space), _ = wait_until(banner, 60, "turnout dev's banner")
        admin = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        upstream = f"http://127.0.0.1:{rport}"
        status, body = _call(
            aport,
            "POST",
            f"/api/spaces/{space}/app-deployments",
            _manifest(upstream, "hello from the example"),
            admin,
        )
        assert status == 201, body
        managed = json.loads(body)["services"][0]["managed_token"]["token"]
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")},
            "TURNOUT_ADMIN_URL": f"http://127.0.0.1:{aport}",
            "TURNOUT_RUNTIME_TOKEN": managed,
            "TURNOUT_POLL_SECONDS": "0.2",
            "PORT": str(rport),
        }
        runtime = subprocess.Popen(
            [sys.executable, "-u", "examples/runtime.py"],
            cwd=ROOT,
            env=env,
            stdout=rt_out,
            stderr=subprocess.STDOUT,
        )
        host = {"Host": "web.example.turnout.localhost"}

        def served() -> dict[str, Any] | None:
            try:
                st, data = _call(gport, "GET", "/", headers=host)
            except OSError:
                return None
            return json.loads(data) if st == 200 else None

        answer, _ = wait_until(served, 30, "the example runtime through the gateway")
        assert answer == {"greeting": "hello from the example", "version": 1}

        # It polls with If-None-Match: the audit log shows 304 reads by the deployment.
        def polled() -> list[dict[str, Any]] | None:
            _, data = _call(aport, "GET", "/api/system/audit?limit=500", headers=admin)
            reads = [
                i
                for i in json.loads(data)["items"]
                if i["action"] == "get_runtime_config" and i["outcome"] == "not_modified"
            ]
            return reads or None

        reads, _ = wait_until(polled, 30, "an If-None-Match poll")
        assert reads[0]["principal_kind"] == "deployment"

        # A redeploy archives its deployment: its token is revoked, and it says so.
        status, body = _call(
            aport,
            "POST",
            f"/api/spaces/{space}/app-deployments",
            _manifest(upstream, "hello again"),
            admin,
        )
        assert status == 201, body
        wait_until(
            lambda: "token revoked" in (tmp_path / "runtime.out").read_text() or None,
            30,
            "the runtime noticing its revoked token",
        )
        out = (tmp_path / "runtime.out").read_text() + (tmp_path / "dev.out").read_text()
        assert managed not in out and "example-secret-value" not in out
    finally:
        if runtime is not None:
            terminate(runtime)
        terminate(dev)
        dev_out.close()
        rt_out.close()
