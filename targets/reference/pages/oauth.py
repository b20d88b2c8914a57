"""OAuthConsentPage: the OpenID provider's own sign-in/consent page (stack/externals/oidc.py)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Self
from urllib.parse import parse_qs, urlsplit

import httpx
from playwright.async_api import Locator, Page

from pages.base import DEFAULT_TIMEOUT_S, BasePage

if TYPE_CHECKING:
    from targets.reference.pages.dashboard import DashboardPage
    from targets.reference.pages.login import LoginPage


class OAuthConsentPage(BasePage):
    """The provider's authorize page ("Sign in to Acme ID"); `base_url` stays the frontend's."""

    def __init__(self, page: Page, base_url: str, provider_name: str = "Acme ID") -> None:
        super().__init__(page, base_url)
        self.provider_name = provider_name

    @property
    def heading(self) -> Locator:
        return self.page.get_by_role("heading", name=f"Sign in to {self.provider_name}", level=1)

    @property
    def email(self) -> Locator:
        return self.page.get_by_label("Email", exact=True)

    @property
    def name(self) -> Locator:
        return self.page.get_by_label("Name", exact=True)

    async def wait_until_loaded(self, timeout: float = DEFAULT_TIMEOUT_S) -> Self:
        __tracebackhide__ = True
        await self.expect_visible(
            self.heading, f'the provider page "Sign in to {self.provider_name}"', timeout
        )
        return self

    async def identities(self) -> list[str]:
        """The labels of the offered test identities ("Ada Lovelace (ada@acme.test)")."""
        radios = self.page.get_by_role("radiogroup", name="Choose an account").get_by_role("radio")
        return [
            " ".join((await radio.evaluate("el => el.labels[0]?.innerText || ''")).split())
            for radio in await radios.all()
        ]

    async def choose_identity(self, name_or_email: str) -> Self:
        """Pick one of the provider's test identities by its name or email."""
        await self.page.get_by_role("radio", name=re.compile(re.escape(name_or_email), re.IGNORECASE)).check()
        return self

    async def use_account(self, email: str, name: str | None = None) -> Self:
        """Type any identity (a filled email wins over the chosen radio)."""
        await self.email.fill(email)
        if name is not None:
            await self.name.fill(name)
        return self

    async def allow(self, timeout: float = DEFAULT_TIMEOUT_S) -> DashboardPage:
        """Allow; -> the frontend dashboard, loaded, after the auth callback and /oauth/complete."""
        __tracebackhide__ = True
        from targets.reference.pages.dashboard import DashboardPage
        from targets.reference.pages.login import LoginPage

        await self.page.get_by_role("button", name="Allow", exact=True).click()
        dashboard = DashboardPage(self.page, self.base_url)
        login = LoginPage(self.page, self.base_url, self.provider_name)
        await self.expect_visible(
            dashboard.heading.or_(login.alert).or_(self.provider_error),
            "the dashboard after allowing the provider sign-in",
            timeout,
        )
        if not await dashboard.heading.is_visible():
            raise AssertionError(
                "allowing the provider sign-in did not reach the dashboard.\n" + await self.describe_screen()
            )
        return await dashboard.wait_until_loaded(timeout)

    async def deny(self, timeout: float = DEFAULT_TIMEOUT_S) -> LoginPage:
        """Deny; -> the frontend login page showing the provider error (read it with error_message())."""
        __tracebackhide__ = True
        from targets.reference.pages.login import LoginPage

        await self.page.get_by_role("button", name="Deny", exact=True).click()
        login = await LoginPage(self.page, self.base_url, self.provider_name).wait_until_loaded(timeout)
        await self.expect_visible(login.alert, "the login page's error after denying the provider", timeout)
        return login

    @property
    def provider_error(self) -> Locator:
        return self.page.get_by_test_id("oidc-error")

    async def error(self) -> str | None:
        """The provider page's own error (e.g. an invalid email typed), or None."""
        return await self.text_or_none(self.provider_error)

    async def allow_without_redirect(self, email: str, name: str) -> str:
        """Answer "Allow" for `email`/`name` without letting the browser follow the redirect;
        -> the auth callback URL (code + state) the provider would send the browser to.

        The provider is a third party: its decision endpoint is driven with the same form fields
        its page submits, so a journey can alter (or replay, or move to another browser) the
        callback URL before a browser opens it.
        """
        __tracebackhide__ = True
        form = self.page.get_by_role("button", name="Allow", exact=True).locator("xpath=ancestor::form")
        txn = await form.locator("input[name='txn']").input_value()
        action = await form.get_attribute("action") or ""
        decision_url = urlsplit(self.page.url)._replace(path=action, query="").geturl()
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
