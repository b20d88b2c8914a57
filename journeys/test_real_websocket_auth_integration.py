"""Journey: the WebSocket auth handshake.

The access token of a real login opens the chat socket (token in `Sec-WebSocket-Protocol`,
never in the URL); refresh rotates the tokens; expired, tampered, wrong-audience and revoked
tokens are refused with close 4401 before any chat frame, both for a raw client and in the
browser, where the UI sends the person back to the login page saying the session expired.
A socket opened with a good token does not outlive its session: after a logout elsewhere its
next message closes it with 4401.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from harness.journey import journey
from harness.stack import Stack
from harness.steps import step
from journeys.conftest import UserFactory, claims_of, login_through_ui, stored_tokens
from pages import DashboardPage, LoginPage

COMPONENTS = ["frontend", "auth", "backend", "websocket", "redis"]
UNAUTHORIZED = 4401
HANDSHAKE_TIMEOUT_S = 10.0


# -- a raw WebSocket client, as any program (or attacker) would use it ---------------------------
@dataclass
class Handshake:
    """What a raw client saw: the frames received before the close, and the close code."""

    frames: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None

    @property
    def frame_types(self) -> list[str]:
        return [str(f.get("type")) for f in self.frames]


async def handshake(ws_url: str, token: str, *, stay_for_first_frame: bool = False) -> Handshake:
    """Open /ws offering `jwt.<token>`; collect frames until the server closes (or the first frame)."""
    seen = Handshake()
    async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
        async with websockets.connect(
            ws_url,
            subprotocols=[f"jwt.{token}"],  # type: ignore[list-item]
            open_timeout=HANDSHAKE_TIMEOUT_S,
        ) as ws:
            assert ws.subprotocol == f"jwt.{token}", "the backend did not echo the jwt.<token> subprotocol"
            try:
                async for message in ws:
                    seen.frames.append(json.loads(message))
                    if stay_for_first_frame:
                        break
            except ConnectionClosed:
                pass
            if not stay_for_first_frame:
                seen.close_code = ws.close_code
    return seen


async def assert_refused(ws_url: str, token: str, what: str) -> None:
    """The socket must close with 4401 and deliver no frame at all (no chat frame, no hint of the user)."""
    __tracebackhide__ = True
    seen = await handshake(ws_url, token)
    assert seen.close_code == UNAUTHORIZED, (
        f"a socket opened with {what} closed with code {seen.close_code}, expected {UNAUTHORIZED} (unauthorized)"
    )
    assert not seen.frames, (
        f"a socket opened with {what} received frames before being refused: {seen.frame_types}"
    )


async def assert_accepted(ws_url: str, token: str, user_id: str, what: str) -> dict[str, Any]:
    """The socket must open and greet the right user with connection_established."""
    __tracebackhide__ = True
    seen = await handshake(ws_url, token, stay_for_first_frame=True)
    assert seen.frame_types == ["connection_established"], (
        f"a socket opened with {what} got {seen.frame_types} instead of connection_established"
    )
    payload = seen.frames[0]["payload"]
    assert payload["user_id"] == user_id, (
        f"a socket opened with {what} greets user {payload['user_id']}, the token belongs to {user_id}"
    )
    return payload


# -- tokens ------------------------------------------------------------------------------------------
def flip_signature_byte(token: str) -> str:
    """The same token with one byte of its RS256 signature flipped: header and claims untouched."""
    header, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return f"{header}.{payload}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"


async def signing_key(stack: Stack, http: Any, auth_url: str) -> tuple[bytes, str]:
    """The auth service's RS256 private key and its kid.

    A journey reads the key file only to mint tokens that are correctly signed but wrong in
    one claim (expired, another audience): exactly what a clock-skewed client or an attacker
    holding a leaked key would present. The backend must still refuse them.
    """
    if stack.external or not stack.platform_env.get("TL_JWT_PRIVATE_KEY_FILE"):
        pytest.skip("minting tokens needs the local stack's signing key (TL_JWT_PRIVATE_KEY_FILE)")
    pem = Path(stack.platform_env["TL_JWT_PRIVATE_KEY_FILE"]).read_bytes()
    keys = (await http.get(f"{auth_url}/.well-known/jwks.json")).json()["keys"]
    assert len(keys) == 1, f"the auth service publishes {len(keys)} keys; expected the one it signs with"
    return pem, str(keys[0]["kid"])


def mint(pem: bytes, kid: str, base_claims: dict[str, Any], **overrides: Any) -> str:
    claims = {**base_claims, "jti": uuid.uuid4().hex, **overrides}
    return jwt.encode(claims, pem, algorithm="RS256", headers={"kid": kid})


def unknown_refresh_token() -> str:
    """A well-formed refresh token of no session (a forged secret for a LIVE session would revoke it)."""
    return f"{uuid.uuid4().hex}.{secrets.token_urlsafe(32)}"


# -- journeys ----------------------------------------------------------------------------------------
@journey(name="WebSocket auth handshake", priority="P0", mrr=50_000, components=COMPONENTS)
async def test_login_token_opens_socket_and_refresh_rotates(
    page: Any,
    ws_recorder: Any,
    urls: dict[str, str],
    users: UserFactory,
    http: Any,
    redis: Any,
    stack: Stack,
    provider_name: str,
) -> None:
    """A real login's token opens the chat socket; refresh gives a working token; the old refresh token is dead."""
    ws_url, auth_url = urls["ws_url"], urls["auth_url"]
    user = await users.verified("wsauth", full_name="Sam Socket")

    async with step("Log in through the UI: the chat socket opens with the login's token"):
        dashboard = await login_through_ui(page, urls, user, provider_name)
        established = await ws_recorder.wait_for("connection_established")
        assert await dashboard.chat.connection_state() == "connected", "the chat does not say Connected"
        state = await dashboard.frontend_state()
        assert state["connection"] == "connected", f"the app reports connection {state['connection']!r}"
        assert established.data["payload"]["user_id"] == user.user_id == state["user"]["id"], (
            "the socket greets a different user than the one who logged in"
        )
        socket_url = ws_recorder.connections[0].url
        browser_tokens = await stored_tokens(page)
        assert browser_tokens["access"], "no access token kept in localStorage after login"
        assert browser_tokens["access"] not in socket_url and "token" not in socket_url.lower(), (
            "the access token travels in the WebSocket URL (it would land in server logs)"
        )

    async with step("Redis holds the login's session auth:session:{sid}"):
        browser_sid = claims_of(str(browser_tokens["access"]))["sid"]
        session = await redis.key(f"auth:session:{browser_sid}")
        assert session.exists, "no auth:session key in Redis for the session the browser holds"
        assert session.value.get("user_id") == user.user_id, "the Redis session names another user"
        assert session.ttl > 0, "the Redis session never expires"

    async with step("The same token opens a raw socket (jwt.<token> subprotocol)"):
        await assert_accepted(
            ws_url, str(browser_tokens["access"]), str(user.user_id), "the login's access token"
        )

    async with step("Refresh (POST /auth/refresh) gives a new access token that opens the socket"):
        api_tokens = await users.login(user)  # a second session, so the browser's tokens stay untouched
        api_sid = claims_of(api_tokens["access_token"])["sid"]
        assert (await redis.key(f"auth:session:{api_sid}")).exists, "login over the API made no Redis session"
        response = await http.post(
            f"{auth_url}/auth/refresh", json={"refresh_token": api_tokens["refresh_token"]}
        )
        assert response.status_code == 200, f"refresh answered {response.status_code}: {response.text}"
        renewed = response.json()
        assert renewed["access_token"] != api_tokens["access_token"], "refresh returned the same access token"
        assert renewed["refresh_token"] != api_tokens["refresh_token"], (
            "refresh did not rotate the refresh token"
        )
        assert claims_of(renewed["access_token"])["sid"] == api_sid, (
            "refresh moved the token to another session"
        )
        await assert_accepted(
            ws_url, renewed["access_token"], str(user.user_id), "the refreshed access token"
        )

    async with step("The old refresh token is refused, and its reuse ends that session"):
        replay = await http.post(
            f"{auth_url}/auth/refresh", json={"refresh_token": api_tokens["refresh_token"]}
        )
        assert replay.status_code == 401, (
            f"refreshing with an already-used refresh token answered {replay.status_code}, expected 401"
        )
        # Reuse of a rotated refresh token looks like theft: the whole session is revoked.
        gone = await redis.key(f"auth:session:{api_sid}")
        assert not gone.exists, "a replayed refresh token left its session alive in Redis"
        await assert_refused(
            ws_url, renewed["access_token"], "an access token of a session revoked for reuse"
        )

    async with step("The browser's own session is untouched by the other session's revocation"):
        assert (await redis.key(f"auth:session:{browser_sid}")).exists, (
            "revoking one session removed the browser's session too"
        )
        assert await dashboard.chat.connection_state() == "connected", (
            "the browser's chat lost its connection"
        )

    async with step("An expired access token in the browser is renewed silently with the refresh token"):
        pem, kid = await signing_key(stack, http, auth_url)
        now = int(time.time())
        expired = mint(pem, kid, claims_of(str(browser_tokens["access"])), iat=now - 1800, exp=now - 600)
        await page.evaluate("(t) => localStorage.setItem('tl.access_token', t)", expired)
        mark = len(ws_recorder.frames())
        dashboard = await DashboardPage(page, urls["frontend_url"]).reload()
        closed = await ws_recorder.wait_for_close(UNAUTHORIZED)
        assert closed.close_code == UNAUTHORIZED
        await ws_recorder.wait_for("connection_established", after=mark - 1)
        assert "/dashboard" in page.url, (
            f"the UI left the dashboard ({page.url}) although the refresh token was valid"
        )
        after = await stored_tokens(page)
        assert after["access"] and after["access"] != expired, "the expired access token was not replaced"
        assert after["refresh"] != browser_tokens["refresh"], "the refresh token was not rotated"
        assert claims_of(str(after["access"]))["sid"] == browser_sid, "renewal started a new session"
        assert (await redis.key(f"auth:session:{browser_sid}")).exists, "renewal lost the Redis session"


