"""Hostname rules: record validation, request ``Host`` normalisation, wildcard parents."""

from __future__ import annotations

import pytest

from routing.errors import RecordError
from routing.hostnames import (
    MAX_HOST_LEN,
    is_wildcard,
    normalize_request_host,
    validate_hostname,
    wildcard_parent,
)

# ------------------------------------------------------------------ normalize_request_host


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(b"example.com", b"example.com", id="plain"),
        pytest.param(b"example.com:8080", b"example.com", id="port"),
        pytest.param(b"example.com:80", b"example.com", id="port-80"),
        pytest.param(b"example.com:65535", b"example.com", id="port-max"),
        pytest.param(b"Example.COM", b"example.com", id="uppercase"),
        pytest.param(b"API.Example.Com:443", b"api.example.com", id="uppercase-port"),
        pytest.param(b"example.com.", b"example.com", id="trailing-dot"),
        pytest.param(b"Example.com.:8443", b"example.com", id="trailing-dot-port"),
        pytest.param(b"localhost", b"localhost", id="single-label"),
        pytest.param(b"a-b.c0.example", b"a-b.c0.example", id="hyphen-digit"),
        pytest.param(b"10.0.0.1:80", b"10.0.0.1", id="ipv4"),
        pytest.param(b"[::1]", b"[::1]", id="ipv6"),
        pytest.param(b"[::1]:8080", b"[::1]", id="ipv6-port"),
        pytest.param(b"[2001:DB8::A]:443", b"[2001:db8::a]", id="ipv6-uppercase"),
        pytest.param(b"[::ffff:10.0.0.1]", b"[::ffff:10.0.0.1]", id="ipv6-mapped-v4"),
        pytest.param(b"a" * MAX_HOST_LEN, b"a" * MAX_HOST_LEN, id="max-length"),
    ],
)
def test_normalize_request_host_accepts(raw: bytes, expected: bytes) -> None:
    assert normalize_request_host(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b".", id="only-dot"),
        pytest.param(b":80", id="only-port"),
        pytest.param(b"example.com:", id="empty-port"),
        pytest.param(b"example.com:http", id="port-name"),
        pytest.param(b"example.com:65536", id="port-too-big"),
        pytest.param(b"example.com:123456", id="port-six-digits"),
        pytest.param(b"example.com:-1", id="port-negative"),
        pytest.param(b"example.com:+80", id="port-sign"),
        pytest.param(b"example.com:80:80", id="two-ports"),
        pytest.param(b"example.com: 80", id="port-space"),
        pytest.param(b"exa mple.com", id="space"),
        pytest.param(b"exa_mple.com", id="underscore"),
        pytest.param(b"*.example.com", id="wildcard"),
        pytest.param(b"user@example.com", id="userinfo"),
        pytest.param(b"example.com/path", id="slash"),
        pytest.param(b"ex\x00ample.com", id="nul"),
        pytest.param(b"b\xc3\xbccher.example", id="non-ascii"),
        pytest.param(b"a..example.com", id="empty-label"),
        pytest.param(b".example.com", id="leading-dot"),
        pytest.param(b"example.com..", id="two-trailing-dots"),
        pytest.param(b"example..", id="empty-label-before-trailing-dot"),
        pytest.param(b"a" * (MAX_HOST_LEN + 1), id="too-long"),
        pytest.param(b"[::1", id="ipv6-unclosed"),
        pytest.param(b"[::1]x", id="ipv6-junk-after"),
        pytest.param(b"[::1]:", id="ipv6-empty-port"),
        pytest.param(b"[::1]:99999", id="ipv6-bad-port"),
        pytest.param(b"[::g]", id="ipv6-bad-char"),
        pytest.param(b"[example.com]", id="ipv6-hostname-inside"),
    ],
)
def test_normalize_request_host_rejects(raw: bytes) -> None:
    assert normalize_request_host(raw) is None


def test_normalize_request_host_is_idempotent() -> None:
    for raw in (b"Example.COM.:80", b"[::1]:1", b"a.b.c", b"10.0.0.1:8080"):
        once = normalize_request_host(raw)
        assert once is not None
        assert normalize_request_host(once) == once


