"""The services' Redis client: a pool in which a request waits for a free connection.

redis-py's default pool allows 100 connections and fails the next concurrent user at once
(MaxConnectionsError, a ConnectionError): a burst of about 100 simultaneous requests was answered
503 as a store outage, where the rate limiter would have said 429. In this pool a request finding
every connection busy waits up to `wait_s` for one (each is held for one command or pipeline,
about a millisecond); only a real outage, or that long a wait, is an error.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

__all__ = ["MAX_CONNECTIONS", "POOL_WAIT_S", "redis_client"]

MAX_CONNECTIONS = 50
POOL_WAIT_S = 5.0


def redis_client(url: str, **connection_kwargs: Any) -> aioredis.Redis:
    """A client of `url` owning a blocking pool; `connection_kwargs` as for `redis.asyncio.from_url`."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=POOL_WAIT_S, **connection_kwargs
    )
    return aioredis.Redis.from_pool(pool)
