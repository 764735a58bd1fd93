"""D6 and D9: a minted token never outlives its parent, revocation cascades, and an
``Idempotency-Key`` replay of a token creation answers what the OpenAPI document says.

D6 (the probe's case): a 1-day ``tokens:write`` token minted a child with ``expires_at: null``
(and a 3650-day one), and the child kept working after the parent was revoked. D9: the replay
answered 201 without ``token``, which the 201 schema requires.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from admin.api.tokens import DAY_MS, TokenReplay
from admin.db import idempotency_keys, now_ms, tokens
from tests.admin.conftest import assert_error, auth, bootstrap, principal_of, rows

SCOPES = ["tokens:write", "spaces:read"]


def mint(client: TestClient, token: str, path: str = "/api/tokens", **body: Any) -> Any:
    return client.post(path, json={"name": "t", "scopes": SCOPES, **body}, headers=auth(token))


def mint_ok(client: TestClient, token: str, path: str = "/api/tokens", **body: Any) -> Any:
    r = mint(client, token, path, **body)
    assert r.status_code == 201, r.text
    return r.json()


def works(client: TestClient, token: str) -> bool:
    r = client.get("/api/spaces", headers=auth(token))
    assert r.status_code in (200, 401), r.text
    return r.status_code == 200


def outlives(r: Any) -> str:
    err = assert_error(r, 422, "token_outlives_parent")
    assert [f["path"] for f in err["details"]["fields"]] == ["body.expires_at"]
    message: str = err["message"]
    return message


# ------------------------------------------------------------------------------ D6


def test_an_expiring_token_cannot_mint_a_longer_lived_one(client: TestClient) -> None:
    system = bootstrap(client)
    parent = mint_ok(client, system, expires_in_days=1)
    limit = parent["expires_at"]
    assert parent["parent_id"] is not None  # the bootstrap token minted it

    assert "expires_at <=" in outlives(mint(client, parent["token"]))  # no expiry
    outlives(mint(client, parent["token"], expires_in_days=3650))
    outlives(mint(client, parent["token"], expires_in_days=1))  # a day from *now*: later
    outlives(mint(client, parent["token"], expires_at=limit + 1))
    # At or before the parent's expiry is fine, and the lineage is recorded.
    child = mint_ok(client, parent["token"], expires_at=limit)
    assert child["parent_id"] == parent["id"] and child["expires_at"] == limit
    [row] = rows(client, sa.select(tokens.c.parent_id).where(tokens.c.id == child["id"]))
    assert row.parent_id == parent["id"]
    # Nothing was stored for the refused requests.
    assert len(rows(client, sa.select(tokens))) == 3


def test_a_parent_with_days_left_gets_a_days_hint(client: TestClient) -> None:
    system = bootstrap(client)
    parent = mint_ok(client, system, expires_in_days=10)
    message = outlives(mint(client, parent["token"], expires_in_days=11))
    assert "expires_in_days <= 9" in message
    assert mint_ok(client, parent["token"], expires_in_days=9)["parent_id"] == parent["id"]


def test_revoking_a_token_revokes_everything_it_minted(client: TestClient) -> None:
    system = bootstrap(client)
    parent = mint_ok(client, system, expires_in_days=1)
    child = mint_ok(client, parent["token"], expires_at=parent["expires_at"])
    grandchild = mint_ok(client, child["token"], expires_at=parent["expires_at"])
    sibling = mint_ok(client, system)  # another branch of the bootstrap token
    assert all(works(client, t["token"]) for t in (parent, child, grandchild))

    r = client.delete(f"/api/tokens/{parent['id']}", headers=auth(system))
    assert r.status_code == 204 and r.headers["x-turnout-revoked"] == "3"
    for t in (parent, child, grandchild):
        assert_error(client.get("/api/spaces", headers=auth(t["token"])), 401, "invalid_token")
    assert works(client, sibling["token"]) and works(client, system)
    # Again: nothing new to revoke.
    again = client.delete(f"/api/tokens/{parent['id']}", headers=auth(system))
    assert again.status_code == 204 and again.headers["x-turnout-revoked"] == "0"


def test_revocation_reaches_tokens_issued_to_other_principals_but_not_orphans(
    client: TestClient,
) -> None:
    system = bootstrap(client)
    admin_token = mint_ok(client, system, scopes=["*"])  # a second system token to retire
    r = client.post("/api/principals", json={"kind": "user", "name": "ann"}, headers=auth(system))
    ann = r.json()["id"]
    path = f"/api/principals/{ann}/tokens"
    issued = mint_ok(client, admin_token["token"], path)
    orphan = mint_ok(client, admin_token["token"], path, orphan=True)
    assert issued["parent_id"] == admin_token["id"] and orphan["parent_id"] is None
    minted_by_ann = mint_ok(client, issued["token"])
    assert principal_of(client, minted_by_ann["token"]) == ann

    r = client.delete(f"/api/tokens/{admin_token['id']}", headers=auth(system))
    assert r.status_code == 204 and r.headers["x-turnout-revoked"] == "3"
    assert not works(client, issued["token"]) and not works(client, minted_by_ann["token"])
    assert works(client, orphan["token"])  # a root of its own
    # The principal's listing shows the lineage.
    listed = client.get(path, headers=auth(system)).json()["items"]
    assert {t["id"]: t["parent_id"] for t in listed} == {
        issued["id"]: admin_token["id"],
        orphan["id"]: None,
        minted_by_ann["id"]: issued["id"],
    }


def test_an_orphan_is_still_bounded_by_its_issuers_expiry(client: TestClient) -> None:
    system = bootstrap(client)
    short = mint_ok(client, system, scopes=["*"], expires_in_days=1)
    ann = client.post(
        "/api/principals", json={"kind": "user", "name": "ann"}, headers=auth(system)
    ).json()["id"]
    path = f"/api/principals/{ann}/tokens"
    outlives(mint(client, short["token"], path, orphan=True))
    ok = mint_ok(client, short["token"], path, orphan=True, expires_at=short["expires_at"])
    assert ok["parent_id"] is None
    # orphan is the system admin's: /api/tokens has no such field.
    assert_error(mint(client, system, orphan=True), 422, "validation_failed")


def test_bootstrap_tokens_are_roots(client: TestClient) -> None:
    system = bootstrap(client)
    again = bootstrap(client)
    listed = client.get("/api/tokens", headers=auth(system)).json()["items"]
    assert [t["parent_id"] for t in listed] == [None, None]
    assert works(client, again)


@pytest.mark.parametrize(
    ("body", "paths"),
    [
        ({"expires_at": 1}, ["body.expires_at"]),  # in the past
        ({"expires_at": 4102444800000 * 10}, ["body.expires_at"]),  # > 3650 days ahead
        ({"expires_at": -5}, ["body.expires_at"]),
        ({"expires_at": 2**60}, ["body.expires_at"]),
        ({"expires_at": "soon"}, ["body.expires_at"]),
        ({"expires_at": 1.5}, ["body.expires_at"]),
        (
            {"expires_in_days": 5, "expires_at": 2 * 10**12},
            ["body.expires_at", "body.expires_in_days"],
        ),
    ],
    ids=repr,
)
def test_bad_expiries_are_422_naming_the_field(
    client: TestClient, body: dict[str, Any], paths: list[str]
) -> None:
    system = bootstrap(client)
    err = assert_error(mint(client, system, **body), 422, "validation_failed")
    assert [f["path"] for f in err["details"]["fields"]] == paths


_parents = st.one_of(st.none(), st.integers(min_value=1, max_value=3650))
_children = st.one_of(
    st.just({}),
    st.builds(lambda d: {"expires_in_days": d}, st.integers(min_value=1, max_value=3650)),
    st.builds(lambda ms: {"expires_at_offset": ms}, st.integers(-DAY_MS, 3700 * DAY_MS)),
)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(parent_days=_parents, child=_children)
def test_no_minted_token_ever_outlives_its_parent(
    client: TestClient, parent_days: int | None, child: dict[str, int]
) -> None:
    """Generative: any parent lifetime, any requested child lifetime → either a child that
    expires no later than its parent, or a 422 naming the field; never a 5xx."""
    system = bootstrap(client)
    parent = mint_ok(
        client, system, **({} if parent_days is None else {"expires_in_days": parent_days})
    )
    body = dict(child)
    if "expires_at_offset" in body:
        body = {"expires_at": now_ms() + body.pop("expires_at_offset")}
    r = mint(client, parent["token"], **body)
    if r.status_code == 201:
        made = r.json()
        assert made["parent_id"] == parent["id"]
        if parent["expires_at"] is not None:
            assert made["expires_at"] is not None and made["expires_at"] <= parent["expires_at"]
    else:
        err = assert_error(r, 422)
        assert err["details"]["fields"][0]["path"] in ("body.expires_at", "body.expires_in_days")


# ------------------------------------------------------------------------------ D9


@pytest.mark.parametrize("principal_path", [False, True], ids=["own", "principal"])
def test_a_replay_answers_200_with_its_own_schema_and_no_plaintext(
    client: TestClient, principal_path: bool
) -> None:
    system = bootstrap(client)
    path = "/api/tokens"
    if principal_path:
        ann = client.post(
            "/api/principals", json={"kind": "user", "name": "ann"}, headers=auth(system)
        ).json()["id"]
        path = f"/api/principals/{ann}/tokens"
    headers = {**auth(system), "idempotency-key": "mint-1"}
    body = {"name": "ci", "scopes": ["spaces:read"]}
    first = client.post(path, json=body, headers=headers)
    assert first.status_code == 201
    replay = client.post(path, json=body, headers=headers)
    assert replay.status_code == 200 and replay.headers["idempotent-replay"] == "true"
    data = replay.json()
    assert "token" not in data and data["idempotent_replay"] is True
    assert data["id"] == first.json()["id"]
    TokenReplay.model_validate(data)
    assert first.json()["token"] not in replay.text
    [stored] = rows(client, sa.select(idempotency_keys))
    assert stored.status == 200 and first.json()["token"] not in stored.response
    assert orjson.loads(stored.response) == data

    # The answers are what the OpenAPI document declares for their status codes.
    doc = client.get("/openapi.json").json()
    template = "/api/principals/{principal}/tokens" if principal_path else "/api/tokens"
    operation = schemathesis.openapi.from_dict(doc)[template]["POST"]
    operation.validate_response(first)
    operation.validate_response(replay)
    responses = doc["paths"][template]["post"]["responses"]
    assert responses["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TokenReplay"
    }
    replay_schema = doc["components"]["schemas"]["TokenReplay"]
    assert "token" not in replay_schema["properties"]
    assert "idempotent_replay" in replay_schema["required"]
    assert "token" in doc["components"]["schemas"]["NewToken"]["required"]
