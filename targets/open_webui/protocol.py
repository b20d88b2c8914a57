"""Open WebUI's chat socket: Socket.IO 5 over Engine.IO 4 on one WebSocket, plus one HTTP request.

A turn in Open WebUI 0.12 crosses two channels. The browser *sends* the user's message over HTTP
(`POST /api/chat/completions`, carrying the Socket.IO session id, the user message and the id the
reply will have); everything after that arrives over the socket as Socket.IO events
`["events", {"chat_id", "message_id", "data": {"type", "data"}}]`. So the request id of a turn is
the assistant `message_id`, and its thread id is the `chat_id`.

Engine.IO packets are one digit (`0` open, `2` ping, `3` pong, `4` message, `6` noop); a message
carries a Socket.IO packet: `40{...}` connect, `42[...]` event, `42<n>[...]` event expecting ack
<n>, `43<n>[...]` that ack, `44{...}` connect error. Frames as the browser exchanged them:

    <- 0{"sid":...,"pingInterval":25000,...}        Engine.IO open
    -> 40{"token":"<JWT>"}  or  40{}                 Socket.IO connect (token in the auth payload)
    <- 40{"sid":"..."}                                always accepted, whatever the token
    -> 42["user-join",{"auth":{"token":"<JWT>"}}]   the UI asks no ack; a program asks one ...
    <- 431[{"id":"<user id>","name":"Ada"}]          ... and is answered with the user, or `431[]`
    -> 420["events:chat",{"chat_id":...,"data":{"type":"join"}}]   <- 430[true]

`OpenWebUIDecoder` maps them to neutral turn events:

    user-join ack with a user           connected (user_id)
    HTTP POST /api/chat/completions     user_message, sent (request_id = the reply's id)
    chat:active {active: true}          turn_started
    response.output_item.added of a function_call       tool_call (tool)
    response.output_item.done of a function_call_output tool_result (tool, result)
    response.output_text.delta          chunk
    chat:completion {done: true}        completed (content = the output's text, usage as reported)
    chat:message:error, chat:completion {error}          error (message; Open WebUI names no code)
    connect error packet (44)           error (code connect_error)

Frames that carry no turn fact (pings, the namespace connect, chat:list / chat:title /
chat:presence, usage progress, finish-reason chunks, argument deltas, chat:active false, acks
of joins) decode to nothing; a Socket.IO event of a type not listed here decodes to `other`.
The raw frames stay whole in the recorder.

What Open WebUI does with a bad token (measured on 0.12.4): it never refuses or closes the
socket. The connect is accepted (`40{"sid"}`) with any token; `user-join` with an expired,
tampered or revoked token is answered by an empty ack (`431[]`) and the socket stays open, but it
joins no room, so it never receives a chat event. `handshake()` therefore reports a socket as
refused when its user-join ack names no user (close_code stays None). A malformed frame makes
the server drop the connection without a close frame (1006); an unknown event is ignored.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import httpx
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from harness.app import Decoder, Handshake, SocketClient, TurnEvent, Turns

if TYPE_CHECKING:
    from harness.ws_recorder import Connection, WsRecorder

ENGINEIO_TYPES = {
    "0": "open",
    "1": "close",
    "2": "ping",
    "3": "pong",
    "4": "message",
    "5": "upgrade",
    "6": "noop",
}
SOCKETIO_TYPES = {
    "0": "connect",
    "1": "disconnect",
    "2": "event",
    "3": "ack",
    "4": "connect_error",
    "5": "binary_event",
    "6": "binary_ack",
}
CHAT_TURN_PATH = "/api/chat/completions"  # the HTTP request that starts a turn
HTTP_TURN_MARK = f"POST {CHAT_TURN_PATH}"
HTTP_TURN_REFUSED = f"{HTTP_TURN_MARK} refused"
TURN_ENDINGS = ("completed", "error")  # the kinds that end a message's turn (no rate_limited here)
QUIET_EVENT_TYPES = frozenset(
    {
        "chat:list",
        "chat:title",
        "chat:tags",
        "chat:presence",
        "chat:messages",
        "chat:access",
        "chat:message:delta",
        "chat:message",
        "chat:message:files",
        "chat:message:follow_ups",
        "typing",
        "status",
    }
)


# ------------------------------------------------------------------------------ packets
@dataclass(frozen=True)
class Packet:
    """One Engine.IO packet and, for a message, the Socket.IO packet inside it."""

    engineio: str  # open, close, ping, pong, message, upgrade, noop
    socketio: str | None = None  # connect, disconnect, event, ack, connect_error, ...
    namespace: str = "/"
    ack_id: int | None = None
    data: Any = None  # the decoded JSON payload (an event is [name, *args])

    @property
    def event(self) -> str | None:
        """The event name of an event packet."""
        if (
            self.socketio == "event"
            and isinstance(self.data, list)
            and self.data
            and isinstance(self.data[0], str)
        ):
            return self.data[0]
        return None

    @property
    def args(self) -> list[Any]:
        if self.socketio == "event" and isinstance(self.data, list):
            return list(self.data[1:])
        if self.socketio == "ack" and isinstance(self.data, list):
            return list(self.data)
        return []


def parse_packet(text: str) -> Packet | None:
    """The packet a text frame carries; None when it is not an Engine.IO packet."""
    if not text or text[0] not in ENGINEIO_TYPES:
        return None
    engineio = ENGINEIO_TYPES[text[0]]
    rest = text[1:]
    if engineio != "message":
        try:
            data = json.loads(rest) if rest else None
        except ValueError:
            data = rest
        return Packet(engineio, data=data)
    if not rest or rest[0] not in SOCKETIO_TYPES:
        return None
    socketio = SOCKETIO_TYPES[rest[0]]
    rest = rest[1:]
    namespace = "/"
    if rest.startswith("/"):
        namespace, _, rest = rest.partition(",")
    digits = ""
    while rest and rest[0].isdigit():
        digits, rest = digits + rest[0], rest[1:]
    try:
        data = json.loads(rest) if rest else None
    except ValueError:
        return None
    return Packet("message", socketio, namespace, int(digits) if digits else None, data)


def encode_connect(auth: dict[str, Any] | None = None) -> str:
    """A Socket.IO connect to the default namespace, with its auth payload."""
    return "40" + (json.dumps(auth) if auth is not None else "")


def encode_event(name: str, *args: Any, ack_id: int | None = None) -> str:
    """A Socket.IO event packet (asking an ack when `ack_id` is given)."""
    return "42" + (str(ack_id) if ack_id is not None else "") + json.dumps([name, *args])


def turn_request_frame(body: dict[str, Any]) -> dict[str, Any]:
    """The HTTP request that starts a turn, shaped as a recorded frame: `{"http": ..., "body": ...}`."""
    return {"http": HTTP_TURN_MARK, "body": body}


def turn_refusal_frame(body: dict[str, Any], status: int, text: str) -> dict[str, Any]:
    """The answer that refused a turn request (4xx/5xx), shaped as a recorded frame: the turn
    never reached the socket, so this answer is its outcome."""
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    detail = answer.get("detail") if isinstance(answer, dict) else None
    return {
        "http": HTTP_TURN_REFUSED,
        "status": status,
        "request_id": body.get("id"),
        "chat_id": body.get("chat_id"),
        "detail": str(detail) if detail else text.strip()[:300],
    }


def output_text(output: Any) -> str:
    """The text of a reply's output items, joined as Open WebUI joins them (utils/misc.get_output_text)."""
    if not isinstance(output, list):
        return ""
    texts = []
    for item in output:
        if not isinstance(item, dict) or item.get("type") != "message":
            continue
        parts = item.get("content")
        if not isinstance(parts, list):
            continue
        text = "".join(
            str(part.get("text")) for part in parts if isinstance(part, dict) and part.get("text") is not None
        )
        if text and not text.isspace():
            texts.append(text)
    return "\n".join(texts)


