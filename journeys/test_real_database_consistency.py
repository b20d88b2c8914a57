"""Journey: one person's identity, messages, usage and request ids agree across every store and the UI.

After a real flow (UI login, three chat turns of different intents, one of them answered by the
data agent), the same facts must read the same wherever an operator looks: the account, the
profile, the frontend's state and screen, the stored messages, the usage events.
A turn the LLM fails must leave no trace in any store.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import Any

from harness.app import App, MessageRecord, UsageRecord
from harness.journey import journey
from harness.steps import step

COMPONENTS = ["frontend", "auth", "backend", "postgres", "clickhouse", "redis", "agent", "llm"]

# (message, agent the supervisor must route it to); one message per intent, incl. the data agent
TURNS = [
    ("Hello there, please introduce yourself briefly", "general"),
    ("How could I reduce the latency of my prompts?", "optimization"),
    ("What was my token usage so far?", "data"),
]
LLM_CALLS_PER_TURN = {"general": 1, "optimization": 1, "data": 2}  # the data agent calls the LLM twice
PROMPT_PRICE, COMPLETION_PRICE = Decimal("0.000002"), Decimal("0.000004")  # docs/wiring.md, USD per token


async def _usage_rows_settled(
    app: App, user_id: str, request_ids: list[str], expected_rows: int
) -> list[UsageRecord]:
    """Wait until the usage store holds `expected_rows` usage rows for the user, covering every request id."""

    async def settled() -> list[UsageRecord]:
        rows = await app.records.usage(user_id=user_id)
        seen = {r.request_id for r in rows}
        missing = [rid for rid in request_ids if rid not in seen]
        assert not missing, f"ClickHouse has no usage row yet for request id(s) {missing}"
        assert len(rows) == expected_rows, (
            f"expected {expected_rows} usage rows in ClickHouse (one per LLM call), found {len(rows)}"
        )
        return list(rows)

    found: list[UsageRecord] = await app.settle(
        settled, timeout=10, description=f"{expected_rows} usage rows in ClickHouse"
    )
    return found


def _assert_usage_matches_messages(
    messages: list[MessageRecord], usage: list[UsageRecord], request_agents: dict[str, str], user_id: str
) -> None:
    """Per request id: the right number of usage rows, and their tokens sum to the assistant message's."""
    __tracebackhide__ = True
    assistant = {m.request_id: m for m in messages if m.role == "assistant"}
    for rid, agent in request_agents.items():
        rows = [r for r in usage if r.request_id == rid]
        answer = assistant[rid]
        assert len(rows) == LLM_CALLS_PER_TURN[agent], (
            f"the {agent} turn {rid} has {len(rows)} usage rows in ClickHouse, expected one per LLM call "
            f"({LLM_CALLS_PER_TURN[agent]})"
        )
        assert sum(r.prompt_tokens for r in rows) == answer.prompt_tokens, (
            f"prompt tokens of turn {rid}: ClickHouse rows sum to {sum(r.prompt_tokens for r in rows)}, "
            f"the assistant message in PostgreSQL says {answer.prompt_tokens}"
        )
        assert sum(r.completion_tokens for r in rows) == answer.completion_tokens, (
            f"completion tokens of turn {rid}: ClickHouse rows sum to "
            f"{sum(r.completion_tokens for r in rows)}, PostgreSQL says {answer.completion_tokens}"
        )
        for r in rows:
            assert (r.agent, str(r.run_id), str(r.thread_id)) == (
                answer.agent,
                str(answer.run_id),
                str(answer.thread_id),
            ), (
                f"usage row of turn {rid} names agent/run/thread {r.agent}/{r.run_id}/{r.thread_id}, "
                f"the assistant message {answer.agent}/{answer.run_id}/{answer.thread_id}"
            )
            assert str(r.user_id) == user_id, f"usage row of turn {rid} is billed to user {r.user_id}"
            priced = r.prompt_tokens * PROMPT_PRICE + r.completion_tokens * COMPLETION_PRICE
            assert Decimal(r.cost_usd) == priced, (
                f"usage row of turn {rid} costs {r.cost_usd} USD, its tokens price at {priced} USD"
            )
    total_pg = sum((m.prompt_tokens or 0) + (m.completion_tokens or 0) for m in assistant.values())
    total_ch = sum(r.prompt_tokens + r.completion_tokens for r in usage)
    assert total_pg == total_ch, f"PostgreSQL messages hold {total_pg} tokens, ClickHouse usage {total_ch}"


