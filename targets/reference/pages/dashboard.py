"""DashboardPage: profile, plan, usage this month, error banner, rate-limit notice, and the chat panel."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Self

from playwright.async_api import Locator, Page, expect
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from pages.base import DEFAULT_TIMEOUT_S, BasePage
from targets.reference.pages.chat import ChatPanel

if TYPE_CHECKING:
    from targets.reference.pages.login import LoginPage


@dataclass(frozen=True)
class Profile:
    """The profile card as shown."""

    full_name: str | None
    email: str | None
    plan: str | None


@dataclass(frozen=True)
class Usage:
    """The "Usage this month" card: exact values from the elements' data-value."""

    tokens: int
    cost_usd: Decimal


@dataclass(frozen=True)
class RateLimitNotice:
    """The rate-limit notice: its text and the seconds it asks to wait."""

    text: str
    retry_after: int | None
    scope: str | None


class DashboardPage(BasePage):
    """The /dashboard screen; loaded when the heading names the user and the chat is connected."""

    path = "/dashboard"

    def __init__(self, page: Page, base_url: str, expected_name: str | None = None) -> None:
        super().__init__(page, base_url)
        self.expected_name = expected_name
        # One region per dashboard (PyPOM's Region): a send's state survives until its reply is read.
        self._chat = ChatPanel(page)

    @property
    def heading(self) -> Locator:
        name = self.expected_name
        pattern = re.compile(r"^Welcome, " + (re.escape(name) + "$" if name else ""))
        return self.page.get_by_role("heading", name=pattern, level=1)

    @property
    def chat(self) -> ChatPanel:
        """The chat region of this dashboard (the same object on every access)."""
        return self._chat

    @property
    def profile_card(self) -> Locator:
        return self.page.get_by_role("region", name="Profile")

    @property
    def usage_card(self) -> Locator:
        return self.page.get_by_role("region", name="Usage this month")

    @property
    def banner(self) -> Locator:
        return self.page.get_by_test_id("error-banner")

    @property
    def rate_limit(self) -> Locator:
        return self.page.get_by_test_id("rate-limit-notice")

    @property
    def logout_button(self) -> Locator:
        return self.page.get_by_role("button", name="Log out", exact=True)

    async def wait_until_loaded(self, timeout: float = DEFAULT_TIMEOUT_S) -> Self:
        __tracebackhide__ = True
        who = f" naming {self.expected_name!r}" if self.expected_name else ""
        await self.expect_visible(self.heading, f'the dashboard heading "Welcome, …"{who}', timeout)
        await self.chat.wait_for_connection("connected", timeout)
        return self

    async def heading_text(self) -> str | None:
        return await self.text_or_none(self.heading)

    async def shown_name(self) -> str | None:
        """The name the dashboard greets the person by ("Welcome, <name>"); the whole heading when it
        greets otherwise, so a comparison shows what it says."""
        text = await self.heading_text()
        match = re.fullmatch(r"Welcome, (.+)", text or "")
        return match.group(1) if match else text

    async def profile(self) -> Profile:
        """Name, email and plan as the profile card shows them."""
        card = self.profile_card
        return Profile(
            full_name=await self.text_or_none(card.get_by_test_id("profile-name")),
            email=await self.text_or_none(card.get_by_test_id("profile-email")),
            plan=await self.attribute_or_none(card.get_by_test_id("plan-badge"), "data-plan"),
        )

    @property
    async def plan(self) -> str | None:
        """The plan slug on the badge (`free`, `pro`, ...)."""
        return await self.attribute_or_none(self.page.get_by_test_id("plan-badge"), "data-plan")

    async def usage_this_month(self, timeout: float = DEFAULT_TIMEOUT_S) -> Usage:
        """The usage card's totals once it has loaded."""
        __tracebackhide__ = True
        tokens = self.usage_card.locator('[data-testid="usage-tokens"][data-value]')
        await self.expect_visible(tokens, "usage totals in 'Usage this month'", timeout)
        raw_tokens = await tokens.get_attribute("data-value") or "0"
        raw_cost = await self.usage_card.get_by_test_id("usage-cost").get_attribute("data-value") or "0"
        return Usage(tokens=int(raw_tokens), cost_usd=Decimal(raw_cost))

    async def wait_for_usage(self, min_tokens: int, timeout: float = DEFAULT_TIMEOUT_S) -> Usage:
        """Wait until "Usage this month" shows at least `min_tokens` tokens (it refreshes after each reply)."""
        __tracebackhide__ = True
        try:
            await self.page.wait_for_function(
                """(min) => {
                    const el = document.querySelector('[data-testid="usage-tokens"]');
                    return el && el.dataset.value !== undefined && Number(el.dataset.value) >= min;
                }""",
                arg=min_tokens,
                timeout=timeout * 1000,
            )
        except PlaywrightTimeoutError:
            shown = await self.text_or_none(self.usage_card)
            raise AssertionError(
                f"expected 'Usage this month' to reach {min_tokens} tokens within {timeout:g}s; "
                f"the card shows {shown!r}.\n{await self.describe_screen()}"
            ) from None
        return await self.usage_this_month(timeout)

    async def error_banner(self) -> str | None:
        """The error banner's text, or None when no error is shown."""
        return await self.text_or_none(self.banner.get_by_role("listitem"))

    async def error_banner_messages(self) -> list[str]:
        if await self.text_or_none(self.banner) is None:
            return []
        return [" ".join(t.split()) for t in await self.banner.get_by_role("listitem").all_inner_texts()]

    async def wait_for_error_banner(
        self, contains: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
    ) -> str:
        """Wait for the error banner (optionally with a message containing `contains`); -> its text."""
        __tracebackhide__ = True
        item = self.banner.get_by_role("listitem")
        if contains:
            item = item.filter(has_text=contains)
        what = f"the error banner saying {contains!r}" if contains else "the error banner"
        await self.expect_visible(item.first, what, timeout)
        return " ".join((await item.first.inner_text()).split())

    async def wait_for_no_error_banner(self, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        __tracebackhide__ = True
        try:
            await self.banner.wait_for(state="hidden", timeout=timeout * 1000)
        except PlaywrightTimeoutError:
            raise AssertionError(
                f"expected the error banner to clear within {timeout:g}s, it still says "
                f"{await self.error_banner_messages()!r}"
            ) from None

    async def rate_limit_notice(self) -> RateLimitNotice | None:
        """The rate-limit notice, or None when not shown."""
        text = await self.text_or_none(self.rate_limit)
        if text is None:
            return None
        retry = await self.rate_limit.get_attribute("data-retry-after")
        scope = await self.rate_limit.get_attribute("data-scope")
        return RateLimitNotice(text=text, retry_after=int(retry) if retry else None, scope=scope or None)

    async def wait_for_rate_limit_notice(self, timeout: float = DEFAULT_TIMEOUT_S) -> RateLimitNotice:
        __tracebackhide__ = True
        await self.expect_visible(self.rate_limit, "the rate-limit notice", timeout)
        notice = await self.rate_limit_notice()
        assert notice is not None, "the rate-limit notice disappeared before it could be read"
        return notice

    async def frontend_state(self) -> dict[str, Any]:
        """window.__throughline.state(): {user: {id, email, full_name, plan}, activeThreadId, connection}."""
        state: dict[str, Any] = await self.page.evaluate("() => window.__throughline.state()")
        return state

    async def logout(self, timeout: float = DEFAULT_TIMEOUT_S) -> LoginPage:
        """Log out; -> the login page, loaded, saying "You have been logged out."."""
        __tracebackhide__ = True
        from targets.reference.pages.login import LoginPage

        await self.logout_button.click()
        login = await LoginPage(self.page, self.base_url).wait_until_loaded(timeout)
        await self.expect_visible(
            login.notice.filter(has_text="You have been logged out"), "the logged-out notice", timeout
        )
        return login

    async def visit(self) -> Self:
        """Go to the dashboard's address waiting for nothing: a refused session sends the browser to log in."""
        await self.page.goto(self.url_for(self.path))
        return self

    async def is_current(self) -> bool:
        """Whether the browser is still at the dashboard's address."""
        return self.path in self.page.url

    async def error_codes(self) -> list[str | None]:
        """The error code each banner line is tagged with, in the order shown."""
        return list(
            await self.banner.get_by_role("listitem").evaluate_all(
                "els => els.map(e => e.dataset.code || null)"
            )
        )

    async def wait_for_error_code(
        self, code: str, count: int = 1, what: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        """Wait until exactly `count` banner lines are tagged with the error code `code`."""
        __tracebackhide__ = True
        try:
            await expect(self.banner.locator(f"li[data-code='{code}']")).to_have_count(
                count, timeout=timeout * 1000
            )
        except AssertionError:
            raise AssertionError(
                f"expected {what or f'{count} banner line(s) with the error code {code}'} within {timeout:g}s; "
                f"the banner's lines carry codes {await self.error_codes()!r}: {await self.error_banner_messages()!r}"
            ) from None

    async def wait_for_usage_detail(
        self, text: str, what: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        """Wait until the line under the usage totals says exactly `text`."""
        __tracebackhide__ = True
        detail = self.usage_card.get_by_test_id("usage-detail")
        try:
            await expect(detail).to_have_text(text, timeout=timeout * 1000)
        except AssertionError:
            raise AssertionError(
                f"expected {what or f'the usage card to say {text!r}'} within {timeout:g}s ({text!r}); "
                f"it says {await self.text_or_none(detail)!r}"
            ) from None

    async def wait_for_no_rate_limit_notice(self, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Wait until the rate-limit notice is gone (it hides itself after its retry_after)."""
        __tracebackhide__ = True
        try:
            await self.rate_limit.wait_for(state="hidden", timeout=timeout * 1000)
        except PlaywrightTimeoutError:
            raise AssertionError(
                f"expected the rate-limit notice to go within {timeout:g}s, it still says "
                f"{await self.text_or_none(self.rate_limit)!r}"
            ) from None

    async def last_rate_limit_notice(self) -> RateLimitNotice:
        """What the rate-limit notice said last, shown or already hidden (it hides after retry_after)."""
        text = " ".join((await self.rate_limit.text_content() or "").split())
        retry = await self.rate_limit.get_attribute("data-retry-after")
        scope = await self.rate_limit.get_attribute("data-scope")
        return RateLimitNotice(text=text, retry_after=int(retry) if retry else None, scope=scope or None)
