"""The reference platform behind the neutral `App`: its APIs, pages, socket and stores.

Everything journeys must not spell out lives here: the auth and backend routes, the
`tl.*` localStorage keys, the SQL over the `auth` and `backend` databases, the Redis keys
(`auth:session:*`, `chat:session:*`, `rl:*`), the ClickHouse `analytics.usage_events` table.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import jwt

from db_probes import ClickHouseProbe, PostgresProbe, RedisProbe
from harness.app import (
    ApiAnswer,
    App,
    ChatStateRecord,
    CounterRecord,
    Handshake,
    IdentityRecord,
    MessageRecord,
    PendingUsageRecord,
    ProfileRecord,
    Records,
    SessionRecord,
    TestUser,
    ThreadRecord,
    UsageRecord,
    UserRecord,
    unique_email,
)
from harness.controls import LLMControl
from pages import Inbox
from targets.reference import protocol
from targets.reference.pages import REPLY_TIMEOUT_S, DashboardPage, LoginPage, SignupPage

PROVIDER = "acme"

_TOKENS_JS = "() => ({access: localStorage.getItem('tl.access_token'), refresh: localStorage.getItem('tl.refresh_token')})"
_PUT_TOKENS_JS = """([a, r]) => {
  if (a === null) localStorage.removeItem('tl.access_token'); else localStorage.setItem('tl.access_token', a);
  if (r === null) localStorage.removeItem('tl.refresh_token'); else localStorage.setItem('tl.refresh_token', r);
}"""


def claims_of(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (a journey only reads what the browser already holds)."""
    return dict(jwt.decode(token, options={"verify_signature": False}))


class ReferenceUsers:
    """Fresh users through the real auth API: signup, the verification mail, the link, login."""

    def __init__(self, app: ReferenceApp) -> None:
        self.app = app
        self.created: list[TestUser] = []

    async def signup(self, tag: str = "user", full_name: str | None = None) -> TestUser:
        """Signed up, not verified."""
        user = TestUser(email=unique_email(tag), full_name=full_name or f"{tag.title()} Tester")
        response = await self.app.http.post(
            f"{self.app.urls['auth_url']}/auth/signup",
            json={"email": user.email, "password": user.password, "full_name": user.full_name},
        )
        assert response.status_code == 201, (
            f"signup of {user.email} answered {response.status_code}: {response.text}"
        )
        user.user_id = response.json()["user_id"]
        self.created.append(user)
        return user

    async def verify(self, user: TestUser) -> None:
        link = await self.app.inbox.wait_for_verification_link(user.email)
        response = await self.app.http.get(link, headers={"Accept": "application/json"})
        assert response.status_code == 200, (
            f"verification link answered {response.status_code}: {response.text}"
        )

    async def login(self, user: TestUser) -> dict[str, Any]:
        """A new session over the API; the user's tokens are replaced by it."""
        answer = await self.app.auth_login(user.email, user.password)
        assert answer.status == 200, f"login of {user.email} answered {answer.status}: {answer.text}"
        user.tokens = dict(answer.body)
        return user.tokens

    async def verified(self, tag: str = "user", full_name: str | None = None) -> TestUser:
        """Signed up and verified (can log in)."""
        user = await self.signup(tag, full_name)
        await self.verify(user)
        return user

    async def logged_in(self, tag: str = "user", full_name: str | None = None) -> TestUser:
        """Verified and holding tokens from a real login."""
        user = await self.verified(tag, full_name)
        await self.login(user)
        return user


