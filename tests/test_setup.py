"""setup.py's compile switch: when mypyc runs, and what happens when it cannot.

A fake ``mypyc`` package that fails on use is put first on the path, so these tests never
compile anything (a real compile takes a minute; ``scripts/test`` builds the compiled variant
separately) and show exactly when setup.py would have called mypyc.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
POISON = "fake mypyc was called"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of what setup.py needs (no .mypy_cache, no build/), plus the fake mypyc."""
    dst = tmp_path / "proj"
    dst.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dst / name)
    for pkg in ("routing", "gateway", "admin", "turnout"):
        shutil.copytree(ROOT / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    fake = tmp_path / "fake" / "mypyc"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "build.py").write_text(f"def mypycify(*a, **k):\n    raise RuntimeError({POISON!r})\n")
    return dst


def run_setup(
    project: Path, *args: str, compile_flag: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(project.parent / "fake")
    env.pop("TURNOUT_COMPILE", None)
    if compile_flag is not None:
        env["TURNOUT_COMPILE"] = compile_flag
    return subprocess.run(
        [sys.executable, "setup.py", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_metadata_steps_never_run_mypyc(project: Path) -> None:
    """pip's 'getting requirements' step (a fresh clone's first failure) runs egg_info."""
    result = run_setup(project, "egg_info")  # what get_requires_for_build_* runs
    assert result.returncode == 0, result.stderr[-3000:]
    assert POISON not in result.stderr


def test_build_without_a_compiler_falls_back_to_pure_python(project: Path) -> None:
    result = run_setup(project, "build_ext", "--build-lib", str(project / "bl"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert POISON in result.stderr  # it tried ...
    assert "installing the pure-Python modules instead" in result.stderr  # ... and said so
    assert not list((project / "bl").rglob("*.so"))


def test_required_compile_fails_loudly(project: Path) -> None:
    result = run_setup(project, "build_ext", "--build-lib", str(project / "bl"), compile_flag="1")
    assert result.returncode != 0
    assert POISON in result.stderr


def test_compile_disabled_never_runs_mypyc(project: Path) -> None:
    result = run_setup(project, "build_ext", "--build-lib", str(project / "bl"), compile_flag="0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert POISON not in result.stderr
