"""Journey: per-user rate limits on HTTP, WebSocket messages, concurrent agent runs and logins.

Limits are the platform's knobs (`app.knob(...)`: the declared default, or THROUGHLINE_STACK_<NAME>).
Bursts go over real sockets with real tokens: one busy API client for HTTP, a program's chat
socket (`app.socket`) for a message burst the UI could never send that fast; what the user sees
is checked in the browser. Resets are awaited on the platform's own counters, never slept for.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from harness.app import App, TestUser, TurnEvent
from harness.journey import journey
from harness.steps import step

COMPONENTS = ["frontend", "auth", "backend", "websocket", "redis", "clickhouse", "agent", "llm"]
TERMINAL = ("completed", "rate_limited", "error")


def limit(app: App, name: str) -> int:
    """The platform's effective limit `name` (as the harness starts it)."""
    return int(app.knob(name))


async def expect_usage_exactly(app: App, user_id: str, completed: list[TurnEvent]) -> list[str]:
    """Wait until the usage store holds one row per LLM call of the completed turns, and nothing else."""
    __tracebackhide__ = True
    expected = sorted(str(e.request_id) for e in completed for _ in range(int((e.usage or {})["llm_calls"])))

    async def rows_match() -> list[str]:
        seen = sorted(str(r.request_id) for r in await app.records.usage(user_id=user_id))
        assert seen == expected, f"usage rows by request id {seen}, expected {expected}"
        return seen

    return await app.settle(
        rows_match, timeout=15, description="ClickHouse usage rows for exactly the answered messages"
    )


async def expect_counter_gone(app: App, scope: str, subject: str, window: int) -> None:
    """Wait (bounded by the window) until a fixed-window counter has expired."""
    __tracebackhide__ = True

    async def gone() -> None:
        counter = await app.records.rate_counter(scope, subject)
        assert not counter.exists, f"{counter.name} still counts"

    await app.settle(
        gone, timeout=window + 5, description=f"the {scope} counter to expire after its {window} s window"
    )


