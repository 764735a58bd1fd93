"""Snapshot secret envelopes: round trips, binding, tampering, rotation, key ring parsing."""

from __future__ import annotations

import base64
import copy
import pickle
from typing import Any

import pytest

from admin.crypto import (
    ALGORITHM,
    CryptoError,
    KeyRing,
    KeyRingError,
    Secret,
    decrypt,
    decrypt_map,
    encrypt,
    encrypt_map,
    mask,
    mask_map,
    needs_rekey,
    rekey,
)

KEY1 = base64.b64encode(bytes(range(32))).decode()
KEY2 = base64.b64encode(bytes(range(100, 132))).decode()
KEY2_URLSAFE = base64.urlsafe_b64encode(bytes(range(200, 232))).decode()
SNAP = "snap-1"
FIELD = "env.DATABASE_URL"
PLAIN = "postgres://user:hunter2@db:5432/app"


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.parse(f"k1:{KEY1}")


def _flip(b64: str, index: int) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


# --------------------------------------------------------------------------------- envelopes


def test_round_trip(ring: KeyRing) -> None:
    env = encrypt(ring, PLAIN, snapshot_id=SNAP, field=FIELD)
    assert set(env) == {"v", "kid", "alg", "nonce", "ct"}
    assert env["v"] == 2
    assert env["kid"] == "k1"
    assert env["alg"] == ALGORITHM == "AES-256-GCM"
    assert len(base64.b64decode(env["nonce"])) == 12
    assert PLAIN not in str(env)
    secret = decrypt(ring, env, snapshot_id=SNAP, field=FIELD)
    assert isinstance(secret, Secret)
    assert secret.reveal() == PLAIN


def test_round_trip_unicode_and_empty(ring: KeyRing) -> None:
    for value in ("", "pässwörd ✓ 秘密"):
        env = encrypt(ring, value, snapshot_id=SNAP, field=FIELD)
        assert decrypt(ring, env, snapshot_id=SNAP, field=FIELD).reveal() == value


def test_encrypt_accepts_secret(ring: KeyRing) -> None:
    env = encrypt(ring, Secret(PLAIN), snapshot_id=SNAP, field=FIELD)
    assert decrypt(ring, env, snapshot_id=SNAP, field=FIELD).reveal() == PLAIN


def test_nonce_is_fresh_per_encryption(ring: KeyRing) -> None:
    a = encrypt(ring, PLAIN, snapshot_id=SNAP, field=FIELD)
    b = encrypt(ring, PLAIN, snapshot_id=SNAP, field=FIELD)
    assert a["nonce"] != b["nonce"]
    assert a["ct"] != b["ct"]


def test_tampered_ciphertext_fails(ring: KeyRing) -> None:
    env = encrypt(ring, PLAIN, snapshot_id=SNAP, field=FIELD)
    for index in (0, 5, -1):  # body bytes and the tag
        bad = dict(env, ct=_flip(env["ct"], index))
        with pytest.raises(CryptoError, match="authentication failed") as info:
            decrypt(ring, bad, snapshot_id=SNAP, field=FIELD)
        assert PLAIN not in str(info.value)


def test_tampered_nonce_fails(ring: KeyRing) -> None:
    env = encrypt(ring, PLAIN, snapshot_id=SNAP, field=FIELD)
    bad = dict(env, nonce=_flip(env["nonce"], 3))
    with pytest.raises(CryptoError, match="authentication failed"):
        decrypt(ring, bad, snapshot_id=SNAP, field=FIELD)


def test_ciphertext_moved_to_other_snapshot_fails(ring: KeyRing) -> None:
    env = encrypt(ring, PLAIN, snapshot_id=SNAP, field=FIELD)
    with pytest.raises(CryptoError, match="authentication failed"):
        decrypt(ring, env, snapshot_id="snap-2", field=FIELD)


def test_ciphertext_moved_to_other_field_fails(ring: KeyRing) -> None:
    env = encrypt(ring, PLAIN, snapshot_id=SNAP, field=FIELD)
    with pytest.raises(CryptoError, match="authentication failed"):
        decrypt(ring, env, snapshot_id=SNAP, field="env.OTHER")


def test_binding_parts_are_not_ambiguous(ring: KeyRing) -> None:
    with pytest.raises(CryptoError, match="NUL"):
        encrypt(ring, PLAIN, snapshot_id="a\0b", field="c")
    with pytest.raises(CryptoError, match="non-empty"):
        encrypt(ring, PLAIN, snapshot_id="", field=FIELD)


