"""Fixtures of the framework's own tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from harness.stack import INFRA, Stack


@pytest.fixture(scope="module")
def infra() -> Iterator[Stack]:
    """PostgreSQL, Redis and ClickHouse only, started for one test module."""
    with Stack(only=INFRA) as world:
        yield world


@dataclass(frozen=True)
class Stores:
    """Where the service tests' scratch databases and Redis keys live."""

    pg_base: str  # postgresql://user@host:port, no database
    redis_base: str  # redis://host:port, no database number

    def redis_url(self, db: int) -> str:
        return f"{self.redis_base}/{db}"


@pytest.fixture(scope="session")
def stores() -> Iterator[Stores]:
    """PostgreSQL and Redis for the auth and backend service tests.

    Our own supervised processes by default, so a clean checkout needs nothing running.
    TL_TEST_PG (postgresql://user@host:port) and TL_TEST_REDIS (redis://host:port) point the
    tests at stores you already run instead; both must be set.
    """
    pg, rds = os.environ.get("TL_TEST_PG"), os.environ.get("TL_TEST_REDIS")
    if pg or rds:
        if not (pg and rds):
            raise pytest.UsageError("set both TL_TEST_PG and TL_TEST_REDIS, or neither")
        yield Stores(pg.rstrip("/"), rds.rstrip("/"))
        return
    with Stack(only=("postgres", "redis")) as world:
        yield Stores(
            world.urls["backend_dsn"].rsplit("/", 1)[0],
            world.urls["redis_url"].rsplit("/", 1)[0],
        )
