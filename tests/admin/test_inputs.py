"""Client input outside the body schema (D1 and its siblings): integers, text parameters,
headers, NUL in body strings — 422 naming the field, never a 500."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from admin.app import load_resources
from admin.errors import ApiError, PayloadTooLarge, Unprocessable
from admin.framework import REGISTRY, Endpoint
from admin.inputs import (
    client_int,
    client_request_id,
    client_text,
    content_length,
    refuse_nul,
    unprocessable,
)
from routing.errors import FieldError, InvalidFields
from tests.admin.conftest import assert_error, auth
from tests.admin.deployed import World, deployed_world

load_resources()

BAD_INTEGERS = [
    "²",  # '²'.isdigit() is True, int('²') fails
    "٣",  # Arabic-Indic digit three: int() accepts it, the API does not
    "１",  # fullwidth one
    "9" * 4301,  # past int()'s 4300-digit limit
    "9" * 19,
    "0",
    "501",
    "-1",
    "+5",
    " 5",
    "5.0",
    "",
    "0x10",
    "1e3",
]


@pytest.mark.parametrize("raw", BAD_INTEGERS)
def test_client_int_refuses(raw: str) -> None:
    with pytest.raises(Unprocessable) as info:
        client_int(raw, "query.limit", 1, 500)
    assert info.value.details == {
        "fields": [{"path": "query.limit", "message": "must be an integer 1..500"}]
    }


def test_unprocessable_from_one_field_error() -> None:
    err = unprocessable(FieldError("body.host", "must not be empty"))
    assert (err.status, err.code, str(err)) == (
        422,
        "validation_failed",
        "body.host: must not be empty",
    )
    assert err.details == {"fields": [{"path": "body.host", "message": "must not be empty"}]}


def test_unprocessable_from_collected_issues_lists_every_one() -> None:
    err = unprocessable(InvalidFields([("a", "bad"), ("b[0]", "worse")], "invalid x"), code="x_bad")
    assert (err.status, err.code, str(err)) == (422, "x_bad", "invalid x: a: bad; b[0]: worse")
    assert err.details == {
        "fields": [{"path": "a", "message": "bad"}, {"path": "b[0]", "message": "worse"}]
    }


def test_client_int_accepts_ascii_digits_in_range() -> None:
    assert client_int("500", "p", 1, 500) == 500
    assert client_int("007", "p", 1, 500) == 7


@pytest.mark.parametrize("raw", ["a\x00b", "\ud800", "\ufffe", "tab\there", "x" * 256])
def test_client_text_refuses(raw: str) -> None:
    with pytest.raises(Unprocessable) as info:
        client_text(raw, "path.space")
    assert info.value.details["fields"][0]["path"] == "path.space"


def test_request_id_and_content_length_rules() -> None:
    assert client_request_id(None) is None
    assert client_request_id("req-1.a:b_C") == "req-1.a:b_C"
    for bad in ["", "a b", "x" * 129, "é", "a\x00"]:
        with pytest.raises(Unprocessable):
            client_request_id(bad)
    assert content_length(None, 10) is None and content_length(" 10 ", 10) == 10
    with pytest.raises(PayloadTooLarge):
        content_length("11", 10)
    with pytest.raises(PayloadTooLarge):
        content_length("9" * 4301, 10)
    for bad in ["²", "-1", "1e3", "", "0x1"]:
        with pytest.raises(ApiError) as info:
            content_length(bad, 10)
        assert info.value.status == 400


def test_refuse_nul_walks_containers() -> None:
    assert refuse_nul(["a", {"b": ("c",)}]) == ["a", {"b": ("c",)}]
    for bad in ["a\x00", ["ok", "x\x00"], {"k\x00": 1}, {"k": {"deeper": "\x00"}}]:
        with pytest.raises(ValueError):
            refuse_nul(bad)


# ------------------------------------------------------------------------------ over HTTP


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with deployed_world(Path(tmp_path_factory.mktemp("world")) / "admin.db") as w:
        yield w


PAGED = sorted((ep for ep in REGISTRY if ep.paged), key=lambda e: e.path)


@pytest.mark.parametrize("ep", PAGED, ids=lambda e: e.path)
def test_every_paged_endpoint_refuses_bad_limits(world: World, ep: Endpoint) -> None:
    url = world.url(ep)
    assert world.client.get(f"{url}?limit=500", headers=auth(world.token)).status_code == 200
    for raw in ["%C2%B2", "%D9%A3", "9" * 4301, "0", "501", "-1", "5.0", ""]:
        r = world.client.get(f"{url}?limit={raw}", headers=auth(world.token))
        err = assert_error(r, 422, "validation_failed")
        assert err["details"]["fields"] == [
            {"path": "query.limit", "message": "must be an integer 1..500"}
        ], raw


def _cursor(data: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "@@",
        "%00",
        "x" * 2000,
        _cursor({"after": ["list"]}),
        _cursor({"after": "a\u0000b"}),
        _cursor({"after": "x" * 400}),
        _cursor([1]),
        "%C3%A9%C3%A9",
    ],
)
def test_bad_cursors(world: World, cursor: str) -> None:
    r = world.client.get(f"/api/spaces?cursor={cursor}", headers=auth(world.token))
    err = assert_error(r, 422, "validation_failed")
    assert err["details"]["fields"][0]["path"] == "query.cursor"


def test_content_length_that_is_not_a_number(world: World) -> None:
    headers = [(b"authorization", f"Bearer {world.token}".encode()), (b"content-length", b"\xb2")]
    r = world.client.post("/api/spaces", content=b"{}", headers=headers)
    err = assert_error(r, 400, "bad_request")
    assert err["details"]["fields"][0]["path"] == "header.Content-Length"
    huge = [(b"authorization", f"Bearer {world.token}".encode()), (b"content-length", b"9" * 4301)]
    assert_error(world.client.post("/api/spaces", content=b"{}", headers=huge), 413)


@pytest.mark.parametrize("raw", ["spc%00x", "%EF%BF%BE", "x" * 300])
def test_path_parameters_must_be_printable_and_short(world: World, raw: str) -> None:
    r = world.client.get(f"/api/spaces/{raw}", headers=auth(world.token))
    err = assert_error(r, 422, "validation_failed")
    assert err["details"]["fields"][0]["path"] == "path.space"


def test_client_request_id_is_validated_after_authorisation(world: World) -> None:
    bad = {"x-request-id": "has spaces"}
    assert_error(world.client.post("/api/spaces", json={"name": "n"}, headers=bad), 401)
    r = world.client.post("/api/spaces", json={"name": "n"}, headers={**auth(world.token), **bad})
    err = assert_error(r, 422, "validation_failed")
    assert err["details"]["fields"][0]["path"] == "header.X-Request-Id"
    r = world.client.get("/api/spaces", headers={**auth(world.token), "x-request-id": "x" * 129})
    assert_error(r, 422)


def test_nul_in_body_strings_names_the_field(world: World) -> None:
    r = world.client.post("/api/spaces", json={"name": "a\u0000b"}, headers=auth(world.token))
    err = assert_error(r, 422, "validation_failed")
    assert err["details"]["fields"][0]["path"] == "body.name"
    assert "NUL" in err["message"]


def test_integers_in_bodies_fit_their_columns(world: World) -> None:
    space = world.ids["space"]
    for version in [2**31, 2**62, 10**30]:
        r = world.client.post(
            f"/api/spaces/{space}/services/web/rollback",
            json={"version": version},
            headers=auth(world.token),
        )
        err = assert_error(r, 422)
        assert err["details"]["fields"][0]["path"] in ("body.version", "body"), err


def test_idempotency_key_must_be_printable(world: World) -> None:
    r = world.client.post(
        "/api/spaces",
        json={"name": "n"},
        headers={**auth(world.token), "idempotency-key": "tab\tkey"},
    )
    err = assert_error(r, 422)
    assert err["details"]["fields"][0]["path"] == "header.Idempotency-Key"
