"""Journey: the session and the conversation survive reloads and backend restarts.

A reload keeps the person logged in and in their conversation; a backend restart in the
middle of a conversation shows "Reconnecting…", then the chat comes back in the same thread
(restored from the platform's chat session) and the next message lands in that thread; an
outage refuses sending without losing what was typed; logout ends the session everywhere.
"""

from __future__ import annotations

from typing import Any

from harness.app import App, TestUser
from harness.journey import journey
from harness.steps import step

COMPONENTS = ["frontend", "backend", "websocket", "redis", "postgres", "agent", "llm"]
CHAT_UNREACHABLE = "Chat service unreachable"


def reply_to(text: str) -> str:
    """What the deterministic LLM stand-in answers to `text` (docs/wiring.md)."""
    return f"Stand-in reply to: {text}"


async def wait_for_state(app: App, dashboard: Any, description: str, **expected: Any) -> dict[str, Any]:
    """The frontend's own state once it shows `expected` (it settles after the socket's greeting)."""
    __tracebackhide__ = True

    async def check() -> dict[str, Any]:
        state = await dashboard.frontend_state()
        for key, value in expected.items():
            assert state.get(key) == value, f"{key} is {state.get(key)!r}, expected {value!r} (state {state})"
        return state

    return await app.settle(check, timeout=10, description=description)


async def open_conversation(
    app: App, page: Any, ws_recorder: Any, tag: str, first: str
) -> tuple[TestUser, Any, str]:
    """A fresh user logs in through the UI and has one turn; -> (user, dashboard, thread_id)."""
    user = await app.users.verified(tag)
    dashboard = await app.login(page, user)
    reply = await dashboard.chat.ask(first, contains=reply_to(first))
    if app.supports("agent_routing"):
        assert reply.agent == "general", f"the greeting was answered by the {reply.agent!r} agent"
    completed = await app.turns(ws_recorder).wait_for("completed")
    return user, dashboard, str(completed.thread_id)


