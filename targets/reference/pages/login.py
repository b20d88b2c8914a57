"""LoginPage: email/password, "Continue with <provider>", and the messages the login screen shows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Self
from urllib.parse import urlencode

from playwright.async_api import Locator, Page

from pages.base import DEFAULT_TIMEOUT_S, BasePage

if TYPE_CHECKING:
    from targets.reference.pages.dashboard import DashboardPage
    from targets.reference.pages.oauth import OAuthConsentPage
    from targets.reference.pages.signup import SignupPage


class LoginPage(BasePage):
    """The /login screen."""

    path = "/login"

    def __init__(self, page: Page, base_url: str, provider_name: str = "Acme ID") -> None:
        super().__init__(page, base_url)
        self.provider_name = provider_name

    @property
    def heading(self) -> Locator:
        return self.page.get_by_role("heading", name="Log in", level=1)

    @property
    def email(self) -> Locator:
        return self.page.get_by_label("Email", exact=True)

    @property
    def password(self) -> Locator:
        return self.page.get_by_label("Password", exact=True)

    @property
    def submit_button(self) -> Locator:
        return self.page.get_by_role("button", name="Log in", exact=True)

    @property
    def provider_button(self) -> Locator:
        return self.page.get_by_role("button", name=f"Continue with {self.provider_name}")

    @property
    def alert(self) -> Locator:
        return self.page.get_by_role("alert")

    @property
    def notice(self) -> Locator:
        return self.page.get_by_role("status")

    async def open(self, query: Mapping[str, str] | str | None = None) -> Self:  # type: ignore[override]
        """Open /login (optionally with `?verified=1`, `?error=...`) and wait for the form."""
        url = self.url_for(self.path)
        if query:
            url += "?" + (query if isinstance(query, str) else urlencode(query))
        await self.page.goto(url)
        return await self.wait_until_loaded()

    async def wait_until_loaded(self, timeout: float = DEFAULT_TIMEOUT_S) -> Self:
        __tracebackhide__ = True
        await self.expect_visible(self.heading, 'the login form (heading "Log in")', timeout)
        await self.expect_visible(self.submit_button, 'the "Log in" button', timeout)
        return self

    async def submit(self, email: str, password: str) -> None:
        await self.email.fill(email)
        await self.password.fill(password)
        await self.submit_button.click()

    async def login(self, email: str, password: str, timeout: float = DEFAULT_TIMEOUT_S) -> DashboardPage:
        """Log in and return the dashboard, loaded (name heading shown, chat connected)."""
        __tracebackhide__ = True
        from targets.reference.pages.dashboard import DashboardPage

        await self.submit(email, password)
        dashboard = DashboardPage(self.page, self.base_url)
        await self.expect_visible(
            dashboard.heading.or_(self.alert), f"the dashboard after logging in as {email}", timeout
        )
        if not await dashboard.heading.is_visible():
            raise AssertionError(
                f"logging in as {email} did not reach the dashboard: the login page says "
                f"{await self.error_message()!r}.\n{await self.describe_screen()}"
            )
        return await dashboard.wait_until_loaded(timeout)

    async def login_expecting_error(
        self, email: str, password: str, timeout: float = DEFAULT_TIMEOUT_S
    ) -> str:
        """Submit credentials that must be refused; -> the message in the alert region."""
        __tracebackhide__ = True
        await self.submit(email, password)
        await self.expect_visible(self.alert, f"a login error for {email}", timeout)
        message = await self.error_message()
        assert message, f"the login alert for {email} is empty.\n{await self.describe_screen()}"
        return message

    async def error_message(self) -> str | None:
        """The text of the alert region (errors such as `?error=session_expired`), or None."""
        return await self.text_or_none(self.alert)

    async def error_code(self) -> str | None:
        """The machine code behind the shown error (`data-code`: `?error=` code or HTTP status)."""
        if await self.text_or_none(self.alert) is None:
            return None
        return await self.alert.first.get_attribute("data-code")

    async def notice_message(self) -> str | None:
        """The success notice ("Email verified. You can log in now."), or None."""
        return await self.text_or_none(self.notice)

    async def continue_with_provider(self, timeout: float = DEFAULT_TIMEOUT_S) -> OAuthConsentPage:
        """Click "Continue with <provider>"; -> the provider's consent page, loaded."""
        __tracebackhide__ = True
        from targets.reference.pages.oauth import OAuthConsentPage

        await self.provider_button.click()
        return await OAuthConsentPage(self.page, self.base_url, self.provider_name).wait_until_loaded(timeout)

    async def go_to_signup(self) -> SignupPage:
        from targets.reference.pages.signup import SignupPage

        await self.page.get_by_role("link", name="Create an account").click()
        return await SignupPage(self.page, self.base_url).wait_until_loaded()

    async def is_current(self) -> bool:
        """Whether the browser is at the login page's address (whatever its query)."""
        return self.page.url.split("?")[0].endswith(self.path)
