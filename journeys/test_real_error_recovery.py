"""Journey: error recovery cascade. A dependency fails mid-conversation; the UI says what is wrong,
nothing is half-written or lost, and when the dependency returns the SAME browser session (same
access token, never the /login page) carries on and the next message succeeds.

Faults are real: the LLM stand-in's /control (500, hang), and stopping / killing the real Redis,
ClickHouse, backend and PostgreSQL processes through `stack.service(name)`. Every stopped process is
started again in a `finally` and waited on until it answers its readiness probe, so the journeys after
these find the stack as it was.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from playwright.async_api import Page, expect

from db_probes import eventually
from harness.journey import journey
from harness.stack import Service, Stack
from harness.steps import step
from harness.ws_recorder import Frame, WsRecorder
from journeys.conftest import LLMControl, TestUser, UserFactory, claims_of, login_through_ui, stored_tokens
from pages import DashboardPage
from pages.chat import REPLY_TIMEOUT_S

JOURNEY = "Error recovery cascade"
MRR = 25_000

# Banner lines of docs/frontend.md ("Error banner"), as a person reads them.
ASSISTANT_UNAVAILABLE = "The assistant is unavailable right now"
STORAGE_UNAVAILABLE = "Storage is unavailable — your message could not be saved"
ANALYTICS_UNAVAILABLE = "Storage is unavailable (analytics store) — your usage could not be loaded"
CHAT_UNREACHABLE = "Chat service unreachable — reconnecting"
INTERRUPTED_QUESTION = "Tell me a long story about the number forty two please"
LOST_CONNECTION_NOTE = "Not answered — the connection was lost. Send it again."
NOT_ANSWERED = "No reply — this message was not answered."


# ---------------------------------------------------------------------------------------- helpers
@dataclass
class ChatSession:
    """One person logged in through the UI, and what identifies their browser session."""

    user: TestUser
    page: Page
    ws: WsRecorder
    dashboard: DashboardPage
    access_token: str
    sid: str
    login_visits: list[str] = field(default_factory=list)

    @property
    def user_id(self) -> str:
        assert self.user.user_id, "the signup did not return a user id"
        return self.user.user_id


@dataclass(frozen=True)
class Turn:
    """A completed turn as the browser saw it."""

    request_id: str
    thread_id: str
    agent: str
    usage: dict[str, Any]
    text: str


async def open_chat(
    page: Page, ws: WsRecorder, urls: dict[str, str], users: UserFactory, provider_name: str, tag: str
) -> ChatSession:
    """A fresh verified user logs in through the UI; remembers the session's token and `sid`."""
    user = await users.verified(tag)
    dashboard = await login_through_ui(page, urls, user, provider_name)
    token = (await stored_tokens(page))["access"]
    assert token, "no access token in localStorage after logging in"
    session = ChatSession(user, page, ws, dashboard, token, str(claims_of(token)["sid"]))

    def on_navigated(frame: Any) -> None:
        if frame == page.main_frame and "/login" in frame.url:
            session.login_visits.append(frame.url)

    page.on("framenavigated", on_navigated)
    return session


async def assert_same_session(session: ChatSession) -> None:
    """No new login: still on the dashboard, same access token, never sent to /login."""
    __tracebackhide__ = True
    assert not session.login_visits, f"the person was sent to the login page: {session.login_visits}"
    assert session.page.url.split("?")[0].endswith("/dashboard"), (
        f"the person is no longer on the dashboard but on {session.page.url}"
    )
    token = (await stored_tokens(session.page))["access"]
    # The same token, not even a refresh: a refresh would mean some service wrongly answered 401
    # (or closed with 4401) because a store was down, treating an outage as a bad session.
    assert token == session.access_token, "the access token in localStorage changed during the outage"


async def send(session: ChatSession, text: str) -> Frame:
    """Type and send `text`; -> the user_message frame the browser sent (it carries the request id)."""
    __tracebackhide__ = True
    await session.dashboard.chat.send(text)
    return await session.ws.wait_for("user_message", where={"payload.content": text}, direction="sent")


