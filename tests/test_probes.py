"""db_probes against the real stores started by the harness."""

from __future__ import annotations

import asyncio
import decimal
import uuid

import asyncpg
import clickhouse_connect
import pytest
import redis.asyncio as aioredis

from db_probes import ClickHouseProbe, EventuallyTimeout, PostgresProbe, ProbeRecord, RedisProbe, eventually
from harness.stack import Stack


async def test_should_read_postgres_rows_and_record_them(infra: Stack) -> None:
    writer = await asyncpg.connect(infra.urls["backend_dsn"])
    table = f"probe_{uuid.uuid4().hex[:8]}"
    await writer.execute(f"CREATE TABLE {table} (id int primary key, email text)")
    await writer.execute(f"INSERT INTO {table} VALUES (1, 'ada@example.test'), (2, 'bob@example.test')")
    trail: list[ProbeRecord] = []
    probe = PostgresProbe(infra.urls["backend_dsn"], recorder=trail.append)
    try:
        assert await probe.one(f"SELECT email FROM {table} WHERE id = $1", 1) == {"email": "ada@example.test"}
        assert await probe.one(f"SELECT email FROM {table} WHERE id = $1", 99) is None
        assert await probe.count(table) == 2
        assert [r["id"] for r in await probe.rows(f"SELECT id FROM {table} ORDER BY id")] == [1, 2]
        with pytest.raises(AssertionError, match="expected at most one row, got 2"):
            await probe.one(f"SELECT * FROM {table}")
        assert (
            trail
            and trail[0].query.startswith("SELECT email")
            and trail[0].value == [{"email": "ada@example.test"}]
        )
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await probe.value(f"INSERT INTO {table} VALUES (3, 'x') RETURNING id")
    finally:
        await probe.close()
        await writer.execute(f"DROP TABLE {table}")
        await writer.close()


async def test_should_see_both_application_databases(infra: Stack) -> None:
    probe = PostgresProbe(infra.urls["auth_dsn"])
    try:
        names = {r["datname"] for r in await probe.rows("SELECT datname FROM pg_database")}
        assert {"auth", "backend"} <= names
        assert await probe.value("SELECT current_database()") == "auth"
    finally:
        await probe.close()


async def test_should_read_redis_keys_with_type_and_ttl(infra: Stack) -> None:
    writer = aioredis.from_url(infra.urls["redis_url"], decode_responses=True)
    probe = RedisProbe(infra.urls["redis_url"])
    prefix = f"t{uuid.uuid4().hex[:6]}"
    try:
        await writer.hset(f"{prefix}:session", mapping={"user_id": "u1", "sid": "s1"})
        await writer.expire(f"{prefix}:session", 300)
        await writer.set(f"{prefix}:counter", "3")
        session = await probe.key(f"{prefix}:session")
        assert session.exists and session.type == "hash"
        assert session.value == {"user_id": "u1", "sid": "s1"}
        assert 0 < session.ttl <= 300
        counter = await probe.key(f"{prefix}:counter")
        assert (counter.value, counter.ttl) == ("3", -1)
        missing = await probe.key(f"{prefix}:nope")
        assert not missing.exists and missing.ttl == -2
        assert await probe.keys(f"{prefix}:*") == [f"{prefix}:counter", f"{prefix}:session"]
    finally:
        await writer.delete(f"{prefix}:session", f"{prefix}:counter")
        await writer.aclose()
        await probe.close()


async def test_should_query_clickhouse_with_bound_parameters(infra: Stack) -> None:
    port = int(infra.urls["clickhouse_url"].rsplit(":", 1)[1])
    writer = await clickhouse_connect.get_async_client(host="127.0.0.1", port=port)
    await writer.command("CREATE DATABASE IF NOT EXISTS analytics")
    await writer.command(
        "CREATE TABLE IF NOT EXISTS analytics.usage_events (event_id UUID, request_id String, user_id String,"
        " thread_id String, run_id String, agent String, model String, prompt_tokens UInt32,"
        " completion_tokens UInt32, cost_usd Decimal(18, 6), created_at DateTime64(3, 'UTC'))"
        " ENGINE = MergeTree ORDER BY (user_id, created_at)"
    )
    user = f"user-{uuid.uuid4().hex[:8]}"
    await writer.command(
        "INSERT INTO analytics.usage_events VALUES (generateUUIDv4(), 'req-1', {u:String}, 't1', 'r1', 'general',"
        " 'standin-gpt', 12, 7, 0.000052, now64(3))",
        parameters={"u": user},
    )
    probe = ClickHouseProbe(infra.urls["clickhouse_url"])
    try:
        rows = await probe.usage_events(user_id=user)
        assert len(rows) == 1
        assert rows[0]["prompt_tokens"] == 12 and rows[0]["completion_tokens"] == 7
        assert rows[0]["cost_usd"] == decimal.Decimal("0.000052")
        assert (
            await probe.value(
                "SELECT count() FROM analytics.usage_events WHERE user_id = {u:String}", {"u": user}
            )
            == 1
        )
    finally:
        await probe.close()
        await writer.close()


async def test_eventually_should_wait_for_a_late_row(infra: Stack) -> None:
    writer = aioredis.from_url(infra.urls["redis_url"], decode_responses=True)
    probe = RedisProbe(infra.urls["redis_url"])
    key = f"late:{uuid.uuid4().hex[:6]}"

    async def write_later() -> None:
        await asyncio.sleep(0.3)  # the delayed writer under test, not a wait in the assertion
        await writer.set(key, "arrived")

    async def arrived() -> bool:
        return (await probe.key(key)).value == "arrived"

    try:
        task = asyncio.create_task(write_later())
        await eventually(arrived, timeout=5)
        await task
    finally:
        await writer.delete(key)
        await writer.aclose()
        await probe.close()


async def test_eventually_should_say_what_it_expected_and_last_saw() -> None:
    seen = iter(range(100))

    async def count_reaches_three() -> None:
        value = next(seen)
        assert value >= 1000, f"usage rows for user u1: expected 3, found {value}"

    with pytest.raises(EventuallyTimeout) as info:
        await eventually(
            count_reaches_three,
            timeout=0.3,
            interval=0.05,
            description="usage rows reach 3",
            query="SELECT count() FROM usage_events WHERE user_id = 'u1'",
        )
    text = str(info.value)
    assert "usage rows reach 3: not true after 0.3 s" in text
    assert "query: SELECT count() FROM usage_events" in text
    assert "last failure: usage rows for user u1: expected 3, found" in text
