"""Journey: error recovery cascade. A dependency fails mid-conversation; the UI says what is wrong,
nothing is half-written or lost, and when the dependency returns the SAME browser session (same
access token, never the /login page) carries on and the next message succeeds.

Faults are real: the LLM stand-in's /control (500, hang), and stopping / killing the real Redis,
ClickHouse, backend and PostgreSQL processes through `app.begin_outage(name)`. Every stopped process
is started again (in its "comes back" step, at the latest when the test ends) and waited on until it
answers its readiness probe, so the journeys after these find the stack as it was.
"""

from __future__ import annotations

import time
from typing import Any

from harness.app import App, ChatSession, CompletedTurn, TurnEvent
from harness.journey import journey
from harness.steps import step

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
async def expect_failed_turn(
    session: ChatSession, sent: TurnEvent, code: str, banner: str, within: float | None = None
) -> TurnEvent:
    """The turn of `sent` ends in an `error` event, the screen says why and the message is marked
    failed. With error codes (capability error_codes): the event is `code`, recoverable, and the
    banner line is `banner`, tagged with the code, the message noted as not answered; without,
    the screen shows the error the chat service reported."""
    __tracebackhide__ = True
    rid = sent.request_id
    coded = session.app.supports("error_codes")
    error = await session.turns.wait_for(
        "error", request_id=rid, timeout=within or session.app.reply_timeout, after=sent
    )
    if coded:
        assert error.code == code, (
            f"the chat service reported {error.code!r} ({error.message!r}), expected {code!r}"
        )
        assert error.recoverable is True, (
            f"the {code} error is not marked recoverable: code={error.code!r} message={error.message!r} "
            f"recoverable={error.recoverable!r}"
        )
    assert all(e.request_id != rid for e in session.turns.events("completed")), (
        "the failed message also got a completed reply"
    )
    if coded:
        line = await session.dashboard.wait_for_error_banner(contains=banner)
        await session.dashboard.wait_for_error_code(
            code, 1, f"the banner line {line!r} tagged with the error code {code}"
        )
    else:
        assert error.message, f"the chat service reported an error without a word: {error.frame}"
        await session.dashboard.wait_for_error_banner(contains=error.message)
    user_item = session.dashboard.chat.message_item(request_id=rid, role="user")
    await user_item.wait_for_status("failed", "the unanswered message marked failed")
    if coded:
        await user_item.wait_for_text(NOT_ANSWERED, "the unanswered message to carry its note")
    return error


def error_received_at(error: TurnEvent) -> float:
    """The wall-clock time the browser got the frame of `error` (frames keep a monotonic time)."""
    at = getattr(error.frame, "at", None)
    assert at is not None, f"the error came in no recorded frame: {error.frame}"
    return time.time() - (time.monotonic() - float(at))


def kept_failed_turns(app: App) -> int:
    """How many stored messages a failed turn leaves in its conversation: none where failed turns are
    discarded, else the person's message and a reply that holds the error."""
    return 0 if app.supports("failed_turns_discarded") else 2


async def assert_failed_turn_kept_as_failed(
    app: App, sent: TurnEvent, what: str, *, error_stored: bool = True
) -> None:
    """A turn that failed: nothing of it stored (capability failed_turns_discarded), or the
    person's message kept with a reply that holds no answer and no tokens, and the error (unless
    the platform died before it could store one); no usage (outbox) row either way."""
    __tracebackhide__ = True
    rid = str(sent.request_id)
    if app.supports("failed_turns_discarded"):
        await assert_nothing_written(app, rid, what)
        return
    kept = await app.records.messages(request_id=rid)
    assert [(m.role, m.content) for m in kept] == [("user", sent.content), ("assistant", "")], (
        f"{what}: the failed turn is stored as {[(m.role, m.content) for m in kept]}"
    )
    assert all(not m.prompt_tokens and not m.completion_tokens for m in kept), (
        f"{what}: the failed turn is stored with tokens: {kept}"
    )
    if error_stored:
        errors = await app.records.message_errors(str(kept[1].thread_id))
        assert rid in errors, f"{what}: the failed reply was stored without its error ({errors})"
    if app.supports("usage_outbox"):
        assert await app.records.pending_usage(rid) == 0, f"{what}: the failed turn left usage in the outbox"