def test_unknown_kid(ring: KeyRing) -> None:
    other = KeyRing.parse(f"k9:{KEY2}")
    env = encrypt(other, PLAIN, snapshot_id=SNAP, field=FIELD)
    with pytest.raises(CryptoError, match="unknown key id 'k9'"):
        decrypt(ring, env, snapshot_id=SNAP, field=FIELD)


def test_same_kid_different_key_fails_authentication(ring: KeyRing) -> None:
    impostor = KeyRing.parse(f"k1:{KEY2}")
    env = encrypt(impostor, PLAIN, snapshot_id=SNAP, field=FIELD)
    with pytest.raises(CryptoError, match="authentication failed"):
        decrypt(ring, env, snapshot_id=SNAP, field=FIELD)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"v": 1}, "envelope.v"),
        ({"v": True}, "envelope.v"),
        ({"alg": "AES-128-CBC"}, "envelope.alg"),
        ({"kid": 7}, "envelope.kid"),
        ({"nonce": "not base64!"}, "envelope.nonce"),
        ({"nonce": base64.b64encode(b"short").decode()}, "envelope.nonce"),
        ({"nonce": 12}, "envelope.nonce"),
        ({"ct": "%%%"}, "envelope.ct"),
        ({"ct": base64.b64encode(b"tiny").decode()}, "envelope.ct"),
        ({"extra": 1}, "envelope.extra: unknown field"),
    ],
)
def test_malformed_envelope_names_field(
    ring: KeyRing, change: dict[str, Any], message: str
) -> None:
    env = encrypt(ring, PLAIN, snapshot_id=SNAP, field=FIELD)
    bad = {**env, **change}
    with pytest.raises(CryptoError, match=message):
        decrypt(ring, bad, snapshot_id=SNAP, field=FIELD)


def test_missing_envelope_field(ring: KeyRing) -> None:
    env = encrypt(ring, PLAIN, snapshot_id=SNAP, field=FIELD)
    del env["nonce"]
    with pytest.raises(CryptoError, match=r"envelope\.nonce: is required"):
        decrypt(ring, env, snapshot_id=SNAP, field=FIELD)


def test_envelope_must_be_object(ring: KeyRing) -> None:
    with pytest.raises(CryptoError, match="must be an object"):
        decrypt(ring, "not an envelope", snapshot_id=SNAP, field=FIELD)


# --------------------------------------------------------------------------------- rotation


def test_rotation_reads_old_envelopes_and_flags_rekey() -> None:
    old_ring = KeyRing.parse(f"k1:{KEY1}")
    old = encrypt(old_ring, PLAIN, snapshot_id=SNAP, field=FIELD)
    new_ring = KeyRing.parse(f"*k2:{KEY2}, k1:{KEY1}")
    assert new_ring.active_kid == "k2"
    assert decrypt(new_ring, old, snapshot_id=SNAP, field=FIELD).reveal() == PLAIN
    assert needs_rekey(new_ring, old)
    assert not needs_rekey(old_ring, old)

    fresh = rekey(new_ring, old, snapshot_id=SNAP, field=FIELD)
    assert fresh["kid"] == "k2"
    assert not needs_rekey(new_ring, fresh)
    assert decrypt(new_ring, fresh, snapshot_id=SNAP, field=FIELD).reveal() == PLAIN
    # After the old key is dropped from the ring, only the re-encrypted envelope still reads.
    final_ring = KeyRing.parse(f"k2:{KEY2}")
    assert decrypt(final_ring, fresh, snapshot_id=SNAP, field=FIELD).reveal() == PLAIN
    with pytest.raises(CryptoError, match="unknown key id 'k1'"):
        decrypt(final_ring, old, snapshot_id=SNAP, field=FIELD)


def test_needs_rekey_validates_envelope(ring: KeyRing) -> None:
    with pytest.raises(CryptoError, match="envelope"):
        needs_rekey(ring, {"kid": "k1"})


# --------------------------------------------------------------------------------- maps


def test_map_round_trip_binds_each_name(ring: KeyRing) -> None:
    values = {"API_KEY": "sk-live-abcdef123456", "TOKEN": "t0k3n"}
    envs = encrypt_map(ring, values, SNAP, "secrets")
    assert list(envs) == ["API_KEY", "TOKEN"]
    out = decrypt_map(ring, envs, SNAP, "secrets")
    assert {k: v.reveal() for k, v in out.items()} == values
    # Swapping two values between names is caught: each is bound to f"{prefix}.{name}".
    swapped = {"API_KEY": envs["TOKEN"], "TOKEN": envs["API_KEY"]}
    with pytest.raises(CryptoError, match=r"secrets\.API_KEY: authentication failed"):
        decrypt_map(ring, swapped, SNAP, "secrets")
    with pytest.raises(CryptoError, match="authentication failed"):
        decrypt_map(ring, envs, SNAP, "env")


