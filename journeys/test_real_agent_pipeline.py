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
DATA_Q = "How many tokens did I use?"
DROPPED_Q = "Tell me a story about a lighthouse"
RECOVERY_Q = "Thanks, and what is the weather like on Mars?"

# One turn's events, in the contract's order: the tool pair only for the data agent.
TURN_SHAPE = re.compile(r"^turn_started thinking (?:tool_call tool_result )?(?:chunk )+completed$")
FRAME_WAIT_S = 20.0


# ------------------------------------------------------------------------------------- helpers
async def sent_request_id(turns: Turns, content: str) -> str:
    """The request id the page put on the user message carrying `content`."""
    sent = await turns.sent(content, timeout=FRAME_WAIT_S)
    rid = sent.request_id
    assert rid, f"the page sent {content!r} without a request id"
    return str(rid)


def assert_turn_contract(events: list[TurnEvent], agent: str, with_tool: bool) -> TurnEvent:
    """The turn's events follow the contract; -> the completed event."""
    __tracebackhide__ = True
    kinds = [e.kind for e in events]
    assert TURN_SHAPE.match(" ".join(kinds)), f"the {agent} turn's events break the contract order: {kinds}"
    has_tool = "tool_call" in kinds
    assert has_tool == with_tool, (
        f"the {agent} agent {'did not call' if with_tool else 'called'} a tool: event kinds {kinds}"
    )
    started = events[0]
    assert started.agent == agent, f"the turn started names agent {started.agent!r}, expected {agent!r}"
    completed = events[-1]
    assert completed.agent == agent, f"the completed turn names agent {completed.agent!r}, expected {agent!r}"
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
    needs=["agent_routing", "tool_calls", "streaming", "usage_analytics"],
)
async def test_agent_pipeline_routes_streams_persists_and_bills(
    app: App, page: Any, ws_recorder: Any
) -> None:
    """Intent routing, the data agent's own-usage tool, event order, persistence, exact usage, clean failures."""
    ada: TestUser
    bob: TestUser
    completed: dict[str, TurnEvent] = {}  # question -> its completed event
    turns = app.turns(ws_recorder)

    async with step("Create Ada and Bob through the API (Bob holds tokens); Ada logs in through the UI"):
        ada, bob = await gather(
            app.users.verified("ada-pipeline", "Ada Pipeline"),
            app.users.logged_in("bob-bystander", "Bob Bystander"),
        )
        dashboard = await app.login(page, ada)
        chat = dashboard.chat

    async with step("A malformed frame on a real socket gets bad_frame and the socket stays usable"):
        async with app.socket(bob.access_token) as sock:
            hello = await sock.receive(FRAME_WAIT_S)
            assert hello.kind == "connected", f"Bob's socket opened with {hello.kind!r} ({hello.frame})"
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
            await sock.send_message("Hello from Bob", request_id="bob-after-bad-frame")
            turn = await sock.receive_until("completed", FRAME_WAIT_S)
            assert turn[-1].kind == "completed", (
                f"after bad frames, Bob's next message got {[e.kind for e in turn]} instead of a reply"
            )
            assert turn[-1].content == "Stand-in reply to: Hello from Bob"
            assert sock.is_open, "the socket closed after the malformed frames"
        await usage_settled(app, 1, user_id=bob.user_id)

    async with step("A general question is answered by the general agent (frames and badge)"):
        reply = await chat.ask(GENERAL_Q, contains=f"Stand-in reply to: {GENERAL_Q}")
        rid = await sent_request_id(turns, GENERAL_Q)
        await turns.wait_for("completed", request_id=rid, timeout=FRAME_WAIT_S)
        completed[GENERAL_Q] = assert_turn_contract(turns.of_request(rid), "general", with_tool=False)
        assert reply.agent == "general", f"the reply is marked as from the {reply.agent!r} agent"
        assert await chat.reply_item(0).badge() == "general agent", (
            "the reply's badge does not say 'general agent'"
        )
        assert reply.chunks == len(turns.events("chunk", request_id=rid, direction="received")), (
            "the page rendered a different number of chunks than the socket streamed"
        )
        assert reply.tools == [], f"the general reply shows tool use {reply.tools}"

    async with step("An optimization question is answered by the optimization agent"):
        reply = await chat.ask(OPTIMIZATION_Q, contains=f"Stand-in reply to: {OPTIMIZATION_Q}")
        rid = await sent_request_id(turns, OPTIMIZATION_Q)
        await turns.wait_for("completed", request_id=rid, timeout=FRAME_WAIT_S)
        done = assert_turn_contract(turns.of_request(rid), "optimization", with_tool=False)
        completed[OPTIMIZATION_Q] = done
        assert reply.agent == "optimization", f"the reply is marked as from the {reply.agent!r} agent"
        assert await chat.reply_item(1).badge() == "optimization agent", (
            "the reply's badge does not say 'optimization agent'"
        )
        thread_id = completed[GENERAL_Q].thread_id
        assert done.thread_id == thread_id, "the second message left the open conversation"

    async with step("Ada's first two turns reach ClickHouse (the data agent will read them)"):
        ada_before = await usage_settled(app, 2, user_id=ada.user_id)
        bob_rows = await usage_settled(app, 1, user_id=bob.user_id)

    async with step("A usage question runs get_my_usage over Ada's own ClickHouse rows, shown in the UI"):
        reply = await chat.ask(DATA_Q, contains=f"Stand-in reply to: {DATA_Q}")
        rid = await sent_request_id(turns, DATA_Q)
        await turns.wait_for("completed", request_id=rid, timeout=FRAME_WAIT_S)
        events = turns.of_request(rid)
        completed[DATA_Q] = assert_turn_contract(events, "data", with_tool=True)
        executing = next(e for e in events if e.kind == "tool_call")
        assert executing.tool == "get_my_usage", f"the data agent ran tool {executing.tool!r}"
        result = next(e for e in events if e.kind == "tool_result")
        assert result.tool == "get_my_usage", f"the tool result names tool {result.tool!r}"
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
        assert reply.tools == ["get_my_usage"], (
            f"the usage answer shows tools {reply.tools}, not get_my_usage"
        )
        tool_use = await chat.reply_item(2).tool_use()
        assert tool_use.state == "done", "the tool is still shown as running"
        assert "Used get_my_usage" in tool_use.text, "the reply does not say it used get_my_usage"
        assert f'"total_tokens": {usage["total_tokens"]}' in reply.text, (
            "the answer shown does not carry the tool's token total"
        )

    async with step("The LLM drops its stream: error llm_unavailable, banner, nothing persisted"):
        await app.llm.set(drop_next=1)
        await chat.send(DROPPED_Q)
        rid_dropped = await sent_request_id(turns, DROPPED_Q)
        error = await turns.wait_for("error", request_id=rid_dropped, timeout=FRAME_WAIT_S)
        assert error.code == "llm_unavailable", (
            f"a dropped stream gave code={error.code!r} message={error.message!r} recoverable={error.recoverable!r}"
        )
        assert error.recoverable is True, "llm_unavailable is not marked recoverable"
        assert "completed" not in [e.kind for e in turns.of_request(rid_dropped)], (
            "a dropped stream still completed"
        )
        banner = await dashboard.wait_for_error_banner("The assistant is unavailable right now")
        assert "try again" in banner.lower(), f"the error banner says {banner!r}"
        await chat.message_item(request_id=rid_dropped, role="user").wait_for_status(
            "failed", "the unanswered message marked failed"
        )
        assert await app.records.messages(request_id=rid_dropped) == [], (
            "the failed turn left messages in the conversation store"
        )
        assert await app.records.pending_usage(rid_dropped) == 0, "the failed turn left usage in the outbox"
        assert await app.records.usage(request_id=rid_dropped) == [], (
            "the failed turn was billed in the analytics store"
        )

    async with step("The next message succeeds and the banner clears"):
        reply = await chat.ask(RECOVERY_Q, contains=f"Stand-in reply to: {RECOVERY_Q}")
        rid = await sent_request_id(turns, RECOVERY_Q)
        await turns.wait_for("completed", request_id=rid, timeout=FRAME_WAIT_S)
        completed[RECOVERY_Q] = assert_turn_contract(turns.of_request(rid), "general", with_tool=False)
        assert reply.agent == "general"
        await dashboard.wait_for_no_error_banner()

    async with step("Each turn's usage equals its ClickHouse rows (by run_id and request_id)"):
        calls = {GENERAL_Q: 1, OPTIMIZATION_Q: 1, DATA_Q: 2, RECOVERY_Q: 1}
        for question, done in completed.items():
            rows = await usage_settled(app, calls[question], run_id=done.run_id)
            by_request = await app.records.usage(request_id=done.request_id)
            assert {r.event_id for r in by_request} == {r.event_id for r in rows}, (
                f"{question!r}: usage rows by request_id and by run_id differ"
            )
            billed = {
                "prompt_tokens": sum(r.prompt_tokens for r in rows),
                "completion_tokens": sum(r.completion_tokens for r in rows),
                "cost_usd": sum((Decimal(r.cost_usd) for r in rows), Decimal(0)),
                "llm_calls": len(rows),
            }
            assert done.usage is not None, f"{question!r}: the completed turn reports no usage"
            shown = {**done.usage, "cost_usd": Decimal(done.usage["cost_usd"])}
            assert shown == billed, (
                f"{question!r}: the completed turn's usage {shown} differs from the analytics store {billed}"
            )
            assert {(r.user_id, r.agent) for r in rows} == {(ada.user_id, done.agent)}, (
                f"{question!r}: usage rows name another user or agent: {rows}"
            )
        assert len(await app.records.usage(user_id=ada.user_id)) == sum(calls.values()), (
            "Ada has usage rows beyond her completed turns"
        )

    async with step("The answers are persisted in PostgreSQL with their agent"):
        thread_id = completed[GENERAL_Q].thread_id
        assert thread_id, "the first turn names no conversation"
        rows = await app.records.messages(thread_id=thread_id)
        assert [r.role for r in rows] == ["user", "assistant"] * 4, (
            f"the conversation holds {[r.role for r in rows]} (the failed turn must not be stored)"
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
        messages = await dashboard.chat.wait_for_messages(8)
        expected = [(r.role, " ".join(r.content.split()), r.agent) for r in rows]
        on_screen = [(m.role, m.text, m.agent or None) for m in messages]
        assert on_screen == expected, (
            f"after a reload the conversation shows {on_screen}, the conversation store holds {expected}"
        )
        assert DROPPED_Q not in [m.text for m in messages], "the unanswered message came back after a reload"
