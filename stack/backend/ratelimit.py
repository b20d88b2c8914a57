"""Per-user limits in Redis (docs/wiring.md): fixed windows `rl:http:{uid}`, `rl:ws:{uid}` and
the concurrent-run counter `rl:agent:{uid}`."""

from __future__ import annotations

from dataclasses import dataclass

from .stores import Redis

AGENT_SLOT_TTL = 300  # safety TTL of rl:agent:{uid}, so a crashed run cannot hold a slot forever


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0


async def hit_window(redis: Redis, key: str, limit: int, window: int) -> Verdict:
    async with redis.guard() as r:
        async with r.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, window, nx=True)
            pipe.ttl(key)
            count, _, ttl = await pipe.execute()
    if int(count) > limit:
        return Verdict(False, max(1, int(ttl) if ttl and int(ttl) > 0 else window))
    return Verdict(True)


async def acquire_agent_slot(redis: Redis, user_id: str, limit: int) -> Verdict:
    key = f"rl:agent:{user_id}"
    async with redis.guard() as r:
        async with r.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, AGENT_SLOT_TTL)
            count, _ = await pipe.execute()
        if int(count) > limit:
            await r.decr(key)
            return Verdict(False, 1)
    return Verdict(True)


async def release_agent_slot(redis: Redis, user_id: str) -> None:
    key = f"rl:agent:{user_id}"
    async with redis.guard() as r:
        value = await r.decr(key)
        if int(value) < 0:
            await r.set(key, 0, ex=AGENT_SLOT_TTL)
