"""Throwaway databases on the machine's PostgreSQL (127.0.0.1:5432, user ``postgres``, trust
auth): created for a test or a benchmark run and dropped afterwards, whatever happens."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterator

import asyncpg

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_ERRORS = (TimeoutError, OSError, asyncpg.PostgresError)


async def _pg_admin(statement: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@contextlib.contextmanager
def pg_database(prefix: str = "turnout_test") -> Iterator[str]:
    """A new database; yields its ``postgresql+asyncpg://`` URL and drops it on exit (also
    with connections still open). Raises one of :data:`PG_ERRORS` when PostgreSQL is not
    reachable."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
