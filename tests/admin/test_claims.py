"""D8 and N4: hostname claims — squatting, expiry, displacement — and confusable IDN labels.

D8: space B claimed ``victim.example.org`` unverified and the real owner got 409 for ever. Now a
pending claim blocks nobody, expires (``TURNOUT_CLAIM_TTL_HOURS``, 72 h), and the first TXT proof
displaces every other space's pending claim; the loser sees ``displaced`` in its hostname's
status and a row in its audit log. N4: an ``xn--`` label under the base domain whose UTS #39
skeleton equals another space's label there is refused (409 ``hostname_confusable``).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import idna
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.testclient import TestClient

from admin.claims import (
    HOUR_MS,
    ClaimStatus,
    IllegalClaimTransition,
    transition,
)
from admin.db import audit_log, hostnames, new_id, now_ms
from admin.settings import Settings
from tests.admin.conftest import TEST_KEYS, assert_error, auth, bootstrap, create_space, rows, sql
from tests.admin.dns_support import (
    BASE,
    CLIENT_FIXTURE,
    DNS_FIXTURE,
    dns_client,
    hostname_url,
    prove,
    set_txt,
)
from tests.admin.publishing import add_host, create_service, drain, routed_deployment, store_get

VICTIM = "victim.example.org"


dns = DNS_FIXTURE
client = CLIENT_FIXTURE


@pytest.fixture
def two(client: TestClient) -> dict[str, str]:
    """Two spaces with a service ``web`` each: the real owner's and the squatter's."""
    system = bootstrap(client)
    owner = create_space(client, system, "owner")
    squatter = create_space(client, system, "squatter")
    for space in (owner, squatter):
        svc = create_service(client, system, space, "web")
        routed_deployment(client, svc["id"], f"http://127.0.0.1:9/{space}")
    return {"system": system, "owner": owner, "squatter": squatter}


def claim(client: TestClient, w: dict[str, str], space: str, host: str) -> Any:
    return add_host(client, w["system"], w[space], "web", host)


def read(client: TestClient, w: dict[str, str], space: str, host: str) -> Any:
    return client.get(hostname_url(w[space], "web", host), headers=auth(w["system"]))


def verify(client: TestClient, w: dict[str, str], space: str, host: str) -> Any:
    return client.post(f"{hostname_url(w[space], 'web', host)}/verify", headers=auth(w["system"]))


def expire(client: TestClient, host: str, space: str) -> None:
    async def run(conn: AsyncConnection) -> None:
        await conn.execute(
            sa.update(hostnames)
            .where(hostnames.c.host == host, hostnames.c.space_id == space)
            .values(expires_at=now_ms() - 1)
        )

    sql(client, run)


# ------------------------------------------------------------------------------ D8


def test_an_unverified_claim_does_not_block_the_real_owner(
    client: TestClient, two: dict[str, str], dns: Path
) -> None:
    squat = claim(client, two, "squatter", VICTIM)
    assert squat.status_code == 201 and squat.json()["status"] == "pending"
    # The owner gets a pending claim of its own (its own token), learning nothing of the other.
    mine = claim(client, two, "owner", VICTIM)
    assert mine.status_code == 201, mine.text
    assert mine.json()["status"] == "pending"
    assert mine.json()["verification"] != squat.json()["verification"]
    assert two["squatter"] not in mine.text

    # The owner proves it: verified, published, and the squatter is displaced.
    won = prove(client, dns, two["system"], two["owner"], "web", VICTIM)
    assert (won["status"], won["verified"]) == ("verified", True)
    drain(client)
    record = store_get(client, VICTIM)
    assert record is not None and record["space_id"] == two["owner"]

    lost = read(client, two, "squatter", VICTIM).json()
    assert lost["status"] == "displaced" and lost["verified"] is False
    assert isinstance(lost["displaced_at"], int) and lost["verification"] is None
    assert lost["routed"] is True and lost["expires_at"] is None
    # ... and told in its audit log, by no principal and with no request id of the winner's.
    [event] = rows(
        client,
        sa.select(audit_log).where(
            audit_log.c.space_id == two["squatter"], audit_log.c.action == "hostname_displaced"
        ),
    )
    assert event.principal_id is None and event.outcome == "displaced"
    assert event.resource.endswith(f"/hostname:{VICTIM}") and event.request_id.startswith("event-")
    assert not rows(
        client,
        sa.select(audit_log).where(
            audit_log.c.space_id == two["owner"], audit_log.c.action == "hostname_displaced"
        ),
    )
    # The squatter can neither verify (its TXT is there too) nor claim it back.
    v = squat.json()["verification"]
    set_txt(dns, v["name"], v["value"])
    assert_error(verify(client, two, "squatter", VICTIM), 409, "hostname_taken")
    err = assert_error(claim(client, two, "squatter", VICTIM), 409, "hostname_taken")
    assert two["owner"] not in err["message"]


def test_the_first_proof_wins_and_a_later_one_is_refused(
    client: TestClient, two: dict[str, str], dns: Path
) -> None:
    for space in ("squatter", "owner"):
        assert claim(client, two, space, VICTIM).status_code == 201
    prove(client, dns, two["system"], two["squatter"], "web", VICTIM)
    owner_v = read(client, two, "owner", VICTIM).json()
    assert owner_v["status"] == "displaced"
    assert_error(verify(client, two, "owner", VICTIM), 409, "hostname_taken")
    # Two verified claims on one name cannot exist even if two proofs raced past the checks.

    async def second_verified(conn: AsyncConnection) -> None:
        await conn.execute(
            sa.update(hostnames)
            .where(hostnames.c.host == VICTIM, hostnames.c.space_id == two["owner"])
            .values(verified=True)
        )

    with pytest.raises(sa.exc.IntegrityError):
        sql(client, second_verified)


def test_releasing_ones_claim_leaves_the_others(
    client: TestClient, two: dict[str, str], dns: Path
) -> None:
    for space in ("squatter", "owner"):
        assert claim(client, two, space, VICTIM).status_code == 201
    r = client.delete(hostname_url(two["squatter"], "web", VICTIM), headers=auth(two["system"]))
    assert r.status_code == 204
    assert read(client, two, "owner", VICTIM).json()["status"] == "pending"
    prove(client, dns, two["system"], two["owner"], "web", VICTIM)


def test_a_displaced_claim_is_renewed_once_the_name_is_free(
    client: TestClient, two: dict[str, str], dns: Path
) -> None:
    for space in ("squatter", "owner"):
        assert claim(client, two, space, VICTIM).status_code == 201
    first = read(client, two, "squatter", VICTIM).json()
    prove(client, dns, two["system"], two["owner"], "web", VICTIM)
    assert client.delete(
        hostname_url(two["owner"], "web", VICTIM), headers=auth(two["system"])
    ).status_code == (204)
    # Verifying the displaced claim is refused (it was displaced), claiming again renews it.
    assert_error(verify(client, two, "squatter", VICTIM), 409, "claim_displaced")
    again = claim(client, two, "squatter", VICTIM)
    assert again.status_code == 201, again.text
    body = again.json()
    assert body["status"] == "pending" and body["displaced_at"] is None
    assert body["verification"] == first["verification"]  # the same token: its TXT still works
    assert prove(client, dns, two["system"], two["squatter"], "web", VICTIM)["verified"] is True


def test_unverified_claims_expire_and_renew(
    client: TestClient, two: dict[str, str], dns: Path
) -> None:
    made = claim(client, two, "squatter", VICTIM).json()
    assert made["expires_at"] - made["created_at"] == 72 * HOUR_MS  # the default
    expire(client, VICTIM, two["squatter"])
    got = read(client, two, "squatter", VICTIM).json()
    assert got["status"] == "expired" and got["verification"] is None
    assert got["expires_at"] is None  # only a pending claim has a deadline
    # Even with the right TXT record an expired claim is not verified.
    v = made["verification"]
    set_txt(dns, v["name"], v["value"])
    err = assert_error(verify(client, two, "squatter", VICTIM), 409, "claim_expired")
    assert "claim it again" in err["message"]
    assert read(client, two, "squatter", VICTIM).json()["verified"] is False
    # Claiming it again renews it, same token; then the proof works.
    renewed = claim(client, two, "squatter", VICTIM)
    assert renewed.status_code == 201 and renewed.json()["status"] == "pending"
    assert renewed.json()["expires_at"] > now_ms()
    assert verify(client, two, "squatter", VICTIM).json()["status"] == "verified"


def test_an_expired_claim_is_renewed_by_a_redeploy(client: TestClient, two: dict[str, str]) -> None:
    doc = {
        "apiVersion": "turnout/v1",
        "kind": "App",
        "metadata": {"name": "shop"},
        "spec": {
            "services": {"api": {"type": "http", "upstreams": ["http://127.0.0.1:9"]}},
            "routes": [{"service": "api", "hostname": VICTIM}],
        },
    }
    headers = {**auth(two["system"]), "content-type": "application/json"}
    url = f"/api/spaces/{two['owner']}/app-deployments"
    first = client.post(url, json=doc, headers=headers)
    assert first.status_code == 201, first.text
    expire(client, VICTIM, two["owner"])
    again = client.post(url, json=doc, headers=headers)
    assert again.status_code == 201, again.text
    [instructions] = again.json()["services"][0]["verification"]
    assert instructions == first.json()["services"][0]["verification"][0]
    got = client.get(hostname_url(two["owner"], "api", VICTIM), headers=auth(two["system"]))
    assert got.json()["status"] == "pending"


def test_the_claim_ttl_is_a_setting(tmp_path: Path, dns: Path) -> None:
    with dns_client(tmp_path, dns, claim_ttl_hours=2.5) as c:
        system = bootstrap(c)
        space = create_space(c, system)
        create_service(c, system, space, "web")
        made = add_host(c, system, space, "web", VICTIM).json()
        assert made["expires_at"] - made["created_at"] == int(2.5 * HOUR_MS)
        # Granted names under the base domain never expire.
        granted = add_host(c, system, space, "web", f"app.{BASE}").json()
        assert (granted["status"], granted["expires_at"]) == ("verified", None)


@pytest.mark.parametrize("raw", ["0", "-1", "abc", "nan", "inf", "8761", ""])
def test_claim_ttl_from_the_environment(raw: str) -> None:
    env = {"TURNOUT_KEYS": TEST_KEYS, "TURNOUT_CLAIM_TTL_HOURS": raw}
    if raw == "":  # unset: the default
        assert Settings.from_env(env).claim_ttl_hours == 72
        return
    with pytest.raises(SystemExit, match="TURNOUT_CLAIM_TTL_HOURS"):
        Settings.from_env(env)


def test_claim_ttl_accepts_fractions_of_hours() -> None:
    env = {"TURNOUT_KEYS": TEST_KEYS, "TURNOUT_CLAIM_TTL_HOURS": "0.5"}
    assert Settings.from_env(env).claim_ttl_hours == 0.5


def test_claim_transitions_are_all_in_one_table() -> None:
    assert transition(ClaimStatus.PENDING, ClaimStatus.DISPLACED) is ClaimStatus.DISPLACED
    assert transition(None, ClaimStatus.VERIFIED) is ClaimStatus.VERIFIED
    for current, target in [
        (ClaimStatus.VERIFIED, ClaimStatus.DISPLACED),
        (ClaimStatus.VERIFIED, ClaimStatus.EXPIRED),
        (ClaimStatus.DISPLACED, ClaimStatus.VERIFIED),
        (ClaimStatus.EXPIRED, ClaimStatus.VERIFIED),
        (None, ClaimStatus.DISPLACED),
    ]:
        with pytest.raises(IllegalClaimTransition):
            transition(current, target)


# ------------------------------------------------------------------------------ N4

APPLE = "xn--pple-43d"  # "аpple", a Cyrillic а
assert idna.decode(APPLE) == "\u0430pple"


def test_a_homograph_of_another_spaces_label_is_refused(
    client: TestClient, two: dict[str, str]
) -> None:
    assert claim(client, two, "owner", f"apple.{BASE}").status_code == 201
    for host in (f"{APPLE}.{BASE}", f"api.{APPLE}.{BASE}", f"*.{APPLE}.{BASE}"):
        err = assert_error(claim(client, two, "squatter", host), 409, "hostname_confusable")
        assert "UTS #39" in err["message"] and two["owner"] not in err["message"]
    assert not rows(client, sa.select(hostnames).where(hostnames.c.host.contains(APPLE)))
    # Another Cyrillic spelling, and a homograph of a deeper claim's owning label, too.
    assert claim(client, two, "owner", f"x.shop.{BASE}").status_code == 201
    shop = idna.encode("ѕһор").decode()  # Cyrillic dze, shha, o, er
    assert_error(claim(client, two, "squatter", f"{shop}.{BASE}"), 409, "hostname_confusable")
    # The owner's own space may hold both spellings; unrelated IDN labels are free.
    assert claim(client, two, "owner", f"{APPLE}.{BASE}").status_code == 201
    assert claim(
        client, two, "squatter", f"{idna.encode('пример').decode()}.{BASE}"
    ).status_code == (201)


def test_the_ascii_original_is_never_blocked_by_a_homograph(
    client: TestClient, two: dict[str, str]
) -> None:
    """Only ``xn--`` labels are checked: a homograph claimed first cannot lock the real name."""
    assert claim(client, two, "squatter", f"{APPLE}.{BASE}").status_code == 201
    assert claim(client, two, "owner", f"apple.{BASE}").status_code == 201


@pytest.mark.parametrize("label", ["xn--abc", "xn--", "xn--ls8h", "xn--apple-"])
def test_an_invalid_a_label_is_422(client: TestClient, two: dict[str, str], label: str) -> None:
    r = claim(client, two, "owner", f"{label}.{BASE}")
    err = assert_error(r, 422, "validation_failed")
    assert [f["path"] for f in err["details"]["fields"]] == ["body.host"]


def test_a_manifest_route_gets_the_same_answer(client: TestClient, two: dict[str, str]) -> None:
    assert claim(client, two, "owner", f"apple.{BASE}").status_code == 201
    doc = {
        "apiVersion": "turnout/v1",
        "kind": "App",
        "metadata": {"name": "phish"},
        "spec": {
            "services": {"api": {"type": "http", "upstreams": ["http://127.0.0.1:9"]}},
            "routes": [{"service": "api", "hostname": f"{APPLE}.{BASE}"}],
        },
    }
    r = client.post(
        f"/api/spaces/{two['squatter']}/app-deployments", json=doc, headers=auth(two["system"])
    )
    assert_error(r, 409, "hostname_confusable")


# Latin letters and a Cyrillic look-alike of each (UTS #39 maps each back to the Latin letter).
LOOKALIKE = {"a": "а", "c": "с", "e": "е", "o": "о", "p": "р", "x": "х", "y": "у", "i": "і"}
_labels = itertools.count()


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    word=st.text(alphabet="".join(LOOKALIKE), min_size=2, max_size=12),
    swaps=st.sets(st.integers(min_value=0, max_value=11), min_size=1),
)
def test_every_lookalike_spelling_is_refused(
    client: TestClient, two: dict[str, str], word: str, swaps: set[int]
) -> None:
    """Generative: a random Latin label held by one space, and a spelling of it with some
    letters swapped for Cyrillic look-alikes claimed by the other → always 409."""
    label = f"{word}{next(_labels)}"
    r = claim(client, two, "owner", f"{label}.{BASE}")
    assert r.status_code == 201, r.text
    chars = list(label)
    for i in swaps:
        if i < len(word):
            chars[i] = LOOKALIKE[chars[i]]
    if chars == list(label):
        chars[0] = LOOKALIKE[chars[0]]
    ace = idna.encode("".join(chars)).decode()
    assert ace.startswith("xn--")
    assert_error(claim(client, two, "squatter", f"{ace}.{BASE}"), 409, "hostname_confusable")
    gone = client.delete(
        hostname_url(two["owner"], "web", f"{label}.{BASE}"), headers=auth(two["system"])
    )
    assert gone.status_code == 204  # (a service holds at most 20 hostnames)


def test_labels_claimed_before_skeletons_were_stored_are_compared_too(
    client: TestClient, two: dict[str, str]
) -> None:
    assert claim(client, two, "owner", f"apple.{BASE}").status_code == 201
    [row] = rows(
        client, sa.select(hostnames.c.label_skeleton).where(hostnames.c.host == f"apple.{BASE}")
    )
    assert row.label_skeleton is not None and len(row.label_skeleton) == 64

    async def forget(conn: AsyncConnection) -> None:  # as a row migrated from 0002 has it
        await conn.execute(sa.update(hostnames).values(label_skeleton=None))

    sql(client, forget)
    assert_error(claim(client, two, "squatter", f"{APPLE}.{BASE}"), 409, "hostname_confusable")
    # A claim that goes through stores the keys it had to compute.
    example = idna.encode("пример").decode()
    assert claim(client, two, "squatter", f"{example}.{BASE}").status_code == 201
    [again] = rows(
        client, sa.select(hostnames.c.label_skeleton).where(hostnames.c.host == f"apple.{BASE}")
    )
    assert again.label_skeleton == row.label_skeleton
    assert_error(claim(client, two, "squatter", f"{APPLE}.{BASE}"), 409, "hostname_confusable")


def test_the_check_survives_a_stored_label_that_does_not_decode(
    client: TestClient, two: dict[str, str]
) -> None:
    """A label stored before this check existed (here: written directly) is skipped, not a 500."""

    async def legacy(conn: AsyncConnection) -> None:
        svc = (
            await conn.execute(
                sa.text("SELECT id FROM services WHERE space_id = :s"), {"s": two["owner"]}
            )
        ).scalar_one()
        await conn.execute(
            sa.insert(hostnames).values(
                host=f"xn--abc.{BASE}",
                space_id=two["owner"],
                service_id=svc,
                verified=True,
                verify_token=new_id("x")[:32],
                created_at=now_ms(),
            )
        )

    sql(client, legacy)
    assert claim(client, two, "squatter", f"{APPLE}.{BASE}").status_code == 201


def test_without_pyicu_xn_labels_are_refused_and_ascii_claims_still_work(
    client: TestClient, two: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `idn` extra missing: fail closed for new xn-- labels (503), ASCII names unaffected,
    and invalid A-labels still get their 422."""
    from admin import idn
    from admin.api import services

    assert idn.skeleton_key(APPLE, checker=None) is None
    monkeypatch.setattr(services, "skeleton_key", lambda label: idn.skeleton_key(label, None))
    err = assert_error(claim(client, two, "squatter", f"{APPLE}.{BASE}"), 503, "idn_unavailable")
    assert "turnout[idn]" in err["message"]
    assert not rows(client, sa.select(hostnames).where(hostnames.c.host.contains(APPLE)))
    assert claim(client, two, "owner", f"apple.{BASE}").status_code == 201
    assert_error(claim(client, two, "owner", f"xn--abc.{BASE}"), 422, "validation_failed")
    monkeypatch.undo()
    # With the check back, the row claimed meanwhile (no stored key) is computed on the fly.
    assert_error(claim(client, two, "squatter", f"{APPLE}.{BASE}"), 409, "hostname_confusable")
