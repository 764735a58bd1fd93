"""The generated API reference matches the endpoint declarations."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_api_reference_is_current() -> None:
    out = subprocess.run(
        [sys.executable, "scripts/gen_api_docs.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    current = (ROOT / "docs" / "api.md").read_text()
    assert out == current, (
        "docs/api.md is stale: run .venv/bin/python scripts/gen_api_docs.py > docs/api.md"
    )


def test_readme_starts_with_run_and_test_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[2].startswith("Run: ") and "turnout dev" in lines[2]
    assert lines[3] == "Test: `scripts/test`"
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("exec bash scripts/test")