@journey(
    name="Session persistence across restarts",
    priority="P1",
    mrr=25_000,
    components=COMPONENTS,
    needs=["session_restore", "service_control"],
    drills=[
        "greeting-forgets-thread",
        "logout-keeps-session",
        "owui-session-pool-forgets-chat",
        "owui-signout-keeps-token",
    ],
)
async def test_session_survives_reload_backend_restart_and_logout(
    app: App, page: Any, ws_recorder: Any
) -> None:
    """Reload and a backend restart keep the user in their thread; logout ends the session."""
    first, second = "Please remember the word heliotrope", "Which word did I ask you to remember"
    turns = app.turns(ws_recorder)
    has_greeting, has_indicator = app.supports("socket_greeting"), app.supports("connection_indicator")
    connected = {"connection": "connected"} if has_indicator else {}

    async with step("Log in and have a first turn"):
        user, dashboard, thread_id = await open_conversation(app, page, ws_recorder, "persist", first)
        await wait_for_state(app, dashboard, "the app is in the new thread", activeThreadId=thread_id)

    async with step("Reload: still logged in, same user, same thread, messages shown again"):
        mark = turns.mark()
        dashboard = await app.dashboard_page(page, user.full_name).reload()

        async def greeted_in_thread() -> None:
            greetings = turns.events("connected", after=mark)
            assert any(g.active_thread_id == thread_id for g in greetings), (
                f"no 'connected' greeting in thread {thread_id} after the reload; "
                f"greetings name threads {[g.active_thread_id for g in greetings]}"
            )

        if has_greeting:
            await app.settle(
                greeted_in_thread, timeout=10, description="the socket's greeting in the same thread"
            )
        messages = await dashboard.chat.wait_for_messages(2)
        assert [(m.role, m.text) for m in messages] == [("user", first), ("assistant", reply_to(first))], (
            f"after a reload the conversation shows {[(m.role, m.text) for m in messages]}"
        )
        state = await wait_for_state(
            app,
            dashboard,
            "the reloaded app reopens the thread",
            activeThreadId=thread_id,
            **connected,
        )
        assert state["user"]["id"] == user.user_id, (
            f"after a reload the app holds user {state['user']}, logged in as {user.email}"
        )
        if app.supports("profile_email"):
            assert state["user"]["email"] == user.email, (
                f"after a reload the app shows user {state['user']}, logged in as {user.email}"
            )
        assert await dashboard.chat.active_thread() == first, (
            "the thread is not selected in Threads after reload"
        )

    async with step("Redis keeps the chat session with the active thread"):
        chat_session = await app.records.chat_state(str(user.user_id))
        assert chat_session.active_thread_id == thread_id, (
            f"the chat session holds active thread {chat_session.raw}, expected {thread_id}"
        )

    async with step("Restart the backend mid-conversation: Reconnecting…, then Connected in the same thread"):
        if has_indicator:
            await dashboard.chat.watch_connection()
        mark = turns.mark()
        connections_before = len(ws_recorder.connections)
        await app.restart(app.backend_service)  # returns once the new process is ready
        if has_indicator:
            await dashboard.chat.wait_for_connection("connected")

        async def socket_reopened() -> None:
            answered = {f.connection for f in ws_recorder.frames(direction="received")}
            reopened = [
                c for c in ws_recorder.connections[connections_before:] if c.is_open and c.id in answered
            ]
            assert ws_recorder.reconnects >= 1 and reopened, (
                "the browser never opened a new socket after the restart (attempts: "
                f"{[c.summary() for c in ws_recorder.connections[connections_before:]]})"
            )

        if has_greeting:
            back = await turns.wait_for("connected", after=mark)
            assert back.active_thread_id == thread_id, (
                "the restarted backend does not know the active thread (chat session lost)"
            )
        if has_indicator:
            states = await dashboard.chat.connection_states_seen()
            assert (
                "reconnecting" in states
                and states[-1] == "connected"
                and states.index("reconnecting") < len(states) - 1
            ), f"the chat indicator went through {states}; expected Reconnecting… then Connected"
        await app.settle(
            socket_reopened, timeout=20, description="the browser's new socket after the restart"
        )
        messages = await dashboard.chat.wait_for_messages(2)
        assert [m.text for m in messages] == [first, reply_to(first)], (
            f"after the restart the conversation shows {[m.text for m in messages]}"
        )
        await wait_for_state(
            app, dashboard, "the app is back in the thread", activeThreadId=thread_id, **connected
        )
        await dashboard.wait_for_no_error_banner()

    async with step("Redis chat session survived the restart"):

        async def chat_session_in_thread() -> None:
            chat_session = await app.records.chat_state(str(user.user_id))
            assert chat_session.active_thread_id == thread_id, (
                f"after the restart the chat session holds {chat_session.raw}"
            )

        await app.settle(
            chat_session_in_thread, timeout=10, description="the chat session in the same thread"
        )

    async with step("The next message is answered in the same thread"):
        mark = turns.mark()
        await dashboard.chat.ask(second, contains=reply_to(second))
        completed = await turns.wait_for("completed", after=mark)
        assert completed.thread_id == thread_id, (
            "the message after the restart started a new thread instead of continuing the conversation"
        )
        sent = await turns.wait_for("user_message", after=mark, direction="sent")
        assert sent.thread_id == thread_id, "the browser sent the message without its thread"

    async with step("PostgreSQL holds all 4 messages in that one thread"):
        rows = await app.records.thread_messages(thread_id)
        assert [(r.role, r.content) for r in rows] == [
            ("user", first),
            ("assistant", reply_to(first)),
            ("user", second),
            ("assistant", reply_to(second)),
        ], f"the thread holds {[(r.role, r.content) for r in rows]}"
        assert {r.user_id for r in rows} == {user.user_id}, "messages of the thread belong to another user"
        assert len(await app.records.threads(str(user.user_id))) == 1, (
            "the restart split the conversation into several threads"
        )

    async with step("Log out through the UI: the Redis session is gone, a reload lands on /login"):
        has_session_store = app.supports("session_store")
        access = (await app.tokens_in(page))["access"]
        assert access, "no access token kept in the browser on the dashboard"
        sid = app.session_id_of(access)
        if has_session_store:
            assert (await app.records.session(sid)).exists, "no stored session for the browser's session"
        login = await dashboard.logout()
        if has_session_store:
            assert not (await app.records.session(sid)).exists, "the session is still stored after logout"
        if app.supports("session_revocation"):
            seen = await app.handshake(access)
            assert seen.refused and not seen.events, (
                f"the signed-out token still opens the chat socket (events {seen.kinds}, close {seen.close_code})"
            )
        await app.dashboard_page(page).visit()
        await app.login_page(page).wait_until_loaded()
        login = await app.login_page(page).reload()
        assert await login.is_current(), f"after logout and a reload the browser is at {page.url}"
        kept = await app.stored_keys(page)
        assert kept == [], f"logout left {kept} in the browser's storage"


