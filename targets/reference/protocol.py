"""The reference platform's chat socket: JSON frames {type, payload, request_id} (docs/reference-contract.md).

`ReferenceDecoder` turns them into neutral turn events; `ReferenceSocket` is the one socket
client journeys use without a browser (the token travels as the `jwt.<token>` subprotocol,
never in the URL).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any, Literal

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from harness.app import Decoder, Handshake, SocketClient, TurnEvent

UNAUTHORIZED_CLOSE = 4401

# frame type -> neutral kind
KINDS = {
    "connection_established": "connected",
    "agent_started": "turn_started",
    "agent_thinking": "thinking",
    "tool_executing": "tool_call",
    "tool_completed": "tool_result",
    "agent_stream": "chunk",
    "agent_completed": "completed",
    "error": "error",
    "rate_limited": "rate_limited",
}
TURN_ENDINGS = ("completed", "rate_limited", "error")  # the kinds that end a message's turn


class ReferenceDecoder(Decoder):
    """One reference frame is one event."""

    def decode(self, data: Any, direction: Literal["sent", "received"], frame: Any = None) -> list[TurnEvent]:
        if not isinstance(data, dict):
            return []
        kind_raw = data.get("type")
        raw_payload = data.get("payload")
        payload: dict[str, Any] = raw_payload if isinstance(raw_payload, dict) else {}
        rid = data.get("request_id")
        if direction == "sent":
            kind = "user_message" if kind_raw == "user_message" else "other"
            return [
                TurnEvent(
                    kind,
                    "sent",
                    request_id=rid,
                    thread_id=payload.get("thread_id"),
                    content=payload.get("content"),
                    frame=frame if frame is not None else data,
                )
            ]
        kind = KINDS.get(str(kind_raw), "other")
        usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else None
        retry = payload.get("retry_after")
        return [
            TurnEvent(
                kind,
                "received",
                request_id=rid,
                thread_id=payload.get("thread_id"),
                run_id=payload.get("run_id"),
                message_id=payload.get("message_id"),
                agent=payload.get("agent"),
                user_id=payload.get("user_id"),
                content=payload.get("content"),
                chunk=payload.get("chunk"),
                tool=payload.get("tool"),
                result=payload.get("result"),
                usage=usage,
                code=payload.get("code"),
                message=payload.get("message"),
                recoverable=payload.get("recoverable"),
                retry_after=int(retry) if retry is not None else None,
                scope=payload.get("scope"),
                frame=frame if frame is not None else data,
                active_thread_id=payload.get("active_thread_id"),
                ts=float(data["ts"]) if isinstance(data.get("ts"), int | float) else None,
            )
        ]

    def close_reason(self, code: int | None) -> str | None:
        return "unauthorized" if code == UNAUTHORIZED_CLOSE else None


class ReferenceSocket(SocketClient):
    """A chat socket with a real access token; every received frame is kept (`frames`) and decoded."""

    def __init__(self, ws_url: str, token: str, timeout: float = 10.0) -> None:
        self.ws_url = ws_url
        self.token = token
        self.timeout = timeout
        self.decoder = ReferenceDecoder()
        self.frames: list[dict[str, Any]] = []
        self.received: list[TurnEvent] = []
        self.close_code: int | None = None
        self._conn: ClientConnection | None = None
        self._queue: asyncio.Queue[TurnEvent | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def open(self) -> ReferenceSocket:
        self._conn = await websockets.connect(
            self.ws_url, subprotocols=[Subprotocol(f"jwt.{self.token}")], open_timeout=self.timeout
        )
        assert self._conn.subprotocol == f"jwt.{self.token}", (
            "the backend did not echo the jwt.<token> subprotocol"
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self._conn is not None
        try:
            async for message in self._conn:
                data = json.loads(message)
                assert isinstance(data, dict), f"the socket sent a non-object frame: {message!r}"
                self.frames.append(data)
                for event in self.decoder.decode(data, "received"):
                    self.received.append(event)
                    self._queue.put_nowait(event)
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self._conn.close_code
            self._queue.put_nowait(None)
            self._changed.set()

    async def send_message(
        self, content: str, *, request_id: str | None = None, thread_id: str | None = None
    ) -> str:
        assert self._conn is not None, "the socket is not open"
        rid = request_id or f"tl-{uuid.uuid4().hex[:12]}"
        payload: dict[str, Any] = {"content": content}
        if thread_id:
            payload["thread_id"] = thread_id
        await self._conn.send(json.dumps({"type": "user_message", "payload": payload, "request_id": rid}))
        return rid

    async def send_raw(self, text: str) -> None:
        assert self._conn is not None, "the socket is not open"
        await self._conn.send(text)

    async def send_unknown_frame(self, request_id: str | None = None) -> None:
        """A well-formed frame whose type the contract does not define."""
        await self.send_raw(
            json.dumps({"type": "launch_rockets", "payload": {}, "request_id": request_id or "bogus-type"})
        )

    async def receive(self, timeout: float = 20.0) -> TurnEvent:
        __tracebackhide__ = True
        try:
            event = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"no frame within {timeout:g} s; frames so far: {[f.get('type') for f in self.frames]}"
            ) from None
        if event is None:
            self._queue.put_nowait(None)  # stays closed for later readers
            raise AssertionError(f"the socket closed (code {self.close_code}) while a frame was expected")
        return event

    @property
    def is_open(self) -> bool:
        return self._conn is not None and self._conn.state.name == "OPEN"

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def __aenter__(self) -> ReferenceSocket:
        return await self.open()

    # -- turns of a program's burst (the rate-limit journeys) -------------------------------------
    async def wait_connected(self, timeout: float = 10.0) -> TurnEvent:
        """The server's greeting of this authenticated socket (the `connected` event)."""
        __tracebackhide__ = True
        return await self.wait_until(lambda e: e.kind == "connected", "'connected' greeting", timeout)

    def outcome(self, request_id: str) -> TurnEvent | None:
        """The event that ended a message: completed, rate_limited or error (None while it runs)."""
        return next((e for e in self.received if e.request_id == request_id and e.kind in TURN_ENDINGS), None)

    async def wait_for_outcomes(self, request_ids: list[str], timeout: float = 20.0) -> dict[str, TurnEvent]:
        """Every message's ending event (completed, rate_limited or error), keyed by request id."""
        __tracebackhide__ = True
        outcomes: dict[str, TurnEvent] = {}
        for number, rid in enumerate(request_ids, start=1):

            def ended(event: TurnEvent, rid: str = rid) -> bool:
                return event.request_id == rid and event.kind in TURN_ENDINGS

            outcomes[rid] = await self.wait_until(
                ended,
                f"outcome for message {number} of {len(request_ids)}",
                timeout,
            )
        return outcomes


async def handshake(
    ws_url: str, token: str, *, stay_for_first: bool = False, timeout: float = 10.0
) -> Handshake:
    """Open a socket offering `jwt.<token>`; the events until the server closes (or the first one)."""
    seen = Handshake()
    decoder = ReferenceDecoder()
    async with asyncio.timeout(timeout):
        async with websockets.connect(
            ws_url, subprotocols=[Subprotocol(f"jwt.{token}")], open_timeout=timeout
        ) as ws:
            assert ws.subprotocol == f"jwt.{token}", "the backend did not echo the jwt.<token> subprotocol"
            try:
                async for message in ws:
                    seen.events.extend(decoder.decode(json.loads(message), "received"))
                    if stay_for_first:
                        break
            except ConnectionClosed:
                pass
            if not stay_for_first:
                seen.close_code = ws.close_code
                seen.refused = decoder.close_reason(ws.close_code) == "unauthorized"
    return seen
