"""``turnout admin rekey``: re-encrypt every snapshot envelope — and every space's common env
(:mod:`admin.common_env`, counted with them in ``envelopes_*``) — under the active key.

Resumable and safe to interrupt: snapshots are processed in id order in small batches, each
batch in its own transaction, and only envelopes whose kid is not the active one are touched
(running it again continues where it stopped and reports the rest as already current).
The old key must stay in ``TURNOUT_KEYS`` until this has finished.
"""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa

from admin import common_env as cenv
from admin.crypto import needs_rekey, rekey
from admin.db import common_env, make_engine, snapshots
from admin.migrate import upgrade
from admin.settings import Settings

PARTS = ("env", "secrets", "bindings")


async def run_rekey(settings: Settings, batch: int = 200) -> dict[str, Any]:
    ring = settings.require_keys()
    engine = make_engine(settings.db_url)
    counts: dict[str, Any] = {
        "snapshots": 0,
        "snapshots_changed": 0,
        "envelopes_rekeyed": 0,
        "envelopes_current": 0,
        "active_kid": ring.active_kid,
    }
    try:
        await upgrade(engine)
        after = ""
        while True:
            async with engine.begin() as conn:
                rows = (
                    await conn.execute(
                        sa.select(snapshots.c.id, snapshots.c.secrets)
                        .where(snapshots.c.id > after)
                        .order_by(snapshots.c.id)
                        .limit(batch)
                    )
                ).all()
                if not rows:
                    break
                for row in rows:
                    counts["snapshots"] += 1
                    sealed = orjson.loads(row.secrets)
                    changed = False
                    for part in PARTS:
                        for name, env in dict(sealed.get(part, {})).items():
                            if needs_rekey(ring, env):
                                sealed[part][name] = rekey(
                                    ring, env, snapshot_id=row.id, field=f"{part}.{name}"
                                )
                                counts["envelopes_rekeyed"] += 1
                                changed = True
                            else:
                                counts["envelopes_current"] += 1
                    if changed:
                        counts["snapshots_changed"] += 1
                        await conn.execute(
                            sa.update(snapshots)
                            .where(snapshots.c.id == row.id)
                            .values(secrets=orjson.dumps(sealed).decode())
                        )
                after = rows[-1].id
        async with engine.begin() as conn:
            entries = (
                await conn.execute(
                    sa.select(common_env.c.space_id, common_env.c.name, common_env.c.value)
                )
            ).all()
            for e in entries:
                envelope = orjson.loads(e.value)
                if not needs_rekey(ring, envelope):
                    counts["envelopes_current"] += 1
                    continue
                fresh = rekey(
                    ring,
                    envelope,
                    snapshot_id=cenv.binding(e.space_id),
                    field=f"{cenv.FIELD_PREFIX}.{e.name}",
                )
                await conn.execute(
                    sa.update(common_env)
                    .where(common_env.c.space_id == e.space_id, common_env.c.name == e.name)
                    .values(value=orjson.dumps(fresh).decode())
                )
                counts["envelopes_rekeyed"] += 1
    finally:
        await engine.dispose()
    return counts
