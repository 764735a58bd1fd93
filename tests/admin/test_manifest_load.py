"""Loading manifest text: characters, budgets, positions and paths, the secret-free errors.

Every YAML case runs on both parsers (libyaml's and PyYAML's pure one): they word and place
some errors differently, and both must give a line and column, or the field, never a 500.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from admin.manifest import manifest_from_obj, parse_manifest
from admin.manifest_load import (
    LIBYAML,
    MAX_ALIASES,
    MAX_NUMBER_LEN,
    MAX_VALUES,
    Issue,
    ManifestError,
    _problem,
    join_path,
    load_document,
)
from tests.admin.test_manifest import FULL_YAML

PARSERS = [
    pytest.param(True, id="libyaml"),
    pytest.param(False, id="pure"),
]


def test_libyaml_is_used_when_present() -> None:
    # The production wheel of PyYAML ships libyaml; without it the suite would only test the
    # slow parser, and the benchmark figures would not hold.
    assert LIBYAML, "PyYAML was built without libyaml (pip install --force-reinstall pyyaml)"


def issues(text: str | bytes, libyaml: bool = True) -> list[Issue]:
    with pytest.raises(ManifestError) as info:
        load_document(text, libyaml=libyaml)
    found = list(info.value.issues)
    orjson.dumps([list(i) for i in found])  # every message and path encodes (no surrogates)
    return found


@pytest.mark.parametrize("libyaml", PARSERS)
def test_both_parsers_load_the_same(libyaml: bool) -> None:
    assert load_document(FULL_YAML, libyaml=libyaml) == load_document(FULL_YAML, libyaml=True)


# --------------------------------------------------------------------------------- D2: characters


@pytest.mark.parametrize("char", ["\x0c", "\x00", "\x01", "\x7f", "\ufffe", "\x1b", "\u0085\x00"])
@pytest.mark.parametrize("libyaml", PARSERS)
def test_unprintable_characters_are_refused_with_their_position(char: str, libyaml: bool) -> None:
    text = "apiVersion: turnout/v1\nkind: App\nmetadata:\n  name: a" + char + "b\n"
    bad = next(c for c in char if not c.isprintable() and c != "\u0085")
    (issue,) = issues(text.encode(), libyaml)
    assert issue.path == "$"
    assert f"U+{ord(bad):04X}" in issue.message
    assert f"(line 4, column {10 + char.index(bad)})" in issue.message


def test_raw_nul_in_a_json_manifest() -> None:
    (issue,) = issues(b'{"apiVersion": "turnout/v1", "kind": "A\x00pp"}')
    assert issue == Issue(
        "$",
        "character U+0000 is not allowed in a manifest (line 1, column 40); "
        "write it as an escape inside a quoted string",
    )


def test_invalid_utf8_names_its_position() -> None:
    (issue,) = issues(b"kind: App\nname: \xed\xa0\x80\n")  # an encoded lone surrogate
    assert issue.path == "$"
    assert "not valid UTF-8 (line 2, column 7)" in issue.message


def test_raw_surrogate_in_text_input() -> None:
    (issue,) = issues("kind: App\nname: a\ud800\n")
    assert "U+D800" in issue.message and "line 2, column 8" in issue.message


# --------------------------------------------------------------------------------- D3: unstorable


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        ('{"spec": {"\\ud800": 1}}', "spec.\\ud800"),  # the key itself, escaped
        ('{"spec": {"services": {"web": {"env": {"A": "\\udfff"}}}}}', "spec.services.web.env.A"),
        (
            '{"spec": {"services": {"w": {"secrets": {"S": "x\\ud800"}}}}}',
            "spec.services.w.secrets.S",
        ),
        ('{"spec": {"routes": [{"path": "/\\ud800"}]}}', "spec.routes[0].path"),
        ('{"spec": {"routes": [{"path": "/a\\u0000"}]}}', "spec.routes[0].path"),
    ],
)
def test_unstorable_strings_in_json_name_their_field(doc: str, path: str) -> None:
    found = issues(doc)
    assert [i.path for i in found] == [path]
    assert "surrogate" in found[0].message or "NUL" in found[0].message
    # …also through the whole manifest parser (the API's 422).
    with pytest.raises(ManifestError) as info:
        parse_manifest(doc)
    assert info.value.issues[0].path == path


@pytest.mark.parametrize("libyaml", PARSERS)
@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('spec: {"\\ud800": 1}', "spec.\\ud800"),
        ('spec:\n  services:\n    web:\n      env: {A: "\\ud800"}\n', "spec.services.web.env.A"),
        ('spec:\n  routes:\n    - path: "/\\ud800"\n', "spec.routes[0].path"),
        ('spec:\n  routes:\n    - path: "/\\0"\n', "spec.routes[0].path"),
    ],
)
def test_unstorable_strings_in_yaml_name_their_field(text: str, path: str, libyaml: bool) -> None:
    (issue,) = issues(text, libyaml)
    # libyaml names the mapping whose key it could not read; PyYAML reads it, the walk names it
    assert issue.path == path or (libyaml and issue.path == path.removesuffix(".\\ud800"))
    # libyaml refuses the escape itself (with its position); PyYAML decodes it and the walk
    # finds the string.
    assert "escape" in issue.message or "surrogate" in issue.message or "NUL" in issue.message


# --------------------------------------------------------------------------------- N1: no values


SECRET = "hunter2-value"

SECRET_FORMS = [
    f"!!int '{SECRET}'",
    f"!!float '{SECRET}'",
    f"!!bool '{SECRET}'",
    f"!!timestamp '{SECRET}'",
    f"!!binary '{SECRET}'",
    f"!!set '{SECRET}'",
    f"!!omap '{SECRET}'",
    f"!{SECRET} x",
    f"*{SECRET}",
    f"{{{SECRET}: 1, {SECRET}: 2}}",
    f'{{"{SECRET}\\ud800": 1}}',
    f'"{SECRET}\\q"',
    f"[{SECRET}, [{SECRET}]]",
    f"{{a: {SECRET}}}",
    f"'{SECRET}",
    f"[{SECRET}",
    f"!!int 0x{SECRET}",
    "!!int " + "9" * (MAX_NUMBER_LEN + 1) + SECRET,
]


@pytest.mark.parametrize("libyaml", PARSERS)
@pytest.mark.parametrize("form", SECRET_FORMS)
@pytest.mark.parametrize("where", ["secrets", "env", "bindings"])
def test_values_of_env_secrets_bindings_never_appear_in_errors(
    form: str, where: str, libyaml: bool
) -> None:
    text = (
        "apiVersion: turnout/v1\nkind: App\nmetadata: {name: a}\nspec:\n  services:\n"
        f"    web:\n      type: http\n      upstreams: [http://h:1]\n      {where}:\n"
        f"        DB: {form}\n"
    )
    with pytest.raises(ManifestError) as info:
        manifest_from_obj(load_document(text, libyaml=libyaml))
    shown = json.dumps([list(i) for i in info.value.issues]) + str(info.value)
    assert SECRET not in shown
    assert "hunter2" not in shown
    for issue in info.value.issues:  # named at most down to the entry, never inside it
        assert issue.path.count(f".{where}.") <= 1
        assert not issue.path.startswith(f"spec.services.web.{where}.DB.")


def test_parser_problems_lose_document_content_but_keep_vocabulary() -> None:
    assert _problem("found unknown escape character 'q'") == "found unknown escape character"
    assert _problem("found character '\\t' that cannot start any token") == (
        "found character that cannot start any token"
    )
    assert _problem("found undefined alias 'secret'") == "found undefined alias"
    assert _problem("expected ',' or ']', but got '<stream end>'") == (
        "expected ',' or ']', but got '<stream end>'"
    )


def test_paths_stop_at_an_opaque_entry() -> None:
    assert join_path(["spec", "services", "web", "env", "A"]) == "spec.services.web.env.A"
    assert join_path(["spec", "services", "web", "secrets", "A", "x", 0]) == (
        "spec.services.web.secrets.A"
    )
    assert join_path(["bindings", 3, "deeper"]) == "bindings[3]"
    assert join_path(["routes", 0, None, "path"]) == "routes[0].path"
    assert join_path([]) == "$"
    assert join_path(["a\x00b"]) == "a\\u0000b"  # keys are escaped, never raw


# --------------------------------------------------------------------------------- D4: budgets


@pytest.mark.parametrize("libyaml", PARSERS)
def test_the_value_budget_holds_while_composing(libyaml: bool) -> None:
    text = "spec: [" + ",".join(["1"] * (MAX_VALUES + 1)) + "]"
    (issue,) = issues(text, libyaml)
    assert issue.path == "$" and f"more than {MAX_VALUES} values" in issue.message
    assert "line 1, column" in issue.message


def test_json_value_budget_is_checked_before_parsing() -> None:
    text = '{"spec": [' + ",".join(["1"] * (MAX_VALUES + 1)) + "]}"
    assert issues(text) == [Issue("$", f"manifest holds more than {MAX_VALUES} values")]
    # Commas inside strings are not values: a long string full of them is fine.
    long = '{"spec": {"note": "' + "a," * MAX_VALUES + '"}}'
    assert load_document(long)["spec"]["note"].count(",") == MAX_VALUES


@pytest.mark.parametrize("libyaml", PARSERS)
def test_aliases_are_counted_and_expanded_values_bounded(libyaml: bool) -> None:
    many = "a: &a [1]\nb: [" + ",".join(["*a"] * (MAX_ALIASES + 1)) + "]"
    assert f"more than {MAX_ALIASES} aliases" in issues(many, libyaml)[0].message
    big = ",".join(["1"] * (MAX_VALUES // 4))
    expanded = f"a: &a [{big}]\nb: [" + ",".join(["*a"] * MAX_ALIASES) + "]"
    assert issues(expanded, libyaml) == [
        Issue("$", f"manifest holds more than {MAX_VALUES} values")
    ]


@pytest.mark.parametrize("libyaml", PARSERS)
def test_numbers_are_bounded(libyaml: bool) -> None:
    long = "9" * (MAX_NUMBER_LEN + 1)
    assert load_document(f"a: {long}", libyaml=libyaml) == {"a": long}  # a plain string
    (issue,) = issues(f"a: !!int {long}", libyaml)
    assert issue.path == "a" and f"longer than {MAX_NUMBER_LEN}" in issue.message
    assert load_document("a: 1:30\nb: 0x1f\nc: 1.5e+3", libyaml=libyaml) == {
        "a": 90,
        "b": 31,
        "c": 1500.0,
    }


@pytest.mark.parametrize("libyaml", PARSERS)
@pytest.mark.parametrize(
    "form", ["!!int x", "!!float x", "!!bool x", "!!timestamp x", "!!timestamp 2020-99-99"]
)
def test_tagged_scalars_that_cannot_be_built_are_positioned_errors(
    form: str, libyaml: bool
) -> None:
    (issue,) = issues(f"kind: App\nvalue: {form}\n", libyaml)
    assert issue.path == "value"
    assert "cannot be read as !!" in issue.message and "(line 2, column 8)" in issue.message


def cpu_of(parse: Callable[[], object]) -> float:
    """CPU seconds of this thread for one refused parse, best of three, the collector paused:
    what the parser costs, not other processes or a full collection of the test run's heap
    (a parsing worker's heap is small)."""
    best = float("inf")
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            t0 = time.thread_time()
            with pytest.raises(ManifestError):
                parse()
            best = min(best, time.thread_time() - t0)
    finally:
        gc.enable()
    return best


def test_the_issues_manifest_costs_little_cpu() -> None:
    """D4's manifest (48 KB, 24 000 flow items) took ~1.3 s of pure-Python parsing; now the
    composer stops at the budget. CPU time of this thread, not wall time: other processes on
    the machine do not count."""
    text = (
        "apiVersion: turnout/v1\nkind: App\nmetadata: {name: a}\nspec:\n  x: ["
        + ",".join(["1"] * 24_000)
        + "]\n"
    )
    assert 47_000 < len(text) < 50_000
    spent = cpu_of(lambda: parse_manifest(text.encode()))
    assert spent < 0.25, f"{spent * 1000:.0f} ms of CPU for one manifest"


@pytest.mark.parametrize(
    "text",
    [
        "spec: [" + ",".join(["2001-12-14t21:59:43.10-05:00"] * (MAX_VALUES - 10)) + "]",
        "".join(f"k{i}: v\n" for i in range(MAX_VALUES // 2 - 5)),
        "spec: [" + ",".join(["1"] * (1024 * 1024 // 2 - 10)) + "]",
        '{"a": [' + ",".join(["{}"] * (1024 * 1024 // 3 - 10)) + "]}",
        "a: " + "1" * (1024 * 1024 - 10),
    ],
    ids=["timestamps", "block-map", "1MiB-flow", "1MiB-json", "1MiB-scalar"],
)
def test_worst_case_shapes_stay_bounded(text: str) -> None:
    # A guard against superlinear shapes (they took seconds to minutes before issue 15 D4),
    # not a speed measurement: ~0.1-0.2 s on a quiet 2-core box, up to ~0.3 s on a loaded one;
    # the speed itself is measured in benchmarks/manifest_dos.py.
    spent = cpu_of(lambda: parse_manifest(text.encode()))
    assert spent < 1.0, f"{spent * 1000:.0f} ms of CPU"


# --------------------------------------------------------------------------------- duplicates


@pytest.mark.parametrize("libyaml", PARSERS)
def test_duplicate_keys_are_named_by_path(libyaml: bool) -> None:
    text = "spec:\n  services:\n    web: {env: {A: x, A: y}}\n"
    assert issues(text, libyaml) == [Issue("spec.services.web.env.A", "duplicate key")]
    merged = "base: &b {a: 1}\nthing:\n  <<: *b\n  a: 2\n"  # overriding a merged key is fine
    assert load_document(merged, libyaml=libyaml)["thing"] == {"a": 2}


def test_documents_that_are_not_mappings_still_load() -> None:
    value: Any = load_document("- a\n- b\n")
    assert value == ["a", "b"]
