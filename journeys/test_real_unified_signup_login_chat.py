"""Journey 1: signup -> verify -> login -> dashboard -> WebSocket chat -> agent reply."""

from __future__ import annotations

from typing import Any

import pytest

from db_probes import eventually
from harness.journey import journey
from harness.steps import step
from journeys.conftest import PASSWORD, UserFactory, stored_tokens, unique_email
from pages import Inbox, LoginPage, SignupPage

COMPONENTS = [
    "frontend",
    "auth",
    "email",
    "backend",
    "websocket",
    "agent",
    "llm",
    "postgres",
    "clickhouse",
    "redis",
]


@journey(name="Signup, verify, login and first chat", priority="P0", mrr=100_000, components=COMPONENTS)
async def test_signup_verify_login_and_first_agent_reply(
    page: Any,
    ws_recorder: Any,
    urls: dict[str, str],
    inbox: Inbox,
    pg: Any,
    ch: Any,
    redis: Any,
    provider_name: str,
) -> None:
    """A new person signs up in the UI, verifies by mail, logs in and gets a streamed agent reply."""
    email, name = unique_email("ada"), "Ada Lovelace"

    async with step("Sign up through the UI"):
        signup = await SignupPage(page, urls["frontend_url"]).open()
        check_email = await signup.submit_expecting_check_email(name, email, PASSWORD)
        assert await check_email.address() == email, "the 'check your email' state does not name the address"

    async with step("Open the verification link from the mail"):
        link = await inbox.wait_for_verification_link(email)
        await page.goto(link)
        login = await LoginPage(page, urls["frontend_url"], provider_name).wait_until_loaded()
        notice = await login.notice_message()
        assert notice and "verified" in notice.lower(), (
            f"login page shows no 'email verified' notice: {notice!r}"
        )

    async with step("Log in and land on the dashboard"):
        dashboard = await login.login(email, PASSWORD)
        profile = await dashboard.profile()
        assert profile.email == email, f"dashboard profile shows {profile.email!r}, signed up as {email!r}"
        assert profile.plan, "dashboard shows no plan badge after signup"

    async with step("Chat: first message gets a streamed reply with the agent's name"):
        reply = await dashboard.chat.ask("Hello there, what can you do?")
        assert "Stand-in reply to: Hello there, what can you do?" in reply.text
        assert reply.agent and "general" in reply.agent.lower(), f"reply names agent {reply.agent!r}"
        completed = await ws_recorder.wait_for("agent_completed")
        assert ws_recorder.frames("agent_stream"), "no agent_stream chunk reached the browser"
        ws_recorder.assert_order(
            ["connection_established", "agent_started", "agent_thinking", "agent_stream", "agent_completed"]
        )

    async with step("Stores agree: auth user, backend profile, one usage event, Redis session"):
        user = await pg.auth.one(
            "SELECT id, email, full_name, email_verified_at FROM users WHERE email = $1", email
        )
        assert user is not None, f"auth.users has no row for {email}"
        assert user["email_verified_at"] is not None, "auth.users row is not marked verified"
        user_id = str(user["id"])
        profile_row = await pg.backend.one(
            "SELECT user_id, email, full_name, plan FROM profiles WHERE user_id = $1", user["id"]
        )
        assert profile_row is not None, "backend.profiles has no row for the new user"
        assert (profile_row["email"], profile_row["full_name"]) == (email, name), (
            "auth.users and backend.profiles disagree on email/name"
        )
        usage = completed.data["payload"]["usage"]

        async def one_usage_event() -> list[dict[str, Any]]:
            rows = await ch.usage_events(user_id=user_id)
            assert len(rows) == 1, f"expected exactly one usage event for the first turn, found {len(rows)}"
            return rows

        rows = await eventually(one_usage_event, timeout=10, description="one usage event in ClickHouse")
        assert rows[0]["prompt_tokens"] == usage["prompt_tokens"]
        assert rows[0]["completion_tokens"] == usage["completion_tokens"]
        assert rows[0]["request_id"] == completed.data.get("request_id"), (
            "the usage row does not carry the request id of the message"
        )
        sessions = await redis.keys("auth:session:*")
        owned = [k for k in sessions if (await redis.key(k)).value.get("user_id") == user_id]
        assert len(owned) == 1, f"expected one Redis session for the user, found {len(owned)}"
        chat_session = await redis.key(f"chat:session:{user_id}")
        assert chat_session.exists, "no chat session state in Redis after the first turn"
        assert chat_session.value.get("active_thread_id") == completed.data["payload"]["thread_id"]


@pytest.mark.parametrize(
    "case",
    ["duplicate email", "weak password", "wrong password", "unverified login"],
)
@journey(
    name="Signup, verify, login and first chat",
    priority="P0",
    mrr=100_000,
    components=["frontend", "auth", "postgres", "email"],
)
async def test_signup_and_login_failure_paths(
    case: str,
    page: Any,
    urls: dict[str, str],
    users: UserFactory,
    pg: Any,
    provider_name: str,
) -> None:
    """Bad signups and logins get a clear message and leave no session or stray rows."""
    frontend = urls["frontend_url"]
    if case == "duplicate email":
        existing = await users.verified("dup")
        async with step("Sign up again with an existing email (other case)"):
            signup = await SignupPage(page, frontend).open()
            result = await signup.fill_and_submit("Someone Else", existing.email.upper(), PASSWORD)
            assert isinstance(result, SignupPage), "a duplicate signup reached 'Check your email'"
            message = await signup.form_error() or ""
            assert "already exists" in message.lower(), f"duplicate signup shows {message!r}"
        async with step("Still exactly one account for that email"):
            assert await pg.auth.count("users", "lower(email) = lower($1)", existing.email) == 1
    elif case == "weak password":
        email = unique_email("weak")
        async with step("Sign up with a weak password"):
            signup = await SignupPage(page, frontend).open()
            result = await signup.fill_and_submit("Weak Password", email, "short")
            assert isinstance(result, SignupPage), "a weak password reached 'Check your email'"
            field_error = await signup.field_error("Password")
            assert field_error, "no message next to the Password field"
        async with step("No user row was created"):
            assert await pg.auth.count("users", "email = $1", email) == 0
    elif case == "wrong password":
        user = await users.verified("wrongpw")
        async with step("Log in with the wrong password"):
            login = await LoginPage(page, frontend, provider_name).open()
            message = await login.login_expecting_error(user.email, "not-the-password-1")
            assert "wrong email or password" in message.lower(), f"wrong password shows {message!r}"
        async with step("No token was stored in the browser"):
            assert (await stored_tokens(page))["access"] is None
    else:
        user = await users.signup("unverified")
        async with step("Log in before verifying the email"):
            login = await LoginPage(page, frontend, provider_name).open()
            message = await login.login_expecting_error(user.email, user.password)
            assert "verify your email" in message.lower(), f"unverified login shows {message!r}"
            assert (await stored_tokens(page))["access"] is None
