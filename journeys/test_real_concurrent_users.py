"""Journey: five people chat at the same moment, each in their own browser; nobody sees, lists,
opens or is billed for anyone else's conversation."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from db_probes import eventually
from harness.journey import journey
from harness.plugin_browser import BrowserUser, NewContext
from harness.steps import step
from harness.ws_recorder import WsRecorder
from journeys.conftest import LLMControl, TestUser, UserFactory, stored_tokens
from pages import DashboardPage, LoginPage

COMPONENTS = ["frontend", "auth", "backend", "websocket", "agent", "postgres", "clickhouse", "redis"]
CROWD = 5
FRAME_WAIT_S = 20.0
# Slow the stand-in's stream a little so the five turns are provably in flight together.
STREAM_LATENCY_MS = 250
ARGON2_PARALLEL = 2


@dataclass
class Chatter:
    """One person of the crowd: their account, browser, secret word and what their turn produced."""

    user: TestUser
    browser: BrowserUser
    secret: str
    dashboard: DashboardPage | None = None
    request_id: str = ""
    completed: dict[str, Any] = field(default_factory=dict)

    @property
    def question(self) -> str:
        # No routing keyword: every turn goes to the general agent (one LLM call, one usage row).
        return f"Hello, please repeat my code word {self.secret}"

    @property
    def thread_id(self) -> str:
        return str(self.completed["thread_id"])


def api_headers(user: TestUser) -> dict[str, str]:
    return {"Authorization": f"Bearer {user.access_token}", "X-Request-ID": str(uuid.uuid4())}


def leaked_secrets(text: str, me: Chatter, crowd: list[Chatter]) -> list[str]:
    return [other.secret for other in crowd if other is not me and other.secret in text]


@journey(name="Concurrent users isolation", priority="P1", mrr=75_000, components=COMPONENTS)
async def test_concurrent_users_see_only_their_own_conversations(
    new_context: NewContext,
    urls: dict[str, str],
    users: UserFactory,
    llm: LLMControl,
    http: httpx.AsyncClient,
    pg: Any,
    ch: Any,
    provider_name: str,
    data_trail: Any,
) -> None:
    """Five users chat at once; replies, frames, threads, usage and thread access stay per user."""
    crowd: list[Chatter] = []

    async with step("Create five users and an intruder through the API, each with a browser, in parallel"):
        # At most two at a time (one per core): signup and login hash the password (argon2), and a
        # loaded 2-core machine must still answer every request within the client's timeout.
        gate = asyncio.Semaphore(ARGON2_PARALLEL)

        async def make(tag: str, name: str) -> TestUser:
            async with gate:
                return await users.verified(tag, name)

        made = await asyncio.gather(
            *(make(f"crowd{i}", f"Crowd Member {i}") for i in range(CROWD)), make("intruder", "Ivy Intruder")
        )
        *members, intruder_user = made
        browsers = await asyncio.gather(
            *(new_context(f"crowd{i}") for i in range(CROWD)), new_context("intruder")
        )
        *member_browsers, intruder = browsers
        crowd = [
            Chatter(u, b, secret=f"SECRET{i}X{uuid.uuid4().hex[:8].upper()}")
            for i, (u, b) in enumerate(zip(members, member_browsers, strict=True))
        ]

    async with step("Everyone logs in through the UI in their own browser, in parallel"):

        async def enter(browser: BrowserUser, user: TestUser) -> DashboardPage:
            login = await LoginPage(browser.page, urls["frontend_url"], provider_name).open()
            async with gate:  # the password check is the argon2 part
                dashboard = await login.login(user.email, user.password)
            # The API checks below use the very session the UI logged in with.
            token = (await stored_tokens(browser.page))["access"]
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
        await llm.set(latency_ms=STREAM_LATENCY_MS)
        chats = [c.dashboard.chat for c in crowd if c.dashboard]
        # Type first, then press every Send at once: the turns start as close together as the
        # browsers allow.
        await asyncio.gather(*(chat.input.fill(c.question) for chat, c in zip(chats, crowd, strict=True)))
        await asyncio.gather(*(chat.send_button.click() for chat in chats))
        replies = await asyncio.gather(
            *(chat.wait_for_reply(contains=c.secret) for chat, c in zip(chats, crowd, strict=True))
        )
        windows: list[tuple[float, float]] = []
        for chatter in crowd:
            ws = chatter.browser.ws
            sent = await ws.wait_for(
                "user_message",
                where={"payload.content": chatter.question},
                direction="sent",
                timeout=FRAME_WAIT_S,
            )
            chatter.request_id = str(sent.data["request_id"])
            started = await ws.wait_for(
                "agent_started", where={"request_id": chatter.request_id}, timeout=FRAME_WAIT_S
            )
            done = await ws.wait_for(
                "agent_completed", where={"request_id": chatter.request_id}, timeout=FRAME_WAIT_S
            )
            chatter.completed = dict(done.data["payload"])
            windows.append((float(started.data["ts"]), float(done.data["ts"])))
        # Server-side clock: how many turns were running at the same moment.
        peak = max(sum(1 for s, e in windows if s <= start < e) for start, _ in windows)
        data_trail.append(("server", "turns running at the same moment (peak)", peak))
        assert peak >= 2, f"the five turns never ran at the same time on the server (windows {windows})"
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
            recorder: WsRecorder = chatter.browser.ws
            own_requests = {
                str(f.data.get("request_id")) for f in recorder.frames(direction="sent") if f.data
            }
            for frame in recorder.frames():
                text = frame.text or ""
                leaks = leaked_secrets(text, chatter, crowd)
                assert not leaks, (
                    f"{chatter.user.email}'s socket carried other users' code words {leaks}: {frame}"
                )
                data = frame.data if isinstance(frame.data, dict) else {}
                payload = data.get("payload") or {}
                rid = data.get("request_id")
                if frame.direction == "received" and rid is not None:
                    assert rid in own_requests, (
                        f"{chatter.user.email}'s socket got a frame of another request: {frame}"
                    )
                for key in ("thread_id", "active_thread_id"):
                    if payload.get(key):
                        assert payload[key] == chatter.thread_id, (
                            f"{chatter.user.email}'s socket named another thread ({key}): {frame}"
                        )
                if frame.type == "connection_established":
                    assert payload["user_id"] == chatter.user.user_id, (
                        f"{chatter.user.email}'s socket was established for user {payload['user_id']}"
                    )

    async with step("The threads API lists only each user's own thread"):
        for chatter in crowd:
            response = await http.get(f"{urls['backend_url']}/api/threads", headers=api_headers(chatter.user))
            assert response.status_code == 200, f"GET /api/threads answered {response.status_code}"
            listed = [t["id"] for t in response.json()["threads"]]
            assert listed == [chatter.thread_id], (
                f"{chatter.user.email}'s thread list is {listed}, expected only {chatter.thread_id}"
            )
            response = await http.get(
                f"{urls['backend_url']}/api/threads/{chatter.thread_id}/messages",
                headers=api_headers(chatter.user),
            )
            assert response.status_code == 200, f"opening their own thread answered {response.status_code}"
            contents = [m["content"] for m in response.json()["messages"]]
            assert contents == [chatter.question, f"Stand-in reply to: {chatter.question}"], (
                f"{chatter.user.email}'s thread holds {contents}"
            )

    async with step("PostgreSQL and ClickHouse hold exactly each user's own turn"):
        for chatter in crowd:
            rows = await pg.backend.rows(
                "SELECT user_id, thread_id, role, request_id FROM messages WHERE thread_id = $1::uuid",
                chatter.thread_id,
            )
            assert sorted(r["role"] for r in rows) == ["assistant", "user"], f"thread rows {rows}"
            assert {(str(r["user_id"]), r["request_id"]) for r in rows} == {
                (chatter.user.user_id, chatter.request_id)
            }, f"{chatter.user.email}'s thread holds {rows}"

            async def one_own_row(chatter: Chatter = chatter) -> list[dict[str, Any]]:
                found = await ch.usage_events(user_id=chatter.user.user_id)
                assert len(found) == 1, f"{chatter.user.email} has {len(found)} usage rows, expected 1"
                return found

            (row,) = await eventually(one_own_row, timeout=10, description="one usage row per user")
            usage = chatter.completed["usage"]
            assert (row["request_id"], str(row["thread_id"]), str(row["run_id"])) == (
                chatter.request_id,
                chatter.thread_id,
                chatter.completed["run_id"],
            ), f"{chatter.user.email}'s usage row belongs to another turn: {row}"
            assert (row["prompt_tokens"], row["completion_tokens"]) == (
                usage["prompt_tokens"],
                usage["completion_tokens"],
            ), f"{chatter.user.email} was billed {row} for a turn that used {usage}"

    async with step("Another user's thread is 404 through the API and refused on the socket"):
        for me, other in zip(crowd, crowd[1:] + crowd[:1], strict=True):
            response = await http.get(
                f"{urls['backend_url']}/api/threads/{other.thread_id}/messages", headers=api_headers(me.user)
            )
            assert response.status_code == 404, (
                f"{me.user.email} opened another user's thread through the API: {response.status_code}"
            )
            assert other.secret not in response.text, "the 404 leaked the other user's messages"
            missing = await http.get(
                f"{urls['backend_url']}/api/threads/{uuid.uuid4()}/messages", headers=api_headers(me.user)
            )
            assert (missing.status_code, missing.json()) == (404, response.json()), (
                "another user's thread answers differently from a thread that does not exist (existence leak)"
            )
        me, other = crowd[0], crowd[1]
        async with connect(
            urls["ws_url"],
            subprotocols=[Subprotocol(f"jwt.{me.user.access_token}")],
            open_timeout=FRAME_WAIT_S,
        ) as sock:
            hello = json.loads(await asyncio.wait_for(sock.recv(), FRAME_WAIT_S))
            assert hello["type"] == "connection_established", f"the socket opened with {hello}"
            await sock.send(
                json.dumps(
                    {
                        "type": "user_message",
                        "request_id": "write-into-other-thread",
                        "payload": {"content": "sneaking in", "thread_id": other.thread_id},
                    }
                )
            )
            refused = json.loads(await asyncio.wait_for(sock.recv(), FRAME_WAIT_S))
            assert (refused["type"], refused["payload"].get("code")) == ("error", "thread_not_found"), (
                f"writing into another user's thread was answered with {refused}"
            )
        assert await pg.backend.count("messages", "thread_id = $1::uuid", other.thread_id) == 2, (
            "a message was written into another user's thread"
        )
        assert await pg.backend.count("messages", "request_id = $1", "write-into-other-thread") == 0

    async with step("Another user's thread does not open in the UI"):
        victim = crowd[0]
        page = intruder.page
        await page.evaluate("id => localStorage.setItem('tl.active_thread_id', id)", victim.thread_id)
        intruder_dashboard = await intruder_dashboard.reload()
        banner = await intruder_dashboard.wait_for_error_banner("That conversation could not be found")
        assert banner, "the intruder was not told the conversation could not be found"
        messages = await intruder_dashboard.chat.messages()
        assert messages == [], f"the intruder's chat shows messages {messages}"
        assert victim.secret not in await page.content(), "the intruder's page shows the victim's words"
        assert await page.evaluate("localStorage.getItem('tl.active_thread_id')") is None, (
            "the intruder's browser still remembers the other user's thread"
        )
        leaked_frames = [f for f in intruder.ws.frames() if victim.secret in (f.text or "")]
        assert not leaked_frames, f"the intruder's socket carried the victim's words: {leaked_frames}"
        state = await intruder_dashboard.frontend_state()
        assert state["activeThreadId"] is None, (
            f"the intruder's chat has thread {state['activeThreadId']} open"
        )
