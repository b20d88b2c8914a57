"""Journey: per-user rate limits on HTTP, WebSocket messages, concurrent agent runs and logins.

Limits come from the stack's configuration (harness/stack.py PLATFORM_DEFAULTS, overridable with
THROUGHLINE_STACK_<NAME>). Bursts go over real sockets with real tokens: httpx for HTTP, a
`websockets` client for a message burst the UI could never send that fast; what the user sees
is checked in the browser. Resets are awaited on the Redis counters, never slept for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import websockets
from playwright.async_api import expect

from db_probes import eventually
from harness.journey import journey
from harness.stack import PLATFORM_DEFAULTS
from harness.steps import step
from harness.ws_recorder import WsRecorder
from journeys.conftest import LLMControl, TestUser, UserFactory, login_through_ui, stored_tokens
from pages import DEFAULT_TIMEOUT_S, DashboardPage, LoginPage

COMPONENTS = ["frontend", "auth", "backend", "websocket", "redis", "clickhouse", "agent", "llm"]
TERMINAL = ("agent_completed", "rate_limited", "error")


def limit(name: str) -> int:
    """The stack's effective setting TL_<name> (as the harness starts it)."""
    return int(os.environ.get(f"THROUGHLINE_STACK_{name}", PLATFORM_DEFAULTS[f"TL_{name}"]))


