"""Per-user limits in Redis (docs/wiring.md): fixed windows `rl:http:{uid}`, `rl:ws:{uid}` and
the concurrent agent runs `rl:agent:{uid}`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from .stores import Redis

AGENT_SLOT_TTL = 300  # default lifetime of one agent slot, so a crashed run cannot hold it forever

# `rl:agent:{uid}` is a sorted set: one member per running turn, scored with the instant (Redis
# TIME, ms) its slot expires. A slot held by a turn that died with its backend is dropped when
# that instant passes, however often the user tries meanwhile: an attempt never extends another
# slot's life (a single counter with one TTL, reset on every attempt, kept such a slot forever).
# KEYS[1] the set; ARGV[1] the limit, ARGV[2] the slot's lifetime (ms), ARGV[3] the new member.
# -> 1 taken, 0 refused.
_ACQUIRE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
local running = redis.call('ZCARD', KEYS[1])
if running >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0
    slot: str = ""  # the agent slot taken (release_agent_slot), empty for a window


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


async def acquire_agent_slot(redis: Redis, user_id: str, limit: int, ttl: int = AGENT_SLOT_TTL) -> Verdict:
    """Take one of the user's `limit` agent slots for at most `ttl` seconds; release it after the run."""
    slot = uuid.uuid4().hex
    async with redis.guard() as r:
        taken = await r.eval(_ACQUIRE, 1, f"rl:agent:{user_id}", limit, ttl * 1000, slot)
    if int(taken) != 1:
        return Verdict(False, 1)  # a running turn usually ends within seconds: try again soon
    return Verdict(True, slot=slot)


async def release_agent_slot(redis: Redis, user_id: str, slot: str) -> None:
    async with redis.guard() as r:
        await r.zrem(f"rl:agent:{user_id}", slot)
