"""The runtime mirror of a pod: ``{prefix}:pods:<space>:<name>`` in the runtime state.

Derived, never authority. The admin writes a pod's mirror after every committed change to it
(:meth:`PodMirror.write`, run by the request's after-commit hook); ``check`` reads it for speed.
A mirror is believed only when all of these hold, and otherwise the answer is computed from SQL
and the mirror rewritten:

* it decodes (JSON of the expected shape), names this space and pod, and its key id is still in
  the key ring;
* its MAC verifies: HMAC-SHA256 over the canonical JSON of ``(space, pod, version, content)``
  with a key derived from the admin key ring (``KeyRing.derive_key("pod-mirror")``);
* its ``version`` equals ``pods.version``, which the check reads from SQL (one primary-key read).

Why both a version and a MAC. The version catches a mirror that is merely behind: a write lost
between commit and Redis (a crash, an outage), or two post-commit writes landing out of order. It
cannot catch a mirror edited by hand to a well-formed but wrong value with the right version —
the MAC does, and without the admin's key nobody can forge one. A key rotation makes old mirrors
fail once the old key leaves the ring; they are then repaired one check at a time (or all at
once by ``pods:rebuild``). ``turnout dev`` keeps mirrors in the in-process runtime state.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Final

import orjson

from admin.crypto import CryptoError, KeyRing
from admin.pods.algebra import Layer, Origin, Rule, Scope, ScopeError, parse_rule
from admin.pods.records import PodState
from routing.runtime_state import RuntimeState

MIRROR_VERSION: Final = 1
_MAC_PREFIX: Final = b"turnout/pod-mirror/v1\0"
_PURPOSE: Final = "pod-mirror"


@dataclass(frozen=True, slots=True)
class MirrorRecord:
    """What a pod's mirror holds (``data``), ready to encode."""

    space_id: str
    name: str
    pod_id: str
    version: int
    state: str
    segment_id: str | None
    lease_id: str | None
    scope: Scope

    def data(self) -> dict[str, Any]:
        return {
            "v": MIRROR_VERSION,
            "space": self.space_id,
            "name": self.name,
            "pod_id": self.pod_id,
            "version": self.version,
            "state": self.state,
            "segment_id": self.segment_id,
            "lease_id": self.lease_id,
            "scope": self.scope.to_json(),
        }


def record_of(state: PodState) -> MirrorRecord:
    """The mirror a pod's SQL state implies."""
    return MirrorRecord(
        space_id=state.pod.space_id,
        name=state.pod.name,
        pod_id=state.pod.id,
        version=state.pod.version,
        state=state.status(),
        segment_id=state.pod.segment_id,
        lease_id=state.lease.id if state.lease is not None else None,
        scope=state.effective(),
    )


def scope_from_json(obj: Any) -> Scope:
    """The inverse of :meth:`Scope.to_json` (deny layers keep their origin); ScopeError."""
    if not isinstance(obj, dict) or not isinstance(obj.get("allow"), list):
        raise ScopeError("scope", "must be an object with allow and deny lists")
    deny = obj.get("deny")
    if not isinstance(deny, list):
        raise ScopeError("scope.deny", "must be a list")
    allow = tuple(parse_rule(r, f"scope.allow[{i}]") for i, r in enumerate(obj["allow"]))
    layers: list[Layer] = []
    for i, item in enumerate(deny):
        if not isinstance(item, dict):
            raise ScopeError(f"scope.deny[{i}]", "must be an object")
        fields = {k: item[k] for k in ("target", "permission", "recursive") if k in item}
        rule: Rule = parse_rule(fields, f"scope.deny[{i}]")
        try:
            origin = Origin(str(item.get("origin")))
        except ValueError:
            raise ScopeError(f"scope.deny[{i}].origin", "unknown origin") from None
        layers.append(Layer(rule, origin, item.get("edge_id"), item.get("child")))
    return Scope(allow, tuple(layers))


