"""PostgreSQL pool and schema migrations of the auth database.

Migrations are the plain SQL files in `migrations/` applied in file-name order, each in
its own transaction, recorded in `schema_migrations(version, applied_at)`. A session-level
advisory lock serialises concurrent starts (the second process waits, then finds
nothing left to apply).
"""

from __future__ import annotations

import logging
from pathlib import Path

import asyncpg

__all__ = ["MIGRATIONS_DIR", "apply_migrations", "create_pool"]

log = logging.getLogger("auth.db")
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_LOCK_KEY = 0x7417_A0_7E  # arbitrary constant: "throughline auth migrations"


async def create_pool(dsn: str) -> asyncpg.Pool:
    """A small pool with short timeouts: a dead server fails fast (503) and is reconnected lazily."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=10,
        timeout=3,  # connect timeout
        command_timeout=10,
        max_inactive_connection_lifetime=60,
    )
    assert pool is not None
    return pool


def _read_migrations(directory: Path) -> list[tuple[str, str]]:
    return [(path.stem, path.read_text()) for path in sorted(directory.glob("*.sql"))]


async def apply_migrations(pool: asyncpg.Pool, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the pending migrations; returns the versions applied by this call."""
    migrations = _read_migrations(directory)
    applied_now: list[str] = []
    async with pool.acquire() as con:
        await con.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            await con.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await con.fetch("SELECT version FROM schema_migrations")}
            for version, sql in migrations:
                if version in done:
                    continue
                async with con.transaction():
                    await con.execute(sql)
                    await con.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
                log.info("applied migration %s", version)
                applied_now.append(version)
        finally:
            await con.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now