BAD_TOKENS = ["expired", "tampered signature", "wrong audience", "revoked by logout"]


@pytest.mark.parametrize("case", BAD_TOKENS)
@journey(name="WebSocket auth handshake", priority="P0", mrr=50_000, components=COMPONENTS)
async def test_socket_refuses_bad_tokens(
    case: str,
    page: Any,
    ws_recorder: Any,
    urls: dict[str, str],
    users: UserFactory,
    http: Any,
    redis: Any,
    stack: Stack,
    provider_name: str,
) -> None:
    """Expired, tampered, wrong-audience and revoked tokens get close 4401 and no frame; the UI asks to log in."""
    ws_url, auth_url = urls["ws_url"], urls["auth_url"]
    user = await users.logged_in("wsbad")
    genuine = user.access_token
    sid = claims_of(genuine)["sid"]
    refresh_in_browser = unknown_refresh_token()

    async with step("Control: the genuine token of the session opens the socket"):
        await assert_accepted(ws_url, genuine, str(user.user_id), "the genuine access token")
        assert (await redis.key(f"auth:session:{sid}")).exists, "login made no auth:session key in Redis"

    async with step(f"Craft the bad token ({case})"):
        if case == "tampered signature":
            bad = flip_signature_byte(genuine)
        elif case == "revoked by logout":
            response = await http.post(
                f"{auth_url}/auth/logout", headers={"Authorization": f"Bearer {genuine}"}
            )
            assert response.status_code == 204, f"logout answered {response.status_code}: {response.text}"
            assert not (await redis.key(f"auth:session:{sid}")).exists, (
                "auth:session is still in Redis after logout"
            )
            bad = genuine
            refresh_in_browser = str(user.tokens["refresh_token"])  # the real one, dead with its session
        else:
            pem, kid = await signing_key(stack, http, auth_url)
            now = int(time.time())
            if case == "expired":
                bad = mint(pem, kid, claims_of(genuine), iat=now - 1800, exp=now - 600)
            else:
                bad = mint(pem, kid, claims_of(genuine), aud="someone-elses-api")
            assert claims_of(bad)["sid"] == sid, "the crafted token must name the live session"

    async with step("A raw client offering jwt.<bad token> gets close 4401 and no frame"):
        await assert_refused(ws_url, bad, f"the {case} token")

    async with step("The browser with the bad token is sent to log in again ('session expired')"):
        login = await LoginPage(page, urls["frontend_url"], provider_name).open()
        await page.evaluate(
            "([a, r]) => { localStorage.setItem('tl.access_token', a); localStorage.setItem('tl.refresh_token', r); }",
            [bad, refresh_in_browser],
        )
        await page.goto(login.url_for("/dashboard"))
        await login.wait_until_loaded()
        assert await login.error_code() == "session_expired", (
            f"the login page shows {await login.error_message()!r} instead of the 'session expired' message"
        )
        message = await login.error_message() or ""
        assert "session has expired" in message.lower(), f"the login page says {message!r}"
        closed = await ws_recorder.wait_for_close(UNAUTHORIZED)
        assert closed.close_code == UNAUTHORIZED
        received = ws_recorder.frames(direction="received")
        assert not received, f"the browser received frames on a refused socket: {[f.type for f in received]}"
        left = await stored_tokens(page)
        assert left == {"access": None, "refresh": None}, "the bad tokens are still kept in localStorage"

    async with step("Stores: the refusal ended no live session, the logout's stays gone"):
        session = await redis.key(f"auth:session:{sid}")
        if case == "revoked by logout":
            assert not session.exists, "the logged-out session came back in Redis"
        else:
            assert session.exists, f"refusing a {case} token revoked the user's real session"
            await assert_accepted(
                ws_url, genuine, str(user.user_id), "the genuine access token, after the refusal"
            )


