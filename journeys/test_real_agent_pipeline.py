"""Journey: the supervisor routes each message to the right agent, the data agent reads only the
user's own usage through its tool, turn events follow the contract, answers persist, usage is billed
exactly, and a dropped LLM stream or a malformed frame fails cleanly without breaking the chat."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from harness.app import App, TestUser, TurnEvent, Turns, UsageRecord, gather
from harness.journey import journey
from harness.steps import step

COMPONENTS = ["frontend", "backend", "websocket", "agent", "llm", "clickhouse", "postgres"]

# Routing keywords (stack/backend/agents.py): optimi[sz]e/reduce/faster/cheaper/improve -> optimization,
# usage/token(s)/cost(s)/spend/bill -> data, anything else -> general.
GENERAL_Q = "What is the capital of France?"
OPTIMIZATION_Q = "How can I reduce my latency?"
DROPPED_Q = "Tell me a story about a lighthouse"
RECOVERY_Q = "Thanks, and what is the weather like on Mars?"

# One turn's events, in the contract's order: the tool pair only for a turn that needs a tool (the
# data agent's); "thinking" only where the platform reports it.
TURN_SHAPE = r"^turn_started {thinking}(?:tool_call tool_result )?(?:chunk )+completed$"
FRAME_WAIT_S = 20.0


# ------------------------------------------------------------------------------------- helpers
async def sent_request_id(turns: Turns, content: str) -> str:
    """The request id the page put on the user message carrying `content`."""
    sent = await turns.sent(content, timeout=FRAME_WAIT_S)
    rid = sent.request_id
    assert rid, f"the page sent {content!r} without a request id"
    return str(rid)


def assert_turn_contract(app: App, events: list[TurnEvent], agent: str, with_tool: bool) -> TurnEvent:
    """The turn's events follow the contract; -> the completed event."""
    __tracebackhide__ = True
    kinds = [e.kind for e in events]
    shape = TURN_SHAPE.format(thinking="thinking " if app.supports("thinking_events") else "")
    assert re.match(shape, " ".join(kinds)), f"the {agent} turn's events break the contract order: {kinds}"
    has_tool = "tool_call" in kinds
    assert has_tool == with_tool, (
        f"the {agent} agent {'did not call' if with_tool else 'called'} a tool: event kinds {kinds}"
    )
    started = events[0]
    completed = events[-1]
    if app.supports("agent_routing"):
        assert started.agent == agent, f"the turn started names agent {started.agent!r}, expected {agent!r}"
        assert completed.agent == agent, (
            f"the completed turn names agent {completed.agent!r}, expected {agent!r}"
        )
    run_ids = {e.run_id for e in events}
    assert run_ids == {started.run_id}, f"one turn's events carry several run ids: {run_ids}"
    chunks = [e.chunk or "" for e in events if e.kind == "chunk"]
    assert chunks, f"the {agent} agent streamed no chunk"
    assert "".join(chunks) == completed.content, (
        f"the streamed chunks of the {agent} agent {''.join(chunks)!r} differ from the final answer "
        f"{completed.content!r}"
    )
    return completed


async def usage_settled(app: App, expected: int, **where: Any) -> list[UsageRecord]:
    """Usage events matching `where`, once exactly `expected` of them arrived."""

    async def check() -> list[UsageRecord]:
        rows = await app.records.usage(**where)
        assert len(rows) == expected, f"expected {expected} usage row(s) for {where}, found {len(rows)}"
        return rows

    rows: list[UsageRecord] = await app.settle(
        check, timeout=10, description=f"{expected} usage row(s) in the analytics store for {where}"
    )
    return rows


