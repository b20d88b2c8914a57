"""Journey fixtures: fresh users through the real API, the third-party stand-ins' controls.

Every journey makes its own users (unique emails) and never depends on another
journey's data. Nothing of the platform is mocked: users are created through the real
auth service, their verification mail is read from the SMTP sink, and the stand-ins
are steered only through their own control endpoints.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest

from harness.stack import Stack
from pages import DashboardPage, Inbox, LoginPage

PASSWORD = "correct-horse-42"


@dataclass
class TestUser:
    """A platform user made for one journey."""

    __test__ = False  # not a test class, despite the name

    email: str
    full_name: str
    password: str = PASSWORD
    user_id: str | None = None
    tokens: dict[str, Any] = field(default_factory=dict)

    @property
    def access_token(self) -> str:
        return str(self.tokens["access_token"])


def claims_of(token: str) -> dict[str, Any]:
    """The claims of a token, unverified (a journey only reads what the browser already holds)."""
    return dict(jwt.decode(token, options={"verify_signature": False}))


async def stored_tokens(page: Any) -> dict[str, str | None]:
    """The tokens the frontend keeps in localStorage: {"access": ..., "refresh": ...} (None when absent)."""
    return dict(
        await page.evaluate(
            "() => ({access: localStorage.getItem('tl.access_token'), refresh: localStorage.getItem('tl.refresh_token')})"
        )
    )


def unique_email(tag: str = "user") -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}@example.test"


@pytest.fixture(scope="session")
def urls(stack: Stack) -> dict[str, str]:
    """URLs and DSNs of the platform under test."""
    return stack.urls


@pytest.fixture(scope="session")
def provider_name() -> str:
    import os

    return os.environ.get("THROUGHLINE_STACK_OIDC_PROVIDER_NAME", "Acme ID")


@pytest.fixture
async def http(urls: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    """A plain HTTP client for the platform's public APIs."""
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


@pytest.fixture
async def inbox(urls: dict[str, str]) -> AsyncIterator[Inbox]:
    """The SMTP sink's mailbox."""
    async with Inbox(urls["smtp_sink_url"]) as box:
        yield box


class UserFactory:
    """Creates users through the real auth API (signup, mail, verify link, login)."""

    def __init__(self, http: httpx.AsyncClient, inbox: Inbox, urls: dict[str, str]) -> None:
        self.http = http
        self.inbox = inbox
        self.urls = urls
        self.created: list[TestUser] = []

    async def signup(self, tag: str = "user", full_name: str | None = None) -> TestUser:
        """Signed up, not verified."""
        user = TestUser(email=unique_email(tag), full_name=full_name or f"{tag.title()} Tester")
        response = await self.http.post(
            f"{self.urls['auth_url']}/auth/signup",
            json={"email": user.email, "password": user.password, "full_name": user.full_name},
        )
        assert response.status_code == 201, (
            f"signup of {user.email} answered {response.status_code}: {response.text}"
        )
        user.user_id = response.json()["user_id"]
        self.created.append(user)
        return user

    async def verify(self, user: TestUser) -> None:
        link = await self.inbox.wait_for_verification_link(user.email)
        response = await self.http.get(link, headers={"Accept": "application/json"})
        assert response.status_code == 200, (
            f"verification link answered {response.status_code}: {response.text}"
        )

    async def login(self, user: TestUser) -> dict[str, Any]:
        response = await self.http.post(
            f"{self.urls['auth_url']}/auth/login", json={"email": user.email, "password": user.password}
        )
        assert response.status_code == 200, (
            f"login of {user.email} answered {response.status_code}: {response.text}"
        )
        user.tokens = response.json()
        return user.tokens

    async def verified(self, tag: str = "user", full_name: str | None = None) -> TestUser:
        """Signed up and verified (can log in)."""
        user = await self.signup(tag, full_name)
        await self.verify(user)
        return user

    async def logged_in(self, tag: str = "user", full_name: str | None = None) -> TestUser:
        """Verified and holding tokens from a real login."""
        user = await self.verified(tag, full_name)
        await self.login(user)
        return user


@pytest.fixture
def users(http: httpx.AsyncClient, inbox: Inbox, urls: dict[str, str]) -> UserFactory:
    """Factory of fresh users (unique emails) made through the real auth API."""
    return UserFactory(http, inbox, urls)


class LLMControl:
    """The LLM stand-in's control endpoint: inject 500s, 429s, hangs, dropped streams, latency."""

    def __init__(self, http: httpx.AsyncClient, llm_url: str) -> None:
        self.http = http
        self.base = llm_url.removesuffix("/v1")

    async def set(self, **control: Any) -> None:
        response = await self.http.post(f"{self.base}/control", json=control)
        assert response.status_code == 200, f"LLM stand-in control refused {control}: {response.text}"

    async def reset(self) -> None:
        await self.http.post(f"{self.base}/control/reset")

    async def requests(self) -> list[dict[str, Any]]:
        return list((await self.http.get(f"{self.base}/requests")).json())


@pytest.fixture
async def llm(http: httpx.AsyncClient, urls: dict[str, str]) -> AsyncIterator[LLMControl]:
    """Control of the LLM stand-in, reset after the test so faults never leak into the next journey."""
    control = LLMControl(http, urls["llm_url"])
    await control.reset()
    yield control
    await control.reset()


async def login_through_ui(
    page: Any, urls: dict[str, str], user: TestUser, provider_name: str = "Acme ID"
) -> DashboardPage:
    """Open /login in `page`, log `user` in, return the dashboard already loaded."""
    login = await LoginPage(page, urls["frontend_url"], provider_name).open()
    return await login.login(user.email, user.password)
