"""Admin settings from the environment: the limits of issue 15 (parse workers, parses per
principal, audit failure rows per minute) and their refusals."""

from __future__ import annotations

import pytest

from admin.settings import Settings
from tests.admin.conftest import TEST_KEYS


def settings(**env: str) -> Settings:
    return Settings.from_env({"TURNOUT_KEYS": TEST_KEYS, **env})


def test_defaults() -> None:
    s = settings()
    assert (s.parse_workers, s.parses_per_principal, s.audit_failures_per_minute) == (1, 2, 60)


def test_values_from_the_environment() -> None:
    s = settings(
        TURNOUT_PARSE_WORKERS="3",
        TURNOUT_PARSES_PER_PRINCIPAL="1",
        TURNOUT_AUDIT_FAILURES_PER_MINUTE="10000",
    )
    assert (s.parse_workers, s.parses_per_principal, s.audit_failures_per_minute) == (3, 1, 10000)


@pytest.mark.parametrize("raw", ["0", "10001", "-1", "²", "٣", "9" * 4301, "1.5", "two"])
@pytest.mark.parametrize(
    "var",
    ["TURNOUT_PARSE_WORKERS", "TURNOUT_PARSES_PER_PRINCIPAL", "TURNOUT_AUDIT_FAILURES_PER_MINUTE"],
)
def test_bad_values_are_refused_by_name(var: str, raw: str) -> None:
    with pytest.raises(SystemExit) as info:
        settings(**{var: raw})
    assert var in str(info.value) and "1..10000" in str(info.value)
