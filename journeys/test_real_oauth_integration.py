"""Journey: sign in with the OpenID provider ("Continue with Acme ID") through the real browser.

The provider is the OIDC stand-in over its real protocol (authorization code + PKCE); the auth
service, backend, frontend and the stores are real. Failure paths tamper only with what a user
or an attacker controls: the provider's answer (Deny), the callback URL (state, replayed code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest

from harness.app import App, unique_email
from harness.journey import journey
from harness.steps import step

COMPONENTS = ["frontend", "auth", "oauth", "backend", "postgres", "redis"]


# ------------------------------------------------------------------------------------ helpers
@dataclass(frozen=True)
class HeldSession:
    """Whose session the browser holds: the account and the session of its access token."""

    user_id: str
    session_id: str


async def held_session(app: App, page: Any) -> HeldSession | None:
    """The session of the access token the browser keeps (None when it keeps none)."""
    token = (await app.tokens_in(page))["access"]
    return HeldSession(app.user_id_of(token), app.session_id_of(token)) if token else None


async def session_ids(app: App, *, user_id: str | None = None, email: str | None = None) -> list[str]:
    """Live sign-in sessions belonging to a user id or an email."""
    return [s.id for s in await app.records.sessions(user_id=user_id, email=email)]


def state_of(url: str) -> str:
    """The OAuth `state` carried by an authorize or callback URL."""
    values = parse_qs(urlsplit(url).query).get("state") or [""]
    return values[0]


def with_query(url: str, **changes: str) -> str:
    """`url` with some query parameters replaced (order kept)."""
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    query.update(changes)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


async def expect_login_error(app: App, page: Any) -> tuple[Any, str | None, str]:
    """The login page showing an error after a failed provider sign-in: -> (page, code, message);
    the code is None on a platform whose errors carry none (capability error_codes)."""
    __tracebackhide__ = True
    login = await app.login_page(page).wait_until_loaded()
    await login.expect_visible(login.alert, "the login page's error about the provider sign-in")
    code = (await login.error_code() or "") if app.supports("error_codes") else None
    return login, code, await login.error_message() or ""


def expect_code(code: str | None, *expected: str, what: str) -> None:
    """The login page's error code is one of `expected` (skipped where errors carry no code)."""
    __tracebackhide__ = True
    assert code is None or code in expected, f"{what} shows error code {code!r}"


