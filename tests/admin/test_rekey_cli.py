"""``turnout admin rekey`` as a real process: JSON counts on stdout, idempotent, refuses safely."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from tests.admin.conftest import TEST_KEYS, bootstrap, create_space
from tests.admin.test_deployments import (
    KEY_1,
    KEY_2,
    PLAINTEXTS,
    Api,
    app_client,
    envelopes,
    manifest,
)

ENTRY = "import sys; from turnout.cli import main; sys.exit(main(sys.argv[1:]))"
RING_21 = f"*k2:{KEY_2}, k1:{KEY_1}"


def rekey(db: Path, keys: str | None, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    if keys is not None:
        env["TURNOUT_KEYS"] = keys
    return subprocess.run(
        [sys.executable, "-c", ENTRY, "admin", "rekey", "--db", str(db)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def deploy_two_snapshots(db: Path) -> tuple[str, list[str]]:
    """Two snapshots (4 envelopes each) written under the conftest ring (k1)."""
    with app_client(db, TEST_KEYS) as c:
        token = bootstrap(c)
        space = create_space(c, token, "team")
        api = Api(c, token, space)
        ids = [
            api.deploy_ok(manifest())["services"][0]["snapshot_id"],
            api.deploy_ok(manifest(app="shop", strategy="canary", canary_weight=10))["services"][0][
                "snapshot_id"
            ],
        ]
    return space, ids


def assert_quiet(proc: subprocess.CompletedProcess[str]) -> None:
    """Neither output stream holds key material or secret plaintext."""
    for stream in (proc.stdout, proc.stderr):
        for secret in (KEY_1, KEY_2, *PLAINTEXTS):
            assert secret not in stream


def test_rekey_prints_counts_and_a_second_run_finds_nothing_to_do(tmp_path: Path) -> None:
    db = tmp_path / "admin.db"
    space, snap_ids = deploy_two_snapshots(db)
    assert {env["kid"] for *_, env in envelopes(db)} == {"k1"}

    first = rekey(db, RING_21, tmp_path)
    assert first.returncode == 0, first.stderr
    assert_quiet(first)
    counts: dict[str, Any] = orjson.loads(first.stdout)
    assert counts == {
        "snapshots": 2,
        "snapshots_changed": 2,
        "envelopes_rekeyed": 8,
        "envelopes_current": 0,
        "active_kid": "k2",
    }
    assert first.stdout.count("\n") == 1  # one JSON line
    assert {env["kid"] for *_, env in envelopes(db)} == {"k2"}

    second = rekey(db, RING_21, tmp_path)
    assert second.returncode == 0, second.stderr
    again = orjson.loads(second.stdout)
    assert again["envelopes_rekeyed"] == 0 and again["snapshots_changed"] == 0
    assert again["envelopes_current"] == 8

    # The admin with only the new key reads the re-encrypted snapshots.
    with app_client(db, f"k2:{KEY_2}") as c:
        api = Api(c, bootstrap(c), space)
        for sid in snap_ids:
            r = api.snapshot(sid)
            assert r.status_code == 200, r.text
            assert r.json()["secrets"] == {"API_TOKEN": "to****ef", "PIN": "****"}
    assert not (tmp_path / ".turnout").exists()  # --db was used, not the default path


def test_rekey_without_keys_refuses_with_exit_2(tmp_path: Path) -> None:
    db = tmp_path / "admin.db"
    deploy_two_snapshots(db)
    proc = rekey(db, None, tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert "TURNOUT_KEYS" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert {env["kid"] for *_, env in envelopes(db)} == {"k1"}


def test_rekey_with_an_invalid_ring_refuses_without_echoing_it(tmp_path: Path) -> None:
    db = tmp_path / "admin.db"
    deploy_two_snapshots(db)
    bad = f"*k2:{KEY_2[:-8]}"  # truncated key
    proc = rekey(db, bad, tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "TURNOUT_KEYS" in proc.stderr
    assert KEY_2[:-8] not in proc.stderr and KEY_2[:-8] not in proc.stdout
    assert {env["kid"] for *_, env in envelopes(db)} == {"k1"}


def test_rekey_without_the_old_key_fails_and_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "admin.db"
    deploy_two_snapshots(db)
    before = envelopes(db)
    proc = rekey(db, f"k2:{KEY_2}", tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert proc.stdout == ""
    assert "k1" in proc.stderr  # names the missing key id
    assert_quiet(proc)
    assert envelopes(db) == before


def test_rekey_covers_common_env(tmp_path: Path) -> None:
    db = tmp_path / "admin.db"
    with app_client(db, TEST_KEYS) as c:
        token = bootstrap(c)
        space = create_space(c, token, "team")
        r = c.put(
            f"/api/spaces/{space}/common-env",
            json={
                "entries": [{"name": "SHARED_KEY", "value": "shared-plaintext-1", "secret": True}]
            },
            headers={"authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200, r.text
    proc = rekey(db, RING_21, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "shared-plaintext-1" not in proc.stdout + proc.stderr
    assert orjson.loads(proc.stdout)["envelopes_rekeyed"] == 1
    with app_client(db, f"k2:{KEY_2}") as c:
        token = bootstrap(c)
        r = c.get(f"/api/spaces/{space}/common-env", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        assert r.json()["items"] == [{"name": "SHARED_KEY", "value": "sh****-1", "secret": True}]