async def assert_nothing_written(app: App, rid: str, what: str) -> None:
    """No message and no usage (outbox) row for a request that failed."""
    __tracebackhide__ = True
    messages = [(m.role, m.content) for m in await app.records.messages(request_id=rid)]
    assert messages == [], f"{what}: messages were stored for a message the person saw fail: {messages}"
    if app.supports("usage_outbox"):
        outbox = await app.records.pending_usage(rid)
        assert outbox == 0, f"{what}: {outbox} usage row(s) would be billed for a message the person saw fail"


async def assert_no_usage_events(app: App, rid: str, what: str) -> None:
    __tracebackhide__ = True
    if not app.supports("usage_analytics"):
        return
    events = await app.records.usage(request_id=rid)
    assert events == [], (
        f"{what}: the analytics store bills {len(events)} usage event(s) for a failed message"
    )


async def assert_turn_stored_once(app: App, turn: CompletedTurn, llm_calls: int) -> None:
    """The turn's user + assistant message exactly once in its thread, and one usage event per LLM call."""
    __tracebackhide__ = True
    rows = await app.records.messages(request_id=turn.request_id)
    assert [r.role for r in rows] == ["user", "assistant"], (
        f"expected the message and its reply stored once each, found roles {[r.role for r in rows]}"
    )
    assert {r.thread_id for r in rows} == {turn.thread_id}, "the turn was stored in another conversation"
    assistant = rows[1]
    assert (assistant.prompt_tokens, assistant.completion_tokens) == (
        turn.usage["prompt_tokens"],
        turn.usage["completion_tokens"],
    ), "stored token counts differ from the reply's"
    if not app.supports("usage_analytics"):
        return

    async def usage_events_flushed() -> list[Any]:
        events = await app.records.usage(request_id=turn.request_id)
        assert len(events) == llm_calls, (
            f"{len(events)} usage event(s) in the analytics store, expected {llm_calls}"
        )
        if app.supports("usage_outbox"):
            pending = await app.records.pending_usage(turn.request_id, unflushed_only=True)
            assert pending == 0, f"{pending} usage row(s) still waiting in the outbox"
        return events

    events = await app.settle(
        usage_events_flushed, timeout=15, description=f"usage of request {turn.request_id}"
    )
    assert len({e.event_id for e in events}) == llm_calls, "a usage event was written twice"
    assert sum(e.prompt_tokens for e in events) == turn.usage["prompt_tokens"]
    assert sum(e.completion_tokens for e in events) == turn.usage["completion_tokens"]


async def assert_turn_pg_only(app: App, turn: CompletedTurn) -> None:
    """While ClickHouse is down: both messages stored once, one pending outbox row per LLM call."""
    __tracebackhide__ = True
    roles = [m.role for m in await app.records.messages(request_id=turn.request_id)]
    assert roles == ["user", "assistant"], f"the completed turn is not stored once (roles {roles})"
    outbox = await app.records.outbox(turn.request_id)
    assert len(outbox) == turn.usage["llm_calls"], (
        f"{len(outbox)} outbox row(s) for {turn.usage['llm_calls']} LLM calls: usage would be lost or doubled"
    )
    assert all(not r.delivered for r in outbox), (
        "usage was marked delivered while the analytics store is down"
    )
    assert (
        sum(r.prompt_tokens + r.completion_tokens for r in outbox)
        == turn.usage["prompt_tokens"] + turn.usage["completion_tokens"]
    )


