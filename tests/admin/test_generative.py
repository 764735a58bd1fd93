"""Generative coverage of issue 15's classes: hostile values in every query parameter and every
body field of every declared endpoint, and arbitrary bytes and documents into the manifest
parser.

Values come from hypothesis: arbitrary Unicode (controls, lone surrogates, U+FFFE, non-ASCII
digits such as '²' and '٣'), huge and negative numbers, and nested JSON. Every answer must be
below 500; every 4xx must be the error envelope; a 422 must name a field (``query.<name>``,
``body.<field>``, or ``body`` for a body that is not JSON at all). Endpoints and fields come
from the registry and the models' JSON schemas, so new ones are covered the day they exist.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from admin.app import load_resources
from admin.framework import REGISTRY, Endpoint
from admin.manifest import ManifestError, manifest_from_obj, parse_manifest
from admin.manifest_load import load_document
from tests.admin.conftest import auth
from tests.admin.deployed import World, deployed_world
from tests.admin.test_manifest import FULL_YAML

load_resources()

EXAMPLES = 20
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)

# Every code point, lone surrogates included (st.text() leaves those out by default).
ANY_CHAR = st.characters(codec=None, exclude_categories=())
EDGE_TEXT = st.sampled_from(
    [
        "²",
        "٣",
        "１",
        "9" * 4301,
        "-1",
        "0",
        "1e400",
        "NaN",
        "\x00",
        "\ud800",
        "\udfff\ud800",
        "\ufffe",
        "\x0c\x7f",
        " 5",
        "",
        "%00",
        "../..",
        "a" * 5000,
    ]
)
NASTY_TEXT = st.one_of(EDGE_TEXT, st.text(ANY_CHAR, max_size=40))
NASTY_NUMBERS = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([2**31, 2**63, -(2**63) - 1, 10**400]),
    st.floats(allow_nan=False, allow_infinity=False),
)
HUGE = "<a 4400-digit number>"  # json.dumps cannot write one: encode_json splices it in
JSON_LEAF = st.one_of(st.none(), st.booleans(), NASTY_NUMBERS, NASTY_TEXT, st.just(HUGE))
NASTY_JSON = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NASTY_TEXT, inner, max_size=3),
    max_leaves=6,
)


def encode_json(value: Any) -> bytes:
    """JSON text for any value: lone surrogates become ``\\udxxx`` escapes, huge integers
    stay integers (the server must cope with both)."""
    return json.dumps(value, ensure_ascii=True).replace(json.dumps(HUGE), "9" * 4400).encode()


def quote(value: str) -> str:
    return urllib.parse.quote(value.encode("utf-8", "surrogatepass"), safe="")


def assert_envelope(resp: Any, what: str) -> dict[str, Any]:
    assert resp.status_code < 500, f"{what}: {resp.status_code} {resp.text[:300]}"
    if resp.status_code < 400:
        return {}
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"], what
    err: dict[str, Any] = body["error"]
    return err


def field_paths(err: dict[str, Any]) -> list[str]:
    details = err.get("details") or {}
    return [f["path"] for f in details.get("fields", [])] if isinstance(details, dict) else []


# ------------------------------------------------------------------------------ world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with deployed_world(Path(tmp_path_factory.mktemp("world")) / "admin.db") as w:
        yield w


# ------------------------------------------------------------------------------ query parameters


def query_params(ep: Endpoint) -> list[str]:
    names = ["limit", "cursor"] if ep.paged else []
    return names + [name for name, _, _ in ep.query]


QUERY_CASES = [
    pytest.param(ep, name, id=f"{ep.method} {ep.path} ?{name}")
    for ep in sorted(REGISTRY, key=lambda e: (e.path, e.method))
    if ep.method == "GET"
    for name in query_params(ep)
]


@pytest.mark.parametrize(("ep", "name"), QUERY_CASES)
def test_query_parameters_take_anything(world: World, ep: Endpoint, name: str) -> None:
    url = world.url(ep)

    @SETTINGS
    @given(value=st.one_of(NASTY_TEXT, NASTY_NUMBERS.map(str)))
    def run(value: str) -> None:
        resp = world.client.get(f"{url}?{name}={quote(value)}", headers=auth(world.token_for(ep)))
        err = assert_envelope(resp, f"{url}?{name}={value!r}")
        if resp.status_code == 422:
            assert f"query.{name}" in field_paths(err), (value, err)

    run()


def test_there_are_query_parameters_to_test() -> None:
    assert len(QUERY_CASES) >= 10


# ------------------------------------------------------------------------------ body fields


def _example(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    """A plausible value for a JSON schema (first enum/const, minimum, first array item...)."""
    if "$ref" in schema:
        return _example(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return _example(schema[key][0], defs)
    kind = schema.get("type")
    if kind == "string":
        return "x" * max(1, schema.get("minLength", 1))
    if kind == "integer":
        return max(1, schema.get("minimum", 1))
    if kind == "number":
        return 0.5
    if kind == "boolean":
        return True
    if kind == "array":
        return [_example(schema.get("items", {}), defs)] * max(1, schema.get("minItems", 1))
    if kind == "object":
        return {
            prop: _example(sub, defs)
            for prop, sub in schema.get("properties", {}).items()
            if prop in schema.get("required", [])
        }
    return None


BODY_CASES = []
for _ep in sorted(REGISTRY, key=lambda e: (e.path, e.method)):
    if _ep.body is None:
        continue
    _schema = _ep.body.model_json_schema()
    for _field in _schema.get("properties", {}):
        BODY_CASES.append(pytest.param(_ep, _field, id=f"{_ep.method} {_ep.path} body.{_field}"))


@pytest.mark.parametrize(("ep", "field"), BODY_CASES)
def test_body_fields_take_anything(world: World, ep: Endpoint, field: str) -> None:
    assert ep.body is not None
    schema = ep.body.model_json_schema()
    base = _example(schema, schema.get("$defs", {}))
    url = world.url(ep)

    def send(body: Any) -> Any:
        return world.client.request(
            ep.method,
            url,
            content=encode_json(body),
            headers={**auth(world.token), "content-type": "application/json"},
        )

    base_refused = send(base).status_code == 422  # then another field may be the one named

    @SETTINGS
    @given(value=NASTY_JSON)
    def run(value: Any) -> None:
        resp = send({**base, field: value})
        err = assert_envelope(resp, f"{ep.method} {url} {field}={value!r}")
        if resp.status_code == 422:
            paths = field_paths(err)
            assert paths and all(p == "body" or p.startswith("body.") for p in paths), err
            if not base_refused:
                named = [p for p in paths if p == "body" or p.startswith(f"body.{field}")]
                assert named, (field, value, err)

    run()


def test_there_are_body_fields_to_test() -> None:
    assert len(BODY_CASES) >= 10


# ------------------------------------------------------------------------------ the manifest parser


def _check(data: str | bytes, *, libyaml: bool = True) -> None:
    """Only ManifestError may come out, and its issues must encode as JSON."""
    try:
        manifest_from_obj(load_document(data, libyaml=libyaml))
    except ManifestError as exc:
        assert exc.issues
        orjson.dumps([{"path": i.path, "message": i.message} for i in exc.issues])
        orjson.dumps(str(exc))


@pytest.mark.parametrize("libyaml", [True, False], ids=["libyaml", "pure"])
def test_arbitrary_bytes(libyaml: bool) -> None:
    @settings(SETTINGS, max_examples=200)
    @given(data=st.binary(max_size=400))
    def run(data: bytes) -> None:
        _check(data, libyaml=libyaml)

    run()


@pytest.mark.parametrize("libyaml", [True, False], ids=["libyaml", "pure"])
def test_arbitrary_text(libyaml: bool) -> None:
    @settings(SETTINGS, max_examples=200)
    @given(text=st.text(ANY_CHAR, max_size=200))
    def run(text: str) -> None:
        _check(text, libyaml=libyaml)

    run()


@pytest.mark.parametrize("libyaml", [True, False], ids=["libyaml", "pure"])
def test_a_real_manifest_with_bytes_spliced_in(libyaml: bool) -> None:
    raw = FULL_YAML.encode()

    @settings(SETTINGS, max_examples=200)
    @given(at=st.integers(0, len(raw)), cut=st.integers(0, 20), junk=st.binary(max_size=12))
    def run(at: int, cut: int, junk: bytes) -> None:
        _check(raw[:at] + junk + raw[at + cut :], libyaml=libyaml)

    run()


@pytest.mark.parametrize("style", ["yaml", "json"])
def test_arbitrary_documents(style: str) -> None:
    @settings(SETTINGS, max_examples=100)
    @given(doc=NASTY_JSON)
    def run(doc: Any) -> None:
        if style == "json":
            text = json.dumps({"apiVersion": "turnout/v1", "spec": doc}, ensure_ascii=True)
        else:
            try:
                text = yaml.safe_dump({"apiVersion": "turnout/v1", "spec": doc}, allow_unicode=True)
            except (yaml.YAMLError, UnicodeEncodeError):
                return  # not representable as YAML text
        _check(text)

    run()


SENSITIVE_FORMS = st.sampled_from(
    [
        "{v}",
        "!!int '{v}'",
        "!!float '{v}'",
        "!!bool '{v}'",
        "!!timestamp '{v}'",
        "!!binary '{v}'",
        "!{v} x",
        "*{v}",
        "[{v}, {{{v}: 1}}]",
        "{{{v}: 1, {v}: 2}}",
        '"{v}\\ud800"',
        '"{v}\\0"',
        "'{v}",
        "{{{v}",
    ]
)


def test_sensitive_values_never_reach_a_message() -> None:
    @settings(SETTINGS, max_examples=150)
    @given(
        where=st.sampled_from(["env", "secrets", "bindings"]),
        form=SENSITIVE_FORMS,
        value=st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=8, max_size=20),
        libyaml=st.booleans(),
    )
    def run(where: str, form: str, value: str, libyaml: bool) -> None:
        marker = f"zq{value}qz"
        text = (
            "apiVersion: turnout/v1\nkind: App\nmetadata: {name: a}\nspec:\n  services:\n"
            f"    web:\n      type: http\n      upstreams: [http://h:1]\n      {where}:\n"
            f"        NAME: {form.format(v=marker)}\n"
        )
        try:
            manifest = manifest_from_obj(load_document(text, libyaml=libyaml))
        except ManifestError as exc:
            shown = str(exc) + json.dumps([list(i) for i in exc.issues])
            assert marker not in shown, shown
        else:
            assert form == "{v}"  # only a plain string is valid
            assert marker not in repr(manifest) or where != "secrets"

    run()


def test_parse_manifest_accepts_its_own_examples() -> None:
    assert parse_manifest(FULL_YAML).name == "shop"