@dataclass(frozen=True, slots=True)
class MirrorRead:
    record: MirrorRecord | None
    problem: str | None  # None | "miss" | "undecodable" | "bad_mac" | "unknown_key" | "mismatch"


class PodMirror:
    """Encode, sign, write, read and verify pod mirrors in a :class:`RuntimeState`."""

    def __init__(self, runtime: RuntimeState, ring: KeyRing) -> None:
        self.runtime = runtime
        self.ring = ring
        self._keys: dict[str, bytes] = {}

    def key(self, space_id: str, name: str) -> str:
        return self.runtime.keys.pod(space_id, name)

    def pattern(self, space_id: str) -> str:
        """A SCAN pattern for every mirror of the space. Space ids are generated (letters,
        digits, ``_``), so the prefix holds no glob character to escape."""
        if any(c in space_id for c in "*?[]\\"):
            raise ValueError(f"space id {space_id!r} holds a glob character")
        return self.key(space_id, "") + "*"

    def _mac_key(self, kid: str) -> bytes:
        key = self._keys.get(kid)
        if key is None:
            key = self.ring.derive_key(_PURPOSE, kid).reveal()
            self._keys[kid] = key
        return key

    @staticmethod
    def _mac(key: bytes, data: dict[str, Any]) -> bytes:
        body = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
        return hmac.new(key, _MAC_PREFIX + body, hashlib.sha256).digest()

    def encode(self, record: MirrorRecord) -> bytes:
        kid = self.ring.active_kid
        data = record.data()
        mac = self._mac(self._mac_key(kid), data)
        return orjson.dumps(
            {"kid": kid, "mac": base64.urlsafe_b64encode(mac).decode(), "data": data}
        )

    def decode(self, raw: bytes, space_id: str, name: str) -> MirrorRead:
        try:
            outer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return MirrorRead(None, "undecodable")
        if not isinstance(outer, dict) or not isinstance(outer.get("data"), dict):
            return MirrorRead(None, "undecodable")
        kid, mac, data = outer.get("kid"), outer.get("mac"), outer["data"]
        if not isinstance(kid, str) or not isinstance(mac, str) or kid not in self.ring:
            return MirrorRead(None, "unknown_key")
        try:
            key = self._mac_key(kid)
            given = base64.urlsafe_b64decode(mac.encode())
        except (CryptoError, ValueError):
            return MirrorRead(None, "bad_mac")
        if not hmac.compare_digest(given, self._mac(key, data)):
            return MirrorRead(None, "bad_mac")
        if data.get("space") != space_id or data.get("name") != name:
            return MirrorRead(None, "mismatch")  # a valid mirror of another pod, copied here
        try:
            record = MirrorRecord(
                space_id=space_id,
                name=name,
                pod_id=str(data["pod_id"]),
                version=int(data["version"]),
                state=str(data["state"]),
                segment_id=data.get("segment_id"),
                lease_id=data.get("lease_id"),
                scope=scope_from_json(data["scope"]),
            )
        except (KeyError, TypeError, ValueError):
            return MirrorRead(None, "undecodable")
        return MirrorRead(record, None)

    async def read(self, space_id: str, name: str) -> MirrorRead:
        """The pod's mirror if it verifies (``StoreError`` when the store is unreachable)."""
        raw = await self.runtime.get(self.key(space_id, name))
        if raw is None:
            return MirrorRead(None, "miss")
        return self.decode(raw, space_id, name)

    async def write(self, record: MirrorRecord) -> None:
        await self.runtime.set(self.key(record.space_id, record.name), self.encode(record))

    async def raw(self, space_id: str, name: str) -> bytes | None:
        return await self.runtime.get(self.key(space_id, name))

    async def delete_keys(self, keys: list[str]) -> int:
        return await self.runtime.delete(*keys)

    async def keys_of_space(self, space_id: str) -> list[str]:
        return await self.runtime.scan(self.pattern(space_id))

    def __repr__(self) -> str:
        return f"PodMirror({self.runtime!r})"
