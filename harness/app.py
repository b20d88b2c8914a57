"""The product's language for journeys: one typed `app` per test, whatever the platform.

A journey says what a person does and what must be true afterwards; the target's adapter
(targets/<name>/app.py, a subclass of `App`) knows how its platform does it:

    user = await app.users.verified("ada")
    dashboard = await app.login(page, user)            # the dashboard, loaded
    turns = app.turns(ws_recorder)                      # frames decoded into neutral turn events
    done = await turns.wait_for("completed", request_id=rid)
    assert (await app.records.user(user.email)).verified
    async with app.outage("redis"): ...
    await app.restart("backend")

Everything here is neutral: records and turn events are plain dataclasses; the SQL, keys,
frame types and DOM live in the target folder. A method the target's adapter does not
implement raises `NotApplicable` naming the capability, so the journey ends "not applicable
to <target>: lacks <capability>" instead of failing or passing by accident.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

import httpx

from harness.capabilities import CAPABILITIES, NotApplicable
from harness.target import Target

if TYPE_CHECKING:
    from harness.stack import Stack
    from harness.ws_recorder import Connection, WsRecorder

PASSWORD = "correct-horse-42"


def unique_email(tag: str = "user") -> str:
    """An address no other journey (or run) uses."""
    return f"{tag}-{uuid.uuid4().hex[:10]}@example.test"


# ----------------------------------------------------------------------------- people and records
@dataclass
class TestUser:
    """A platform user made for one journey."""

    __test__ = False  # not a test class, despite the name

    email: str
    full_name: str
    password: str = PASSWORD
    user_id: str | None = None
    tokens: dict[str, Any] = field(default_factory=dict)

    @property
    def access_token(self) -> str:
        return str(self.tokens["access_token"])

    @property
    def refresh_token(self) -> str | None:
        value = self.tokens.get("refresh_token")
        return str(value) if value else None


@dataclass(frozen=True)
class UserRecord:
    """The account as the platform's identity store holds it."""

    id: str
    email: str
    full_name: str | None
    verified: bool | None = None  # None: the platform has no verification
    credential: str | None = None  # the stored password hash (compared, never shown)


@dataclass(frozen=True)
class ProfileRecord:
    """The profile the application side keeps for an account."""

    user_id: str
    email: str
    full_name: str | None
    plan: str | None = None


@dataclass(frozen=True)
class IdentityRecord:
    """An external (OAuth) identity linked to an account."""

    provider: str
    subject: str
    user_id: str
    email: str | None = None


@dataclass(frozen=True)
class SessionRecord:
    """A sign-in session as the session store holds it."""

    id: str
    exists: bool
    user_id: str | None = None
    ttl: int | None = None  # seconds left; None when it never expires or does not exist


@dataclass(frozen=True)
class ChatStateRecord:
    """The per-user chat state a platform keeps to restore the conversation."""

    exists: bool
    active_thread_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ThreadRecord:
    """One conversation."""

    id: str
    user_id: str
    title: str | None = None


@dataclass(frozen=True)
class MessageRecord:
    """One stored message of a conversation."""

    id: str
    role: str
    content: str
    thread_id: str
    request_id: str | None = None
    agent: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    user_id: str | None = None  # whose conversation it is
    run_id: str | None = None  # the agent run that wrote a reply (None for a user message)


@dataclass(frozen=True)
class UsageRecord:
    """One LLM call as the usage store holds it."""

    event_id: str
    request_id: str | None
    user_id: str
    thread_id: str | None
    run_id: str | None
    agent: str | None
    model: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    created_at: Any = None


@dataclass(frozen=True)
class PendingUsageRecord:
    """One LLM call's usage waiting in a durable outbox for the analytics store."""

    request_id: str
    prompt_tokens: int
    completion_tokens: int
    delivered: bool  # flushed to the analytics store


@dataclass(frozen=True)
class CounterRecord:
    """A counter the platform keeps (a rate-limit window, failed sign-ins): value and TTL."""

    name: str
    exists: bool
    value: Any = None
    ttl: int | None = None


@dataclass(frozen=True)
class ApiAnswer:
    """What an HTTP API answered: status, JSON body (or None), headers."""

    status: int
    body: Any
    headers: dict[str, str]
    text: str = ""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)

    @classmethod
    def of(cls, response: httpx.Response) -> ApiAnswer:
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        return cls(response.status_code, body, dict(response.headers), response.text)


