"""SignupPage and the "Check your email" state it leads to."""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

from playwright.async_api import Locator, Page

from pages.base import DEFAULT_TIMEOUT_S, BasePage

if TYPE_CHECKING:
    from targets.reference.pages.login import LoginPage


class SignupPage(BasePage):
    """The /signup screen: Full name, Email, Password and "Create account"."""

    path = "/signup"

    @property
    def heading(self) -> Locator:
        return self.page.get_by_role("heading", name="Create your account", level=1)

    @property
    def full_name(self) -> Locator:
        return self.page.get_by_label("Full name", exact=True)

    @property
    def email(self) -> Locator:
        return self.page.get_by_label("Email", exact=True)

    @property
    def password(self) -> Locator:
        return self.page.get_by_label("Password", exact=True)

    @property
    def submit_button(self) -> Locator:
        return self.page.get_by_role("button", name="Create account", exact=True)

    @property
    def form_alert(self) -> Locator:
        return self.page.get_by_role("alert")

    async def wait_until_loaded(self, timeout: float = DEFAULT_TIMEOUT_S) -> Self:
        __tracebackhide__ = True
        await self.expect_visible(self.heading, 'the signup form (heading "Create your account")', timeout)
        await self.expect_visible(self.submit_button, 'the "Create account" button', timeout)
        return self

    async def fill(self, full_name: str, email: str, password: str) -> None:
        await self.full_name.fill(full_name)
        await self.email.fill(email)
        await self.password.fill(password)

    async def fill_and_submit(
        self, full_name: str, email: str, password: str, timeout: float = DEFAULT_TIMEOUT_S
    ) -> CheckEmailState | SignupPage:
        """Submit the form; -> CheckEmailState on success, else this page showing its errors."""
        __tracebackhide__ = True
        await self.fill(full_name, email, password)
        await self.submit_button.click()
        done = CheckEmailState(self.page, self.base_url, email)
        await self.expect_visible(
            done.heading.or_(self.form_alert),
            'either "Check your email" or a signup error after "Create account"',
            timeout,
        )
        if await done.heading.is_visible():
            return done
        return self

    async def submit_expecting_check_email(
        self, full_name: str, email: str, password: str, timeout: float = DEFAULT_TIMEOUT_S
    ) -> CheckEmailState:
        """Submit and insist on the "Check your email" state."""
        __tracebackhide__ = True
        result = await self.fill_and_submit(full_name, email, password, timeout)
        if isinstance(result, CheckEmailState):
            return result
        errors = {label: await self.field_error(label) for label in ("Full name", "Email", "Password")}
        raise AssertionError(
            f"signup for {email} did not reach 'Check your email': form says {await self.form_error()!r}, "
            f"field errors {errors!r}.\n{await self.describe_screen()}"
        )

    async def field_error(self, label: str) -> str | None:
        """The error shown next to the field labelled `label` (its aria-describedby message), or None."""
        described_by = await self.page.get_by_label(label, exact=True).get_attribute("aria-describedby") or ""
        for element_id in described_by.split():
            if element_id.endswith("-error"):
                return await self.text_or_none(self.page.locator(f"[id='{element_id}']"))
        return None

    async def form_error(self) -> str | None:
        """The form-level alert above the fields, or None."""
        return await self.text_or_none(self.form_alert)


class CheckEmailState(BasePage):
    """The signup screen after success: heading "Check your email" naming the address."""

    path = "/signup"

    def __init__(self, page: Page, base_url: str, email: str) -> None:
        super().__init__(page, base_url)
        self.email = email

    @property
    def heading(self) -> Locator:
        return self.page.get_by_role("heading", name="Check your email", level=1)

    async def wait_until_loaded(self, timeout: float = DEFAULT_TIMEOUT_S) -> Self:
        __tracebackhide__ = True
        await self.expect_visible(self.heading, 'the "Check your email" heading', timeout)
        return self

    async def address(self) -> str | None:
        """The email address the screen says the link went to."""
        return await self.text_or_none(self.page.get_by_test_id("check-email-address"))

    async def go_to_login(self) -> LoginPage:
        from targets.reference.pages.login import LoginPage

        await self.page.get_by_role("link", name="Go to log in").click()
        return await LoginPage(self.page, self.base_url).wait_until_loaded()
