"""Open WebUI 0.12 behind the neutral `App`: its API, pages, socket and stores.

Everything journeys must not spell out lives here: the `/api/v1/auths/*` routes, the
localStorage key `token`, its HS256 JWTs (claims `id`, `jti`, `session_stamp`, ...) signed with
WEBUI_SECRET_KEY, the SQL over its own tables (`user`, `auth`, `chat`, `chat_message` with the
per-message `usage` JSON and `error`, `oauth_session`) and its Redis keys under `open-webui:`
(`session_pool`, `ratelimit:<email>:<bucket>`, `auth:token:<jti>:revoked`).

Mapped to the neutral facts:
- a thread is a `chat`; a turn's request id is the reply's message id; a stored message's id is
  the message id (the row id is `<chat id>-<message id>`); a user message's request id is the
  id of the reply that answers it (the row whose `parent_id` it is);
- the "agent" of a reply is the model that answered it (`chat_message.model_id`, the name over
  the reply); Open WebUI has no agent runs (run_id None);
- a reply's tokens are its stored `usage` as Open WebUI wrote it (`prompt_tokens`,
  `completion_tokens`, as reported on the socket);
- the profile is the same `user` row as the account (Open WebUI keeps one);
- the chat state is the Socket.IO session pool (Redis `open-webui:session_pool`): per live
  socket, the user and the chats it has open;
- a sign-in has no server-side session: the JWT is the session (its `jti` the session id);
  Redis only lists revoked ones.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from typing import Any

import jwt

from db_probes import PostgresProbe, RedisProbe
from harness.app import (
    ApiAnswer,
    App,
    ChatStateRecord,
    CounterRecord,
    Handshake,
    IdentityRecord,
    MessageRecord,
    ProfileRecord,
    Records,
    SessionRecord,
    TestUser,
    ThreadRecord,
    UserRecord,
    unique_email,
)
from harness.capabilities import NotApplicable
from harness.controls import LLMControl
from harness.ws_recorder import WsRecorder
from targets.open_webui import protocol
from targets.open_webui.pages import REPLY_TIMEOUT_S, ChatPage, SignInPage, SignupPage

REDIS_PREFIX = "open-webui"
SIGNIN_RATE_LIMIT = 15  # routers/auths.py: RateLimiter(limit=5 * 3, window=60 * 3)
SIGNIN_RATE_WINDOW_S, SIGNIN_RATE_BUCKET_S = 180, 60  # utils/rate_limit.py: 60 s buckets
OAUTH_PROVIDER = "oidc"  # the provider key Open WebUI records for OPENID_PROVIDER_URL sign-ins


def claims_of(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (a journey only reads what the browser already holds)."""
    return dict(jwt.decode(token, options={"verify_signature": False}))


def _json(value: Any) -> Any:
    """asyncpg hands `json` columns over as text."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _text(content: Any) -> str:
    content = _json(content)
    if content is None:
        return ""
    if isinstance(content, list):  # content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


def _conversation_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in the order of each conversation (Open WebUI's `created_at` is in seconds, so two turns
    in one second tie): every chat from its first message down the parent links (a user message's
    parent is the reply before it, a reply's parent the message it answers), chats by their start."""
    by_chat: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_chat.setdefault(str(row["chat_id"]), []).append(row)
    ordered: list[dict[str, Any]] = []
    for chat_rows in sorted(by_chat.values(), key=lambda rs: min(r["created_at"] or 0 for r in rs)):
        chat_id = str(chat_rows[0]["chat_id"])
        ids = {str(r["id"]).removeprefix(f"{chat_id}-"): r for r in chat_rows}
        children: dict[str | None, list[dict[str, Any]]] = {}
        for row in chat_rows:
            parent = row["parent_id"] or None
            children.setdefault(parent if parent in ids else None, []).append(row)
        seen: set[int] = set()
        stack = sorted(children.get(None, []), key=lambda r: r["created_at"] or 0, reverse=True)
        while stack:
            row = stack.pop()
            if id(row) in seen:
                continue
            seen.add(id(row))
            ordered.append(row)
            own = str(row["id"]).removeprefix(f"{chat_id}-")
            stack.extend(sorted(children.get(own, []), key=lambda r: r["created_at"] or 0, reverse=True))
        ordered += [r for r in chat_rows if id(r) not in seen]
    return ordered


# localStorage keys Open WebUI's frontend keeps for the browser, whoever signs in: not a session's data.
BROWSER_DISPLAY_SETTINGS = frozenset({"theme", "locale", "sidebar", "showControls"})