async def complete_turn(session: ChatSession, text: str) -> Turn:
    """Send `text` and wait until its reply is complete on screen."""
    __tracebackhide__ = True
    sent = await send(session, text)
    rid = sent.data["request_id"]
    # Wait on this turn's own frame: the page object's wait_for_reply() ends at any visible error
    # banner, and after a fault the banner of the failed turn is still up when the next one starts.
    completed = await session.ws.wait_for(
        "agent_completed", where={"request_id": rid}, timeout=REPLY_TIMEOUT_S, after=sent
    )
    reply = await session.dashboard.chat.wait_for_reply()
    payload = completed.data["payload"]
    assert reply.text == " ".join(payload["content"].split()), (
        f"the reply on screen {reply.text!r} is not the reply the backend completed {payload['content']!r}"
    )
    return Turn(rid, payload["thread_id"], payload["agent"], payload["usage"], reply.text)


async def expect_failed_turn(
    session: ChatSession, sent: Frame, code: str, banner: str, within: float = REPLY_TIMEOUT_S
) -> Frame:
    """The turn of `sent` ends in an `error` frame `code` (recoverable), a banner line and a failed message."""
    __tracebackhide__ = True
    rid = sent.data["request_id"]
    error = await session.ws.wait_for("error", where={"request_id": rid}, timeout=within, after=sent)
    payload = error.data["payload"]
    assert payload["code"] == code, (
        f"the chat service reported {payload['code']!r} ({payload.get('message')!r}), expected {code!r}"
    )
    assert payload["recoverable"] is True, f"the {code} error is not marked recoverable: {payload}"
    assert all(f.data.get("request_id") != rid for f in session.ws.frames("agent_completed")), (
        "the failed message also got a completed reply"
    )
    line = await session.dashboard.wait_for_error_banner(contains=banner)
    await expect(
        session.dashboard.banner.locator(f"li[data-code='{code}']"),
        f"the banner line {line!r} is not tagged data-code={code}",
    ).to_have_count(1)
    user_item = session.dashboard.chat.log.locator(f"[data-role='user'][data-request-id='{rid}']")
    await expect(user_item, "the unanswered message is not marked failed").to_have_attribute(
        "data-status", "failed"
    )
    await expect(user_item, "the unanswered message carries no note").to_contain_text(NOT_ANSWERED)
    return error


async def assert_nothing_written(pg: Any, rid: str, what: str) -> None:
    """No message and no usage (outbox) row for a request that failed."""
    __tracebackhide__ = True
    messages = await pg.backend.rows("SELECT role, content FROM messages WHERE request_id = $1", rid)
    assert messages == [], f"{what}: messages were stored for a message the person saw fail: {messages}"
    outbox = await pg.backend.count("usage_outbox", "request_id = $1", rid)
    assert outbox == 0, f"{what}: {outbox} usage row(s) would be billed for a message the person saw fail"


async def assert_no_usage_events(ch: Any, rid: str, what: str) -> None:
    __tracebackhide__ = True
    events = await ch.usage_events(request_id=rid)
    assert events == [], f"{what}: ClickHouse bills {len(events)} usage event(s) for a failed message"


async def assert_turn_stored_once(pg: Any, ch: Any, turn: Turn, llm_calls: int) -> None:
    """The turn's user + assistant message exactly once in its thread, and one usage event per LLM call."""
    __tracebackhide__ = True
    rows = await pg.backend.rows(
        "SELECT role, thread_id::text AS thread_id, prompt_tokens, completion_tokens FROM messages "
        "WHERE request_id = $1 ORDER BY role DESC",
        turn.request_id,
    )
    assert [r["role"] for r in rows] == ["user", "assistant"], (
        f"expected the message and its reply stored once each, found roles {[r['role'] for r in rows]}"
    )
    assert {r["thread_id"] for r in rows} == {turn.thread_id}, "the turn was stored in another conversation"
    assistant = rows[1]
    assert (assistant["prompt_tokens"], assistant["completion_tokens"]) == (
        turn.usage["prompt_tokens"],
        turn.usage["completion_tokens"],
    ), "stored token counts differ from the reply's"

    async def usage_events_flushed() -> list[dict[str, Any]]:
        events = await ch.usage_events(request_id=turn.request_id)
        assert len(events) == llm_calls, f"{len(events)} usage event(s) in ClickHouse, expected {llm_calls}"
        pending = await pg.backend.count(
            "usage_outbox", "request_id = $1 AND flushed_at IS NULL", turn.request_id
        )
        assert pending == 0, f"{pending} usage row(s) still waiting in the outbox"
        return events

    events = await eventually(
        usage_events_flushed, timeout=15, description=f"usage of request {turn.request_id}"
    )
    assert len({str(e["event_id"]) for e in events}) == llm_calls, "a usage event was written twice"
    assert sum(e["prompt_tokens"] for e in events) == turn.usage["prompt_tokens"]
    assert sum(e["completion_tokens"] for e in events) == turn.usage["completion_tokens"]


