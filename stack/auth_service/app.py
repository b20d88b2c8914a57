"""The auth service: signup, email verification, login, refresh, logout, me, OAuth, JWKS.

`create_app(settings=None)` reads the TL_* environment (stack.common.settings) at call
time; the lifespan opens the PostgreSQL pool (applying migrations), Redis, the signing
key and the announcement deliverer. See docs in the module docstrings of sessions.py
(refresh rotation), oidc.py (OAuth) and announce.py (auth -> backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import urlencode

import asyncpg
import httpx
import redis.asyncio as aioredis
import redis.exceptions
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from email_validator import EmailNotValidError, validate_email
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import NoBackoff

from stack.common.errors import (
    ERROR_RESPONSES,
    NUL_FREE,
    FieldErrors,
    SafeStr,
    error_responses,
    install_error_answers,
)
from stack.common.redis_client import redis_client
from stack.common.request_id import (
    REQUEST_ID_HEADER,
    RequestIdMiddleware,
    configure_logging,
    current_request_id,
)
from stack.common.settings import Settings

from . import users
from .announce import Announcer, announcement_body
from .answers import (
    HealthOut,
    JWKSOut,
    ProviderOut,
    ReadyOut,
    ResendOut,
    SignupOut,
    TokensOut,
    UserOut,
    VerifiedOut,
    answer,
    redirect,
)
from .db import apply_migrations, create_pool
from .keys import SigningKey, TokenError
from .mail import Mailer
from .oidc import STATE_TTL, OIDCError, OIDCProvider, OIDCUser
from .sessions import LoginLimiter, Sessions

__all__ = ["create_app"]

log = logging.getLogger("auth")
VERIFICATION_TTL_HOURS = 24
PASSWORD_MIN, PASSWORD_MAX = 10, 256
NAME_MAX = 100
# An OAuth sign-up waits this long for its profile to reach the backend (Announcer.deliver_now).
ANNOUNCE_INLINE_TIMEOUT = 2.0
MSG_BAD_CREDENTIALS = "Invalid email or password."
MSG_STORE_DOWN = "auth store unavailable"
STORE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # ConnectionRefusedError, TimeoutError (pool acquire / command timeout), ...
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def _make_hasher() -> PasswordHasher:
    """argon2id with argon2-cffi's defaults, or the cost given by TL_ARGON2_* (the test stack uses
    OWASP's minimum, m=19 MiB t=2 p=1, so that journeys on a 2-core machine do not queue on hashing)."""
    defaults = PasswordHasher()
    return PasswordHasher(
        time_cost=int(os.environ.get("TL_ARGON2_TIME_COST", defaults.time_cost)),
        memory_cost=int(os.environ.get("TL_ARGON2_MEMORY_KIB", defaults.memory_cost)),
        parallelism=int(os.environ.get("TL_ARGON2_PARALLELISM", defaults.parallelism)),
    )


_hasher = _make_hasher()
_dummy_hash: list[str] = []


def _dummy() -> str:
    """Verified against when the email is unknown (or the account has no password) so that both
    cases cost one argon2 verification: the hash of a discarded random secret, same parameters.
    Made on first use (in a worker thread), not at import, to keep the service's start fast."""
    if not _dummy_hash:
        _dummy_hash.append(_hasher.hash(secrets.token_urlsafe(16)))
    return _dummy_hash[0]


def _verify_password(stored: str | None, password: str) -> bool:
    try:
        return bool(_hasher.verify(stored or _dummy(), password)) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


@dataclass
class Ctx:
    settings: Settings
    pool: asyncpg.Pool
    redis: aioredis.Redis
    http: httpx.AsyncClient
    keys: SigningKey
    sessions: Sessions
    limiter: LoginLimiter
    mailer: Mailer
    announcer: Announcer
    providers: dict[str, OIDCProvider] = field(default_factory=dict)


def _ctx(request: Request) -> Ctx:
    return request.app.state.ctx


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _normalize_email(raw: str) -> str:
    try:
        return validate_email(raw, check_deliverability=False, test_environment=True).normalized.lower()
    except EmailNotValidError:
        return raw.strip().lower()


# ---------------------------------------------------------------------------------------------
# bodies


