"""Open WebUI's chat screen (`/` for a new chat, `/c/<chat id>` once it has messages): the chat
region with its log and input, the user menu (Settings > Account, Sign Out), the admin's
"What's New" dialog.

The log is `role=log` of `role=listitem`s; a user message holds `.chat-user`, a reply
`.chat-assistant` with the model's name (`#response-message-model-name`), its tool calls
(buttons "View Result from <tool>"), its text (`.markdown-prose`) or the error box Open WebUI
draws instead of a reply (`#response-content-container > div.rounded-2xl`). A reply is finished
when its action buttons ("Copy", ...) show. Element ids are per message (`#message-<id>`),
which is how a reply is found by its request id.
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from playwright.async_api import Locator, Page, expect
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from pages.base import DEFAULT_TIMEOUT_S, BasePage

if TYPE_CHECKING:
    from targets.open_webui.pages.auth import SignInPage
    from targets.open_webui.protocol import TurnRequests

REPLY_TIMEOUT_S = max(DEFAULT_TIMEOUT_S, 20.0)
ERROR_TOAST = '[data-sonner-toast][data-type="error"]'
INPUT_NAME = re.compile(r"^(How can I help you today\?|Send a Message)$")
TOOL_BUTTON = re.compile(r"^View Result from (.+)$")

# Status of one listitem of the log: a reply's own, or for a user message its reply's.
_STATUS_JS = """
window.__owuiStatus = window.__owuiStatus || ((li) => {
  if (!li) return null;
  let reply = li;
  const isUser = !!li.querySelector('.chat-user');
  if (isUser) {
    reply = li.nextElementSibling;
    while (reply && !reply.querySelector('.chat-assistant')) reply = reply.nextElementSibling;
    if (!reply) return 'sent';
  }
  const container = reply.querySelector('#response-content-container');
  if (container && container.querySelector(':scope > div.rounded-2xl')) return 'failed';
  const done = !!reply.querySelector('button[aria-label="Copy"]');
  if (isUser) return done ? 'complete' : 'sent';
  return done ? 'complete' : 'streaming';
});
"""

_READ_LOG_JS = """items => items.map(li => {
  const user = li.querySelector('.chat-user');
  const reply = li.querySelector('.chat-assistant');
  const prose = (li.querySelector('.markdown-prose')?.innerText || '');
  const messageEl = li.querySelector('[id^="message-"]');
  return {
    role: user ? 'user' : reply ? 'assistant' : 'other',
    text: prose.trim(),
    agent: reply ? (li.querySelector('#response-message-model-name')?.innerText || '').trim() || null : null,
    status: window.__owuiStatus ? window.__owuiStatus(li) : null,
    id: messageEl ? messageEl.id.replace(/^message-/, '') : null,
  };
})"""


def _claims(token: str | None) -> dict[str, Any]:
    if not token or token.count(".") != 2:
        return {}
    payload = token.split(".")[1]
    try:
        return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
    except ValueError:
        return {}


@dataclass(frozen=True)
class Message:
    """One message as the log shows it; `agent` is the name of the model that answered."""

    role: str
    text: str
    agent: str | None = None
    status: str | None = None
    id: str | None = None


@dataclass(frozen=True)
class Reply:
    """A finished reply: the model that answered (`agent`), its text, the tools it shows.
    `chunks` is None: Open WebUI's page does not count the chunks it rendered."""

    agent: str
    text: str
    tools: list[str] = field(default_factory=list)
    chunks: int | None = None
    id: str | None = None


@dataclass(frozen=True)
class ToolUse:
    """A tool a reply shows it used: the tool, its state (`done` once its result is shown), the line."""

    tool: str | None
    state: str | None
    text: str


@dataclass(frozen=True)
class Profile:
    """The account as the screen shows it: the name (Settings > Account); Open WebUI shows no
    email of the signed-in person anywhere, and has no plan."""

    full_name: str | None
    email: str | None = None
    plan: str | None = None