# ---------------------------------------------------------------------------------------- a) LLM 500
@journey(
    name=JOURNEY,
    priority="P1",
    mrr=MRR,
    components=["frontend", "backend", "websocket", "agent", "llm", "postgres", "clickhouse", "redis"],
    drills=["llm-error-reported-as-internal", "owui-message-usage-swapped"],
)
async def test_llm_error_shows_assistant_unavailable_and_next_message_succeeds(
    app: App, page: Any, ws_recorder: Any
) -> None:
    """The LLM answers 500 mid-conversation.

    Expected: `error` llm_unavailable (recoverable) for that request, the banner says the assistant
    is unavailable, the message is marked not answered; nothing of that request is stored (no
    message rows, no outbox row, no usage event) and the agent slot is released; the next message
    in the same conversation succeeds and the banner clears, with the same session. A platform
    that keeps failed turns keeps this one as the message and a reply holding the error, no tokens.
    """
    session = await app.chat_session(page, ws_recorder, "llm500")

    async with step("A first turn completes"):
        first = await session.complete_turn("Hello before the provider fails")

    async with step("The LLM provider answers 500: the UI says the assistant is unavailable"):
        # The call that streams the reply the person waits for (not a silent pre-query).
        await app.llm.set(fail_next=1, status=500, fault_scope="stream")
        sent = await session.send("This one meets a provider error")
        failed_rid = sent.request_id
        await expect_failed_turn(session, sent, "llm_unavailable", ASSISTANT_UNAVAILABLE)
        outcomes = [r.get("outcome") for r in await app.llm.requests()]
        assert "fail_500" in outcomes, f"the LLM stand-in never answered 500 (requests: {outcomes})"

    async with step("Nothing of the failed message is stored or billed"):
        await assert_failed_turn_kept_as_failed(app, sent, "LLM 500")
        await assert_no_usage_events(app, failed_rid, "LLM 500")
        assert len(await app.records.messages(thread_id=first.thread_id)) == 2 + kept_failed_turns(app), (
            "the conversation holds more than the first turn and the failed message"
        )

        if app.supports("agent_concurrency_limit"):

            async def agent_slot_released() -> None:
                slot = await app.records.rate_counter("agent", session.user_id)
                assert slot.value in (None, "0"), (
                    f"the failed turn still holds an agent slot (agent runs counted: {slot.value!r})"
                )

            await app.settle(
                agent_slot_released, timeout=5, description="the failed turn's agent slot is released"
            )

    async with step("The next message in the same conversation succeeds, the banner clears"):
        retry = await session.complete_turn("Trying again after the provider error")
        assert retry.thread_id == first.thread_id, "the retry was answered in another conversation"
        assert "Stand-in reply to: Trying again after the provider error" in retry.text
        await session.dashboard.wait_for_no_error_banner()
        await session.assert_same_session()

    async with step("Stores: both good turns exactly once, one usage event each, the failed one nowhere"):
        await assert_turn_stored_once(app, first, llm_calls=1)
        await assert_turn_stored_once(app, retry, llm_calls=1)
        assert len(await app.records.messages(thread_id=first.thread_id)) == 4 + kept_failed_turns(app)
        await assert_no_usage_events(app, failed_rid, "LLM 500 after recovery")


# ---------------------------------------------------------------------------------------- b) LLM hang
@journey(
    name=JOURNEY,
    priority="P1",
    mrr=MRR,
    components=["frontend", "backend", "websocket", "agent", "llm", "postgres", "clickhouse", "redis"],
    drills=["llm-read-timeout-dropped", "owui-stream-timeout-dropped"],
)
async def test_llm_hang_times_out_with_assistant_unavailable_and_next_message_succeeds(
    app: App, page: Any, ws_recorder: Any
) -> None:
    """The LLM accepts the first message of a new chat and never answers.

    Expected: the UI shows the agent thinking, then after the platform's LLM timeout the backend
    gives up with `error` llm_unavailable (recoverable), the banner says the assistant is
    unavailable; no thread, no message, no usage exists for the person; the chat goes back to "new"
    and the next message starts one conversation that is stored exactly once. A platform that keeps
    failed turns keeps the new conversation with the failed message, and the next one continues it.
    """
    llm_timeout = app.llm_timeout()
    session = await app.chat_session(page, ws_recorder, "llmhang")

    async with step("The provider hangs: the agent is thinking, then the assistant is unavailable"):
        await app.llm.set(hang_next=1, fault_scope="stream")
        sent = await session.send("Hello into a hanging provider")
        failed_rid = sent.request_id
        thinks = app.supports("thinking_events")
        if thinks:
            await session.dashboard.chat.wait_for_tool_activity("thinking")
            thinking = await session.turns.wait_for("thinking", request_id=failed_rid, after=sent)
        error = await expect_failed_turn(
            session,
            sent,
            "llm_unavailable",
            ASSISTANT_UNAVAILABLE,
            within=llm_timeout * 2 + app.reply_timeout,
        )
        hung = [r for r in await app.llm.requests() if r.get("outcome") == "hang"]
        assert hung, (
            f"the LLM stand-in never hung (requests: {[r.get('outcome') for r in await app.llm.requests()]})"
        )
        if thinks:
            # Server-side timestamps of the same process: the LLM call starts right after `thinking`.
            assert error.ts is not None and thinking.ts is not None, "the server's events carry no send time"
            waited = error.ts - thinking.ts
        else:
            # One machine, one wall clock: from the stand-in taking the call to the error's frame.
            waited = error_received_at(error) - float(hung[-1]["received_at"])
        assert waited >= llm_timeout - 0.2, (
            f"the turn failed {waited:.1f} s into the LLM call, before the {llm_timeout:g} s timeout: not the hang"
        )
        # Discriminates: an LLM client without a read timeout (drill llm-read-timeout-dropped).
        assert waited <= llm_timeout * 2 + 1, (
            f"the person waited {waited:.1f} s for the hanging LLM: far past the {llm_timeout:g} s LLM timeout"
        )
        if thinks:
            assert await session.dashboard.chat.tool_activity() is None, (
                "the UI still says the agent is working"
            )

    async with step("Nothing is stored for the person but the failure: no answer, no usage"):
        await assert_failed_turn_kept_as_failed(app, sent, "LLM hang")
        await assert_no_usage_events(app, failed_rid, "LLM hang")
        threads = len(await app.records.threads(session.user_id))
        if app.supports("failed_turns_discarded"):
            assert threads == 0, f"the failed first message left {threads} empty conversation(s)"
            assert await session.dashboard.chat.active_thread() is None, (
                "the failed new chat is still selected"
            )
        else:  # the new conversation holds the failed message, and stays open
            assert threads == 1, f"the failed first message left {threads} conversation(s), expected its own"
            assert await session.dashboard.chat.active_thread(), (
                "the conversation of the failed message closed"
            )

    async with step("The next message is answered, in the one conversation"):
        turn = await session.complete_turn("Hello again once the provider answers")
        assert "Stand-in reply to: Hello again once the provider answers" in turn.text
        await session.dashboard.wait_for_no_error_banner()
        await session.assert_same_session()

    async with step("Stores: one conversation with exactly this turn, one usage event"):
        await assert_turn_stored_once(app, turn, llm_calls=1)
        assert len(await app.records.threads(session.user_id)) == 1
        assert len(await app.records.user_messages(session.user_id)) == 2 + kept_failed_turns(app)


