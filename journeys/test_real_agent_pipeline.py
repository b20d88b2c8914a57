"""Journey: the supervisor routes each message to the right agent, the data agent reads only the
user's own usage through its tool, frames follow the contract, answers persist, usage is billed
exactly, and a dropped LLM stream or a malformed frame fails cleanly without breaking the chat."""

from __future__ import annotations

import asyncio
import json
import re
from decimal import Decimal
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from db_probes import eventually
from harness.journey import journey
from harness.steps import step
from harness.ws_recorder import Frame, WsRecorder
from journeys.conftest import LLMControl, TestUser, UserFactory, login_through_ui
from pages import ChatPanel, DashboardPage

COMPONENTS = ["frontend", "backend", "websocket", "agent", "llm", "clickhouse", "postgres"]

# Routing keywords (stack/backend/agents.py): optimi[sz]e/reduce/faster/cheaper/improve -> optimization,
# usage/token(s)/cost(s)/spend/bill -> data, anything else -> general.
GENERAL_Q = "What is the capital of France?"
OPTIMIZATION_Q = "How can I reduce my latency?"
DATA_Q = "How many tokens did I use?"
DROPPED_Q = "Tell me a story about a lighthouse"
RECOVERY_Q = "Thanks, and what is the weather like on Mars?"

# One turn's frames, in the contract's order: the tool pair only for the data agent.
TURN_SHAPE = re.compile(
    r"^agent_started agent_thinking (?:tool_executing tool_completed )?(?:agent_stream )+agent_completed$"
)
FRAME_WAIT_S = 20.0


# ------------------------------------------------------------------------------------- helpers
async def sent_request_id(ws: WsRecorder, content: str) -> str:
    """The request_id the page put on the user_message carrying `content`."""
    frame = await ws.wait_for(
        "user_message", where={"payload.content": content}, direction="sent", timeout=FRAME_WAIT_S
    )
    rid = frame.data.get("request_id")
    assert rid, f"the page sent {content!r} without a request_id"
    return str(rid)


def turn_frames(ws: WsRecorder, request_id: str) -> list[Frame]:
    """Every frame the server sent for one turn (its request_id), in arrival order."""
    return [f for f in ws.frames(direction="received") if f.data and f.data.get("request_id") == request_id]


def assert_turn_contract(frames: list[Frame], agent: str, with_tool: bool) -> dict[str, Any]:
    """The turn's frames follow the contract; -> the agent_completed payload."""
    __tracebackhide__ = True
    types = [f.type or "-" for f in frames]
    assert TURN_SHAPE.match(" ".join(types)), f"the {agent} turn's frames break the contract order: {types}"
    has_tool = "tool_executing" in types
    assert has_tool == with_tool, (
        f"the {agent} agent {'did not call' if with_tool else 'called'} a tool: frame types {types}"
    )
    started = frames[0].data["payload"]
    assert started["agent"] == agent, f"agent_started names agent {started['agent']!r}, expected {agent!r}"
    completed = frames[-1].data["payload"]
    assert completed["agent"] == agent, (
        f"agent_completed names agent {completed['agent']!r}, expected {agent!r}"
    )
    run_ids = {f.data["payload"].get("run_id") for f in frames}
    assert run_ids == {started["run_id"]}, f"one turn's frames carry several run ids: {run_ids}"
    chunks = [f.data["payload"]["chunk"] for f in frames if f.type == "agent_stream"]
    assert chunks, f"the {agent} agent streamed no chunk"
    assert "".join(chunks) == completed["content"], (
        f"the streamed chunks of the {agent} agent {''.join(chunks)!r} differ from the final answer "
        f"{completed['content']!r}"
    )
    return dict(completed)


async def badge_text(chat: ChatPanel, index: int) -> str:
    """The agent badge's text on the assistant reply at `index`."""
    return " ".join(
        (await chat.assistant_items.nth(index).get_by_test_id("agent-badge").inner_text()).split()
    )


async def ch_rows_settled(ch: Any, expected: int, **where: Any) -> list[dict[str, Any]]:
    """ClickHouse usage rows matching `where`, once exactly `expected` of them arrived."""

    async def check() -> list[dict[str, Any]]:
        rows = await ch.usage_events(**where)
        assert len(rows) == expected, f"expected {expected} usage row(s) for {where}, found {len(rows)}"
        return rows

    return await eventually(
        check, timeout=10, description=f"{expected} usage row(s) in ClickHouse for {where}"
    )


async def recv_frame(sock: ClientConnection, timeout: float = FRAME_WAIT_S) -> dict[str, Any]:  # noqa: ASYNC109
    raw = await asyncio.wait_for(sock.recv(), timeout)
    frame = json.loads(raw)
    assert isinstance(frame, dict), f"the socket sent a non-object frame: {raw!r}"
    return frame