class WhatsNewDialog(BasePage):
    """The "What's New" dialog an admin's first sign-in opens; "Okay, Let's Go!" closes it."""

    @property
    def root(self) -> Locator:
        return self.page.get_by_role("dialog").filter(has=self.close_button)

    @property
    def close_button(self) -> Locator:
        return self.page.get_by_role("button", name="Okay, Let's Go!")

    async def dismiss_if_shown(self) -> bool:
        """Close the dialog when it is up; -> whether it was."""
        if await self.close_button.count() == 0 or not await self.close_button.first.is_visible():
            return False
        await self.close_button.first.click()
        await self.root.wait_for(state="hidden")
        return True


class MessageItem(BasePage):
    """One message of the log, a region: ChatPanel.message_item(), ChatPanel.reply_item().
    Every read loads the whole conversation first (the log renders only its newest messages)."""

    def __init__(self, panel: ChatPanel, root: Locator, description: str) -> None:
        super().__init__(panel.page, "")
        self.panel = panel
        self.root = root
        self.description = description

    async def status(self) -> str | None:
        """`sent`, `streaming`, `complete` or `failed` (a user message: its reply's); None when not shown."""
        await self.panel.load_whole_conversation()
        if await self.root.count() == 0:
            return None
        status = await self.root.first.evaluate("li => window.__owuiStatus(li)")
        return str(status) if status is not None else None

    async def wait_for_status(
        self, status: str, what: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        """Wait until the message is `status` (a user message whose reply failed is `failed`)."""
        __tracebackhide__ = True
        await self.panel.load_whole_conversation(timeout)
        try:
            await self.root.first.wait_for(timeout=timeout * 1000)
            handle = await self.root.first.element_handle()
            await self.page.wait_for_function(
                "([li, want]) => window.__owuiStatus(li) === want",
                arg=[handle, status],
                timeout=timeout * 1000,
            )
        except PlaywrightTimeoutError:
            raise AssertionError(
                f"expected {what or self.description + ' marked ' + status} within {timeout:g}s; "
                f"it is {await self.status()!r}.\n{await self.describe_screen()}"
            ) from None

    async def wait_for_text(
        self, text: str, what: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
    ) -> str:
        __tracebackhide__ = True
        await self.panel.load_whole_conversation(timeout)
        try:
            await expect(self.root.first).to_contain_text(text, timeout=timeout * 1000)
        except AssertionError:
            raise AssertionError(
                f"expected {what or self.description + ' to say ' + repr(text)} within {timeout:g}s; it shows "
                f"{await self.text_or_none(self.root)!r}.\n{await self.describe_screen()}"
            ) from None
        return " ".join((await self.root.first.inner_text()).split())

    async def badge(self) -> str:
        """The name of the model that answered, as shown over the reply."""
        await self.panel.load_whole_conversation()
        return " ".join((await self.root.first.locator("#response-message-model-name").inner_text()).split())

    async def tool_use(self) -> ToolUse:
        """The one tool use the reply shows; fails on none or several."""
        __tracebackhide__ = True
        await self.panel.load_whole_conversation()
        buttons = self.root.first.get_by_role("button", name=TOOL_BUTTON)
        count = await buttons.count()
        assert count == 1, f"{self.description} shows {count} tool uses, expected one"
        label = " ".join(
            (await buttons.first.get_attribute("aria-label") or await buttons.first.inner_text()).split()
        )
        match = TOOL_BUTTON.match(label)
        return ToolUse(match.group(1) if match else None, "done" if match else "running", label)


# The reply to the newest user message showing `text`: the listitem right after it, if a reply.
_REPLY_TO_JS = """
window.__owuiReplyTo = window.__owuiReplyTo || ((text) => {
  const norm = (s) => (s || '').replace(/\\s+/g, ' ').trim();
  const items = [...document.querySelectorAll('main [role=log] > [role=listitem]')];
  for (let i = items.length - 1; i >= 0; i--) {
    const user = items[i].querySelector('.chat-user');
    if (!user || norm(user.querySelector('.markdown-prose')?.innerText) !== text) continue;
    const next = items[i + 1];
    return next && next.querySelector('.chat-assistant') ? next : null;
  }
  return null;
});
"""


class ChatPanel(BasePage):
    """The chat region of the chat screen (made once per page, so a send's state survives).

    Open WebUI renders only the newest 8 messages of a conversation and loads 8 more each time
    its "Loading..." marker at the top scrolls into view; whatever reads the conversation scrolls
    it up to its first message first, as a person would."""

    def __init__(self, page: Page, base_url: str = "") -> None:
        super().__init__(page, base_url)
        self._sent_text: str | None = None
        self._toasts_at_send: list[str] = []

    # ------------------------------------------------------------------ locators
    @property
    def root(self) -> Locator:
        return self.page.get_by_role("main")

    @property
    def input(self) -> Locator:
        return self.root.get_by_role("textbox", name=INPUT_NAME)

    @property
    def send_button(self) -> Locator:
        return self.root.get_by_role("button", name="Send message", exact=True)

    @property
    def conversation(self) -> Locator:
        return self.root.get_by_role("region", name="Chat Conversation")

    @property
    def log(self) -> Locator:
        return self.root.get_by_role("log")

    @property
    def message_items(self) -> Locator:
        return self.log.get_by_role("listitem").filter(has=self.page.locator(".chat-user, .chat-assistant"))

    @property
    def user_items(self) -> Locator:
        return self.log.get_by_role("listitem").filter(has=self.page.locator(".chat-user"))

    @property
    def assistant_items(self) -> Locator:
        return self.log.get_by_role("listitem").filter(has=self.page.locator(".chat-assistant"))

    @property
    def error_toast(self) -> Locator:
        return self.page.locator(ERROR_TOAST)

    async def load_whole_conversation(self, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Scroll the conversation up until its first message is rendered (no "Loading..." left)."""
        __tracebackhide__ = True
        await self.page.evaluate(_STATUS_JS)
        loader = self.conversation.get_by_text("Loading...", exact=True)
        deadline = time.monotonic() + timeout
        while await loader.count():
            rendered = await self.log.get_by_role("listitem").count()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"the conversation did not load its earlier messages within {timeout:g}s "
                    f"({rendered} rendered).\n{await self.describe_screen()}"
                )
            await loader.first.scroll_into_view_if_needed()
            try:
                await self.page.wait_for_function(
                    "n => document.querySelectorAll('main [role=log] > [role=listitem]').length > n",
                    arg=rendered,
                    timeout=remaining * 1000,
                )
            except PlaywrightTimeoutError:
                continue  # the deadline check above reports it

    # ------------------------------------------------------------------ sending
    async def submit(self, text: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Type `text` and press "Send message", waiting for nothing after."""
        __tracebackhide__ = True
        await self.type_message(text, timeout)
        await self.press_send(timeout)

    async def type_message(self, text: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Type `text` into the message input without sending (press_send() sends it): many
        people's Sends can then be pressed at the same moment; wait_for_reply() waits for its reply."""
        __tracebackhide__ = True
        await self.expect_visible(self.input, "the message input", timeout)
        self._sent_text = " ".join(text.split())
        self._toasts_at_send = [" ".join(t.split()) for t in await self.error_toast.all_inner_texts()]
        await self.input.fill(text)

    async def press_send(self, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Press "Send message" (after type_message(); the button shows only while there is text)."""
        __tracebackhide__ = True
        await self.expect_visible(self.send_button, 'the "Send message" button', timeout)
        await self.send_button.click()

    async def send(self, text: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Send `text`, then wait until it shows in the conversation."""
        __tracebackhide__ = True
        await self.submit(text, timeout)
        await self.expect_visible(
            self.user_items.filter(has_text=text).last, f"my message {text!r} in the conversation", timeout
        )

    async def _new_error_toast(self) -> str | None:
        for text in await self.error_toast.all_inner_texts():
            shown = " ".join(text.split())
            if shown and shown not in self._toasts_at_send:
                return shown
        return None

    async def wait_for_reply(self, contains: str | None = None, timeout: float = REPLY_TIMEOUT_S) -> Reply:
        """Wait for the reply to the last send() to finish; -> Reply. Fails fast, naming what the
        screen shows, when an error toast or the reply's error box comes instead."""
        __tracebackhide__ = True
        text = self._sent_text
        if text is None:
            raise AssertionError(
                "wait_for_reply() without a send() in this chat panel: use page.chat (one region per page) for both"
            )
        await self.page.evaluate(_STATUS_JS + _REPLY_TO_JS)
        try:
            await self.page.wait_for_function(
                """([text, before]) => {
                  const reply = window.__owuiReplyTo(text);
                  if (reply && reply.querySelector('button[aria-label="Copy"]')) return true;
                  const toasts = [...document.querySelectorAll('[data-sonner-toast][data-type="error"]')]
                    .map(t => t.innerText.replace(/\\s+/g, ' ').trim());
                  return toasts.some(t => t && !before.includes(t));
                }""",
                arg=[text, self._toasts_at_send],
                timeout=timeout * 1000,
            )
        except PlaywrightTimeoutError:
            raise AssertionError(
                f"expected a reply to {text!r} within {timeout:.0f} s; last messages "
                f"{[m.text for m in (await self.messages())[-3:]]!r}.\n{await self.describe_screen()}"
            ) from None
        reply = (
            self.log.get_by_role("listitem").filter(has=self.page.locator(".chat-user", has_text=text)).last
        )
        reply = reply.locator("xpath=following-sibling::*[@role='listitem'][1]")
        failed = reply.locator("#response-content-container > div.rounded-2xl")
        toast = await self._new_error_toast()
        if toast is not None or await failed.count():
            raise AssertionError(
                f"expected a reply, but the turn ended in an error: toast {toast!r}, the reply's error box "
                f"{await self.text_or_none(failed)!r}.\n{await self.describe_screen()}"
            )
        agent = " ".join((await reply.locator("#response-message-model-name").inner_text()).split())
        shown = " ".join((await reply.locator(".markdown-prose").last.inner_text()).split())
        tools = []
        for button in await reply.get_by_role("button", name=TOOL_BUTTON).all():
            label = " ".join((await button.get_attribute("aria-label") or await button.inner_text()).split())
            match = TOOL_BUTTON.match(label)
            if match:
                tools.append(match.group(1))
        message_id = await reply.locator("[id^='message-']").first.get_attribute("id")
        if contains is not None and contains not in shown:
            raise AssertionError(
                f"{agent} replied {shown!r}, which does not contain {contains!r}.\n{await self.describe_screen()}"
            )
        self._sent_text = None
        return Reply(
            agent=agent, text=shown, tools=tools, id=(message_id or "").removeprefix("message-") or None
        )

    async def ask(self, text: str, contains: str | None = None, timeout: float = REPLY_TIMEOUT_S) -> Reply:
        """send() then wait_for_reply()."""
        __tracebackhide__ = True
        await self.send(text)
        return await self.wait_for_reply(contains=contains, timeout=timeout)

    # ------------------------------------------------------------------ history
    async def messages(self) -> list[Message]:
        """Every message of the open conversation, oldest first."""
        await self.load_whole_conversation()
        raw = await self.log.get_by_role("listitem").evaluate_all(_READ_LOG_JS)
        return [
            Message(m["role"], " ".join(m["text"].split()), m["agent"], m["status"], m["id"])
            for m in raw
            if m["role"] != "other"
        ]

    async def wait_for_messages(self, count: int, timeout: float = DEFAULT_TIMEOUT_S) -> list[Message]:
        """Wait until the conversation holds at least `count` messages, the last of them finished."""
        __tracebackhide__ = True
        await self.expect_visible(self.message_items.first, "the conversation's messages", timeout)
        last = self.message_items.last
        if await last.locator(".chat-assistant").count():
            await self.expect_visible(
                last.get_by_role("button", name="Copy", exact=True).or_(
                    last.locator("#response-content-container > div.rounded-2xl")
                ),
                "the last reply finished",
                timeout,
            )
        await self.load_whole_conversation(timeout)
        await self.expect_visible(
            self.message_items.nth(count - 1), f"at least {count} messages in the log", timeout
        )
        return await self.messages()

    async def wait_for_message_count(self, count: int, what: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        __tracebackhide__ = True
        await self.load_whole_conversation(timeout)
        try:
            await expect(self.message_items).to_have_count(count, timeout=timeout * 1000)
        except AssertionError:
            shown = [(m.role, m.status, m.text) for m in await self.messages()]
            raise AssertionError(
                f"expected {what} within {timeout:g}s ({count} messages), the log shows {len(shown)}: {shown!r}"
            ) from None

    async def user_request_ids(self) -> list[str | None]:
        """The request id of each of my messages, oldest first: the id of the reply right after it."""
        shown = await self.messages()
        return [
            shown[i + 1].id if i + 1 < len(shown) and shown[i + 1].role == "assistant" else None
            for i, m in enumerate(shown)
            if m.role == "user"
        ]

    def message_item(
        self, *, request_id: str | None = None, role: str | None = None, containing: str | None = None
    ) -> MessageItem:
        """The message of the turn `request_id` (its reply; with role="user" the message it answers),
        by `role`, or showing `containing`."""
        if request_id is not None:
            reply = self.log.get_by_role("listitem").filter(
                has=self.page.locator(f"[id='message-{request_id}']")
            )
            root = (
                reply.locator("xpath=preceding-sibling::*[@role='listitem'][1]") if role == "user" else reply
            )
        elif role == "user":
            root = self.user_items
        elif role == "assistant":
            root = self.assistant_items
        else:
            root = self.message_items
        if containing is not None:
            root = root.filter(has_text=containing)
        picked = ", ".join(
            f"{k} {v!r}"
            for k, v in (("request", request_id), ("role", role), ("text", containing))
            if v is not None
        )
        return MessageItem(self, root, f"the message ({picked or 'any'})")

    def reply_item(self, index: int) -> MessageItem:
        """The reply at `index` of the whole conversation (0 the first, -1 the last)."""
        root = self.assistant_items.last if index == -1 else self.assistant_items.nth(index)
        return MessageItem(self, root, "the last reply" if index == -1 else f"reply #{index + 1}")

    def last_message(self) -> MessageItem:
        return MessageItem(self, self.message_items.last, "the last message")

    async def new_chat(self) -> None:
        await (
            self.page.get_by_role("navigation", name="Chat history")
            .get_by_role("link", name="New Chat")
            .click()
        )

    async def active_thread(self, timeout: float = DEFAULT_TIMEOUT_S) -> str | None:
        """Title of the chat the screen has open (None: a new chat). Open WebUI selects a chat by
        its address (/c/<chat id>) and names it in the chat's top bar, its level-1 heading; the
        Chat history sidebar may be collapsed."""
        __tracebackhide__ = True
        if re.search(r"/c/[^/?#]+", self.page.url) is None:
            return None
        title = self.page.get_by_role("heading", level=1)
        await self.expect_visible(title, "the open chat's title in the top bar", timeout)
        return " ".join((await title.first.inner_text()).split()) or None


class ChatPage(BasePage):
    """The signed-in chat screen; loaded when the message input shows (the "What's New" dialog closed)."""

    path = "/"

    def __init__(self, page: Page, base_url: str, requests: TurnRequests | None = None) -> None:
        super().__init__(page, base_url)
        self.requests = requests
        self._chat = ChatPanel(page, base_url)  # one region per page (PyPOM's Region)

    @property
    def chat(self) -> ChatPanel:
        return self._chat

    @property
    def user_menu(self) -> Locator:
        return self.page.get_by_role("button", name="User menu")

    @property
    def banner(self) -> Locator:
        """Where the screen shows a turn's error: the error toast, or the newest reply's error box."""
        newest_error = self.chat.assistant_items.last.locator("#response-content-container > div.rounded-2xl")
        return self.page.locator(ERROR_TOAST).or_(newest_error)

    async def wait_until_loaded(self, timeout: float = DEFAULT_TIMEOUT_S) -> Self:
        __tracebackhide__ = True
        await self.expect_visible(
            self.chat.input.or_(WhatsNewDialog(self.page, "").close_button), "the chat screen", timeout
        )
        await WhatsNewDialog(self.page, self.base_url).dismiss_if_shown()
        await self.expect_visible(self.chat.input, "the message input of the chat screen", timeout)
        return self

    async def visit(self) -> Self:
        await self.page.goto(self.url_for(self.path))
        return self

    async def is_current(self) -> bool:
        path = "/" + self.page.url.split("//", 1)[-1].split("/", 1)[-1].split("?")[0]
        return path == "/" or path.startswith("/c/")

    # ------------------------------------------------------------------ the account
    async def _open_user_menu(self) -> Locator:
        await self.user_menu.click()
        menu = self.page.get_by_role("menu")
        await self.expect_visible(menu, "the user menu")
        return menu

    async def shown_name(self) -> str | None:
        """The name the screen shows for the signed-in person (the user menu's first line)."""
        menu = await self._open_user_menu()
        # The first item is the account: its picture, its name (`.truncate`), the count of users online.
        name = await menu.get_by_role("menuitem").first.evaluate(
            "el => el.querySelector('.truncate')?.innerText || ''"
        )
        await self.page.keyboard.press("Escape")
        return " ".join(str(name).split()) or None

    async def profile(self) -> Profile:
        """The account as Settings > Account shows it (the name; Open WebUI shows no email)."""
        menu = await self._open_user_menu()
        await menu.get_by_role("menuitem", name="Settings").click()
        dialog = self.page.get_by_role("dialog", name="Settings")
        await dialog.get_by_role("tab", name="Account").click()
        field = dialog.get_by_role("textbox", name="Name", exact=True)
        try:  # the tab fills the field once it has loaded the account
            await expect(field).not_to_have_value("", timeout=DEFAULT_TIMEOUT_S * 1000)
        except AssertionError:
            pass  # an account without a name: the empty field is what the screen shows
        name = await field.input_value()
        await self.page.keyboard.press("Escape")
        await dialog.wait_for(state="hidden")
        return Profile(full_name=name.strip() or None)

    async def frontend_state(self) -> dict[str, Any]:
        """What the frontend holds: the user of its token (claims) as it names them in the chat
        requests it sends (`{{USER_NAME}}`, `{{USER_EMAIL}}`), and the chat open in its address."""
        token = await self.page.evaluate("() => localStorage.getItem('token')")
        claims = _claims(token)
        body = self.requests.last_body(self.page) if self.requests is not None else None
        variables = (body or {}).get("variables") or {}
        match = re.search(r"/c/([^/?#]+)", self.page.url)
        return {
            "user": {
                "id": claims.get("id"),
                "email": variables.get("{{USER_EMAIL}}"),
                "full_name": variables.get("{{USER_NAME}}"),
            },
            "activeThreadId": match.group(1) if match else None,
        }

    async def logout(self, timeout: float = DEFAULT_TIMEOUT_S) -> SignInPage:
        """Sign out through the user menu; -> the sign-in screen, loaded."""
        __tracebackhide__ = True
        from targets.open_webui.pages.auth import SignInPage

        menu = await self._open_user_menu()
        await menu.get_by_role("menuitem", name="Sign Out").click()
        return await SignInPage(self.page, self.base_url, requests=self.requests).wait_until_loaded(timeout)

    # ------------------------------------------------------------------ errors
    async def error_banner(self) -> str | None:
        return await self.text_or_none(self.banner)

    async def wait_for_error_banner(
        self, contains: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
    ) -> str:
        """Wait for a turn's error on screen (toast or the reply's error box); -> its text."""
        __tracebackhide__ = True
        shown = self.banner.filter(has_text=contains) if contains else self.banner
        await self.expect_visible(
            shown, f"the error saying {contains!r}" if contains else "an error", timeout
        )
        return " ".join((await shown.filter(visible=True).first.inner_text()).split())

    async def wait_for_no_error_banner(self, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Wait until no error toast is up and the newest reply is no error."""
        __tracebackhide__ = True
        try:
            await expect(self.banner.filter(visible=True)).to_have_count(0, timeout=timeout * 1000)
        except AssertionError:
            raise AssertionError(
                f"expected the error to clear within {timeout:g}s, the screen still says {await self.error_banner()!r}"
            ) from None
