"""Page objects of Open WebUI 0.12's own frontend (the SvelteKit app its wheel serves).

Locators by role and label first (its textboxes, buttons and the chat log are named); its
element ids and classes only where nothing else names an element (the chat input's container,
a reply's model name, the error box inside a reply, sonner's toasts).
"""

from targets.open_webui.pages.auth import SignInPage, SignupPage
from targets.open_webui.pages.chat import (
    REPLY_TIMEOUT_S,
    ChatPage,
    ChatPanel,
    Message,
    MessageItem,
    Profile,
    Reply,
    ToolUse,
    WhatsNewDialog,
)

__all__ = [
    "REPLY_TIMEOUT_S",
    "ChatPage",
    "ChatPanel",
    "Message",
    "MessageItem",
    "Profile",
    "Reply",
    "SignInPage",
    "SignupPage",
    "ToolUse",
    "WhatsNewDialog",
]
