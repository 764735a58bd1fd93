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


def test_response_head_limits_have_flags() -> None:
    config = parse(
        "--max-response-header-bytes",
        "8192",
        "--max-response-headers",
        "20",
        "--response-header-timeout",
        "2.5",
    )
    assert config.max_response_header_bytes == 8192  # type: ignore[attr-defined]
    assert config.max_response_headers == 20  # type: ignore[attr-defined]
    assert config.response_header_timeout == 2.5  # type: ignore[attr-defined]
    default = parse()
    assert default.max_response_header_bytes == 65536  # type: ignore[attr-defined]
    assert default.max_response_headers == 100  # type: ignore[attr-defined]
    assert default.response_header_timeout == 30.0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max-response-header-bytes", "0", "--max-response-header-bytes: must be at least 1"),
        ("--max-response-header-bytes", "64k", "--max-response-header-bytes: expected an integer"),
        ("--max-response-headers", "-1", "--max-response-headers: must be at least 1, got -1"),
        ("--response-header-timeout", "0", "--response-header-timeout: must be a positive"),
        ("--response-header-timeout", "-2", "--response-header-timeout: must be a positive"),
        ("--response-header-timeout", "nan", "--response-header-timeout: must be a positive"),
        ("--response-header-timeout", "inf", "--response-header-timeout: must be a positive"),
        ("--response-header-timeout", "30s", "--response-header-timeout: expected seconds"),
    ],
)
def test_bad_response_head_limits_are_usage_errors(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([flag, value, "--redis", "redis://127.0.0.1:1/0"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "field", ["max_response_header_bytes", "max_response_headers", "max_headers"]
)
def test_config_refuses_limits_below_one(field: str) -> None:
    from gateway.config import GatewayConfig

    with pytest.raises(ValueError, match=f"{field} must be at least 1"):
        GatewayConfig(**{field: 0})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="response_header_timeout must be positive"):
        GatewayConfig(response_header_timeout=0.0)