class OpenWebUIUsers:
    """Fresh users through Open WebUI's own API: POST /api/v1/auths/signup, then /signin."""

    def __init__(self, app: OpenWebUIApp) -> None:
        self.app = app
        self.created: list[TestUser] = []

    async def signup(self, tag: str = "user", full_name: str | None = None) -> TestUser:
        """Signed up (Open WebUI verifies no email: the account can sign in at once)."""
        user = TestUser(email=unique_email(tag), full_name=full_name or f"{tag.title()} Tester")
        response = await self.app.http.post(
            f"{self.app.base_url}/api/v1/auths/signup",
            json={"name": user.full_name, "email": user.email, "password": user.password},
        )
        assert response.status_code == 200, (
            f"signup of {user.email} answered {response.status_code}: {response.text}"
        )
        body = response.json()
        assert body.get("role") == "user", (
            f"signup of {user.email} made a {body.get('role')!r}, not a user (is sign-up open and "
            "DEFAULT_USER_ROLE=user? targets/open_webui/seed.py)"
        )
        user.user_id = str(body["id"])
        self.created.append(user)
        return user

    async def login(self, user: TestUser) -> dict[str, Any]:
        """A new sign-in over the API; the user's tokens are replaced by it."""
        answer = await self.app.auth_login(user.email, user.password)
        assert answer.status == 200, f"sign-in of {user.email} answered {answer.status}: {answer.text}"
        user.tokens = {"access_token": answer.body["token"], "token_type": answer.body.get("token_type")}
        return user.tokens

    async def verified(self, tag: str = "user", full_name: str | None = None) -> TestUser:
        """Signed up and able to sign in (there is nothing to verify)."""
        return await self.signup(tag, full_name)

    async def logged_in(self, tag: str = "user", full_name: str | None = None) -> TestUser:
        """Signed up and holding the token of a real sign-in."""
        user = await self.signup(tag, full_name)
        await self.login(user)
        return user


