"""ClickHouse probe over clickhouse-connect's async client (works against any ClickHouse server)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.asyncclient import AsyncClient

from db_probes.eventually import ProbeRecord


class ClickHouseProbe:
    """Parameterised read queries ({name:Type} placeholders) returning dict rows."""

    def __init__(
        self, url: str, *, database: str = "analytics", recorder: Callable[[ProbeRecord], None] | None = None
    ) -> None:
        self.url = url
        self.database = database
        self._client: AsyncClient | None = None
        self._recorder = recorder

    async def client(self) -> AsyncClient:
        if self._client is None:
            parts = urlsplit(self.url)
            self._client = await clickhouse_connect.get_async_client(
                host=parts.hostname or "127.0.0.1",
                port=parts.port or 8123,
                username=parts.username or "default",
                password=parts.password or "",
                database="default",
            )
        return self._client

    async def rows(self, query: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        client = await self.client()
        result = await client.query(query, parameters=parameters or {})
        rows = [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]
        if self._recorder is not None:
            self._recorder(ProbeRecord("clickhouse", query + (f"  {parameters}" if parameters else ""), rows))
        return rows

    async def one(self, query: str, parameters: dict[str, Any] | None = None) -> dict[str, Any] | None:
        result = await self.rows(query, parameters)
        assert len(result) <= 1, f"clickhouse: expected at most one row, got {len(result)} for {query}"
        return result[0] if result else None

    async def value(self, query: str, parameters: dict[str, Any] | None = None) -> Any:
        row = await self.one(query, parameters)
        return None if row is None else next(iter(row.values()))

    async def usage_events(self, **where: Any) -> list[dict[str, Any]]:
        """Rows of analytics.usage_events matching column=value filters, oldest first."""
        clauses = " AND ".join(f"{col} = {{{col}:String}}" for col in where) or "1"
        return await self.rows(
            f"SELECT * FROM {self.database}.usage_events WHERE {clauses} ORDER BY created_at",
            {k: str(v) for k, v in where.items()},
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
