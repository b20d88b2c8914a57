"""The backend FastAPI app: profiles, threads, usage, billing, the chat WebSocket, health."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time as time_mod
import uuid
from collections.abc import Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, Field

from stack.common.errors import (
    ERROR_RESPONSES,
    ErrorOut,
    FieldErrors,
    SafeStr,
    error_responses,
    install_error_answers,
)
from stack.common.settings import Settings
from stack.common.signing import SIGNATURE_HEADER, verify_signature

from . import ratelimit
from .agents import LLM
from .answers import (
    AnnouncedProfileOut,
    HealthOut,
    InvoiceOut,
    InvoicesOut,
    NotReadyOut,
    ProfileOut,
    ReadyOut,
    ThreadMessagesOut,
    ThreadOut,
    ThreadsOut,
    UsageOut,
    answer,
)
from .auth import (
    Authenticator,
    AuthError,
    AuthUnavailable,
    JWKSCache,
    Principal,
    bearer_token,
    ws_token,
)
from .chat import ChatConnection
from .log import RequestIdMiddleware, setup_logging
from .stores import ClickHouse, Postgres, Redis, StoreUnavailable
from .usage import OutboxFlusher, money, summarize, usage_by_agent

log = logging.getLogger("stack.backend")

# fullmatch, not match with `$` (which also matches before a final "\n"); [0-9], not \d (which
# matches any Unicode digit, and int() reads those too): "2026-05\n" is not May 2026
# years 1970..2105 only: what ClickHouse's DateTime can hold (a year 0000 or 9999-12 was a 500)
YEAR = r"(19[7-9][0-9]|20[0-9]{2}|210[0-5])"
PERIOD_RE = re.compile(YEAR + r"-(0[1-9]|1[0-2])")


# ISO date (YYYY-MM-DD) or datetime; _parse_bound reads it, and 422s a date that does not exist
BOUND_PATTERN = (
    "^"
    + YEAR
    + r"-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?$"
)
TITLE_MAX = 200


class ThreadIn(BaseModel):
    """POST /api/threads: an optional title (blank -> "New conversation")."""

    title: Annotated[SafeStr, Field(max_length=TITLE_MAX)] | None = None


class InvoiceIn(BaseModel):
    """POST /api/billing/invoices: a calendar month, YYYY-MM in ASCII digits."""

    period: Annotated[str, Field(pattern=f"^{PERIOD_RE.pattern}$", examples=["2026-05"])]


def _uuid(value: Any) -> uuid.UUID:
    return uuid.UUID(str(value))


def _announced_at(value: Any) -> datetime | None:
    if not value:
        return None
    created_at = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return created_at if created_at.tzinfo is not None else created_at.replace(tzinfo=UTC)


class AnnouncedUserIn(BaseModel):
    """POST /internal/users (signed by the auth service): the new user's profile fields."""

    user_id: Annotated[uuid.UUID, BeforeValidator(_uuid)]
    email: Annotated[str, BeforeValidator(lambda v: str(v).strip().lower())]
    full_name: Annotated[str, BeforeValidator(lambda v: str(v or ""))] = ""
    created_at: Annotated[datetime | None, BeforeValidator(_announced_at)] = None


ANNOUNCE_BODY_INVALID = "body must be {user_id, email, full_name, created_at}"


