"""Open WebUI's /auth screen in its two modes: sign in (Email, Password, "Sign in") and sign up
(Name, Email, Password, "Create Account"), switched by the "Sign up" / "Sign in" link-buttons.

Its errors are toasts (sonner: `[data-sonner-toast][data-type="error"]`), not alerts next to the
fields; a success lands on the chat screen at `/`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Self

from playwright.async_api import Locator, Page

from harness.capabilities import NotApplicable
from pages.base import DEFAULT_TIMEOUT_S, BasePage

if TYPE_CHECKING:
    from targets.open_webui.pages.chat import ChatPage
    from targets.open_webui.pages.oauth import OpenWebUIConsentPage
    from targets.open_webui.protocol import TurnRequests

TARGET = "open-webui"
ERROR_TOAST = '[data-sonner-toast][data-type="error"]'
SUCCESS_TOAST = '[data-sonner-toast][data-type="success"]'


class AuthScreen(BasePage):
    """What both modes of /auth share: the fields, the toasts, the provider button."""

    path = "/auth"

    def __init__(
        self, page: Page, base_url: str, provider_name: str = "Acme ID", requests: TurnRequests | None = None
    ) -> None:
        super().__init__(page, base_url)
        self.provider_name = provider_name
        self.requests = requests  # the adapter's capture of the chat requests (ChatPage.frontend_state)

    @property
    def email(self) -> Locator:
        return self.page.get_by_role("textbox", name="Email", exact=True)

    @property
    def password(self) -> Locator:
        # Its accessible name is the label plus the placeholder: "Password Enter Your Password".
        return self.page.get_by_role("textbox", name=re.compile(r"^Password\b"))

    @property
    def error_toast(self) -> Locator:
        return self.page.locator(ERROR_TOAST)

    @property
    def provider_button(self) -> Locator:
        return self.page.get_by_role("button", name=f"Continue with {self.provider_name}")

    async def error_message(self) -> str | None:
        """The newest error toast's text, or None."""
        return await self.text_or_none(self.error_toast.last)

    async def notice_message(self) -> str | None:
        """The newest success toast's text, or None."""
        return await self.text_or_none(self.page.locator(SUCCESS_TOAST).last)

    async def is_current(self) -> bool:
        return self.page.url.split("?")[0].rstrip("/").endswith(self.path)

    async def _signed_in_or_error(self, what: str, timeout: float) -> ChatPage:
        """After a submit: the chat screen, loaded; or fail naming the toast the screen shows."""
        __tracebackhide__ = True
        from targets.open_webui.pages.chat import ChatPage

        chat = ChatPage(self.page, self.base_url, self.requests)
        await self.expect_visible(
            chat.chat.input.or_(self.error_toast), f"the chat screen after {what}", timeout
        )
        if not await chat.chat.input.is_visible():
            raise AssertionError(
                f"{what} did not reach the chat screen: the screen says {await self.error_message()!r}.\n"
                f"{await self.describe_screen()}"
            )
        return await chat.wait_until_loaded(timeout)


class SignInPage(AuthScreen):
    """/auth in sign-in mode."""

    @property
    def submit_button(self) -> Locator:
        return self.page.get_by_role("button", name="Sign in", exact=True)

    @property
    def signup_button(self) -> Locator:
        return self.page.get_by_role("button", name="Sign up", exact=True)

    async def open(self) -> Self:
        await self.page.goto(self.url_for(self.path))
        return await self.wait_until_loaded()

    async def wait_until_loaded(self, timeout: float = DEFAULT_TIMEOUT_S) -> Self:
        __tracebackhide__ = True
        await self.expect_visible(self.email, 'the sign-in form ("Email")', timeout)
        # "Sign up" is offered only in sign-in mode (sign-up mode offers "Sign in" instead).
        await self.expect_visible(self.signup_button, 'the sign-in form (its "Sign up" link)', timeout)
        await self.expect_visible(self.submit_button, 'the "Sign in" button', timeout)
        return self

    async def submit(self, email: str, password: str) -> None:
        await self.email.fill(email)
        await self.password.fill(password)
        await self.submit_button.click()

    async def login(self, email: str, password: str, timeout: float = DEFAULT_TIMEOUT_S) -> ChatPage:
        """Sign in; -> the chat screen, loaded."""
        __tracebackhide__ = True
        await self.submit(email, password)
        return await self._signed_in_or_error(f"signing in as {email}", timeout)

    async def login_expecting_error(
        self, email: str, password: str, timeout: float = DEFAULT_TIMEOUT_S
    ) -> str:
        """Submit credentials that must be refused; -> the error toast's text."""
        __tracebackhide__ = True
        await self.submit(email, password)
        await self.expect_visible(self.error_toast, f"a sign-in error for {email}", timeout)
        message = await self.error_message()
        assert message, f"the sign-in error toast for {email} is empty.\n{await self.describe_screen()}"
        return message

    async def error_code(self) -> str | None:
        """Open WebUI's errors carry no machine code."""
        raise NotApplicable(TARGET, "error_codes", "its sign-in errors are toasts without a code")

    @property
    def alert(self) -> Locator:
        """Where the sign-in screen shows an error (a provider sign-in's `/auth?error=...`): a toast."""
        return self.error_toast

    async def continue_with_provider(self, timeout: float = DEFAULT_TIMEOUT_S) -> OpenWebUIConsentPage:
        """ "Continue with <provider>"; -> the provider's consent page, loaded."""
        __tracebackhide__ = True
        from targets.open_webui.pages.oauth import OpenWebUIConsentPage

        await self.provider_button.click()
        return await OpenWebUIConsentPage(
            self.page, self.base_url, self.provider_name, self.requests
        ).wait_until_loaded(timeout)

    async def go_to_signup(self) -> SignupPage:
        await self.signup_button.click()
        return await SignupPage(
            self.page, self.base_url, self.provider_name, self.requests
        ).wait_until_loaded()