# ------------------------------------------------------------------------------------ HTTP
@journey(
    name="Rate limits",
    priority="P1",
    mrr=40_000,
    components=COMPONENTS,
    needs=["http_rate_limit"],
    drills=["http-limit-keyed-by-ip"],
)
async def test_http_burst_gets_429_and_leaves_other_users_alone(app: App) -> None:
    """One token over the HTTP limit gets 429 + Retry-After; another user at the same moment does not."""
    http_limit, window = limit(app, "RATE_HTTP_LIMIT"), limit(app, "RATE_HTTP_WINDOW")
    alice, bob = await app.users.logged_in("httpburst"), await app.users.logged_in("httpneighbour")

    async with step(f"{http_limit + 1} parallel requests with one token, another user's requests among them"):
        callers: list[TestUser] = [alice] * (http_limit + 1)
        neighbour_calls = 10
        for i in range(neighbour_calls):  # interleaved: bob's requests land mid-burst
            callers.insert(i * (len(callers) // neighbour_calls), bob)
        started = time.monotonic()
        # 16 connections in flight, like a busy client: enough to finish the burst in well under one
        # window, without measuring the backend's pool sizes instead of its rate limit
        answers = await app.me_burst(callers, max_connections=16)
        took = time.monotonic() - started
        alice_answers = [a for who, a in zip(callers, answers, strict=True) if who is alice]
        bob_answers = [a for who, a in zip(callers, answers, strict=True) if who is bob]
        statuses = sorted(a.status for a in alice_answers)
        assert statuses.count(200) == http_limit and statuses.count(429) == 1, (
            f"{http_limit + 1} requests within {took:.1f} s (window {window} s) answered {statuses}; "
            f"expected {http_limit} x 200 and one 429"
        )

    async with step("The 429 says when to retry"):
        refused = next(a for a in alice_answers if a.status == 429)
        retry_after = refused.header("retry-after")
        assert retry_after and retry_after.isdigit() and 1 <= int(retry_after) <= window, (
            f"the 429 carries Retry-After {retry_after!r}, expected 1..{window} seconds"
        )

    async with step("The other user was never limited"):
        assert [a.status for a in bob_answers] == [200] * len(bob_answers), (
            f"another user's requests during the burst answered {[a.status for a in bob_answers]}"
        )
        assert {a.body["email"] for a in bob_answers} == {bob.email}

    async with step("Redis counts per user"):
        alice_counter = await app.records.rate_counter("http", str(alice.user_id))
        assert (
            alice_counter.exists
            and int(alice_counter.value) == http_limit + 1
            and alice_counter.ttl is not None
            and 0 < alice_counter.ttl <= window
        ), f"the limited user's counter is {alice_counter}"
        bob_counter = await app.records.rate_counter("http", str(bob.user_id))
        assert int(bob_counter.value) == len(bob_answers), f"the other user's counter is {bob_counter}"


# ------------------------------------------------------------------------------------ WebSocket
@journey(
    name="Rate limits",
    priority="P1",
    mrr=40_000,
    components=COMPONENTS,
    needs=["ws_rate_limit", "agent_concurrency_limit", "usage_analytics"],
    drills=["rate-window-never-expires"],
)
async def test_websocket_burst_is_limited_shown_and_resets(app: App, page: Any, ws_recorder: Any) -> None:
    """Messages over the WebSocket limit get `rate_limited` (ws), the UI says so, nothing is billed,
    other users chat on, and the next window accepts messages again."""
    ws_limit, window = limit(app, "RATE_WS_LIMIT"), limit(app, "RATE_WS_WINDOW")
    alice = await app.users.logged_in("wsburst", full_name="Alice Burst")
    bob = await app.users.logged_in("wsneighbour")
    turns = app.turns(ws_recorder)

    async with step("Alice opens her dashboard"):
        dashboard = await app.login(page, alice)

    async with step(f"Burst of {ws_limit + 1} messages on one socket: the last is rate limited (ws)"):
        async with app.socket(alice.access_token) as sock:
            await sock.wait_connected()
            burst = [await sock.send_message(f"Burst message number {i}") for i in range(1, ws_limit + 2)]
            outcomes = await sock.wait_for_outcomes(burst)
        over = outcomes[burst[-1]]
        assert over.kind == "rate_limited" and over.scope == "ws", (
            f"message {ws_limit + 1} of the window got {over.kind} (scope {over.scope!r}): {over.frame}"
        )
        retry_after = over.retry_after
        assert isinstance(retry_after, int) and 1 <= retry_after <= window, (
            f"rate_limited retry_after {retry_after!r}"
        )
        within = [outcomes[rid] for rid in burst[:-1]]
        assert all(
            e.kind == "completed" or (e.kind == "rate_limited" and e.scope == "agent") for e in within
        ), (
            "messages within the WebSocket limit were refused as over it: "
            f"{[(e.kind, e.scope, e.code) for e in within]}"
        )
        completed = [e for e in within if e.kind == "completed"]
        assert len(completed) >= limit(app, "RATE_AGENT_CONCURRENCY"), (
            "fewer turns ran than agent slots were free"
        )

    async with step("Another user chats normally at the same moment"):
        async with app.socket(bob.access_token) as bob_sock:
            await bob_sock.wait_connected()
            rid = await bob_sock.send_message("Hello from the neighbour")
            answer = (await bob_sock.wait_for_outcomes([rid]))[rid]
        assert answer.kind == "completed", f"another user's message got {answer.kind}: {answer.frame}"
        assert int((await app.records.rate_counter("ws", str(bob.user_id))).value) == 1, (
            "another user's counter moved with Alice's"
        )

    async with step("In the UI, the next message shows the rate-limit notice with the seconds to wait"):
        await dashboard.chat.send("Am I still sending too fast?")
        notice = await dashboard.wait_for_rate_limit_notice()
        limited = await turns.wait_for("rate_limited", timeout=10)
        ui_retry = limited.retry_after
        assert notice.scope == "ws" and notice.retry_after == ui_retry, (
            f"the notice shows scope {notice.scope!r} / {notice.retry_after!r} s, the frame said ws / {ui_retry} s"
        )
        assert f"Try again in {ui_retry} second" in notice.text, f"the notice says {notice.text!r}"
        refused_item = dashboard.chat.message_item(containing="Am I still sending too fast?")
        await refused_item.wait_for_status("failed")
        await refused_item.wait_for_text("Not sent — rate limited.")
        rejected = [rid for rid, e in outcomes.items() if e.kind == "rate_limited"] + [
            str(limited.request_id)
        ]

    async with step("Nothing was stored or billed for a refused message"):
        await expect_usage_exactly(app, str(alice.user_id), completed)
        stored = len(await app.records.messages(request_ids=rejected))
        assert stored == 0, f"{stored} message rows exist for refused messages"

    async with step("The window passes (Redis counter expires); the next message is answered"):
        await expect_counter_gone(app, "ws", str(alice.user_id), window)
        await dashboard.wait_for_no_rate_limit_notice()
        reply = await dashboard.chat.ask("Back again after the pause", contains="Back again after the pause")
        assert reply.agent, "the reply after the reset names no agent"
        done = await turns.wait_for("completed", timeout=10)
        assert int((await app.records.rate_counter("ws", str(alice.user_id))).value) == 1, (
            "the new window did not start counting from one"
        )
        await expect_usage_exactly(app, str(alice.user_id), [*completed, done])


# ------------------------------------------------------------------------------------ agent runs
@journey(
    name="Rate limits",
    priority="P1",
    mrr=40_000,
    components=COMPONENTS,
    needs=["agent_concurrency_limit", "usage_analytics"],
    drills=["agent-concurrency-off-by-one"],
)
async def test_third_concurrent_agent_run_is_throttled(app: App, page: Any, ws_recorder: Any) -> None:
    """With two replies running, a further message gets `rate_limited` (agent) on the socket and in the UI;
    another user is unaffected; the slots free up when the runs end."""
    concurrency = limit(app, "RATE_AGENT_CONCURRENCY")
    carol = await app.users.logged_in("agents", full_name="Carol Concurrent")
    dave = await app.users.logged_in("agentneighbour")
    turns = app.turns(ws_recorder)

    async with step("Carol opens her dashboard"):
        dashboard = await app.login(page, carol)

    async with contextlib.AsyncExitStack() as sockets:
        carol_sock = await sockets.enter_async_context(app.socket(carol.access_token))
        dave_sock = await sockets.enter_async_context(app.socket(dave.access_token))
        await carol_sock.wait_connected()
        await dave_sock.wait_connected()

        async with step(f"{concurrency} slow replies start; one more message at once is throttled (agent)"):
            # every streamed event takes 0.6 s: a run stays open ~5 s, far longer than the next frames take
            await app.llm.set(latency_ms=600)
            burst = [
                await carol_sock.send_message(f"Slow reply number {i}") for i in range(1, concurrency + 2)
            ]
            running, extra = burst[:-1], burst[-1]
            throttled = (await carol_sock.wait_for_outcomes([extra]))[extra]
            assert throttled.kind == "rate_limited" and throttled.scope == "agent", (
                f"message {concurrency + 1} with {concurrency} runs open got {throttled.kind} "
                f"(scope {throttled.scope!r}): {throttled.frame}"
            )
            for rid in running:
                started = await carol_sock.wait_until(
                    lambda e, rid=rid: e.request_id == rid and e.kind in ("turn_started", *TERMINAL),
                    "the slow reply to start",
                )
                assert started.kind == "turn_started", (
                    f"a message within the concurrency limit got {started.kind}: {started.frame}"
                )
            slots = await app.records.rate_counter("agent", str(carol.user_id))
            assert slots.exists and int(slots.value) == concurrency, (
                f"{slots.name} is {slots} with {concurrency} runs"
            )

        async with step("Another user's run starts meanwhile"):
            dave_rid = await dave_sock.send_message("Neighbour asks while Carol waits")
            started = await dave_sock.wait_until(
                lambda e: e.request_id == dave_rid and e.kind in ("turn_started", *TERMINAL),
                "the neighbour's run to start",
            )
            assert started.kind == "turn_started", (
                f"another user's message was throttled: {started.kind}: {started.frame}"
            )

        async with step(
            "In the UI, a message while both replies run shows 'Too many replies are in progress'"
        ):
            await dashboard.chat.send("One reply too many")
            notice = await dashboard.wait_for_rate_limit_notice()
            limited = await turns.wait_for("rate_limited", timeout=10)
            assert limited.scope == "agent", f"the UI's message got {limited.kind} (scope {limited.scope!r})"
            assert notice.scope == "agent" and "Too many replies are in progress" in notice.text, (
                f"the notice says {notice.text!r} (scope {notice.scope!r})"
            )
            await dashboard.chat.message_item(containing="One reply too many").wait_for_status("failed")
            rejected = [extra, str(limited.request_id)]

        async with step("The slow replies finish and free their slots"):
            outcomes = await carol_sock.wait_for_outcomes(running, timeout=30)
            assert [e.kind for e in outcomes.values()] == ["completed"] * concurrency, (
                f"the slow replies ended as {[(e.kind, e.code, e.message) for e in outcomes.values()]}"
            )
            completed = list(outcomes.values())
            dave_done = (await dave_sock.wait_for_outcomes([dave_rid], timeout=30))[dave_rid]
            assert dave_done.kind == "completed", (
                f"the neighbour's run ended as {dave_done.kind}: {dave_done.frame}"
            )

            async def slots_free() -> None:
                counter = await app.records.rate_counter("agent", str(carol.user_id))
                assert counter.value in (None, "0"), f"{counter.name} still holds {counter.value}"

            await app.settle(slots_free, timeout=5, description="agent slots released")

    async with step("The next message in the UI is answered again"):
        await app.llm.set(latency_ms=0)
        await dashboard.wait_for_no_rate_limit_notice()
        await dashboard.chat.ask("Am I allowed again?", contains="Am I allowed again?")
        last = await turns.wait_for("completed", timeout=10)

    async with step("Usage in ClickHouse only for answered messages"):
        await expect_usage_exactly(app, str(carol.user_id), [*completed, last])
        stored = len(await app.records.messages(request_ids=rejected))
        assert stored == 0, f"{stored} message rows exist for throttled messages"


# ------------------------------------------------------------------------------------ logins
@journey(
    name="Rate limits",
    priority="P1",
    mrr=40_000,
    components=COMPONENTS,
    needs=["login_rate_limit"],
    drills=["login-lock-off-by-one", "owui-signin-limit-off-by-one"],
)
async def test_failed_logins_lock_one_email_for_its_window(app: App, page: Any) -> None:
    """After the allowed failed logins an email gets 429 (API) and "Too many attempts" (UI);
    another email logs in; the lock lifts after its window."""
    attempts, window = limit(app, "LOGIN_ATTEMPT_LIMIT"), limit(app, "LOGIN_ATTEMPT_WINDOW")
    erin = await app.users.verified("lockout", full_name="Erin Locked")
    frank = await app.users.verified("unlocked", full_name="Frank Free")

    async with step(f"{attempts} wrong passwords are refused as wrong"):
        for _ in range(attempts):
            wrong = await app.auth_login(erin.email, "wrong-password-9")
            assert wrong.status == app.bad_credentials_status, (
                f"a wrong password answered {wrong.status}: {wrong.text}"
            )
            assert "token" not in (wrong.body or {}), f"a wrong password got a token: {wrong.text}"

    async with step("The next attempt, even with the right password, gets 429 with Retry-After"):
        locked = await app.auth_login(erin.email, erin.password)
        assert locked.status == 429, f"attempt {attempts + 1} answered {locked.status}: {locked.text}"
        retry_after = locked.header("retry-after") or ""
        assert retry_after.isdigit() and 1 <= int(retry_after) <= window, f"Retry-After is {retry_after!r}"
        assert "access_token" not in locked.text
        counter = await app.records.rate_counter("login", erin.email)
        assert (
            counter.exists
            and int(counter.value) == attempts
            and counter.ttl is not None
            and 0 < counter.ttl <= window
        ), f"the failed-login counter is {counter}"

    async with step("The login page says 'Too many attempts' and stores no token"):
        login = await app.login_page(page).open()
        message = await login.login_expecting_error(erin.email, erin.password)
        assert message.lower().startswith(app.ui_phrases["login_locked"]), (
            f"the locked login shows {message!r}"
        )
        if app.supports("error_codes"):
            assert await login.error_code() == "429", f"the alert's code is {await login.error_code()!r}"
        assert (await app.tokens_in(page))["access"] is None

    async with step("Another email logs in at the same moment"):
        dashboard = await login.login(frank.email, frank.password)
        assert await dashboard.shown_name() == frank.full_name, (
            f"the other email reached a screen naming {await dashboard.shown_name()!r}"
        )
        if app.supports("profile_email"):
            assert (await dashboard.profile()).email == frank.email
        assert not (await app.records.rate_counter("login", frank.email)).exists

    async with step("After the window the locked email logs in again"):
        login = await dashboard.logout()
        await expect_counter_gone(app, "login", erin.email, window)
        dashboard = await login.login(erin.email, erin.password)
        assert await dashboard.shown_name() == erin.full_name, (
            f"after the window the locked email reached a screen naming {await dashboard.shown_name()!r}"
        )
        if app.supports("profile_email"):
            assert (await dashboard.profile()).email == erin.email