# ------------------------------------------------------------------------------------ journeys
@journey(
    name="OAuth sign-in",
    priority="P0",
    mrr=150_000,
    components=COMPONENTS,
    needs=["oauth"],
    drills=["oauth-identity-keyed-by-email"],
)
async def test_oauth_sign_in_creates_one_account_and_finds_it_again(app: App, page: Any) -> None:
    """A new person signs in with Acme ID, lands on their dashboard, and comes back to the same account."""
    email, name = unique_email("oauth"), "Katherine Johnson"

    async with step("Continue with Acme ID opens the provider's consent page"):
        login = await app.login_page(page).open()
        consent = await login.continue_with_provider()
        assert state_of(page.url), f"the provider's authorize URL carries no state: {page.url}"

    async with step("Allow as a new identity and land on the dashboard showing the name"):
        await consent.use_account(email, name)
        await consent.allow()
        dashboard = await app.dashboard_page(page, expected_name=name).wait_until_loaded()
        profile = await dashboard.profile()
        shown = (profile.full_name, profile.email) if app.supports("profile_email") else (profile.full_name,)
        assert shown == (name, email)[: len(shown)], (
            f"the dashboard profile shows {profile!r} after signing in as {name} <{email}>"
        )
        assert "#" not in page.url, f"the tokens stayed in the address bar: {page.url}"
        claims = await held_session(app, page)
        assert claims is not None, "the browser kept no access token after the provider sign-in"

    has_session_store = app.supports("session_store")
    async with step("Stores agree: verified password-less user, acme identity, profile, Redis session"):
        user = await app.records.user(email)
        assert user is not None, f"the identity store has no account for {email} after the provider sign-in"
        assert claims.user_id == user.id, (
            "the browser's token belongs to another user than the identity store holds"
        )
        if app.supports("email_verification"):
            assert user.verified, "the provider-created user is not marked verified"
        assert user.credential is None, "the provider-created user got a password"
        assert user.full_name == name, (
            f"the account stores the name {user.full_name!r}, provider said {name!r}"
        )
        identities = await app.records.identities(user_id=user.id)
        assert len(identities) == 1, f"expected one linked identity, found {identities}"
        identity = identities[0]
        assert identity.provider == app.oauth_provider and identity.subject, f"unexpected identity {identity}"
        assert identity.email == email

        async def profile_matches() -> None:
            row = await app.records.profile(user.id)
            assert row is not None, "the application has no profile for the provider-created user"
            assert (row.email, row.full_name) == (email, name), f"the profile disagrees: {row}"

        await app.settle(profile_matches, timeout=10, description="backend profile of the OAuth user")
        if has_session_store:
            session = await app.records.session(claims.session_id)
            assert session.exists and session.user_id == user.id, (
                f"no live session for the browser's token: {session}"
            )
            assert await session_ids(app, user_id=user.id) == [session.id], "more than one session was opened"

    async with step("Log out: the session is revoked"):
        login = await dashboard.logout()
        assert await held_session(app, page) is None, "a token survived logging out"
        if has_session_store:
            assert not (await app.records.session(claims.session_id)).exists, "logout left the session live"

    async with step("Sign in again with the same identity: same account"):
        consent = await login.continue_with_provider()
        await consent.use_account(email, name)
        await consent.allow()
        await app.dashboard_page(page, expected_name=name).wait_until_loaded()
        again = await held_session(app, page)
        assert again is not None, "the browser kept no access token after signing in again"
        assert again.user_id == user.id, (
            f"signing in again reached user {again.user_id}, first time {user.id}"
        )
        assert again.session_id != claims.session_id, "signing in again reused the revoked session"

    async with step("No duplicate user or identity; one live session"):
        assert await app.records.count_users(email) == 1, "a second account was created"
        same_identity = [
            i
            for i in await app.records.identities(subject=identity.subject)
            if i.provider == app.oauth_provider
        ]
        assert len(same_identity) == 1, "the identity was stored twice"
        assert len(await app.records.identities(user_id=user.id)) == 1
        assert await app.records.count_profiles(email) == 1, "a second profile was created"
        if has_session_store:
            assert await session_ids(app, user_id=user.id) == [again.session_id], (
                "expected exactly the new session to be live"
            )


@journey(
    name="OAuth sign-in",
    priority="P0",
    mrr=150_000,
    components=COMPONENTS,
    needs=["oauth", "oauth_linking"],
    drills=["oauth-link-wipes-password", "owui-oauth-merge-forgets-identity"],
)
async def test_oauth_links_to_an_existing_password_account(app: App, page: Any) -> None:
    """An email/password user who signs in with Acme ID (same, provider-verified email) keeps one account."""
    existing = await app.users.verified("linked", full_name="Dorothy Vaughan")
    before = await app.records.user(existing.email)
    assert before is not None and before.credential, "the factory's user has no password"

    async with step("Continue with Acme ID using the account's email"):
        login = await app.login_page(page).open()
        consent = await login.continue_with_provider()
        await consent.use_account(existing.email, "D. Vaughan (Acme)")
        await consent.allow()
        # linking keeps the account as it is: the dashboard greets the name the user signed up with
        dashboard = await app.dashboard_page(page, expected_name=existing.full_name).wait_until_loaded()
        claims = await held_session(app, page)
        assert claims is not None and claims.user_id == existing.user_id, (
            f"the provider sign-in reached user {claims and claims.user_id}, the account is {existing.user_id}"
        )

    async with step("The identity is linked to the existing user; nothing duplicated"):
        assert await app.records.count_users(existing.email) == 1, "a second account was created"
        linked = await app.records.identities(email=existing.email)
        identity = linked[0] if linked else None
        assert identity is not None, "no identity was linked"
        assert identity.user_id == existing.user_id and identity.provider == app.oauth_provider, (
            f"the identity is linked elsewhere: {identity}"
        )
        after = await app.records.user_by_id(before.id)
        assert after is not None and after.credential == before.credential, (
            "linking the provider changed or removed the password"
        )
        assert await app.records.count_profiles(existing.email) == 1
        if app.supports("session_store"):
            assert (await app.records.session(claims.session_id)).exists, "no session for the sign-in"

    async with step("Log out and log in with the password: still works, same account"):
        login = await dashboard.logout()
        await login.login(existing.email, existing.password)
        by_password = await held_session(app, page)
        assert by_password is not None and by_password.user_id == existing.user_id, (
            "the password login reached another user after linking"
        )
        assert len(await app.records.identities(user_id=before.id)) == 1


