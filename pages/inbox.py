"""Inbox: the SMTP sink's HTTP API (`GET /messages?to=`) as a person's mailbox."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx

from pages.base import DEFAULT_TIMEOUT_S

VERIFY_LINK_RE = re.compile(r"""https?://[^\s"'<>]+/auth/verify\?token=[^\s"'<>&]+""")
_LONG_POLL_S = 5.0


class Inbox:
    """Mail captured by the SMTP sink; waiters poll with a deadline (the sink long-polls)."""

    def __init__(self, sink_url: str, client: httpx.AsyncClient | None = None) -> None:
        self.sink_url = sink_url.rstrip("/")
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(_LONG_POLL_S + 5))
        self._owns_client = client is None

    async def __aenter__(self) -> Inbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def messages(self, to: str, wait: float = 0) -> list[dict[str, Any]]:
        """Messages to `to`, oldest first; `wait` > 0 long-polls until at least one exists."""
        params: dict[str, str] = {"to": to}
        if wait > 0:
            params["wait"] = f"{wait:.2f}"
        response = await self._client.get(f"{self.sink_url}/messages", params=params)
        response.raise_for_status()
        data = response.json()
        return list(data if isinstance(data, list) else data.get("messages", []))

    async def wait_for_message(
        self, to: str, subject_contains: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
    ) -> dict[str, Any]:
        """The newest message to `to` (optionally whose subject contains `subject_contains`)."""
        __tracebackhide__ = True

        def newest_match(found: list[dict[str, Any]]) -> dict[str, Any] | None:
            for message in reversed(found):
                if (
                    subject_contains is None
                    or subject_contains.lower() in str(message.get("subject", "")).lower()
                ):
                    return message
            return None

        message: dict[str, Any] = (await self._poll(to, newest_match, "a message", timeout))[0]
        return message

    async def wait_for_verification_link(self, email: str, timeout: float = DEFAULT_TIMEOUT_S) -> str:
        """The newest `/auth/verify?token=` link mailed to `email`."""
        __tracebackhide__ = True

        def newest_link(found: list[dict[str, Any]]) -> str | None:
            for message in reversed(found):
                link = verification_link(message)
                if link:
                    return link
            return None

        return (await self._poll(email, newest_link, "a verification link", timeout))[0]

    async def _poll(self, to: str, pick: Any, what: str, timeout: float) -> tuple[Any, list[dict[str, Any]]]:
        __tracebackhide__ = True
        deadline = time.monotonic() + timeout
        found: list[dict[str, Any]] = []
        pause = 0.05
        while True:
            remaining = deadline - time.monotonic()
            # Nothing yet: let the sink hold the request until mail arrives. Mail that does not match:
            # ask again shortly (the sink answers at once when any mail for `to` exists).
            wait = min(_LONG_POLL_S, max(remaining, 0)) if not found else 0
            found = await self.messages(to, wait=wait)
            result = pick(found)
            if result is not None:
                return result, found
            if time.monotonic() >= deadline:
                subjects = [m.get("subject") for m in found]
                raise AssertionError(
                    f"expected {what} for {to} within {timeout:g}s at {self.sink_url}; "
                    f"the inbox holds {len(found)} message(s) with subjects {subjects!r}"
                )
            if found:
                await asyncio.sleep(min(pause, max(deadline - time.monotonic(), 0)))
                pause = min(pause * 2, 0.5)


def verification_link(message: dict[str, Any]) -> str | None:
    """The verification link of one sink message (from `links`, else from the text/html body)."""
    for link in message.get("links") or []:
        if VERIFY_LINK_RE.fullmatch(str(link)) or "/auth/verify?token=" in str(link):
            return str(link)
    for part in ("text", "html", "body"):
        match = VERIFY_LINK_RE.search(str(message.get(part) or ""))
        if match:
            return match.group(0).replace("&amp;", "&")
    return None
