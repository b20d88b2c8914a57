"""The frontend on its own: its process, routes, runtime config, and screens rendered in Chromium.

The services behind it are faked with Playwright routing (`page.route`, `page.route_web_socket`);
that is right HERE ONLY, because these tests pin down the frontend alone. Journeys use the real stack.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, Request, Route, WebSocketRoute, async_playwright, expect

from targets.reference.pages import DashboardPage, LoginPage, OAuthConsentPage, SignupPage
from targets.reference.pages.signup import CheckEmailState

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("TL_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("TL_FRONTEND_SHOTS", "/tmp/frontend-shots"))
FAKE_AUTH = "http://127.0.0.1:59901"
FAKE_BACKEND = "http://127.0.0.1:59902"
WS_URL = "ws://127.0.0.1:59902/ws"
USER = {
    "user_id": "0b0e6c3e-0000-4000-8000-000000000001",
    "email": "ada@example.com",
    "full_name": "Ada Lovelace",
}
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Expose-Headers": "Retry-After, X-Request-ID",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class FrontendProcess:
    url: str
    started_in: float
    log: Path


@pytest.fixture(scope="module")
def frontend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontendProcess]:
    """`python -m stack.frontend` on a free port, pointed at fake auth/backend URLs."""
    port = _free_port()
    log = tmp_path_factory.mktemp("frontend") / "frontend.log"
    env = {
        **os.environ,
        "TL_AUTH_URL": FAKE_AUTH,
        "TL_BACKEND_URL": FAKE_BACKEND,
        "TL_OIDC_PROVIDER": "acme",
        "TL_OIDC_PROVIDER_NAME": "Acme ID",
    }
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stack.frontend", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = started + 10
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"frontend exited with {proc.returncode} before it was ready; log {log}:\n{log.read_text()}"
                )
            try:
                if httpx.get(f"{url}/health", timeout=0.5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"frontend not healthy within 10 s; log {log}:\n{log.read_text()}")
            time.sleep(0.02)  # readiness poll of a child process, not a test wait
        yield FrontendProcess(url=url, started_in=time.monotonic() - started, log=log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
async def chromium() -> AsyncIterator[Browser]:
    """Headless Debian Chromium (Playwright cannot download browsers here)."""
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 -- one stat at fixture setup
        pytest.skip(f"no Chromium at {CHROMIUM} (set TL_CHROMIUM)")
    SHOTS.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        await browser.close()


@pytest.fixture
async def page(chromium: Browser) -> AsyncIterator[Page]:
    """A fresh context and page per test; page errors fail the test."""
    context = await chromium.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    await context.close()
    assert not errors, f"the frontend raised in the browser: {errors}"


# ---------------------------------------------------------------------------- fakes


@dataclass
class Seen:
    method: str
    url: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeServices:
    """Fake auth + backend HTTP answers keyed by (method, path); records every request."""

    page: Page
    answers: dict[tuple[str, str], list[tuple[int, Any, dict[str, str]]]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def answer(
        self, method: str, path: str, status: int, body: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        """Queue an answer; the last queued one repeats."""
        self.answers.setdefault((method, path), []).append((status, body, headers or {}))

    async def install(self) -> None:
        await self.page.route(re.compile(r"^http://127\.0\.0\.1:5990[12]/"), self._handle)

    async def _handle(self, route: Route, request: Request) -> None:
        path = re.sub(r"^http://[^/]+", "", request.url).split("?")[0]
        if request.method == "OPTIONS":
            await route.fulfill(status=204, headers=CORS)
            return
        body = request.post_data_json if request.post_data else None
        self.seen.append(Seen(request.method, request.url, await request.all_headers(), body))
        queue = self.answers.get((request.method, path))
        if not queue:
            await route.fulfill(
                status=404, json={"detail": f"no fake answer for {request.method} {path}"}, headers=CORS
            )
            return
        status, payload, headers = queue.pop(0) if len(queue) > 1 else queue[0]
        await route.fulfill(
            status=status,
            headers={**CORS, **headers},
            body=json.dumps(payload) if payload is not None else "",
        )

    def requests_to(self, path: str) -> list[Seen]:
        return [s for s in self.seen if re.sub(r"^http://[^/]+", "", s.url).split("?")[0] == path]


@dataclass
class FakeChatSocket:
    """The backend's /ws, faked in the page: every connection, every frame the page sent."""

    connections: list[WebSocketRoute] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    on_user_message: Callable[[WebSocketRoute, dict[str, Any]], None] | None = None
    active_thread_id: str | None = None
    event_id: int = 0
    refuse_next: int = 0  # connections to drop at once (code 1011), as a backend that is down would

    def send(
        self, ws: WebSocketRoute, type_: str, payload: dict[str, Any], request_id: str | None = None
    ) -> None:
        self.event_id += 1
        frame = {
            "type": type_,
            "payload": payload,
            "request_id": request_id,
            "event_id": self.event_id,
            "ts": time.time(),
        }
        ws.send(json.dumps(frame))

    async def handler(self, ws: WebSocketRoute) -> None:
        self.connections.append(ws)
        if self.refuse_next > 0:
            self.refuse_next -= 1
            await ws.close(code=1011, reason="backend down")
            return

        def on_message(message: str | bytes) -> None:
            frame = json.loads(message)
            self.received.append(frame)
            if frame.get("type") == "user_message" and self.on_user_message:
                self.on_user_message(ws, frame)

        ws.on_message(on_message)
        self.send(
            ws,
            "connection_established",
            {
                "user_id": USER["user_id"],
                "active_thread_id": self.active_thread_id,
                "last_event_id": self.event_id,
            },
        )


