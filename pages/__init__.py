"""Building blocks of every target's page objects: `BasePage` (typed waiters that fail naming
what was expected and what the screen shows) and `Inbox` (the SMTP stand-in's mailbox).

A target's own page objects live in its folder (targets/<name>/pages).
"""

from pages.base import DEFAULT_TIMEOUT_S, BasePage
from pages.inbox import Inbox

__all__ = ["DEFAULT_TIMEOUT_S", "BasePage", "Inbox"]
