"""ChatPanel: the chat region of the dashboard (threads, messages, streaming replies, connection)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from playwright.async_api import Locator, Page, expect
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from pages.base import DEFAULT_TIMEOUT_S, BasePage

ConnectionState = Literal["connecting", "connected", "reconnecting", "offline"]
REPLY_TIMEOUT_S = max(DEFAULT_TIMEOUT_S, 20.0)


@dataclass(frozen=True)
class Message:
    """One message as the log shows it."""

    role: str
    text: str
    agent: str | None = None
    status: str | None = None


@dataclass(frozen=True)
class Reply:
    """A finished assistant reply: the answering agent (`data`, `general`, ...) and its text."""

    agent: str
    text: str
    tools: list[str] = field(default_factory=list)
    chunks: int = 0


_READ_MESSAGES = """els => els.map(el => ({
    role: el.dataset.role,
    agent: el.dataset.agent || null,
    status: el.dataset.status || null,
    text: (el.querySelector('[data-testid="message-text"]')?.firstChild?.textContent
           ?? el.querySelector('[data-testid="message-text"]')?.textContent ?? '').trim(),
}))"""


_TURN_ENDED_JS = """([index, bannerBefore, rateBefore]) => {
  const replies = document.querySelectorAll('[role="log"] [data-testid="message"][data-role="assistant"]');
  const reply = replies[index];
  if (reply && ["complete", "failed"].includes(reply.dataset.status)) return true;
  const shown = (selector) => {
    const el = document.querySelector(selector);
    return el && el.checkVisibility() ? el.innerText.replace(/\\s+/g, " ").trim() : null;
  };
  const banner = shown('[data-testid="error-banner"]');
  const rate = shown('[data-testid="rate-limit-notice"]');
  return Boolean((banner && banner !== bannerBefore) || (rate && rate !== rateBefore));
}"""


class ChatPanel(BasePage):
    """A region of the dashboard, not a page of its own; it needs no base URL."""

    def __init__(self, page: Page, base_url: str = "") -> None:
        super().__init__(page, base_url)
        self._assistant_count_at_send: int | None = None
        self._notices_at_send: tuple[str | None, str | None] = (None, None)

    # ------------------------------------------------------------------ locators

    @property
    def root(self) -> Locator:
        return self.page.get_by_role("region", name="Chat", exact=True)

    @property
    def input(self) -> Locator:
        return self.root.get_by_label("Message", exact=True)

    @property
    def send_button(self) -> Locator:
        return self.root.get_by_role("button", name="Send", exact=True)

    @property
    def log(self) -> Locator:
        return self.root.get_by_role("log", name="Messages")

    @property
    def message_items(self) -> Locator:
        return self.log.get_by_test_id("message")

    @property
    def assistant_items(self) -> Locator:
        return self.log.locator('[data-testid="message"][data-role="assistant"]')

    @property
    def threads_nav(self) -> Locator:
        return self.root.get_by_role("navigation", name="Threads")

    @property
    def status(self) -> Locator:
        return self.root.get_by_test_id("connection-status")

    @property
    def activity(self) -> Locator:
        return self.root.get_by_test_id("tool-activity")

    # ------------------------------------------------------------------ connection

    async def connection_state(self) -> str | None:
        return await self.status.get_attribute("data-state")

    async def wait_for_connection(self, state: ConnectionState, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Wait until the connection indicator shows `state`."""
        __tracebackhide__ = True
        await self.expect_attribute(
            self.status, "data-state", state, f"the chat connection to be {state}", timeout
        )

    # ------------------------------------------------------------------ sending

    async def send(self, text: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Type `text` into "Message" and press "Send" (waits until sending is possible), then wait
        until the message shows in the conversation."""
        __tracebackhide__ = True
        await self.submit(text, timeout)
        await self.expect_visible(
            self.message_items.filter(has_text=text).last, f"my message {text!r} in the conversation", timeout
        )

    async def submit(self, text: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Type `text` and press "Send", waiting for nothing after: for a send whose outcome may
        take the person off the dashboard (a revoked session)."""
        __tracebackhide__ = True
        await self.expect_visible(
            self.send_button.and_(self.page.locator(":enabled")), 'an enabled "Send"', timeout
        )
        self._assistant_count_at_send = await self.assistant_items.count()
        # What is already on screen cannot be this turn's outcome (a banner left by an earlier turn).
        self._notices_at_send = (
            await self.text_or_none(self.page.get_by_test_id("error-banner")),
            await self.text_or_none(self.page.get_by_test_id("rate-limit-notice")),
        )
        await self.input.fill(text)
        await self.send_button.click()

    async def wait_for_stream_started(self, timeout: float = REPLY_TIMEOUT_S) -> Locator:
        """Wait until the reply to the last send has rendered at least one streamed chunk."""
        __tracebackhide__ = True
        reply = self.assistant_items.nth(self._assistant_count_at_send or 0)
        await self.expect_visible(
            reply.and_(self.page.locator("[data-chunks]:not([data-chunks='0'])")),
            "the reply to start streaming",
            timeout,
        )
        return reply

    async def wait_for_reply(self, contains: str | None = None, timeout: float = REPLY_TIMEOUT_S) -> Reply:
        """Wait for the reply to the last send() to finish; -> Reply(agent, text).

        Fails fast, naming what the screen shows, when the turn ends in an error banner or a
        rate-limit notice instead of a reply.
        """
        __tracebackhide__ = True
        index = self._assistant_count_at_send
        if index is None:
            # Guessing "the last reply" would read an earlier turn's answer as this one's.
            raise AssertionError(
                "wait_for_reply() without a send() or submit() in this chat panel: use dashboard.chat "
                "(one region per dashboard) for both"
            )
        reply = self.assistant_items.nth(index)
        banner = self.page.get_by_test_id("error-banner")
        rate = self.page.get_by_test_id("rate-limit-notice")
        try:
            # The reply finishes, or a banner / rate-limit notice that was not there at send() appears.
            await self.page.wait_for_function(
                _TURN_ENDED_JS, arg=[index, *self._notices_at_send], timeout=timeout * 1000
            )
        except PlaywrightTimeoutError:
            raise AssertionError(
                f"expected a reply from the assistant within {timeout:.0f} s; last messages "
                f"{[m.text for m in (await self.messages())[-3:]]!r}.\n{await self.describe_screen()}"
            ) from None
        if await reply.count() == 0 or await reply.get_attribute("data-status") != "complete":
            # an error or a rate limit arrived first; a reply may still be finishing on a recoverable error
            try:
                await reply.and_(self.page.locator('[data-status="complete"]')).wait_for(timeout=500)
            except PlaywrightTimeoutError:
                raise AssertionError(
                    f"expected a reply from the assistant, but the turn ended without one: "
                    f"error banner {await self.text_or_none(banner)!r}, "
                    f"rate-limit notice {await self.text_or_none(rate)!r}, "
                    f"last messages {[m.text for m in (await self.messages())[-3:]]!r}.\n"
                    f"{await self.describe_screen()}"
                ) from None
        agent = await reply.get_attribute("data-agent") or ""
        text = " ".join((await reply.get_by_test_id("message-text").inner_text()).split())
        tools = [
            t
            for t in await reply.get_by_test_id("tool-use").evaluate_all(
                "els => els.map(e => e.dataset.tool)"
            )
        ]
        chunks = int(await reply.get_attribute("data-chunks") or 0)
        if contains is not None and contains not in text:
            raise AssertionError(
                f"the {agent} agent replied {text!r}, which does not contain {contains!r}.\n{await self.describe_screen()}"
            )
        self._assistant_count_at_send = None
        return Reply(agent=agent, text=text, tools=tools, chunks=chunks)

    async def ask(self, text: str, contains: str | None = None, timeout: float = REPLY_TIMEOUT_S) -> Reply:
        """send() then wait_for_reply()."""
        __tracebackhide__ = True
        await self.send(text)
        return await self.wait_for_reply(contains=contains, timeout=timeout)

    # ------------------------------------------------------------------ activity

    async def tool_activity(self) -> str | None:
        """The tool activity line ("Running get_my_usage…"), or None when idle."""
        return await self.text_or_none(self.activity)

    async def wait_for_tool_activity(self, contains: str, timeout: float = REPLY_TIMEOUT_S) -> str:
        __tracebackhide__ = True
        line = self.activity.filter(has_text=contains)
        await self.expect_visible(line, f"the tool activity line saying {contains!r}", timeout)
        return " ".join((await line.inner_text()).split())

    # ------------------------------------------------------------------ history

    async def messages(self) -> list[Message]:
        """Every message in the open conversation, oldest first."""
        raw = await self.message_items.evaluate_all(_READ_MESSAGES)
        return [
            Message(role=m["role"], text=" ".join(m["text"].split()), agent=m["agent"], status=m["status"])
            for m in raw
        ]

    async def wait_for_messages(self, count: int, timeout: float = DEFAULT_TIMEOUT_S) -> list[Message]:
        """Wait until the log holds at least `count` messages (e.g. after a reload restored them)."""
        __tracebackhide__ = True
        await self.expect_visible(
            self.message_items.nth(count - 1), f"at least {count} messages in the log", timeout
        )
        return await self.messages()

    async def threads(self) -> list[str]:
        """Thread titles in the Threads navigation, in the order shown."""
        buttons = self.threads_nav.get_by_role("listitem").get_by_role("button")
        return [" ".join(t.split()) for t in await buttons.all_inner_texts()]

    async def active_thread(self) -> str | None:
        """Title of the selected thread, or None (a new chat)."""
        return await self.text_or_none(self.threads_nav.locator("[aria-current='true']"))

    async def wait_for_thread(self, title: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        __tracebackhide__ = True
        await self.expect_visible(
            self.threads_nav.get_by_role("button", name=title), f"the thread {title!r} in Threads", timeout
        )

    async def open_thread(self, title: str, timeout: float = DEFAULT_TIMEOUT_S) -> list[Message]:
        """Open the thread titled `title`; -> its messages once loaded."""
        __tracebackhide__ = True
        button = self.threads_nav.get_by_role("button", name=title).first
        await self.expect_visible(button, f"the thread {title!r} in Threads", timeout)
        await button.click()
        await self.expect_attribute(
            button, "aria-current", "true", f"thread {title!r} to be selected", timeout
        )
        await self.expect_visible(
            self.log.and_(self.page.locator(":not([aria-busy])")), "the thread's messages", timeout
        )
        return await self.messages()

    async def new_chat(self) -> None:
        await self.threads_nav.get_by_role("button", name="New chat").click()

    # ------------------------------------------------------------------ watching the connection

    async def watch_connection(self) -> None:
        """From now on, remember every state the connection indicator takes, in order, so a short
        "Reconnecting…" between two "Connected" is not missed (read it with connection_states_seen())."""
        await self.expect_visible(self.status, "the chat connection indicator")
        await self.status.evaluate(_WATCH_CONNECTION_JS)

    async def connection_states_seen(self) -> list[str]:
        """The indicator's states since watch_connection(), oldest first (no repeats in a row)."""
        return list(await self.page.evaluate("() => window.__throughlineConnectionStates || []"))

    # ------------------------------------------------------------------ one message, the log's size, Send

    def message_item(
        self, *, request_id: str | None = None, role: str | None = None, containing: str | None = None
    ) -> MessageItem:
        """The message of the log sent with `request_id` / by `role` / showing `containing` (exactly one)."""
        css = '[data-testid="message"]'
        if role is not None:
            css += f'[data-role="{role}"]'
        if request_id is not None:
            css += f'[data-request-id="{request_id}"]'
        root = self.log.locator(css)
        if containing is not None:
            root = root.filter(has_text=containing)
        picked = ", ".join(
            f"{k} {v!r}"
            for k, v in (("request", request_id), ("role", role), ("text", containing))
            if v is not None
        )
        return MessageItem(self.page, root, f"the message ({picked or 'any'})")

    def reply_item(self, index: int) -> MessageItem:
        """The assistant reply at `index` in the log (0 the first, -1 the last)."""
        root = self.assistant_items.last if index == -1 else self.assistant_items.nth(index)
        return MessageItem(self.page, root, "the last reply" if index == -1 else f"reply #{index + 1}")

    def last_message(self) -> MessageItem:
        """The newest message of the log, whoever sent it."""
        return MessageItem(self.page, self.message_items.last, "the last message")

    async def wait_for_message_count(self, count: int, what: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Wait until the log holds exactly `count` messages."""
        __tracebackhide__ = True
        try:
            await expect(self.message_items).to_have_count(count, timeout=timeout * 1000)
        except AssertionError:
            shown = [(m.role, m.status, m.text) for m in await self.messages()]
            raise AssertionError(
                f"expected {what} within {timeout:g}s ({count} messages), the log shows {len(shown)}: {shown!r}"
            ) from None

    async def wait_for_send_disabled(self, what: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Wait until "Send" is disabled."""
        __tracebackhide__ = True
        try:
            await expect(self.send_button).to_be_disabled(timeout=timeout * 1000)
        except AssertionError:
            raise AssertionError(
                f'expected {what} within {timeout:g}s, but "Send" stays enabled.\n{await self.describe_screen()}'
            ) from None

    # ------------------------------------------------------------------ sends in a crowd or a burst

    async def type_message(self, text: str) -> None:
        """Type `text` into "Message" without sending (press_send() sends it): many people's Sends
        can then be pressed at the same moment. wait_for_reply() then waits for this message's reply."""
        self._assistant_count_at_send = await self.assistant_items.count()
        self._notices_at_send = (
            await self.text_or_none(self.page.get_by_test_id("error-banner")),
            await self.text_or_none(self.page.get_by_test_id("rate-limit-notice")),
        )
        await self.input.fill(text)

    async def press_send(self) -> None:
        """Press "Send" (after type_message())."""
        await self.send_button.click()

    async def type_burst(self, texts: list[str], timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Type several messages in one go, Enter after each: they leave faster than send() can."""
        __tracebackhide__ = True
        await self.expect_visible(
            self.send_button.and_(self.page.locator(":enabled")), 'an enabled "Send"', timeout
        )
        await self.input.press_sequentially("".join(f"{text}\n" for text in texts))

    async def user_request_ids(self) -> list[str | None]:
        """The request id of each of my messages in the log, oldest first."""
        return list(
            await self.log.locator('[data-role="user"]').evaluate_all(
                "els => els.map(e => e.dataset.requestId)"
            )
        )


# Observes (never changes) the indicator: every data-state it takes, in order.
_WATCH_CONNECTION_JS = """el => {
  window.__throughlineConnectionStates = [el.dataset.state];
  new MutationObserver(() => {
    const seen = window.__throughlineConnectionStates;
    if (seen[seen.length - 1] !== el.dataset.state) seen.push(el.dataset.state);
  }).observe(el, {attributes: true, attributeFilter: ['data-state']});
}"""


@dataclass(frozen=True)
class ToolUse:
    """A tool a reply shows it used: the tool, its state (`running`, `done`) and the line shown."""

    tool: str | None
    state: str | None
    text: str


class MessageItem(BasePage):
    """One message of the log, a region (PyPOM's `Region(page, root)`): ChatPanel.message_item(),
    ChatPanel.reply_item()."""

    def __init__(self, page: Page, root: Locator, description: str) -> None:
        super().__init__(page, "")
        self.root = root
        self.description = description

    async def status(self) -> str | None:
        """`sent`, `streaming`, `complete`, `failed`, ... or None when the message is not shown."""
        return await self.attribute_or_none(self.root, "data-status")

    async def wait_for_status(
        self, status: str, what: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        """Wait until the message is marked `status`."""
        __tracebackhide__ = True
        await self.expect_attribute(
            self.root, "data-status", status, what or f"{self.description} marked {status}", timeout
        )

    async def wait_for_text(
        self, text: str, what: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
    ) -> str:
        """Wait until the message shows `text` (a note under it counts); -> everything it shows."""
        __tracebackhide__ = True
        try:
            await expect(self.root).to_contain_text(text, timeout=timeout * 1000)
        except AssertionError:
            raise AssertionError(
                f"expected {what or self.description + ' to say ' + repr(text)} within {timeout:g}s "
                f"({text!r}); it shows {await self.text_or_none(self.root)!r}.\n{await self.describe_screen()}"
            ) from None
        return " ".join((await self.root.inner_text()).split())

    async def badge(self) -> str:
        """The agent badge's text ("general agent")."""
        return " ".join((await self.root.get_by_test_id("agent-badge").inner_text()).split())

    async def tool_use(self) -> ToolUse:
        """The one tool use the message shows, as shown (its line unnormalised); fails on none or several."""
        __tracebackhide__ = True
        item = self.root.get_by_test_id("tool-use")
        count = await item.count()
        assert count == 1, f"{self.description} shows {count} tool uses, expected one"
        return ToolUse(
            await item.get_attribute("data-tool"),
            await item.get_attribute("data-state"),
            await item.inner_text(),
        )
