"""The capability vocabulary: what a platform may or may not do, named once.

A journey (or one of its steps) declares the capabilities it needs; a target declares the ones
it has. A journey that needs what the target lacks ends "not applicable to <target>: lacks
<capability>", never a silent pass. A name outside this vocabulary is an error wherever it
appears (a journey marker, a target file), so a typo can never turn a journey off.

What is only known while running is raised: `raise NotApplicable(target, "refresh_token")`
ends the test "not applicable" the same way (harness/plugin.py turns it into that report).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from harness.redact import redact

CAPABILITIES: dict[str, str] = {
    "email_verification": "sign-up sends a verification mail; unverified accounts cannot sign in",
    "password_signup": "people sign up with an email and a password through the UI",
    "oauth": "sign-in through an OpenID Connect provider",
    "oauth_linking": "an OAuth sign-in with the email of a password account links to that account",
    "oauth_state_store": "the auth service keeps each started OAuth sign-in's state server-side (a probe reads it; a refused callback spends it)",
    "refresh_token": "a refresh token renews the access token and rotates itself",
    "session_revocation": "a signed-out session is refused by the chat socket",
    "open_socket_revocation": "an open chat socket is closed when its session ends elsewhere",
    "token_minting": "Throughline holds the signing key and can mint tokens wrong in one claim",
    "agent_routing": "a supervisor routes each message to one of several named agents",
    "tool_calls": "agents call tools and the socket reports the call and its result",
    "streaming": "replies stream over the socket in chunks",
    "usage_analytics": "one usage event per LLM call in an analytics store (ClickHouse)",
    "usage_outbox": "usage goes through a durable outbox before the analytics store",
    "billing": "usage becomes an exact, idempotent invoice",
    "http_rate_limit": "API requests are rate limited per user (429 + Retry-After)",
    "ws_rate_limit": "chat messages are rate limited per user on the socket",
    "agent_concurrency_limit": "concurrent agent runs per user are limited",
    "login_rate_limit": "failed sign-ins are limited per email",
    "session_restore": "the active conversation survives a backend restart and a reload",
    "connection_indicator": "the chat screen shows its socket's state (Reconnecting…, Connected) and refuses to send while it is down",
    "service_control": "Throughline runs the platform's processes and can stop, kill and restart them",
    "message_usage": "each stored reply carries the tokens its turn used, as the socket reported them",
    "session_store": "each sign-in is a session the server stores, listable per user",
    "socket_greeting": "the chat socket greets the browser's authenticated connection, naming its user",
    "thinking_events": "the socket says the agent is thinking before a turn's tool calls and chunks",
    "socket_frame_errors": "the chat socket answers a malformed or unknown frame with an error and stays open",
    "error_codes": "a failed turn's error names its cause as a code, says if the chat can go on, and the UI words it",
    "failed_turns_discarded": "a turn the LLM fails leaves no message in the conversation store",
    "profile_email": "the signed-in screen shows the account's email address",
}


class UnknownCapabilityError(ValueError):
    """A capability name outside the vocabulary."""


def check_capabilities(names: Iterable[str], where: str) -> tuple[str, ...]:
    """The names, validated; UnknownCapabilityError naming `where` and the vocabulary otherwise."""
    names = tuple(names)
    unknown = [n for n in names if n not in CAPABILITIES]
    if unknown:
        raise UnknownCapabilityError(
            f"{where}: unknown capability {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(CAPABILITIES))}"
        )
    return names


def not_applicable_reason(target: str, lacking: Iterable[str], detail: str | None = None) -> str:
    """`not applicable to <target>: lacks <capability>[, <capability>][ (<detail>)]`, the one wording."""
    reason = f"not applicable to {target}: lacks {', '.join(lacking)}"
    return f"{reason} ({detail})" if detail else reason


class NotApplicable(Exception):
    """Raised by a test that finds, while running, that the target cannot do what it checks.

    `NotApplicable(target, "refresh_token")` names a capability from the vocabulary;
    anything else is taken as a free-form reason. The test ends "not applicable", not failed.
    """

    def __init__(self, target: Any, capability_or_reason: str, detail: str | None = None) -> None:
        self.target = str(getattr(target, "name", target))
        self.capability = capability_or_reason if capability_or_reason in CAPABILITIES else None
        if self.capability is not None:
            self.reason = not_applicable_reason(self.target, [self.capability], detail)
        else:
            extra = f" ({detail})" if detail else ""
            self.reason = f"not applicable to {self.target}: {capability_or_reason}{extra}"
        super().__init__(self.reason)


# A report attribute, so the terminal, JUnit and HTML sides can tell a not-applicable skip from a
# plain one without parsing messages; plain data, so it survives report serialisation (xdist).
NOT_APPLICABLE_ATTR = "throughline_not_applicable"


def mark_not_applicable(report: Any, location: tuple[str, int], reason: str) -> None:
    """Turn a test report into a not-applicable skip whose reason is `reason`, exactly."""
    reason = redact(reason)
    report.outcome = "skipped"
    # pytest's skip shape (path, line, "Skipped: ..."): JUnit's <skipped message> is then `reason`.
    report.longrepr = (location[0], location[1], f"Skipped: {reason}")
    if hasattr(report, "wasxfail"):
        del report.wasxfail  # an xfail marker (a registered defect) must not claim it
    setattr(report, NOT_APPLICABLE_ATTR, reason)


def not_applicable_reason_of(report: Any) -> str | None:
    """The not-applicable reason of a test report, or None for any other outcome."""
    reason = getattr(report, NOT_APPLICABLE_ATTR, None)
    return reason if isinstance(reason, str) and getattr(report, "skipped", False) else None
