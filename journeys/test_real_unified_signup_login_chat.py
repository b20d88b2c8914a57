"""Journey 1: signup -> verify -> login -> dashboard -> WebSocket chat -> agent reply."""

from __future__ import annotations

from typing import Any

import pytest

from harness.app import PASSWORD, App, unique_email
from harness.journey import journey
from harness.steps import step

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


@journey(
    name="Signup, verify, login and first chat",
    priority="P0",
    mrr=100_000,
    components=COMPONENTS,
    needs=["password_signup", "streaming"],
    drills=[
        "signup-profile-loses-name",
        "assistant-tokens-swapped",
        "usage-loses-request-id",
        "owui-message-usage-swapped",
        "owui-session-pool-forgets-chat",
    ],
)
async def test_signup_verify_login_and_first_agent_reply(app: App, page: Any, ws_recorder: Any) -> None:
    """A new person signs up in the UI, verifies by mail, logs in and gets a streamed agent reply."""
    email, name = unique_email("ada"), "Ada Lovelace"
    turns = app.turns(ws_recorder)
    verifies = app.supports("email_verification")

    async with step("Sign up through the UI"):
        signup = await app.signup_page(page).open()
        if verifies:
            check_email = await signup.submit_expecting_check_email(name, email, PASSWORD)
            assert await check_email.address() == email, (
                "the 'check your email' state does not name the address"
            )
        else:
            # Nothing to verify: the new person lands signed in, and signs out to log in again below.
            signed_in = await signup.submit_expecting_signed_in(name, email, PASSWORD)
            shown = await signed_in.profile()
            assert shown.full_name == name, (
                f"right after signup the screen names {shown.full_name!r}, not {name!r}"
            )
            login = await signed_in.logout()

    if verifies:
        async with step("Open the verification link from the mail"):
            link = await app.inbox.wait_for_verification_link(email)
            await page.goto(link)
            login = await app.login_page(page).wait_until_loaded()
            notice = await login.notice_message()
            assert notice and "verified" in notice.lower(), (
                f"login page shows no 'email verified' notice: {notice!r}"
            )
    else:
        step.not_applicable("Open the verification link from the mail", "lacks email_verification")

    async with step("Log in and land on the dashboard"):
        dashboard = await login.login(email, PASSWORD)
        profile = await dashboard.profile()
        assert profile.full_name == name, (
            f"dashboard profile names {profile.full_name!r}, signed up as {name!r}"
        )
        if app.supports("profile_email"):
            assert profile.email == email, (
                f"dashboard profile shows {profile.email!r}, signed up as {email!r}"
            )
        if app.supports("billing"):
            assert profile.plan, "dashboard shows no plan badge after signup"

    async with step("Chat: first message gets a streamed reply with the agent's name"):
        reply = await dashboard.chat.ask("Hello there, what can you do?")
        assert "Stand-in reply to: Hello there, what can you do?" in reply.text
        assert reply.agent, "the reply names no agent (or model) that answered it"
        if app.supports("agent_routing"):
            assert "general" in reply.agent.lower(), f"reply names agent {reply.agent!r}"
        completed = await turns.wait_for("completed")
        assert turns.events("chunk"), "no streamed chunk reached the browser"
        order = ["connected"] if app.supports("socket_greeting") else []
        order += [
            "turn_started",
            *(["thinking"] if app.supports("thinking_events") else []),
            "chunk",
            "completed",
        ]
        turns.assert_order(order)

    async with step("Stores agree: auth user, backend profile, one usage event, Redis session"):
        user = await app.records.user(email)
        assert user is not None, f"the identity store has no account for {email}"
        if verifies:
            assert user.verified, "the account is not marked verified"
        profile_row = await app.records.profile(user.id)
        assert profile_row is not None, "the application has no profile for the new user"
        assert (profile_row.email, profile_row.full_name) == (email, name), (
            "the account and the profile disagree on email/name"
        )
        usage = completed.usage or {}
        if app.supports("usage_analytics"):

            async def one_usage_event() -> list[Any]:
                rows = await app.records.usage(user_id=user.id)
                assert len(rows) == 1, (
                    f"expected exactly one usage event for the first turn, found {len(rows)}"
                )
                return rows

            rows = await app.settle(one_usage_event, timeout=10, description="one usage event in ClickHouse")
            assert rows[0].prompt_tokens == usage["prompt_tokens"]
            assert rows[0].completion_tokens == usage["completion_tokens"]
            assert rows[0].request_id == completed.request_id, (
                "the usage row does not carry the request id of the message"
            )
        if app.supports("message_usage"):
            stored = [
                m
                for m in await app.records.messages(request_id=completed.request_id)
                if m.role == "assistant"
            ]
            assert len(stored) == 1, f"the first turn's reply is stored {len(stored)} times"
            assert (stored[0].prompt_tokens, stored[0].completion_tokens) == (
                usage["prompt_tokens"],
                usage["completion_tokens"],
            ), (
                f"the stored reply holds {stored[0].prompt_tokens}/{stored[0].completion_tokens} tokens, the socket said {usage}"
            )
        if app.supports("session_store"):
            owned = await app.records.sessions(user_id=user.id)
            assert len(owned) == 1, f"expected one session for the user, found {len(owned)}"
        if app.supports("session_restore"):
            chat_session = await app.records.chat_state(user.id)
            assert chat_session.exists, "no chat session state after the first turn"
            assert chat_session.active_thread_id == completed.thread_id


