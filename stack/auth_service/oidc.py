"""OpenID Connect client (authorization code + PKCE S256) for one configured provider.

Authlib's AsyncOAuth2Client builds the authorize URL (state, nonce, PKCE) and exchanges
the code; the id_token is verified with PyJWT against the provider's JWKS (signature,
iss, aud, exp, then the nonce). Discovery and JWKS are fetched lazily and cached; the
JWKS is re-fetched once when a token names an unknown `kid` (key rotation).

The pending login lives in Redis: `auth:oauth_state:{state}` -> JSON {verifier, nonce,
provider, created, binding}, TTL 10 min, consumed with GETDEL (single use). `binding` is the
SHA-256 of a secret that only the browser which started the login holds (an HttpOnly cookie set
by /start): a callback carrying someone else's state and code is refused (login CSRF).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import redis.asyncio as aioredis

__all__ = ["OIDCError", "OIDCProvider", "OIDCUser"]

log = logging.getLogger("auth.oidc")
STATE_TTL = 600


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


DISCOVERY_TTL = 3600
_ASYMMETRIC = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]


class OIDCError(Exception):
    """A failed OAuth step; `code` is the `?error=` the frontend gets."""

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code}: {reason}")


@dataclass(frozen=True)
class OIDCUser:
    subject: str
    email: str | None
    email_verified: bool
    name: str | None


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


class OIDCProvider:
    def __init__(
        self,
        *,
        slug: str,
        name: str,
        issuer: str,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        http: httpx.AsyncClient,
        redis: aioredis.Redis,
    ) -> None:
        self.slug = slug
        self.name = name
        self.issuer = issuer
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.http = http
        self.redis = redis
        self._discovery: dict[str, Any] | None = None
        self._discovered_at = 0.0
        self._jwks: dict[str, Any] | None = None

    # ---- metadata -------------------------------------------------------------------------
    async def discovery(self) -> dict[str, Any]:
        if self._discovery is None or time.monotonic() - self._discovered_at > DISCOVERY_TTL:
            url = f"{self.issuer}/.well-known/openid-configuration"
            try:
                response = await self.http.get(url, timeout=5.0)
                response.raise_for_status()
                meta = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise OIDCError("oauth_failed", f"discovery at {url} failed: {exc}") from None
            for field in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if field not in meta:
                    raise OIDCError("oauth_failed", f"discovery document lacks {field}")
            self._discovery, self._discovered_at, self._jwks = meta, time.monotonic(), None
        return self._discovery

    async def _jwk_set(self, refresh: bool = False) -> jwt.PyJWKSet:
        if self._jwks is None or refresh:
            meta = await self.discovery()
            try:
                response = await self.http.get(meta["jwks_uri"], timeout=5.0)
                response.raise_for_status()
                self._jwks = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise OIDCError("oauth_failed", f"JWKS fetch failed: {exc}") from None
        return jwt.PyJWKSet.from_dict(self._jwks)

    def _client(self, meta: dict[str, Any]) -> Any:
        # imported on first use: keeps ~0.15 s off the service's start
        from authlib.integrations.httpx_client import AsyncOAuth2Client

        methods = meta.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        auth_method = "client_secret_basic" if "client_secret_basic" in methods else "client_secret_post"
        return AsyncOAuth2Client(
            client_id=self.client_id,
            client_secret=self.client_secret,
            scope="openid email profile",
            redirect_uri=self.redirect_uri,
            code_challenge_method="S256",
            token_endpoint_auth_method=auth_method,
            timeout=10.0,
        )

    # ---- the flow -------------------------------------------------------------------------
    @staticmethod
    def state_key(state: str) -> str:
        return f"auth:oauth_state:{state}"

    async def start(self) -> tuple[str, str]:
        """Remember a fresh state; -> (the provider's authorize URL, the browser binding secret)."""
        meta = await self.discovery()
        state = secrets.token_urlsafe(24)
        nonce = secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(64)
        binding = secrets.token_urlsafe(24)
        pending = {
            "verifier": verifier,
            "nonce": nonce,
            "provider": self.slug,
            "created": time.time(),
            "binding": _digest(binding),
        }
        await self.redis.set(self.state_key(state), json.dumps(pending), ex=STATE_TTL)
        async with self._client(meta) as client:
            url, _ = client.create_authorization_url(
                meta["authorization_endpoint"], state=state, nonce=nonce, code_verifier=verifier
            )
        return url, binding

    @staticmethod
    def check_binding(pending: dict[str, Any], binding: str | None) -> None:
        """The callback must come from the browser that started the login -> else OIDCError('oauth_state')."""
        expected = str(pending.get("binding") or "")
        if not binding or not expected or not hmac.compare_digest(_digest(binding), expected):
            raise OIDCError("oauth_state", "the sign-in was started in another browser")

    async def take_state(self, state: str) -> dict[str, Any]:
        """Consume a pending state (single use); unknown, reused or expired -> OIDCError('oauth_state')."""
        raw = await self.redis.getdel(self.state_key(state)) if state else None
        if raw is None:
            raise OIDCError("oauth_state", "unknown, expired or reused state")
        pending = json.loads(raw)
        if pending.get("provider") != self.slug:
            raise OIDCError("oauth_state", "state belongs to another provider")
        return pending

    async def finish(self, code: str, pending: dict[str, Any]) -> OIDCUser:
        """Exchange the code (with the PKCE verifier) and verify the id_token."""
        meta = await self.discovery()
        try:
            async with self._client(meta) as client:
                token = await client.fetch_token(
                    meta["token_endpoint"],
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=pending["verifier"],
                )
        except Exception as exc:  # authlib raises OAuthError, httpx errors, ValueError...
            raise OIDCError("oauth_failed", f"token exchange failed: {type(exc).__name__}: {exc}") from None
        id_token = token.get("id_token")
        if not id_token:
            raise OIDCError("oauth_failed", "token response has no id_token")
        claims = await self.verify_id_token(id_token, pending["nonce"], meta)
        email, verified, name = claims.get("email"), _truthy(claims.get("email_verified")), claims.get("name")
        if (not email or name is None) and meta.get("userinfo_endpoint") and token.get("access_token"):
            info = await self._userinfo(meta["userinfo_endpoint"], token["access_token"])
            if info.get("sub") == claims["sub"]:
                if not email and info.get("email"):
                    email, verified = info["email"], _truthy(info.get("email_verified"))
                name = name if name is not None else info.get("name")
        return OIDCUser(
            subject=str(claims["sub"]),
            email=email.strip().lower() if email else None,
            email_verified=verified,
            name=name,
        )

    async def verify_id_token(self, id_token: str, nonce: str, meta: dict[str, Any]) -> dict[str, Any]:
        supported = meta.get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = [a for a in supported if a in _ASYMMETRIC] or ["RS256"]
        try:
            kid = jwt.get_unverified_header(id_token).get("kid")
            key = self._pick_key(await self._jwk_set(), kid)
            if key is None:
                key = self._pick_key(await self._jwk_set(refresh=True), kid)
            if key is None:
                raise OIDCError("oauth_failed", f"no JWKS key for kid {kid!r}")
            claims = jwt.decode(
                id_token,
                key.key,
                algorithms=algorithms,
                audience=self.client_id,
                issuer=self.issuer,
                leeway=30,
                options={"require": ["iss", "aud", "sub", "exp", "iat"]},
            )
        except jwt.PyJWTError as exc:
            raise OIDCError("oauth_failed", f"id_token rejected: {exc}") from None
        if not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise OIDCError("oauth_failed", "id_token nonce mismatch")
        return claims

    @staticmethod
    def _pick_key(keys: jwt.PyJWKSet, kid: str | None) -> jwt.PyJWK | None:
        signing = [k for k in keys.keys if getattr(k, "public_key_use", None) in (None, "sig")]
        if kid is None:
            return signing[0] if len(signing) == 1 else None
        return next((k for k in signing if k.key_id == kid), None)

    async def _userinfo(self, url: str, access_token: str) -> dict[str, Any]:
        try:
            response = await self.http.get(
                url, headers={"Authorization": f"Bearer {access_token}"}, timeout=5.0
            )
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("userinfo failed: %s", exc)
            return {}