@asynccontextmanager
async def restored(stack: Stack, name: str) -> AsyncIterator[Service]:
    """Yield a real service to stop or kill; whatever happens, start it again and wait until it is ready."""
    service = stack.service(name)
    try:
        yield service
    finally:
        await bring_back(service)


async def bring_back(service: Service) -> float:
    """Service.start(), without blocking the event loop while the readiness probe polls."""
    return 0.0 if service.is_running else await service.astart()


def needs_local_stack(stack: Stack) -> None:
    if stack.external:
        pytest.skip("fault journeys stop and start the platform's processes: they need the local stack")


# ---------------------------------------------------------------------------------------- a) LLM 500
@journey(
    name=JOURNEY,
    priority="P1",
    mrr=MRR,
    components=["frontend", "backend", "websocket", "agent", "llm", "postgres", "clickhouse", "redis"],
)
async def test_llm_error_shows_assistant_unavailable_and_next_message_succeeds(
    page: Page,
    ws_recorder: WsRecorder,
    urls: dict[str, str],
    users: UserFactory,
    llm: LLMControl,
    pg: Any,
    ch: Any,
    redis: Any,
    provider_name: str,
) -> None:
    """The LLM answers 500 mid-conversation.

    Expected: `error` llm_unavailable (recoverable) for that request, the banner says the assistant
    is unavailable, the message is marked not answered; nothing of that request is stored (no
    message rows, no outbox row, no ClickHouse usage) and the agent slot is released; the next
    message in the same conversation succeeds and the banner clears, with the same session.
    """
    session = await open_chat(page, ws_recorder, urls, users, provider_name, "llm500")

    async with step("A first turn completes"):
        first = await complete_turn(session, "Hello before the provider fails")

    async with step("The LLM provider answers 500: the UI says the assistant is unavailable"):
        await llm.set(fail_next=1, status=500)
        sent = await send(session, "This one meets a provider error")
        failed_rid = sent.data["request_id"]
        await expect_failed_turn(session, sent, "llm_unavailable", ASSISTANT_UNAVAILABLE)
        outcomes = [r.get("outcome") for r in await llm.requests()]
        assert "fail_500" in outcomes, f"the LLM stand-in never answered 500 (requests: {outcomes})"

    async with step("Nothing of the failed message is stored or billed"):
        await assert_nothing_written(pg, failed_rid, "LLM 500")
        await assert_no_usage_events(ch, failed_rid, "LLM 500")
        assert await pg.backend.count("messages", "thread_id = $1::uuid", first.thread_id) == 2, (
            "the conversation holds more than the first turn after the failed message"
        )

        async def agent_slot_released() -> None:
            slot = await redis.key(f"rl:agent:{session.user_id}")
            assert slot.value in (None, "0"), (
                f"the failed turn still holds an agent slot (rl:agent = {slot.value!r})"
            )

        await eventually(agent_slot_released, description="the failed turn's agent slot is released")

    async with step("The next message in the same conversation succeeds, the banner clears"):
        retry = await complete_turn(session, "Trying again after the provider error")
        assert retry.thread_id == first.thread_id, "the retry was answered in another conversation"
        assert "Stand-in reply to: Trying again after the provider error" in retry.text
        await session.dashboard.wait_for_no_error_banner()
        await assert_same_session(session)

    async with step("Stores: both good turns exactly once, one usage event each, the failed one nowhere"):
        await assert_turn_stored_once(pg, ch, first, llm_calls=1)
        await assert_turn_stored_once(pg, ch, retry, llm_calls=1)
        assert await pg.backend.count("messages", "thread_id = $1::uuid", first.thread_id) == 4
        await assert_no_usage_events(ch, failed_rid, "LLM 500 after recovery")


