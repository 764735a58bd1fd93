"""The validation vocabulary (routing/validation.py): type names, field paths, the field error,
the shared checks and the collect-all Collector; and that records, record heads and manifests
speak it alike (the manifest side: tests/admin/test_manifest.py)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from routing.errors import FieldError, InvalidFields, Issue, RecordError, RoutingError
from routing.flat import record_head
from routing.models import decode_record
from routing.validation import (
    ROOT,
    Collector,
    expect_bool,
    expect_list,
    expect_mapping,
    expect_string,
    field_path,
    index_path,
    integer,
    key_problems,
    key_text,
    one_of,
    range_error,
    type_error,
    type_name,
)

# --------------------------------------------------------------------------------- words


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (None, "null"),
        (True, "boolean"),
        (False, "boolean"),
        (0, "integer"),
        (1.5, "number"),
        ("", "string"),
        ([], "list"),
        ({}, "mapping"),
        (datetime.datetime(2026, 1, 2, 3, 4), "timestamp"),
        (datetime.date(2026, 1, 2), "date"),
        (b"x", "bytes"),
        ((), "tuple"),
    ],
)
def test_type_name(value: object, name: str) -> None:
    assert type_name(value) == name


def test_key_text_escapes_and_bounds_a_key() -> None:
    assert key_text("web") == "web"
    assert key_text(3) == "3"
    assert key_text("a\nb\x00") == "a\\u000ab\\u0000"
    assert key_text("k" * 64) == "k" * 64
    assert key_text("k" * 65) == "k" * 61 + "..."


def test_field_paths_have_one_format() -> None:
    assert field_path(ROOT, "spec") == "spec"
    assert field_path("", "spec") == "spec"
    assert field_path("spec", "services") == "spec.services"
    assert index_path("spec.routes", 2) == "spec.routes[2]"
    assert field_path(index_path("endpoints", 0), "targets") == "endpoints[0].targets"
    assert field_path("env", "A\tB") == "env.A\\u0009B"
    assert field_path("spec", 7) == "spec.7"


def test_type_and_range_errors_word_the_problem() -> None:
    err = type_error("a.b", "a string", 3)
    assert (err.path, err.reason, str(err)) == (
        "a.b",
        "must be a string, not integer",
        "a.b: must be a string, not integer",
    )
    assert range_error("n", 1, 5, 9).reason == "must be between 1 and 5, got 9"
    assert (
        range_error("n", 1, 5, -(10**40)).reason
        == "must be between 1 and 5, got a number of 41 digits"
    )


def test_field_error_is_record_error_value_error_and_routing_error() -> None:
    assert RecordError is FieldError
    err = FieldError("", "bad")
    assert err.path == ROOT
    assert err.issue == Issue("$", "bad")
    assert isinstance(err, ValueError)
    assert isinstance(err, RoutingError)


def test_invalid_fields_lists_every_issue_and_shows_five() -> None:
    issues = [(f"f{i}", "bad") for i in range(7)]
    err = InvalidFields(issues, "invalid thing")
    assert err.issues == tuple(Issue(p, m) for p, m in issues)
    assert (
        str(err) == "invalid thing: " + "; ".join(f"f{i}: bad" for i in range(5)) + " (and 2 more)"
    )
    assert err.as_details()[6] == {"path": "f6", "message": "bad"}
    assert isinstance(err, RoutingError)
    assert not isinstance(err, ValueError)  # a loader's `except ValueError` must not swallow it


# --------------------------------------------------------------------------------- checks


@pytest.mark.parametrize(
    ("check", "good", "bad", "message"),
    [
        (expect_mapping, {"a": 1}, [], "must be a mapping, not list"),
        (expect_list, [1], {}, "must be a list, not mapping"),
        (expect_string, "x", None, "must be a string, not null"),
        (expect_bool, False, 0, "must be a boolean, not integer"),
    ],
)
def test_expect_checks(check: Any, good: object, bad: object, message: str) -> None:
    assert check(good, "p.q") is good
    with pytest.raises(FieldError) as info:
        check(bad, "p.q")
    assert (info.value.path, info.value.reason) == ("p.q", message)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "must be an integer, not boolean"),
        (1.0, "must be an integer, not number"),
        ("1", "must be an integer, not string"),
        (0, "must be between 1 and 10, got 0"),
        (11, "must be between 1 and 10, got 11"),
    ],
)
def test_integer_refuses(value: object, message: str) -> None:
    with pytest.raises(FieldError) as info:
        integer(value, "n", 1, 10)
    assert info.value.reason == message


def test_integer_accepts_its_bounds() -> None:
    assert integer(1, "n", 1, 10) == 1
    assert integer(10, "n", 1, 10) == 10


def test_one_of() -> None:
    assert one_of("b", "k", ("a", "b")) == "b"
    with pytest.raises(FieldError, match=r"^k: must be one of a, b, not 'c'$"):
        one_of("c", "k", ("a", "b"))
    with pytest.raises(FieldError) as info:
        one_of("x" * 100, "k", ("a",))
    assert info.value.reason == f"must be one of a, not {'x' * 64!r}"
    with pytest.raises(FieldError, match="must be a string, not list"):
        one_of(["a"], "k", ("a",))


def test_key_problems_names_unknown_then_missing_keys() -> None:
    obj = {"b": 1, "zz": 2, 3: 4}
    assert key_problems(obj, ROOT, required=("a", "b"), optional=("c",)) == [
        Issue("zz", "unknown field (allowed: a, b, c)"),
        Issue("3", "unknown field (allowed: a, b, c)"),
        Issue("a", "is required"),
    ]
    assert key_problems({"x": 1}, "spec.rollout") == [
        Issue("spec.rollout.x", "unknown field (allowed: )")
    ]
    assert key_problems({"a": 1}, "p", required=("a",)) == []


# --------------------------------------------------------------------------------- collect-all


def test_collector_records_failures_and_raises_once_with_all() -> None:
    issues = Collector()
    assert issues.check(integer, 5, "a", 1, 9) == 5
    assert issues.check(integer, "5", "b", 1, 9) is None
    assert issues.check(expect_mapping, [], "c") is None
    issues.add("d", "custom")
    issues.extend([("e", "more")])
    expected = [
        Issue("b", "must be an integer, not string"),
        Issue("c", "must be a mapping, not list"),
        Issue("d", "custom"),
        Issue("e", "more"),
    ]
    assert issues.items == expected
    with pytest.raises(InvalidFields) as info:
        issues.raise_if_any()
    assert list(info.value.issues) == expected

    class Custom(InvalidFields):
        def __init__(self, issues: list[Issue]) -> None:
            super().__init__(issues, "custom")

    with pytest.raises(Custom, match=r"^custom: b: must be an integer"):
        issues.raise_if_any(Custom)


def test_collector_without_issues_does_not_raise() -> None:
    Collector().raise_if_any()


def test_collector_lets_other_errors_through() -> None:
    def boom(value: object, path: str) -> None:
        raise KeyError(path)

    with pytest.raises(KeyError):
        Collector().check(boom, 1, "p")


def test_collector_is_bounded() -> None:
    issues = Collector(limit=3)
    issues.extend((f"p{i}", "bad") for i in range(10))
    assert [i.path for i in issues.items] == ["p0", "p1", "p2"]


# --------------------------------------------------------------------------------- one voice


def _record_error(obj: Any) -> tuple[str, str]:
    with pytest.raises(RecordError) as info:
        decode_record(obj)
    return info.value.path, info.value.reason


@pytest.mark.parametrize(
    ("data", "path", "reason"),
    [
        (b"[1]", "$", "must be a mapping, not list"),
        (b'{"host":"a.example.com","version":"1"}', "version", "must be an integer, not string"),
        (b'{"host":"a.example.com"}', "version", "must be an integer, not null"),
        (
            b'{"host":"a.example.com","version":-1}',
            "version",
            "must be between 0 and 9223372036854775807, got -1",
        ),
    ],
)
def test_record_head_speaks_the_vocabulary(data: bytes, path: str, reason: str) -> None:
    with pytest.raises(RecordError) as info:
        record_head("a.example.com", data)
    assert (info.value.path, info.value.reason) == (path, reason)
    # ... and decode_record words the same problem the same way
    if path == "$":
        assert _record_error(data) == (path, reason)


def test_record_head_and_decode_record_agree_on_invalid_json() -> None:
    with pytest.raises(RecordError) as head:
        record_head("a.example.com", b"{nope")
    assert head.value.path == "$"
    assert head.value.reason.startswith("invalid JSON: ")
    path, reason = _record_error(b"{nope")
    assert path == "$"
    assert reason.startswith("invalid JSON: ")
