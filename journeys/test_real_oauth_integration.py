"""Journey: sign in with the OpenID provider ("Continue with Acme ID") through the real browser.

The provider is the OIDC stand-in over its real protocol (authorization code + PKCE); the auth
service, backend, frontend and the stores are real. Failure paths tamper only with what a user
or an attacker controls: the provider's answer (Deny), the callback URL (state, replayed code).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from db_probes import eventually
from harness.journey import journey
from harness.plugin_browser import NewContext
from harness.steps import step
from journeys.conftest import UserFactory, claims_of, stored_tokens, unique_email
from pages import DashboardPage, LoginPage, OAuthConsentPage

COMPONENTS = ["frontend", "auth", "oauth", "backend", "postgres", "redis"]
PROVIDER = os.environ.get("THROUGHLINE_STACK_OIDC_PROVIDER", "acme")


# ------------------------------------------------------------------------------------ helpers
async def stored_claims(page: Any) -> dict[str, Any] | None:
    """Claims of the access token the browser keeps (None when it keeps none)."""
    token = (await stored_tokens(page))["access"]
    return claims_of(token) if token else None


async def sessions_of(redis: Any, *, user_id: str | None = None, email: str | None = None) -> list[str]:
    """Live auth sessions (`auth:session:{sid}` keys) belonging to a user id or an email."""
    owned = []
    for key in await redis.keys("auth:session:*"):
        value = (await redis.key(key)).value or {}
        if (user_id is not None and value.get("user_id") == user_id) or (
            email is not None and value.get("email") == email
        ):
            owned.append(key)
    return owned


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


async def consent_answer_url(consent: OAuthConsentPage, email: str, name: str) -> str:
    """Answer "Allow" on the provider's page for `email`/`name` without letting the browser follow
    the redirect: -> the auth callback URL (code + state) the provider sends the browser to.

    The provider is a third party: its decision endpoint is driven with the same form fields its
    page submits, so the journey can alter the callback URL before the browser opens it.
    """
    __tracebackhide__ = True
    page = consent.page
    txn = await page.locator("input[name='txn']").input_value()
    action = await page.locator("form[action$='/authorize/decision']").get_attribute("action") or ""
    decision_url = urlsplit(page.url)._replace(path=action, query="").geturl()
    async with httpx.AsyncClient(timeout=10, follow_redirects=False) as client:
        response = await client.post(
            decision_url, data={"txn": txn, "decision": "allow", "email": email, "name": name}
        )
    assert response.status_code == 302, (
        f"the provider did not redirect after Allow ({response.status_code}): {response.text[:300]}"
    )
    location = response.headers["location"]
    query = parse_qs(urlsplit(location).query)
    assert query.get("code") and query.get("state"), (
        f"the provider's redirect carries no code/state: {location}"
    )
    return location


async def expect_login_error(page: Any, frontend: str, provider_name: str) -> tuple[LoginPage, str, str]:
    """The login page showing an error after a failed provider sign-in: -> (page, code, message)."""
    __tracebackhide__ = True
    login = await LoginPage(page, frontend, provider_name).wait_until_loaded()
    await login.expect_visible(login.alert, "the login page's error about the provider sign-in")
    return login, await login.error_code() or "", await login.error_message() or ""


# ------------------------------------------------------------------------------------ journeys
@journey(name="OAuth sign-in", priority="P0", mrr=150_000, components=COMPONENTS)
async def test_oauth_sign_in_creates_one_account_and_finds_it_again(
    page: Any,
    urls: dict[str, str],
    pg: Any,
    redis: Any,
    provider_name: str,
) -> None:
    """A new person signs in with Acme ID, lands on their dashboard, and comes back to the same account."""
    frontend = urls["frontend_url"]
    email, name = unique_email("oauth"), "Katherine Johnson"

    async with step("Continue with Acme ID opens the provider's consent page"):
        login = await LoginPage(page, frontend, provider_name).open()
        consent = await login.continue_with_provider()
        assert state_of(page.url), f"the provider's authorize URL carries no state: {page.url}"

    async with step("Allow as a new identity and land on the dashboard showing the name"):
        await consent.use_account(email, name)
        await consent.allow()
        dashboard = await DashboardPage(page, frontend, expected_name=name).wait_until_loaded()
        profile = await dashboard.profile()
        assert (profile.full_name, profile.email) == (name, email), (
            f"the dashboard profile shows {profile!r} after signing in as {name} <{email}>"
        )
        assert "#" not in page.url, f"the tokens stayed in the address bar: {page.url}"
        claims = await stored_claims(page)
        assert claims is not None, "the browser kept no access token after the provider sign-in"

    async with step("Stores agree: verified password-less user, acme identity, profile, Redis session"):
        user = await pg.auth.one(
            "SELECT id, email, full_name, password_hash, email_verified_at FROM users WHERE email = $1", email
        )
        assert user is not None, f"auth.users has no row for {email} after the provider sign-in"
        user_id = str(user["id"])
        assert claims["sub"] == user_id, "the browser's token belongs to another user than auth.users holds"
        assert user["email_verified_at"] is not None, "the provider-created user is not marked verified"
        assert user["password_hash"] is None, "the provider-created user got a password"
        assert user["full_name"] == name, (
            f"auth.users stores the name {user['full_name']!r}, provider said {name!r}"
        )
        identities = await pg.auth.rows(
            "SELECT provider, subject, email FROM identities WHERE user_id = $1", user["id"]
        )
        assert len(identities) == 1, f"expected one linked identity, found {identities}"
        identity = identities[0]
        assert identity["provider"] == PROVIDER and identity["subject"], f"unexpected identity row {identity}"
        assert identity["email"] == email

        async def profile_matches() -> None:
            row = await pg.backend.one(
                "SELECT email, full_name, plan FROM profiles WHERE user_id = $1", user["id"]
            )
            assert row is not None, "backend.profiles has no row for the provider-created user"
            assert (row["email"], row["full_name"]) == (email, name), f"backend.profiles disagrees: {row}"

        await eventually(profile_matches, timeout=10, description="backend profile of the OAuth user")
        session = await redis.key(f"auth:session:{claims['sid']}")
        assert session.exists and session.value.get("user_id") == user_id, (
            f"no live Redis session for the browser's token: {session}"
        )
        assert await sessions_of(redis, user_id=user_id) == [session.name], "more than one session was opened"

    async with step("Log out: the session is revoked"):
        login = await dashboard.logout()
        assert await stored_claims(page) is None, "a token survived logging out"
        assert not (await redis.key(f"auth:session:{claims['sid']}")).exists, (
            "logout left the Redis session live"
        )

    async with step("Sign in again with the same identity: same account"):
        consent = await login.continue_with_provider()
        await consent.use_account(email, name)
        await consent.allow()
        await DashboardPage(page, frontend, expected_name=name).wait_until_loaded()
        again = await stored_claims(page)
        assert again is not None, "the browser kept no access token after signing in again"
        assert again["sub"] == user_id, f"signing in again reached user {again['sub']}, first time {user_id}"
        assert again["sid"] != claims["sid"], "signing in again reused the revoked session"

    async with step("No duplicate user or identity; one live session"):
        assert await pg.auth.count("users", "email = $1", email) == 1, "a second user row was created"
        assert (
            await pg.auth.count("identities", "provider = $1 AND subject = $2", PROVIDER, identity["subject"])
            == 1
        ), "the identity was stored twice"
        assert await pg.auth.count("identities", "user_id = $1", user["id"]) == 1
        assert await pg.backend.count("profiles", "email = $1", email) == 1, "a second profile was created"
        assert await sessions_of(redis, user_id=user_id) == [f"auth:session:{again['sid']}"], (
            "expected exactly the new session to be live"
        )


@journey(name="OAuth sign-in", priority="P0", mrr=150_000, components=COMPONENTS)
async def test_oauth_links_to_an_existing_password_account(
    page: Any,
    urls: dict[str, str],
    users: UserFactory,
    pg: Any,
    redis: Any,
    provider_name: str,
) -> None:
    """An email/password user who signs in with Acme ID (same, provider-verified email) keeps one account."""
    frontend = urls["frontend_url"]
    existing = await users.verified("linked", full_name="Dorothy Vaughan")
    before = await pg.auth.one("SELECT id, password_hash FROM users WHERE email = $1", existing.email)
    assert before is not None and before["password_hash"], "the factory's user has no password"

    async with step("Continue with Acme ID using the account's email"):
        login = await LoginPage(page, frontend, provider_name).open()
        consent = await login.continue_with_provider()
        await consent.use_account(existing.email, "D. Vaughan (Acme)")
        await consent.allow()
        # linking keeps the account as it is: the dashboard greets the name the user signed up with
        dashboard = await DashboardPage(page, frontend, expected_name=existing.full_name).wait_until_loaded()
        claims = await stored_claims(page)
        assert claims is not None and claims["sub"] == existing.user_id, (
            f"the provider sign-in reached user {claims and claims['sub']}, the account is {existing.user_id}"
        )

    async with step("The identity is linked to the existing user; nothing duplicated"):
        assert await pg.auth.count("users", "email = $1", existing.email) == 1, (
            "a second user row was created"
        )
        identity = await pg.auth.one(
            "SELECT user_id, provider, email FROM identities WHERE email = $1", existing.email
        )
        assert identity is not None, "no identity row was linked"
        assert str(identity["user_id"]) == existing.user_id and identity["provider"] == PROVIDER, (
            f"the identity is linked elsewhere: {identity}"
        )
        after = await pg.auth.one("SELECT password_hash, full_name FROM users WHERE id = $1", before["id"])
        assert after is not None and after["password_hash"] == before["password_hash"], (
            "linking the provider changed or removed the password"
        )
        assert await pg.backend.count("profiles", "email = $1", existing.email) == 1
        assert (await redis.key(f"auth:session:{claims['sid']}")).exists, "no Redis session for the sign-in"

    async with step("Log out and log in with the password: still works, same account"):
        login = await dashboard.logout()
        await login.login(existing.email, existing.password)
        by_password = await stored_claims(page)
        assert by_password is not None and by_password["sub"] == existing.user_id, (
            "the password login reached another user after linking"
        )
        assert await pg.auth.count("identities", "user_id = $1", before["id"]) == 1


@pytest.mark.parametrize("case", ["deny", "tampered state", "reused code", "another browser's callback"])
@journey(name="OAuth sign-in", priority="P0", mrr=150_000, components=COMPONENTS)
async def test_oauth_refusals_open_no_session(
    case: str,
    page: Any,
    new_context: NewContext,
    urls: dict[str, str],
    pg: Any,
    redis: Any,
    provider_name: str,
) -> None:
    """Deny, a tampered state, a replayed code and a callback opened in another browser (login
    CSRF) end on /login with a clear message and no session."""
    frontend = urls["frontend_url"]
    email, name = unique_email(f"oauth-{case.split()[0]}"), "Mary Jackson"
    sessions_before = len(await redis.keys("auth:session:*"))

    async with step("Continue with Acme ID and fill in a new identity"):
        login = await LoginPage(page, frontend, provider_name).open()
        consent = await login.continue_with_provider()
        pending_state = state_of(page.url)
        assert pending_state, f"the provider's authorize URL carries no state: {page.url}"
        assert (await redis.key(f"auth:oauth_state:{pending_state}")).exists, (
            "the auth service keeps no pending state for the sign-in it started"
        )
        await consent.use_account(email, name)

    if case == "deny":
        async with step("Deny at the provider: back on /login saying it was cancelled"):
            await consent.deny()
            login, code, message = await expect_login_error(page, frontend, provider_name)
            assert code == "oauth_denied", f"the login page shows error code {code!r} after Deny"
            assert "cancelled" in message.lower(), f"the login page says {message!r} after Deny"
            assert await stored_claims(page) is None, "a token was stored although the user denied"
            assert not (await redis.key(f"auth:oauth_state:{pending_state}")).exists, (
                "the denied sign-in's state is still pending (could be replayed)"
            )

        async with step("No user and no session were created"):
            assert await pg.auth.count("users", "email = $1", email) == 0, f"a user was created for {email}"
            assert await sessions_of(redis, email=email) == [], (
                "a Redis session exists for the denied sign-in"
            )
            assert len(await redis.keys("auth:session:*")) == sessions_before, "a new Redis session appeared"

    elif case == "tampered state":
        async with step("Open the provider's callback with a tampered state"):
            callback = await consent_answer_url(consent, email, name)
            assert state_of(callback) == pending_state, (
                "the provider returned another state than it was given"
            )
            forged = pending_state[::-1] if pending_state[::-1] != pending_state else pending_state + "x"
            await page.goto(with_query(callback, state=forged))
            login, code, message = await expect_login_error(page, frontend, provider_name)
            assert code == "oauth_state", f"a tampered state shows error code {code!r}"
            assert "couldn't verify" in message.lower(), f"a tampered state shows {message!r}"
            assert await stored_claims(page) is None, "a token was stored for a tampered callback"
            assert await pg.auth.count("users", "email = $1", email) == 0, (
                "a user was created from a tampered state"
            )
            assert (await redis.key(f"auth:oauth_state:{pending_state}")).exists, (
                "the forged state consumed the genuine pending sign-in"
            )
            assert await sessions_of(redis, email=email) == [], (
                "a Redis session exists for the tampered callback"
            )
            assert len(await redis.keys("auth:session:*")) == sessions_before, "a new Redis session appeared"

        async with step("The untampered callback still signs in (only the state was wrong)"):
            await page.goto(callback)
            await DashboardPage(page, frontend, expected_name=name).wait_until_loaded()
            claims = await stored_claims(page)
            assert claims is not None, "the genuine callback stored no token"
            assert await sessions_of(redis, email=email) == [f"auth:session:{claims['sid']}"]

    elif case == "another browser's callback":
        async with step("The callback opened in another browser (login CSRF): error, no session"):
            # an attacker consents with their own account and gets someone to open the callback link
            callback = await consent_answer_url(consent, email, name)
            victim = await new_context("victim")
            await victim.page.goto(callback)
            _, code, message = await expect_login_error(victim.page, frontend, provider_name)
            assert code == "oauth_state", f"another browser's callback shows error code {code!r}"
            assert "couldn't verify" in message.lower(), f"another browser's callback shows {message!r}"
            assert await stored_claims(victim.page) is None, (
                "a token was stored from another browser's callback"
            )
            assert await pg.auth.count("users", "email = $1", email) == 0, (
                "an account was created from another browser's callback"
            )

        async with step("The refused callback spent the state: the browser that started it cannot finish"):
            await page.goto(callback)
            _, code, _ = await expect_login_error(page, frontend, provider_name)
            assert code == "oauth_state", f"the spent state shows error code {code!r}"
            assert not (await redis.key(f"auth:oauth_state:{pending_state}")).exists, (
                "the state is still pending after its callback was refused"
            )
            assert await sessions_of(redis, email=email) == [], (
                "a Redis session exists for the refused sign-in"
            )
            assert len(await redis.keys("auth:session:*")) == sessions_before, "a new Redis session appeared"

    else:
        async with step("Open the provider's callback: signed in once"):
            callback = await consent_answer_url(consent, email, name)
            await page.goto(callback)
            await DashboardPage(page, frontend, expected_name=name).wait_until_loaded()
            claims = await stored_claims(page)
            assert claims is not None, "the first use of the callback stored no token"
            first_session = f"auth:session:{claims['sid']}"

        async with step("Open the same callback URL again (replay): error, no session"):
            replay = await new_context("replay")
            await replay.page.goto(callback)
            _, code, message = await expect_login_error(replay.page, frontend, provider_name)
            assert code in ("oauth_state", "oauth_failed"), f"a replayed callback shows error code {code!r}"
            assert await stored_claims(replay.page) is None, "the replayed callback stored a token"

        async with step(
            "Replay the used code under a fresh state of the same browser: the provider refuses it"
        ):
            # the fresh sign-in starts in the replaying browser, so the auth service's browser binding
            # holds and the code itself reaches the provider
            await (await LoginPage(replay.page, frontend, provider_name).open()).continue_with_provider()
            fresh_state = state_of(replay.page.url)
            assert fresh_state, f"the provider's authorize URL carries no state: {replay.page.url}"
            await replay.page.goto(with_query(callback, state=fresh_state))
            _, code, message = await expect_login_error(replay.page, frontend, provider_name)
            assert code == "oauth_failed", f"a replayed code under a fresh state shows error code {code!r}"
            assert "failed" in message.lower(), f"a replayed code shows {message!r}"
            assert await stored_claims(replay.page) is None, "the replayed code stored a token"

        async with step("Still one user, one identity, one session"):
            assert await sessions_of(redis, email=email) == [first_session], (
                "replaying the callback opened a second session"
            )
            assert await pg.auth.count("users", "email = $1", email) == 1
            assert await pg.auth.count("identities", "email = $1", email) == 1
