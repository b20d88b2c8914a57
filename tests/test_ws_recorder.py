"""The WebSocket recorder against a real WebSocket server and a real Chromium (no mocks)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from playwright.async_api import Browser, async_playwright
from websockets.asyncio.server import ServerConnection, serve

from harness.browser import load_settings, resolve_chromium_executable
from harness.redact import REDACTED
from harness.ws_recorder import NO_CODE_NOTE, WsRecorder, WsWaitTimeout

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJlLXNlY3JldC14eXo"

CONNECT_JS = """
(url) => {
  window.connect = () => {
    const ws = new WebSocket(url);
    window.ws = ws;
    ws.onclose = (event) => {
      if (event.code === 4401 && !window.reconnected) { window.reconnected = true; window.connect(); }
    };
  };
  window.connect();
}
"""


async def _chat_server(conn: ServerConnection) -> None:
    await conn.send(json.dumps({"type": "connection_established", "payload": {"token": JWT}}))
    async for message in conn:
        data = json.loads(message)
        if data.get("type") == "close_me":
            await conn.close(4401, "token expired")
            return
        if data.get("type") == "binary":
            await conn.send(b"\x00\x01bin")
            continue
        await conn.send(json.dumps({"type": "echo", "payload": data}))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def chromium() -> AsyncIterator[Browser]:
    """A real Chromium, resolved like the browser plugin does."""
    settings = load_settings()
    async with async_playwright() as pw:
        executable, _ = resolve_chromium_executable(settings, pw.chromium.executable_path)
        browser = await pw.chromium.launch(**settings.launch_options(executable))
        yield browser
        await browser.close()


@pytest_asyncio.fixture(loop_scope="session")
async def ws_url() -> AsyncIterator[str]:
    async with serve(_chat_server, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws"


async def test_should_record_frames_close_code_and_reconnect(chromium: Browser, ws_url: str) -> None:
    context = await chromium.new_context()
    try:
        recorder = WsRecorder("chat")
        await recorder.attach_context(context)
        page = await context.new_page()
        page_only = WsRecorder("page-only")  # no page-side close listener: Playwright's event alone
        page_only.attach_page(page)
        await page.set_content("<p>chat</p>")
        await page.evaluate(CONNECT_JS, ws_url)

        first = await recorder.wait_for("connection_established")
        await page.evaluate("(t) => window.ws.send(JSON.stringify({type: 'hello', access_token: t}))", JWT)
        echo = await recorder.wait_for("echo", where={"payload.type": "hello"}, after=first)
        assert echo.data["payload"]["access_token"] == JWT  # recorded as sent; redacted only when shown
        await page.evaluate("() => window.ws.send(JSON.stringify({type: 'binary'}))")
        binary = await recorder.wait_for(after=echo)
        assert binary.raw == b"\x00\x01bin" and binary.type is None

        await page.evaluate("() => window.ws.send(JSON.stringify({type: 'close_me'}))")
        closed = await recorder.wait_for_close(4401)
        second = await recorder.wait_for("connection_established", after=binary)

        assert closed.close_reason == "token expired" and recorder.closed_with(4401)
        assert len(recorder.connections) == 2 and recorder.reconnects == 1
        assert second.connection == 2
        assert [f.type for f in recorder.frames(direction="sent")] == ["hello", "binary", "close_me"]
        assert len(recorder.frames("connection_established")) == 2
        recorder.assert_order(["connection_established", "echo", "connection_established"])
        with pytest.raises(AssertionError, match="frame types seen"):
            recorder.assert_order(["echo", "agent_completed"])

        await page_only.wait_for_close()
        assert page_only.connections[0].close_code is None
        assert NO_CODE_NOTE in (page_only.connections[0].close_note or "")

        shown = recorder.format_frames() + repr(recorder) + repr(echo)
        assert JWT not in shown and "c2lnbmF0dXJl" not in shown
        assert REDACTED in shown and "hello" in shown
    finally:
        await context.close()


async def test_should_explain_what_was_seen_when_a_frame_never_arrives(
    chromium: Browser, ws_url: str
) -> None:
    context = await chromium.new_context()
    try:
        recorder = WsRecorder("chat")
        await recorder.attach_context(context)
        page = await context.new_page()
        await page.set_content("<p>chat</p>")
        await page.evaluate(CONNECT_JS, ws_url)
        await recorder.wait_for("connection_established")

        with pytest.raises(WsWaitTimeout) as failure:
            await recorder.wait_for("agent_completed", where={"agent": "data"}, timeout=0.3)

        message = str(failure.value)
        assert "of type 'agent_completed'" in message and "'agent': 'data'" in message
        assert "connection_established" in message  # the last frames seen
        assert JWT not in message and REDACTED in message
    finally:
        await context.close()