@journey(
    name="Cross-service data consistency",
    priority="P0",
    mrr=50_000,
    components=COMPONENTS,
    needs=["message_usage"],
    drills=[
        "signup-profile-loses-name",
        "assistant-tokens-swapped",
        "usage-loses-request-id",
        "cost-rounded-to-cents",
        "routing-loses-reduce",
        "owui-message-usage-swapped",
        "owui-session-pool-forgets-chat",
    ],
)
async def test_identity_messages_usage_and_request_ids_agree_across_stores(
    app: App, page: Any, ws_recorder: Any
) -> None:
    """Login, three chats of different intents and a failed turn: every store and the UI tell one story."""
    person = await app.users.verified("consistency", full_name="Grace Hopper")
    turns = app.turns(ws_recorder)
    routes = app.supports("agent_routing")
    analytics = app.supports("usage_analytics")
    discards = app.supports("failed_turns_discarded")

    async with step("Log in through the UI"):
        dashboard = await app.login(page, person)

    async with step("Chat: three messages of different intents are answered by the matching agents"):
        for text, agent in TURNS:
            reply = await dashboard.chat.ask(text, contains=f"Stand-in reply to: {text}")
            if routes:
                assert reply.agent == agent, (
                    f"{text!r} was answered by the {reply.agent!r} agent, expected {agent!r}"
                )
                if agent == "data":
                    assert "get_my_usage" in reply.tools, f"the data agent's reply lists tools {reply.tools}"
        sent = turns.events("user_message", direction="sent")
        assert [e.content for e in sent] == [t for t, _ in TURNS], (
            f"the browser sent {[e.content for e in sent]} over the socket"
        )
        request_agents = {str(e.request_id): agent for e, (_, agent) in zip(sent, TURNS, strict=True)}
        assert len(request_agents) == len(TURNS) and all(e.request_id for e in sent), (
            f"the three messages did not carry three distinct request ids: {list(request_agents)}"
        )
        completed = {
            rid: await turns.wait_for("completed", request_id=rid, timeout=10) for rid in request_agents
        }

    async with step("Identity: auth.users, backend.profiles, frontend state and the screen agree"):
        account = await app.records.user(person.email)
        assert account is not None, f"the identity store has no account for {person.email}"
        user_id = account.id
        assert user_id == person.user_id, (
            f"signup answered user id {person.user_id}, the account has {user_id}"
        )
        profile = await app.records.profile(user_id)
        assert profile is not None, "the application has no profile for the user who just chatted"
        identity = (user_id, person.email, person.full_name)
        stored_account = (account.id, account.email, account.full_name)
        assert (profile.user_id, profile.email, profile.full_name) == identity, (
            f"the profile says {profile}, the account {stored_account}"
        )
        assert (account.email, account.full_name) == identity[1:], f"the account says {stored_account}"
        state = await dashboard.frontend_state()
        shown_user = state.get("user") or {}
        assert (shown_user.get("id"), shown_user.get("email"), shown_user.get("full_name")) == identity, (
            f"the frontend believes it is {shown_user}, the stores say {identity}"
        )
        card = await dashboard.profile()
        shown_email = (
            card.email if app.supports("profile_email") else person.email
        )  # else: the screen shows none
        assert (card.full_name, shown_email) == (person.full_name, person.email), (
            f"the profile card shows {card.full_name!r} <{card.email}>, expected {person.full_name!r} <{person.email}>"
        )
        assert await dashboard.shown_name() == person.full_name, (
            f"the dashboard names the person {await dashboard.shown_name()!r}"
        )
        token = (await app.tokens_in(page))["access"]
        assert token and app.user_id_of(token) == user_id, (
            f"the browser holds a token of user {app.user_id_of(token) if token else None}, the account is {user_id}"
        )
        if app.supports("socket_greeting"):
            hello = turns.events("connected")
            assert hello and all(e.user_id == user_id for e in hello), (
                "the chat socket announced another user id than the account holds"
            )

    async with step("Messages: PostgreSQL holds 3 user + 3 assistant messages, as the UI shows them"):
        messages = await app.records.messages_with_runs(user_id)
        roles = Counter(m.role for m in messages)
        assert roles == {"user": 3, "assistant": 3}, f"PostgreSQL holds {dict(roles)} messages for the user"
        thread_ids = {t.id for t in await app.records.threads(user_id)}
        assert {m.thread_id for m in messages} <= thread_ids, "a message sits in a thread of someone else"
        assert len(thread_ids) == 1, f"three messages in one open chat made {len(thread_ids)} threads"
        (thread_id,) = thread_ids
        assert state.get("activeThreadId") == thread_id, (
            f"the frontend has thread {state.get('activeThreadId')} open, PostgreSQL stored {thread_id}"
        )
        if app.supports("session_restore"):
            chat_session = await app.records.chat_state(user_id)
            assert chat_session.exists and chat_session.active_thread_id == thread_id, (
                f"the chat session state points at thread {chat_session.raw}, PostgreSQL stored {thread_id}"
            )
        by_rid: dict[str | None, dict[str, MessageRecord]] = {}
        for m in messages:
            by_rid.setdefault(m.request_id, {})[m.role] = m
        for (text, agent), rid in zip(TURNS, request_agents, strict=True):
            pair = by_rid.get(rid, {})
            assert set(pair) == {"user", "assistant"}, (
                f"request {rid} ({text!r}) stored messages {sorted(pair)}"
            )
            assert pair["user"].content == text, f"the user message of {rid} was stored as {pair['user']!r}"
            answer, done = pair["assistant"], completed[rid]
            usage = done.usage or {}
            if routes:
                assert answer.agent == agent, f"the reply to {text!r} is stored as agent {answer.agent!r}"
                assert str(answer.run_id) == done.run_id, "the stored reply has another run id than the frame"
            assert (answer.prompt_tokens, answer.completion_tokens) == (
                usage["prompt_tokens"],
                usage["completion_tokens"],
            ), (
                f"the reply to {text!r} stored tokens {answer.prompt_tokens}/{answer.completion_tokens}, "
                f"the browser was told {usage}"
            )
        shown = await dashboard.chat.messages()
        stored = [(m.role, " ".join(m.content.split())) for m in messages]
        assert [(m.role, m.text) for m in shown] == stored, (
            f"the conversation on screen differs from PostgreSQL:\n  screen: {[(m.role, m.text[:50]) for m in shown]}"
            f"\n  stored: {[(r, t[:50]) for r, t in stored]}"
        )
        shown_rids = await dashboard.chat.user_request_ids()
        assert shown_rids == list(request_agents), f"the page shows request ids {shown_rids}"

    if analytics:
        async with step(
            "Usage: one ClickHouse row per LLM call; tokens match the messages; the request ids trail"
        ):
            usage_rows = await _usage_rows_settled(
                app,
                user_id,
                list(request_agents),
                sum(LLM_CALLS_PER_TURN[a] for a in request_agents.values()),
            )
            _assert_usage_matches_messages(messages, usage_rows, request_agents, user_id)
            assert (
                {r.request_id for r in usage_rows} == set(request_agents) == {m.request_id for m in messages}
            ), (
                "the request ids the browser sent, the ones in the stored messages and the ones in the usage "
                "events are not the same set"
            )
            for rid, done in completed.items():
                rows = [r for r in usage_rows if r.request_id == rid]
                cost = sum((Decimal(r.cost_usd) for r in rows), Decimal(0))
                told = (done.usage or {})["cost_usd"]
                assert cost == Decimal(told), (
                    f"turn {rid} cost {cost} USD in ClickHouse, the browser was told {told}"
                )
    else:
        step.not_applicable(
            "Usage: one ClickHouse row per LLM call; tokens match the messages; the request ids trail",
            "lacks usage_analytics",
        )

    failing_text = "Please also tell me a short joke"
    async with step("Failure: a turn the LLM fails (500) shows the error and leaves no message or usage"):
        await app.llm.set(fail_next=1, status=500)
        await dashboard.chat.send(failing_text)
        failed_rid = str((await turns.sent(failing_text, timeout=10)).request_id)
        error = await turns.wait_for("error", request_id=failed_rid, timeout=10)
        if app.supports("error_codes"):
            assert error.code == "llm_unavailable", (
                f"the failed turn answered {error.code!r}: {error.message!r}"
            )
            banner = await dashboard.wait_for_error_banner("assistant is unavailable")
            assert "try again" in banner.lower(), f"the error banner says {banner!r}"
        else:  # the screen shows the error the socket reported
            await dashboard.wait_for_error_banner(error.message or None)
        await dashboard.chat.message_item(request_id=failed_rid, role="user").wait_for_status(
            "failed", "the unanswered message to be marked failed"
        )
        assert not turns.events("completed", request_id=failed_rid), "the failed turn still completed"

    recovery_text = "Thanks, one more question please"
    async with step("The next turn succeeds; the failed one stays absent from every store"):
        reply = await dashboard.chat.ask(recovery_text, contains=f"Stand-in reply to: {recovery_text}")
        if routes:
            assert reply.agent == "general", f"{recovery_text!r} was answered by the {reply.agent!r} agent"
        await dashboard.wait_for_no_error_banner()
        recovery_rid = str((await turns.sent(recovery_text, timeout=10)).request_id)
        request_agents[recovery_rid] = "general"
        if analytics:
            # the recovery turn's usage reaching the usage store proves the outbox before it was flushed too
            usage_rows = await _usage_rows_settled(
                app,
                user_id,
                list(request_agents),
                sum(LLM_CALLS_PER_TURN[a] for a in request_agents.values()),
            )
        messages = await app.records.messages_with_runs(user_id)
        failed = [m for m in messages if m.request_id == failed_rid]
        kept = (
            0 if discards else 1
        )  # a platform that keeps a failed turn keeps its message and the error reply
        roles = Counter(m.role for m in messages)
        assert roles == {"user": 4 + kept, "assistant": 4 + kept}, (
            f"after a failed and a good turn PostgreSQL holds {dict(roles)}"
        )
        if discards:
            assert not failed, f"the failed turn {failed_rid} left a message in PostgreSQL"
        else:
            assert [m.role for m in failed] == ["user", "assistant"], (
                f"the failed turn {failed_rid} is stored as {[m.role for m in failed]}"
            )
            assert [m.content for m in failed] == [failing_text, ""], (
                f"the failed turn's stored reply holds an answer: {failed[-1].content!r}"
            )
            assert all(not m.prompt_tokens and not m.completion_tokens for m in failed), (
                f"the failed turn {failed_rid} is stored with tokens: {failed}"
            )
            messages = [m for m in messages if m.request_id != failed_rid]
        if app.supports("usage_outbox"):
            assert await app.records.pending_usage(failed_rid) == 0, (
                f"the failed turn {failed_rid} left a usage_outbox row"
            )
        if analytics:
            assert all(r.request_id != failed_rid for r in usage_rows), (
                f"the failed turn {failed_rid} was billed in ClickHouse"
            )
            _assert_usage_matches_messages(messages, usage_rows, request_agents, user_id)
        shown = await dashboard.chat.messages()
        assert [m.role for m in shown].count("user") == 5, (
            f"the conversation on screen lost a message: {[(m.role, m.status) for m in shown]}"
        )