@journey(name="WebSocket auth handshake", priority="P0", mrr=50_000, components=[*COMPONENTS, "postgres"])
async def test_logout_elsewhere_closes_the_open_socket(
    page: Any,
    ws_recorder: Any,
    urls: dict[str, str],
    users: UserFactory,
    http: Any,
    redis: Any,
    pg: Any,
    provider_name: str,
) -> None:
    """A socket opened with a good token does not outlive its session: after a logout elsewhere,
    the next message closes it with 4401 before any turn starts, and the UI asks to log in."""
    user = await users.verified("wsopen", full_name="Olive Open")

    async with step("Log in through the UI: the chat is connected"):
        dashboard = await login_through_ui(page, urls, user, provider_name)
        await ws_recorder.wait_for("connection_established")
        access = str((await stored_tokens(page))["access"])
        sid = claims_of(access)["sid"]

    async with step("The session is ended elsewhere (POST /auth/logout with the same token)"):
        response = await http.post(
            f"{urls['auth_url']}/auth/logout", headers={"Authorization": f"Bearer {access}"}
        )
        assert response.status_code == 204, f"logout answered {response.status_code}: {response.text}"
        assert not (await redis.key(f"auth:session:{sid}")).exists, (
            "auth:session is still in Redis after logout"
        )
        assert await dashboard.chat.connection_state() == "connected", (
            "the open socket was expected to stay up until it is next used"
        )

    async with step("The next message on the open socket: close 4401, no turn starts"):
        text = "Am I still signed in?"
        await dashboard.chat.submit(text)
        sent = await ws_recorder.wait_for("user_message", where={"payload.content": text}, direction="sent")
        closed = await ws_recorder.wait_for_close(UNAUTHORIZED)
        assert closed.close_code == UNAUTHORIZED
        rid = sent.data["request_id"]
        answered = [
            f.type
            for f in ws_recorder.frames(direction="received")
            if isinstance(f.data, dict) and f.data.get("request_id") == rid
        ]
        assert not answered, f"the message on a revoked session got frames {answered}"

    async with step("The browser is sent to log in again ('session expired'), holding no token"):
        login = await LoginPage(page, urls["frontend_url"], provider_name).wait_until_loaded()
        assert await login.error_code() == "session_expired", (
            f"the login page shows {await login.error_message()!r} instead of the 'session expired' message"
        )
        assert await stored_tokens(page) == {"access": None, "refresh": None}, (
            "tokens are still in localStorage"
        )

    async with step("Stores: nothing of the refused message, the session stays gone"):
        assert await pg.backend.count("messages", "request_id = $1", rid) == 0, (
            "the message sent on a revoked session was stored"
        )
        assert not (await redis.key(f"auth:session:{sid}")).exists, "the logged-out session came back"