# ---------------------------------------------------------------------------------------- b) LLM hang
@journey(
    name=JOURNEY,
    priority="P1",
    mrr=MRR,
    components=["frontend", "backend", "websocket", "agent", "llm", "postgres", "clickhouse", "redis"],
)
async def test_llm_hang_times_out_with_assistant_unavailable_and_next_message_succeeds(
    stack: Stack,
    page: Page,
    ws_recorder: WsRecorder,
    urls: dict[str, str],
    users: UserFactory,
    llm: LLMControl,
    pg: Any,
    ch: Any,
    provider_name: str,
) -> None:
    """The LLM accepts the first message of a new chat and never answers.

    Expected: the UI shows the agent thinking, then after TL_LLM_TIMEOUT the backend gives up with
    `error` llm_unavailable (recoverable), the banner says the assistant is unavailable; no thread,
    no message, no usage exists for the person; the chat goes back to "new" and the next message
    starts one conversation that is stored exactly once.
    """
    llm_timeout = float(stack.platform_env.get("TL_LLM_TIMEOUT", "5")) if not stack.external else 5.0
    session = await open_chat(page, ws_recorder, urls, users, provider_name, "llmhang")

    async with step("The provider hangs: the agent is thinking, then the assistant is unavailable"):
        await llm.set(hang_next=1)
        sent = await send(session, "Hello into a hanging provider")
        failed_rid = sent.data["request_id"]
        await session.dashboard.chat.wait_for_tool_activity("thinking")
        thinking = await session.ws.wait_for("agent_thinking", where={"request_id": failed_rid}, after=sent)
        error = await expect_failed_turn(
            session, sent, "llm_unavailable", ASSISTANT_UNAVAILABLE, within=llm_timeout * 2 + REPLY_TIMEOUT_S
        )
        # Server-side timestamps of the same process: the LLM call starts right after agent_thinking.
        waited = error.data["ts"] - thinking.data["ts"]
        assert waited >= llm_timeout - 0.2, (
            f"the turn failed {waited:.1f} s into the LLM call, before the {llm_timeout:g} s timeout: not the hang"
        )
        outcomes = [r.get("outcome") for r in await llm.requests()]
        assert "hang" in outcomes, f"the LLM stand-in never hung (requests: {outcomes})"
        assert await session.dashboard.chat.tool_activity() is None, "the UI still says the agent is working"

    async with step("Nothing is stored for the person: no thread, no message, no usage"):
        await assert_nothing_written(pg, failed_rid, "LLM hang")
        await assert_no_usage_events(ch, failed_rid, "LLM hang")
        threads = await pg.backend.count("threads", "user_id = $1::uuid", session.user_id)
        assert threads == 0, f"the failed first message left {threads} empty conversation(s)"
        assert await session.dashboard.chat.active_thread() is None, "the failed new chat is still selected"

    async with step("The next message starts the conversation and succeeds"):
        turn = await complete_turn(session, "Hello again once the provider answers")
        assert "Stand-in reply to: Hello again once the provider answers" in turn.text
        await session.dashboard.wait_for_no_error_banner()
        await assert_same_session(session)

    async with step("Stores: one conversation with exactly this turn, one usage event"):
        await assert_turn_stored_once(pg, ch, turn, llm_calls=1)
        assert await pg.backend.count("threads", "user_id = $1::uuid", session.user_id) == 1
        assert await pg.backend.count("messages", "user_id = $1::uuid", session.user_id) == 2


