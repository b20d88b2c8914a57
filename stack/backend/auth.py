"""Access-token verification: RS256 with the auth service's JWKS (cached, refetched on an
unknown kid), iss/aud/exp checked, and the session `auth:session:{sid}` must exist in Redis."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from .stores import Redis

log = logging.getLogger("stack.backend.auth")

_JWKS_MIN_REFETCH_S = 1.0


class AuthError(Exception):
    """The token is bad, expired, for another audience, or its session was revoked."""


class AuthUnavailable(Exception):
    """The JWKS could not be fetched (auth service down)."""


@dataclass(frozen=True)
class Principal:
    user_id: str
    email: str
    sid: str
    expires_at: float = 0.0  # the token's exp (epoch seconds); 0 = not known


class JWKSCache:
    def __init__(self, jwks_url: str):
        self.url = jwks_url
        self._keys: dict[str, Any] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def fetch(self) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(timeout=3) as client:
                resp = await client.get(self.url)
                resp.raise_for_status()
                data = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise AuthUnavailable(f"jwks: {type(exc).__name__}") from exc
        keys: dict[str, Any] = {}
        for jwk in data.get("keys", []):
            if jwk.get("kty") != "RSA":
                continue
            try:
                keys[jwk.get("kid") or ""] = jwt.PyJWK(jwk, algorithm="RS256").key
            except jwt.PyJWKError:
                log.warning("ignoring an unusable JWK kid=%s", jwk.get("kid"))
        self._keys = keys
        self._fetched_at = time.monotonic()
        return keys

    async def key_for(self, kid: str) -> Any:
        if kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            if kid in self._keys:
                return self._keys[kid]
            if not self._keys or time.monotonic() - self._fetched_at >= _JWKS_MIN_REFETCH_S:
                await self.fetch()
        if kid in self._keys:
            return self._keys[kid]
        raise AuthError("unknown key id")


class Authenticator:
    def __init__(self, jwks: JWKSCache, redis: Redis, issuer: str, audience: str):
        self.jwks = jwks
        self.redis = redis
        self.issuer = issuer
        self.audience = audience

    async def verify(self, token: str) -> Principal:
        """Raises AuthError (-> 401/4401), AuthUnavailable or StoreUnavailable (-> 503)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError("malformed token") from exc
        if header.get("alg") != "RS256":
            raise AuthError("unexpected algorithm")
        key = await self.jwks.key_for(header.get("kid") or "")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(type(exc).__name__) from exc
        sid = claims.get("sid")
        if not sid or not isinstance(sid, str):
            raise AuthError("token without a session id")
        async with self.redis.guard() as r:
            alive = await r.exists(f"auth:session:{sid}")
        if not alive:
            raise AuthError("session revoked")
        return Principal(
            user_id=str(claims["sub"]),
            email=str(claims.get("email") or ""),
            sid=sid,
            expires_at=float(claims["exp"]),
        )

    async def still_valid(self, principal: Principal) -> str | None:
        """Why a principal verified earlier (an open WebSocket's) may no longer act, or None.

        Checked before every chat message: a logout or revocation elsewhere, or the token's
        expiry, ends the socket's right to start turns. Raises StoreUnavailable."""
        if principal.expires_at and time.time() >= principal.expires_at:
            return "token expired"
        async with self.redis.guard() as r:
            alive = await r.exists(f"auth:session:{principal.sid}")
        return None if alive else "session revoked"


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def ws_token(protocol_header: str | None) -> tuple[str | None, str | None]:
    """From `Sec-WebSocket-Protocol`, the offered `jwt.<token>` entry -> (subprotocol, token)."""
    if not protocol_header:
        return None, None
    for proto in protocol_header.split(","):
        proto = proto.strip()
        if proto.startswith("jwt.") and len(proto) > 4:
            return proto, proto[4:]
    return None, None