@journey(
    name="Session persistence across restarts",
    priority="P1",
    mrr=25_000,
    components=COMPONENTS,
    needs=["service_control", "connection_indicator"],
    drills=["greeting-forgets-thread"],
)
async def test_chat_waits_out_a_backend_outage(app: App, page: Any, ws_recorder: Any) -> None:
    """While the backend is down the UI says it is reconnecting and refuses to send; nothing typed is lost."""
    first, during = "Good morning assistant", "This was typed while the chat service was down"
    turns = app.turns(ws_recorder)

    async with step("Log in and have a first turn"):
        user, dashboard, thread_id = await open_conversation(app, page, ws_recorder, "outage", first)

    outage = None
    try:
        async with step("Stop the backend: the UI says it is reconnecting and sending is not possible"):
            outage = await app.begin_outage(app.backend_service)
            chat = dashboard.chat
            await chat.wait_for_connection("reconnecting")
            await dashboard.wait_for_error_banner(CHAT_UNREACHABLE)
            assert await chat.send_button.is_disabled(), "Send stays enabled while the chat service is down"
            state = await dashboard.frontend_state()
            assert state["connection"] in ("reconnecting", "offline"), (
                f"the app reports {state['connection']!r}"
            )

        async with step("A message typed during the outage stays in the box and is not sent"):
            mark = turns.mark()
            await chat.input.fill(during)
            await chat.input.press("Enter")
            assert await chat.input.input_value() == during, "the message typed during the outage was wiped"
            shown = [m.text for m in await chat.messages()]
            assert during not in shown, "the UI shows a message as sent although the chat service is down"
            assert not turns.events("user_message", direction="sent", after=mark), (
                "the browser sent a message while disconnected"
            )

        async with step("Start the backend again: Connected, same thread, the typed message still there"):
            await outage.end()
            await chat.wait_for_connection("connected")
            await dashboard.wait_for_no_error_banner()
            messages = await chat.wait_for_messages(2)
            assert [m.text for m in messages] == [first, reply_to(first)], (
                f"after the outage the conversation shows {[m.text for m in messages]}"
            )
            await wait_for_state(app, dashboard, "the app is back in the thread", activeThreadId=thread_id)
            assert await chat.input.input_value() == during, "the typed message was lost during the outage"
    finally:
        if outage is not None:
            await outage.end()  # leave the shared stack as we found it

    async with step("The kept message is sent now and answered in the same thread"):
        mark = turns.mark()
        await chat.ask(during, contains=reply_to(during))
        completed = await turns.wait_for("completed", after=mark)
        assert completed.thread_id == thread_id, "the message after the outage opened a new thread"

    async with step("PostgreSQL: both turns in the thread, nothing lost, nothing doubled"):
        rows = await app.records.thread_messages(thread_id)
        assert [(r.role, r.content) for r in rows] == [
            ("user", first),
            ("assistant", reply_to(first)),
            ("user", during),
            ("assistant", reply_to(during)),
        ], f"the thread holds {[(r.role, r.content) for r in rows]}"
        sent = [e for e in turns.events("user_message", direction="sent") if e.content == during]
        assert len(sent) == 1, f"the message typed during the outage was sent {len(sent)} times"
