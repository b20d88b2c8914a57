"""Announcing new users to the backend: an outbox table plus a background deliverer.

The signup (or OAuth sign-up) transaction inserts the exact JSON body into
`announcements`; `Announcer.run()` POSTs it to `{TL_BACKEND_URL}/internal/users` signed
with `X-Throughline-Signature` (stack.common.signing) and the signup's `X-Request-ID`.
A failure is logged and retried with exponential backoff (0.5 s doubling, capped at
30 s) up to MAX_ATTEMPTS, then the row is marked failed (logged as an error). So a
signup never fails because the backend is down, and the profile appears when it is back.
The backend's endpoint is idempotent, so a duplicate delivery is harmless.

A sign-up that lands in the app at once (OAuth) first delivers its own announcement inline,
`Announcer.deliver_now`, bounded in time: the app's first `GET /api/me` must find the profile.
The outbox stays the fallback when the backend is down or slow.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime

import asyncpg
import httpx

from stack.common.request_id import REQUEST_ID_HEADER, bind_request_id
from stack.common.signing import SIGNATURE_HEADER, sign_body

__all__ = ["Announcer", "announcement_body"]

log = logging.getLogger("auth.announce")
MAX_ATTEMPTS = 40
IDLE_POLL = 5.0
# The announcements still to deliver, with what delivering one needs.
PENDING = (
    "SELECT id, user_id, body, attempts, request_id FROM announcements"
    " WHERE delivered_at IS NULL AND failed_at IS NULL"
)


def announcement_body(user_id: str, email: str, full_name: str, created_at: datetime) -> str:
    return json.dumps(
        {"user_id": user_id, "email": email, "full_name": full_name, "created_at": created_at.isoformat()}
    )


def backoff(attempts: int) -> float:
    return min(30.0, 0.5 * 2 ** max(attempts - 1, 0))


class Announcer:
    def __init__(self, pool: asyncpg.Pool, backend_url: str, secret: str, client: httpx.AsyncClient) -> None:
        self.pool = pool
        self.url = f"{backend_url}/internal/users"
        self.secret = secret
        self.client = client
        self._wake = asyncio.Event()

    @staticmethod
    async def enqueue(con: asyncpg.Connection, user_id: str, body: str, request_id: str | None) -> None:
        """Insert inside the caller's transaction (the user row and its announcement commit together)."""
        await con.execute(
            "INSERT INTO announcements (user_id, body, request_id) VALUES ($1, $2, $3)",
            user_id,
            body,
            request_id,
        )

    def wake(self) -> None:
        self._wake.set()

    async def deliver_now(self, user_id: str, timeout: float) -> bool:
        """Deliver `user_id`'s pending announcement before the caller answers, within `timeout`.

        Without it the redirect of an OAuth sign-up beats the background delivery, and the
        dashboard's first `GET /api/me` answers 404 (caught by the OAuth sign-in journey under
        two workers). False when it could not: the row stays due and the loop retries it.
        """
        delivered = 0
        try:
            async with asyncio.timeout(timeout):
                row = await self.pool.fetchrow(f"{PENDING} AND user_id = $1 ORDER BY id LIMIT 1", user_id)
                if row is None:
                    return True
                delivered = await self._deliver(row)
        except TimeoutError:
            log.warning("announcing user %s took over %.1f s; the outbox delivers it", user_id, timeout)
        if not delivered:
            self.wake()
        return bool(delivered)

    async def run(self) -> None:
        while True:
            self._wake.clear()
            delay = IDLE_POLL
            try:
                await self.deliver_due()
                delay = await self._next_delay()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # store down: keep the loop alive, try again soon
                log.warning("announcement pass failed: %s", exc)
                delay = 2.0
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def _next_delay(self) -> float:
        seconds = await self.pool.fetchval(
            "SELECT EXTRACT(EPOCH FROM min(next_attempt_at) - now()) FROM announcements"
            " WHERE delivered_at IS NULL AND failed_at IS NULL"
        )
        if seconds is None:
            return IDLE_POLL
        return min(max(float(seconds), 0.05), IDLE_POLL)

    async def deliver_due(self) -> int:
        """Try every due announcement once; returns how many were delivered."""
        rows = await self.pool.fetch(f"{PENDING} AND next_attempt_at <= now() ORDER BY id LIMIT 50")
        delivered = 0
        for row in rows:
            delivered += await self._deliver(row)
        return delivered

    async def _deliver(self, row: asyncpg.Record) -> int:
        """POST one announcement (a row of PENDING) under its signup's request id; 1 if accepted."""
        with bind_request_id(row["request_id"]):
            return await self._post(row)

    async def _post(self, row: asyncpg.Record) -> int:
        body = row["body"].encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign_body(body, self.secret),
            REQUEST_ID_HEADER: row["request_id"] or "",
        }
        attempts = row["attempts"] + 1
        error = ""
        try:
            response = await self.client.post(self.url, content=body, headers=headers, timeout=5.0)
            if response.is_success:
                await self.pool.execute(
                    "UPDATE announcements SET delivered_at = now(), attempts = $2 WHERE id = $1",
                    row["id"],
                    attempts,
                )
                log.info("announced user %s to the backend (attempt %d)", row["user_id"], attempts)
                return 1
            error = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        if attempts >= MAX_ATTEMPTS:
            await self.pool.execute(
                "UPDATE announcements SET attempts = $2, last_error = $3, failed_at = now() WHERE id = $1",
                row["id"],
                attempts,
                error,
            )
            log.error("giving up announcing user %s after %d attempts: %s", row["user_id"], attempts, error)
        else:
            delay = backoff(attempts)
            await self.pool.execute(
                "UPDATE announcements SET attempts = $2, last_error = $3,"
                " next_attempt_at = now() + make_interval(secs => $4) WHERE id = $1",
                row["id"],
                attempts,
                error,
                delay,
            )
            log.warning(
                "announcing user %s failed (attempt %d/%d): %s; retry in %.1f s",
                row["user_id"],
                attempts,
                MAX_ATTEMPTS,
                error,
                delay,
            )
        return 0
