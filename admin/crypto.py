"""Secret envelopes for snapshots: AES-256-GCM under a key ring with key ids.

Theory of operation. The key ring (``TURNOUT_KEYS``) holds one or more 32-byte keys, each named by
a key id (*kid*); exactly one is *active*. :func:`encrypt` always uses the active key and writes the
kid into the envelope ``{"v": 2, "kid", "alg": "AES-256-GCM", "nonce", "ct"}``; :func:`decrypt`
picks the key by the envelope's kid, so a ring that still lists the old kids reads every envelope
written before a rotation, and :func:`needs_rekey` tells ``turnout admin rekey`` which envelopes to
re-encrypt under the new active key (:func:`rekey`).

The associated data binds each ciphertext to the snapshot id and field name it was written for
(``b"turnout/v2\\0" + snapshot_id + b"\\0" + field``): a ciphertext copied to another snapshot or
another field fails authentication instead of silently decrypting there.

Nothing in this module puts plaintext or key material into an exception message or a ``repr``:
keys and decrypted values are wrapped in :class:`Secret`, and errors name only envelope fields,
key ids and entry positions.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from typing import Any, Final, Generic, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ENVELOPE_VERSION: Final = 2
ALGORITHM: Final = "AES-256-GCM"
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
_AAD_PREFIX: Final = b"turnout/v2\0"
_ENVELOPE_FIELDS: Final = ("v", "kid", "alg", "nonce", "ct")
_KID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_ENTRY_SPLIT = re.compile(r"[,\s]+")
_B64_CHARS = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")

Envelope = dict[str, Any]
"""A JSON-ready envelope: ``{"v": 2, "kid", "alg", "nonce", "ct"}`` (nonce and ct in base64)."""

_S = TypeVar("_S", str, bytes)


class CryptoError(Exception):
    """Encryption or decryption failed; the message never holds plaintext or key material."""


class KeyRingError(CryptoError, ValueError):
    """``TURNOUT_KEYS`` is malformed; the message names the entry, never its key."""


class Secret(Generic[_S]):
    """A value that must not leak into logs: ``repr``/``str`` show ``Secret('****')``.

    Call :meth:`reveal` at the one place the value is really needed.
    """

    __slots__ = ("_value",)
    _value: _S

    def __init__(self, value: _S) -> None:
        self._value = value

    def reveal(self) -> _S:
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        mine: str | bytes = self._value
        theirs: str | bytes = other._value
        if type(mine) is not type(theirs):
            return False
        a = mine.encode() if isinstance(mine, str) else mine
        b = theirs.encode() if isinstance(theirs, str) else theirs
        return hmac.compare_digest(a, b)

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> Any:
        # Pickling would copy the plaintext somewhere this class no longer guards.
        raise TypeError("Secret values cannot be pickled")


class KeyRing:
    """Named AES-256 keys, one of them active (the one :func:`encrypt` uses)."""

    __slots__ = ("_active", "_aeads", "_kids", "_raw")

    def __init__(self, keys: Mapping[str, bytes | Secret[bytes]], active_kid: str) -> None:
        if not keys:
            raise KeyRingError("key ring is empty: at least one key is required")
        aeads: dict[str, AESGCM] = {}
        raws: dict[str, Secret[bytes]] = {}
        for kid, key in keys.items():
            if not isinstance(kid, str) or not _KID.fullmatch(kid):
                raise KeyRingError(f"invalid key id {_safe_id(kid)}: use 1-32 of A-Z a-z 0-9 _ -")
            raw = key.reveal() if isinstance(key, Secret) else key
            if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
                length = len(raw) if isinstance(raw, bytes) else type(raw).__name__
                raise KeyRingError(f"key {kid!r} must be {KEY_BYTES} bytes, got {length}")
            aeads[kid] = AESGCM(raw)
            raws[kid] = Secret(raw)
        if active_kid not in aeads:
            raise KeyRingError(f"active key id {_safe_id(active_kid)} is not in the ring")
        self._aeads = aeads
        self._raw = raws
        self._kids = tuple(aeads)
        self._active = active_kid

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        """Parse ``TURNOUT_KEYS``: ``*kid:base64key, kid:base64key ...`` (``*`` marks active).

        Entries are separated by commas and/or whitespace; keys are 32 bytes in standard or
        URL-safe base64 (padding optional). With a single key the ``*`` may be omitted.
        """
        entries = [e for e in _ENTRY_SPLIT.split(text.strip()) if e] if text else []
        if not entries:
            raise KeyRingError("TURNOUT_KEYS is empty: expected '*kid:base64key[, kid:base64key]'")
        keys: dict[str, bytes] = {}
        active: list[str] = []
        for index, entry in enumerate(entries, start=1):
            marked = entry.startswith("*")
            body = entry[1:] if marked else entry
            kid, sep, encoded = body.partition(":")
            if not sep:
                raise KeyRingError(f"entry {index}: expected 'kid:base64key'")
            if not _KID.fullmatch(kid):
                # The "kid" may be key material pasted in the wrong place: name the position only.
                raise KeyRingError(
                    f"entry {index}: invalid key id (use 1-32 of A-Z a-z 0-9 _ -, then ':')"
                )
            where = f"entry {index} (kid {kid!r})"
            if kid in keys:
                raise KeyRingError(f"{where}: duplicate key id")
            if not encoded:
                raise KeyRingError(f"{where}: the key is empty")
            key = _b64decode(encoded)
            if key is None:
                raise KeyRingError(f"{where}: the key is not valid base64")
            if len(key) != KEY_BYTES:
                raise KeyRingError(
                    f"{where}: the key must decode to {KEY_BYTES} bytes, got {len(key)}"
                )
            keys[kid] = key
            if marked:
                active.append(kid)
        if len(active) > 1:
            raise KeyRingError(
                f"several active keys ({', '.join(map(repr, active))}): mark exactly one with '*'"
            )
        if not active:
            if len(keys) > 1:
                raise KeyRingError("no active key: mark exactly one entry with a leading '*'")
            active = list(keys)
        return cls(keys, active[0])

    @staticmethod
    def generate_key(kid: str | None = None) -> str:
        """A fresh ``kid:base64key`` entry for ``TURNOUT_KEYS`` (prefix it with ``*`` to activate)."""
        if kid is None:
            kid = f"k{secrets.token_hex(4)}"
        elif not _KID.fullmatch(kid):
            raise KeyRingError(f"invalid key id {_safe_id(kid)}: use 1-32 of A-Z a-z 0-9 _ -")
        return f"{kid}:{base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()}"

    @property
    def active_kid(self) -> str:
        return self._active

    @property
    def kids(self) -> tuple[str, ...]:
        """Every key id, in ring order."""
        return self._kids

    def __contains__(self, kid: object) -> bool:
        return kid in self._aeads

    def __len__(self) -> int:
        return len(self._kids)

    def __repr__(self) -> str:
        return f"KeyRing(active={self._active!r}, kids={self._kids!r})"

    def derive_key(self, purpose: str, kid: str | None = None) -> Secret[bytes]:
        """A 32-byte key for ``purpose`` derived (HKDF-SHA256) from the key ``kid`` (default:
        the active one) — for MACs over derived data such as runtime mirrors, never the
        envelope key itself. Distinct purposes give independent keys."""
        kid = self._active if kid is None else kid
        if kid not in self._raw:
            raise CryptoError(f"unknown key id {_safe_id(kid)}")
        if not purpose:
            raise CryptoError("purpose must be a non-empty string")
        hkdf = HKDF(
            hashes.SHA256(), length=KEY_BYTES, salt=None, info=b"turnout/" + purpose.encode()
        )
        return Secret(hkdf.derive(self._raw[kid].reveal()))

    def _aead(self, kid: str) -> AESGCM:
        try:
            return self._aeads[kid]
        except KeyError:
            raise CryptoError(f"envelope.kid: unknown key id {kid!r}") from None


# --------------------------------------------------------------------------------- envelopes


def encrypt(
    ring: KeyRing, plaintext: str | Secret[str], *, snapshot_id: str, field: str
) -> Envelope:
    """Encrypt ``plaintext`` under the ring's active key, bound to ``snapshot_id`` and ``field``."""
    value = plaintext.reveal() if isinstance(plaintext, Secret) else plaintext
    if not isinstance(value, str):
        raise CryptoError(f"{field}: plaintext must be a string, not {type(value).__name__}")
    aad = _associated_data(snapshot_id, field)
    nonce = os.urandom(NONCE_BYTES)
    ct = ring._aead(ring.active_kid).encrypt(nonce, value.encode("utf-8"), aad)
    return {
        "v": ENVELOPE_VERSION,
        "kid": ring.active_kid,
        "alg": ALGORITHM,
        "nonce": base64.b64encode(nonce).decode("ascii"),
        "ct": base64.b64encode(ct).decode("ascii"),
    }