# ---------------------------------------------------------------------------------------- c) Redis down
@journey(
    name=JOURNEY,
    priority="P1",
    mrr=MRR,
    components=["frontend", "backend", "websocket", "agent", "llm", "redis", "postgres", "clickhouse"],
    needs=["service_control", "session_restore"],
    drills=["redis-outage-reported-as-internal", "owui-session-pool-forgets-chat"],
)
async def test_redis_outage_refuses_the_message_and_the_same_session_recovers(
    app: App, page: Any, ws_recorder: Any
) -> None:
    """Redis stops between two messages, then comes back.

    Expected: the message sent during the outage is refused with `error` store_unavailable
    (recoverable) before any LLM call, the banner says storage is unavailable, the message is
    marked not answered, nothing of it is stored. Redis runs with AOF in the test stack, so after
    the restart the sign-in session and the chat state are still there; the sign-in service
    answers the very first login after the restart (no 503 from dead pooled connections); the next
    message on the same socket succeeds in the same conversation, and a reload keeps the person
    logged in with the same token (the backend checks the session in Redis again).
    """
    session = await app.chat_session(page, ws_recorder, "redisdown")

    sessions_in_redis = app.supports("session_store")
    async with step("A first turn completes; the session lives in Redis"):
        first = await session.complete_turn("Hello before the session store stops")
        if sessions_in_redis:
            assert (await app.records.session(session.session_id)).exists, (
                "no stored session for the logged-in person"
            )
        chat_state = await app.records.chat_state(session.user_id)
        assert chat_state.active_thread_id == first.thread_id, (
            f"Redis does not hold the open conversation: {chat_state.raw!r}"
        )

    async with step("Redis stops: the message is refused, the UI says storage is unavailable"):
        redis = await app.begin_outage("redis")
        llm_requests_before = len(await app.llm.requests())
        sent = await session.send("Sent while the session store is down")
        failed_rid = sent.request_id
        await expect_failed_turn(session, sent, "store_unavailable", STORAGE_UNAVAILABLE)
        assert len(await app.llm.requests()) == llm_requests_before, (
            "the refused message still reached the LLM"
        )
        await assert_nothing_written(app, failed_rid, "Redis down")
        if app.supports("connection_indicator"):
            await session.dashboard.chat.wait_for_connection("connected")

    async with step("Redis comes back"):
        started = time.monotonic()
        await redis.end()
        took = time.monotonic() - started
        assert app.is_running("redis"), f"Redis did not come back ({took:.1f} s)"

    async with step("The session survived the restart (AOF): auth session and chat state still in Redis"):
        await app.records.reconnect()  # the probes' pooled connections died with the old process
        if sessions_in_redis:
            auth_session = await app.records.session(session.session_id)
            assert auth_session.exists, (
                f"the sign-in session {session.session_id} is gone after the Redis restart: every logged-in "
                "person would be logged out by a Redis restart (platform/harness bug: Redis should persist sessions)"
            )
            assert auth_session.user_id == session.user_id
        chat_state = await app.records.chat_state(session.user_id)
        assert chat_state.raw and chat_state.active_thread_id == first.thread_id, (
            f"the chat state lost the active conversation: {chat_state.raw!r}"
        )

    async with step("The sign-in service works again: another person logs in"):
        other = await app.users.logged_in("afterredis")
        assert other.tokens.get("access_token"), "a login right after the Redis restart returned no token"

    async with step("The next message on the same socket succeeds in the same conversation"):
        retry = await session.complete_turn("Trying again once the session store is back")
        assert retry.thread_id == first.thread_id, "the retry was answered in another conversation"
        await session.dashboard.wait_for_no_error_banner()
        await session.assert_same_session()

    async with step("A reload keeps the person logged in with the same token and conversation"):
        await session.dashboard.reload()
        await session.dashboard.chat.wait_for_messages(4)
        assert await session.dashboard.chat.active_thread(), "no conversation is selected after the reload"
        await session.assert_same_session()

    async with step("Stores: both good turns exactly once, the refused message nowhere"):
        await assert_turn_stored_once(app, first, llm_calls=1)
        await assert_turn_stored_once(app, retry, llm_calls=1)
        await assert_nothing_written(app, failed_rid, "Redis down, after recovery")
        await assert_no_usage_events(app, failed_rid, "Redis down")
        assert len(await app.records.messages(thread_id=first.thread_id)) == 4