# The schema says what the handlers check (format, bounds) so that a client and a fuzzer can know
# it; the handlers still answer their own friendlier 422 per field. No field may carry a NUL:
# PostgreSQL cannot store or compare it.
EmailStr = Annotated[str, Field(pattern=NUL_FREE, json_schema_extra={"format": "email"})]


class SignupIn(BaseModel):
    email: EmailStr
    password: Annotated[
        SafeStr, Field(json_schema_extra={"minLength": PASSWORD_MIN, "maxLength": PASSWORD_MAX})
    ]
    full_name: Annotated[SafeStr, Field(json_schema_extra={"minLength": 1, "maxLength": NAME_MAX})]


class LoginIn(BaseModel):
    email: SafeStr
    password: SafeStr


class RefreshIn(BaseModel):
    refresh_token: SafeStr


class ResendIn(BaseModel):
    email: SafeStr


# ---------------------------------------------------------------------------------------------
# helpers


def _token_body(ctx: Ctx, user: asyncpg.Record, sid: str, refresh_token: str) -> dict[str, Any]:
    return {
        "access_token": ctx.keys.issue_access_token(user_id=str(user["id"]), email=user["email"], sid=sid),
        "refresh_token": refresh_token,
        "token_type": "bearer",
        "expires_in": ctx.keys.access_ttl,
        "user": users.user_json(user),
    }


async def _new_session(ctx: Ctx, user: asyncpg.Record) -> dict[str, Any]:
    sid, refresh = await ctx.sessions.create(str(user["id"]), user["email"])
    log.info("session %s opened for user %s", sid, user["id"])
    return _token_body(ctx, user, sid, refresh)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def _bearer_claims(ctx: Ctx, request: Request, *, verify_exp: bool = True) -> dict[str, Any]:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("Not authenticated")
    try:
        return ctx.keys.decode_access_token(token.strip(), verify_exp=verify_exp)
    except TokenError as exc:
        log.info("rejected access token: %s", exc)
        raise _unauthorized("Invalid or expired access token") from None


async def _create_verification(con: asyncpg.Connection, user_id: uuid.UUID) -> str:
    token = secrets.token_urlsafe(32)
    await con.execute(
        "INSERT INTO email_verifications (id, user_id, token_hash, expires_at)"
        " VALUES ($1, $2, $3, now() + make_interval(hours => $4))",
        uuid.uuid4(),
        user_id,
        _hash_token(token),
        VERIFICATION_TTL_HOURS,
    )
    return token


def _verify_link(ctx: Ctx, token: str) -> str:
    return f"{ctx.settings.auth_url}/auth/verify?{urlencode({'token': token})}"


def _frontend(ctx: Ctx, path: str, **query: str) -> str:
    return f"{ctx.settings.frontend_url}{path}" + (f"?{urlencode(query)}" if query else "")


# ---------------------------------------------------------------------------------------------
# password accounts

router = APIRouter()


@router.post(
    "/auth/signup",
    status_code=201,
    response_model=None,
    responses={201: answer(SignupOut, "account created, verification email sent"), **error_responses(409)},
)
async def signup(body: SignupIn, request: Request) -> dict[str, str]:
    ctx = _ctx(request)
    errors: list[tuple[str, str]] = []
    email = ""
    try:
        email = validate_email(
            body.email, check_deliverability=False, test_environment=True
        ).normalized.lower()
    except EmailNotValidError as exc:
        errors.append(("email", f"Enter a valid email address. {exc}"))
    pw = body.password
    if len(pw) < PASSWORD_MIN or not any(c.isalpha() for c in pw) or not any(c.isdigit() for c in pw):
        errors.append(
            (
                "password",
                f"Password must be at least {PASSWORD_MIN} characters and contain a letter and a digit.",
            )
        )
    elif len(pw) > PASSWORD_MAX:
        errors.append(("password", f"Password must be at most {PASSWORD_MAX} characters."))
    full_name = " ".join(body.full_name.split())
    if not 1 <= len(full_name) <= NAME_MAX:
        errors.append(("full_name", f"Full name must be between 1 and {NAME_MAX} characters."))
    if errors:
        raise FieldErrors(errors)

    password_hash = await asyncio.to_thread(_hasher.hash, pw)
    user_id = uuid.uuid4()
    async with ctx.pool.acquire() as con, con.transaction():
        try:
            created_at = await con.fetchval(
                "INSERT INTO users (id, email, full_name, password_hash) VALUES ($1, $2, $3, $4) RETURNING created_at",
                user_id,
                email,
                full_name,
                password_hash,
            )
        except asyncpg.UniqueViolationError:
            raise HTTPException(409, "An account with this email already exists.") from None
        token = await _create_verification(con, user_id)
        await Announcer.enqueue(
            con,
            str(user_id),
            announcement_body(str(user_id), email, full_name, created_at),
            current_request_id(),
        )
    ctx.announcer.wake()
    log.info("signed up user %s", user_id)
    await ctx.mailer.send_verification(email, full_name, _verify_link(ctx, token))
    return {"user_id": str(user_id)}