# ------------------------------------------------------------------------------------- journey
@journey(
    name="Agent pipeline",
    priority="P0",
    mrr=30_000,
    components=COMPONENTS,
    needs=["tool_calls", "streaming", "message_usage"],
    drills=["routing-loses-reduce", "bad-frame-closes-socket"],
)
async def test_agent_pipeline_routes_streams_persists_and_bills(
    app: App, page: Any, ws_recorder: Any
) -> None:
    """Intent routing, the data agent's own-usage tool, event order, persistence, exact usage, clean failures."""
    ada: TestUser
    bob: TestUser
    completed: dict[str, TurnEvent] = {}  # question -> its completed event
    turns = app.turns(ws_recorder)
    routes, analytics = app.supports("agent_routing"), app.supports("usage_analytics")
    discards = app.supports("failed_turns_discarded")
    tool_q, tool = (
        app.tool_question()
    )  # the data agent's usage question and its get_my_usage, on the reference

    async with step("Create Ada and Bob through the API (Bob holds tokens); Ada logs in through the UI"):
        ada, bob = await gather(
            app.users.verified("ada-pipeline", "Ada Pipeline"),
            app.users.logged_in("bob-bystander", "Bob Bystander"),
        )
        dashboard = await app.login(page, ada)
        chat = dashboard.chat

    bad_frames = "A malformed frame on a real socket gets bad_frame and the socket stays usable"
    async with app.socket(bob.access_token) as sock:
        async with step("A program's socket opens and is greeted as Bob"):
            hello = await sock.receive(FRAME_WAIT_S)
            assert hello.kind == "connected", f"Bob's socket opened with {hello.kind!r} ({hello.frame})"
        if app.supports("socket_frame_errors"):
            async with step(bad_frames):
                await sock.send_raw("{this is not json")
                refused = await sock.receive(FRAME_WAIT_S)
                assert refused.kind == "error" and refused.code == "bad_frame", (
                    f"malformed JSON was answered with {refused.kind!r} ({refused.frame}), expected an error bad_frame"
                )
                assert refused.recoverable is True, "bad_frame is not marked recoverable"
                await sock.send_unknown_frame("bogus-type")
                unknown = await sock.receive(FRAME_WAIT_S)
                assert (unknown.kind, unknown.code) == ("error", "bad_frame"), (
                    f"an unknown frame type was answered with {unknown.kind!r} ({unknown.frame}), "
                    "expected an error bad_frame"
                )
        else:
            step.not_applicable(bad_frames, "lacks socket_frame_errors")
        async with step("Bob's next message on the same socket is answered and the socket stays open"):
            await sock.send_message("Hello from Bob", request_id="bob-after-bad-frame")
            turn = await sock.receive_until("completed", FRAME_WAIT_S)
            assert turn[-1].kind == "completed", (
                f"after bad frames, Bob's next message got {[e.kind for e in turn]} instead of a reply"
            )
            assert turn[-1].content == "Stand-in reply to: Hello from Bob"
            assert sock.is_open, "the socket closed after the malformed frames"
            if analytics:
                await usage_settled(app, 1, user_id=bob.user_id)

    async with step("A general question is answered by the general agent (frames and badge)"):
        reply = await chat.ask(GENERAL_Q, contains=f"Stand-in reply to: {GENERAL_Q}")
        rid = await sent_request_id(turns, GENERAL_Q)
        await turns.wait_for("completed", request_id=rid, timeout=FRAME_WAIT_S)
        completed[GENERAL_Q] = assert_turn_contract(app, turns.of_request(rid), "general", with_tool=False)
        if routes:
            assert reply.agent == "general", f"the reply is marked as from the {reply.agent!r} agent"
            assert await chat.reply_item(0).badge() == "general agent", (
                "the reply's badge does not say 'general agent'"
            )
        if reply.chunks is not None:  # a page that counts the chunks it rendered
            assert reply.chunks == len(turns.events("chunk", request_id=rid, direction="received")), (
                "the page rendered a different number of chunks than the socket streamed"
            )
        assert reply.tools == [], f"the general reply shows tool use {reply.tools}"

    async with step("An optimization question is answered by the optimization agent"):
        reply = await chat.ask(OPTIMIZATION_Q, contains=f"Stand-in reply to: {OPTIMIZATION_Q}")
        rid = await sent_request_id(turns, OPTIMIZATION_Q)
        await turns.wait_for("completed", request_id=rid, timeout=FRAME_WAIT_S)
        done = assert_turn_contract(app, turns.of_request(rid), "optimization", with_tool=False)
        completed[OPTIMIZATION_Q] = done
        if routes:
            assert reply.agent == "optimization", f"the reply is marked as from the {reply.agent!r} agent"
            assert await chat.reply_item(1).badge() == "optimization agent", (
                "the reply's badge does not say 'optimization agent'"
            )
        thread_id = completed[GENERAL_Q].thread_id
        assert done.thread_id == thread_id, "the second message left the open conversation"

    own_usage = routes and analytics  # the data agent's get_my_usage reads the analytics store
    first_usage = "Ada's first two turns reach ClickHouse (the data agent will read them)"
    if own_usage:
        async with step(first_usage):
            ada_before = await usage_settled(app, 2, user_id=ada.user_id)
            bob_rows = await usage_settled(app, 1, user_id=bob.user_id)
    else:
        step.not_applicable(first_usage, "lacks agent_routing, usage_analytics")

    async with step(
        f"A question that needs a tool runs {tool}; the call, its result and the answer show in the UI"
    ):
        reply = await chat.ask(tool_q, contains=f"Stand-in reply to: {tool_q}")
        rid = await sent_request_id(turns, tool_q)
        await turns.wait_for("completed", request_id=rid, timeout=FRAME_WAIT_S)
        events = turns.of_request(rid)
        completed[tool_q] = assert_turn_contract(app, events, "data", with_tool=True)
        executing = next(e for e in events if e.kind == "tool_call")
        assert executing.tool == tool, f"the turn ran tool {executing.tool!r}, expected {tool!r}"
        result = next(e for e in events if e.kind == "tool_result")
        assert result.tool == tool, f"the tool result names tool {result.tool!r}"
        if own_usage:
            usage = result.result
            own = {
                "events": len(ada_before),
                "prompt_tokens": sum(r.prompt_tokens for r in ada_before),
                "completion_tokens": sum(r.completion_tokens for r in ada_before),
            }
            seen = {k: usage.get(k) for k in own}
            assert seen == own, (
                f"get_my_usage told Ada {seen}, but the analytics store holds {own} for her "
                f"(Bob's {len(bob_rows)} row(s) must not count)"
            )
            assert usage["total_tokens"] == own["prompt_tokens"] + own["completion_tokens"]
            assert Decimal(usage["cost_usd"]) == sum((Decimal(r.cost_usd) for r in ada_before), Decimal(0)), (
                f"get_my_usage cost {usage['cost_usd']} differs from Ada's usage rows"
            )
            assert {a["agent"] for a in usage["by_agent"]} == {"general", "optimization"}, (
                f"get_my_usage breaks Ada's usage down by {usage['by_agent']}"
            )
            assert reply.agent == "data", f"the usage answer is marked as from the {reply.agent!r} agent"
            assert await chat.reply_item(2).badge() == "data agent", (
                "the usage answer's badge does not say 'data agent'"
            )
            assert f'"total_tokens": {usage["total_tokens"]}' in reply.text, (
                "the answer shown does not carry the tool's token total"
            )
        assert reply.tools == [tool], f"the answer shows tools {reply.tools}, not {tool}"
        tool_use = await chat.reply_item(2).tool_use()
        assert tool_use.state == "done", "the tool is still shown as running"
        assert tool in tool_use.text, f"the reply does not say it used {tool}: {tool_use.text!r}"
        if own_usage:
            assert f"Used {tool}" in tool_use.text, "the reply does not say it used get_my_usage"

    async with step("The LLM drops its stream: error llm_unavailable, banner, nothing persisted"):
        await app.llm.set(drop_next=1)
        await chat.send(DROPPED_Q)
        rid_dropped = await sent_request_id(turns, DROPPED_Q)
        error = await turns.wait_for("error", request_id=rid_dropped, timeout=FRAME_WAIT_S)
        if app.supports("error_codes"):
            assert error.code == "llm_unavailable", (
                f"a dropped stream gave code={error.code!r} message={error.message!r} recoverable={error.recoverable!r}"
            )
            assert error.recoverable is True, "llm_unavailable is not marked recoverable"
        assert "completed" not in [e.kind for e in turns.of_request(rid_dropped)], (
            "a dropped stream still completed"
        )
        if app.supports("error_codes"):
            banner = await dashboard.wait_for_error_banner("The assistant is unavailable right now")
            assert "try again" in banner.lower(), f"the error banner says {banner!r}"
        else:  # the screen shows the error the socket reported
            await dashboard.wait_for_error_banner(error.message or None)
        await chat.message_item(request_id=rid_dropped, role="user").wait_for_status(
            "failed", "the unanswered message marked failed"
        )
        kept = await app.records.messages(request_id=rid_dropped)
        if discards:
            assert kept == [], "the failed turn left messages in the conversation store"
        else:  # kept as the person's message and a reply that holds the error, no answer and no tokens
            assert [(m.role, m.content) for m in kept] == [("user", DROPPED_Q), ("assistant", "")], (
                f"the failed turn is stored as {[(m.role, m.content) for m in kept]}"
            )
            assert all(not m.prompt_tokens and not m.completion_tokens for m in kept), (
                f"the failed turn is stored with tokens: {kept}"
            )
        if app.supports("usage_outbox"):
            assert await app.records.pending_usage(rid_dropped) == 0, (
                "the failed turn left usage in the outbox"
            )
        if analytics:
            assert await app.records.usage(request_id=rid_dropped) == [], (
                "the failed turn was billed in the analytics store"
            )

    async with step("The next message succeeds and the banner clears"):
        reply = await chat.ask(RECOVERY_Q, contains=f"Stand-in reply to: {RECOVERY_Q}")
        rid = await sent_request_id(turns, RECOVERY_Q)
        await turns.wait_for("completed", request_id=rid, timeout=FRAME_WAIT_S)
        completed[RECOVERY_Q] = assert_turn_contract(app, turns.of_request(rid), "general", with_tool=False)
        if routes:
            assert reply.agent == "general"
        await dashboard.wait_for_no_error_banner()

    billed = "Each turn's usage equals its ClickHouse rows (by run_id and request_id)"
    if analytics:
        async with step(billed):
            calls = {GENERAL_Q: 1, OPTIMIZATION_Q: 1, tool_q: 2, RECOVERY_Q: 1}
            for question, done in completed.items():
                usage_rows = await usage_settled(app, calls[question], run_id=done.run_id)
                by_request = await app.records.usage(request_id=done.request_id)
                assert {r.event_id for r in by_request} == {r.event_id for r in usage_rows}, (
                    f"{question!r}: usage rows by request_id and by run_id differ"
                )
                billed_usage = {
                    "prompt_tokens": sum(r.prompt_tokens for r in usage_rows),
                    "completion_tokens": sum(r.completion_tokens for r in usage_rows),
                    "cost_usd": sum((Decimal(r.cost_usd) for r in usage_rows), Decimal(0)),
                    "llm_calls": len(usage_rows),
                }
                assert done.usage is not None, f"{question!r}: the completed turn reports no usage"
                shown = {**done.usage, "cost_usd": Decimal(done.usage["cost_usd"])}
                assert shown == billed_usage, (
                    f"{question!r}: the completed turn's usage {shown} differs from the analytics store {billed_usage}"
                )
                assert {(r.user_id, r.agent) for r in usage_rows} == {(ada.user_id, done.agent)}, (
                    f"{question!r}: usage rows name another user or agent: {usage_rows}"
                )
            assert len(await app.records.usage(user_id=ada.user_id)) == sum(calls.values()), (
                "Ada has usage rows beyond her completed turns"
            )
    else:
        step.not_applicable(billed, "lacks usage_analytics")

    async with step("The answers are persisted in PostgreSQL with their agent"):
        thread_id = completed[GENERAL_Q].thread_id
        assert thread_id, "the first turn names no conversation"
        stored = await app.records.messages(thread_id=thread_id)
        rows = [r for r in stored if r.request_id != rid_dropped]  # the failed turn: checked above
        assert [r.role for r in (stored if discards else rows)] == ["user", "assistant"] * 4, (
            f"the conversation holds {[r.role for r in stored]} (the failed turn must not be stored)"
        )
        for (question, done), (asked, answer) in zip(
            completed.items(), zip(rows[::2], rows[1::2], strict=True), strict=True
        ):
            assert asked.content == question and asked.request_id == done.request_id
            assert answer.id == done.message_id, f"{question!r}: persisted id differs from message_id"
            assert (answer.agent, answer.content) == (done.agent, done.content), (
                f"{question!r}: the conversation store holds {answer.agent}/{answer.content!r}"
            )
            assert done.usage is not None
            assert (answer.prompt_tokens, answer.completion_tokens) == (
                done.usage["prompt_tokens"],
                done.usage["completion_tokens"],
            )

    async with step("After a reload the conversation shows the persisted answers, not the failed one"):
        dashboard = await app.dashboard_page(page).reload()
        messages = await dashboard.chat.wait_for_messages(len(stored))
        expected = [(r.role, " ".join(r.content.split()), r.agent) for r in stored]
        on_screen = [(m.role, m.text, m.agent or None) for m in messages]
        assert on_screen == expected, (
            f"after a reload the conversation shows {on_screen}, the conversation store holds {expected}"
        )
        if discards:
            assert DROPPED_Q not in [m.text for m in messages], (
                "the unanswered message came back after a reload"
            )
        else:
            await dashboard.chat.message_item(request_id=rid_dropped, role="user").wait_for_status(
                "failed", "the failed turn shown failed again after a reload"
            )

    async with step(
        "Each turn's usage adds up: its prompt and completion tokens make the total reported with them"
    ):
        for question, done in completed.items():
            usage = done.usage or {}
            if "total_tokens" not in usage:  # the platform reports no total
                continue
            assert usage["prompt_tokens"] + usage["completion_tokens"] == usage["total_tokens"], (
                f"{question!r}: the turn's usage does not add up: {usage['prompt_tokens']} prompt + "
                f"{usage['completion_tokens']} completion tokens, but total_tokens {usage['total_tokens']} "
                f"({usage}), as reported on the socket and stored with the reply"
            )
