"""Page objects of the Throughline Chat frontend (Playwright async API).

Locators by role, then label, then test id; an action that leads elsewhere returns the next
page object already loaded; page objects know the DOM and nothing about the databases.
"""

from pages.base import DEFAULT_TIMEOUT_S, BasePage
from pages.chat import ChatPanel, Message, Reply
from pages.dashboard import DashboardPage, Profile, RateLimitNotice, Usage
from pages.inbox import Inbox
from pages.login import LoginPage
from pages.oauth import OAuthConsentPage
from pages.signup import CheckEmailState, SignupPage

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "BasePage",
    "ChatPanel",
    "CheckEmailState",
    "DashboardPage",
    "Inbox",
    "LoginPage",
    "Message",
    "OAuthConsentPage",
    "Profile",
    "RateLimitNotice",
    "Reply",
    "SignupPage",
    "Usage",
]
