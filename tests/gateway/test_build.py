"""The compiled/pure-Python build switch: detection, metric, the out-of-tree build's inputs."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from gateway import build
from gateway.counters import Counters
from gateway.internal import render_metrics
from tests.support.build import EXPECT_COMPILED

ROOT = Path(__file__).resolve().parents[2]


def test_this_run_exercises_the_intended_build() -> None:
    import gateway.native

    assert build.compiled() is EXPECT_COMPILED, gateway.native.__file__
    assert build.describe() == ("compiled (mypyc)" if EXPECT_COMPILED else "pure Python")


def test_build_info_metric() -> None:
    counters = Counters()
    body = render_metrics(
        counters=counters, table_stats={}, pool_stats={}, flusher=None, worker=0
    ).decode()
    expected = "true" if EXPECT_COMPILED else "false"
    assert f'turnout_build_info{{worker="0",compiled="{expected}"}} 1' in body, body


def test_compiled_module_list_names_existing_modules() -> None:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        modules = tomllib.load(fh)["tool"]["turnout"]["compiled-modules"]
    assert modules
    for module in modules:
        assert (ROOT / module).is_file(), module
    # every module build.compiled() inspects is compiled
    listed = {m.removesuffix(".py").replace("/", ".") for m in modules}
    assert set(build.HOT_MODULES) <= listed


def test_build_stamp_changes_with_the_sources(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import build_compiled
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    for pkg in ("routing", "gateway"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "gateway" / "native.py").write_text("X = 1\n")
    first = build_compiled._stamp(tmp_path, ["gateway/native.py"])
    assert build_compiled._stamp(tmp_path, ["gateway/native.py"]) == first
    (tmp_path / "gateway" / "native.py").write_text("X = 2\n")
    assert build_compiled._stamp(tmp_path, ["gateway/native.py"]) != first
    assert build_compiled._stamp(tmp_path, ["gateway/native.py", "routing/x.py"]) != first
