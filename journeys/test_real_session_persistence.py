"""Journey: the session and the conversation survive reloads and backend restarts.

A reload keeps the person logged in and in their conversation; a backend restart in the
middle of a conversation shows "Reconnecting…", then the chat comes back in the same thread
(restored from the Redis chat session) and the next message lands in that thread; an outage
refuses sending without losing what was typed; logout ends the session everywhere.
"""

from __future__ import annotations

from typing import Any

from db_probes import eventually
from harness.journey import journey
from harness.stack import Stack
from harness.steps import step
from journeys.conftest import UserFactory, claims_of, login_through_ui, stored_tokens
from pages import DashboardPage, LoginPage

COMPONENTS = ["frontend", "backend", "websocket", "redis", "postgres", "agent", "llm"]
CHAT_UNREACHABLE = "Chat service unreachable"

# Observes (never changes) the connection indicator: every data-state it takes, in order, so a
# short "Reconnecting…" between two "Connected" is not missed while the harness restarts a service.
_WATCH_CONNECTION = """() => {
  const el = document.querySelector('[data-testid="connection-status"]');
  window.__journeyConnectionStates = [el.dataset.state];
  new MutationObserver(() => {
    const seen = window.__journeyConnectionStates;
    if (seen[seen.length - 1] !== el.dataset.state) seen.push(el.dataset.state);
  }).observe(el, {attributes: true, attributeFilter: ['data-state']});
}"""


def reply_to(text: str) -> str:
    """What the deterministic LLM stand-in answers to `text` (docs/wiring.md)."""
    return f"Stand-in reply to: {text}"


async def thread_messages(pg: Any, thread_id: str) -> list[dict[str, Any]]:
    return list(
        await pg.backend.rows(
            "SELECT role, content, user_id, request_id FROM messages WHERE thread_id = $1 "
            "ORDER BY created_at, CASE role WHEN 'user' THEN 0 ELSE 1 END",
            thread_id,
        )
    )


async def wait_for_state(dashboard: DashboardPage, description: str, **expected: Any) -> dict[str, Any]:
    """window.__throughline.state() once it shows `expected` (it settles after connection_established)."""
    __tracebackhide__ = True

    async def check() -> dict[str, Any]:
        state = await dashboard.frontend_state()
        for key, value in expected.items():
            assert state.get(key) == value, f"{key} is {state.get(key)!r}, expected {value!r} (state {state})"
        return state

    return await eventually(check, timeout=10, description=description)


async def open_conversation(
    page: Any,
    urls: dict[str, str],
    users: UserFactory,
    ws_recorder: Any,
    provider_name: str,
    tag: str,
    first: str,
) -> tuple[Any, DashboardPage, str]:
    """A fresh user logs in through the UI and has one turn; -> (user, dashboard, thread_id)."""
    user = await users.verified(tag)
    dashboard = await login_through_ui(page, urls, user, provider_name)
    reply = await dashboard.chat.ask(first, contains=reply_to(first))
    assert reply.agent == "general", f"the greeting was answered by the {reply.agent!r} agent"
    completed = await ws_recorder.wait_for("agent_completed")
    return user, dashboard, str(completed.data["payload"]["thread_id"])