# ---------------------------------------------------------------------------------------- d) ClickHouse down
@journey(
    name=JOURNEY,
    priority="P1",
    mrr=MRR,
    components=["frontend", "backend", "websocket", "agent", "llm", "clickhouse", "postgres", "redis"],
    needs=["service_control", "usage_analytics", "usage_outbox", "agent_routing", "tool_calls"],
    drills=["usage-tool-assumes-analytics-up"],
)
async def test_clickhouse_outage_delays_usage_but_loses_none(app: App, page: Any, ws_recorder: Any) -> None:
    """ClickHouse (usage analytics) stops while the person asks about their usage.

    Expected (docs/wiring.md, usage outbox): the turn still completes for the person (the data
    agent's tool reports usage as temporarily unavailable); its two messages and one outbox row per
    LLM call (2) are committed in PostgreSQL and wait there; "Usage this month" says it is
    unavailable with the banner line for the analytics store. After ClickHouse returns, exactly one
    usage event per LLM call appears (none lost, none doubled), the banner clears with the next
    turn and the card shows the exact total of all three LLM calls.
    """
    session = await app.chat_session(page, ws_recorder, "chdown")
    dashboard = session.dashboard

    async with step("ClickHouse stops: the usage question is still answered"):
        clickhouse = await app.begin_outage("clickhouse")
        turn = await session.complete_turn("How many tokens did my usage add up to?")
        assert turn.agent == "data", f"the usage question was answered by the {turn.agent!r} agent"
        assert turn.usage["llm_calls"] == 2, f"the data agent made {turn.usage['llm_calls']} LLM call(s)"
        assert "temporarily unavailable" in turn.text, (
            f"the data agent's answer does not say usage is unavailable: {turn.text!r}"
        )
        await session.assert_same_session()

    async with step("The dashboard says usage cannot be loaded from the analytics store"):
        await dashboard.wait_for_error_banner(contains=ANALYTICS_UNAVAILABLE)
        await dashboard.wait_for_usage_detail(
            "Usage is unavailable right now.", "the usage card to say usage is unavailable"
        )

    async with step("The turn is committed in PostgreSQL, its usage waits in the outbox"):
        await assert_turn_pg_only(app, turn)

    async with step("ClickHouse comes back"):
        await clickhouse.end()

    async with step("The outbox drains: exactly one usage event per LLM call, none lost"):
        await assert_turn_stored_once(app, turn, llm_calls=2)

    async with step("The next turn succeeds; the banner clears and the card shows the exact total"):
        after = await session.complete_turn("Thanks, that is all for now")
        await dashboard.wait_for_no_error_banner()
        expected_tokens = sum(t.usage["prompt_tokens"] + t.usage["completion_tokens"] for t in (turn, after))
        usage = await dashboard.wait_for_usage(expected_tokens)
        assert usage.tokens == expected_tokens, (
            f"'Usage this month' shows {usage.tokens} tokens, the three LLM calls used {expected_tokens}"
        )
        await assert_turn_stored_once(app, after, llm_calls=1)
        assert len(await app.records.usage(user_id=session.user_id)) == 3, (
            "the analytics store does not hold exactly 3 events"
        )
        await session.assert_same_session()