def _tool_output(item: dict[str, Any]) -> Any:
    """A function_call_output's result: its text parts, parsed as JSON when they are JSON."""
    output = item.get("output")
    if isinstance(output, list):
        text = "".join(str(p.get("text", "")) for p in output if isinstance(p, dict))
    else:
        text = output if isinstance(output, str) else json.dumps(output)
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        content = error.get("content", error.get("message", error.get("detail")))
        if isinstance(content, dict):
            return _error_text(content)
        return str(content) if content is not None else json.dumps(error)
    return str(error)


# ------------------------------------------------------------------------------ decoder
class OpenWebUIDecoder(Decoder):
    """Socket.IO frames (and the turn's HTTP request) -> neutral turn events.

    It remembers, in the order frames are decoded, each tool call's name by its call id (the
    result names only the call id) and the model that streamed each message (the final frame
    does not name it); ids are unique, so decoding the same frames again gives the same events.
    """

    def __init__(self) -> None:
        self._tool_names: dict[str, str] = {}
        self._models: dict[str, str] = {}

    def decode(self, data: Any, direction: Literal["sent", "received"], frame: Any = None) -> list[TurnEvent]:
        source = frame if frame is not None else data
        if isinstance(data, dict):
            if data.get("http") == HTTP_TURN_MARK:
                return self._turn_request(data.get("body") or {}, source)
            if data.get("http") == HTTP_TURN_REFUSED:
                return [
                    TurnEvent(
                        "error",
                        request_id=data.get("request_id"),
                        thread_id=data.get("chat_id") or None,
                        message=str(data.get("detail")),  # what its UI shows; the status stays in the frame
                        frame=source,
                    )
                ]
            return []
        text = getattr(frame, "text", None) if frame is not None else None
        if not isinstance(text, str):
            text = data if isinstance(data, str) else str(data) if isinstance(data, int) else None
        if text is None:
            return []
        packet = parse_packet(text)
        if packet is None or packet.engineio != "message":
            return []
        if direction == "sent":
            return []
        if packet.socketio == "ack":
            return self._ack(packet, source)
        if packet.socketio == "connect_error":
            message = packet.data.get("message") if isinstance(packet.data, dict) else packet.data
            return [TurnEvent("error", code="connect_error", message=str(message), frame=source)]
        if packet.event != "events" or not packet.args or not isinstance(packet.args[0], dict):
            return [] if packet.socketio in ("connect", "disconnect") else [TurnEvent("other", frame=source)]
        return self._chat_event(packet.args[0], source)

    def close_reason(self, code: int | None) -> str | None:
        # Open WebUI never closes a socket to refuse a session (see the module docstring).
        return None

    # -- one kind of frame each -------------------------------------------------------------
    @staticmethod
    def _turn_request(body: dict[str, Any], source: Any) -> list[TurnEvent]:
        raw = body.get("user_message")
        user_message: dict[str, Any] = raw if isinstance(raw, dict) else {}
        content = user_message.get("content")
        if content is None:
            users = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
            content = users[-1].get("content") if users else None
        return [
            TurnEvent(
                "user_message",
                "sent",
                request_id=body.get("id"),
                thread_id=body.get("chat_id") or None,
                message_id=user_message.get("id"),
                user_id=user_message.get("user_id"),
                content=content if isinstance(content, str) else None,
                frame=source,
            )
        ]

    @staticmethod
    def _ack(packet: Packet, source: Any) -> list[TurnEvent]:
        args = packet.args
        if args and isinstance(args[0], dict) and isinstance(args[0].get("id"), str):
            # Only user-join answers with the user it authenticated.
            return [TurnEvent("connected", user_id=args[0]["id"], frame=source)]
        return []

    def _chat_event(self, envelope: dict[str, Any], source: Any) -> list[TurnEvent]:
        chat_id = envelope.get("chat_id")
        message_id = envelope.get("message_id")
        raw = envelope.get("data")
        body: dict[str, Any] = raw if isinstance(raw, dict) else {}
        kind = body.get("type")
        data = body.get("data")

        def event(name: str, **fields: Any) -> TurnEvent:
            return TurnEvent(
                name,
                request_id=message_id,
                thread_id=chat_id,
                message_id=message_id,
                agent=self._models.get(str(message_id)),
                frame=source,
                **fields,
            )

        if kind == "chat:active":
            active = data.get("active") if isinstance(data, dict) else None
            return [event("turn_started")] if active is True else []
        if kind == "response:completion" and isinstance(data, dict):
            return self._response_item(data, event)
        if kind == "chat:completion" and isinstance(data, dict):
            model = data.get("model")
            if isinstance(model, str) and message_id:
                self._models.setdefault(str(message_id), model)
            if data.get("error"):
                return [event("error", message=_error_text(data["error"]))]
            if data.get("done") is True:
                content = output_text(data.get("output")) if "output" in data else data.get("content")
                usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
                return [event("completed", content=content, usage=usage)]
            return []  # usage progress, finish-reason chunks
        if kind == "chat:message:error":
            error = data.get("error") if isinstance(data, dict) else data
            return [event("error", message=_error_text(error))]
        if kind in QUIET_EVENT_TYPES:
            return []
        return [event("other")]

    def _response_item(self, data: dict[str, Any], event: Any) -> list[TurnEvent]:
        step = data.get("type")
        raw = data.get("item")
        item: dict[str, Any] = raw if isinstance(raw, dict) else {}
        if step == "response.output_text.delta":
            return [event("chunk", chunk=str(data.get("delta") or ""))]
        if step == "response.output_item.added" and item.get("type") == "function_call":
            name = str(item.get("name") or "")
            call = str(item.get("call_id") or item.get("id") or "")
            if call:
                self._tool_names[call] = name
            return [event("tool_call", tool=name or None)]
        if step == "response.output_item.done" and item.get("type") == "function_call_output":
            call = str(item.get("call_id") or "")
            return [event("tool_result", tool=self._tool_names.get(call), result=_tool_output(item))]
        return []


