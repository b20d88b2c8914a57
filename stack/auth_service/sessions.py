"""Sessions and refresh tokens in Redis, and the failed-login counter.

`auth:session:{sid}` is a hash {user_id, email, created_at, refresh_jti, refresh_hash}
with TTL = TL_REFRESH_TOKEN_TTL (renewed on every refresh). The backend treats a
missing key as a revoked session.

A refresh token is `<sid>.<random secret>`; only sha256(secret) is stored. Refreshing
rotates it atomically (Lua); presenting a token of a live session whose secret is not
the current one (an already-rotated token) deletes the session: reuse detection.
Clients must therefore not refresh the same token twice in parallel.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis

__all__ = ["LoginLimiter", "RotateResult", "Sessions", "session_key"]

_SID = re.compile(r"[0-9a-f]{32}")  # fullmatch: `$` would let a final "\n" through

_ROTATE = """
local cur = redis.call('HGET', KEYS[1], 'refresh_hash')
if not cur then return {'missing'} end
if cur ~= ARGV[1] then
  redis.call('DEL', KEYS[1])
  return {'reused'}
end
redis.call('HSET', KEYS[1], 'refresh_hash', ARGV[2], 'refresh_jti', ARGV[3], 'rotated_at', ARGV[5])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return {'ok', redis.call('HGET', KEYS[1], 'user_id'), redis.call('HGET', KEYS[1], 'email')}
"""


def session_key(sid: str) -> str:
    return f"auth:session:{sid}"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class RotateResult:
    status: str  # "ok" | "missing" (unknown/expired/revoked) | "reused" (session now revoked) | "malformed"
    sid: str = ""
    user_id: str = ""
    email: str = ""
    refresh_token: str = ""


class Sessions:
    def __init__(self, redis: aioredis.Redis, ttl: int) -> None:
        self.redis = redis
        self.ttl = ttl
        self._rotate = redis.register_script(_ROTATE)

    async def create(self, user_id: str, email: str) -> tuple[str, str]:
        """A new session; returns (sid, refresh_token)."""
        sid = uuid.uuid4().hex
        secret = secrets.token_urlsafe(32)
        key = session_key(sid)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "user_id": user_id,
                    "email": email,
                    "created_at": f"{time.time():.3f}",
                    "refresh_jti": uuid.uuid4().hex,
                    "refresh_hash": _hash(secret),
                },
            )
            pipe.expire(key, self.ttl)
            await pipe.execute()
        return sid, f"{sid}.{secret}"

    async def rotate(self, refresh_token: str) -> RotateResult:
        sid, _, secret = refresh_token.partition(".")
        if not _SID.fullmatch(sid) or not secret:
            return RotateResult("malformed")
        new_secret = secrets.token_urlsafe(32)
        result = await self._rotate(
            keys=[session_key(sid)],
            args=[_hash(secret), _hash(new_secret), uuid.uuid4().hex, self.ttl, f"{time.time():.3f}"],
        )
        status = result[0]
        if status != "ok":
            return RotateResult(status, sid=sid)
        return RotateResult(
            "ok", sid=sid, user_id=result[1], email=result[2], refresh_token=f"{sid}.{new_secret}"
        )

    async def is_live(self, sid: str) -> bool:
        return bool(await self.redis.exists(session_key(sid)))

    async def revoke(self, sid: str) -> bool:
        return bool(await self.redis.delete(session_key(sid)))


class LoginLimiter:
    """Fixed window of failed logins per email: `auth:login_fail:{email}` with TTL = window."""

    def __init__(self, redis: aioredis.Redis, limit: int, window: int) -> None:
        self.redis = redis
        self.limit = limit
        self.window = window

    @staticmethod
    def key(email: str) -> str:
        return f"auth:login_fail:{email}"

    async def retry_after(self, email: str) -> int:
        """Seconds until the next attempt is allowed (0 = allowed now)."""
        key = self.key(email)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(key)
            pipe.ttl(key)
            count, ttl = await pipe.execute()
        if count is None or int(count) < self.limit:
            return 0
        return max(int(ttl), 1) if ttl and int(ttl) > 0 else self.window

    async def failed(self, email: str) -> int:
        key = self.key(email)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, self.window, nx=True)
            count, _ = await pipe.execute()
        return int(count)

    async def clear(self, email: str) -> None:
        await self.redis.delete(self.key(email))
