"""The WebSocket chat: frames, per-user limits, threads, the supervisor turn and its persistence.

A turn writes nothing until it succeeded; then the user message, the assistant message and one
`usage_outbox` row per LLM call go into PostgreSQL in ONE transaction (plus the thread when the
turn created it), and the outbox flusher copies the usage into ClickHouse.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from fastapi import WebSocket
from starlette.websockets import WebSocketState

from . import ratelimit
from .agents import LLMUnavailable, route, run_agent
from .auth import Principal
from .log import clean_request_id, new_request_id, request_id_var
from .stores import StoreUnavailable
from .usage import money, summarize, usage_by_agent

if TYPE_CHECKING:
    from .app import Services

log = logging.getLogger("stack.backend.chat")

MAX_CONTENT = 16_000
HISTORY_LIMIT = 20


def session_key(user_id: str) -> str:
    return f"chat:session:{user_id}"


def thread_title(content: str, words: int = 6, limit: int = 80) -> str:
    parts = content.split()
    title = " ".join(parts[:words])
    if len(parts) > words:
        title += "…"
    return title[:limit] or "New conversation"


def _uuid_or_none(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        return None


class ChatConnection:
    def __init__(self, services: Services, ws: WebSocket, principal: Principal):
        self.s = services
        self.ws = ws
        self.user = principal
        self._send_lock = asyncio.Lock()
        self._local_event_id = 0
        self.closed = False

    # ------------------------------------------------------------------ frames
    async def _next_event_id(self) -> int:
        try:
            async with self.s.redis.guard() as r:
                value = int(await r.hincrby(session_key(self.user.user_id), "last_event_id", 1))
            self._local_event_id = value
        except StoreUnavailable:
            self._local_event_id += 1
        return self._local_event_id

    async def send(self, type_: str, payload: dict, request_id: str | None = None) -> None:
        async with self._send_lock:
            frame = {
                "type": type_,
                "payload": payload,
                "request_id": request_id,
                "event_id": await self._next_event_id(),
                "ts": time.time(),
            }
            if self.closed or self.ws.application_state != WebSocketState.CONNECTED:
                return
            try:
                await self.ws.send_text(json.dumps(frame, default=str))
            except Exception:  # the client went away; a running turn still finishes and persists
                self.closed = True

    async def error(self, code: str, message: str, request_id: str | None, recoverable: bool = True, **extra):
        await self.send(
            "error", {"code": code, "message": message, "recoverable": recoverable, **extra}, request_id
        )

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Send connection_established with the session state kept in Redis."""
        async with self.s.redis.guard() as r:
            state = await r.hgetall(session_key(self.user.user_id))
            await r.hset(session_key(self.user.user_id), "last_seen", datetime.now(UTC).isoformat())
        last_event_id = int(state.get("last_event_id") or 0)
        self._local_event_id = last_event_id
        await self.send(
            "connection_established",
            {
                "user_id": self.user.user_id,
                "active_thread_id": state.get("active_thread_id") or None,
                "last_event_id": last_event_id,
                "last_seen": state.get("last_seen") or None,
            },
        )

    async def serve(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                self.closed = True
                return
            raw = message.get("text")
            if raw is None and message.get("bytes") is not None:
                raw = message["bytes"].decode("utf-8", "replace")
            await self.dispatch(raw or "")
            if self.closed:
                return

    async def dispatch(self, raw: str) -> None:
        try:
            frame = json.loads(raw)
        except ValueError:
            await self.error("bad_frame", "frame is not valid JSON", None)
            return
        if not isinstance(frame, dict):
            await self.error("bad_frame", "frame must be a JSON object", None)
            return
        rid = clean_request_id(frame.get("request_id") if isinstance(frame.get("request_id"), str) else None)
        kind = frame.get("type")
        if kind == "ping":
            await self.send("pong", {}, rid)
            return
        if kind != "user_message":
            await self.error("bad_frame", f"unknown frame type {kind!r}", rid)
            return
        payload = frame.get("payload")
        content = payload.get("content") if isinstance(payload, dict) else None
        if not isinstance(content, str) or not content.strip():
            await self.error("bad_frame", "user_message needs payload.content", rid)
            return
        if len(content) > MAX_CONTENT:
            await self.error("bad_frame", f"content longer than {MAX_CONTENT} characters", rid)
            return
        if "\x00" in content:  # PostgreSQL cannot store it: the turn would die after the LLM call
            await self.error("bad_frame", "content must not contain a NUL character", rid)
            return
        thread_id = payload.get("thread_id")
        rid = rid or new_request_id()
        token = request_id_var.set(rid)
        try:
            await self._admit(content.strip(), thread_id, rid)
        finally:
            request_id_var.reset(token)

    async def _admit(self, content: str, thread_id: Any, rid: str) -> None:
        """Rate limits, checked in frame order; an admitted turn runs as its own task."""
        cfg = self.s.settings
        try:
            lapsed = await self.s.auth.still_valid(self.user)
            if lapsed:
                # the token was good at the handshake; a logout, a revocation or its expiry since
                # then closes the socket like a bad token would (the client refreshes or logs in)
                log.info("websocket closed before a turn: %s", lapsed)
                self.closed = True
                await self.ws.close(code=4401, reason=lapsed)
                return
            verdict = await ratelimit.hit_window(
                self.s.redis, f"rl:ws:{self.user.user_id}", cfg.rate_ws_limit, cfg.rate_ws_window
            )
            if not verdict.allowed:
                log.info("ws rate limit hit, retry after %ss", verdict.retry_after)
                await self.send("rate_limited", {"retry_after": verdict.retry_after, "scope": "ws"}, rid)
                return
            slot = await ratelimit.acquire_agent_slot(
                self.s.redis, self.user.user_id, cfg.rate_agent_concurrency, cfg.rate_agent_slot_ttl
            )
            if not slot.allowed:
                log.info("agent concurrency limit hit")
                await self.send("rate_limited", {"retry_after": slot.retry_after, "scope": "agent"}, rid)
                return
        except StoreUnavailable as exc:
            log.warning("turn rejected: %s", exc)
            await self.error("store_unavailable", "a data store is unavailable, try again shortly", rid)
            return
        self.s.spawn(self._turn(content, thread_id, rid, slot.slot))

    # -------------------------------------------------------------------- turn
    async def _turn(self, content: str, thread_id_raw: Any, rid: str, slot: str) -> None:
        request_id_var.set(rid)
        uid = self.user.user_id
        try:
            await self._run_turn(content, thread_id_raw, rid)
        except LLMUnavailable as exc:
            log.warning("llm unavailable: %s", exc)
            await self.error("llm_unavailable", "the language model is unavailable, try again", rid)
        except StoreUnavailable as exc:
            log.warning("store unavailable during the turn: %s", exc)
            await self.error("store_unavailable", "a data store is unavailable, try again shortly", rid)
        except Exception:
            log.exception("turn failed")
            await self.error("internal", "internal error", rid)
        finally:
            with contextlib.suppress(Exception):
                await ratelimit.release_agent_slot(self.s.redis, uid, slot)

    async def _run_turn(self, content: str, thread_id_raw: Any, rid: str) -> None:
        s, uid = self.s, self.user.user_id
        started_at = datetime.now(UTC)
        history: list[dict] = []
        new_thread = thread_id_raw in (None, "")
        if new_thread:
            thread_id = uuid.uuid4()
            # A new conversation reads nothing before the LLM call: ask PostgreSQL now, so a turn
            # that could not be saved is refused before it spends tokens (StoreUnavailable below).
            async with s.pg.connection() as conn:
                await conn.fetchval("SELECT 1")
        else:
            parsed = _uuid_or_none(thread_id_raw)
            owner = None
            if parsed is not None:
                async with s.pg.connection() as conn:
                    owner = await conn.fetchval("SELECT user_id FROM threads WHERE id = $1", parsed)
                    if owner is not None and str(owner) == uid:
                        rows = await conn.fetch(
                            "SELECT role, content FROM (SELECT role, content, created_at FROM messages "
                            "WHERE thread_id = $1 ORDER BY created_at DESC LIMIT $2) m ORDER BY created_at",
                            parsed,
                            HISTORY_LIMIT,
                        )
                        history = [{"role": r["role"], "content": r["content"]} for r in rows]
            if parsed is None or owner is None or str(owner) != uid:
                await self.error("thread_not_found", "no such thread", rid, thread_id=str(thread_id_raw)[:64])
                return
            thread_id = parsed

        agent = route(content)
        run_id = uuid.uuid4()
        tid, rn = str(thread_id), str(run_id)
        log.info("turn routed to agent=%s thread=%s run=%s", agent, tid, rn)
        await self.send("agent_started", {"agent": agent, "thread_id": tid, "run_id": rn}, rid)
        await self.send("agent_thinking", {"agent": agent, "run_id": rn}, rid)

        async def emit(type_: str, payload: dict) -> None:
            await self.send(type_, payload, rid)

        async def get_my_usage() -> dict:
            try:
                # Usage of turns that just finished may still sit in the outbox: copy it first, so
                # "how many tokens did I use" counts every completed turn (as /api/usage does).
                await s.settle_outbox(uid, budget_s=3.0)
                totals = summarize(await usage_by_agent(s.ch, uid))
            except StoreUnavailable as exc:
                log.warning("get_my_usage: %s", exc)
                return {"error": "usage is temporarily unavailable"}
            return {"scope": "all_time", **totals}

        result = await run_agent(agent, s.llm, history, content, emit, rn, get_my_usage)

        # ---- persist: one transaction for thread, both messages and the outbox rows
        finished_at = datetime.now(UTC)
        if finished_at <= started_at:
            finished_at = started_at + timedelta(milliseconds=1)
        prompt_tokens = sum(c.prompt_tokens for c in result.calls)
        completion_tokens = sum(c.completion_tokens for c in result.calls)
        cost = sum((c.cost_usd for c in result.calls), Decimal(0))
        user_msg_id, assistant_msg_id = uuid.uuid4(), uuid.uuid4()
        async with s.pg.transaction() as conn:
            if new_thread:
                await conn.execute(
                    "INSERT INTO threads (id, user_id, title, created_at, updated_at) VALUES ($1, $2, $3, $4, $5)",
                    thread_id,
                    uuid.UUID(uid),
                    thread_title(content),
                    started_at,
                    finished_at,
                )
            else:
                await conn.execute("UPDATE threads SET updated_at = $2 WHERE id = $1", thread_id, finished_at)
            await conn.execute(
                "INSERT INTO messages (id, thread_id, user_id, role, content, agent, request_id, run_id, created_at) "
                "VALUES ($1, $2, $3, 'user', $4, NULL, $5, $6, $7)",
                user_msg_id,
                thread_id,
                uuid.UUID(uid),
                content,
                rid,
                run_id,
                started_at,
            )
            await conn.execute(
                "INSERT INTO messages (id, thread_id, user_id, role, content, agent, request_id, run_id, "
                "prompt_tokens, completion_tokens, created_at) "
                "VALUES ($1, $2, $3, 'assistant', $4, $5, $6, $7, $8, $9, $10)",
                assistant_msg_id,
                thread_id,
                uuid.UUID(uid),
                result.content,
                agent,
                rid,
                run_id,
                prompt_tokens,
                completion_tokens,
                finished_at,
            )
            await conn.executemany(
                "INSERT INTO usage_outbox (event_id, request_id, user_id, thread_id, run_id, agent, model, "
                "prompt_tokens, completion_tokens, cost_usd, created_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                [
                    (
                        uuid.uuid4(),
                        rid,
                        uuid.UUID(uid),
                        thread_id,
                        run_id,
                        agent,
                        call.model,
                        call.prompt_tokens,
                        call.completion_tokens,
                        call.cost_usd,
                        finished_at,
                    )
                    for call in result.calls
                ],
            )
        s.flusher.kick()

        try:
            async with s.redis.guard() as r:
                await r.hset(
                    session_key(uid),
                    mapping={"active_thread_id": tid, "last_seen": datetime.now(UTC).isoformat()},
                )
        except StoreUnavailable as exc:
            log.warning("session state not updated: %s", exc)

        await self.send(
            "agent_completed",
            {
                "content": result.content,
                "agent": agent,
                "thread_id": tid,
                "run_id": rn,
                "message_id": str(assistant_msg_id),
                "user_message_id": str(user_msg_id),
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "cost_usd": money(cost),
                    "llm_calls": len(result.calls),
                },
            },
            rid,
        )