async def recv_until(
    sock: ClientConnection,
    wanted: str,
    timeout: float = FRAME_WAIT_S,  # noqa: ASYNC109
) -> list[dict[str, Any]]:
    """Frames up to and including the first of type `wanted` (or an `error`), within `timeout`."""
    __tracebackhide__ = True
    frames: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        assert remaining > 0, (
            f"no {wanted!r} frame within {timeout:g}s; frames seen: {[f.get('type') for f in frames]}"
        )
        frame = await recv_frame(sock, remaining)
        frames.append(frame)
        if frame.get("type") in (wanted, "error", "rate_limited"):
            return frames


# ------------------------------------------------------------------------------------- journey
@journey(name="Agent pipeline", priority="P0", mrr=30_000, components=COMPONENTS)
async def test_agent_pipeline_routes_streams_persists_and_bills(
    page: Any,
    ws_recorder: WsRecorder,
    urls: dict[str, str],
    users: UserFactory,
    llm: LLMControl,
    pg: Any,
    ch: Any,
    provider_name: str,
) -> None:
    """Intent routing, the data agent's own-usage tool, frame order, persistence, exact usage, clean failures."""
    ada: TestUser
    bob: TestUser
    completed: dict[str, dict[str, Any]] = {}  # question -> agent_completed payload (+ request_id)

    async with step("Create Ada and Bob through the API (Bob holds tokens); Ada logs in through the UI"):
        ada, bob = await asyncio.gather(
            users.verified("ada-pipeline", "Ada Pipeline"), users.logged_in("bob-bystander", "Bob Bystander")
        )
        dashboard = await login_through_ui(page, urls, ada, provider_name)
        chat = dashboard.chat

    async with step("A malformed frame on a real socket gets bad_frame and the socket stays usable"):
        async with connect(
            urls["ws_url"], subprotocols=[Subprotocol(f"jwt.{bob.access_token}")], open_timeout=FRAME_WAIT_S
        ) as sock:
            hello = await recv_frame(sock)
            assert hello["type"] == "connection_established", f"Bob's socket opened with {hello}"
            await sock.send("{this is not json")
            refused = await recv_frame(sock)
            assert refused["type"] == "error" and refused["payload"]["code"] == "bad_frame", (
                f"malformed JSON was answered with {refused}, expected an error bad_frame"
            )
            assert refused["payload"]["recoverable"] is True, "bad_frame is not marked recoverable"
            await sock.send(json.dumps({"type": "launch_rockets", "payload": {}, "request_id": "bogus-type"}))
            unknown = await recv_frame(sock)
            assert (unknown["type"], unknown["payload"].get("code")) == ("error", "bad_frame"), (
                f"an unknown frame type was answered with {unknown}, expected an error bad_frame"
            )
            await sock.send(
                json.dumps(
                    {
                        "type": "user_message",
                        "payload": {"content": "Hello from Bob"},
                        "request_id": "bob-after-bad-frame",
                    }
                )
            )
            turn = await recv_until(sock, "agent_completed")
            assert turn[-1]["type"] == "agent_completed", (
                f"after bad frames, Bob's next message got {[f['type'] for f in turn]} instead of a reply"
            )
            assert turn[-1]["payload"]["content"] == "Stand-in reply to: Hello from Bob"
            assert sock.state.name == "OPEN", "the socket closed after the malformed frames"
        await ch_rows_settled(ch, 1, user_id=bob.user_id)

    async with step("A general question is answered by the general agent (frames and badge)"):
        reply = await chat.ask(GENERAL_Q, contains=f"Stand-in reply to: {GENERAL_Q}")
        rid = await sent_request_id(ws_recorder, GENERAL_Q)
        await ws_recorder.wait_for("agent_completed", where={"request_id": rid}, timeout=FRAME_WAIT_S)
        payload = assert_turn_contract(turn_frames(ws_recorder, rid), "general", with_tool=False)
        completed[GENERAL_Q] = {**payload, "request_id": rid}
        assert reply.agent == "general", f"the reply is marked as from the {reply.agent!r} agent"
        assert await badge_text(chat, 0) == "general agent", "the reply's badge does not say 'general agent'"
        assert reply.chunks == len([f for f in turn_frames(ws_recorder, rid) if f.type == "agent_stream"]), (
            "the page rendered a different number of chunks than the socket streamed"
        )
        assert reply.tools == [], f"the general reply shows tool use {reply.tools}"

    async with step("An optimization question is answered by the optimization agent"):
        reply = await chat.ask(OPTIMIZATION_Q, contains=f"Stand-in reply to: {OPTIMIZATION_Q}")
        rid = await sent_request_id(ws_recorder, OPTIMIZATION_Q)
        await ws_recorder.wait_for("agent_completed", where={"request_id": rid}, timeout=FRAME_WAIT_S)
        payload = assert_turn_contract(turn_frames(ws_recorder, rid), "optimization", with_tool=False)
        completed[OPTIMIZATION_Q] = {**payload, "request_id": rid}
        assert reply.agent == "optimization", f"the reply is marked as from the {reply.agent!r} agent"
        assert await badge_text(chat, 1) == "optimization agent", (
            "the reply's badge does not say 'optimization agent'"
        )
        thread_id = completed[GENERAL_Q]["thread_id"]
        assert payload["thread_id"] == thread_id, "the second message left the open conversation"

    async with step("Ada's first two turns reach ClickHouse (the data agent will read them)"):
        ada_before = await ch_rows_settled(ch, 2, user_id=ada.user_id)
        bob_rows = await ch_rows_settled(ch, 1, user_id=bob.user_id)

    async with step("A usage question runs get_my_usage over Ada's own ClickHouse rows, shown in the UI"):
        reply = await chat.ask(DATA_Q, contains=f"Stand-in reply to: {DATA_Q}")
        rid = await sent_request_id(ws_recorder, DATA_Q)
        await ws_recorder.wait_for("agent_completed", where={"request_id": rid}, timeout=FRAME_WAIT_S)
        frames = turn_frames(ws_recorder, rid)
        payload = assert_turn_contract(frames, "data", with_tool=True)
        completed[DATA_Q] = {**payload, "request_id": rid}
        executing = next(f for f in frames if f.type == "tool_executing").data["payload"]
        assert executing["tool"] == "get_my_usage", f"the data agent ran tool {executing['tool']!r}"
        result = next(f for f in frames if f.type == "tool_completed").data["payload"]
        assert result["tool"] == "get_my_usage", f"tool_completed names tool {result['tool']!r}"
        usage = result["result"]
        own = {
            "events": len(ada_before),
            "prompt_tokens": sum(r["prompt_tokens"] for r in ada_before),
            "completion_tokens": sum(r["completion_tokens"] for r in ada_before),
        }
        seen = {k: usage.get(k) for k in own}
        assert seen == own, (
            f"get_my_usage told Ada {seen}, but ClickHouse holds {own} for her "
            f"(Bob's {len(bob_rows)} row(s) must not count)"
        )
        assert usage["total_tokens"] == own["prompt_tokens"] + own["completion_tokens"]
        assert Decimal(usage["cost_usd"]) == sum((Decimal(r["cost_usd"]) for r in ada_before), Decimal(0)), (
            f"get_my_usage cost {usage['cost_usd']} differs from Ada's ClickHouse rows"
        )
        assert {a["agent"] for a in usage["by_agent"]} == {"general", "optimization"}, (
            f"get_my_usage breaks Ada's usage down by {usage['by_agent']}"
        )
        assert reply.agent == "data", f"the usage answer is marked as from the {reply.agent!r} agent"
        assert await badge_text(chat, 2) == "data agent", "the usage answer's badge does not say 'data agent'"
        assert reply.tools == ["get_my_usage"], (
            f"the usage answer shows tools {reply.tools}, not get_my_usage"
        )
        tool_item = chat.assistant_items.nth(2).get_by_test_id("tool-use")
        assert await tool_item.get_attribute("data-state") == "done", "the tool is still shown as running"
        assert "Used get_my_usage" in await tool_item.inner_text(), (
            "the reply does not say it used get_my_usage"
        )
        assert f'"total_tokens": {usage["total_tokens"]}' in reply.text, (
            "the answer shown does not carry the tool's token total"
        )

    async with step("The LLM drops its stream: error llm_unavailable, banner, nothing persisted"):
        await llm.set(drop_next=1)
        await chat.send(DROPPED_Q)
        rid_dropped = await sent_request_id(ws_recorder, DROPPED_Q)
        error = await ws_recorder.wait_for("error", where={"request_id": rid_dropped}, timeout=FRAME_WAIT_S)
        assert error.data["payload"]["code"] == "llm_unavailable", (
            f"a dropped stream gave {error.data['payload']}"
        )
        assert error.data["payload"]["recoverable"] is True, "llm_unavailable is not marked recoverable"
        assert "agent_completed" not in [f.type for f in turn_frames(ws_recorder, rid_dropped)], (
            "a dropped stream still completed"
        )
        banner = await dashboard.wait_for_error_banner("The assistant is unavailable right now")
        assert "try again" in banner.lower(), f"the error banner says {banner!r}"
        failed_user = chat.message_items.and_(
            page.locator(f'[data-request-id="{rid_dropped}"][data-role="user"]')
        )
        await chat.expect_attribute(
            failed_user, "data-status", "failed", "the unanswered message marked failed"
        )
        assert await pg.backend.count("messages", "request_id = $1", rid_dropped) == 0, (
            "the failed turn left messages in PostgreSQL"
        )
        assert await pg.backend.count("usage_outbox", "request_id = $1", rid_dropped) == 0, (
            "the failed turn left usage in the outbox"
        )
        assert await ch.usage_events(request_id=rid_dropped) == [], "the failed turn was billed in ClickHouse"

    async with step("The next message succeeds and the banner clears"):
        reply = await chat.ask(RECOVERY_Q, contains=f"Stand-in reply to: {RECOVERY_Q}")
        rid = await sent_request_id(ws_recorder, RECOVERY_Q)
        await ws_recorder.wait_for("agent_completed", where={"request_id": rid}, timeout=FRAME_WAIT_S)
        payload = assert_turn_contract(turn_frames(ws_recorder, rid), "general", with_tool=False)
        completed[RECOVERY_Q] = {**payload, "request_id": rid}
        assert reply.agent == "general"
        await dashboard.wait_for_no_error_banner()

    async with step("Each turn's usage equals its ClickHouse rows (by run_id and request_id)"):
        calls = {GENERAL_Q: 1, OPTIMIZATION_Q: 1, DATA_Q: 2, RECOVERY_Q: 1}
        for question, done in completed.items():
            rows = await ch_rows_settled(ch, calls[question], run_id=done["run_id"])
            by_request = await ch.usage_events(request_id=done["request_id"])
            assert {str(r["event_id"]) for r in by_request} == {str(r["event_id"]) for r in rows}, (
                f"{question!r}: usage rows by request_id and by run_id differ"
            )
            billed = {
                "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
                "completion_tokens": sum(r["completion_tokens"] for r in rows),
                "cost_usd": sum((Decimal(r["cost_usd"]) for r in rows), Decimal(0)),
                "llm_calls": len(rows),
            }
            shown = {**done["usage"], "cost_usd": Decimal(done["usage"]["cost_usd"])}
            assert shown == billed, (
                f"{question!r}: agent_completed.usage {shown} differs from ClickHouse {billed}"
            )
            assert {(str(r["user_id"]), r["agent"]) for r in rows} == {(ada.user_id, done["agent"])}, (
                f"{question!r}: usage rows name another user or agent: {rows}"
            )
        assert len(await ch.usage_events(user_id=ada.user_id)) == sum(calls.values()), (
            "Ada has usage rows beyond her completed turns"
        )

    async with step("The answers are persisted in PostgreSQL with their agent"):
        thread_id = completed[GENERAL_Q]["thread_id"]
        rows = await pg.backend.rows(
            "SELECT id, role, content, agent, request_id, prompt_tokens, completion_tokens FROM messages "
            "WHERE thread_id = $1::uuid ORDER BY created_at, role DESC",
            thread_id,
        )
        assert [r["role"] for r in rows] == ["user", "assistant"] * 4, (
            f"the conversation holds {[r['role'] for r in rows]} (the failed turn must not be stored)"
        )
        for (question, done), (asked, answer) in zip(
            completed.items(), zip(rows[::2], rows[1::2], strict=True), strict=True
        ):
            assert asked["content"] == question and asked["request_id"] == done["request_id"]
            assert str(answer["id"]) == done["message_id"], (
                f"{question!r}: persisted id differs from message_id"
            )
            assert (answer["agent"], answer["content"]) == (done["agent"], done["content"]), (
                f"{question!r}: PostgreSQL holds {answer['agent']}/{answer['content']!r}"
            )
            assert (answer["prompt_tokens"], answer["completion_tokens"]) == (
                done["usage"]["prompt_tokens"],
                done["usage"]["completion_tokens"],
            )

    async with step("After a reload the conversation shows the persisted answers, not the failed one"):
        dashboard = await DashboardPage(page, urls["frontend_url"]).reload()
        messages = await dashboard.chat.wait_for_messages(8)
        expected = [(r["role"], " ".join(r["content"].split()), r["agent"]) for r in rows]
        on_screen = [(m.role, m.text, m.agent or None) for m in messages]
        assert on_screen == expected, (
            f"after a reload the conversation shows {on_screen}, PostgreSQL holds {expected}"
        )
        assert DROPPED_Q not in [m.text for m in messages], "the unanswered message came back after a reload"
