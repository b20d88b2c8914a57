"""BasePage: the Page, the frontend's base URL, and waiters that say what was expected and what was seen."""

from __future__ import annotations

import os
from typing import Self
from urllib.parse import urljoin

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Locator, Page, expect

# One knob for every page-object wait; journeys on slow machines raise it.
DEFAULT_TIMEOUT_S = float(os.environ.get("TL_PAGE_TIMEOUT", "10"))


class BasePage:
    """A screen of the Throughline Chat frontend; subclasses define `path` and `wait_until_loaded()`."""

    path: str = "/"

    def __init__(self, page: Page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url.rstrip("/")

    # ------------------------------------------------------------------ navigation

    def url_for(self, path: str) -> str:
        return urljoin(self.base_url + "/", path.lstrip("/"))

    async def open(self) -> Self:
        """Navigate to this screen and return it once loaded."""
        await self.page.goto(self.url_for(self.path))
        return await self.wait_until_loaded()

    async def wait_until_loaded(self, timeout: float = DEFAULT_TIMEOUT_S) -> Self:
        return self

    async def reload(self) -> Self:
        """Reload the browser page and wait until this screen is loaded again."""
        await self.page.reload()
        return await self.wait_until_loaded()

    # ------------------------------------------------------------------ waiting

    async def expect_visible(self, locator: Locator, what: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Wait for `locator`; on timeout fail with `what` was expected and what the screen showed."""
        __tracebackhide__ = True
        try:
            # any visible match will do: `a.or_(b)` waits and hidden twins (an empty alert) are no match
            await expect(locator.filter(visible=True).first).to_be_visible(timeout=timeout * 1000)
        except AssertionError:
            raise AssertionError(
                f"expected {what} within {timeout:g}s, but it did not show.\n{await self.describe_screen()}"
            ) from None

    async def expect_attribute(
        self, locator: Locator, name: str, value: str, what: str, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        """Wait for `locator` to carry attribute `name`=`value`; fail naming what was seen instead."""
        __tracebackhide__ = True
        try:
            await expect(locator).to_have_attribute(name, value, timeout=timeout * 1000)
        except AssertionError:
            seen = await self.attribute_or_none(locator, name)
            raise AssertionError(
                f"expected {what} within {timeout:g}s ({name}={value!r}), last seen {name}={seen!r}.\n"
                f"{await self.describe_screen()}"
            ) from None

    async def text_or_none(self, locator: Locator) -> str | None:
        """Visible text of the first match, or None when nothing matching is visible."""
        first = locator.first
        if await first.count() == 0 or not await first.is_visible():
            return None
        return " ".join((await first.inner_text()).split())

    async def attribute_or_none(self, locator: Locator, name: str) -> str | None:
        first = locator.first
        if await first.count() == 0:
            return None
        return await first.get_attribute(name)

    async def describe_screen(self) -> str:
        """What a person would see: URL, title, main heading, alerts and status lines."""
        lines = [f"on screen: {self.page.url}"]
        try:
            lines.append(f"  title: {await self.page.title()!r}")
            h1 = await self.text_or_none(self.page.get_by_role("heading", level=1))
            lines.append(f"  heading: {h1!r}")
            for role in ("alert", "status"):
                texts = [
                    " ".join(t.split())
                    for t in await self.page.get_by_role(role).all_inner_texts()  # type: ignore[arg-type]
                    if t.strip()
                ]
                if texts:
                    lines.append(f"  {role}: {texts!r}")
        except PlaywrightError as exc:  # a page mid-navigation or closed still yields a useful message
            lines.append(f"  (could not read the screen: {exc.message.splitlines()[0]})")
        return "\n".join(lines)