class ReferenceRecords(Records):
    """Reads of the `auth` and `backend` databases, Redis and ClickHouse."""

    app: ReferenceApp

    def __init__(self, app: ReferenceApp) -> None:
        super().__init__(app)
        urls, rec = app.urls, app.probe_recorder
        self.auth_db = PostgresProbe(urls["auth_dsn"], name="postgres/auth", recorder=rec)
        self.backend_db = PostgresProbe(urls["backend_dsn"], name="postgres/backend", recorder=rec)
        self.redis = RedisProbe(urls["redis_url"], recorder=rec)
        self.clickhouse = ClickHouseProbe(urls["clickhouse_url"], recorder=rec)

    async def close(self) -> None:
        for probe in (self.auth_db, self.backend_db, self.redis, self.clickhouse):
            await probe.close()

    # -- identity ------------------------------------------------------------------------------
    async def user(self, email: str) -> UserRecord | None:
        row = await self.auth_db.one(
            "SELECT id, email, full_name, email_verified_at, password_hash FROM users WHERE email = $1", email
        )
        if row is None:
            return None
        return UserRecord(
            id=str(row["id"]),
            email=row["email"],
            full_name=row["full_name"],
            verified=row["email_verified_at"] is not None,
            credential=row["password_hash"],
        )

    async def user_by_id(self, user_id: str) -> UserRecord | None:
        row = await self.auth_db.one(
            "SELECT id, email, full_name, email_verified_at, password_hash FROM users WHERE id = $1::uuid",
            user_id,
        )
        if row is None:
            return None
        return UserRecord(
            str(row["id"]),
            row["email"],
            row["full_name"],
            row["email_verified_at"] is not None,
            row["password_hash"],
        )

    async def count_users(self, email: str, *, any_case: bool = False) -> int:
        where = "lower(email) = lower($1)" if any_case else "email = $1"
        return await self.auth_db.count("users", where, email)

    async def identities(
        self, *, user_id: str | None = None, email: str | None = None, subject: str | None = None
    ) -> list[IdentityRecord]:
        """OAuth identities linked to a user, with an email, or with a provider subject."""
        clauses, args = [], []
        for column, value in (("user_id", user_id), ("email", email), ("subject", subject)):
            if value is not None:
                args.append(value)
                cast = "::uuid" if column == "user_id" else ""
                clauses.append(f"{column} = ${len(args)}{cast}")
        rows = await self.auth_db.rows(
            "SELECT provider, subject, user_id, email FROM identities WHERE "
            + (" AND ".join(clauses) or "TRUE")
            + " ORDER BY created_at",
            *args,
        )
        return [IdentityRecord(r["provider"], r["subject"], str(r["user_id"]), r["email"]) for r in rows]

    async def profile(self, user_id: str) -> ProfileRecord | None:
        row = await self.backend_db.one(
            "SELECT user_id, email, full_name, plan FROM profiles WHERE user_id = $1::uuid", user_id
        )
        if row is None:
            return None
        return ProfileRecord(str(row["user_id"]), row["email"], row["full_name"], row["plan"])

    async def count_profiles(self, email: str) -> int:
        return await self.backend_db.count("profiles", "email = $1", email)

    # -- sessions --------------------------------------------------------------------------------
    async def session(self, session_id: str) -> SessionRecord:
        key = await self.redis.key(f"auth:session:{session_id}")
        value = key.value if isinstance(key.value, dict) else {}
        return SessionRecord(session_id, key.exists, value.get("user_id"), key.ttl if key.ttl >= 0 else None)

    async def sessions(self, *, user_id: str | None = None, email: str | None = None) -> list[SessionRecord]:
        """Live sessions (of a user id or an email; all when neither is given)."""
        found = []
        for name in await self.redis.keys("auth:session:*"):
            key = await self.redis.key(name)
            value = key.value if isinstance(key.value, dict) else {}
            if (user_id is None and email is None) or (
                (user_id is not None and value.get("user_id") == user_id)
                or (email is not None and value.get("email") == email)
            ):
                sid = name.removeprefix("auth:session:")
                found.append(
                    SessionRecord(sid, key.exists, value.get("user_id"), key.ttl if key.ttl >= 0 else None)
                )
        return found

    async def oauth_pending(self, state: str) -> bool:
        """Whether a started OAuth sign-in with this `state` is still waiting for its callback."""
        return (await self.redis.key(f"auth:oauth_state:{state}")).exists

    async def chat_state(self, user_id: str) -> ChatStateRecord:
        key = await self.redis.key(f"chat:session:{user_id}")
        value = key.value if isinstance(key.value, dict) else {}
        return ChatStateRecord(key.exists, value.get("active_thread_id"), dict(value))

    # -- conversations ---------------------------------------------------------------------------
    async def threads(self, user_id: str) -> list[ThreadRecord]:
        rows = await self.backend_db.rows(
            "SELECT id, user_id, title FROM threads WHERE user_id = $1::uuid ORDER BY created_at", user_id
        )
        return [ThreadRecord(str(r["id"]), str(r["user_id"]), r["title"]) for r in rows]

    async def _messages(self, where: str, *args: Any) -> list[MessageRecord]:
        """Stored messages matching `where`, oldest first, a user message before its reply."""
        rows = await self.backend_db.rows(
            "SELECT id, role, content, thread_id, request_id, agent, prompt_tokens, completion_tokens, "
            f"user_id, run_id FROM messages WHERE {where} ORDER BY created_at, role DESC",
            *args,
        )
        return [
            MessageRecord(
                str(r["id"]),
                r["role"],
                r["content"],
                str(r["thread_id"]),
                r["request_id"],
                r["agent"],
                r["prompt_tokens"],
                r["completion_tokens"],
                str(r["user_id"]) if r["user_id"] is not None else None,
                str(r["run_id"]) if r["run_id"] is not None else None,
            )
            for r in rows
        ]

    async def messages(
        self,
        *,
        thread_id: str | None = None,
        request_id: str | None = None,
        request_ids: Iterable[str] | None = None,
    ) -> list[MessageRecord]:
        ids = None if request_ids is None else list(request_ids)
        if ids == []:
            return []  # messages of no request at all (an empty filter must not mean "every message")
        clauses: list[str] = []
        args: list[Any] = []
        if thread_id is not None:
            args.append(thread_id)
            clauses.append(f"thread_id = ${len(args)}::uuid")
        if request_id is not None:
            args.append(request_id)
            clauses.append(f"request_id = ${len(args)}")
        if ids is not None:
            args.append(ids)
            clauses.append(f"request_id = ANY(${len(args)}::text[])")
        return await self._messages(" AND ".join(clauses) or "TRUE", *args)

    # -- usage -----------------------------------------------------------------------------------
    async def usage(
        self, *, user_id: str | None = None, request_id: str | None = None, run_id: str | None = None
    ) -> list[UsageRecord]:
        where = {
            k: v
            for k, v in (("user_id", user_id), ("request_id", request_id), ("run_id", run_id))
            if v is not None
        }
        if not where:
            raise ValueError(
                "usage() needs a user_id, request_id or run_id (a None filter must not match every row)"
            )
        rows = await self.clickhouse.usage_events(**where)
        return [
            UsageRecord(
                event_id=str(r["event_id"]),
                request_id=r["request_id"],
                user_id=str(r["user_id"]),
                thread_id=str(r["thread_id"]) if r.get("thread_id") is not None else None,
                run_id=str(r["run_id"]) if r.get("run_id") is not None else None,
                agent=r["agent"],
                model=r["model"],
                prompt_tokens=int(r["prompt_tokens"]),
                completion_tokens=int(r["completion_tokens"]),
                cost_usd=r["cost_usd"],
                created_at=r.get("created_at"),
            )
            for r in rows
        ]

    async def pending_usage(self, request_id: str, *, unflushed_only: bool = False) -> int:
        where = "request_id = $1" + (" AND flushed_at IS NULL" if unflushed_only else "")
        return await self.backend_db.count("usage_outbox", where, request_id)

    # -- billing ---------------------------------------------------------------------------------
    async def invoices(self, user_id: str, period: str | None = None) -> list[dict[str, Any]]:
        """Stored invoices (id, period, total_usd, prompt_tokens, completion_tokens) of a user."""
        args: list[Any] = [user_id]
        where = "user_id = $1::uuid"
        if period is not None:
            args.append(period)
            where += " AND period = $2"
        return await self.backend_db.rows(
            "SELECT id::text AS id, user_id::text AS user_id, period, total_usd, prompt_tokens, completion_tokens "
            f"FROM invoices WHERE {where} ORDER BY created_at",
            *args,
        )

    async def invoice_lines(self, invoice_id: str) -> list[dict[str, Any]]:
        """Stored lines (agent, model, prompt_tokens, completion_tokens, amount_usd) of an invoice."""
        return await self.backend_db.rows(
            "SELECT agent, prompt_tokens, completion_tokens, amount_usd FROM invoice_lines WHERE invoice_id = $1::uuid",
            invoice_id,
        )

    # -- counters --------------------------------------------------------------------------------
    async def rate_counter(self, scope: str, subject: str) -> CounterRecord:
        """A rate-limit counter: scope http|ws|agent per user id, or login per email."""
        name = f"auth:login_fail:{subject}" if scope == "login" else f"rl:{scope}:{subject}"
        key = await self.redis.key(name)
        value = key.value
        if scope == "agent" and key.type == "zset":
            # one member per running turn, scored with its slot's expiry (ms): count the live ones
            now_ms = time.time() * 1000
            value = str(sum(1 for _, expires_ms in key.value or () if expires_ms > now_ms))
        return CounterRecord(name, key.exists, value, key.ttl if key.ttl >= 0 else None)

    async def thread_messages(self, thread_id: str) -> list[MessageRecord]:
        return await self._messages("thread_id = $1::uuid", thread_id)

    async def user_messages(self, user_id: str) -> list[MessageRecord]:
        return await self._messages("user_id = $1::uuid", user_id)

    async def outbox(self, request_id: str) -> list[PendingUsageRecord]:
        rows = await self.backend_db.rows(
            "SELECT request_id, prompt_tokens, completion_tokens, flushed_at FROM usage_outbox "
            "WHERE request_id = $1 ORDER BY created_at",
            request_id,
        )
        return [
            PendingUsageRecord(
                r["request_id"], r["prompt_tokens"], r["completion_tokens"], r["flushed_at"] is not None
            )
            for r in rows
        ]

    async def reconnect(self) -> None:
        await self.close()  # every probe opens a new connection (pool) on its next read

    async def messages_with_runs(self, user_id: str) -> list[MessageRecord]:
        return await self._messages("user_id = $1::uuid", user_id)