@router.post(
    "/auth/verify/resend",
    status_code=202,
    response_model=None,
    responses={202: answer(ResendOut, "a new link is sent if the account is unverified")},
)
async def resend_verification(body: ResendIn, request: Request) -> dict[str, str]:
    """Sends a fresh link to an unverified account; the same answer either way (no enumeration)."""
    ctx = _ctx(request)
    email = _normalize_email(body.email)
    user = await users.by_email(ctx.pool, email)
    if user is not None and user["email_verified_at"] is None:
        async with ctx.pool.acquire() as con:
            token = await _create_verification(con, user["id"])
        await ctx.mailer.send_verification(email, user["full_name"], _verify_link(ctx, token))
    return {"detail": "If the account exists and is not verified yet, a new link is on its way."}


@router.get(
    "/auth/verify",
    status_code=303,
    response_model=None,
    response_class=RedirectResponse,
    responses={
        303: redirect("back to the login page, with verified=1 or error=invalid_verification"),
        200: answer(VerifiedOut, "verified (the client asked for application/json)"),
        **error_responses(400),
    },
)
async def verify_email(request: Request, token: str = "") -> Response:
    ctx = _ctx(request)
    wants_json = "application/json" in request.headers.get("accept", "")
    user_id = None
    if token:
        async with ctx.pool.acquire() as con, con.transaction():
            user_id = await con.fetchval(
                "UPDATE email_verifications SET used_at = now()"
                " WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() RETURNING user_id",
                _hash_token(token),
            )
            if user_id is not None:
                await con.execute(
                    "UPDATE users SET email_verified_at = COALESCE(email_verified_at, now()) WHERE id = $1",
                    user_id,
                )
    if user_id is None:
        log.info("invalid, expired or used verification token")
        if wants_json:
            return JSONResponse({"detail": "invalid_verification"}, status_code=400)
        return RedirectResponse(_frontend(ctx, "/login", error="invalid_verification"), status_code=303)
    log.info("verified email of user %s", user_id)
    if wants_json:
        return JSONResponse({"verified": True, "user_id": str(user_id)})
    return RedirectResponse(_frontend(ctx, "/login", verified="1"), status_code=303)


@router.post(
    "/auth/login",
    response_model=None,
    responses={200: answer(TokensOut, "a new session"), **error_responses(401, 403, 429)},
)
async def login(body: LoginIn, request: Request) -> dict[str, Any] | JSONResponse:
    ctx = _ctx(request)
    email = _normalize_email(body.email)
    retry_after = await ctx.limiter.retry_after(email)
    if retry_after:
        log.warning("login attempt limit reached for an email; retry in %d s", retry_after)
        return JSONResponse(
            {"detail": "Too many failed login attempts. Try again later.", "retry_after": retry_after},
            status_code=429,
            headers={"Retry-After": str(retry_after)},
        )
    user = await users.by_email(ctx.pool, email)
    stored = user["password_hash"] if user is not None and user["password_hash"] else None
    ok = await asyncio.to_thread(_verify_password, stored, body.password)
    if not ok or user is None:
        await ctx.limiter.failed(email)
        log.info("failed login")
        raise HTTPException(401, MSG_BAD_CREDENTIALS)
    if user["email_verified_at"] is None:
        raise HTTPException(403, "Please verify your email address before logging in.")
    await ctx.limiter.clear(email)
    if _hasher.check_needs_rehash(stored):
        new_hash = await asyncio.to_thread(_hasher.hash, body.password)
        await ctx.pool.execute("UPDATE users SET password_hash = $2 WHERE id = $1", user["id"], new_hash)
    return await _new_session(ctx, user)