@pytest.mark.parametrize("case", ["deny", "tampered state", "reused code", "another browser's callback"])
@journey(
    name="OAuth sign-in",
    priority="P0",
    mrr=150_000,
    components=COMPONENTS,
    needs=["oauth"],
    drills=["oauth-state-reusable", "oauth-binding-optional"],
)
async def test_oauth_refusals_open_no_session(case: str, app: App, page: Any) -> None:
    """Deny, a tampered state, a replayed code and a callback opened in another browser (login
    CSRF) end on /login with a clear message and no session."""
    email, name = unique_email(f"oauth-{case.split()[0]}"), "Mary Jackson"
    has_session_store, has_state_store = app.supports("session_store"), app.supports("oauth_state_store")
    sessions_before = len(await app.records.sessions()) if has_session_store else 0

    async with step("Continue with Acme ID and fill in a new identity"):
        login = await app.login_page(page).open()
        consent = await login.continue_with_provider()
        pending_state = state_of(page.url)
        assert pending_state, f"the provider's authorize URL carries no state: {page.url}"
        if has_state_store:
            assert await app.records.oauth_pending(pending_state), (
                "the auth service keeps no pending state for the sign-in it started"
            )
        await consent.use_account(email, name)

    if case == "deny":
        async with step("Deny at the provider: back on /login saying it was cancelled"):
            await consent.deny()
            login, code, message = await expect_login_error(app, page)
            expect_code(code, "oauth_denied", what="the login page after Deny")
            assert app.ui_phrases["oauth_denied"] in message.lower(), (
                f"the login page says {message!r} after Deny"
            )
            assert await held_session(app, page) is None, "a token was stored although the user denied"
            if has_state_store:
                assert not await app.records.oauth_pending(pending_state), (
                    "the denied sign-in's state is still pending (could be replayed)"
                )

        async with step("No user and no session were created"):
            assert await app.records.count_users(email) == 0, f"a user was created for {email}"
            if has_session_store:
                assert await session_ids(app, email=email) == [], "a session exists for the denied sign-in"
                assert len(await app.records.sessions()) == sessions_before, "a new session appeared"

    elif case == "tampered state":
        async with step("Open the provider's callback with a tampered state"):
            callback = await consent.allow_without_redirect(email, name)
            assert state_of(callback) == pending_state, (
                "the provider returned another state than it was given"
            )
            forged = pending_state[::-1] if pending_state[::-1] != pending_state else pending_state + "x"
            await page.goto(with_query(callback, state=forged))
            login, code, message = await expect_login_error(app, page)
            expect_code(code, "oauth_state", what="a tampered state")
            assert app.ui_phrases["oauth_state"] in message.lower(), f"a tampered state shows {message!r}"
            assert await held_session(app, page) is None, "a token was stored for a tampered callback"
            assert await app.records.count_users(email) == 0, "a user was created from a tampered state"
            if has_state_store:
                assert await app.records.oauth_pending(pending_state), (
                    "the forged state consumed the genuine pending sign-in"
                )
            if has_session_store:
                assert await session_ids(app, email=email) == [], "a session exists for the tampered callback"
                assert len(await app.records.sessions()) == sessions_before, "a new session appeared"

        async with step("The untampered callback still signs in (only the state was wrong)"):
            await page.goto(callback)
            await app.dashboard_page(page, expected_name=name).wait_until_loaded()
            claims = await held_session(app, page)
            assert claims is not None, "the genuine callback stored no token"
            if has_session_store:
                assert await session_ids(app, email=email) == [claims.session_id]

    elif case == "another browser's callback":
        async with step("The callback opened in another browser (login CSRF): error, no session"):
            # an attacker consents with their own account and gets someone to open the callback link
            callback = await consent.allow_without_redirect(email, name)
            victim = await app.page_for("victim")
            await victim.page.goto(callback)
            _, code, message = await expect_login_error(app, victim.page)
            expect_code(code, "oauth_state", what="another browser's callback")
            assert app.ui_phrases["oauth_state"] in message.lower(), (
                f"another browser's callback shows {message!r}"
            )
            assert await held_session(app, victim.page) is None, (
                "a token was stored from another browser's callback"
            )
            assert await app.records.count_users(email) == 0, (
                "an account was created from another browser's callback"
            )

        async with step("The refused callback spent the state: the browser that started it cannot finish"):
            # a state bound to the starting browser alone (its cookie) is not spent by a refusal elsewhere
            app.require("oauth_state_store", "its sign-in state lives in the starting browser's cookie")
            await page.goto(callback)
            _, code, _ = await expect_login_error(app, page)
            expect_code(code, "oauth_state", what="the spent state")
            assert not await app.records.oauth_pending(pending_state), (
                "the state is still pending after its callback was refused"
            )
            assert await session_ids(app, email=email) == [], "a session exists for the refused sign-in"
            assert len(await app.records.sessions()) == sessions_before, "a new session appeared"

    else:
        async with step("Open the provider's callback: signed in once"):
            callback = await consent.allow_without_redirect(email, name)
            await page.goto(callback)
            await app.dashboard_page(page, expected_name=name).wait_until_loaded()
            claims = await held_session(app, page)
            assert claims is not None, "the first use of the callback stored no token"
            first_session = claims.session_id

        async with step("Open the same callback URL again (replay): error, no session"):
            replay = await app.page_for("replay")
            await replay.page.goto(callback)
            _, code, message = await expect_login_error(app, replay.page)
            expect_code(code, "oauth_state", "oauth_failed", what="a replayed callback")
            assert await held_session(app, replay.page) is None, "the replayed callback stored a token"

        async with step(
            "Replay the used code under a fresh state of the same browser: the provider refuses it"
        ):
            # the fresh sign-in starts in the replaying browser, so the auth service's browser binding
            # holds and the code itself reaches the provider
            await (await app.login_page(replay.page).open()).continue_with_provider()
            fresh_state = state_of(replay.page.url)
            assert fresh_state, f"the provider's authorize URL carries no state: {replay.page.url}"
            await replay.page.goto(with_query(callback, state=fresh_state))
            _, code, message = await expect_login_error(app, replay.page)
            expect_code(code, "oauth_failed", what="a replayed code under a fresh state")
            assert app.ui_phrases["oauth_failed"] in message.lower(), f"a replayed code shows {message!r}"
            assert await held_session(app, replay.page) is None, "the replayed code stored a token"

        async with step("Still one user, one identity, one session"):
            if has_session_store:
                assert await session_ids(app, email=email) == [first_session], (
                    "replaying the callback opened a second session"
                )
            assert await app.records.count_users(email) == 1
            assert len(await app.records.identities(email=email)) == 1
