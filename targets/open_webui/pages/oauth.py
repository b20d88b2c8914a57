"""The OIDC stand-in's consent page as reached from Open WebUI: where Allow and Deny lead."""

from __future__ import annotations

from typing import TYPE_CHECKING

from playwright.async_api import Page

from pages.base import DEFAULT_TIMEOUT_S
from targets.reference.pages.oauth import OAuthConsentPage

if TYPE_CHECKING:
    from targets.open_webui.pages.auth import SignInPage
    from targets.open_webui.pages.chat import ChatPage
    from targets.open_webui.protocol import TurnRequests


class OpenWebUIConsentPage(OAuthConsentPage):
    """The provider's page ("Sign in to Acme ID"); Allow lands on Open WebUI's chat screen,
    Deny on its /auth screen with an error toast (`/auth?error=...`)."""

    def __init__(
        self,
        page: Page,
        base_url: str,
        provider_name: str = "Acme ID",
        requests: TurnRequests | None = None,
    ) -> None:
        super().__init__(page, base_url, provider_name)
        self.requests = requests

    async def allow(self, timeout: float = DEFAULT_TIMEOUT_S) -> ChatPage:  # type: ignore[override]
        """Allow; -> the chat screen, loaded, after Open WebUI's callback set its token."""
        __tracebackhide__ = True
        from targets.open_webui.pages.auth import SignInPage
        from targets.open_webui.pages.chat import ChatPage

        await self.page.get_by_role("button", name="Allow", exact=True).click()
        chat = ChatPage(self.page, self.base_url, self.requests)
        signin = SignInPage(self.page, self.base_url, self.provider_name, self.requests)
        await self.expect_visible(
            chat.chat.input.or_(signin.error_toast).or_(self.provider_error),
            "the chat screen after allowing the provider sign-in",
            timeout,
        )
        if not await chat.chat.input.is_visible():
            raise AssertionError(
                "allowing the provider sign-in did not reach the chat screen.\n"
                + await self.describe_screen()
            )
        return await chat.wait_until_loaded(timeout)

    async def deny(self, timeout: float = DEFAULT_TIMEOUT_S) -> SignInPage:  # type: ignore[override]
        """Deny; -> the sign-in screen showing the provider error (read it with error_message())."""
        __tracebackhide__ = True
        from targets.open_webui.pages.auth import SignInPage

        await self.page.get_by_role("button", name="Deny", exact=True).click()
        signin = SignInPage(self.page, self.base_url, self.provider_name, self.requests)
        await signin.wait_until_loaded(timeout)
        await self.expect_visible(
            signin.alert, "the sign-in screen's error after denying the provider", timeout
        )
        return signin