# ----------------------------------------------------------------------------------- turn events
TurnKind = Literal[
    "user_message",  # the client sent a message
    "connected",  # the server greeted an authenticated socket
    "turn_started",
    "thinking",
    "tool_call",
    "tool_result",
    "chunk",
    "completed",
    "error",
    "rate_limited",
    "other",
]
TURN_KINDS: tuple[str, ...] = TurnKind.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class TurnEvent:
    """One socket frame in the product's language; `frame` keeps the raw frame for the report."""

    kind: str
    direction: Literal["sent", "received"] = "received"
    request_id: str | None = None
    thread_id: str | None = None
    run_id: str | None = None
    message_id: str | None = None
    agent: str | None = None
    user_id: str | None = None
    content: str | None = None  # the user's text, or the completed reply
    chunk: str | None = None
    tool: str | None = None
    result: Any = None
    usage: dict[str, Any] | None = None
    code: str | None = None
    message: str | None = None
    recoverable: bool | None = None
    retry_after: int | None = None
    scope: str | None = None
    frame: Any = None  # harness.ws_recorder.Frame, or a dict for raw clients
    active_thread_id: str | None = None  # connected: the conversation the server restored for the user
    ts: float | None = None  # when the server sent it (epoch seconds, the server's clock)

    @property
    def index(self) -> float:
        """Where the event's frame sits among the recorder's frames (a frame merged from outside the
        socket, such as Open WebUI's HTTP turn request, sits between two: a fraction)."""
        return float(getattr(self.frame, "index", -1))


class Decoder:
    """Turns one raw frame into the neutral events it carries (a frame may carry none or several)."""

    def decode(self, data: Any, direction: Literal["sent", "received"], frame: Any = None) -> list[TurnEvent]:
        raise NotImplementedError

    def close_reason(self, code: int | None) -> str | None:
        """'unauthorized' for the close code the platform uses to refuse a session; None otherwise."""
        return None


