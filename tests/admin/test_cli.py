"""``turnout admin`` as an operator runs it: real subprocesses, real files, real sockets."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
from starlette.testclient import TestClient

from admin.auth import TOKEN_LEN, TOKEN_PREFIX
from admin.crypto import KeyRing
from tests.admin.conftest import TEST_KEYS, auth, make_admin_app

TURNOUT = [sys.executable, "-m", "turnout.cli", "admin"]


def _env(keys: str | None = TEST_KEYS) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    if keys is not None:
        env["TURNOUT_KEYS"] = keys
    return env


def turnout(*args: str, keys: str | None = TEST_KEYS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TURNOUT, *args], env=_env(keys), capture_output=True, text=True, timeout=60
    )


def test_init_prints_a_token_that_authenticates(tmp_path: Path) -> None:
    db = tmp_path / "admin.db"
    first = turnout("init", "--db", str(db))
    assert first.returncode == 0, first.stderr
    token = first.stdout.strip()
    assert token.startswith(TOKEN_PREFIX) and len(token) == TOKEN_LEN
    assert token not in first.stderr  # the token goes to stdout only

    again = turnout("init", "--db", str(db), "--json")
    assert again.returncode == 0, again.stderr
    out = orjson.loads(again.stdout)
    assert out["created"] is False and out["token"] != token
    assert len(out["token"]) == TOKEN_LEN

    # Nothing but a token was created the second time.
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM principals").fetchone() == (1,)
        assert conn.execute("SELECT kind, name FROM spaces").fetchall() == [("system", "system")]
        assert conn.execute("SELECT count(*) FROM tokens").fetchone() == (2,)
        scopes = conn.execute("SELECT DISTINCT scopes FROM tokens").fetchall()
        assert scopes == [('["*"]',)]

    with TestClient(make_admin_app(str(db))) as client:
        for t in (token, out["token"]):
            r = client.get("/api/spaces", headers=auth(t))
            assert r.status_code == 200, r.text
            assert [s["id"] for s in r.json()["items"]] == [out["space_id"]]
        assert client.get("/api/principals", headers=auth(token)).status_code == 200


def test_refuses_to_start_without_keys(tmp_path: Path) -> None:
    for args in (("init", "--db", str(tmp_path / "a.db")), ("--db", str(tmp_path / "b.db"))):
        res = turnout(*args, keys=None)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert "TURNOUT_KEYS" in res.stderr and "keygen" in res.stderr
        assert res.stdout == ""
    assert not (tmp_path / "a.db").exists()
    bad = turnout("init", "--db", str(tmp_path / "c.db"), keys="*k1:c2hvcnQ=")
    assert bad.returncode == 2 and "TURNOUT_KEYS" in bad.stderr
    assert "c2hvcnQ" not in bad.stderr  # key material is never echoed


def test_keygen_output_parses() -> None:
    res = turnout("keygen", keys=None)
    assert res.returncode == 0, res.stderr
    entry = res.stdout.strip()
    assert entry.startswith("*")
    ring = KeyRing.parse(entry)
    assert len(ring) == 1 and ring.active_kid == entry[1:].split(":")[0]
    named = turnout("keygen", "--kid", "k2024", keys=None)
    assert KeyRing.parse(named.stdout).active_kid == "k2024"
    assert turnout("keygen", "--kid", "bad kid!", keys=None).returncode == 2


def test_migrate(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    res = turnout("migrate", "--db", str(db), keys=None)
    assert res.returncode == 0, res.stderr
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"principals", "spaces", "tokens", "audit_log", "alembic_version"} <= tables


def test_resync_prints_counts(tmp_path: Path, redis_url: str) -> None:
    db = tmp_path / "r.db"
    assert turnout("init", "--db", str(db)).returncode == 0
    res = turnout("resync", "--db", str(db), "--redis", redis_url)
    assert res.returncode == 0, res.stderr
    counts = orjson.loads(res.stdout)
    assert counts["published"] == 0 and counts["hostnames"] == 0 and counts["epoch"]
    no_redis = turnout("resync", "--db", str(db))
    assert no_redis.returncode == 2 and "Redis" in no_redis.stderr


def test_serve_is_the_default(tmp_path: Path, free_port: int) -> None:
    db = tmp_path / "s.db"
    token = turnout("init", "--db", str(db)).stdout.strip()
    proc = subprocess.Popen(
        [*TURNOUT, "--listen", f"127.0.0.1:{free_port}", "--db", str(db)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{free_port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the admin did not come up"
            time.sleep(0.1)
        r = httpx.get(f"{base}/api/spaces", headers=auth(token), timeout=5)
        assert r.status_code == 200 and len(r.json()["items"]) == 1
        r = httpx.get(f"{base}/api/spaces", timeout=5)
        assert r.status_code == 401
    finally:
        proc.terminate()
        try:
            _out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate()
    assert token not in err and TEST_KEYS.split(":")[1] not in err
