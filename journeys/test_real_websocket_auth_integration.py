"""Journey: the WebSocket auth handshake.

The access token of a real login opens the chat socket (token in the handshake, never in the
URL); refresh rotates the tokens; expired, tampered, wrong-audience and revoked tokens are
refused as unauthorized before any chat frame, both for a raw client and in the browser, where
the UI sends the person back to the login page saying the session expired.
A socket opened with a good token does not outlive its session: after a logout elsewhere its
next message closes it as unauthorized.
"""

from __future__ import annotations

from typing import Any

import pytest

from harness.app import App, TurnEvent
from harness.journey import journey
from harness.steps import step

COMPONENTS = ["frontend", "auth", "backend", "websocket", "redis"]


# -- a raw socket client, as any program (or attacker) would use it -------------------------------
async def assert_refused(app: App, token: str, what: str) -> None:
    """The socket must be refused as unauthorized and deliver no event at all (no chat frame, no hint of the user)."""
    __tracebackhide__ = True
    seen = await app.handshake(token)
    assert seen.refused, (
        f"a socket opened with {what} closed with code {seen.close_code}, expected to be refused as unauthorized"
    )
    assert not seen.events, f"a socket opened with {what} received frames before being refused: {seen.kinds}"


async def assert_accepted(app: App, token: str, user_id: str, what: str) -> TurnEvent:
    """The socket must open and greet the right user (the 'connected' greeting)."""
    __tracebackhide__ = True
    seen = await app.handshake(token, stay_for_first=True)
    assert seen.kinds == ["connected"], (
        f"a socket opened with {what} got {seen.kinds} instead of the 'connected' greeting"
    )
    greeting = seen.events[0]
    assert greeting.user_id == user_id, (
        f"a socket opened with {what} greets user {greeting.user_id}, the token belongs to {user_id}"
    )
    return greeting


# -- journeys ----------------------------------------------------------------------------------------
@journey(
    name="WebSocket auth handshake",
    priority="P0",
    mrr=50_000,
    components=COMPONENTS,
    needs=["refresh_token", "session_revocation"],
    drills=["refresh-reuse-keeps-session"],
)
async def test_login_token_opens_socket_and_refresh_rotates(app: App, page: Any, ws_recorder: Any) -> None:
    """A real login's token opens the chat socket; refresh gives a working token; the old refresh token is dead."""
    turns = app.turns(ws_recorder)
    user = await app.users.verified("wsauth", full_name="Sam Socket")

    async with step("Log in through the UI: the chat socket opens with the login's token"):
        dashboard = await app.login(page, user)
        established = await turns.wait_for("connected")
        assert await dashboard.chat.connection_state() == "connected", "the chat does not say Connected"
        state = await dashboard.frontend_state()
        assert state["connection"] == "connected", f"the app reports connection {state['connection']!r}"
        assert established.user_id == user.user_id == state["user"]["id"], (
            "the socket greets a different user than the one who logged in"
        )
        socket_url = ws_recorder.connections[0].url
        browser_tokens = await app.tokens_in(page)
        assert browser_tokens["access"], "no access token kept in the browser after login"
        assert app.is_socket_url_secret_free(socket_url, str(browser_tokens["access"])), (
            "the access token travels in the WebSocket URL (it would land in server logs)"
        )

    async with step("Redis holds the login's session auth:session:{sid}"):
        browser_sid = app.session_id_of(str(browser_tokens["access"]))
        session = await app.records.session(browser_sid)
        assert session.exists, "no session in the session store for the session the browser holds"
        assert session.user_id == user.user_id, "the stored session names another user"
        assert (session.ttl or 0) > 0, "the stored session never expires"

    async with step("The same token opens a raw socket (jwt.<token> subprotocol)"):
        await assert_accepted(
            app, str(browser_tokens["access"]), str(user.user_id), "the login's access token"
        )

    async with step("Refresh (POST /auth/refresh) gives a new access token that opens the socket"):
        api_tokens = await app.users.login(user)  # a second session, so the browser's tokens stay untouched
        api_sid = app.session_id_of(api_tokens["access_token"])
        assert (await app.records.session(api_sid)).exists, "login over the API made no session"
        response = await app.refresh(api_tokens["refresh_token"])
        assert response.status == 200, f"refresh answered {response.status}: {response.text}"
        renewed = response.body
        assert renewed["access_token"] != api_tokens["access_token"], "refresh returned the same access token"
        assert renewed["refresh_token"] != api_tokens["refresh_token"], (
            "refresh did not rotate the refresh token"
        )
        assert app.session_id_of(renewed["access_token"]) == api_sid, (
            "refresh moved the token to another session"
        )
        await assert_accepted(app, renewed["access_token"], str(user.user_id), "the refreshed access token")

    async with step("The old refresh token is refused, and its reuse ends that session"):
        replay = await app.refresh(api_tokens["refresh_token"])
        assert replay.status == 401, (
            f"refreshing with an already-used refresh token answered {replay.status}, expected 401"
        )
        # Reuse of a rotated refresh token looks like theft: the whole session is revoked.
        gone = await app.records.session(api_sid)
        assert not gone.exists, "a replayed refresh token left its session alive"
        await assert_refused(app, renewed["access_token"], "an access token of a session revoked for reuse")

    async with step("The browser's own session is untouched by the other session's revocation"):
        assert (await app.records.session(browser_sid)).exists, (
            "revoking one session removed the browser's session too"
        )
        assert await dashboard.chat.connection_state() == "connected", (
            "the browser's chat lost its connection"
        )

    async with step("An expired access token in the browser is renewed silently with the refresh token"):
        app.require("token_minting")
        expired = await app.expired_token(str(browser_tokens["access"]))
        await app.put_tokens(page, expired, (await app.tokens_in(page))["refresh"])
        mark = turns.mark()
        dashboard = await app.dashboard_page(page).reload()
        await turns.wait_for_refusal()
        await turns.wait_for("connected", after=mark)
        assert await dashboard.is_current(), (
            f"the UI left the dashboard ({page.url}) although the refresh token was valid"
        )
        after = await app.tokens_in(page)
        assert after["access"] and after["access"] != expired, "the expired access token was not replaced"
        assert after["refresh"] != browser_tokens["refresh"], "the refresh token was not rotated"
        assert app.session_id_of(str(after["access"])) == browser_sid, "renewal started a new session"
        assert (await app.records.session(browser_sid)).exists, "renewal lost the stored session"