# ------------------------------------------------------------------------------ turns
@dataclass(frozen=True)
class RequestFrame:
    """A turn's HTTP request as the browser sent it, kept beside the socket's frames.

    `index` sits between the recorder's frame indices (the last socket frame seen before the
    request, plus a half), so `after=` bookmarks order it among the socket's frames."""

    index: float
    at: float
    url: str
    data: dict[str, Any]
    direction: Literal["sent", "received"] = "sent"
    connection: int = 0
    text: str | None = None

    @property
    def type(self) -> str:
        return str(self.data.get("http"))

    def preview(self, width: int = 160) -> str:
        if self.data.get("http") == HTTP_TURN_REFUSED:
            return f"{HTTP_TURN_REFUSED} {self.data.get('status')} {self.data.get('detail')!r}"[:width]
        shown = json.dumps(self.data.get("body", {}).get("user_message", {}).get("content"))
        return f"{HTTP_TURN_MARK} {shown}"[:width]


class TurnRequests:
    """The chat-turn HTTP requests of every page the adapter drives, captured from the browser,
    with the answers that refused one (a turn refused over HTTP never reaches the socket)."""

    def __init__(self) -> None:
        self._by_page: dict[int, list[RequestFrame]] = {}
        self._watched: set[int] = set()
        self._recorders: dict[int, WsRecorder] = {}

    def watch(self, page: Any) -> None:
        """Capture the turn requests `page` sends from now on (idempotent)."""
        if id(page) in self._watched:
            return
        self._watched.add(id(page))
        self._by_page.setdefault(id(page), [])
        page.on("request", lambda request: self._on_request(page, request))
        page.on("response", lambda response: self._on_response(page, response))

    @staticmethod
    def _turn_body(request: Any) -> dict[str, Any] | None:
        if request.method != "POST" or not request.url.split("?")[0].endswith(CHAT_TURN_PATH):
            return None
        try:
            body = request.post_data_json
        except Exception:  # noqa: BLE001 - a body that is not JSON is no turn
            return None
        return body if isinstance(body, dict) else None

    def _append(
        self, page: Any, url: str, data: dict[str, Any], direction: Literal["sent", "received"]
    ) -> None:
        recorder = next((r for r in self._recorders.values() if id(page) in _pages_of(r)), None)
        last = recorder.frames()[-1].index if recorder is not None and recorder.frames() else -1
        index, kept = last + 0.5, self._by_page[id(page)]
        if kept and index <= kept[-1].index:  # no socket frame since the last one: just after it
            index = kept[-1].index + 0.001
        kept.append(RequestFrame(index, time.monotonic(), url, data, direction))

    def _on_request(self, page: Any, request: Any) -> None:
        body = self._turn_body(request)
        if body is not None:
            self._append(page, request.url, turn_request_frame(body), "sent")

    async def _on_response(self, page: Any, response: Any) -> None:
        body = self._turn_body(response.request)
        if body is None or response.status < 400:
            return
        try:
            text = await response.text()
        except Exception:  # noqa: BLE001 - the page went away; the status still tells
            text = response.status_text or ""
        self._append(page, response.url, turn_refusal_frame(body, response.status, text), "received")

    def for_recorder(self, recorder: WsRecorder) -> list[RequestFrame]:
        """The requests of the pages `recorder` records."""
        self._recorders[id(recorder)] = recorder
        pages = _pages_of(recorder)
        return [f for page_id, frames in self._by_page.items() if page_id in pages for f in frames]

    def last_body(self, page: Any) -> dict[str, Any] | None:
        """The body of the last turn request `page` sent."""
        frames = [f for f in self._by_page.get(id(page)) or [] if f.direction == "sent"]
        return frames[-1].data["body"] if frames else None


