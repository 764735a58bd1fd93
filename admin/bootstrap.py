"""First start: the system principal, the system space, and a token to begin with.

``turnout admin init`` (and the test harness) call :func:`bootstrap`. It is idempotent in what it
creates — one system principal, one system space, whatever the number of runs — and issues one
new ``*`` token per run, so a lost bootstrap token is replaced by running ``init`` again (revoke
the old one through ``DELETE /api/tokens/{id}`` if it may have leaked).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from admin.auth import insert_token
from admin.db import memberships, new_id, now_ms, principals, spaces

SYSTEM_NAME = "system"


@dataclass(frozen=True, slots=True)
class Bootstrap:
    principal_id: str
    space_id: str
    token_id: str
    token: str = field(repr=False)  # the plaintext, shown once
    created: bool  # False when the principal and space already existed


async def bootstrap_system(engine: AsyncEngine, *, name: str = "bootstrap") -> Bootstrap:
    """Ensure the system principal and space exist; issue a new ``*`` token for the principal."""
    async with engine.begin() as conn:
        now = now_ms()
        created = False
        pid = (
            await conn.execute(
                sa.select(principals.c.id)
                .where(principals.c.kind == "system")
                .order_by(principals.c.id)
                .limit(1)
            )
        ).scalar()
        if pid is None:
            pid, created = new_id("prn"), True
            await conn.execute(
                sa.insert(principals).values(
                    id=pid, kind="system", name=SYSTEM_NAME, created_at=now
                )
            )
        sid = (
            await conn.execute(
                sa.select(spaces.c.id)
                .where(spaces.c.kind == "system")
                .order_by(spaces.c.id)
                .limit(1)
            )
        ).scalar()
        if sid is None:
            sid, created = new_id("spc"), True
            await conn.execute(
                sa.insert(spaces).values(
                    id=sid, kind="system", name=SYSTEM_NAME, created_at=now, updated_at=now
                )
            )
            await conn.execute(
                sa.insert(memberships).values(
                    space_id=sid, principal_id=pid, role="owner", created_at=now
                )
            )
        token_id, token, _ = await insert_token(conn, principal_id=pid, name=name, scopes=["*"])
    return Bootstrap(
        principal_id=str(pid), space_id=str(sid), token_id=token_id, token=token, created=created
    )


async def bootstrap(engine: AsyncEngine, *, name: str = "bootstrap") -> str:
    """:func:`bootstrap_system`, returning just the new token's plaintext (``name``: the token's)."""
    return (await bootstrap_system(engine, name=name)).token
