"""``turnout admin pods tree --space S``: the delegation tree read from SQL."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from admin.cli import main
from admin.db import now_ms
from tests.admin.pods_harness import W, World, world_fixture  # noqa: F401


def tree(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["pods", "tree", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_tree_shows_regions_leases_and_reclaims(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = world
    w.clock.ms = now_ms()  # the CLI reads the real clock
    w.create("p", [W("/src"), {"target": "/docs", "permission": "read"}], grant=[W("/src")])
    w.attach("p")
    w.spawn("p", "c", [W("/src/core")], grant=[W("/src/core")])
    w.spawn("c", "g", [W("/src/core/x")])
    w.spawn("p", "gone", [W("/src/old")])
    w.ok("/p/children/gone/stop")
    w.create("idle", [W("/idle", recursive=False)])
    db = str(tmp_path / "admin.db")
    code, out, _ = tree(capsys, "--space", w.space, "--db", db)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"space {w.space}: 5 pods, 3 live"
    assert lines[1].startswith("idle  active, no lease, age ")
    assert "write /idle (shallow)" in lines[2]
    text = "\n".join(lines)
    for expected in (
        "p  active, lease live, expires in ",
        "write /src  except /src/core → c",
        "read  /docs",
        "├── c  active, lease live",
        "write /src/core  except /src/core/x → g",
        "└── g  active, lease live",
        "└── gone  reclaimed (stop, ",
    ):
        assert expected in text, f"{expected!r} not in\n{out}"
    assert text.index("├── c") < text.index("└── g") < text.index("└── gone")

    code, out, _ = tree(capsys, "--space", w.space, "--db", db, "--json")
    data = orjson.loads(out)
    (p,) = [r for r in data["roots"] if r["name"] == "p"]
    assert [c["name"] for c in p["children"]] == ["c", "gone"]
    assert p["write"][0]["except"][0]["child"] == "c"
    assert p["children"][1]["edge"]["reason"] == "stop"

    w.clock.advance(31)  # the clock the admin runs on; the CLI sees real time
    code, out, err = tree(capsys, "--space", "spc_nope", "--db", db)
    assert code == 2 and "no space spc_nope" in err


def test_an_unmigrated_database_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = tree(capsys, "--space", "spc_x", "--db", str(tmp_path / "empty.db"))
    assert code == 2 and "turnout admin migrate" in err