@journey(name="Session persistence across restarts", priority="P1", mrr=25_000, components=COMPONENTS)
async def test_session_survives_reload_backend_restart_and_logout(
    page: Any,
    ws_recorder: Any,
    urls: dict[str, str],
    users: UserFactory,
    pg: Any,
    redis: Any,
    stack: Stack,
    provider_name: str,
) -> None:
    """Reload and a backend restart keep the user in their thread; logout ends the session."""
    first, second = "Please remember the word heliotrope", "Which word did I ask you to remember"

    async with step("Log in and have a first turn"):
        user, dashboard, thread_id = await open_conversation(
            page, urls, users, ws_recorder, provider_name, "persist", first
        )
        await wait_for_state(dashboard, "the app is in the new thread", activeThreadId=thread_id)

    async with step("Reload: still logged in, same user, same thread, messages shown again"):
        mark = len(ws_recorder.frames())
        dashboard = await DashboardPage(page, urls["frontend_url"], user.full_name).reload()
        await ws_recorder.wait_for(
            "connection_established", where={"active_thread_id": thread_id}, after=mark - 1
        )
        messages = await dashboard.chat.wait_for_messages(2)
        assert [(m.role, m.text) for m in messages] == [("user", first), ("assistant", reply_to(first))], (
            f"after a reload the conversation shows {[(m.role, m.text) for m in messages]}"
        )
        state = await wait_for_state(
            dashboard, "the reloaded app reopens the thread", activeThreadId=thread_id, connection="connected"
        )
        assert state["user"]["id"] == user.user_id and state["user"]["email"] == user.email, (
            f"after a reload the app shows user {state['user']}, logged in as {user.email}"
        )
        assert await dashboard.chat.active_thread() == first, (
            "the thread is not selected in Threads after reload"
        )

    async with step("Redis keeps the chat session with the active thread"):
        chat_session = await redis.key(f"chat:session:{user.user_id}")
        assert chat_session.value.get("active_thread_id") == thread_id, (
            f"chat:session holds active thread {chat_session.value}, expected {thread_id}"
        )

    async with step("Restart the backend mid-conversation: Reconnecting…, then Connected in the same thread"):
        await page.evaluate(_WATCH_CONNECTION)
        mark = len(ws_recorder.frames())
        connections_before = len(ws_recorder.connections)
        stack.service("backend").restart()  # blocks until the new process is ready
        await dashboard.chat.wait_for_connection("connected")
        back = await ws_recorder.wait_for("connection_established", after=mark - 1)
        states = await page.evaluate("() => window.__journeyConnectionStates")
        assert (
            "reconnecting" in states
            and states[-1] == "connected"
            and states.index("reconnecting") < len(states) - 1
        ), f"the chat indicator went through {states}; expected Reconnecting… then Connected"
        assert ws_recorder.reconnects >= 1 and len(ws_recorder.connections) > connections_before, (
            "the browser never opened a new socket after the restart"
        )
        assert back.data["payload"]["active_thread_id"] == thread_id, (
            "the restarted backend does not know the active thread (Redis chat session lost)"
        )
        messages = await dashboard.chat.wait_for_messages(2)
        assert [m.text for m in messages] == [first, reply_to(first)], (
            f"after the restart the conversation shows {[m.text for m in messages]}"
        )
        await wait_for_state(
            dashboard, "the app is back in the thread", activeThreadId=thread_id, connection="connected"
        )
        await dashboard.wait_for_no_error_banner()

    async with step("Redis chat session survived the restart"):
        chat_session = await redis.key(f"chat:session:{user.user_id}")
        assert chat_session.value.get("active_thread_id") == thread_id, (
            f"after the restart chat:session holds {chat_session.value}"
        )

    async with step("The next message is answered in the same thread"):
        mark = len(ws_recorder.frames())
        await dashboard.chat.ask(second, contains=reply_to(second))
        completed = await ws_recorder.wait_for("agent_completed", after=mark - 1)
        assert completed.data["payload"]["thread_id"] == thread_id, (
            "the message after the restart started a new thread instead of continuing the conversation"
        )
        sent = await ws_recorder.wait_for("user_message", after=mark - 1, direction="sent")
        assert sent.data["payload"].get("thread_id") == thread_id, (
            "the browser sent the message without its thread"
        )

    async with step("PostgreSQL holds all 4 messages in that one thread"):
        rows = await thread_messages(pg, thread_id)
        assert [(r["role"], r["content"]) for r in rows] == [
            ("user", first),
            ("assistant", reply_to(first)),
            ("user", second),
            ("assistant", reply_to(second)),
        ], f"the thread holds {[(r['role'], r['content']) for r in rows]}"
        assert {str(r["user_id"]) for r in rows} == {user.user_id}, (
            "messages of the thread belong to another user"
        )
        assert await pg.backend.count("threads", "user_id = $1", user.user_id) == 1, (
            "the restart split the conversation into several threads"
        )

    async with step("Log out through the UI: the Redis session is gone, a reload lands on /login"):
        access = (await stored_tokens(page))["access"]
        assert access, "no access token in localStorage on the dashboard"
        sid = claims_of(access)["sid"]
        assert (await redis.key(f"auth:session:{sid}")).exists, "no auth:session for the browser's session"
        login = await dashboard.logout()
        assert not (await redis.key(f"auth:session:{sid}")).exists, (
            "auth:session is still in Redis after logout"
        )
        await page.goto(login.url_for("/dashboard"))
        await LoginPage(page, urls["frontend_url"], provider_name).wait_until_loaded()
        login = await LoginPage(page, urls["frontend_url"], provider_name).reload()
        assert page.url.split("?")[0].endswith("/login"), (
            f"after logout and a reload the browser is at {page.url}"
        )
        kept = await page.evaluate("() => Object.keys(localStorage).filter(k => k.startsWith('tl.'))")
        assert kept == [], f"logout left {kept} in localStorage"