class OpenWebUIRecords(Records):
    """Reads of Open WebUI's PostgreSQL database and its Redis."""

    app: OpenWebUIApp

    def __init__(self, app: OpenWebUIApp) -> None:
        super().__init__(app)
        self.db = PostgresProbe(app.urls["webui_dsn"], name="postgres/openwebui", recorder=app.probe_recorder)
        self.redis = RedisProbe(app.urls["redis_url"], recorder=app.probe_recorder)

    async def close(self) -> None:
        await self.db.close()
        await self.redis.close()

    async def reconnect(self) -> None:
        await self.close()

    # -- identity ------------------------------------------------------------------------------
    async def _user_where(self, where: str, value: str) -> UserRecord | None:
        row = await self.db.one(
            f'SELECT u.id, u.email, u.name, a.password FROM "user" u LEFT JOIN auth a ON a.id = u.id WHERE {where}',
            value,
        )
        if row is None:
            return None
        return UserRecord(str(row["id"]), row["email"], row["name"], None, row["password"])

    async def user(self, email: str) -> UserRecord | None:
        return await self._user_where("u.email = $1", email)

    async def user_by_id(self, user_id: str) -> UserRecord | None:
        return await self._user_where("u.id = $1", user_id)

    async def count_users(self, email: str, *, any_case: bool = False) -> int:
        return await self.db.count('"user"', "lower(email) = lower($1)" if any_case else "email = $1", email)

    async def profile(self, user_id: str) -> ProfileRecord | None:
        """Open WebUI keeps the profile in the account's own `user` row (name, email; no plan)."""
        row = await self.db.one('SELECT id, email, name FROM "user" WHERE id = $1', user_id)
        return ProfileRecord(str(row["id"]), row["email"], row["name"]) if row is not None else None

    async def count_profiles(self, email: str) -> int:
        return await self.db.count('"user"', "email = $1", email)

    async def identities(
        self, *, user_id: str | None = None, email: str | None = None, subject: str | None = None
    ) -> list[IdentityRecord]:
        """OAuth identities: the `oauth` JSON of `user` rows ({provider: {"sub": ...}})."""
        rows = await self.db.rows(
            'SELECT id, email, oauth FROM "user" WHERE oauth IS NOT NULL AND ($1::text IS NULL OR id = $1) '
            "AND ($2::text IS NULL OR email = $2)",
            user_id,
            email,
        )
        found = []
        for row in rows:
            for provider, data in (_json(row["oauth"]) or {}).items():
                sub = str((data or {}).get("sub")) if isinstance(data, dict) else str(data)
                if subject is None or sub == subject:
                    found.append(IdentityRecord(provider, sub, str(row["id"]), row["email"]))
        return found

    # -- sessions --------------------------------------------------------------------------------
    async def session(self, session_id: str) -> SessionRecord:
        raise self._lacks(
            "session_store", "sign-in sessions (a JWT is its own session; Redis lists only revoked ones)"
        )

    async def sessions(self, *, user_id: str | None = None, email: str | None = None) -> list[SessionRecord]:
        raise self._lacks(
            "session_store", "sign-in sessions (a JWT is its own session; Redis lists only revoked ones)"
        )

    async def token_revoked(self, jti: str) -> bool:
        """Whether Redis lists the token `jti` as revoked (a sign-out)."""
        return (await self.redis.key(f"{REDIS_PREFIX}:auth:token:{jti}:revoked")).exists

    async def chat_state(self, user_id: str) -> ChatStateRecord:
        """The live Socket.IO sessions of the user (Redis `open-webui:session_pool`) and the chat
        they have open (the one their newest session joined last)."""
        pool = await self.redis.key(f"{REDIS_PREFIX}:session_pool")
        entries = []
        for sid, raw in (pool.value or {}).items() if isinstance(pool.value, dict) else []:
            entry = _json(raw)
            if isinstance(entry, dict) and entry.get("id") == user_id:
                entries.append({"sid": sid, **entry})
        if not entries:
            return ChatStateRecord(False)
        entries.sort(key=lambda e: e.get("last_seen_at") or 0)
        chats = [c for e in entries for c in (e.get("chat_ids") or [])]
        return ChatStateRecord(True, chats[-1] if chats else None, {"sessions": entries})

    # -- conversations ---------------------------------------------------------------------------
    async def threads(self, user_id: str) -> list[ThreadRecord]:
        rows = await self.db.rows(
            "SELECT id, user_id, title FROM chat WHERE user_id = $1 ORDER BY created_at", user_id
        )
        return [ThreadRecord(str(r["id"]), str(r["user_id"]), r["title"]) for r in rows]

    async def _messages(self, where: str, *args: Any) -> list[MessageRecord]:
        rows = await self.db.rows(
            "SELECT m.id, m.chat_id, m.role, m.content, m.model_id, m.usage, m.user_id, m.parent_id, m.created_at, "
            "(SELECT c.id FROM chat_message c WHERE c.chat_id = m.chat_id AND c.role = 'assistant' "
            "AND c.parent_id = substr(m.id, length(m.chat_id) + 2) ORDER BY c.created_at LIMIT 1) AS reply_row "
            f"FROM chat_message m WHERE {where} "
            "ORDER BY m.created_at, CASE m.role WHEN 'user' THEN 0 ELSE 1 END",
            *args,
        )
        out = []
        for r in _conversation_order(rows):
            chat_id = str(r["chat_id"])
            message_id = str(r["id"]).removeprefix(f"{chat_id}-")
            usage = _json(r["usage"]) if r["usage"] is not None else None
            usage = usage if isinstance(usage, dict) else {}
            if r["role"] == "assistant":
                request_id: str | None = message_id
            else:
                reply = r["reply_row"]
                request_id = str(reply).removeprefix(f"{chat_id}-") if reply else None
            out.append(
                MessageRecord(
                    id=message_id,
                    role=str(r["role"]),
                    content=_text(r["content"]),
                    thread_id=chat_id,
                    request_id=request_id,
                    agent=r["model_id"] if r["role"] == "assistant" else None,
                    prompt_tokens=usage.get("prompt_tokens"),
                    completion_tokens=usage.get("completion_tokens"),
                    user_id=str(r["user_id"]) if r["user_id"] is not None else None,
                )
            )
        return out

    async def messages(
        self,
        *,
        thread_id: str | None = None,
        request_id: str | None = None,
        request_ids: Any = None,
    ) -> list[MessageRecord]:
        """Stored messages (oldest first; a user message before its reply)."""
        wanted = (
            {request_id} if request_id is not None else set(request_ids) if request_ids is not None else None
        )
        rows = await self._messages("($1::text IS NULL OR m.chat_id = $1)", thread_id)
        return [m for m in rows if wanted is None or m.request_id in wanted]

    async def thread_messages(self, thread_id: str) -> list[MessageRecord]:
        return await self._messages("m.chat_id = $1", thread_id)

    async def user_messages(self, user_id: str) -> list[MessageRecord]:
        return await self._messages("m.chat_id IN (SELECT id FROM chat WHERE user_id = $1)", user_id)

    async def messages_with_runs(self, user_id: str) -> list[MessageRecord]:
        """Every stored message of the user's chats; Open WebUI has no agent runs (run_id None)."""
        return await self.user_messages(user_id)

    async def message_errors(self, thread_id: str) -> dict[str, Any]:
        """The `error` Open WebUI stored with each failed message of a chat, by message id."""
        rows = await self.db.rows(
            "SELECT id, chat_id, error FROM chat_message WHERE chat_id = $1 AND error IS NOT NULL", thread_id
        )
        return {
            str(r["id"]).removeprefix(f"{r['chat_id']}-"): _json(r["error"])
            for r in rows
            if _json(r["error"])
        }

    # -- counters --------------------------------------------------------------------------------
    async def rate_counter(self, scope: str, subject: str) -> CounterRecord:
        """The sign-in counter of an email (Open WebUI limits nothing else): the hits of its
        buckets `open-webui:ratelimit:<email>:<bucket>` within the window; TTL of the newest."""
        if scope != "login":
            return await super().rate_counter(scope, subject)
        now_bucket = int(time.time()) // SIGNIN_RATE_BUCKET_S
        name = f"{REDIS_PREFIX}:ratelimit:{subject.lower()}"
        hits, ttl, exists = 0, None, False
        for bucket in range(now_bucket - SIGNIN_RATE_WINDOW_S // SIGNIN_RATE_BUCKET_S + 1, now_bucket + 1):
            key = await self.redis.key(f"{name}:{bucket}")
            if key.exists:
                exists = True
                hits += int(key.value or 0)
                ttl = key.ttl if key.ttl >= 0 else None
        return CounterRecord(f"{name}:*", exists, hits if exists else None, ttl)


class OpenWebUIApp(App):
    """Open WebUI 0.12.4, unmodified, in the product's language."""

    records: OpenWebUIRecords

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decoder = protocol.OpenWebUIDecoder()
        self.turn_requests = protocol.TurnRequests()
        self.users = OpenWebUIUsers(self)
        self.records = OpenWebUIRecords(self)
        self.llm = LLMControl(self.http, self.urls["llm_url"])
        self.provider_name = self.knob("OIDC_PROVIDER_NAME")
        self.on_close(self.records.close)

    @property
    def base_url(self) -> str:
        return self.urls["webui_url"].rstrip("/")

    def knob(self, name: str) -> str:
        value = self.stack.platform_env.get(f"THROUGHLINE_OWUI_{name}") or os.environ.get(
            f"THROUGHLINE_STACK_{name}"
        )
        if value is None:
            defaults = {
                "OIDC_PROVIDER_NAME": "Acme ID",
                "LLM_MODEL": "standin-gpt",
                # Fixed in its code, not configurable (routers/auths.py: RateLimiter(limit=5 * 3,
                # window=60 * 3) per email, counting every sign-in attempt): stated here, not set.
                "LOGIN_ATTEMPT_LIMIT": str(SIGNIN_RATE_LIMIT),
                "LOGIN_ATTEMPT_WINDOW": str(SIGNIN_RATE_WINDOW_S),
            }
            if name in defaults:
                return defaults[name]
            raise KeyError(f"no knob {name!r} in the open-webui target (targets/open_webui/services.toml)")
        return value

    def webui_env(self, name: str) -> str | None:
        """A variable of the environment Throughline started Open WebUI with (None: not set, or not ours)."""
        if self.stack.external or "webui" not in self.stack.services:
            return None
        return self.stack.service("webui").process.spec.env.get(name)

    # -- pages -----------------------------------------------------------------------------------
    def signup_page(self, page: Any) -> SignupPage:
        self.turn_requests.watch(page)
        return SignupPage(page, self.base_url, self.provider_name, self.turn_requests)

    def login_page(self, page: Any) -> SignInPage:
        self.turn_requests.watch(page)
        return SignInPage(page, self.base_url, self.provider_name, self.turn_requests)

    def dashboard_page(self, page: Any, expected_name: str | None = None) -> ChatPage:
        self.turn_requests.watch(page)
        return ChatPage(page, self.base_url, self.turn_requests)

    async def login(self, page: Any, user: TestUser) -> ChatPage:
        """Open the sign-in screen in `page`, sign `user` in; -> the chat screen, loaded."""
        login = await self.login_page(page).open()
        return await login.login(user.email, user.password)

    def turns(self, recorder: WsRecorder) -> protocol.OpenWebUITurns:
        """The socket's turn events plus the turn requests the same pages sent over HTTP."""
        return protocol.OpenWebUITurns(recorder, self.decoder, self.turn_requests, self.urls["ws_url"])

    # -- what the browser holds ------------------------------------------------------------------
    async def tokens_in(self, page: Any) -> dict[str, str | None]:
        """{"access": localStorage `token`, "refresh": None} (Open WebUI has no refresh token)."""
        return {"access": await page.evaluate("() => localStorage.getItem('token')"), "refresh": None}

    async def put_tokens(self, page: Any, access: str | None, refresh: str | None) -> None:
        """Plant a token where the frontend keeps it (localStorage and the `token` cookie)."""
        await page.evaluate(
            "t => t === null ? localStorage.removeItem('token') : localStorage.setItem('token', t)", access
        )
        if access is None:
            await page.context.clear_cookies(name="token")
        else:
            await page.context.add_cookies([{"name": "token", "value": access, "url": self.base_url}])

    async def stored_keys(self, page: Any) -> list[str]:
        """What the frontend keeps in localStorage, less the display settings Open WebUI keeps
        per browser rather than per account (theme, language, sidebar and controls open)."""
        kept: dict[str, str] = await page.evaluate("() => ({...localStorage})")
        return [
            k
            for k, v in kept.items()
            # redirectPath: the address a signed-out browser asked for, to open after the next
            # sign-in; it tells of a session only when it names a conversation (/c/<chat id>).
            if k not in BROWSER_DISPLAY_SETTINGS and not (k == "redirectPath" and not v.startswith("/c/"))
        ]

    async def remembered_thread(self, page: Any) -> str | None:
        """Open WebUI remembers the open chat in the address only (/c/<chat id>)."""
        match = re.search(r"/c/([^/?#]+)", page.url)
        return match.group(1) if match else None

    async def remember_thread(self, page: Any, thread_id: str) -> None:
        """Put /c/<thread_id> in the address bar without loading it (the next reload opens it)."""
        await page.evaluate("id => history.replaceState(history.state, '', '/c/' + id)", thread_id)

    def claims_of(self, token: str) -> dict[str, Any]:
        return claims_of(token)

    def session_id_of(self, token: str) -> str:
        """A sign-in is its token: the token's `jti`."""
        return str(claims_of(token)["jti"])

    def user_id_of(self, token: str) -> str:
        return str(claims_of(token)["id"])

    # -- tokens ----------------------------------------------------------------------------------
    def signing_key(self) -> str:
        """WEBUI_SECRET_KEY, the HS256 key Open WebUI signs its JWTs with (the stack made it)."""
        self.require("token_minting", "the signing key is not available")
        key = self.webui_env("WEBUI_SECRET_KEY")
        if not key:
            raise NotApplicable(
                self.target.name, "token_minting", "Throughline did not start this Open WebUI"
            )
        return key

    async def mint(self, like: str, **overrides: Any) -> str:
        # The same `jti` as `like` (unless overridden): a crafted token names the live sign-in.
        claims = {**claims_of(like), **overrides}
        return jwt.encode(claims, self.signing_key(), algorithm="HS256")

    async def expired_token(self, like: str) -> str:
        now = int(time.time())
        return await self.mint(like, iat=now - 1800, exp=now - 600)

    def tampered_token(self, token: str) -> str:
        header, payload, signature = token.split(".")
        raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
        raw[len(raw) // 2] ^= 0x01
        return f"{header}.{payload}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"

    # -- the auth API ----------------------------------------------------------------------------
    async def auth_login(self, email: str, password: str) -> ApiAnswer:
        response = await self.http.post(
            f"{self.base_url}/api/v1/auths/signin", json={"email": email, "password": password}
        )
        return ApiAnswer.of(response)

    async def logout(self, access_token: str) -> ApiAnswer:
        """Sign out elsewhere: POST /api/v1/auths/signout revokes the token (Redis) and drops its sockets."""
        response = await self.http.post(
            f"{self.base_url}/api/v1/auths/signout", headers={"Authorization": f"Bearer {access_token}"}
        )
        return ApiAnswer.of(response)

    def oauth_start_url(self) -> str:
        return f"{self.base_url}/oauth/{OAUTH_PROVIDER}/login"

    @property
    def oauth_provider(self) -> str:
        return OAUTH_PROVIDER

    # -- the application API ---------------------------------------------------------------------
    async def api(self, method: str, path: str, user: TestUser | None = None, **kwargs: Any) -> ApiAnswer:
        headers = dict(kwargs.pop("headers", {}) or {})
        if user is not None:
            headers["Authorization"] = f"Bearer {user.access_token}"
        response = await self.http.request(method, f"{self.base_url}{path}", headers=headers, **kwargs)
        return ApiAnswer.of(response)

    async def me(self, user: TestUser) -> ApiAnswer:
        return await self.api("GET", "/api/v1/auths/", user)

    async def my_threads(self, user: TestUser) -> ApiAnswer:
        return await self.api("GET", "/api/v1/chats/", user)

    async def thread_messages(self, user: TestUser, thread_id: str) -> ApiAnswer:
        return await self.api("GET", f"/api/v1/chats/{thread_id}", user)

    def listed_threads(self, answer: ApiAnswer) -> list[str]:
        """GET /api/v1/chats/ answers a list of {id, title, updated_at, created_at}, newest first."""
        return [str(t["id"]) for t in answer.body]

    def listed_messages(self, answer: ApiAnswer) -> list[str]:
        """GET /api/v1/chats/{id} answers the chat with its `history`: messages by id, each naming
        its parent, and `currentId` the newest; the conversation is the path up from `currentId`."""
        history = (answer.body.get("chat") or {}).get("history") or {}
        messages: dict[str, Any] = history.get("messages") or {}
        path: list[dict[str, Any]] = []
        current = history.get("currentId")
        while current is not None and current in messages and len(path) <= len(messages):
            path.append(messages[current])
            current = messages[current].get("parentId")
        return [_text(m.get("content")) for m in reversed(path)]

    # -- sockets ---------------------------------------------------------------------------------
    def socket(self, token: str) -> protocol.OpenWebUISocket:
        return protocol.OpenWebUISocket(
            self.urls["ws_url"], self.base_url, token, self.http, self.knob("LLM_MODEL")
        )

    async def handshake(self, token: str, *, stay_for_first: bool = False) -> Handshake:
        return await protocol.handshake(self.urls["ws_url"], token, stay_for_first=stay_for_first)

    def is_socket_url_secret_free(self, socket_url: str, token: str) -> bool:
        return token not in socket_url and "token" not in socket_url.lower()

    # -- a person chatting in a browser ----------------------------------------------------------
    reply_timeout = REPLY_TIMEOUT_S
    ui_phrases = {  # noqa: RUF012 - read-only; constants.py ERROR_MESSAGES, as its toasts show them
        "email_taken": "already registered",
        "bad_credentials": "email or password provided is incorrect",
        "login_locked": "api rate limit exceeded",
        "session_expired": "session expired. please sign in again",
        # OAUTH_LOGIN_FAILED: one message for a denied, a forged-state and a failed provider sign-in
        "oauth_denied": "sign-in with your identity provider failed",
        "oauth_state": "sign-in with your identity provider failed",
        "oauth_failed": "sign-in with your identity provider failed",
        "thread_not_found": "we could not find what you're looking for",  # ERROR_MESSAGES.NOT_FOUND
    }
    signed_out_status = 200  # routers/auths.py signout answers a JSON body
    backend_service = "webui"  # one process serves the API, the socket and the frontend
    bad_credentials_status = 400  # routers/auths.py: HTTPException(400, ERROR_MESSAGES.INVALID_CRED)

    def is_sign_in_url(self, url: str) -> bool:
        return url.split("?")[0].rstrip("/").endswith("/auth")

    def is_chat_url(self, url: str) -> bool:
        path = "/" + url.split("//", 1)[-1].split("/", 1)[-1].split("?")[0]
        return path == "/" or path.startswith("/c/")

    def llm_timeout(self) -> float:
        """AIOHTTP_CLIENT_TIMEOUT as started: the cap on one LLM call, its stream included."""
        raw = self.webui_env("AIOHTTP_CLIENT_TIMEOUT")
        if not raw:
            raise RuntimeError(
                "Open WebUI was started without AIOHTTP_CLIENT_TIMEOUT: it waits for a hanging LLM "
                "forever (targets/open_webui/services.toml sets it)"
            )
        return float(raw)

    def tool_question(self) -> tuple[str, str]:
        """A question naming Open WebUI's built-in tool get_current_timestamp (the LLM stand-in calls
        the tool a message names), and that tool."""
        return "What time is it? Please use get_current_timestamp", "get_current_timestamp"