def _pages_of(recorder: WsRecorder) -> set[int]:
    # The recorder remembers the pages it attached to by id(page) (harness/ws_recorder.py).
    return set(getattr(recorder, "_pages", set()))


class OpenWebUITurns(Turns):
    """Turn events from the socket's frames and the turn requests the same pages sent over HTTP."""

    def __init__(
        self, recorder: WsRecorder, decoder: Decoder, requests: TurnRequests, ws_url: str | None = None
    ) -> None:
        super().__init__(recorder, decoder)
        self.requests = requests
        self.ws_url = ws_url
        requests.for_recorder(recorder)

    async def wait_for_refusal(self, timeout: float = 10.0) -> Connection:  # noqa: ASYNC109
        """A socket of this user whose session the server refused.

        Open WebUI closes no socket to refuse it (the module docstring) and the UI's `user-join`
        asks no ack, so the frames alone never say so. Its server joins a socket to the user's
        room only for a good token offered in the connect (`40{"token"}`) or in `user-join`; a
        browser socket counts as refused when every token it offered there is refused when a
        program offers it (an empty `user-join` ack). A reload's socket that offered no token at
        all counts too: the frontend had already dropped the refused token (its HTTP check of the
        token raced the socket's connect), so that socket has no session either."""
        __tracebackhide__ = True
        assert self.ws_url, "these turns were made without the socket's address"
        deadline = time.monotonic() + timeout
        asked: dict[str, bool] = {}
        while True:
            offered: dict[int, list[str]] = {}
            for frame in self.recorder.frames(direction="sent"):
                packet = parse_packet(frame.text or "")
                if packet is None:
                    continue
                if packet.socketio == "connect" and isinstance(packet.data, dict):
                    auth: Any = packet.data
                elif packet.event == "user-join" and isinstance(packet.data, list) and len(packet.data) > 1:
                    payload = packet.data[1]
                    auth = payload.get("auth") if isinstance(payload, dict) else None
                else:
                    continue
                token = auth.get("token") if isinstance(auth, dict) else None
                if isinstance(token, str):
                    offered.setdefault(frame.connection, []).append(token)
            for connection, tokens in offered.items():
                for token in tokens:
                    if token not in asked:
                        asked[token] = (await handshake(self.ws_url, token)).refused
                if all(asked[t] for t in tokens):
                    return next(c for c in self.recorder.connections if c.id == connection)
            connected = {f.connection for f in self.recorder.frames(direction="sent")}
            for conn in self.recorder.connections[1:]:  # a reload's socket, not the page's first
                if conn.id in connected and conn.id not in offered:
                    return conn
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no socket offered a token the server refuses within {timeout:g} s; "
                    f"connections: {[c.summary() for c in self.recorder.connections]}"
                )
            await self.recorder.wait_for_change(remaining)

    def frames(self, direction: Literal["sent", "received"] | None = None) -> list[Any]:
        """The socket's frames and the turn requests these pages made over HTTP (sent), with the
        answers that refused one (received)."""
        frames: list[Any] = super().frames(direction)
        frames += [f for f in self.requests.for_recorder(self.recorder) if direction in (None, f.direction)]
        frames.sort(key=lambda f: f.index)
        return frames


