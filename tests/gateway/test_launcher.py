"""``turnout gateway`` flags: parsing and the errors bad values get."""

from __future__ import annotations

import os

import pytest

from gateway.launcher import DEFAULT_WORKERS, build_parser, config_from_args, main


def parse(*argv: str) -> object:
    return config_from_args(build_parser().parse_args(list(argv)))


def test_workers_number_and_auto() -> None:
    assert parse("--workers", "3").workers == 3  # type: ignore[attr-defined]
    cpus = len(os.sched_getaffinity(0))
    assert parse("--workers", "auto").workers == cpus  # type: ignore[attr-defined]
    default = parse().workers  # type: ignore[attr-defined]
    assert default == (cpus if DEFAULT_WORKERS == "auto" else int(DEFAULT_WORKERS))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "--workers: must be at least 1, got 0"),
        ("-2", "--workers: must be at least 1, got -2"),
        ("two", "--workers: expected a positive integer or 'auto', got 'two'"),
        ("", "--workers: expected a positive integer or 'auto', got ''"),
    ],
)
def test_bad_workers_value_is_a_usage_error(
    value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--workers", value, "--redis", "redis://127.0.0.1:1/0"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--listen", "127.0.0.1:http", "--listen: invalid port in '127.0.0.1:http'"),
        ("--listen", "127.0.0.1:70000", "--listen: port out of range in '127.0.0.1:70000'"),
        ("--internal", "127.0.0.1:-1", "--internal: port out of range in '127.0.0.1:-1'"),
    ],
)
def test_bad_addresses_are_usage_errors(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([flag, value, "--redis", "redis://127.0.0.1:1/0"]) == 2
    assert message in capsys.readouterr().err