class ReferenceApp(App):
    """The reference platform (stack/) in the product's language."""

    records: ReferenceRecords

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decoder = protocol.ReferenceDecoder()
        self.inbox = Inbox(self.urls["smtp_sink_url"], client=self.http)
        self.users = ReferenceUsers(self)
        self.records = ReferenceRecords(self)
        self.llm = LLMControl(self.http, self.urls["llm_url"])
        self.provider_name = self.knob("OIDC_PROVIDER_NAME")
        self.on_close(self.records.close)

    def knob(self, name: str) -> str:
        value = self.stack.platform_env.get(f"TL_{name}") or os.environ.get(f"THROUGHLINE_STACK_{name}")
        if value is None:
            defaults = {"OIDC_PROVIDER_NAME": "Acme ID"}
            if name in defaults:
                return defaults[name]
            raise KeyError(f"no knob {name!r} in the reference target (targets/reference/services.toml)")
        return value

    # -- pages -----------------------------------------------------------------------------------
    def signup_page(self, page: Any) -> SignupPage:
        return SignupPage(page, self.urls["frontend_url"])

    def login_page(self, page: Any) -> LoginPage:
        return LoginPage(page, self.urls["frontend_url"], self.provider_name)

    def dashboard_page(self, page: Any, expected_name: str | None = None) -> DashboardPage:
        return DashboardPage(page, self.urls["frontend_url"], expected_name)

    async def login(self, page: Any, user: TestUser) -> DashboardPage:
        """Open the login page in `page`, sign `user` in; -> the dashboard, loaded."""
        login = await self.login_page(page).open()
        return await login.login(user.email, user.password)

    # -- what the browser holds ------------------------------------------------------------------
    async def tokens_in(self, page: Any) -> dict[str, str | None]:
        """The tokens the frontend keeps: {"access": ..., "refresh": ...} (None when absent)."""
        return dict(await page.evaluate(_TOKENS_JS))

    async def put_tokens(self, page: Any, access: str | None, refresh: str | None) -> None:
        """Plant tokens where the frontend keeps them (as a stale or stolen session would)."""
        await page.evaluate(_PUT_TOKENS_JS, [access, refresh])

    async def stored_keys(self, page: Any) -> list[str]:
        """The names of what the frontend keeps in the browser's storage."""
        return list(await page.evaluate("() => Object.keys(localStorage).filter(k => k.startsWith('tl.'))"))

    async def remembered_thread(self, page: Any) -> str | None:
        return await page.evaluate("() => localStorage.getItem('tl.active_thread_id')")  # type: ignore[no-any-return]

    async def remember_thread(self, page: Any, thread_id: str) -> None:
        await page.evaluate("id => localStorage.setItem('tl.active_thread_id', id)", thread_id)

    def claims_of(self, token: str) -> dict[str, Any]:
        return claims_of(token)

    def session_id_of(self, token: str) -> str:
        """The session a token belongs to."""
        return str(claims_of(token)["sid"])

    # -- tokens ----------------------------------------------------------------------------------
    async def signing_key(self) -> tuple[bytes, str]:
        """The auth service's RS256 private key and its kid (to mint tokens wrong in one claim)."""
        self.require("token_minting", "the signing key is not available")
        pem = Path(self.stack.platform_env["TL_JWT_PRIVATE_KEY_FILE"]).read_bytes()  # noqa: ASYNC240 - a small local file
        keys = (await self.http.get(f"{self.urls['auth_url']}/.well-known/jwks.json")).json()["keys"]
        assert len(keys) == 1, f"the auth service publishes {len(keys)} keys; expected the one it signs with"
        return pem, str(keys[0]["kid"])

    async def mint(self, like: str, **overrides: Any) -> str:
        """A token signed with the platform's real key: the claims of `like`, with `overrides`."""
        pem, kid = await self.signing_key()
        claims = {**claims_of(like), "jti": uuid.uuid4().hex, **overrides}
        return jwt.encode(claims, pem, algorithm="RS256", headers={"kid": kid})

    async def expired_token(self, like: str) -> str:
        now = int(time.time())
        return await self.mint(like, iat=now - 1800, exp=now - 600)

    # -- the auth API ----------------------------------------------------------------------------
    async def auth_login(self, email: str, password: str) -> ApiAnswer:
        response = await self.http.post(
            f"{self.urls['auth_url']}/auth/login", json={"email": email, "password": password}
        )
        return ApiAnswer.of(response)

    async def refresh(self, refresh_token: str) -> ApiAnswer:
        response = await self.http.post(
            f"{self.urls['auth_url']}/auth/refresh", json={"refresh_token": refresh_token}
        )
        return ApiAnswer.of(response)

    async def logout(self, access_token: str) -> ApiAnswer:
        """End the session elsewhere (as another tab or device would)."""
        response = await self.http.post(
            f"{self.urls['auth_url']}/auth/logout", headers={"Authorization": f"Bearer {access_token}"}
        )
        return ApiAnswer.of(response)

    def oauth_start_url(self) -> str:
        return f"{self.urls['auth_url']}/auth/oauth/{PROVIDER}/start"

    # -- the backend API -------------------------------------------------------------------------
    async def api(self, method: str, path: str, user: TestUser | None = None, **kwargs: Any) -> ApiAnswer:
        """A backend API call as `user` (their access token), e.g. api("GET", "/api/me", ada)."""
        headers = dict(kwargs.pop("headers", {}) or {})
        if user is not None:
            headers["Authorization"] = f"Bearer {user.access_token}"
        response = await self.http.request(
            method, f"{self.urls['backend_url']}{path}", headers=headers, **kwargs
        )
        return ApiAnswer.of(response)

    async def my_threads(self, user: TestUser) -> ApiAnswer:
        return await self.api("GET", "/api/threads", user)

    async def thread_messages(self, user: TestUser, thread_id: str) -> ApiAnswer:
        return await self.api("GET", f"/api/threads/{thread_id}/messages", user)

    def listed_threads(self, answer: ApiAnswer) -> list[str]:
        return [str(t["id"]) for t in answer.body["threads"]]

    def listed_messages(self, answer: ApiAnswer) -> list[str]:
        return [str(m["content"]) for m in answer.body["messages"]]

    async def my_usage(self, user: TestUser, start: str, end: str) -> ApiAnswer:
        return await self.api("GET", "/api/usage", user, params={"from": start, "to": end})

    async def invoice(self, user: TestUser, period: Any) -> ApiAnswer:
        return await self.api("POST", "/api/billing/invoices", user, json={"period": period})

    # -- sockets ---------------------------------------------------------------------------------
    def socket(self, token: str) -> protocol.ReferenceSocket:
        """`async with app.socket(token) as sock:` a chat socket opened by a program."""
        return protocol.ReferenceSocket(self.urls["ws_url"], token)

    async def handshake(self, token: str, *, stay_for_first: bool = False) -> Handshake:
        """Open a socket with `token`; what it received until refused (or its first event)."""
        return await protocol.handshake(self.urls["ws_url"], token, stay_for_first=stay_for_first)

    def is_socket_url_secret_free(self, socket_url: str, token: str) -> bool:
        """The socket URL carries no token (URLs land in server logs)."""
        return token not in socket_url and "token" not in socket_url.lower()

    # -- tokens and sign-in, for the auth journeys -------------------------------------------------
    def user_id_of(self, token: str) -> str:
        """The account a token belongs to."""
        return str(claims_of(token)["sub"])

    def tampered_token(self, token: str) -> str:
        """The same token with one byte of its RS256 signature flipped: header and claims untouched."""
        header, payload, signature = token.split(".")
        raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
        raw[len(raw) // 2] ^= 0x01
        return f"{header}.{payload}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"

    def unknown_refresh_token(self) -> str:
        """A well-formed refresh token of no session (a forged secret for a LIVE session would revoke it)."""
        return f"{uuid.uuid4().hex}.{secrets.token_urlsafe(32)}"

    @property
    def oauth_provider(self) -> str:
        """The OpenID provider's id as linked identities record it (`IdentityRecord.provider`)."""
        return self.stack.platform_env.get("TL_OIDC_PROVIDER") or os.environ.get(
            "THROUGHLINE_STACK_OIDC_PROVIDER", PROVIDER
        )

    # -- a person chatting in a browser ----------------------------------------------------------
    reply_timeout = REPLY_TIMEOUT_S
    ui_phrases = {  # noqa: RUF012 - read-only
        "email_taken": "already exists",
        "bad_credentials": "wrong email or password",
        "unverified": "verify your email",
        "login_locked": "too many attempts. try again in",
        "session_expired": "session has expired",
        "oauth_denied": "cancelled",
        "oauth_state": "couldn't verify",
        "oauth_failed": "failed",
        "thread_not_found": "that conversation could not be found",
    }

    def tool_question(self) -> tuple[str, str]:
        """A usage question: the supervisor routes it to the data agent, which calls get_my_usage."""
        return "How many tokens did I use?", "get_my_usage"

    def is_sign_in_url(self, url: str) -> bool:
        return LoginPage.path in url

    def is_chat_url(self, url: str) -> bool:
        return url.split("?")[0].endswith(DashboardPage.path)

    def llm_timeout(self) -> float:
        """TL_LLM_TIMEOUT of the local stack; the platform's default (5 s) against an external one."""
        try:
            return float(self.knob("LLM_TIMEOUT")) if not self.stack.external else 5.0
        except KeyError:
            return 5.0

    # -- API bursts, for the rate-limit journeys ---------------------------------------------------
    async def me(self, user: TestUser) -> ApiAnswer:
        """The backend's answer to "who am I" for `user` (body: the account's id, email, ...)."""
        return await self.api("GET", "/api/me", user)

    async def me_burst(
        self, callers: list[TestUser], *, max_connections: int = 16, timeout: float = 20.0
    ) -> list[ApiAnswer]:
        """Every caller's "who am I", all in flight at once over one busy client holding at most
        `max_connections` connections; the answers in the callers' order."""
        async with httpx.AsyncClient(
            timeout=timeout, limits=httpx.Limits(max_connections=max_connections)
        ) as client:
            responses = await asyncio.gather(
                *(
                    client.get(
                        f"{self.urls['backend_url']}/api/me",
                        headers={"Authorization": f"Bearer {u.access_token}"},
                    )
                    for u in callers
                )
            )
        return [ApiAnswer.of(r) for r in responses]
