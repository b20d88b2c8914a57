"""Page objects of the reference frontend (Playwright async API).

Locators by role, then label, then test id; an action that leads elsewhere returns the next
page object already loaded; page objects know the DOM and nothing about the databases.
"""

from targets.reference.pages.chat import REPLY_TIMEOUT_S, ChatPanel, Message, Reply
from targets.reference.pages.dashboard import DashboardPage, Profile, RateLimitNotice, Usage
from targets.reference.pages.login import LoginPage
from targets.reference.pages.oauth import OAuthConsentPage
from targets.reference.pages.signup import CheckEmailState, SignupPage

__all__ = [
    "REPLY_TIMEOUT_S",
    "ChatPanel",
    "CheckEmailState",
    "DashboardPage",
    "LoginPage",
    "Message",
    "OAuthConsentPage",
    "Profile",
    "RateLimitNotice",
    "Reply",
    "SignupPage",
    "Usage",
]