def data_agent_turn(
    chat: FakeChatSocket, thread_id: str = "11111111-1111-4111-8111-111111111111"
) -> Callable:
    """A user_message handler that answers like the data agent, streaming word by word."""

    def reply(ws: WebSocketRoute, frame: dict[str, Any]) -> None:
        rid, run = frame["request_id"], f"run-{len(chat.received)}"
        content = frame["payload"]["content"]
        text = f"Stand-in reply to: {content} | get_my_usage returned: 42 tokens"
        chat.send(ws, "agent_started", {"agent": "data", "thread_id": thread_id, "run_id": run}, rid)
        chat.send(ws, "agent_thinking", {"agent": "data", "run_id": run}, rid)
        chat.send(ws, "tool_executing", {"tool": "get_my_usage", "args": {}, "run_id": run}, rid)
        chat.send(
            ws, "tool_completed", {"tool": "get_my_usage", "result": {"total_tokens": 42}, "run_id": run}, rid
        )
        for word in re.findall(r"\S+\s*", text):
            chat.send(ws, "agent_stream", {"chunk": word, "run_id": run}, rid)
        chat.send(
            ws,
            "agent_completed",
            {
                "content": text,
                "agent": "data",
                "thread_id": thread_id,
                "run_id": run,
                "message_id": "m-1",
                "usage": {"prompt_tokens": 30, "completion_tokens": 12, "cost_usd": "0.000108"},
            },
            rid,
        )

    return reply


async def fake_platform(page: Page, *, tokens: bool = True) -> tuple[FakeServices, FakeChatSocket]:
    """Install fake auth/backend answers for a signed-in Ada and (optionally) seed her tokens."""
    services = FakeServices(page)
    services.answer("GET", "/api/me", 200, {**USER, "plan": "pro", "created_at": "2025-11-01T10:00:00Z"})
    services.answer(
        "GET",
        "/api/usage",
        200,
        {
            "prompt_tokens": 1200,
            "completion_tokens": 345,
            "total_tokens": 1545,
            "cost_usd": "0.003780",
            "events": 7,
        },
    )
    services.answer(
        "GET",
        "/api/threads",
        200,
        {
            "threads": [
                {"id": "11111111-1111-4111-8111-111111111111", "title": "How many tokens did I use?"},
                {"id": "22222222-2222-4222-8222-222222222222", "title": "Make my prompts cheaper"},
            ]
        },
    )
    services.answer(
        "GET",
        "/api/threads/22222222-2222-4222-8222-222222222222/messages",
        200,
        {
            "messages": [
                {"id": "a", "role": "user", "content": "How can I make my prompts cheaper?", "agent": None},
                {
                    "id": "b",
                    "role": "assistant",
                    "content": "Trim the system prompt and cache repeated context.",
                    "agent": "optimization",
                },
            ]
        },
    )
    services.answer(
        "GET", "/api/threads/11111111-1111-4111-8111-111111111111/messages", 200, {"messages": []}
    )
    services.answer("POST", "/auth/logout", 204)
    await services.install()
    chat = FakeChatSocket()
    await page.route_web_socket(WS_URL, chat.handler)
    if tokens:
        await page.add_init_script(
            "if (!sessionStorage.getItem('seeded')) { sessionStorage.setItem('seeded', '1');"
            " localStorage.setItem('tl.access_token', 'access-1'); localStorage.setItem('tl.refresh_token', 'refresh-1'); }"
        )
    return services, chat


