"""PostgreSQL, Redis and ClickHouse access that survives outages: pools are created lazily and
reconnect by themselves; every store failure surfaces as StoreUnavailable(store)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg
import clickhouse_connect
import redis.asyncio as aioredis
import redis.exceptions

from stack.common.redis_client import redis_client

log = logging.getLogger("stack.backend.stores")

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_MIGRATION_LOCK_KEY = 7_214_553_001  # pg_advisory_lock key of the backend's migrations


class StoreUnavailable(Exception):
    def __init__(self, store: str, detail: str = ""):
        super().__init__(f"{store} unavailable{': ' + detail if detail else ''}")
        self.store = store


_PG_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
)
_REDIS_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
    asyncio.TimeoutError,
)


# ---------------------------------------------------------------- PostgreSQL
async def apply_migrations(conn: asyncpg.Connection) -> list[str]:
    """Apply stack/backend/migrations/*.sql in name order, once each, under an advisory lock."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
            if path.name in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", path.name)
            applied.append(path.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_KEY)
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    return applied


class Postgres:
    def __init__(self, dsn: str):
        self.dsn = dsn
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._lock:
            if self._pool is None:
                try:
                    pool = await asyncpg.create_pool(
                        self.dsn, min_size=1, max_size=10, timeout=3, command_timeout=10
                    )
                except _PG_ERRORS as exc:
                    raise StoreUnavailable("postgres", type(exc).__name__) from exc
                try:
                    async with pool.acquire() as conn:
                        await apply_migrations(conn)
                except BaseException:
                    await pool.close()
                    raise
                self._pool = pool
        return self._pool

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        pool = await self.pool()
        try:
            async with pool.acquire(timeout=5) as conn:
                yield conn
        except _PG_ERRORS as exc:
            raise StoreUnavailable("postgres", type(exc).__name__) from exc

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.connection() as conn:
            try:
                async with conn.transaction():
                    yield conn
            except _PG_ERRORS as exc:
                raise StoreUnavailable("postgres", type(exc).__name__) from exc

    async def ping(self) -> None:
        async with self.connection() as conn:
            await conn.fetchval("SELECT 1")

    async def close(self) -> None:
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 3)
            self._pool = None


# --------------------------------------------------------------------- Redis
class Redis:
    def __init__(self, url: str):
        # a pool that waits for a free connection (stack/common/redis_client.py): a burst of
        # requests is answered by the rate limiter, not 503
        self.client = redis_client(url, decode_responses=True, socket_connect_timeout=2, socket_timeout=3)

    @contextlib.asynccontextmanager
    async def guard(self) -> AsyncIterator[aioredis.Redis]:
        try:
            yield self.client
        except _REDIS_ERRORS as exc:
            # drop the idle pooled connections too: after a Redis restart they are all dead, and
            # redis-py's per-connection retry alone keeps failing on them
            with contextlib.suppress(Exception):
                await self.client.connection_pool.disconnect(inuse_connections=False)
            raise StoreUnavailable("redis", type(exc).__name__) from exc

    async def ping(self) -> None:
        async with self.guard() as r:
            await r.ping()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()


# ---------------------------------------------------------------- ClickHouse
USAGE_COLUMNS = [
    "event_id",
    "request_id",
    "user_id",
    "thread_id",
    "run_id",
    "agent",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "created_at",
]

CH_SCHEMA = [
    "CREATE DATABASE IF NOT EXISTS analytics",
    """CREATE TABLE IF NOT EXISTS analytics.usage_events (
        event_id UUID,
        request_id String,
        user_id UUID,
        thread_id UUID,
        run_id UUID,
        agent LowCardinality(String),
        model LowCardinality(String),
        prompt_tokens UInt32,
        completion_tokens UInt32,
        cost_usd Decimal(18, 6),
        created_at DateTime64(3, 'UTC')
    ) ENGINE = MergeTree ORDER BY (user_id, created_at)""",
]


class ClickHouse:
    """clickhouse-connect's sync client, run in worker threads (the async client needs aiohttp)."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self._kwargs: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or (8443 if parts.scheme == "https" else 8123),
            "interface": "https" if parts.scheme == "https" else "http",
            "username": unquote(parts.username) if parts.username else "default",
            "password": unquote(parts.password) if parts.password else "",
            "connect_timeout": 2,
            "send_receive_timeout": 10,
            "autogenerate_session_id": False,
            "query_retries": 0,
        }
        self._client: Any = None
        self._schema_ready = False

    def _get_client(self) -> Any:
        if self._client is None:
            self._client = clickhouse_connect.get_client(**self._kwargs)
        return self._client

    async def _run(self, fn, *args, retry: bool = True, **kwargs):
        """Run fn(client) in a thread. Reads retry once: a pooled connection cut by a server
        restart fails the first request after the server is back."""

        def call():
            return fn(self._get_client(), *args, **kwargs)

        for attempt in range(2 if retry else 1):
            try:
                return await asyncio.to_thread(call)
            except Exception as exc:  # connection refused, HTTP 5xx, timeouts...
                last = exc
                if attempt == 0 and retry:
                    await asyncio.sleep(0.05)
        raise StoreUnavailable("clickhouse", f"{type(last).__name__}: {last}"[:300]) from last

    async def ensure_schema(self) -> None:
        if self._schema_ready:
            return

        def create(client):
            for stmt in CH_SCHEMA:
                client.command(stmt)
            client.query("SELECT count() FROM analytics.usage_events WHERE 0")  # warm the read path

        await self._run(create)
        self._schema_ready = True

    async def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple]:
        await self.ensure_schema()
        result = await self._run(lambda c: c.query(sql, parameters=parameters or {}))
        return list(result.result_rows)

    async def insert_usage(self, rows: list[list[Any]]) -> None:
        await self.ensure_schema()
        await self._run(
            lambda c: c.insert("usage_events", rows, column_names=USAGE_COLUMNS, database="analytics"),
            retry=False,  # the flusher re-checks event_ids before inserting again
        )

    async def ping(self) -> None:
        await self._run(lambda c: c.command("SELECT 1"))

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(client.close)