# --------------------------------------------------------------------------------- key ring


def test_keyring_parse_forms() -> None:
    ring = KeyRing.parse(f"  *k2:{KEY2}\n k1:{KEY1},k3:{KEY2_URLSAFE.rstrip('=')} ")
    assert ring.active_kid == "k2"
    assert ring.kids == ("k2", "k1", "k3")
    assert "k3" in ring
    assert len(ring) == 3
    single = KeyRing.parse(f"only_one-1:{KEY1}")
    assert single.active_kid == "only_one-1"


def test_keyring_repr_hides_keys() -> None:
    ring = KeyRing.parse(f"*k2:{KEY2}, k1:{KEY1}")
    text = repr(ring)
    assert text == "KeyRing(active='k2', kids=('k2', 'k1'))"
    assert KEY1 not in text and KEY2 not in text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        (" , \n ", "empty"),
        ("k1:", "entry 1 \\(kid 'k1'\\): the key is empty"),
        (f"k1:{KEY1[:-4]}!!!!", "entry 1 \\(kid 'k1'\\): the key is not valid base64"),
        (f"k1:{KEY1}, k2:{KEY1[:20]}", "entry 2 \\(kid 'k2'\\): the key must decode to 32 bytes"),
        (f"*k1:{KEY1}, k1:{KEY2}", "entry 2 \\(kid 'k1'\\): duplicate key id"),
        (f"bad.kid:{KEY1}", "entry 1: invalid key id"),
        (f"{'k' * 33}:{KEY1}", "entry 1: invalid key id"),
        (f"*k1:{KEY1}, *k2:{KEY2}", "several active keys"),
        (f"k1:{KEY1}, k2:{KEY2}", "no active key"),
        (KEY1, "entry 1: expected 'kid:base64key'"),
    ],
)
def test_keyring_parse_errors(text: str, message: str) -> None:
    with pytest.raises(KeyRingError, match=message) as info:
        KeyRing.parse(text)
    assert isinstance(info.value, ValueError)
    rendered = f"{info.value} {info.value!r}"
    for key in (KEY1, KEY2, KEY1[:20], KEY1[:-4]):
        assert key not in rendered


def test_generate_key_round_trips() -> None:
    entry = KeyRing.generate_key()
    kid, _, key = entry.partition(":")
    assert len(base64.b64decode(key)) == 32
    ring = KeyRing.parse(entry)
    assert ring.active_kid == kid
    assert KeyRing.generate_key("k-2026").startswith("k-2026:")
    assert KeyRing.generate_key() != KeyRing.generate_key()
    with pytest.raises(KeyRingError):
        KeyRing.generate_key("bad kid")


def test_keyring_constructor_validates() -> None:
    with pytest.raises(KeyRingError, match="must be 32 bytes, got 16"):
        KeyRing({"k1": b"x" * 16}, "k1")
    with pytest.raises(KeyRingError, match="not in the ring"):
        KeyRing({"k1": b"x" * 32}, "k2")
    with pytest.raises(KeyRingError, match="empty"):
        KeyRing({}, "k1")
    assert KeyRing({"k1": Secret(b"x" * 32)}, "k1").active_kid == "k1"


# --------------------------------------------------------------------------------- Secret, mask


def test_secret_hides_value() -> None:
    secret = Secret("hunter2")
    assert repr(secret) == "Secret('****')"
    assert str(secret) == "Secret('****')"
    assert f"{secret}" == "Secret('****')"
    assert "hunter2" not in repr([secret, {"k": secret}])
    assert secret.reveal() == "hunter2"
    assert Secret(b"\x00" * 32).reveal() == b"\x00" * 32


def test_secret_equality_and_no_pickle() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != Secret(b"a")
    assert Secret("a") != "a"
    assert hash(Secret("a")) == hash(Secret("a"))
    with pytest.raises(TypeError):
        pickle.dumps(Secret("a"))
    with pytest.raises(TypeError):
        copy.copy(Secret("a"))


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("", "****"),
        ("a", "****"),
        ("12345678", "****"),  # exactly 8: fully masked
        ("123456789", "12****89"),  # 9: first 2 + last 2
        ("sk-live-abcdef123456", "sk****56"),
    ],
)
def test_mask(value: str, masked: str) -> None:
    assert mask(value) == masked
    assert mask(Secret(value)) == masked


def test_mask_map() -> None:
    assert mask_map({"A": "short", "B": Secret("long-enough-value")}) == {
        "A": "****",
        "B": "lo****ue",
    }
