"""Journey: five people chat at the same moment, each in their own browser; nobody sees, lists,
opens or is billed for anyone else's conversation."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

from harness.app import ApiAnswer, App, TestUser, TurnEvent
from harness.journey import journey
from harness.plugin_browser import BrowserUser
from harness.steps import step

COMPONENTS = ["frontend", "auth", "backend", "websocket", "agent", "postgres", "clickhouse", "redis"]
CROWD = 5
FRAME_WAIT_S = 20.0
# Slow the stand-in's stream a little so the five turns are provably in flight together.
STREAM_LATENCY_MS = 250
ARGON2_PARALLEL = 2
# Six browsers load the chat screen at once on a 2-core machine: landing after the sign-in is
# measured in seconds each, and one landed after the 10 s of a single sign-in (Open WebUI, whose
# chat screen fetches its config, models, chats and settings first).
CROWD_LANDING_S = 30.0


@dataclass
class Chatter:
    """One person of the crowd: their account, browser, secret word and what their turn produced."""

    user: TestUser
    browser: BrowserUser
    secret: str
    dashboard: Any = None
    request_id: str = ""
    completed: TurnEvent | None = None

    @property
    def question(self) -> str:
        # No routing keyword: every turn goes to the general agent (one LLM call, one usage row).
        return f"Hello, please repeat my code word {self.secret}"

    @property
    def thread_id(self) -> str:
        assert self.completed is not None, f"{self.user.email}'s turn has not completed"
        return str(self.completed.thread_id)


def leaked_secrets(text: str, me: Chatter, crowd: list[Chatter]) -> list[str]:
    return [other.secret for other in crowd if other is not me and other.secret in text]


@journey(
    name="Concurrent users isolation",
    priority="P1",
    mrr=75_000,
    components=COMPONENTS,
    drills=[
        "threads-list-unscoped",
        "socket-writes-into-foreign-thread",
        "foreign-thread-403",
        "owui-chat-access-admin-clause-dropped",
    ],
)
async def test_concurrent_users_see_only_their_own_conversations(app: App, data_trail: Any) -> None:
    """Five users chat at once; replies, frames, threads, usage and thread access stay per user."""
    crowd: list[Chatter] = []

    async with step("Create five users and an intruder through the API, each with a browser, in parallel"):
        # At most two at a time (one per core): signup and login hash the password (argon2), and a
        # loaded 2-core machine must still answer every request within the client's timeout.
        gate = asyncio.Semaphore(ARGON2_PARALLEL)

        async def make(tag: str, name: str) -> TestUser:
            async with gate:
                return await app.users.verified(tag, name)

        made = await asyncio.gather(
            *(make(f"crowd{i}", f"Crowd Member {i}") for i in range(CROWD)), make("intruder", "Ivy Intruder")
        )
        *members, intruder_user = made
        browsers = await asyncio.gather(
            *(app.page_for(f"crowd{i}") for i in range(CROWD)), app.page_for("intruder")
        )
        *member_browsers, intruder = browsers
        crowd = [
            Chatter(u, b, secret=f"SECRET{i}X{uuid.uuid4().hex[:8].upper()}")
            for i, (u, b) in enumerate(zip(members, member_browsers, strict=True))
        ]

    async with step("Everyone logs in through the UI in their own browser, in parallel"):

        async def enter(browser: BrowserUser, user: TestUser) -> Any:
            login = await app.login_page(browser.page).open()
            async with gate:  # the password check is the argon2 part
                dashboard = await login.login(user.email, user.password, timeout=CROWD_LANDING_S)
            # The API checks below use the very session the UI logged in with.
            token = (await app.tokens_in(browser.page))["access"]
            assert token, f"{user.email}'s browser kept no access token after logging in"
            user.tokens = {"access_token": token}
            return dashboard

        dashboards = await asyncio.gather(
            *(enter(c.browser, c.user) for c in crowd), enter(intruder, intruder_user)
        )
        for chatter, dashboard in zip(crowd, dashboards, strict=False):
            chatter.dashboard = dashboard
        intruder_dashboard = dashboards[-1]

    async with step("All five send a message at the same time and each gets a reply"):
        await app.llm.set(latency_ms=STREAM_LATENCY_MS)
        chats = [c.dashboard.chat for c in crowd if c.dashboard]
        # Type first, then press every Send at once: the turns start as close together as the
        # browsers allow.
        await asyncio.gather(*(chat.type_message(c.question) for chat, c in zip(chats, crowd, strict=True)))
        await asyncio.gather(*(chat.press_send() for chat in chats))
        replies = await asyncio.gather(
            *(chat.wait_for_reply(contains=c.secret) for chat, c in zip(chats, crowd, strict=True))
        )
        for chatter in crowd:
            turns = app.turns(chatter.browser.ws)
            sent = await turns.sent(chatter.question, timeout=FRAME_WAIT_S)
            chatter.request_id = str(sent.request_id)
            await turns.wait_for("turn_started", request_id=chatter.request_id, timeout=FRAME_WAIT_S)
            done = await turns.wait_for("completed", request_id=chatter.request_id, timeout=FRAME_WAIT_S)
            chatter.completed = done
        # The provider's clock: the streamed calls that answered the five questions, from their
        # arrival to their last byte; how many of them the platform had in flight at one moment.
        questions = {c.question for c in crowd}
        calls = [r for r in await app.llm.requests() if r["stream"] and r["prompt"] in questions]
        assert sorted(r["prompt"] for r in calls) == sorted(questions), (
            f"the LLM streamed {len(calls)} answers for the five questions: {[r['prompt'] for r in calls]}"
        )
        windows = [(float(r["received_at"]), float(r["finished_at"] or 0)) for r in calls]
        assert all(end > start for start, end in windows), f"an answer never finished streaming: {calls}"
        peak = max(sum(1 for s, e in windows if s <= start < e) for start, _ in windows)
        data_trail.append(("llm", "turns answered at the same moment (peak)", peak))
        assert peak >= 2, f"the five turns were never in flight at the same time (LLM windows {windows})"
        for chatter, reply in zip(crowd, replies, strict=True):
            assert reply.text == f"Stand-in reply to: {chatter.question}", (
                f"{chatter.user.email} was shown {reply.text!r} as the reply to their own message"
            )
        assert len({c.thread_id for c in crowd}) == CROWD, "two users' turns landed in the same thread"

    async with step("Nobody's page or socket shows another user's words, thread or request"):
        for chatter in crowd:
            page_html = await chatter.browser.page.content()
            leaks = leaked_secrets(page_html, chatter, crowd)
            assert not leaks, f"{chatter.user.email}'s page shows other users' code words {leaks}"
            for frame in chatter.browser.ws.frames():
                leaks = leaked_secrets(frame.text or "", chatter, crowd)
                assert not leaks, (
                    f"{chatter.user.email}'s socket carried other users' code words {leaks}: {frame}"
                )
            turns = app.turns(chatter.browser.ws)
            own_requests = {str(e.request_id) for e in turns.events(direction="sent")}
            for event in turns.events():
                if event.direction == "received" and event.request_id is not None:
                    assert event.request_id in own_requests, (
                        f"{chatter.user.email}'s socket got an event of another request: {event.frame}"
                    )
                for key, value in (
                    ("thread_id", event.thread_id),
                    ("active_thread_id", event.active_thread_id),
                ):
                    if value:
                        assert value == chatter.thread_id, (
                            f"{chatter.user.email}'s socket named another thread ({key}): {event.frame}"
                        )
                if event.kind == "connected":
                    assert event.user_id == chatter.user.user_id, (
                        f"{chatter.user.email}'s socket was established for user {event.user_id}"
                    )

    async with step("The threads API lists only each user's own thread"):
        for chatter in crowd:
            answer = await app.my_threads(chatter.user)
            assert answer.status == 200, f"listing their threads answered {answer.status}"
            listed = app.listed_threads(answer)
            assert listed == [chatter.thread_id], (
                f"{chatter.user.email}'s thread list is {listed}, expected only {chatter.thread_id}"
            )
            answer = await app.thread_messages(chatter.user, chatter.thread_id)
            assert answer.status == 200, f"opening their own thread answered {answer.status}"
            contents = app.listed_messages(answer)
            assert contents == [chatter.question, f"Stand-in reply to: {chatter.question}"], (
                f"{chatter.user.email}'s thread holds {contents}"
            )

    async with step("The stores hold exactly each user's own turn, and the usage it reported"):
        for chatter in crowd:
            assert chatter.completed is not None
            usage = chatter.completed.usage or {}
            rows = await app.records.thread_messages(chatter.thread_id)
            assert sorted(r.role for r in rows) == ["assistant", "user"], f"thread rows {rows}"
            assert {(r.user_id, r.request_id) for r in rows} == {
                (chatter.user.user_id, chatter.request_id)
            }, f"{chatter.user.email}'s thread holds {rows}"
            if app.supports("message_usage"):
                (reply,) = [r for r in rows if r.role == "assistant"]
                assert (reply.prompt_tokens, reply.completion_tokens) == (
                    usage["prompt_tokens"],
                    usage["completion_tokens"],
                ), f"{chatter.user.email}'s reply was stored with {reply}, its turn reported {usage}"
            if not app.supports("usage_analytics"):
                continue

            async def one_own_row(chatter: Chatter = chatter) -> list[Any]:
                found = await app.records.usage(user_id=str(chatter.user.user_id))
                assert len(found) == 1, f"{chatter.user.email} has {len(found)} usage rows, expected 1"
                return found

            (row,) = await app.settle(one_own_row, timeout=10, description="one usage row per user")
            assert (row.request_id, row.thread_id, row.run_id) == (
                chatter.request_id,
                chatter.thread_id,
                chatter.completed.run_id,
            ), f"{chatter.user.email}'s usage row belongs to another turn: {row}"
            assert (row.prompt_tokens, row.completion_tokens) == (
                usage["prompt_tokens"],
                usage["completion_tokens"],
            ), f"{chatter.user.email} was billed {row} for a turn that used {usage}"

    async with step("Writing into another user's thread is refused and writes nothing"):
        me, other = crowd[0], crowd[1]
        async with app.socket(me.user.access_token) as sock:
            hello = await sock.receive(FRAME_WAIT_S)
            assert hello.kind == "connected", f"the socket opened with {hello.kind}: {hello.frame}"
            await sock.send_message(
                "sneaking in", request_id="write-into-other-thread", thread_id=other.thread_id
            )
            refused = await sock.receive(FRAME_WAIT_S)
            assert refused.kind == "error" and refused.request_id == "write-into-other-thread", (
                f"writing into another user's thread was answered with {refused.kind}: {refused.frame}"
            )
            if app.supports("error_codes"):
                assert refused.code == "thread_not_found", (
                    f"writing into another user's thread was refused with code {refused.code!r}: {refused.frame}"
                )
        assert len(await app.records.messages(thread_id=other.thread_id)) == 2, (
            "a message was written into another user's thread"
        )
        assert len(await app.records.messages(request_id="write-into-other-thread")) == 0

    async with step("Another user's thread is refused through the API exactly like one that does not exist"):
        for me, other in zip(crowd, crowd[1:] + crowd[:1], strict=True):
            await refused_like_a_missing_thread(app, me.user, other.thread_id, other.secret)

    async with step("Another user's thread does not open in the UI, and the intruder is told so"):
        victim = crowd[0]
        page = intruder.page
        await app.remember_thread(page, victim.thread_id)
        intruder_dashboard = await intruder_dashboard.reload()
        messages = await intruder_dashboard.chat.messages()
        assert messages == [], f"the intruder's chat shows messages {messages}"
        assert victim.secret not in await page.content(), "the intruder's page shows the victim's words"

        async def forgotten() -> None:
            assert await app.remembered_thread(page) is None, (
                "the intruder's browser still remembers the other user's thread"
            )

        await app.settle(forgotten, timeout=10, description="the browser forgets the other user's thread")
        leaked_frames = [f for f in intruder.ws.frames() if victim.secret in (f.text or "")]
        assert not leaked_frames, f"the intruder's socket carried the victim's words: {leaked_frames}"
        state = await intruder_dashboard.frontend_state()
        assert state["activeThreadId"] is None, (
            f"the intruder's chat has thread {state['activeThreadId']} open"
        )
        banner = await intruder_dashboard.wait_for_error_banner(app.ui_phrases["thread_not_found"])
        assert banner, "the intruder was not told the conversation could not be found"


async def refused_like_a_missing_thread(app: App, me: TestUser, thread_id: str, secret: str) -> ApiAnswer:
    """`me` asks the API for another user's thread: refused, none of its words (`secret`) in the
    answer, and answered exactly as a thread that does not exist (no existence leak); -> the answer."""
    __tracebackhide__ = True
    answer = await app.thread_messages(me, thread_id)
    assert 400 <= answer.status < 500, (
        f"{me.email} opened another user's thread through the API: {answer.status}"
    )
    assert secret not in answer.text, "the refusal leaked the other user's messages"
    missing = await app.thread_messages(me, str(uuid.uuid4()))
    assert (missing.status, missing.body) == (answer.status, answer.body), (
        "another user's thread answers differently from a thread that does not exist (existence leak)"
    )
    return answer


@journey(
    name="Concurrent users isolation",
    priority="P1",
    mrr=75_000,
    components=["frontend", "auth", "backend", "postgres"],
    drills=["foreign-thread-403", "owui-chat-read-skips-ownership"],
)
async def test_another_users_conversation_answers_not_found(app: App, page: Any, ws_recorder: Any) -> None:
    """Someone asks the API for another person's conversation: 404 Not Found, exactly as for a
    conversation that does not exist, with nothing of it in the answer."""
    async with step("A person has a conversation"):
        session = await app.chat_session(page, ws_recorder, "owner")
        secret = f"SECRETX{uuid.uuid4().hex[:8].upper()}"
        turn = await session.complete_turn(f"Hello, please repeat my code word {secret}")
        assert secret in turn.text, f"the reply does not repeat the code word: {turn.text!r}"

    async with step("Another person's request for it is refused like a missing one"):
        someone = await app.users.logged_in("stranger", "Sam Stranger")
        answer = await refused_like_a_missing_thread(app, someone, turn.thread_id, secret)

    async with step("Another user's thread answers 404 Not Found through the API"):
        assert answer.status == 404, (
            f"GET of another user's thread answered {answer.status} {answer.text[:200]!r}, not 404"
        )