class SignupPage(AuthScreen):
    """/auth in sign-up mode (the "Sign up" link-button of the sign-in form)."""

    @property
    def full_name(self) -> Locator:
        return self.page.get_by_role("textbox", name="Name", exact=True)

    @property
    def submit_button(self) -> Locator:
        return self.page.get_by_role("button", name="Create Account", exact=True)

    @property
    def form_alert(self) -> Locator:
        return self.error_toast

    async def open(self) -> Self:
        """Open /auth and switch it to sign-up mode."""
        signin = await SignInPage(self.page, self.base_url, self.provider_name, self.requests).open()
        await signin.signup_button.click()
        return await self.wait_until_loaded()

    async def wait_until_loaded(self, timeout: float = DEFAULT_TIMEOUT_S) -> Self:
        __tracebackhide__ = True
        await self.expect_visible(self.full_name, 'the sign-up form ("Name")', timeout)
        await self.expect_visible(self.submit_button, 'the "Create Account" button', timeout)
        return self

    async def fill(self, full_name: str, email: str, password: str) -> None:
        await self.full_name.fill(full_name)
        await self.email.fill(email)
        await self.password.fill(password)

    async def fill_and_submit(
        self, full_name: str, email: str, password: str, timeout: float = DEFAULT_TIMEOUT_S
    ) -> ChatPage | SignupPage:
        """Submit the form; -> the chat screen (signed in) on success, else this page showing its error."""
        __tracebackhide__ = True
        from targets.open_webui.pages.chat import ChatPage

        await self.fill(full_name, email, password)
        await self.submit_button.click()
        chat = ChatPage(self.page, self.base_url, self.requests)
        await self.expect_visible(
            chat.chat.input.or_(self.error_toast),
            'the chat screen or a sign-up error after "Create Account"',
            timeout,
        )
        if await chat.chat.input.is_visible():
            return await chat.wait_until_loaded(timeout)
        return self

    async def submit_expecting_signed_in(
        self, full_name: str, email: str, password: str, timeout: float = DEFAULT_TIMEOUT_S
    ) -> ChatPage:
        """Sign up and insist on landing signed in (Open WebUI verifies no email)."""
        __tracebackhide__ = True
        await self.fill(full_name, email, password)
        await self.submit_button.click()
        return await self._signed_in_or_error(f"signing up as {email}", timeout)

    async def submit_expecting_check_email(self, full_name: str, email: str, password: str) -> None:
        raise NotApplicable(TARGET, "email_verification", "a sign-up is signed in at once")

    async def form_error(self) -> str | None:
        """The error toast the sign-up produced, or None."""
        return await self.error_message()

    async def field_error(self, label: str) -> str | None:
        """What the screen says about the field labelled `label`: the browser's own validation
        message of that field, else the error toast when it speaks of that field."""
        field = self.page.get_by_role("textbox", name=re.compile(rf"^{re.escape(label)}\b"))
        native = await field.first.evaluate("el => el.validationMessage || ''") if await field.count() else ""
        if native:
            return str(native)
        toast = await self.error_message()
        return toast if toast and label.lower() in toast.lower() else None