# ---------------------------------------------------------------------------------------- e) backend crash
@journey(
    name=JOURNEY,
    priority="P1",
    mrr=MRR,
    components=["frontend", "backend", "websocket", "agent", "llm", "redis", "postgres", "clickhouse"],
    needs=["service_control", "streaming", "session_restore"],
    drills=["greeting-forgets-thread"],
)
async def test_backend_crash_mid_reply_reconnects_and_restores_the_conversation(
    app: App, page: Any, ws_recorder: Any
) -> None:
    """The backend is SIGKILLed while it streams the second reply of a conversation.

    Expected: the UI shows "Reconnecting…" and the banner says the chat service is unreachable,
    Send is disabled, the cut-off reply says it was interrupted and its message "Not answered — the
    connection was lost"; the interrupted turn writes nothing (turns persist only when complete);
    when the backend is back the page reconnects by itself with the same token, the server's
    greeting names the conversation (from Redis) and the log shows the first turn and, still
    marked, the unanswered message (nothing vanishes silently); the next message is answered in
    that conversation and the first turn is stored exactly once. Without a connection indicator
    (capability connection_indicator) or a greeting (socket_greeting), the cut-off turn is still
    marked failed, and the page's new socket is the reconnection.
    """
    session = await app.chat_session(page, ws_recorder, "backendkill")
    chat = session.dashboard.chat
    indicator, greeting = app.supports("connection_indicator"), app.supports("socket_greeting")

    async with step("A first turn completes"):
        first = await session.complete_turn("Remember that my favourite number is forty two")

    async with step("The backend crashes while the second reply streams"):
        # Slow the provider so the crash lands mid-stream, long before the turn could persist.
        await app.llm.set(latency_ms=1000)
        sent = await session.send(INTERRUPTED_QUESTION)
        interrupted_rid = sent.request_id
        await session.turns.wait_for("chunk", request_id=interrupted_rid, after=sent)
        backend = await app.begin_outage(app.backend_service, kill=True)
        crashed_at = session.turns.mark()

    async with step("The UI says the chat service is unreachable and reconnects"):
        await app.llm.set(latency_ms=0)
        if indicator:
            await chat.wait_for_connection("reconnecting")
            await session.dashboard.wait_for_error_banner(contains=CHAT_UNREACHABLE)
            await chat.wait_for_send_disabled("Send disabled while the chat is unreachable")
        lost = chat.message_item(containing=INTERRUPTED_QUESTION)
        await lost.wait_for_status("failed", "the cut-off message marked as failed")
        if indicator:
            await lost.wait_for_text(LOST_CONNECTION_NOTE)
        cut_reply = chat.reply_item(-1)
        await cut_reply.wait_for_status("failed", "the cut-off reply marked failed")
        if indicator:
            await cut_reply.wait_for_text("The reply was interrupted.")

    async with step("The interrupted turn wrote nothing"):
        await assert_failed_turn_kept_as_failed(app, sent, "backend crash mid-reply", error_stored=False)

    async with step("The backend comes back"):
        await backend.end()

    async with step("The page reconnects by itself and restores the conversation"):
        if indicator:
            await chat.wait_for_connection("connected")
        if greeting:
            established = await session.turns.wait_for("connected", after=crashed_at)
            assert established.active_thread_id == first.thread_id, (
                "after the restart the chat service no longer knows the open conversation"
            )

        async def reconnected() -> None:
            assert session.recorder.reconnects >= 1, "the page never opened a new WebSocket"

        await app.settle(reconnected, timeout=app.reply_timeout, description="the page's new WebSocket")
        kept = kept_failed_turns(app)  # a kept cut-off turn shows its failed reply too
        await chat.wait_for_message_count(
            3 + kept // 2, "the restored conversation to be the first turn plus the cut-off message, marked"
        )
        messages = await chat.messages()
        assert [(m.role, m.status) for m in messages][1:] == [
            ("assistant", "complete"),
            ("user", "failed"),
            *([("assistant", "failed")] if kept else []),
        ], f"the restored conversation is {messages}"
        assert messages[0].text == "Remember that my favourite number is forty two"
        assert messages[1].text == first.text, (
            "the restored reply differs from the one streamed before the crash"
        )
        assert messages[2].text == INTERRUPTED_QUESTION, "the cut-off message vanished after the restore"
        if indicator:
            await chat.last_message().wait_for_text(LOST_CONNECTION_NOTE)
        await session.dashboard.wait_for_no_error_banner()
        await session.assert_same_session()

    async with step("The next message is answered in the same conversation"):
        after = await session.complete_turn("Are you back with me")
        assert after.thread_id == first.thread_id, "the next message was answered in another conversation"
        await session.assert_same_session()

    async with step("Stores: the first turn exactly once, the interrupted one nowhere"):
        await assert_turn_stored_once(app, first, llm_calls=1)
        await assert_turn_stored_once(app, after, llm_calls=1)
        await assert_failed_turn_kept_as_failed(
            app, sent, "backend crash, after recovery", error_stored=False
        )
        await assert_no_usage_events(app, interrupted_rid, "backend crash")
        assert len(await app.records.messages(thread_id=first.thread_id)) == 4 + kept_failed_turns(app)