# ---------------------------------------------------------------------------------------- c) Redis down
@journey(
    name=JOURNEY,
    priority="P1",
    mrr=MRR,
    components=["frontend", "backend", "websocket", "agent", "llm", "redis", "postgres", "clickhouse"],
)
async def test_redis_outage_refuses_the_message_and_the_same_session_recovers(
    stack: Stack,
    page: Page,
    ws_recorder: WsRecorder,
    urls: dict[str, str],
    users: UserFactory,
    llm: LLMControl,
    pg: Any,
    ch: Any,
    redis: Any,
    provider_name: str,
) -> None:
    """Redis stops between two messages, then comes back.

    Expected: the message sent during the outage is refused with `error` store_unavailable
    (recoverable) before any LLM call, the banner says storage is unavailable, the message is
    marked not answered, nothing of it is stored. Redis runs with AOF in the test stack, so after
    the restart the session `auth:session:{sid}` and the chat state are still there; the sign-in
    service answers the very first login after the restart (no 503 from dead pooled connections);
    the next message on the same socket succeeds in the same conversation, and a reload keeps the
    person logged in with the same token (the backend checks the session in Redis again).
    """
    needs_local_stack(stack)
    session = await open_chat(page, ws_recorder, urls, users, provider_name, "redisdown")

    async with step("A first turn completes; the session lives in Redis"):
        first = await complete_turn(session, "Hello before the session store stops")
        assert (await redis.key(f"auth:session:{session.sid}")).exists, (
            "no Redis session for the logged-in person"
        )

    async with restored(stack, "redis") as redis_service:
        async with step("Redis stops: the message is refused, the UI says storage is unavailable"):
            redis_service.stop()
            llm_requests_before = len(await llm.requests())
            sent = await send(session, "Sent while the session store is down")
            failed_rid = sent.data["request_id"]
            await expect_failed_turn(session, sent, "store_unavailable", STORAGE_UNAVAILABLE)
            assert len(await llm.requests()) == llm_requests_before, (
                "the refused message still reached the LLM"
            )
            await assert_nothing_written(pg, failed_rid, "Redis down")
            await session.dashboard.chat.wait_for_connection("connected")

        async with step("Redis comes back"):
            took = await bring_back(redis_service)
            assert redis_service.is_running, f"Redis did not come back ({took:.1f} s)"

    async with step("The session survived the restart (AOF): auth session and chat state still in Redis"):
        await redis.close()  # the probe's pooled connection died with the old process
        auth_session = await redis.key(f"auth:session:{session.sid}")
        assert auth_session.exists, (
            f"auth:session:{session.sid} is gone after the Redis restart: every logged-in person would be "
            "logged out by a Redis restart (platform/harness bug: Redis should persist sessions)"
        )
        assert auth_session.value.get("user_id") == session.user_id
        chat_state = await redis.key(f"chat:session:{session.user_id}")
        assert chat_state.value and chat_state.value.get("active_thread_id") == first.thread_id, (
            f"the chat state lost the active conversation: {chat_state.value!r}"
        )

    async with step("The sign-in service works again: another person logs in"):
        other = await users.logged_in("afterredis")
        assert other.tokens.get("access_token"), "a login right after the Redis restart returned no token"

    async with step("The next message on the same socket succeeds in the same conversation"):
        retry = await complete_turn(session, "Trying again once the session store is back")
        assert retry.thread_id == first.thread_id, "the retry was answered in another conversation"
        await session.dashboard.wait_for_no_error_banner()
        await assert_same_session(session)

    async with step("A reload keeps the person logged in with the same token and conversation"):
        await session.dashboard.reload()
        await session.dashboard.chat.wait_for_messages(4)
        assert await session.dashboard.chat.active_thread(), "no conversation is selected after the reload"
        await assert_same_session(session)

    async with step("Stores: both good turns exactly once, the refused message nowhere"):
        await assert_turn_stored_once(pg, ch, first, llm_calls=1)
        await assert_turn_stored_once(pg, ch, retry, llm_calls=1)
        await assert_nothing_written(pg, failed_rid, "Redis down, after recovery")
        await assert_no_usage_events(ch, failed_rid, "Redis down")
        assert await pg.backend.count("messages", "thread_id = $1::uuid", first.thread_id) == 4


