"""PostgreSQL probe over asyncpg."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg

from db_probes.eventually import ProbeRecord


class PostgresProbe:
    """Read-only queries against one database; every answer is recorded for the report."""

    def __init__(
        self, dsn: str, *, name: str = "postgres", recorder: Callable[[ProbeRecord], None] | None = None
    ) -> None:
        self.dsn = dsn
        self.name = name
        self._pool: asyncpg.Pool | None = None
        self._recorder = recorder

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            # Read-only sessions: a probe can never write production tables by mistake.
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=0,
                max_size=4,
                timeout=5,
                server_settings={
                    "default_transaction_read_only": "on",
                    "application_name": "throughline-probe",
                },
            )
        return self._pool

    def _record(self, query: str, value: Any) -> None:
        if self._recorder is not None:
            self._recorder(ProbeRecord(self.name, query, value))

    async def rows(self, query: str, *args: Any) -> list[dict[str, Any]]:
        """All rows as dicts."""
        pool = await self._get_pool()
        result = [dict(r) for r in await pool.fetch(query, *args)]
        self._record(query, result)
        return result

    async def one(self, query: str, *args: Any) -> dict[str, Any] | None:
        """The single row of a query (None when there is none; AssertionError when there are several)."""
        result = await self.rows(query, *args)
        assert len(result) <= 1, f"{self.name}: expected at most one row, got {len(result)} for {query}"
        return result[0] if result else None

    async def value(self, query: str, *args: Any) -> Any:
        """The first column of the single row."""
        pool = await self._get_pool()
        value = await pool.fetchval(query, *args)
        self._record(query, value)
        return value

    async def count(self, table: str, where: str = "TRUE", *args: Any) -> int:
        return int(await self.value(f"SELECT count(*) FROM {table} WHERE {where}", *args))

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