@pytest.mark.parametrize(
    "case",
    ["duplicate email", "weak password", "wrong password", "unverified login"],
)
@journey(
    name="Signup, verify, login and first chat",
    priority="P0",
    mrr=100_000,
    components=["frontend", "auth", "postgres", "email"],
    needs=["password_signup"],
    drills=[
        "signup-email-case-duplicate",
        "login-skips-verification",
        "owui-signup-skips-duplicate-check",
        "owui-signup-skips-password-policy",
        "owui-signin-unawaited-password-check",
    ],
)
async def test_signup_and_login_failure_paths(case: str, app: App, page: Any) -> None:
    """Bad signups and logins get a clear message and leave no session or stray rows."""
    if case == "duplicate email":
        existing = await app.users.verified("dup")
        async with step("Sign up again with an existing email (other case)"):
            signup = await app.signup_page(page).open()
            result = await signup.fill_and_submit("Someone Else", existing.email.upper(), PASSWORD)
            assert result is signup, "a duplicate signup reached 'Check your email'"
            message = await signup.form_error() or ""
            assert app.ui_phrases["email_taken"] in message.lower(), f"duplicate signup shows {message!r}"
        async with step("Still exactly one account for that email"):
            assert await app.records.count_users(existing.email, any_case=True) == 1
    elif case == "weak password":
        email = unique_email("weak")
        async with step("Sign up with a weak password"):
            signup = await app.signup_page(page).open()
            result = await signup.fill_and_submit("Weak Password", email, "short")
            assert result is signup, "a weak password reached 'Check your email'"
            field_error = await signup.field_error("Password")
            assert field_error, "no message next to the Password field"
        async with step("No user row was created"):
            assert await app.records.count_users(email) == 0
    elif case == "wrong password":
        user = await app.users.verified("wrongpw")
        async with step("Log in with the wrong password"):
            login = await app.login_page(page).open()
            message = await login.login_expecting_error(user.email, "not-the-password-1")
            assert app.ui_phrases["bad_credentials"] in message.lower(), f"wrong password shows {message!r}"
        async with step("No token was stored in the browser"):
            assert (await app.tokens_in(page))["access"] is None
    else:
        app.require("email_verification")
        user = await app.users.signup("unverified")
        async with step("Log in before verifying the email"):
            login = await app.login_page(page).open()
            message = await login.login_expecting_error(user.email, user.password)
            assert app.ui_phrases["unverified"] in message.lower(), f"unverified login shows {message!r}"
            assert (await app.tokens_in(page))["access"] is None