# ---------------------------------------------------------------------------- process and routes


def test_should_answer_health(frontend: FrontendProcess) -> None:
    # Start time is measured by scripts/bench_start.py, never asserted: a loaded CI box is not a bug.
    assert httpx.get(f"{frontend.url}/health").json()["status"] == "ok"


@pytest.mark.parametrize("route", ["/", "/signup", "/login", "/dashboard", "/oauth/complete"])
def test_should_serve_the_app_on_every_history_route(frontend: FrontendProcess, route: str) -> None:
    response = httpx.get(frontend.url + route)
    assert response.status_code == 200, f"{route} answered {response.status_code}"
    assert response.headers["content-type"].startswith("text/html")
    assert '<main id="main"' in response.text and "/static/js/app.js" in response.text


def test_should_serve_runtime_config_from_the_environment(frontend: FrontendProcess) -> None:
    response = httpx.get(f"{frontend.url}/config.js")
    assert response.status_code == 200
    assert "javascript" in response.headers["content-type"]
    assert response.headers.get("cache-control") == "no-store"
    body = response.text
    for expected in (
        f'"authUrl": "{FAKE_AUTH}"',
        f'"backendUrl": "{FAKE_BACKEND}"',
        '"wsUrl": "ws://127.0.0.1:59902"',
    ):
        assert expected in body, f"/config.js lacks {expected}: {body}"
    assert '"oidcProvider": "acme"' in body and '"oidcProviderName": "Acme ID"' in body