@router.post(
    "/auth/refresh",
    response_model=None,
    responses={200: answer(TokensOut, "the session's rotated tokens"), **error_responses(401)},
)
async def refresh(body: RefreshIn, request: Request) -> dict[str, Any]:
    ctx = _ctx(request)
    result = await ctx.sessions.rotate(body.refresh_token.strip())
    if result.status == "reused":
        log.warning("refresh token reuse on session %s: session revoked", result.sid)
        raise _unauthorized("Refresh token already used; the session was revoked. Log in again.")
    if result.status != "ok":
        raise _unauthorized("Invalid or expired refresh token")
    user = await users.by_id(ctx.pool, result.user_id)
    if user is None:
        await ctx.sessions.revoke(result.sid)
        raise _unauthorized("Invalid or expired refresh token")
    return _token_body(ctx, user, result.sid, result.refresh_token)


@router.post("/auth/logout", status_code=204, responses=error_responses(401))
async def logout(request: Request) -> Response:
    ctx = _ctx(request)
    claims = _bearer_claims(ctx, request, verify_exp=False)  # an expired token may still end its session
    await ctx.sessions.revoke(claims["sid"])
    log.info("session %s closed", claims["sid"])
    return Response(status_code=204)


@router.get(
    "/auth/me",
    response_model=None,
    responses={200: answer(UserOut, "the signed-in user"), **error_responses(401)},
)
async def me(request: Request) -> dict[str, Any]:
    ctx = _ctx(request)
    claims = _bearer_claims(ctx, request)
    if not await ctx.sessions.is_live(claims["sid"]):
        raise _unauthorized("Session revoked")
    user = await users.by_id(ctx.pool, claims["sub"])
    if user is None:
        raise _unauthorized("Unknown user")
    return users.user_json(user)


@router.get("/.well-known/jwks.json", responses={200: answer(JWKSOut, "the token signing keys")})
async def jwks(request: Request) -> JSONResponse:
    return JSONResponse(_ctx(request).keys.jwks(), headers={"Cache-Control": "public, max-age=300"})


# ---------------------------------------------------------------------------------------------
# OAuth / OpenID Connect


def _provider(ctx: Ctx, slug: str) -> OIDCProvider:
    provider = ctx.providers.get(slug)
    if provider is None:
        raise HTTPException(404, f"Unknown provider {slug!r}")
    return provider


@router.get(
    "/auth/providers",
    response_model=None,
    responses={200: {"model": list[ProviderOut], "description": "the OAuth providers configured"}},
)
async def providers(request: Request) -> list[dict[str, str]]:
    ctx = _ctx(request)
    return [
        {"slug": p.slug, "name": p.name, "start_url": f"{ctx.settings.auth_url}/auth/oauth/{p.slug}/start"}
        for p in ctx.providers.values()
    ]


OAUTH_BINDING_COOKIE = "tl_oauth_binding"  # HttpOnly; ties a pending OAuth login to its browser


@router.get(
    "/auth/oauth/{provider}/start",
    status_code=302,
    response_class=RedirectResponse,
    responses={302: redirect("to the provider, or to the login page with an error"), **error_responses(404)},
)
async def oauth_start(provider: str, request: Request) -> RedirectResponse:
    ctx = _ctx(request)
    p = _provider(ctx, provider)
    try:
        url, binding = await p.start()
    except OIDCError as exc:
        log.warning("oauth start failed: %s", exc.reason)
        return RedirectResponse(_frontend(ctx, "/login", error=exc.code), status_code=302)
    response = RedirectResponse(url, status_code=302)
    # Lax: sent on the provider's top-level redirect back to the callback, never on cross-site posts
    response.set_cookie(
        OAUTH_BINDING_COOKIE,
        binding,
        max_age=STATE_TTL,
        path="/auth/oauth",
        httponly=True,
        samesite="lax",
        secure=ctx.settings.auth_url.startswith("https://"),
    )
    return response