# ------------------------------------------------------------------------------ a program's socket
class OpenWebUISocket(SocketClient):
    """A Socket.IO client speaking Engine.IO 4 itself: the token in the connect auth and in user-join,
    as the UI sends it; a message is sent as the UI sends it (HTTP, naming this socket's session) and
    its reply arrives on the socket."""

    def __init__(
        self,
        ws_url: str,
        base_url: str,
        token: str,
        http: httpx.AsyncClient,
        model: str,
        timeout: float = 10.0,
    ) -> None:
        self.ws_url = ws_url
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.http = http
        self.model = model
        self.timeout = timeout
        self.decoder = OpenWebUIDecoder()
        self.frames: list[str] = []
        self.received: list[TurnEvent] = []
        self.sid: str | None = None  # the Socket.IO session id (what a turn request names)
        self.close_code: int | None = None
        self._conn: ClientConnection | None = None
        self._queue: asyncio.Queue[TurnEvent | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._acks = 0
        self._last_reply: dict[str, str] = {}  # chat id -> the id of its newest reply

    async def open(self) -> OpenWebUISocket:
        __tracebackhide__ = True
        self._conn = await websockets.connect(self.ws_url, open_timeout=self.timeout)
        opened = parse_packet(str(await asyncio.wait_for(self._conn.recv(), self.timeout)))
        assert opened is not None and opened.engineio == "open", (
            f"the server did not open Engine.IO: {opened}"
        )
        await self._conn.send(encode_connect({"token": self.token}))
        while self.sid is None:
            text = str(await asyncio.wait_for(self._conn.recv(), self.timeout))
            self.frames.append(text)
            packet = parse_packet(text)
            if packet is not None and packet.socketio == "connect" and isinstance(packet.data, dict):
                self.sid = str(packet.data.get("sid"))
            elif packet is not None and packet.socketio == "connect_error":
                raise AssertionError(f"Open WebUI refused the Socket.IO connect: {text}")
        self._reader = asyncio.create_task(self._read())
        await self._conn.send(
            encode_event("user-join", {"auth": {"token": self.token}}, ack_id=self._next_ack())
        )
        return self

    def _next_ack(self) -> int:
        ack, self._acks = self._acks, self._acks + 1
        return ack

    async def _read(self) -> None:
        assert self._conn is not None
        try:
            async for message in self._conn:
                text = message if isinstance(message, str) else message.decode()
                self.frames.append(text)
                if text == "2":  # Engine.IO ping: the client answers pong, or the server drops it
                    await self._conn.send("3")
                    continue
                for event in self.decoder.decode(text, "received"):
                    self.received.append(event)
                    self._queue.put_nowait(event)
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self._conn.close_code if self._conn.close_code is not None else 1006
            self._queue.put_nowait(None)
            self._changed.set()

    async def send_message(
        self, content: str, *, request_id: str | None = None, thread_id: str | None = None
    ) -> str:
        """Send `content` as the UI does (POST /api/chat/completions naming this socket); -> the reply's id."""
        __tracebackhide__ = True
        assert self._conn is not None and self.sid is not None, "the socket is not open"
        reply_id = request_id or str(uuid.uuid4())
        user_id = str(uuid.uuid4())
        parent = self._last_reply.get(thread_id) if thread_id else None
        body: dict[str, Any] = {
            "stream": True,
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "params": {},
            "features": {},
            "session_id": self.sid,
            "id": reply_id,
            "parent_id": parent,
            "user_message": {
                "id": user_id,
                "parentId": parent,
                "childrenIds": [reply_id],
                "role": "user",
                "content": content,
                "timestamp": int(time.time()),
                "models": [self.model],
            },
        }
        if thread_id:
            body["chat_id"] = thread_id
        response = await self.http.post(
            f"{self.base_url}{CHAT_TURN_PATH}", json=body, headers={"Authorization": f"Bearer {self.token}"}
        )
        if response.status_code >= 400:
            # Refused before it started (another user's chat, a store down): the turn never
            # reaches the socket, and that answer is its outcome, an error event.
            answer = turn_refusal_frame(body, response.status_code, response.text)
            for refused in self.decoder.decode(answer, "received", answer):
                self.received.append(refused)
                self._queue.put_nowait(refused)
            self._changed.set()
            return reply_id
        assert response.status_code == 200, (
            f"{HTTP_TURN_MARK} answered {response.status_code}: {response.text[:300]}"
        )
        chat_id = (response.json() or {}).get("chat_id") or thread_id
        if chat_id:
            self._last_reply[str(chat_id)] = reply_id
        return reply_id

    async def send_raw(self, text: str) -> None:
        assert self._conn is not None, "the socket is not open"
        await self._conn.send(text)

    async def send_unknown_frame(self, request_id: str | None = None) -> None:
        """A well-formed Socket.IO event of a name Open WebUI does not handle."""
        await self.send_raw(encode_event("launch-rockets", {"request_id": request_id or "bogus-type"}))

    async def receive(self, timeout: float = 20.0) -> TurnEvent:  # noqa: ASYNC109 - the client's API
        __tracebackhide__ = True
        try:
            event = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"no event within {timeout:g} s; frames so far: {self.frames[-10:]}"
            ) from None
        if event is None:
            self._queue.put_nowait(None)
            raise AssertionError(f"the socket closed (code {self.close_code}) while an event was expected")
        return event

    async def wait_connected(self, timeout: float = 10.0) -> TurnEvent:  # noqa: ASYNC109
        """The user-join ack naming this socket's user (the `connected` event)."""
        __tracebackhide__ = True
        return await self.wait_until(lambda e: e.kind == "connected", "'connected' (user-join ack)", timeout)

    def outcome(self, request_id: str) -> TurnEvent | None:
        """The event that ended a message: completed or error (None while it runs)."""
        return next((e for e in self.received if e.request_id == request_id and e.kind in TURN_ENDINGS), None)

    @property
    def is_open(self) -> bool:
        return self._conn is not None and self._conn.state.name == "OPEN"

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def __aenter__(self) -> OpenWebUISocket:
        return await self.open()