def test_should_serve_static_modules_and_404_unknown_paths(frontend: FrontendProcess) -> None:
    js = httpx.get(f"{frontend.url}/static/js/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert httpx.get(f"{frontend.url}/static/styles.css").status_code == 200
    assert httpx.get(f"{frontend.url}/no/such/page").status_code == 404


# ---------------------------------------------------------------------------- signup


async def test_should_render_signup_with_labelled_fields(frontend: FrontendProcess, page: Page) -> None:
    signup = await SignupPage(page, frontend.url).open()
    for label in ("Full name", "Email", "Password"):
        await expect(page.get_by_label(label, exact=True)).to_be_visible()
    await expect(signup.submit_button).to_be_enabled()
    await expect(page.get_by_role("banner")).to_contain_text("Throughline Chat")
    await expect(page.get_by_role("link", name="Log in")).to_have_attribute("href", "/login")
    await page.screenshot(path=str(SHOTS / "signup.png"), full_page=True)


async def test_should_show_field_errors_from_a_422(frontend: FrontendProcess, page: Page) -> None:
    services = FakeServices(page)
    services.answer(
        "POST",
        "/auth/signup",
        422,
        {
            "detail": "validation failed",
            "errors": [
                {"field": "password", "message": "Password must be at least 10 characters."},
                {"field": "email", "message": "Enter a valid email address."},
            ],
        },
    )
    await services.install()
    signup = await SignupPage(page, frontend.url).open()
    result = await signup.fill_and_submit("Ada Lovelace", "ada@", "short")
    assert isinstance(result, SignupPage), "a 422 must keep the signup form on screen"
    assert await signup.field_error("Password") == "Password must be at least 10 characters."
    assert await signup.field_error("Email") == "Enter a valid email address."
    assert await signup.field_error("Full name") is None
    await expect(page.get_by_label("Password", exact=True)).to_have_attribute("aria-invalid", "true")
    await expect(page.get_by_label("Password", exact=True)).to_have_accessible_description(
        re.compile("Password must be at least 10 characters")
    )
    sent = services.requests_to("/auth/signup")[0]
    assert sent.body == {"full_name": "Ada Lovelace", "email": "ada@", "password": "short"}
    assert re.fullmatch(r"[0-9a-f-]{36}", sent.headers.get("x-request-id", "")), "signup sent no X-Request-ID"
    await page.screenshot(path=str(SHOTS / "signup-errors.png"), full_page=True)


async def test_should_say_the_email_is_taken_on_409(frontend: FrontendProcess, page: Page) -> None:
    services = FakeServices(page)
    services.answer("POST", "/auth/signup", 409, {"detail": "email already registered"})
    await services.install()
    signup = await SignupPage(page, frontend.url).open()
    await signup.fill_and_submit("Ada Lovelace", "ada@example.com", "correct-horse-42")
    assert await signup.field_error("Email") == "An account with this email already exists."
    assert "An account with this email already exists" in (await signup.form_error() or "")


async def test_should_show_check_your_email_after_signup(frontend: FrontendProcess, page: Page) -> None:
    services = FakeServices(page)
    services.answer("POST", "/auth/signup", 201, {"user_id": USER["user_id"]})
    await services.install()
    signup = await SignupPage(page, frontend.url).open()
    done = await signup.fill_and_submit("Ada Lovelace", "ada@example.com", "correct-horse-42")
    assert isinstance(done, CheckEmailState), "signup did not reach 'Check your email'"
    assert await done.address() == "ada@example.com"
    await page.screenshot(path=str(SHOTS / "check-email.png"), full_page=True)


# ---------------------------------------------------------------------------- login


async def test_should_render_login_with_provider_button(frontend: FrontendProcess, page: Page) -> None:
    login = await LoginPage(page, frontend.url).open({"verified": "1"})
    await expect(login.email).to_be_visible()
    await expect(login.password).to_be_visible()
    await expect(login.provider_button).to_be_visible()
    await expect(page.get_by_role("link", name="Create an account")).to_have_attribute("href", "/signup")
    assert await login.notice_message() == "Email verified. You can log in now."
    assert await login.error_message() is None
    await page.screenshot(path=str(SHOTS / "login.png"), full_page=True)


@pytest.mark.parametrize(
    ("code", "says"),
    [
        ("oauth_state", "couldn't verify that sign-in with Acme ID"),
        ("oauth_denied", "Sign-in with Acme ID was cancelled"),
        ("oauth_failed", "Sign-in with Acme ID failed"),
        ("invalid_verification", "verification link is invalid or has expired"),
        ("session_expired", "Your session has expired. Please log in again."),
    ],
)
async def test_should_explain_each_login_error_code(
    frontend: FrontendProcess, page: Page, code: str, says: str
) -> None:
    login = await LoginPage(page, frontend.url).open({"error": code})
    assert says in (await login.error_message() or ""), f"?error={code} shows {await login.error_message()!r}"
    assert await login.error_code() == code


@pytest.mark.parametrize(
    ("status", "body", "headers", "says"),
    [
        (401, {"detail": "invalid credentials"}, {}, "Wrong email or password"),
        (403, {"detail": "email not verified"}, {}, "Please verify your email first"),
        (
            429,
            {"detail": "too many", "retry_after": 12},
            {"Retry-After": "12"},
            "Too many attempts. Try again in 12 seconds",
        ),
    ],
)
async def test_should_explain_refused_logins(
    frontend: FrontendProcess, page: Page, status: int, body: dict, headers: dict, says: str
) -> None:
    services = FakeServices(page)
    services.answer("POST", "/auth/login", status, body, headers)
    await services.install()
    login = await LoginPage(page, frontend.url).open()
    message = await login.login_expecting_error("ada@example.com", "not-her-password")
    assert says in message, f"HTTP {status} on login shows {message!r}"
    assert not await page.evaluate("localStorage.getItem('tl.access_token')")


async def test_should_start_oauth_at_the_auth_service(frontend: FrontendProcess, page: Page) -> None:
    started: list[str] = []

    async def provider(route: Route, request: Request) -> None:
        started.append(request.url)
        await route.fulfill(
            content_type="text/html", body="<!doctype html><title>Acme ID</title><h1>Sign in to Acme ID</h1>"
        )

    await page.route(f"{FAKE_AUTH}/auth/oauth/**", provider)
    login = await LoginPage(page, frontend.url).open()
    consent = await login.continue_with_provider()
    assert isinstance(consent, OAuthConsentPage)
    assert started == [f"{FAKE_AUTH}/auth/oauth/acme/start"]


async def test_should_log_in_and_keep_tokens_where_wiring_says(frontend: FrontendProcess, page: Page) -> None:
    services, chat = await fake_platform(page, tokens=False)
    services.answer(
        "POST",
        "/auth/login",
        200,
        {"access_token": "access-1", "refresh_token": "refresh-1", "token_type": "bearer", "expires_in": 900},
    )
    dashboard = await LoginPage(page, frontend.url).open()
    dashboard_page = await dashboard.login("ada@example.com", "correct-horse-42")
    assert isinstance(dashboard_page, DashboardPage)
    stored = await page.evaluate(
        "[localStorage.getItem('tl.access_token'), localStorage.getItem('tl.refresh_token')]"
    )
    assert stored == ["access-1", "refresh-1"]
    me = services.requests_to("/api/me")[0]
    assert me.headers["authorization"] == "Bearer access-1"
    assert len(chat.connections) == 1


# ---------------------------------------------------------------------------- dashboard and chat


async def test_should_render_the_dashboard_and_stream_a_reply(frontend: FrontendProcess, page: Page) -> None:
    services, chat = await fake_platform(page)
    chat.on_user_message = data_agent_turn(chat)
    dashboard = await DashboardPage(page, frontend.url, expected_name="Ada Lovelace").open()

    profile = await dashboard.profile()
    assert (profile.full_name, profile.email, profile.plan) == ("Ada Lovelace", "ada@example.com", "pro")
    usage = await dashboard.usage_this_month()
    assert usage.tokens == 1545 and str(usage.cost_usd) == "0.003780"
    await expect(dashboard.usage_card).to_contain_text("$0.00378")
    assert await dashboard.chat.threads() == ["How many tokens did I use?", "Make my prompts cheaper"]

    history = await dashboard.chat.open_thread("Make my prompts cheaper")
    assert [(m.role, m.agent) for m in history] == [("user", None), ("assistant", "optimization")]
    state = await dashboard.frontend_state()
    assert state == {
        "user": {
            "id": USER["user_id"],
            "email": "ada@example.com",
            "full_name": "Ada Lovelace",
            "plan": "pro",
        },
        "activeThreadId": "22222222-2222-4222-8222-222222222222",
        "connection": "connected",
    }
    assert "access-1" not in json.dumps(state), "frontend state leaks the access token"

    await dashboard.chat.new_chat()
    reply = await dashboard.chat.ask(
        "How many tokens did I use this month?", contains="get_my_usage returned"
    )
    assert reply.agent == "data"
    assert reply.tools == ["get_my_usage"]
    assert reply.chunks > 3, "the reply was not rendered chunk by chunk"
    await expect(page.get_by_test_id("agent-badge").last).to_have_text("data agent")

    sent = [f for f in chat.received if f["type"] == "user_message"]
    assert sent[-1]["payload"] == {"content": "How many tokens did I use this month?"}
    assert re.fullmatch(r"[0-9a-f-]{36}", sent[-1]["request_id"])
    assert (await dashboard.frontend_state())["activeThreadId"] == "11111111-1111-4111-8111-111111111111"
    for request in services.seen:
        assert request.headers.get("authorization") == "Bearer access-1", (
            f"{request.url} without Authorization"
        )
        assert request.headers.get("x-request-id"), f"{request.url} without X-Request-ID"
    await page.screenshot(path=str(SHOTS / "dashboard.png"))


async def test_should_show_errors_and_rate_limits_from_the_socket(
    frontend: FrontendProcess, page: Page
) -> None:
    _, chat = await fake_platform(page)
    outcomes = iter(["error", "rate"])

    def refuse(ws: WebSocketRoute, frame: dict[str, Any]) -> None:
        if next(outcomes) == "error":
            msg = {
                "code": "llm_unavailable",
                "message": "the language model is unavailable",
                "recoverable": True,
            }
            chat.send(ws, "error", msg, frame["request_id"])
        else:
            chat.send(ws, "rate_limited", {"retry_after": 7, "scope": "ws"}, frame["request_id"])

    chat.on_user_message = refuse
    dashboard = await DashboardPage(page, frontend.url).open()
    await dashboard.chat.send("hello?")
    assert "The assistant is unavailable right now" in await dashboard.wait_for_error_banner("assistant")
    await dashboard.chat.send("hello again?")
    notice = await dashboard.wait_for_rate_limit_notice()
    assert notice.retry_after == 7 and "Try again in 7 seconds" in notice.text, notice
    await page.screenshot(path=str(SHOTS / "dashboard-errors.png"))


async def test_should_reconnect_and_restore_the_conversation(frontend: FrontendProcess, page: Page) -> None:
    services, chat = await fake_platform(page)
    chat.active_thread_id = "22222222-2222-4222-8222-222222222222"
    dashboard = await DashboardPage(page, frontend.url).open()
    await dashboard.chat.wait_for_messages(2)
    chat.refuse_next = 2
    await chat.connections[0].close(code=1012, reason="service restart")
    await dashboard.chat.wait_for_connection("reconnecting")
    assert "Chat service unreachable — reconnecting…" in await dashboard.wait_for_error_banner("Chat service")
    await dashboard.chat.wait_for_connection("connected")
    assert len(chat.connections) == 4, f"expected 3 reconnect attempts, saw {len(chat.connections) - 1}"
    assert (await dashboard.frontend_state())["activeThreadId"] == chat.active_thread_id
    assert len(services.requests_to(f"/api/threads/{chat.active_thread_id}/messages")) >= 2
    assert await dashboard.chat.active_thread() == "Make my prompts cheaper"
    await dashboard.wait_for_no_error_banner()

    # A reload keeps the session and restores the same conversation.
    dashboard = await dashboard.reload()
    assert [m.agent for m in await dashboard.chat.wait_for_messages(2)] == [None, "optimization"]


async def test_should_refresh_once_on_4401_then_give_up(frontend: FrontendProcess, page: Page) -> None:
    services, chat = await fake_platform(page)
    services.answer("POST", "/auth/refresh", 200, {"access_token": "access-2", "refresh_token": "refresh-2"})
    services.answer("POST", "/auth/refresh", 401, {"detail": "refresh token revoked"})
    dashboard = await DashboardPage(page, frontend.url).open()

    await chat.connections[-1].close(code=4401, reason="token expired")
    await dashboard.chat.wait_for_connection("connected")
    assert len(chat.connections) == 2
    assert await page.evaluate("localStorage.getItem('tl.access_token')") == "access-2"
    assert services.requests_to("/auth/refresh")[0].body == {"refresh_token": "refresh-1"}

    await chat.connections[-1].close(code=4401, reason="session revoked")
    login = await LoginPage(page, frontend.url).wait_until_loaded()
    assert "session has expired" in (await login.error_message() or "")
    assert page.url.endswith("/login?error=session_expired")
    assert await page.evaluate("localStorage.getItem('tl.access_token')") is None


async def test_should_retry_an_http_401_after_one_refresh(frontend: FrontendProcess, page: Page) -> None:
    services, _ = await fake_platform(page)
    services.answers[("GET", "/api/me")].insert(0, (401, {"detail": "expired"}, {}))
    services.answer("POST", "/auth/refresh", 200, {"access_token": "access-2", "refresh_token": "refresh-2"})
    dashboard = await DashboardPage(page, frontend.url, expected_name="Ada Lovelace").open()
    me = [r.headers["authorization"] for r in services.requests_to("/api/me")]
    assert me[0] == "Bearer access-1" and me[-1] == "Bearer access-2", f"/api/me calls: {me}"
    assert len(services.requests_to("/auth/refresh")) == 1, "a 401 must try exactly one refresh"
    assert (await dashboard.profile()).email == "ada@example.com"


async def test_should_complete_oauth_from_the_fragment(frontend: FrontendProcess, page: Page) -> None:
    await fake_platform(page, tokens=False)
    await page.goto(
        f"{frontend.url}/oauth/complete#access_token=oauth-a&refresh_token=oauth-r&token_type=bearer"
    )
    await DashboardPage(page, frontend.url, expected_name="Ada Lovelace").wait_until_loaded()
    assert page.url == f"{frontend.url}/dashboard", f"tokens left in the address bar: {page.url}"
    assert await page.evaluate("localStorage.getItem('tl.access_token')") == "oauth-a"


async def test_should_log_out(frontend: FrontendProcess, page: Page) -> None:
    services, _ = await fake_platform(page)
    dashboard = await DashboardPage(page, frontend.url).open()
    login = await dashboard.logout()
    assert await login.notice_message() == "You have been logged out."
    assert services.requests_to("/auth/logout")[0].headers["authorization"] == "Bearer access-1"
    assert await page.evaluate("localStorage.getItem('tl.access_token')") is None
