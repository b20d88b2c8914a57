"""Redis probe over redis.asyncio."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from db_probes.eventually import ProbeRecord


@dataclass(frozen=True)
class RedisKey:
    """What a key holds: its type, value (decoded) and TTL in seconds (-1 none, -2 missing)."""

    name: str
    type: str
    value: Any
    ttl: int

    @property
    def exists(self) -> bool:
        return self.type != "none"


class RedisProbe:
    def __init__(self, url: str, *, recorder: Callable[[ProbeRecord], None] | None = None) -> None:
        self.url = url
        self._client: aioredis.Redis | None = None
        self._recorder = recorder

    def client(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.from_url(self.url, decode_responses=True, socket_timeout=5)
        return self._client

    async def key(self, name: str) -> RedisKey:
        """Type, value and TTL of one key, whatever its type."""
        r = self.client()
        kind = str(await r.type(name))
        value: Any
        if kind == "string":
            value = await r.get(name)
        elif kind == "hash":
            value = await r.hgetall(name)
        elif kind == "list":
            value = await r.lrange(name, 0, -1)
        elif kind == "set":
            value = sorted(await r.smembers(name))
        elif kind == "zset":
            value = await r.zrange(name, 0, -1, withscores=True)
        else:
            value = None
        ttl = int(await r.ttl(name))
        result = RedisKey(name, kind, value, ttl)
        if self._recorder is not None:
            self._recorder(ProbeRecord("redis", f"KEY {name}", {"type": kind, "value": value, "ttl": ttl}))
        return result

    async def keys(self, pattern: str) -> list[str]:
        """Key names matching a glob (SCAN, never KEYS)."""
        found = sorted([k async for k in self.client().scan_iter(match=pattern, count=500)])
        if self._recorder is not None:
            self._recorder(ProbeRecord("redis", f"SCAN {pattern}", found))
        return found

    async def ttl(self, name: str) -> int:
        return int(await self.client().ttl(name))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
