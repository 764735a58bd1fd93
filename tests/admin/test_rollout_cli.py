"""``turnout admin rollout``: rendering, the live view's two modes, argument errors.

The command against a real admin process is exercised in ``tests/e2e/test_rollouts.py``.
"""

from __future__ import annotations

import copy
import io
import subprocess
import sys
from typing import Any

import pytest

from admin.cli import main as admin_main
from admin.rollouts.cli import block, main, next_step, plain_line, watch

NOW = 1_800_000_000_000


def doc(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "rol_1",
        "app_deployment_id": "app_1",
        "app": "shop",
        "state": "in_progress",
        "stage": 2,
        "weight": 5,
        "stages": [
            {"weight": 1, "pause_minutes": 5},
            {"weight": 5, "pause_minutes": 10},
            {"weight": 100, "pause_minutes": 0},
        ],
        "health_check": {
            "error_rate_threshold": 0.05,
            "min_requests": 100,
            "window_minutes": 5,
            "p99_latency_ms": 250,
        },
        "next_decision_at": NOW + 252_000,
        "waiting": None,
        "fail_reason": None,
        "gate": {
            "verdict": "pass",
            "services": [
                {
                    "service": "web",
                    "requests": 1234,
                    "errors": 3,
                    "error_rate": 0.00243,
                    "p99_ms": 12.34,
                    "verdict": "pass",
                }
            ],
        },
        "history": [
            {
                "at": NOW - 60_000,
                "action": "advance",
                "from_weight": 1,
                "to_weight": 5,
                "actor": "reconciler",
                "principal_id": None,
                "reason": "gate passed",
            }
        ],
    }
    base.update(over)
    return base


def test_block_shows_stage_weight_limits_and_time_to_next_step() -> None:
    lines = block(doc(), NOW)
    assert lines[0] == "rollout rol_1 of app shop (app_1)"
    assert lines[1] == "  in_progress stage 2/3 weight 5 % · next step in 4m12s"
    assert lines[2] == "  stages  1% → [5%] → 100%"
    assert lines[3] == (
        "  web: 1234 requests (min 100) · errors 0.24 % (limit 5.00 %) · "
        "p99 12.3 ms (limit 250.0 ms) · pass"
    )
    assert lines[4].endswith("advance 1 % → 5 % by reconciler: gate passed")


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"state": "paused"}, "paused (resume to go on)"),
        (
            {"waiting": "waiting for evidence: web: 3 of the 100"},
            "waiting for evidence: web: 3 of the 100",
        ),
        ({"next_decision_at": NOW - 1}, "next step at the next reconcile"),
        ({"next_decision_at": NOW + 3 * 3600_000}, "next step in 3h00m"),
        ({"state": "failed"}, "failed"),
    ],
)
def test_next_step(over: dict[str, Any], expected: str) -> None:
    assert next_step(doc(**over), NOW) == expected


def test_plain_line_is_one_line_with_a_timestamp() -> None:
    line = plain_line(doc(), NOW)
    assert "\n" not in line and line.startswith("2027-01-15T08:00:00Z in_progress stage 2/3")
    assert "| web: 1234 requests" in line
    assert plain_line(doc(gate=None, state="completed"), NOW).endswith("· completed")


def sequence(*docs: dict[str, Any]) -> Any:
    it = iter(docs)
    return lambda: next(it)


def test_watch_on_a_terminal_redraws_in_place() -> None:
    done = doc(state="completed", weight=100, stage=2, gate=None)
    out = io.StringIO()
    last = watch(
        sequence(doc(), doc(), done),
        out,
        tty=True,
        interval=0,
        clock=lambda: NOW / 1000,
        sleep=lambda _s: None,
    )
    assert last["state"] == "completed"
    text = out.getvalue()
    first_block = len(block(doc(), NOW))
    assert text.count(f"\x1b[{first_block}F\x1b[J") == 2  # two redraws over the first block
    assert text.count("rollout rol_1 of app shop") == 3


def test_watch_piped_prints_changes_and_each_event_once() -> None:
    event2 = {**doc()["history"][0], "action": "promote", "from_weight": 5, "to_weight": 100}
    same = doc()
    moved = copy.deepcopy(same)
    moved["gate"]["services"][0]["requests"] = 2000  # more requests only: no new line
    done = doc(state="completed", weight=100, gate=None, history=[*same["history"], event2])
    out = io.StringIO()
    watch(
        sequence(same, moved, done),
        out,
        tty=False,
        interval=0,
        clock=lambda: NOW / 1000,
        sleep=lambda _s: None,
    )
    lines = out.getvalue().splitlines()
    assert "\x1b" not in out.getvalue()
    assert [line.split(" ", 2)[0] for line in lines] == [
        "event",
        "2027-01-15T08:00:00Z",
        "event",
        "2027-01-15T08:00:00Z",
    ]
    assert "promote 5 % → 100 %" in lines[2] and "completed" in lines[3]


def test_arguments_and_connection_problems_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("TURNOUT_TOKEN", "TURNOUT_SPACE", "TURNOUT_ADMIN_URL"):
        monkeypatch.delenv(name, raising=False)
    assert main(["status", "app_1", "--space", "spc_1"]) == 2
    assert "no token" in capsys.readouterr().err
    assert main(["pause", "app_1", "--token", "t"]) == 2
    assert "no space" in capsys.readouterr().err
    assert (
        main(["status", "app_1", "--token", "t", "--space", "s", "--watch", "--interval", "0"]) == 2
    )
    assert "--interval" in capsys.readouterr().err
    # nothing listens on port 9 of loopback
    code = main(["abort", "app_1", "--token", "t", "--space", "s", "--url", "http://127.0.0.1:9"])
    assert code == 2
    assert "cannot reach the admin API at http://127.0.0.1:9" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["explode", "app_1"])


def test_turnout_admin_dispatches_rollout(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        admin_main(["rollout", "--help"])
    assert info.value.code == 0
    assert "status" in capsys.readouterr().out


def test_turnout_admin_rollout_loads_without_the_admin_planes_imports() -> None:
    """The client starts at once: no SQLAlchemy, Alembic or crypto behind ``--help``."""
    code = (
        "import sys\n"
        "from turnout.cli import main\n"
        "try:\n"
        "    main(['admin', 'rollout', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('sqlalchemy', 'alembic', 'cryptography') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "turnout admin rollout" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"