class Turns:
    """The turn events of one browser user's sockets, decoded from its recorder, with waiters."""

    def __init__(self, recorder: WsRecorder, decoder: Decoder) -> None:
        self.recorder = recorder
        self.decoder = decoder

    def events(
        self,
        kind: str | None = None,
        *,
        request_id: str | None = None,
        direction: Literal["sent", "received"] | None = None,
        after: TurnEvent | None = None,
    ) -> list[TurnEvent]:
        """Every decoded event so far (oldest first), filtered."""
        out: list[TurnEvent] = []
        for frame in self.frames(direction):
            if after is not None and frame.index <= after.index:
                continue
            for event in self.decoder.decode(
                frame.data if frame.data is not None else frame.text, frame.direction, frame
            ):
                if kind is not None and event.kind != kind:
                    continue
                if request_id is not None and event.request_id != request_id:
                    continue
                out.append(event)
        return out

    def frames(self, direction: Literal["sent", "received"] | None = None) -> list[Any]:
        """The raw frames the events come from, oldest first; a target whose turns also travel
        outside the socket (Open WebUI's user message over HTTP) adds those here."""
        return list(self.recorder.frames(direction=direction))

    def kinds(self, *, request_id: str | None = None) -> list[str]:
        return [e.kind for e in self.events(request_id=request_id, direction="received")]

    async def wait_for(
        self,
        kind: str | tuple[str, ...],
        *,
        request_id: str | None = None,
        content: str | None = None,
        direction: Literal["sent", "received"] | None = None,
        after: TurnEvent | None = None,
        timeout: float = 20.0,
    ) -> TurnEvent:
        """The first event of `kind` (or of any of several kinds), matching the filters, that
        arrives within `timeout`."""
        __tracebackhide__ = True
        kinds = (kind,) if isinstance(kind, str) else kind
        unknown = [k for k in kinds if k not in TURN_KINDS]
        if unknown:
            raise ValueError(f"unknown turn event kind {unknown[0]!r}; known: {', '.join(TURN_KINDS)}")
        deadline = time.monotonic() + timeout

        def match() -> TurnEvent | None:
            for event in self.events(request_id=request_id, direction=direction, after=after):
                if event.kind in kinds and (content is None or event.content == content):
                    return event
            return None

        while True:
            found = match()
            if found is not None:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                wanted = ", ".join(
                    f"{k}={v!r}"
                    for k, v in (("request_id", request_id), ("content", content), ("direction", direction))
                    if v is not None
                )
                raise AssertionError(
                    f"no {' or '.join(map(repr, kinds))} turn event ({wanted or 'any'}) within {timeout:g} s; "
                    f"events seen: {[(e.direction, e.kind) for e in self.events()][-20:]}\n"
                    f"{self.recorder.format_frames(15)}"
                )
            # Woken by the socket's frames; at least twice a second for a target's frames that
            # travel outside it (Open WebUI's turn requests and their refusals over HTTP).
            await self.recorder.wait_for_change(min(remaining, 0.5))

    async def sent(self, content: str, timeout: float = 20.0) -> TurnEvent:
        """The user message the client sent with `content` (it carries the request id)."""
        __tracebackhide__ = True
        return await self.wait_for("user_message", content=content, direction="sent", timeout=timeout)

    def of_request(self, request_id: str) -> list[TurnEvent]:
        """Every event the server sent for one turn, in arrival order."""
        return self.events(request_id=request_id, direction="received")

    async def wait_for_refusal(self, timeout: float = 10.0) -> Connection:
        """A socket of this user closed because the platform refused its session."""
        __tracebackhide__ = True
        deadline = time.monotonic() + timeout
        while True:
            for conn in self.recorder.connections:
                if not conn.is_open and self.decoder.close_reason(conn.close_code) == "unauthorized":
                    return conn
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no socket was refused as unauthorized within {timeout:g} s; connections: "
                    f"{[c.summary() for c in self.recorder.connections]}"
                )
            await self.recorder.wait_for_change(remaining)

    def assert_order(self, kinds: Iterable[str]) -> None:
        """The received events contain `kinds` in this order (others may sit between)."""
        __tracebackhide__ = True
        wanted = list(kinds)
        seen = self.kinds()
        position = 0
        for kind in seen:
            if position < len(wanted) and kind == wanted[position]:
                position += 1
        assert position == len(wanted), f"expected turn events in order {wanted}; received {seen}"

    def mark(self) -> TurnEvent | None:
        """A bookmark at the newest frame so far: `wait_for(kind, after=turns.mark())` sees only later events."""
        frames = self.recorder.frames()
        return TurnEvent("other", frames[-1].direction, frame=frames[-1]) if frames else None


# ------------------------------------------------------------------------------------- sockets
@dataclass
class Handshake:
    """What a raw socket client saw: the events before the server closed (or the first one)."""

    events: list[TurnEvent] = field(default_factory=list)
    refused: bool = False  # closed as unauthorized
    close_code: int | None = None

    @property
    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