# ---------------------------------------------------------------------------------------- f) PostgreSQL down
@journey(
    name=JOURNEY,
    priority="P1",
    mrr=MRR,
    components=["frontend", "backend", "websocket", "agent", "llm", "postgres", "redis", "clickhouse"],
    needs=["service_control"],
    drills=["postgres-outage-reported-as-internal", "owui-auth-db-outage-unhandled"],
)
async def test_postgres_outage_refuses_the_message_and_the_same_session_recovers(
    app: App, page: Any, ws_recorder: Any
) -> None:
    """PostgreSQL stops between two messages of a conversation, then comes back.

    Expected: the message is refused with `error` store_unavailable (recoverable) before any LLM
    call (no tokens spent on a reply that could not be saved), the banner says storage is
    unavailable; after the restart nothing of it exists, a new person can sign up and log in, the
    open socket and session carry on, and the next message is answered in the same conversation.
    """
    session = await app.chat_session(page, ws_recorder, "pgdown")

    async with step("A first turn completes"):
        first = await session.complete_turn("Hello before the database stops")

    async with step("PostgreSQL stops: the message is refused, the UI says storage is unavailable"):
        postgres = await app.begin_outage("postgres")
        llm_requests_before = len(await app.llm.requests())
        sent = await session.send("Sent while the database is down")
        failed_rid = sent.request_id
        await expect_failed_turn(session, sent, "store_unavailable", STORAGE_UNAVAILABLE)
        assert len(await app.llm.requests()) == llm_requests_before, (
            "the refused message still reached the LLM"
        )
        if app.supports("connection_indicator"):
            await session.dashboard.chat.wait_for_connection("connected")

    async with step("PostgreSQL comes back"):
        await postgres.end()

    async with step("The sign-in service works again: another person signs up and logs in"):
        other = await app.users.logged_in("afterpg")
        assert other.tokens.get("access_token"), (
            "a login right after the PostgreSQL restart returned no token"
        )

    async with step("The next message succeeds in the same conversation, same session"):
        retry = await session.complete_turn("Trying again once the database is back")
        assert retry.thread_id == first.thread_id, "the retry was answered in another conversation"
        await session.dashboard.wait_for_no_error_banner()
        await session.assert_same_session()

    async with step("Stores: both good turns exactly once, the refused message nowhere"):
        await app.records.reconnect()  # the probes' pooled connections died with the old server
        await assert_nothing_written(app, failed_rid, "PostgreSQL down")
        await assert_no_usage_events(app, failed_rid, "PostgreSQL down")
        await assert_turn_stored_once(app, first, llm_calls=1)
        await assert_turn_stored_once(app, retry, llm_calls=1)
        assert len(await app.records.messages(thread_id=first.thread_id)) == 4