def decrypt(ring: KeyRing, envelope: object, *, snapshot_id: str, field: str) -> Secret[str]:
    """Decrypt an envelope written for ``snapshot_id``/``field``; raise :class:`CryptoError`."""
    kid, nonce, ct = _parse_envelope(envelope)
    aead = ring._aead(kid)
    aad = _associated_data(snapshot_id, field)
    try:
        data = aead.decrypt(nonce, ct, aad)
    except InvalidTag:
        raise CryptoError(
            f"{field}: authentication failed (wrong key, tampered ciphertext, "
            "or a ciphertext moved from another snapshot or field)"
        ) from None
    try:
        return Secret(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise CryptoError(f"{field}: decrypted value is not UTF-8") from None


def needs_rekey(ring: KeyRing, envelope: object) -> bool:
    """True when ``envelope`` was written under a key other than the ring's active one."""
    kid, _, _ = _parse_envelope(envelope)
    return kid != ring.active_kid


def rekey(ring: KeyRing, envelope: object, *, snapshot_id: str, field: str) -> Envelope:
    """Re-encrypt ``envelope`` under the active key (a fresh nonce); same binding."""
    secret = decrypt(ring, envelope, snapshot_id=snapshot_id, field=field)
    return encrypt(ring, secret, snapshot_id=snapshot_id, field=field)


def encrypt_map(
    ring: KeyRing, values: Mapping[str, str | Secret[str]], snapshot_id: str, prefix: str
) -> dict[str, Envelope]:
    """Encrypt each value with field name ``f"{prefix}.{name}"`` (e.g. ``env.DATABASE_URL``)."""
    return {
        name: encrypt(ring, value, snapshot_id=snapshot_id, field=f"{prefix}.{name}")
        for name, value in values.items()
    }


def decrypt_map(
    ring: KeyRing, envelopes: Mapping[str, object], snapshot_id: str, prefix: str
) -> dict[str, Secret[str]]:
    """Inverse of :func:`encrypt_map`."""
    return {
        name: decrypt(ring, env, snapshot_id=snapshot_id, field=f"{prefix}.{name}")
        for name, env in envelopes.items()
    }


def mask(value: str | Secret[str]) -> str:
    """What reads return instead of a secret: ``ab****yz`` for values over 8 chars, else ``****``."""
    raw = value.reveal() if isinstance(value, Secret) else value
    if len(raw) > 8:
        return f"{raw[:2]}****{raw[-2:]}"
    return "****"


def mask_map(values: Mapping[str, str | Secret[str]]) -> dict[str, str]:
    return {name: mask(value) for name, value in values.items()}


# --------------------------------------------------------------------------------- helpers


def _associated_data(snapshot_id: str, field: str) -> bytes:
    # NUL separates the parts, so it may not occur inside them ("a\0b" + "c" vs "a" + "b\0c").
    for name, part in (("snapshot_id", snapshot_id), ("field", field)):
        if not isinstance(part, str) or not part:
            raise CryptoError(f"{name} must be a non-empty string")
        if "\0" in part:
            raise CryptoError(f"{name} must not contain NUL")
    return _AAD_PREFIX + snapshot_id.encode("utf-8") + b"\0" + field.encode("utf-8")


def _parse_envelope(envelope: object) -> tuple[str, bytes, bytes]:
    if not isinstance(envelope, Mapping):
        raise CryptoError(f"envelope must be an object, not {type(envelope).__name__}")
    for key in envelope:
        if key not in _ENVELOPE_FIELDS:
            name = key if isinstance(key, str) and _KID.fullmatch(key) else "(invalid name)"
            raise CryptoError(f"envelope.{name}: unknown field")
    for key in _ENVELOPE_FIELDS:
        if key not in envelope:
            raise CryptoError(f"envelope.{key}: is required")
    version = envelope["v"]
    if isinstance(version, bool) or version != ENVELOPE_VERSION:
        raise CryptoError(f"envelope.v: unsupported version (expected {ENVELOPE_VERSION})")
    if envelope["alg"] != ALGORITHM:
        raise CryptoError(f"envelope.alg: unsupported algorithm (expected {ALGORITHM!r})")
    kid = envelope["kid"]
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise CryptoError("envelope.kid: must be a key id string")
    nonce = _b64field(envelope["nonce"], "nonce")
    if len(nonce) != NONCE_BYTES:
        raise CryptoError(f"envelope.nonce: must be {NONCE_BYTES} bytes, got {len(nonce)}")
    ct = _b64field(envelope["ct"], "ct")
    if len(ct) < TAG_BYTES:
        raise CryptoError(f"envelope.ct: too short to hold the {TAG_BYTES}-byte tag")
    return kid, nonce, ct


def _b64field(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise CryptoError(f"envelope.{name}: must be a base64 string")
    data = _b64decode(value)
    if data is None:
        raise CryptoError(f"envelope.{name}: not valid base64")
    return data


def _b64decode(text: str) -> bytes | None:
    """Standard or URL-safe base64, padding optional; ``None`` when malformed."""
    if not _B64_CHARS.fullmatch(text):
        return None
    body = text.rstrip("=").translate(str.maketrans("-_", "+/"))
    if len(body) % 4 == 1:
        return None
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _safe_id(value: object) -> str:
    """A short printable rendering of an untrusted id for error messages."""
    if isinstance(value, str) and _KID.fullmatch(value):
        return repr(value)
    return "(invalid)" if isinstance(value, str) else f"({type(value).__name__})"