@router.get(
    "/auth/oauth/{provider}/callback",
    status_code=302,
    response_class=RedirectResponse,
    responses={302: redirect("to the app with a session, or to its login page"), **error_responses(404)},
)
async def oauth_callback(
    provider: str, request: Request, code: str = "", state: str = "", error: str = ""
) -> RedirectResponse:
    ctx = _ctx(request)
    p = _provider(ctx, provider)
    try:
        if error:
            with contextlib.suppress(OIDCError):
                await p.take_state(state)
            raise OIDCError(
                "oauth_denied" if error == "access_denied" else "oauth_failed", f"provider said {error}"
            )
        pending = await p.take_state(state)
        p.check_binding(pending, request.cookies.get(OAUTH_BINDING_COOKIE))
        if not code:
            raise OIDCError("oauth_failed", "callback without code")
        identity = await p.finish(code, pending)
        user = await _resolve_oauth_user(ctx, p.slug, identity)
    except OIDCError as exc:
        log.warning("oauth callback failed (%s): %s", exc.code, exc.reason)
        # the binding cookie stays: a forged callback must not break the genuine one still to come
        return RedirectResponse(_frontend(ctx, "/login", error=exc.code), status_code=302)
    tokens = await _new_session(ctx, user)
    fragment = urlencode(
        {k: tokens[k] for k in ("access_token", "refresh_token", "expires_in", "token_type")}
    )
    response = RedirectResponse(f"{ctx.settings.frontend_url}/oauth/complete#{fragment}", status_code=302)
    response.delete_cookie(OAUTH_BINDING_COOKIE, path="/auth/oauth")  # spent with its state
    return response


async def _resolve_oauth_user(ctx: Ctx, provider: str, ident: OIDCUser) -> asyncpg.Record:
    """Identity known -> its user; else link to a local user with the same email when the
    provider says email_verified; else create a verified, password-less user (announced)."""
    for _ in range(3):  # a concurrent first login may win the unique constraints: look again
        try:
            user, created = await _resolve_once(ctx, provider, ident)
        except asyncpg.UniqueViolationError:
            continue
        if created:  # the redirect lands in the app, whose first request needs the profile
            await ctx.announcer.deliver_now(str(user["id"]), ANNOUNCE_INLINE_TIMEOUT)
        return user
    raise OIDCError("oauth_failed", "could not create or link the account")


async def _resolve_once(ctx: Ctx, provider: str, ident: OIDCUser) -> tuple[asyncpg.Record, bool]:
    async with ctx.pool.acquire() as con, con.transaction():
        user = await con.fetchrow(
            f"SELECT {', '.join('u.' + c for c in users.USER_COLUMNS.split(', '))} FROM identities i"
            " JOIN users u ON u.id = i.user_id WHERE i.provider = $1 AND i.subject = $2",
            provider,
            ident.subject,
        )
        if user is not None:
            log.info("oauth login of user %s via %s", user["id"], provider)
            return user, False
        if not ident.email:
            raise OIDCError("oauth_failed", "the provider shared no email address")
        existing = await con.fetchrow(
            f"SELECT {users.USER_COLUMNS} FROM users WHERE email = $1 FOR UPDATE", ident.email
        )
        if existing is not None:
            if not ident.email_verified:
                raise OIDCError(
                    "oauth_account_exists", "email exists locally but the provider did not verify it"
                )
            await con.execute(
                "INSERT INTO identities (id, user_id, provider, subject, email) VALUES ($1, $2, $3, $4, $5)",
                uuid.uuid4(),
                existing["id"],
                provider,
                ident.subject,
                ident.email,
            )
            if existing["email_verified_at"] is None:
                # the provider proved the mailbox; a password set by whoever pre-registered
                # the unverified account must not keep access to it
                existing = await con.fetchrow(
                    f"UPDATE users SET email_verified_at = now(), password_hash = NULL WHERE id = $1"
                    f" RETURNING {users.USER_COLUMNS}",
                    existing["id"],
                )
            log.info("linked %s identity to existing user %s", provider, existing["id"])
            return existing, False
        name = (
            " ".join((ident.name or ident.email.split("@")[0]).split())[:NAME_MAX] or ident.email[:NAME_MAX]
        )
        user_id = uuid.uuid4()
        user = await con.fetchrow(
            "INSERT INTO users (id, email, full_name, password_hash, email_verified_at)"
            f" VALUES ($1, $2, $3, NULL, now()) RETURNING {users.USER_COLUMNS}",
            user_id,
            ident.email,
            name,
        )
        await con.execute(
            "INSERT INTO identities (id, user_id, provider, subject, email) VALUES ($1, $2, $3, $4, $5)",
            uuid.uuid4(),
            user_id,
            provider,
            ident.subject,
            ident.email,
        )
        await Announcer.enqueue(
            con,
            str(user_id),
            announcement_body(str(user_id), ident.email, name, user["created_at"]),
            current_request_id(),
        )
        log.info("created user %s from %s identity", user_id, provider)
        return user, True