# ---------------------------------------------------------------------------------------- d) ClickHouse down
@journey(
    name=JOURNEY,
    priority="P1",
    mrr=MRR,
    components=["frontend", "backend", "websocket", "agent", "llm", "clickhouse", "postgres", "redis"],
)
async def test_clickhouse_outage_delays_usage_but_loses_none(
    stack: Stack,
    page: Page,
    ws_recorder: WsRecorder,
    urls: dict[str, str],
    users: UserFactory,
    llm: LLMControl,
    pg: Any,
    ch: Any,
    provider_name: str,
) -> None:
    """ClickHouse (usage analytics) stops while the person asks about their usage.

    Expected (docs/wiring.md, usage outbox): the turn still completes for the person (the data
    agent's tool reports usage as temporarily unavailable); its two messages and one outbox row per
    LLM call (2) are committed in PostgreSQL and wait there; "Usage this month" says it is
    unavailable with the banner line for the analytics store. After ClickHouse returns, exactly one
    usage event per LLM call appears (none lost, none doubled), the banner clears with the next
    turn and the card shows the exact total of all three LLM calls.
    """
    needs_local_stack(stack)
    session = await open_chat(page, ws_recorder, urls, users, provider_name, "chdown")
    dashboard = session.dashboard

    async with restored(stack, "clickhouse") as clickhouse:
        async with step("ClickHouse stops: the usage question is still answered"):
            clickhouse.stop()
            turn = await complete_turn(session, "How many tokens did my usage add up to?")
            assert turn.agent == "data", f"the usage question was answered by the {turn.agent!r} agent"
            assert turn.usage["llm_calls"] == 2, f"the data agent made {turn.usage['llm_calls']} LLM call(s)"
            assert "temporarily unavailable" in turn.text, (
                f"the data agent's answer does not say usage is unavailable: {turn.text!r}"
            )
            await assert_same_session(session)

        async with step("The dashboard says usage cannot be loaded from the analytics store"):
            await dashboard.wait_for_error_banner(contains=ANALYTICS_UNAVAILABLE)
            await expect(
                dashboard.usage_card.get_by_test_id("usage-detail"),
                "the usage card does not say usage is unavailable",
            ).to_have_text("Usage is unavailable right now.")

        async with step("The turn is committed in PostgreSQL, its usage waits in the outbox"):
            await assert_turn_pg_only(pg, turn)

        async with step("ClickHouse comes back"):
            await bring_back(clickhouse)

    async with step("The outbox drains: exactly one usage event per LLM call, none lost"):
        await assert_turn_stored_once(pg, ch, turn, llm_calls=2)

    async with step("The next turn succeeds; the banner clears and the card shows the exact total"):
        after = await complete_turn(session, "Thanks, that is all for now")
        await dashboard.wait_for_no_error_banner()
        expected_tokens = sum(t.usage["prompt_tokens"] + t.usage["completion_tokens"] for t in (turn, after))
        usage = await dashboard.wait_for_usage(expected_tokens)
        assert usage.tokens == expected_tokens, (
            f"'Usage this month' shows {usage.tokens} tokens, the three LLM calls used {expected_tokens}"
        )
        await assert_turn_stored_once(pg, ch, after, llm_calls=1)
        assert len(await ch.usage_events(user_id=session.user_id)) == 3, (
            "ClickHouse does not hold exactly 3 events"
        )
        await assert_same_session(session)


async def assert_turn_pg_only(pg: Any, turn: Turn) -> None:
    """While ClickHouse is down: both messages stored once, one pending outbox row per LLM call."""
    __tracebackhide__ = True
    roles = [
        r["role"]
        for r in await pg.backend.rows(
            "SELECT role FROM messages WHERE request_id = $1 ORDER BY role DESC", turn.request_id
        )
    ]
    assert roles == ["user", "assistant"], f"the completed turn is not stored once (roles {roles})"
    outbox = await pg.backend.rows(
        "SELECT prompt_tokens, completion_tokens, flushed_at FROM usage_outbox WHERE request_id = $1",
        turn.request_id,
    )
    assert len(outbox) == turn.usage["llm_calls"], (
        f"{len(outbox)} outbox row(s) for {turn.usage['llm_calls']} LLM calls: usage would be lost or doubled"
    )
    assert all(r["flushed_at"] is None for r in outbox), "usage was marked flushed while ClickHouse is down"
    assert (
        sum(r["prompt_tokens"] + r["completion_tokens"] for r in outbox)
        == turn.usage["prompt_tokens"] + turn.usage["completion_tokens"]
    )