@journey(name="Session persistence across restarts", priority="P1", mrr=25_000, components=COMPONENTS)
async def test_chat_waits_out_a_backend_outage(
    page: Any,
    ws_recorder: Any,
    urls: dict[str, str],
    users: UserFactory,
    pg: Any,
    stack: Stack,
    provider_name: str,
) -> None:
    """While the backend is down the UI says it is reconnecting and refuses to send; nothing typed is lost."""
    first, during = "Good morning assistant", "This was typed while the chat service was down"
    backend = stack.service("backend")

    async with step("Log in and have a first turn"):
        user, dashboard, thread_id = await open_conversation(
            page, urls, users, ws_recorder, provider_name, "outage", first
        )

    try:
        async with step("Stop the backend: the UI says it is reconnecting and sending is not possible"):
            backend.stop()
            chat = dashboard.chat
            await chat.wait_for_connection("reconnecting")
            await dashboard.wait_for_error_banner(CHAT_UNREACHABLE)
            assert await chat.send_button.is_disabled(), "Send stays enabled while the chat service is down"
            state = await dashboard.frontend_state()
            assert state["connection"] in ("reconnecting", "offline"), (
                f"the app reports {state['connection']!r}"
            )

        async with step("A message typed during the outage stays in the box and is not sent"):
            mark = len(ws_recorder.frames())
            await chat.input.fill(during)
            await chat.input.press("Enter")
            assert await chat.input.input_value() == during, "the message typed during the outage was wiped"
            shown = [m.text for m in await chat.messages()]
            assert during not in shown, "the UI shows a message as sent although the chat service is down"
            assert not [f for f in ws_recorder.frames("user_message", direction="sent") if f.index >= mark], (
                "the browser sent a user_message while disconnected"
            )

        async with step("Start the backend again: Connected, same thread, the typed message still there"):
            backend.start()
            await chat.wait_for_connection("connected")
            await dashboard.wait_for_no_error_banner()
            messages = await chat.wait_for_messages(2)
            assert [m.text for m in messages] == [first, reply_to(first)], (
                f"after the outage the conversation shows {[m.text for m in messages]}"
            )
            await wait_for_state(dashboard, "the app is back in the thread", activeThreadId=thread_id)
            assert await chat.input.input_value() == during, "the typed message was lost during the outage"
    finally:
        if not backend.is_running:
            backend.restart()  # leave the shared stack as we found it

    async with step("The kept message is sent now and answered in the same thread"):
        mark = len(ws_recorder.frames())
        await chat.ask(during, contains=reply_to(during))
        completed = await ws_recorder.wait_for("agent_completed", after=mark - 1)
        assert completed.data["payload"]["thread_id"] == thread_id, (
            "the message after the outage opened a new thread"
        )

    async with step("PostgreSQL: both turns in the thread, nothing lost, nothing doubled"):
        rows = await thread_messages(pg, thread_id)
        assert [(r["role"], r["content"]) for r in rows] == [
            ("user", first),
            ("assistant", reply_to(first)),
            ("user", during),
            ("assistant", reply_to(during)),
        ], f"the thread holds {[(r['role'], r['content']) for r in rows]}"
        sent = [
            f
            for f in ws_recorder.frames("user_message", direction="sent")
            if f.data["payload"]["content"] == during
        ]
        assert len(sent) == 1, f"the message typed during the outage was sent {len(sent)} times"