@dataclass
class Services:
    settings: Settings
    pg: Postgres
    redis: Redis
    ch: ClickHouse
    llm: LLM
    auth: Authenticator
    flusher: OutboxFlusher
    tasks: set[asyncio.Task] = field(default_factory=set)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def settle_outbox(self, user_id: str, budget_s: float = 1.0) -> None:
        """Best effort: flush this user's pending usage so ClickHouse reads include every finished turn."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget_s
        while True:
            async with self.pg.connection() as conn:
                pending = await conn.fetchval(
                    "SELECT count(*) FROM usage_outbox WHERE user_id = $1 AND flushed_at IS NULL",
                    uuid.UUID(user_id),
                )
            if not pending or loop.time() >= deadline:
                return
            await self.flusher.flush_once()
            await asyncio.sleep(0.02)


def _services(request: Request) -> Services:
    return request.app.state.services


async def current_user(request: Request) -> Principal:
    s = _services(request)
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise HTTPException(401, "not_authenticated", headers={"WWW-Authenticate": "Bearer"})
    try:
        return await s.auth.verify(token)
    except AuthError as exc:
        log.info("rejected access token: %s", exc)
        raise HTTPException(401, "invalid_token", headers={"WWW-Authenticate": "Bearer"}) from None
    except AuthUnavailable as exc:
        log.warning("cannot verify token: %s", exc)
        raise HTTPException(503, "auth_unavailable") from None


async def api_user(request: Request, user: Annotated[Principal, Depends(current_user)]) -> Principal:
    cfg = _services(request).settings
    verdict = await ratelimit.hit_window(
        _services(request).redis, f"rl:http:{user.user_id}", cfg.rate_http_limit, cfg.rate_http_window
    )
    if not verdict.allowed:
        raise HTTPException(429, "rate_limited", headers={"Retry-After": str(verdict.retry_after)})
    return user


ApiUser = Annotated[Principal, Depends(api_user)]


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime | date) else value


def _profile(row) -> dict:
    return {
        "user_id": str(row["user_id"]),
        "email": row["email"],
        "full_name": row["full_name"],
        "plan": row["plan"],
        "created_at": _iso(row["created_at"]),
    }


def _thread(row) -> dict:
    return {
        "id": str(row["id"]),
        "title": row["title"],
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
    }


def _message(row) -> dict:
    return {
        "id": str(row["id"]),
        "thread_id": str(row["thread_id"]),
        "role": row["role"],
        "content": row["content"],
        "agent": row["agent"],
        "request_id": row["request_id"],
        "run_id": str(row["run_id"]) if row["run_id"] else None,
        "prompt_tokens": row["prompt_tokens"],
        "completion_tokens": row["completion_tokens"],
        "created_at": _iso(row["created_at"]),
    }


async def _invoice_json(conn, row) -> dict:
    lines = await conn.fetch(
        "SELECT id, agent, model, prompt_tokens, completion_tokens, amount_usd FROM invoice_lines "
        "WHERE invoice_id = $1 ORDER BY agent, model",
        row["id"],
    )
    return {
        "id": str(row["id"]),
        "user_id": str(row["user_id"]),
        "period": row["period"],
        "total_usd": money(row["total_usd"]),
        "prompt_tokens": int(row["prompt_tokens"]),
        "completion_tokens": int(row["completion_tokens"]),
        "created_at": _iso(row["created_at"]),
        "lines": [
            {
                "id": str(line["id"]),
                "agent": line["agent"],
                "model": line["model"],
                "prompt_tokens": int(line["prompt_tokens"]),
                "completion_tokens": int(line["completion_tokens"]),
                "amount_usd": money(line["amount_usd"]),
            }
            for line in lines
        ],
    }


def _parse_bound(value: str | None, name: str) -> tuple[datetime | None, bool]:
    """-> (instant, was_a_plain_date)."""
    if value is None or value == "":
        return None, False
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time(), UTC), True
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        dt = dt if dt.tzinfo else dt.replace(tzinfo=UTC)
        if not 1970 <= dt.astimezone(UTC).year <= 2105:
            raise ValueError("outside what the usage store holds")
        return dt, False
    except (ValueError, OverflowError):
        raise FieldErrors([(name, f"{name} must be an ISO date (YYYY-MM-DD) or datetime")]) from None


def create_app() -> FastAPI:
    setup_logging()
    cfg = Settings.from_env()
    pg = Postgres(cfg.backend_dsn)
    redis = Redis(cfg.redis_url)
    ch = ClickHouse(cfg.clickhouse_url)
    services = Services(
        settings=cfg,
        pg=pg,
        redis=redis,
        ch=ch,
        llm=LLM(
            cfg.llm_base_url,
            cfg.llm_api_key,
            cfg.llm_model,
            cfg.llm_timeout,
            (cfg.price_prompt, cfg.price_completion),
        ),
        auth=Authenticator(
            JWKSCache(f"{cfg.auth_url}/.well-known/jwks.json"), redis, cfg.jwt_issuer, cfg.jwt_audience
        ),
        flusher=OutboxFlusher(pg, ch),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async def warm(name: str, coro) -> None:
            try:
                await coro
            except Exception as exc:
                log.warning("startup: %s not ready yet (%s); will retry on use", name, exc)

        warmups = [
            asyncio.create_task(warm("postgres migrations", pg.pool())),
            asyncio.create_task(warm("clickhouse schema", ch.ensure_schema())),
            asyncio.create_task(warm("auth jwks", services.auth.jwks.fetch())),
        ]
        await asyncio.wait(warmups, timeout=1.5)
        warmups.append(
            asyncio.create_task(warm("llm client", asyncio.to_thread(lambda: services.llm.client)))
        )
        services.flusher.start()
        log.info("backend started")
        try:
            yield
        finally:
            for t in warmups:
                t.cancel()
            for t in list(services.tasks):
                t.cancel()
            await services.flusher.stop()
            await pg.close()
            await redis.close()
            await ch.close()

    app = FastAPI(
        title="Throughline backend",
        lifespan=lifespan,
        responses={**ERROR_RESPONSES, **error_responses(503)},
    )
    app.state.services = services
    install_error_answers(app)  # before CORS: a 500 must carry the CORS headers too
    app.add_middleware(
        CORSMiddleware,
        allow_origins=[cfg.frontend_url],
        allow_credentials=True,
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["X-Request-ID", "Retry-After"],
    )
    app.add_middleware(RequestIdMiddleware)

    @app.exception_handler(StoreUnavailable)
    async def store_down(request: Request, exc: StoreUnavailable):
        log.warning("%s", exc)
        return JSONResponse({"detail": "store_unavailable", "store": exc.store}, status_code=503)

    # ------------------------------------------------------------- health
    @app.get("/health", responses={200: answer(HealthOut, "alive")})
    async def health():
        return {"status": "ok", "service": "backend"}

    @app.get(
        "/ready",
        responses={
            200: answer(ReadyOut, "every dependency answered"),
            503: answer(NotReadyOut, "some dependency did not answer"),
        },
    )
    async def ready():
        async def check(coro) -> str:
            try:
                await asyncio.wait_for(coro, 3)
                return "ok"
            except Exception as exc:
                cause = exc.__cause__ or exc
                return f"error: {type(cause).__name__}: {cause}"[:200]

        names = ["postgres", "redis", "clickhouse", "auth_jwks"]
        results = await asyncio.gather(
            check(pg.ping()), check(redis.ping()), check(ch.ping()), check(services.auth.jwks.fetch())
        )
        checks = dict(zip(names, results, strict=True))
        failing = [n for n, r in checks.items() if r != "ok"]
        if failing:
            return JSONResponse(
                {"status": "unavailable", "failing": failing, "checks": checks}, status_code=503
            )
        return {"status": "ready", "checks": checks}

    # ----------------------------------------------------------- internal
    # The body is read by hand after the signature check (an unsigned body is a 401 whatever it
    # holds, and the signature covers the raw bytes), so it is declared, not a body parameter.
    @app.post(
        "/internal/users",
        status_code=201,
        responses={
            201: answer(AnnouncedProfileOut, "profile created"),
            200: answer(AnnouncedProfileOut, "profile already present (a repeated announcement)"),
            # read by hand, so its 422 is a plain {"detail"} (a value PostgreSQL refuses adds errors)
            422: answer(ErrorOut, "body is not the announced user"),
            **error_responses(401),
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": AnnouncedUserIn.model_json_schema()}},
            }
        },
    )
    async def announce_user(request: Request):
        body = await request.body()
        if not verify_signature(body, request.headers.get(SIGNATURE_HEADER), cfg.internal_secret):
            log.warning("internal call with a bad signature rejected")
            raise HTTPException(401, "bad_signature")
        try:
            announced = AnnouncedUserIn.model_validate(json.loads(body))
        except (ValueError, TypeError):  # not JSON, or pydantic's ValidationError (a ValueError)
            raise HTTPException(422, ANNOUNCE_BODY_INVALID) from None
        user_id, email, full_name = announced.user_id, announced.email, announced.full_name
        created_at = announced.created_at
        async with pg.connection() as conn:
            row = await conn.fetchrow(
                "INSERT INTO profiles (user_id, email, full_name, created_at) VALUES ($1, $2, $3, COALESCE($4, now())) "
                "ON CONFLICT (user_id) DO NOTHING RETURNING *",
                user_id,
                email,
                full_name,
                created_at,
            )
            created = row is not None
            if row is None:
                row = await conn.fetchrow("SELECT * FROM profiles WHERE user_id = $1", user_id)
        log.info("profile %s for user %s", "created" if created else "already present", user_id)
        return JSONResponse({**_profile(row), "created": created}, status_code=201 if created else 200)

    # ---------------------------------------------------------------- api
    @app.get(
        "/api/me",
        responses={200: answer(ProfileOut, "the user's profile"), **error_responses(401, 404, 429)},
    )
    async def me(user: ApiUser):
        async with pg.connection() as conn:
            row = await conn.fetchrow("SELECT * FROM profiles WHERE user_id = $1", uuid.UUID(user.user_id))
        if row is None:
            raise HTTPException(404, "profile_not_found")
        return _profile(row)

    @app.get(
        "/api/threads",
        responses={200: answer(ThreadsOut, "the user's threads"), **error_responses(401, 429)},
    )
    async def list_threads(user: ApiUser):
        async with pg.connection() as conn:
            rows = await conn.fetch(
                "SELECT * FROM threads WHERE user_id = $1 ORDER BY updated_at DESC, created_at DESC",
                uuid.UUID(user.user_id),
            )
        return {"threads": [_thread(r) for r in rows]}

    @app.post(
        "/api/threads",
        status_code=201,
        responses={201: answer(ThreadOut, "thread created"), **error_responses(401, 429)},
    )
    async def create_thread(user: ApiUser, body: ThreadIn | None = None):
        title = ((body.title if body else None) or "").strip() or "New conversation"
        async with pg.connection() as conn:
            row = await conn.fetchrow(
                "INSERT INTO threads (id, user_id, title) VALUES ($1, $2, $3) RETURNING *",
                uuid.uuid4(),
                uuid.UUID(user.user_id),
                title,
            )
        return _thread(row)

    @app.get(
        "/api/threads/{thread_id}/messages",
        responses={
            200: answer(ThreadMessagesOut, "the thread and its messages"),
            **error_responses(401, 404, 429),
        },
    )
    async def thread_messages(thread_id: str, user: ApiUser):
        try:
            tid = uuid.UUID(thread_id)
        except ValueError:
            raise HTTPException(404, "thread_not_found") from None
        async with pg.connection() as conn:
            thread = await conn.fetchrow(
                "SELECT * FROM threads WHERE id = $1 AND user_id = $2", tid, uuid.UUID(user.user_id)
            )
            if thread is None:
                raise HTTPException(404, "thread_not_found")
            rows = await conn.fetch(
                "SELECT * FROM messages WHERE thread_id = $1 ORDER BY created_at, role DESC", tid
            )
        return {"thread": _thread(thread), "messages": [_message(r) for r in rows]}

    @app.get(
        "/api/usage",
        responses={200: answer(UsageOut, "usage totals"), **error_responses(401, 429)},
    )
    async def usage(
        user: ApiUser,
        from_: str | None = Query(None, alias="from", pattern=BOUND_PATTERN),
        to: str | None = Query(None, pattern=BOUND_PATTERN),
    ):
        start, _ = _parse_bound(from_, "from")
        end, end_is_date = _parse_bound(to, "to")
        if start is None:
            today = datetime.now(UTC).date()
            start = datetime(today.year, today.month, 1, tzinfo=UTC)
        if end is not None and end_is_date:
            end = end + timedelta(days=1)  # a plain `to` date includes that whole day
        await services.settle_outbox(user.user_id)
        totals = summarize(await usage_by_agent(ch, user.user_id, start, end))
        return {"user_id": user.user_id, "from": start.isoformat(), "to": _iso(end), **totals}

    @app.post(
        "/api/billing/invoices",
        status_code=201,
        responses={
            201: answer(InvoiceOut, "invoice created"),
            200: answer(InvoiceOut, "the period was already invoiced: the same invoice"),
            **error_responses(401, 429),
        },
    )
    async def create_invoice(body: InvoiceIn, user: ApiUser):
        period = body.period
        match = PERIOD_RE.fullmatch(period)  # the pattern's `$` is checked again, by Python's rules
        if not match:
            raise FieldErrors([("period", 'period must be "YYYY-MM"')])
        uid = uuid.UUID(user.user_id)
        async with pg.connection() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM invoices WHERE user_id = $1 AND period = $2", uid, period
            )
            if row is not None:
                return JSONResponse(await _invoice_json(conn, row), status_code=200)
        year, month = int(match.group(1)), int(match.group(2))
        start = datetime(year, month, 1, tzinfo=UTC)
        end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
        await services.settle_outbox(user.user_id)
        lines = await usage_by_agent(ch, user.user_id, start, end)
        total = sum((line["cost_usd"] for line in lines), Decimal(0))
        async with pg.transaction() as conn:
            invoice_id = await conn.fetchval(
                "INSERT INTO invoices (id, user_id, period, total_usd, prompt_tokens, completion_tokens) "
                "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_id, period) DO NOTHING RETURNING id",
                uuid.uuid4(),
                uid,
                period,
                total,
                sum(line["prompt_tokens"] for line in lines),
                sum(line["completion_tokens"] for line in lines),
            )
            if invoice_id is not None:
                await conn.executemany(
                    "INSERT INTO invoice_lines (id, invoice_id, agent, model, prompt_tokens, completion_tokens, amount_usd) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    [
                        (
                            uuid.uuid4(),
                            invoice_id,
                            ln["agent"],
                            ln["model"],
                            ln["prompt_tokens"],
                            ln["completion_tokens"],
                            ln["cost_usd"],
                        )
                        for ln in lines
                    ],
                )
        async with pg.connection() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM invoices WHERE user_id = $1 AND period = $2", uid, period
            )
            body = await _invoice_json(conn, row)
        if invoice_id is not None:
            log.info("invoice %s for %s: %s USD", invoice_id, period, body["total_usd"])
        return JSONResponse(body, status_code=201 if invoice_id is not None else 200)

    @app.get(
        "/api/billing/invoices",
        responses={200: answer(InvoicesOut, "the user's invoices"), **error_responses(401, 429)},
    )
    async def list_invoices(user: ApiUser):
        async with pg.connection() as conn:
            rows = await conn.fetch(
                "SELECT * FROM invoices WHERE user_id = $1 ORDER BY period DESC", uuid.UUID(user.user_id)
            )
            return {"invoices": [await _invoice_json(conn, r) for r in rows]}

    # ----------------------------------------------------------- websocket
    @app.websocket("/ws")
    async def chat_socket(ws: WebSocket):
        subprotocol, token = ws_token(ws.headers.get("sec-websocket-protocol"))
        principal: Principal | None = None
        unavailable: str | None = None
        if token:
            try:
                principal = await services.auth.verify(token)
            except AuthError as exc:
                log.info("websocket rejected: %s", exc)
            except (AuthUnavailable, StoreUnavailable) as exc:
                unavailable = str(exc)
        else:
            log.info("websocket rejected: no jwt.<token> subprotocol")
        await ws.accept(subprotocol=subprotocol)
        if principal is None and unavailable is None:
            await ws.close(code=4401, reason="unauthorized")
            return
        if principal is None:
            log.warning("websocket refused, cannot verify: %s", unavailable)
            await _refuse_unavailable(ws)
            return
        conn = ChatConnection(services, ws, principal)
        try:
            await conn.start()
        except StoreUnavailable as exc:
            log.warning("websocket refused: %s", exc)
            await _refuse_unavailable(ws)
            return
        log.info("websocket connected for user %s", principal.user_id)
        try:
            await conn.serve()
        finally:
            conn.closed = True
            log.info("websocket closed for user %s", principal.user_id)

    return app


async def _refuse_unavailable(ws: WebSocket) -> None:
    frame = {
        "type": "error",
        "payload": {
            "code": "store_unavailable",
            "message": "a required service is unavailable",
            "recoverable": True,
        },
        "request_id": None,
        "event_id": 0,
        "ts": time_mod.time(),
    }
    with contextlib.suppress(Exception):
        await ws.send_text(json.dumps(frame))
        await ws.close(code=1013, reason="try again later")