# ---------------------------------------------------------------------------------------- e) backend crash
@journey(
    name=JOURNEY,
    priority="P1",
    mrr=MRR,
    components=["frontend", "backend", "websocket", "agent", "llm", "redis", "postgres", "clickhouse"],
)
async def test_backend_crash_mid_reply_reconnects_and_restores_the_conversation(
    stack: Stack,
    page: Page,
    ws_recorder: WsRecorder,
    urls: dict[str, str],
    users: UserFactory,
    llm: LLMControl,
    pg: Any,
    ch: Any,
    provider_name: str,
) -> None:
    """The backend is SIGKILLed while it streams the second reply of a conversation.

    Expected: the UI shows "Reconnecting…" and the banner says the chat service is unreachable,
    Send is disabled, the cut-off reply says it was interrupted and its message "Not answered — the
    connection was lost"; the interrupted turn writes nothing (turns persist only when complete);
    when the backend is back the page reconnects by itself with the same token,
    `connection_established` names the conversation (from Redis) and the log shows the first turn
    and, still marked, the unanswered message (nothing vanishes silently); the next message is
    answered in that conversation and the first turn is in PostgreSQL exactly once.
    """
    needs_local_stack(stack)
    session = await open_chat(page, ws_recorder, urls, users, provider_name, "backendkill")
    chat = session.dashboard.chat

    async with step("A first turn completes"):
        first = await complete_turn(session, "Remember that my favourite number is forty two")

    async with restored(stack, "backend") as backend:
        async with step("The backend crashes while the second reply streams"):
            # Slow the provider so the crash lands mid-stream, long before the turn could persist.
            await llm.set(latency_ms=1000)
            sent = await send(session, INTERRUPTED_QUESTION)
            interrupted_rid = sent.data["request_id"]
            await session.ws.wait_for("agent_stream", where={"request_id": interrupted_rid}, after=sent)
            backend.kill()
            crashed_at = len(session.ws.frames(direction=None))

        async with step("The UI says the chat service is unreachable and reconnects"):
            await chat.wait_for_connection("reconnecting")
            await session.dashboard.wait_for_error_banner(contains=CHAT_UNREACHABLE)
            await expect(
                chat.send_button, "Send stays enabled while the chat is unreachable"
            ).to_be_disabled()
            await llm.set(latency_ms=0)
            lost = chat.message_items.filter(has_text=INTERRUPTED_QUESTION)
            await expect(lost, "the cut-off message is not marked as failed").to_have_attribute(
                "data-status", "failed"
            )
            await expect(lost).to_contain_text(LOST_CONNECTION_NOTE)
            cut_reply = chat.assistant_items.last
            await expect(cut_reply, "the cut-off reply is not marked").to_have_attribute(
                "data-status", "failed"
            )
            await expect(cut_reply).to_contain_text("The reply was interrupted.")

        async with step("The interrupted turn wrote nothing"):
            await assert_nothing_written(pg, interrupted_rid, "backend crash mid-reply")

        async with step("The backend comes back"):
            await bring_back(backend)

    async with step("The page reconnects by itself and restores the conversation"):
        await chat.wait_for_connection("connected")
        established = await session.ws.wait_for("connection_established", after=crashed_at - 1)
        assert established.data["payload"]["active_thread_id"] == first.thread_id, (
            "after the restart the chat service no longer knows the open conversation"
        )
        assert session.ws.reconnects >= 1, "the page never opened a new WebSocket"
        await expect(
            chat.message_items,
            "the restored conversation is not the first turn plus the cut-off message, marked",
        ).to_have_count(3)
        messages = await chat.messages()
        assert [(m.role, m.status) for m in messages][1:] == [
            ("assistant", "complete"),
            ("user", "failed"),
        ], f"the restored conversation is {messages}"
        assert messages[0].text == "Remember that my favourite number is forty two"
        assert messages[1].text == first.text, (
            "the restored reply differs from the one streamed before the crash"
        )
        assert messages[2].text == INTERRUPTED_QUESTION, "the cut-off message vanished after the restore"
        await expect(chat.message_items.last).to_contain_text(LOST_CONNECTION_NOTE)
        await session.dashboard.wait_for_no_error_banner()
        await assert_same_session(session)

    async with step("The next message is answered in the same conversation"):
        after = await complete_turn(session, "Are you back with me")
        assert after.thread_id == first.thread_id, "the next message was answered in another conversation"
        await assert_same_session(session)

    async with step("Stores: the first turn exactly once, the interrupted one nowhere"):
        await assert_turn_stored_once(pg, ch, first, llm_calls=1)
        await assert_turn_stored_once(pg, ch, after, llm_calls=1)
        await assert_nothing_written(pg, interrupted_rid, "backend crash, after recovery")
        await assert_no_usage_events(ch, interrupted_rid, "backend crash")
        assert await pg.backend.count("messages", "thread_id = $1::uuid", first.thread_id) == 4