BAD_TOKENS = ["expired", "tampered signature", "wrong audience", "revoked by logout"]


@pytest.mark.parametrize("case", BAD_TOKENS)
@journey(
    name="WebSocket auth handshake",
    priority="P0",
    mrr=50_000,
    components=COMPONENTS,
    drills=[
        "ws-skips-revocation-check",
        "ws-ignores-audience",
        "owui-token-expiry-unchecked",
        "owui-token-signature-unchecked",
        "owui-token-audience-unchecked",
        "owui-socket-skips-revocation",
        "owui-signout-keeps-token",
    ],
)
async def test_socket_refuses_bad_tokens(case: str, app: App, page: Any, ws_recorder: Any) -> None:
    """Expired, tampered, wrong-audience and revoked tokens are refused as unauthorized with no frame; the UI asks to log in."""
    turns = app.turns(ws_recorder)
    user = await app.users.logged_in("wsbad")
    genuine = user.access_token
    sid = app.session_id_of(genuine)
    has_refresh, has_session_store = app.supports("refresh_token"), app.supports("session_store")
    refresh_in_browser = app.unknown_refresh_token() if has_refresh else None

    async with step("Control: the genuine token of the session opens the socket"):
        await assert_accepted(app, genuine, str(user.user_id), "the genuine access token")
        if has_session_store:
            assert (await app.records.session(sid)).exists, "login made no session in the session store"

    async with step(f"Craft the bad token ({case})"):
        if case == "tampered signature":
            bad = app.tampered_token(genuine)
        elif case == "revoked by logout":
            app.require("session_revocation")
            response = await app.logout(genuine)
            assert response.status == app.signed_out_status, (
                f"logout answered {response.status}: {response.text}"
            )
            if has_session_store:
                assert not (await app.records.session(sid)).exists, "the session is still stored after logout"
            bad = genuine
            if has_refresh:
                refresh_in_browser = str(user.refresh_token)  # the real one, dead with its session
        else:
            app.require("token_minting")
            if case == "expired":
                bad = await app.expired_token(genuine)
            else:
                bad = await app.mint(genuine, aud="someone-elses-api")
            assert app.session_id_of(bad) == sid, "the crafted token must name the live session"

    async with step("A raw client offering the bad token is refused as unauthorized and gets no frame"):
        await assert_refused(app, bad, f"the {case} token")

    async with step("The browser with the bad token is sent to log in again ('session expired')"):
        login = await app.login_page(page).open()
        await app.put_tokens(page, bad, refresh_in_browser)
        await app.dashboard_page(page).visit()
        await login.wait_until_loaded()
        if app.supports("error_codes"):
            assert await login.error_code() == "session_expired", (
                f"the login page shows {await login.error_message()!r} instead of the 'session expired' message"
            )
        message = await login.error_message() or ""
        assert app.ui_phrases["session_expired"] in message.lower(), f"the login page says {message!r}"
        await turns.wait_for_refusal()
        received = turns.events(direction="received")
        assert not received, f"the browser received frames on a refused socket: {[e.kind for e in received]}"
        left = await app.tokens_in(page)
        assert left == {"access": None, "refresh": None}, "the bad tokens are still kept in the browser"

    async with step("Stores: the refusal ended no live session, the logout's stays gone"):
        session = await app.records.session(sid) if has_session_store else None
        if case == "revoked by logout":
            assert session is None or not session.exists, "the logged-out session came back"
            await assert_refused(app, genuine, "the logged-out token, after the browser offered it")
        else:
            assert session is None or session.exists, (
                f"refusing a {case} token revoked the user's real session"
            )
            await assert_accepted(
                app, genuine, str(user.user_id), "the genuine access token, after the refusal"
            )