# ------------------------------------------------------------------ wildcard_parent


@pytest.mark.parametrize(
    ("host", "parent"),
    [
        pytest.param(b"a.b.example.com", b"*.b.example.com", id="deep"),
        pytest.param(b"api.example.com", b"*.example.com", id="one-level"),
        pytest.param(b"x.y.z", b"*.y.z", id="short-labels"),
        pytest.param(b"example.com", None, id="apex-has-no-wildcard"),
        pytest.param(b"localhost", None, id="single-label"),
        pytest.param(b"", None, id="empty"),
        pytest.param(b".example.com", None, id="leading-dot"),
        pytest.param(b"[::1]", None, id="ipv6"),
    ],
)
def test_wildcard_parent(host: bytes, parent: bytes | None) -> None:
    assert wildcard_parent(host) == parent


def test_wildcard_parent_is_one_level_only() -> None:
    parent = wildcard_parent(b"a.b.c.example.com")
    assert parent == b"*.b.c.example.com"
    assert parent != b"*.c.example.com"
    assert parent != b"*.example.com"


def test_wildcard_parent_is_a_valid_record_hostname() -> None:
    parent = wildcard_parent(b"api.tenant.example.com")
    assert parent is not None
    assert validate_hostname(parent.decode()) == "*.tenant.example.com"


def test_is_wildcard() -> None:
    assert is_wildcard("*.example.com")
    assert not is_wildcard("example.com")
    assert not is_wildcard("a.*.example.com")


# ------------------------------------------------------------------ validate_hostname


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("example.com", id="plain"),
        pytest.param("*.example.com", id="wildcard"),
        pytest.param("xn--bcher-kva.example", id="punycode"),
        pytest.param("0.example", id="digit-label"),
        pytest.param("a" * 63 + ".com", id="label-63"),
        pytest.param(".".join(["a" * 63] * 3 + ["b" * 61]), id="len-253"),
    ],
)
def test_validate_hostname_accepts(host: str) -> None:
    assert validate_hostname(host) == host


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        pytest.param("Example.com", "lower case", id="uppercase"),
        pytest.param(".".join(["a" * 63] * 3 + ["b" * 62]), "at most 253", id="len-254"),
        pytest.param("a" * 64 + ".com", "label 1 is longer than 63", id="label-64"),
        pytest.param("ok." + "a" * 64 + ".com", "label 2 is longer than 63", id="label-64-second"),
        pytest.param("-a.com", "not start or end with '-'", id="leading-hyphen"),
        pytest.param("a-.com", "not start or end with '-'", id="trailing-hyphen"),
        pytest.param("a..com", "empty label", id="empty-label"),
        pytest.param("a.com.", "must not end with a dot", id="trailing-dot"),
        pytest.param("a_b.com", "may only hold a-z", id="underscore"),
        pytest.param("", "must not be empty", id="empty"),
        pytest.param("*.com", "at least two labels", id="wildcard-tld"),
        pytest.param("a.*.com", "whole first label", id="wildcard-middle"),
        pytest.param("*foo.example.com", "whole first label", id="wildcard-partial"),
    ],
)
def test_validate_hostname_rejects(host: str, reason: str) -> None:
    with pytest.raises(RecordError) as info:
        validate_hostname(host, "spec.host")
    assert info.value.path == "spec.host"
    assert reason in info.value.reason


def test_validate_hostname_rejects_non_string() -> None:
    with pytest.raises(RecordError) as info:
        validate_hostname(b"example.com")
    assert info.value.path == "host"
    assert info.value.reason == "must be a string, not bytes"


def test_validate_hostname_wildcard_can_be_forbidden() -> None:
    assert validate_hostname("a.example.com", allow_wildcard=False) == "a.example.com"
    with pytest.raises(RecordError) as info:
        validate_hostname("*.example.com", allow_wildcard=False)
    assert "wildcard hostnames are not allowed" in info.value.reason