class ChatSocket:
    """A WebSocket chat client with a real access token: sends user_messages, records every frame."""

    def __init__(self, ws_url: str, user: TestUser) -> None:
        self.ws_url = ws_url
        self.user = user
        self.frames: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._conn: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ChatSocket:
        self._conn = await websockets.connect(
            self.ws_url, subprotocols=[f"jwt.{self.user.access_token}"], open_timeout=DEFAULT_TIMEOUT_S
        )
        self._reader = asyncio.create_task(self._read())
        await self.wait_for(lambda f: f["type"] == "connection_established", "connection_established")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._conn.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self) -> None:
        try:
            async for raw in self._conn:
                self.frames.append(json.loads(raw))
                self._changed.set()
        finally:
            self._changed.set()

    async def send(self, content: str) -> str:
        """Send one user_message; -> its request id."""
        request_id = str(uuid.uuid4())
        await self._conn.send(
            json.dumps({"type": "user_message", "payload": {"content": content}, "request_id": request_id})
        )
        return request_id

    def outcome(self, request_id: str) -> dict[str, Any] | None:
        """The frame that ended the message: agent_completed, rate_limited or error (None while running)."""
        return next(
            (f for f in self.frames if f.get("request_id") == request_id and f["type"] in TERMINAL), None
        )

    async def wait_for(
        self, match: Callable[[dict[str, Any]], bool], what: str, timeout: float = 20.0
    ) -> dict[str, Any]:  # noqa: ASYNC109 - a waiter's deadline
        """The first frame matching `match`; fails naming what was expected and the last frames seen."""
        __tracebackhide__ = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = next((f for f in self.frames if match(f)), None)
            if found is not None:
                return found
            remaining = deadline - loop.time()
            if remaining <= 0 or (self._reader is not None and self._reader.done()):
                last = [(f["type"], f.get("request_id"), f.get("payload")) for f in self.frames[-8:]]
                raise AssertionError(
                    f"{self.user.email}'s socket: expected {what} within {timeout:g} s; last frames: {last}"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_for_outcomes(
        self, request_ids: list[str], timeout: float = 20.0
    ) -> dict[str, dict[str, Any]]:  # noqa: ASYNC109
        """Every message's terminal frame, keyed by request id."""
        __tracebackhide__ = True
        for rid in request_ids:
            await self.wait_for(
                lambda f, rid=rid: f.get("request_id") == rid and f["type"] in TERMINAL,
                f"an outcome for message {request_ids.index(rid) + 1} of {len(request_ids)}",
                timeout,
            )
        return {rid: self.outcome(rid) or {} for rid in request_ids}


async def usage_request_ids(ch: Any, user_id: str) -> list[str]:
    return [row["request_id"] for row in await ch.usage_events(user_id=user_id)]


async def expect_usage_exactly(ch: Any, user_id: str, completed: list[dict[str, Any]]) -> list[str]:
    """Wait until ClickHouse holds one row per LLM call of the completed turns, and nothing else."""
    __tracebackhide__ = True
    expected = sorted(
        f["request_id"] for f in completed for _ in range(int(f["payload"]["usage"]["llm_calls"]))
    )

    async def rows_match() -> list[str]:
        seen = sorted(await usage_request_ids(ch, user_id))
        assert seen == expected, f"usage rows by request id {seen}, expected {expected}"
        return seen

    return await eventually(
        rows_match,
        timeout=15,
        interval=0.2,
        description="ClickHouse usage rows for exactly the answered messages",
    )


async def expect_key_gone(redis: Any, key: str, window: int) -> None:
    """Wait (bounded by the window) until a fixed-window counter has expired."""
    __tracebackhide__ = True

    async def gone() -> None:
        assert not (await redis.key(key)).exists, f"{key} still counts"

    await eventually(
        gone, timeout=window + 5, interval=0.2, description=f"{key} to expire after its {window} s window"
    )


# ------------------------------------------------------------------------------------ HTTP
@journey(name="Rate limits", priority="P1", mrr=40_000, components=COMPONENTS)
async def test_http_burst_gets_429_and_leaves_other_users_alone(
    urls: dict[str, str],
    users: UserFactory,
    redis: Any,
) -> None:
    """One token over the HTTP limit gets 429 + Retry-After; another user at the same moment does not."""
    http_limit, window = limit("RATE_HTTP_LIMIT"), limit("RATE_HTTP_WINDOW")
    alice, bob = await users.logged_in("httpburst"), await users.logged_in("httpneighbour")
    me_url = f"{urls['backend_url']}/api/me"

    async with step(f"{http_limit + 1} parallel requests with one token, another user's requests among them"):
        # 16 connections in flight, like a busy client: enough to finish the burst in well under one
        # window, without measuring the backend's pool sizes instead of its rate limit
        async with httpx.AsyncClient(timeout=20, limits=httpx.Limits(max_connections=16)) as client:

            def get(user: TestUser) -> Any:
                return client.get(me_url, headers={"Authorization": f"Bearer {user.access_token}"})

            calls = [get(alice) for _ in range(http_limit + 1)]
            neighbour_calls = [get(bob) for _ in range(10)]
            for i, call in enumerate(neighbour_calls):  # interleaved: bob's requests land mid-burst
                calls.insert(i * (len(calls) // len(neighbour_calls)), call)
            started = time.monotonic()
            answers = await asyncio.gather(*calls)
            took = time.monotonic() - started
        alice_answers = [
            r for r in answers if r.request.headers["authorization"].endswith(alice.access_token)
        ]
        bob_answers = [r for r in answers if r.request.headers["authorization"].endswith(bob.access_token)]
        statuses = sorted(r.status_code for r in alice_answers)
        assert statuses.count(200) == http_limit and statuses.count(429) == 1, (
            f"{http_limit + 1} requests within {took:.1f} s (window {window} s) answered {statuses}; "
            f"expected {http_limit} x 200 and one 429"
        )

    async with step("The 429 says when to retry"):
        refused = next(r for r in alice_answers if r.status_code == 429)
        retry_after = refused.headers.get("retry-after")
        assert retry_after and retry_after.isdigit() and 1 <= int(retry_after) <= window, (
            f"the 429 carries Retry-After {retry_after!r}, expected 1..{window} seconds"
        )

    async with step("The other user was never limited"):
        assert [r.status_code for r in bob_answers] == [200] * len(bob_answers), (
            f"another user's requests during the burst answered {[r.status_code for r in bob_answers]}"
        )
        assert {r.json()["email"] for r in bob_answers} == {bob.email}

    async with step("Redis counts per user"):
        alice_key = await redis.key(f"rl:http:{alice.user_id}")
        assert alice_key.exists and int(alice_key.value) == http_limit + 1 and 0 < alice_key.ttl <= window, (
            f"the limited user's counter is {alice_key}"
        )
        bob_key = await redis.key(f"rl:http:{bob.user_id}")
        assert int(bob_key.value) == len(bob_answers), f"the other user's counter is {bob_key}"


# ------------------------------------------------------------------------------------ WebSocket
@journey(name="Rate limits", priority="P1", mrr=40_000, components=COMPONENTS)
async def test_websocket_burst_is_limited_shown_and_resets(
    page: Any,
    ws_recorder: WsRecorder,
    urls: dict[str, str],
    users: UserFactory,
    ch: Any,
    pg: Any,
    redis: Any,
    provider_name: str,
) -> None:
    """Messages over the WebSocket limit get `rate_limited` (ws), the UI says so, nothing is billed,
    other users chat on, and the next window accepts messages again."""
    ws_limit, window = limit("RATE_WS_LIMIT"), limit("RATE_WS_WINDOW")
    alice = await users.logged_in("wsburst", full_name="Alice Burst")
    bob = await users.logged_in("wsneighbour")
    ws_key = f"rl:ws:{alice.user_id}"

    async with step("Alice opens her dashboard"):
        dashboard = await login_through_ui(page, urls, alice, provider_name)

    async with step(f"Burst of {ws_limit + 1} messages on one socket: the last is rate limited (ws)"):
        async with ChatSocket(urls["ws_url"], alice) as sock:
            burst = [await sock.send(f"Burst message number {i}") for i in range(1, ws_limit + 2)]
            outcomes = await sock.wait_for_outcomes(burst)
        over = outcomes[burst[-1]]
        assert over["type"] == "rate_limited" and over["payload"].get("scope") == "ws", (
            f"message {ws_limit + 1} of the window got {over}"
        )
        retry_after = over["payload"].get("retry_after")
        assert isinstance(retry_after, int) and 1 <= retry_after <= window, (
            f"rate_limited retry_after {retry_after!r}"
        )
        within = [outcomes[rid] for rid in burst[:-1]]
        assert all(
            f["type"] == "agent_completed"
            or (f["type"] == "rate_limited" and f["payload"]["scope"] == "agent")
            for f in within
        ), (
            f"messages within the WebSocket limit were refused as over it: {[(f['type'], f['payload']) for f in within]}"
        )
        completed = [f for f in within if f["type"] == "agent_completed"]
        assert len(completed) >= limit("RATE_AGENT_CONCURRENCY"), "fewer turns ran than agent slots were free"

    async with step("Another user chats normally at the same moment"):
        async with ChatSocket(urls["ws_url"], bob) as bob_sock:
            rid = await bob_sock.send("Hello from the neighbour")
            answer = (await bob_sock.wait_for_outcomes([rid]))[rid]
        assert answer["type"] == "agent_completed", f"another user's message got {answer}"
        assert int((await redis.key(f"rl:ws:{bob.user_id}")).value) == 1, (
            "another user's counter moved with Alice's"
        )

    async with step("In the UI, the next message shows the rate-limit notice with the seconds to wait"):
        await dashboard.chat.send("Am I still sending too fast?")
        notice = await dashboard.wait_for_rate_limit_notice()
        frame = await ws_recorder.wait_for("rate_limited")
        ui_retry = frame.data["payload"]["retry_after"]
        assert notice.scope == "ws" and notice.retry_after == ui_retry, (
            f"the notice shows scope {notice.scope!r} / {notice.retry_after!r} s, the frame said ws / {ui_retry} s"
        )
        assert f"Try again in {ui_retry} second" in notice.text, f"the notice says {notice.text!r}"
        refused_item = dashboard.chat.message_items.filter(has_text="Am I still sending too fast?")
        await expect(refused_item).to_have_attribute("data-status", "failed")
        await expect(refused_item).to_contain_text("Not sent — rate limited.")
        rejected = [rid for rid, f in outcomes.items() if f["type"] == "rate_limited"] + [
            frame.data["request_id"]
        ]

    async with step("Nothing was stored or billed for a refused message"):
        await expect_usage_exactly(ch, alice.user_id, completed)
        stored = await pg.backend.count("messages", "request_id = ANY($1::text[])", rejected)
        assert stored == 0, f"{stored} message rows exist for refused messages"

    async with step("The window passes (Redis counter expires); the next message is answered"):
        await expect_key_gone(redis, ws_key, window)
        await dashboard.rate_limit.wait_for(state="hidden", timeout=DEFAULT_TIMEOUT_S * 1000)
        reply = await dashboard.chat.ask("Back again after the pause", contains="Back again after the pause")
        assert reply.agent, "the reply after the reset names no agent"
        done = await ws_recorder.wait_for("agent_completed")
        assert int((await redis.key(ws_key)).value) == 1, "the new window did not start counting from one"
        await expect_usage_exactly(ch, alice.user_id, [*completed, done.data])


# ------------------------------------------------------------------------------------ agent runs
@journey(name="Rate limits", priority="P1", mrr=40_000, components=COMPONENTS)
async def test_third_concurrent_agent_run_is_throttled(
    page: Any,
    ws_recorder: WsRecorder,
    urls: dict[str, str],
    users: UserFactory,
    llm: LLMControl,
    ch: Any,
    pg: Any,
    redis: Any,
    provider_name: str,
) -> None:
    """With two replies running, a further message gets `rate_limited` (agent) on the socket and in the UI;
    another user is unaffected; the slots free up when the runs end."""
    concurrency = limit("RATE_AGENT_CONCURRENCY")
    carol = await users.logged_in("agents", full_name="Carol Concurrent")
    dave = await users.logged_in("agentneighbour")
    agent_key = f"rl:agent:{carol.user_id}"

    async with step("Carol opens her dashboard"):
        dashboard = await login_through_ui(page, urls, carol, provider_name)

    async with contextlib.AsyncExitStack() as sockets:
        carol_sock = await sockets.enter_async_context(ChatSocket(urls["ws_url"], carol))
        dave_sock = await sockets.enter_async_context(ChatSocket(urls["ws_url"], dave))

        async with step(f"{concurrency} slow replies start; one more message at once is throttled (agent)"):
            # every streamed event takes 0.6 s: a run stays open ~5 s, far longer than the next frames take
            await llm.set(latency_ms=600)
            burst = [await carol_sock.send(f"Slow reply number {i}") for i in range(1, concurrency + 2)]
            running, extra = burst[:-1], burst[-1]
            throttled = (await carol_sock.wait_for_outcomes([extra]))[extra]
            assert throttled["type"] == "rate_limited" and throttled["payload"].get("scope") == "agent", (
                f"message {concurrency + 1} with {concurrency} runs open got {throttled}"
            )
            for rid in running:
                started = await carol_sock.wait_for(
                    lambda f, rid=rid: (
                        f.get("request_id") == rid and f["type"] in ("agent_started", *TERMINAL)
                    ),
                    "the slow reply to start",
                )
                assert started["type"] == "agent_started", (
                    f"a message within the concurrency limit got {started}"
                )
            slots = await redis.key(agent_key)
            assert slots.exists and int(slots.value) == concurrency, (
                f"{agent_key} is {slots} with {concurrency} runs"
            )

        async with step("Another user's run starts meanwhile"):
            dave_rid = await dave_sock.send("Neighbour asks while Carol waits")
            started = await dave_sock.wait_for(
                lambda f: f.get("request_id") == dave_rid and f["type"] in ("agent_started", *TERMINAL),
                "the neighbour's run to start",
            )
            assert started["type"] == "agent_started", f"another user's message was throttled: {started}"

        async with step(
            "In the UI, a message while both replies run shows 'Too many replies are in progress'"
        ):
            await dashboard.chat.send("One reply too many")
            notice = await dashboard.wait_for_rate_limit_notice()
            frame = await ws_recorder.wait_for("rate_limited")
            assert frame.data["payload"].get("scope") == "agent", f"the UI's message got {frame.data}"
            assert notice.scope == "agent" and "Too many replies are in progress" in notice.text, (
                f"the notice says {notice.text!r} (scope {notice.scope!r})"
            )
            refused_item = dashboard.chat.message_items.filter(has_text="One reply too many")
            await expect(refused_item).to_have_attribute("data-status", "failed")
            rejected = [extra, frame.data["request_id"]]

        async with step("The slow replies finish and free their slots"):
            outcomes = await carol_sock.wait_for_outcomes(running, timeout=30)
            assert [f["type"] for f in outcomes.values()] == ["agent_completed"] * concurrency, (
                f"the slow replies ended as {[(f['type'], f['payload']) for f in outcomes.values()]}"
            )
            completed = list(outcomes.values())
            dave_done = (await dave_sock.wait_for_outcomes([dave_rid], timeout=30))[dave_rid]
            assert dave_done["type"] == "agent_completed", f"the neighbour's run ended as {dave_done}"

            async def slots_free() -> None:
                value = (await redis.key(agent_key)).value
                assert value in (None, "0"), f"{agent_key} still holds {value}"

            await eventually(slots_free, timeout=5, description="agent slots released")

    async with step("The next message in the UI is answered again"):
        await llm.set(latency_ms=0)
        await dashboard.rate_limit.wait_for(state="hidden", timeout=DEFAULT_TIMEOUT_S * 1000)
        await dashboard.chat.ask("Am I allowed again?", contains="Am I allowed again?")
        last = await ws_recorder.wait_for("agent_completed")

    async with step("Usage in ClickHouse only for answered messages"):
        await expect_usage_exactly(ch, carol.user_id, [*completed, last.data])
        stored = await pg.backend.count("messages", "request_id = ANY($1::text[])", rejected)
        assert stored == 0, f"{stored} message rows exist for throttled messages"


# ------------------------------------------------------------------------------------ logins
@journey(name="Rate limits", priority="P1", mrr=40_000, components=COMPONENTS)
async def test_failed_logins_lock_one_email_for_its_window(
    page: Any,
    urls: dict[str, str],
    users: UserFactory,
    http: httpx.AsyncClient,
    redis: Any,
    provider_name: str,
) -> None:
    """After the allowed failed logins an email gets 429 (API) and "Too many attempts" (UI);
    another email logs in; the lock lifts after its window."""
    attempts, window = limit("LOGIN_ATTEMPT_LIMIT"), limit("LOGIN_ATTEMPT_WINDOW")
    erin = await users.verified("lockout", full_name="Erin Locked")
    frank = await users.verified("unlocked", full_name="Frank Free")
    login_url = f"{urls['auth_url']}/auth/login"
    fail_key = f"auth:login_fail:{erin.email}"

    async with step(f"{attempts} wrong passwords are refused as wrong"):
        for _ in range(attempts):
            wrong = await http.post(login_url, json={"email": erin.email, "password": "wrong-password-9"})
            assert wrong.status_code == 401, f"a wrong password answered {wrong.status_code}: {wrong.text}"

    async with step("The next attempt, even with the right password, gets 429 with Retry-After"):
        locked = await http.post(login_url, json={"email": erin.email, "password": erin.password})
        assert locked.status_code == 429, (
            f"attempt {attempts + 1} answered {locked.status_code}: {locked.text}"
        )
        retry_after = locked.headers.get("retry-after", "")
        assert retry_after.isdigit() and 1 <= int(retry_after) <= window, f"Retry-After is {retry_after!r}"
        assert "access_token" not in locked.text
        counter = await redis.key(fail_key)
        assert counter.exists and int(counter.value) == attempts and 0 < counter.ttl <= window, (
            f"the failed-login counter is {counter}"
        )

    async with step("The login page says 'Too many attempts' and stores no token"):
        login = await LoginPage(page, urls["frontend_url"], provider_name).open()
        message = await login.login_expecting_error(erin.email, erin.password)
        assert message.startswith("Too many attempts. Try again in"), f"the locked login shows {message!r}"
        assert await login.error_code() == "429", f"the alert's code is {await login.error_code()!r}"
        assert (await stored_tokens(page))["access"] is None

    async with step("Another email logs in at the same moment"):
        dashboard = await login.login(frank.email, frank.password)
        assert (await dashboard.profile()).email == frank.email
        assert not (await redis.key(f"auth:login_fail:{frank.email}")).exists

    async with step("After the window the locked email logs in again"):
        login = await dashboard.logout()
        await expect_key_gone(redis, fail_key, window)
        dashboard = await login.login(erin.email, erin.password)
        assert isinstance(dashboard, DashboardPage)
        assert (await dashboard.profile()).email == erin.email