class SocketClient:
    """One chat socket opened by a program, not a browser (the target's protocol over its transport).

    A subclass's reader task appends every decoded event to `received` and sets `_changed`.
    """

    received: list[TurnEvent]
    _changed: asyncio.Event
    _reader: asyncio.Task[None] | None

    async def wait_until(
        self, predicate: Callable[[TurnEvent], bool], what: str, timeout: float = 20.0
    ) -> TurnEvent:
        """The first received event (old or new) for which predicate(event) holds."""
        __tracebackhide__ = True
        deadline = time.monotonic() + timeout
        while True:
            for event in self.received:
                if predicate(event):
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self._reader is not None and self._reader.done()):
                raise AssertionError(
                    f"no {what} within {timeout:g} s (socket {'open' if self.is_open else 'closed'}); "
                    f"events: {[(e.kind, e.request_id) for e in self.received][-20:]}"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def send_message(
        self, content: str, *, request_id: str | None = None, thread_id: str | None = None
    ) -> str:
        """Send a user message; -> its request id."""
        raise NotImplementedError

    async def send_raw(self, text: str) -> None:
        """Send a frame exactly as given (malformed input)."""
        raise NotImplementedError

    async def send_unknown_frame(self, request_id: str | None = None) -> None:
        """Send a well-formed frame of a kind the platform does not know (it must refuse it, not choke)."""
        raise NotImplementedError

    async def receive(self, timeout: float = 20.0) -> TurnEvent:
        """The next decoded event from the server."""
        raise NotImplementedError

    async def receive_until(self, kind: str, timeout: float = 20.0) -> list[TurnEvent]:
        """Events up to and including the first `kind` (or an error / rate_limited)."""
        __tracebackhide__ = True
        events: list[TurnEvent] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, (
                f"no {kind!r} event within {timeout:g} s; events seen: {[e.kind for e in events]}"
            )
            event = await self.receive(remaining)
            events.append(event)
            if event.kind in (kind, "error", "rate_limited"):
                return events

    @property
    def is_open(self) -> bool:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> SocketClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# ------------------------------------------------------------------------------------ the app
class Records:
    """Neutral reads of the platform's stores; the target's adapter answers from its own tables and keys."""

    def __init__(self, app: App) -> None:
        self.app = app

    def _lacks(self, capability: str, what: str) -> NotApplicable:
        return NotApplicable(self.app.target.name, capability, f"its adapter reads no {what}")

    async def user(self, email: str) -> UserRecord | None:
        raise NotImplementedError

    async def count_users(self, email: str, *, any_case: bool = False) -> int:
        raise NotImplementedError

    async def profile(self, user_id: str) -> ProfileRecord | None:
        raise NotImplementedError

    async def count_profiles(self, email: str) -> int:
        raise NotImplementedError

    async def session(self, session_id: str) -> SessionRecord:
        raise NotImplementedError

    async def sessions(self, *, user_id: str | None = None, email: str | None = None) -> list[SessionRecord]:
        raise NotImplementedError

    async def chat_state(self, user_id: str) -> ChatStateRecord:
        raise self._lacks("session_restore", "chat state")

    async def threads(self, user_id: str) -> list[ThreadRecord]:
        raise NotImplementedError

    async def messages(
        self,
        *,
        thread_id: str | None = None,
        request_id: str | None = None,
        request_ids: Iterable[str] | None = None,
    ) -> list[MessageRecord]:
        """Stored messages (oldest first; a user message before its reply)."""
        raise NotImplementedError

    async def usage(
        self, *, user_id: str | None = None, request_id: str | None = None, run_id: str | None = None
    ) -> list[UsageRecord]:
        raise self._lacks("usage_analytics", "usage events")

    async def pending_usage(self, request_id: str, *, unflushed_only: bool = False) -> int:
        """Usage of a request waiting in a durable outbox (all rows, or only those not yet delivered)."""
        raise self._lacks("usage_outbox", "usage outbox")

    async def thread_messages(self, thread_id: str) -> list[MessageRecord]:
        """The messages of one conversation, oldest first, each with `user_id` (whose they are)."""
        return await self.messages(thread_id=thread_id)

    async def user_messages(self, user_id: str) -> list[MessageRecord]:
        """Every stored message of one person, in any conversation, oldest first."""
        raise NotImplementedError

    async def message_errors(self, thread_id: str) -> dict[str, Any]:
        """The error stored with each failed reply of a conversation, by request id (a platform
        that keeps failed turns; one that discards them stores none)."""
        raise NotImplementedError

    async def outbox(self, request_id: str) -> list[PendingUsageRecord]:
        """The usage rows of a request in the durable outbox, delivered or not."""
        raise self._lacks("usage_outbox", "usage outbox")

    async def reconnect(self) -> None:
        """Drop pooled connections to the stores (one restarted under them); the next read opens new ones."""

    async def user_by_id(self, user_id: str) -> UserRecord | None:
        raise NotImplementedError

    async def identities(
        self, *, user_id: str | None = None, email: str | None = None, subject: str | None = None
    ) -> list[IdentityRecord]:
        """External (OAuth) identities linked to a user, with an email, or with a provider subject."""
        raise self._lacks("oauth", "external identities")

    async def oauth_pending(self, state: str) -> bool:
        """Whether a started OAuth sign-in with this `state` still waits for its callback."""
        raise self._lacks("oauth", "pending OAuth sign-ins")

    async def rate_counter(self, scope: str, subject: str) -> CounterRecord:
        """A rate-limit counter: scope http|ws|agent per user id, or login per email."""
        capability = {
            "http": "http_rate_limit",
            "ws": "ws_rate_limit",
            "agent": "agent_concurrency_limit",
            "login": "login_rate_limit",
        }.get(scope, "http_rate_limit")
        raise self._lacks(capability, f"{scope} rate-limit counters")

    async def invoices(self, user_id: str, period: str | None = None) -> list[dict[str, Any]]:
        """Stored invoices (id, period, total_usd, prompt_tokens, completion_tokens) of a user."""
        raise self._lacks("billing", "invoices")

    async def invoice_lines(self, invoice_id: str) -> list[dict[str, Any]]:
        """Stored lines (agent, prompt_tokens, completion_tokens, amount_usd) of an invoice."""
        raise self._lacks("billing", "invoice lines")

    async def close(self) -> None:
        """Close the probes (called when the test's app is closed)."""

    async def messages_with_runs(self, user_id: str) -> list[MessageRecord]:
        """Every stored message of one person, oldest first (a user message before its reply), each
        with `user_id` and, for a reply, the agent run that wrote it (`run_id`)."""
        raise NotImplementedError


class App:
    """The platform under test, in the product's language. Targets subclass it (targets/<name>/app.py)."""

    records: Records
    decoder: Decoder

    def __init__(
        self,
        target: Target,
        stack: Stack,
        http: httpx.AsyncClient,
        probe_recorder: Callable[[Any], None],
        new_context: Callable[..., Awaitable[Any]] | None = None,
    ) -> None:
        self.target = target
        self.stack = stack
        self.http = http
        self.probe_recorder = probe_recorder
        self._new_context = new_context
        self._closers: list[Callable[[], Awaitable[None]]] = []

    # -- what the target can do ---------------------------------------------------------------
    def supports(self, capability: str) -> bool:
        """Whether the target declares `capability` (an unknown name is an error)."""
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}; known: {', '.join(sorted(CAPABILITIES))}")
        return capability in self.target.capabilities

    def require(self, capability: str, detail: str = "") -> None:
        """End the test as not applicable unless the target has `capability`."""
        if not self.supports(capability):
            raise NotApplicable(self.target.name, capability, detail)

    @property
    def urls(self) -> dict[str, str]:
        return self.stack.urls

    def knob(self, name: str) -> str:
        """A platform knob's effective value (the declaration's default or THROUGHLINE_STACK_<NAME>)."""
        raise NotImplementedError

    # -- browsers --------------------------------------------------------------------------------
    async def page_for(self, label: str) -> Any:
        """One more signed-out browser user (its own context, page and socket recorder)."""
        if self._new_context is None:
            raise RuntimeError("this app was made without a browser (no new_context factory)")
        return await self._new_context(label)

    def turns(self, recorder: WsRecorder) -> Turns:
        """The neutral turn events of a browser user's sockets."""
        return Turns(recorder, self.decoder)

    # -- the stack -------------------------------------------------------------------------------
    def outage(self, service: str, *, kill: bool = False) -> AbstractAsyncContextManager[None]:
        """`async with app.outage("redis"):` the service is down inside, back and ready after."""
        self.require("service_control", f"cannot stop {service}")
        return self.stack.outage(service, kill=kill)

    async def restart(self, service: str) -> float:
        """Restart a service gracefully and wait until it is ready; -> seconds to ready."""
        self.require("service_control", f"cannot restart {service}")
        return await self.stack.arestart(service)

    @asynccontextmanager
    async def crashed(self, service: str) -> AsyncIterator[None]:
        """SIGKILL a service now (a crash the UI must notice); it is started again after the block."""
        async with self.outage(service, kill=True):
            yield

    # -- lifecycle -------------------------------------------------------------------------------
    async def setup(self) -> None:
        """Called before the test: put the stand-ins in a known state."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            await llm.reset()
            self.on_close(llm.reset)  # faults never leak into the next journey

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        self._closers.append(closer)

    async def aclose(self) -> None:
        for closer in reversed(self._closers):
            try:
                await closer()
            except Exception:  # noqa: BLE001, S110 - closing the rest matters more
                pass
        self._closers.clear()

    async def settle(self, coro: Callable[[], Awaitable[Any]], timeout: float, description: str) -> Any:
        """`eventually()` with the app's probes recorded: wait until `coro()` stops raising AssertionError."""
        from db_probes import eventually

        return await eventually(coro, timeout=timeout, description=description)

    async def begin_outage(self, service: str, *, kill: bool = False) -> Outage:
        """Stop `service` now, for checks spread over several steps; `await outage.end()` brings it back.

        `app.outage()` for a test that must see the start itself as a step; the service is started
        again after the test in any case, so a failing step never leaves the stack short of it.
        """
        outage = Outage(service, self.outage(service, kill=kill))
        await outage.begin()
        self.on_close(outage.end)
        return outage

    # -- a person chatting in a browser (the target answers the parts below) ---------------------
    users: Any  # the target's user factory: verified(tag), logged_in(tag), ...
    reply_timeout: float = 20.0  # how long a journey waits for one reply to finish
    # What the target's screens say in a situation, lower case, so a journey checks the message the
    # platform shows rather than another platform's wording: "email_taken", "bad_credentials", ...
    ui_phrases: dict[str, str] = {}  # noqa: RUF012 - read-only class default; targets assign their own
    # The status the sign-in API answers a wrong password with: each platform's own API contract.
    bad_credentials_status: int = 401
    signed_out_status: int = 204  # what the sign-out API answers a successful sign-out with
    backend_service: str = "backend"  # the service `app.restart()` names to restart the chat backend

    async def login(self, page: Any, user: TestUser) -> Any:
        """Sign `user` in through the UI in `page`; -> the dashboard (chat) page, loaded."""
        raise NotImplementedError

    async def tokens_in(self, page: Any) -> dict[str, str | None]:
        """The tokens the frontend keeps: {"access": ..., "refresh": ...} (None when absent)."""
        raise NotImplementedError

    def session_id_of(self, token: str) -> str:
        """The sign-in session a token belongs to."""
        raise NotImplementedError

    def is_sign_in_url(self, url: str) -> bool:
        """Whether the browser at `url` is on the sign-in screen."""
        raise NotImplementedError

    def is_chat_url(self, url: str) -> bool:
        """Whether the browser at `url` is on the signed-in chat screen (the dashboard)."""
        raise NotImplementedError

    def llm_timeout(self) -> float:
        """Seconds the platform waits for the LLM before it gives the turn up."""
        raise NotImplementedError

    def tool_question(self) -> tuple[str, str]:
        """A message the platform answers by calling a tool, and the name of that tool."""
        raise NotApplicable(self.target.name, "tool_calls")

    # -- screens ---------------------------------------------------------------------------------
    inbox: Any  # the mailbox of the email stand-in (pages.Inbox), where the target sends mail
    llm: Any  # the LLM stand-in's controls (harness.controls.LLMControl)

    def signup_page(self, page: Any) -> Any:
        """The sign-up screen in `page` (not yet opened)."""
        raise NotApplicable(self.target.name, "password_signup")

    def login_page(self, page: Any) -> Any:
        """The sign-in screen in `page` (not yet opened)."""
        raise NotImplementedError

    def dashboard_page(self, page: Any, expected_name: str | None = None) -> Any:
        """The signed-in chat screen in `page` (not yet opened)."""
        raise NotImplementedError

    async def put_tokens(self, page: Any, access: str | None, refresh: str | None) -> None:
        """Plant tokens where the frontend keeps them (as a stale or stolen session would)."""
        raise NotImplementedError

    async def stored_keys(self, page: Any) -> list[str]:
        """The names of what the frontend keeps in the browser's storage."""
        raise NotImplementedError

    async def remembered_thread(self, page: Any) -> str | None:
        """The conversation the browser remembers as open."""
        raise self._lacks_adapter("session_restore", "the remembered conversation")

    async def remember_thread(self, page: Any, thread_id: str) -> None:
        """Make the browser remember `thread_id` as the open conversation (a tampered client)."""
        raise self._lacks_adapter("session_restore", "the remembered conversation")

    # -- tokens and the auth API -----------------------------------------------------------------
    def claims_of(self, token: str) -> dict[str, Any]:
        """The claims of an access token, unverified (only what the browser already holds)."""
        raise NotImplementedError

    def user_id_of(self, token: str) -> str:
        """The account an access token belongs to."""
        raise NotImplementedError

    async def mint(self, like: str, **overrides: Any) -> str:
        """A token signed with the platform's own key: the claims of `like` with `overrides`."""
        raise NotApplicable(self.target.name, "token_minting")

    async def expired_token(self, like: str) -> str:
        """`like`, correctly signed, expired ten minutes ago."""
        raise NotApplicable(self.target.name, "token_minting")

    def tampered_token(self, token: str) -> str:
        """`token` with one byte of its signature flipped."""
        raise NotImplementedError

    def unknown_refresh_token(self) -> str:
        """A well-formed refresh token of no session."""
        raise NotApplicable(self.target.name, "refresh_token")

    async def auth_login(self, email: str, password: str) -> ApiAnswer:
        """Sign in over the API (not the UI); the answer as given."""
        raise NotImplementedError

    async def refresh(self, refresh_token: str) -> ApiAnswer:
        """Renew the tokens over the API."""
        raise NotApplicable(self.target.name, "refresh_token")

    async def logout(self, access_token: str) -> ApiAnswer:
        """End the session elsewhere (another tab or device)."""
        raise NotApplicable(self.target.name, "session_revocation")

    def oauth_start_url(self) -> str:
        """Where a browser starts the OAuth sign-in."""
        raise NotApplicable(self.target.name, "oauth")

    @property
    def oauth_provider(self) -> str:
        """The provider's name in the platform's identity records."""
        raise NotApplicable(self.target.name, "oauth")

    # -- the application API ---------------------------------------------------------------------
    async def api(self, method: str, path: str, user: TestUser | None = None, **kwargs: Any) -> ApiAnswer:
        """A call of the platform's own HTTP API as `user`."""
        raise NotImplementedError

    async def me(self, user: TestUser) -> ApiAnswer:
        """Who the API says `user` is."""
        raise NotImplementedError

    async def me_burst(
        self, callers: list[TestUser], *, max_connections: int = 16, timeout: float = 20.0
    ) -> list[ApiAnswer]:
        """Every caller's "who am I" in flight at once; answers in the callers' order."""
        raise NotApplicable(self.target.name, "http_rate_limit")

    async def my_threads(self, user: TestUser) -> ApiAnswer:
        """The conversations the API lists for `user`."""
        raise NotImplementedError

    async def thread_messages(self, user: TestUser, thread_id: str) -> ApiAnswer:
        """One conversation's messages as the API answers `user`."""
        raise NotImplementedError

    def listed_threads(self, answer: ApiAnswer) -> list[str]:
        """The ids of the conversations in an answer of `my_threads`, in the API's order."""
        raise NotImplementedError

    def listed_messages(self, answer: ApiAnswer) -> list[str]:
        """The texts of the messages in an answer of `thread_messages`, oldest first."""
        raise NotImplementedError

    async def my_usage(self, user: TestUser, start: str, end: str) -> ApiAnswer:
        """`user`'s usage totals between two instants."""
        raise NotApplicable(self.target.name, "usage_analytics")

    async def invoice(self, user: TestUser, period: Any) -> ApiAnswer:
        """Generate (or fetch again) `user`'s invoice for a period."""
        raise NotApplicable(self.target.name, "billing")

    # -- sockets without a browser ---------------------------------------------------------------
    def socket(self, token: str) -> SocketClient:
        """`async with app.socket(token) as sock:` a chat socket opened by a program."""
        raise NotImplementedError

    async def handshake(self, token: str, *, stay_for_first: bool = False) -> Handshake:
        """Open a socket with `token`; what it received until refused (or its first event)."""
        raise NotImplementedError

    def is_socket_url_secret_free(self, socket_url: str, token: str) -> bool:
        """The socket URL carries no token (URLs land in server logs)."""
        raise NotImplementedError

    def _lacks_adapter(self, capability: str, what: str) -> NotApplicable:
        return NotApplicable(self.target.name, capability, f"its adapter reads no {what}")

    def is_running(self, service: str) -> bool:
        """Whether Throughline's process of `service` is running (after an outage ended)."""
        self.require("service_control", f"does not run {service}")
        return self.stack.service(service).is_running

    async def chat_session(self, page: Any, recorder: WsRecorder, tag: str) -> ChatSession:
        """A fresh verified user signs in through the UI in `page`; -> their chat session, remembering
        the session's access token and id and every visit to the sign-in screen from now on."""
        __tracebackhide__ = True
        user = await self.users.verified(tag)
        dashboard = await self.login(page, user)
        token = (await self.tokens_in(page))["access"]
        assert token, "the browser holds no access token after logging in"
        session = ChatSession(
            self, user, page, recorder, self.turns(recorder), dashboard, token, self.session_id_of(token)
        )

        def on_navigated(frame: Any) -> None:
            if frame == page.main_frame and self.is_sign_in_url(frame.url):
                session.sign_in_visits.append(frame.url)

        page.on("framenavigated", on_navigated)
        return session


