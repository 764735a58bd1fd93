"""``turnout dev --demo``: the canary split, then a staged rollout walked under live traffic."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.net import free_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
_LAUNCH = "import sys; from turnout.cli import main; sys.exit(main(sys.argv[1:]))"


def test_demo_walks_a_staged_rollout_to_completion(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(4)]
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _LAUNCH,
            "dev",
            "--dir",
            str(tmp_path / "dev"),
            "--gateway",
            f"127.0.0.1:{ports[0]}",
            "--admin",
            f"127.0.0.1:{ports[1]}",
            "--runtimes",
            f"127.0.0.1:{ports[2]},127.0.0.1:{ports[3]}",
            "--demo",
            "--exit-after-demo",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - started
    out = done.stdout
    assert done.returncode == 0, f"{out[-3000:]}\n{done.stderr[-3000:]}"
    # The banner says which build of the hot path runs (the suite's e2e pass: the sources).
    expected = (
        "(hot path: compiled (mypyc))"
        if os.environ.get("TURNOUT_EXPECT_COMPILED") == "1"
        else "(hot path: pure Python; 'pip install .' (not -e) installs the compiled one)"
    )
    assert re.search(r"gateway +http://127\.0\.0\.1:\d+ +" + re.escape(expected), out), out[:2000]
    assert "deploy v2 as a staged rollout (10% → 25% → 50% → 100%): HTTP 201" in out
    steps = re.findall(
        r"\] +\S+ (advance|promote) (\d+) % → (\d+) % by reconciler: gate passed", out
    )
    assert steps == [("advance", "10", "25"), ("advance", "25", "50"), ("promote", "50", "100")], (
        out
    )
    assert "staged rollout completed: v2 is now active at 100%" in out
    # Each runtime pulled its config with its managed token and answers with its greeting.
    pulled = re.findall(r"runtime (v\d) pulled its config .* greeting '([^']*)'", out)
    assert pulled == [
        ("v1", "hello from v1"),
        ("v2", "hello from v2"),
        ("v2", "hello from v2"),
    ], out
    assert "v1 answers through the gateway with greeting 'hello from v1'" in out
    assert "v2 answers through the gateway with greeting 'hello from v2'" in out
    assert took < 60, f"the demo took {took:.0f} s"
    print(f"turnout dev --demo finished in {took:.1f} s")