# ---------------------------------------------------------------------------------------- f) PostgreSQL down
@journey(
    name=JOURNEY,
    priority="P1",
    mrr=MRR,
    components=["frontend", "backend", "websocket", "agent", "llm", "postgres", "redis", "clickhouse"],
)
async def test_postgres_outage_refuses_the_message_and_the_same_session_recovers(
    stack: Stack,
    page: Page,
    ws_recorder: WsRecorder,
    urls: dict[str, str],
    users: UserFactory,
    llm: LLMControl,
    pg: Any,
    ch: Any,
    provider_name: str,
) -> None:
    """PostgreSQL stops between two messages of a conversation, then comes back.

    Expected: the message is refused with `error` store_unavailable (recoverable) before any LLM
    call (no tokens spent on a reply that could not be saved), the banner says storage is
    unavailable; after the restart nothing of it exists, a new person can sign up and log in, the
    open socket and session carry on, and the next message is answered in the same conversation.
    """
    needs_local_stack(stack)
    session = await open_chat(page, ws_recorder, urls, users, provider_name, "pgdown")

    async with step("A first turn completes"):
        first = await complete_turn(session, "Hello before the database stops")

    async with restored(stack, "postgres") as postgres:
        async with step("PostgreSQL stops: the message is refused, the UI says storage is unavailable"):
            postgres.stop()
            llm_requests_before = len(await llm.requests())
            sent = await send(session, "Sent while the database is down")
            failed_rid = sent.data["request_id"]
            await expect_failed_turn(session, sent, "store_unavailable", STORAGE_UNAVAILABLE)
            assert len(await llm.requests()) == llm_requests_before, (
                "the refused message still reached the LLM"
            )
            await session.dashboard.chat.wait_for_connection("connected")

        async with step("PostgreSQL comes back"):
            await bring_back(postgres)

    async with step("The sign-in service works again: another person signs up and logs in"):
        other = await users.logged_in("afterpg")
        assert other.tokens.get("access_token"), (
            "a login right after the PostgreSQL restart returned no token"
        )

    async with step("The next message succeeds in the same conversation, same session"):
        retry = await complete_turn(session, "Trying again once the database is back")
        assert retry.thread_id == first.thread_id, "the retry was answered in another conversation"
        await session.dashboard.wait_for_no_error_banner()
        await assert_same_session(session)

    async with step("Stores: both good turns exactly once, the refused message nowhere"):
        await pg.backend.close()  # the probe's pooled connections died with the old server
        await assert_nothing_written(pg, failed_rid, "PostgreSQL down")
        await assert_no_usage_events(ch, failed_rid, "PostgreSQL down")
        await assert_turn_stored_once(pg, ch, first, llm_calls=1)
        await assert_turn_stored_once(pg, ch, retry, llm_calls=1)
        assert await pg.backend.count("messages", "thread_id = $1::uuid", first.thread_id) == 4