class Outage:
    """A service stopped by `app.begin_outage()`; `end()` starts it again and waits until it is ready."""

    def __init__(self, service: str, stopped: AbstractAsyncContextManager[None]) -> None:
        self.service = service
        self._stopped: AbstractAsyncContextManager[None] | None = stopped

    async def begin(self) -> None:
        assert self._stopped is not None, f"the outage of {self.service} is over"
        await self._stopped.__aenter__()

    @property
    def is_over(self) -> bool:
        return self._stopped is None

    async def end(self) -> None:
        """Start the service again and wait until it is ready (once; later calls do nothing)."""
        stopped, self._stopped = self._stopped, None
        if stopped is not None:
            await stopped.__aexit__(None, None, None)


@dataclass(frozen=True)
class CompletedTurn:
    """A turn whose reply completed, as the browser saw it: its ids, the answering agent, the usage
    the server reported and the reply's text on screen; `event` is the completed turn event."""

    request_id: str
    thread_id: str
    agent: str
    usage: dict[str, Any]
    text: str
    event: TurnEvent


@dataclass
class ChatSession:
    """One person signed in through the UI (`app.chat_session(...)`): their page, its turn events,
    the dashboard, and what identifies the browser's session (its access token and session id)."""

    app: App
    user: TestUser
    page: Any
    recorder: WsRecorder
    turns: Turns
    dashboard: Any
    access_token: str
    session_id: str
    sign_in_visits: list[str] = field(default_factory=list)

    @property
    def user_id(self) -> str:
        assert self.user.user_id, "the signup did not return a user id"
        return self.user.user_id

    async def send(self, text: str) -> TurnEvent:
        """Type and send `text`; -> the user message the browser sent (it carries the request id)."""
        __tracebackhide__ = True
        await self.dashboard.chat.send(text)
        return await self.turns.sent(text)

    async def complete_turn(self, text: str) -> CompletedTurn:
        """Send `text` and wait until its reply is complete on screen; the reply shown is the one the
        server completed."""
        __tracebackhide__ = True
        sent = await self.send(text)
        rid = sent.request_id
        assert rid, f"the page sent {text!r} without a request id"
        # Wait on this turn's own event: the chat's reply waiter ends at any new error banner, and
        # after a fault the banner of the failed turn may still be up when the next one starts.
        completed = await self.turns.wait_for(
            ("completed", "error", "rate_limited"), request_id=rid, timeout=self.app.reply_timeout, after=sent
        )
        assert completed.kind == "completed", (
            f"{text!r} was not answered: {completed.kind} code={completed.code!r} "
            f"message={completed.message!r} ({completed.frame})"
        )
        reply = await self.dashboard.chat.wait_for_reply()
        content = completed.content or ""
        assert reply.text == " ".join(content.split()), (
            f"the reply on screen {reply.text!r} is not the reply the server completed {content!r}"
        )
        assert completed.thread_id and completed.agent and completed.usage is not None, (
            f"the completed turn names no conversation, agent or usage: {completed}"
        )
        return CompletedTurn(
            rid, completed.thread_id, completed.agent, completed.usage, reply.text, completed
        )

    async def assert_same_session(self) -> None:
        """No new sign-in: still on the dashboard, the same access token, never sent to sign in."""
        __tracebackhide__ = True
        assert not self.sign_in_visits, f"the person was sent to the login page: {self.sign_in_visits}"
        assert self.app.is_chat_url(self.page.url), (
            f"the person is no longer on the dashboard but on {self.page.url}"
        )
        token = (await self.app.tokens_in(self.page))["access"]
        # The same token, not even a refresh: a refresh would mean some service wrongly refused the
        # session (401, or a socket closed as unauthorized) because a store was down.
        assert token == self.access_token, "the access token the browser holds changed during the outage"


async def gather(*aws: Awaitable[Any]) -> list[Any]:
    """asyncio.gather for journeys (one import less)."""
    return list(await asyncio.gather(*aws))
