"""A space's common env: variables every service of the space gets at its next deployment.

Entries are ``{name, value, secret}``; values are encrypted at rest with the snapshot crypto
(:mod:`admin.crypto`, AES-256-GCM under the key ring), each envelope bound to the space and
the entry's name (``common-env:<space>`` / ``common_env.<name>``), so one copied to another
space or name fails to decrypt. Reads return masked values only.

At deploy time :func:`merge` lays them *under* the service's own maps: a plain entry joins
``env``, a secret one joins ``secrets``, and a name the service declares itself (in either map)
keeps the service's value. The snapshot records where each key came from (``config.sources``),
and keeps its own encrypted copy: changing common env affects the next deployment only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from admin.crypto import CryptoError, KeyRing, Secret, decrypt, encrypt
from admin.db import common_env
from admin.errors import Conflict

FIELD_PREFIX = "common_env"


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    value: Secret[str]
    secret: bool


def binding(space_id: str) -> str:
    """The id the envelopes of a space's common env are bound to (AES-GCM associated data)."""
    return f"common-env:{space_id}"


async def load(conn: AsyncConnection, ring: KeyRing, space_id: str) -> list[Entry]:
    """The space's entries, decrypted (values stay wrapped in :class:`Secret`), by name."""
    rows = (
        await conn.execute(
            sa.select(common_env)
            .where(common_env.c.space_id == space_id)
            .order_by(common_env.c.name)
        )
    ).all()
    out = []
    for row in rows:
        try:
            value = decrypt(
                ring,
                orjson.loads(row.value),
                snapshot_id=binding(space_id),
                field=f"{FIELD_PREFIX}.{row.name}",
            )
        except (CryptoError, orjson.JSONDecodeError) as exc:
            reason = exc if isinstance(exc, CryptoError) else "not valid JSON"
            raise Conflict(
                f"common env {row.name} cannot be decrypted: {reason}", code="common_env_corrupt"
            ) from None
        out.append(Entry(row.name, value, bool(row.secret)))
    return out


async def replace(
    conn: AsyncConnection,
    ring: KeyRing,
    space_id: str,
    entries: list[tuple[str, str, bool]],
    now: int,
) -> None:
    """Replace the space's whole common env with ``(name, value, secret)`` entries."""
    await conn.execute(sa.delete(common_env).where(common_env.c.space_id == space_id))
    for name, value, secret in entries:
        envelope = encrypt(
            ring, value, snapshot_id=binding(space_id), field=f"{FIELD_PREFIX}.{name}"
        )
        await conn.execute(
            sa.insert(common_env).values(
                space_id=space_id,
                name=name,
                value=orjson.dumps(envelope).decode(),
                secret=secret,
                updated_at=now,
            )
        )


async def etag_of(conn: AsyncConnection, space_id: str) -> str:
    """An ETag of the stored set: it changes with every PUT (fresh nonces)."""
    rows = (
        await conn.execute(
            sa.select(common_env.c.name, common_env.c.value, common_env.c.secret)
            .where(common_env.c.space_id == space_id)
            .order_by(common_env.c.name)
        )
    ).all()
    digest = hashlib.sha256(orjson.dumps([[r.name, r.value, bool(r.secret)] for r in rows]))
    return f'"cenv.{digest.hexdigest()[:24]}"'


def merge(
    common: list[Entry],
    env: Mapping[str, str | Secret[str]],
    secrets: Mapping[str, str | Secret[str]],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, str]]]:
    """``(env, secrets, sources)``: the service's maps with common entries laid under them;
    ``sources[part][name]`` is ``"service"`` or ``"common"``."""
    own = set(env) | set(secrets)
    merged_env: dict[str, Any] = {}
    merged_secrets: dict[str, Any] = {}
    sources: dict[str, dict[str, str]] = {"env": {}, "secrets": {}}
    for entry in common:
        if entry.name in own:
            continue
        part, target = ("secrets", merged_secrets) if entry.secret else ("env", merged_env)
        target[entry.name] = entry.value
        sources[part][entry.name] = "common"
    for part, values, target in (("env", env, merged_env), ("secrets", secrets, merged_secrets)):
        for name, value in values.items():
            target[name] = value
            sources[part][name] = "service"
    return merged_env, merged_secrets, sources