@journey(
    name="WebSocket auth handshake",
    priority="P0",
    mrr=50_000,
    components=[*COMPONENTS, "postgres"],
    needs=["session_revocation", "open_socket_revocation"],
    drills=["open-socket-outlives-logout", "logout-keeps-session"],
)
async def test_logout_elsewhere_closes_the_open_socket(app: App, page: Any, ws_recorder: Any) -> None:
    """A socket opened with a good token does not outlive its session: after a logout elsewhere,
    the next message closes it as unauthorized before any turn starts, and the UI asks to log in."""
    turns = app.turns(ws_recorder)
    user = await app.users.verified("wsopen", full_name="Olive Open")

    async with step("Log in through the UI: the chat is connected"):
        dashboard = await app.login(page, user)
        await turns.wait_for("connected")
        access = str((await app.tokens_in(page))["access"])
        sid = app.session_id_of(access)

    async with step("The session is ended elsewhere (POST /auth/logout with the same token)"):
        response = await app.logout(access)
        assert response.status == 204, f"logout answered {response.status}: {response.text}"
        assert not (await app.records.session(sid)).exists, "the session is still stored after logout"
        assert await dashboard.chat.connection_state() == "connected", (
            "the open socket was expected to stay up until it is next used"
        )

    async with step("The next message on the open socket: refused as unauthorized, no turn starts"):
        text = "Am I still signed in?"
        await dashboard.chat.submit(text)
        sent = await turns.sent(text)
        await turns.wait_for_refusal()
        rid = sent.request_id
        assert rid, "the browser sent the message without a request id"
        answered = [e.kind for e in turns.of_request(rid)]
        assert not answered, f"the message on a revoked session got frames {answered}"

    async with step("The browser is sent to log in again ('session expired'), holding no token"):
        login = await app.login_page(page).wait_until_loaded()
        assert await login.error_code() == "session_expired", (
            f"the login page shows {await login.error_message()!r} instead of the 'session expired' message"
        )
        assert await app.tokens_in(page) == {"access": None, "refresh": None}, (
            "tokens are still kept in the browser"
        )

    async with step("Stores: nothing of the refused message, the session stays gone"):
        assert len(await app.records.messages(request_id=rid)) == 0, (
            "the message sent on a revoked session was stored"
        )
        assert not (await app.records.session(sid)).exists, "the logged-out session came back"
