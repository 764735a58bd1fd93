"""One configuration source (gateway/config.py): flags and TURNOUT_* variables share parsers
and defaults."""

from __future__ import annotations

import pytest

from gateway.config import (
    SETTINGS,
    GatewayConfig,
    config_from_env,
    default_value,
    export_config,
    parse_hostport,
    setting_value,
)
from gateway.launcher import build_parser, config_from_args


def test_every_setting_has_one_flag_and_one_variable() -> None:
    flags = [s.flag for s in SETTINGS]
    envs = [s.env for s in SETTINGS]
    assert len(set(flags)) == len(flags) and len(set(envs)) == len(envs)
    assert all(e.startswith("TURNOUT_") for e in envs)


def test_the_flags_and_the_environment_default_to_gateway_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TURNOUT_REDIS_URL", raising=False)  # the --redis flag's default
    defaults = GatewayConfig()
    from_flags = config_from_args(build_parser().parse_args([]))
    from_env = config_from_env({})
    assert from_flags == defaults and from_env == defaults
    for s in SETTINGS:
        assert setting_value(defaults, s.name) == default_value(s.name)
    env: dict[str, str] = {}
    export_config(defaults, env)
    assert config_from_env(env) == defaults


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TURNOUT_WORKERS": "0"}, "TURNOUT_WORKERS: must be at least 1, got 0"),
        ({"TURNOUT_LISTEN": "h:x"}, "TURNOUT_LISTEN: invalid port in 'h:x'"),
        ({"TURNOUT_HEADER_TIMEOUT": "soon"}, "TURNOUT_HEADER_TIMEOUT: expected a number"),
        ({"TURNOUT_MAX_HEADERS": "-1"}, "TURNOUT_MAX_HEADERS: must be at least 1, got -1"),
        ({"TURNOUT_RESPONSE_HEADER_TIMEOUT": "inf"}, "TURNOUT_RESPONSE_HEADER_TIMEOUT: must be"),
    ],
)
def test_bad_variables_name_themselves(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config_from_env(env)


def test_one_hostport_parser() -> None:
    assert parse_hostport("[::1]:80", "0.0.0.0") == ("::1", 80)
    assert parse_hostport("8080", "127.0.0.1") == ("127.0.0.1", 8080)
    assert config_from_env({"TURNOUT_INTERNAL": "OFF"}).internal_port == 0
    assert config_from_env({"TURNOUT_WORKERS": "auto"}).workers >= 1