async def handshake(
    ws_url: str, token: str, *, stay_for_first: bool = False, timeout: float = 10.0
) -> Handshake:
    """Connect with `token` in the auth payload and ask user-join (with an ack), as a program would.

    Accepted: the ack names the user (`connected`). Refused: the ack is empty; Open WebUI keeps
    the socket open (close_code None) but the socket joins no room, so nothing more can reach it.
    Either way the handshake ends at the ack (`stay_for_first` changes nothing here)."""
    seen = Handshake()
    decoder = OpenWebUIDecoder()
    async with websockets.connect(ws_url, open_timeout=timeout) as ws:
        async with asyncio.timeout(timeout):
            await ws.recv()  # Engine.IO open
            await ws.send(encode_connect({"token": token}))
            await ws.send(encode_event("user-join", {"auth": {"token": token}}, ack_id=0))
            try:
                async for message in ws:
                    text = message if isinstance(message, str) else message.decode()
                    if text == "2":
                        await ws.send("3")
                        continue
                    packet = parse_packet(text)
                    if packet is not None and packet.socketio == "ack" and packet.ack_id == 0:
                        events = decoder.decode(text, "received")
                        seen.events.extend(events)
                        seen.refused = not events
                        break
                    seen.events.extend(decoder.decode(text, "received"))
            except ConnectionClosed:
                seen.close_code = ws.close_code
    return seen