# ---------------------------------------------------------------------------------------------
# health


@router.get("/health", response_model=None, responses={200: answer(HealthOut, "alive")})
async def health() -> dict[str, str]:
    return {"status": "ok", "service": "auth"}


@router.get(
    "/ready",
    responses={
        200: answer(ReadyOut, "every store answered"),
        503: answer(ReadyOut, "some store did not answer"),
    },
)
async def ready(request: Request) -> JSONResponse:
    ctx = _ctx(request)
    checks: dict[str, str] = {}

    async def pg() -> None:
        async with ctx.pool.acquire(timeout=2) as con:
            await con.fetchval("SELECT 1", timeout=2)

    async def rd() -> None:
        await asyncio.wait_for(ctx.redis.ping(), timeout=2)

    for name, probe in (("postgres", pg), ("redis", rd)):
        try:
            await probe()
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"error: {type(exc).__name__}: {exc}"[:300]
    failed = [name for name, status in checks.items() if status != "ok"]
    body = {"status": "ok" if not failed else "unavailable", "checks": checks, "failed": failed}
    return JSONResponse(body, status_code=503 if failed else 200)


# ---------------------------------------------------------------------------------------------
# the app


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.error("store error on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    return JSONResponse({"detail": MSG_STORE_DOWN}, status_code=503)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    configure_logging("auth")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keys = SigningKey(
            settings.jwt_private_key_file,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            access_ttl=settings.access_token_ttl,
        )
        pool = await create_pool(settings.auth_dsn)
        rd = redis_client(  # waits for a free connection: a burst is not a store outage
            settings.redis_url,
            decode_responses=True,
            socket_connect_timeout=2,
            socket_timeout=3,
            health_check_interval=10,
            # one immediate retry on a fresh connection: after a Redis restart every pooled
            # connection is dead, and without it the first login/refresh answers 503
            retry=RedisRetry(NoBackoff(), 1),
            retry_on_error=[redis.exceptions.ConnectionError],
        )
        http = httpx.AsyncClient(timeout=10.0)
        task: asyncio.Task[None] | None = None
        try:
            applied = await apply_migrations(pool)
            if applied:
                log.info("schema migrated: %s", ", ".join(applied))
            announcer = Announcer(pool, settings.backend_url, settings.internal_secret, http)
            ctx = Ctx(
                settings=settings,
                pool=pool,
                redis=rd,
                http=http,
                keys=keys,
                sessions=Sessions(rd, settings.refresh_token_ttl),
                limiter=LoginLimiter(rd, settings.login_attempt_limit, settings.login_attempt_window),
                mailer=Mailer(settings.smtp_host, settings.smtp_port),
                announcer=announcer,
            )
            if settings.oidc_issuer:
                slug = settings.oidc_provider
                ctx.providers[slug] = OIDCProvider(
                    slug=slug,
                    name=settings.oidc_provider_name,
                    issuer=settings.oidc_issuer,
                    client_id=settings.oidc_client_id,
                    client_secret=settings.oidc_client_secret,
                    redirect_uri=f"{settings.auth_url}/auth/oauth/{slug}/callback",
                    http=http,
                    redis=rd,
                )
            if not settings.internal_secret:
                log.warning("TL_INTERNAL_SECRET is empty: the backend will reject announcements")
            app.state.ctx = ctx
            task = asyncio.create_task(announcer.run(), name="announcer")
            log.info("auth service ready (kid %s)", keys.kid)
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await http.aclose()
            await rd.aclose()
            await pool.close()

    app = FastAPI(
        title="Throughline auth", lifespan=lifespan, responses={**ERROR_RESPONSES, **error_responses(503)}
    )
    app.include_router(router)
    install_error_answers(app)  # before CORS: a 500 must carry the CORS headers too
    for exc_type in STORE_ERRORS:
        app.add_exception_handler(exc_type, _store_unavailable)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=[settings.frontend_url],
        allow_credentials=True,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", REQUEST_ID_HEADER],
        expose_headers=[REQUEST_ID_HEADER, "Retry-After"],
    )
    app.add_middleware(RequestIdMiddleware)  # outermost: ids on every response, CORS preflights too
    return app
