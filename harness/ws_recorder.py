"""Every WebSocket frame of a browser context, captured through Playwright's events.

Attach before the first navigation (the browser plugin does), then wait on frames:

    frame = await ws.wait_for("agent_completed", where={"payload.agent": "data"}, timeout=10)

Close codes: Playwright's WebSocket "close" event carries no code or reason. `attach_context`
also installs a tiny page-side listener (the page's own `WebSocket` "close" event, reported
through `expose_binding`) so `closed_with(4401)` works; where that is unavailable (a page
attached without its context) the connection's `close_code` stays None and
`close_note` says why.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from playwright.async_api import BrowserContext, Page, WebSocket

from harness.redact import redact, redact_value

Direction = Literal["sent", "received"]

_BINDING = "__throughlineWsClosed"
_CLOSE_LISTENER = """
(() => {
  const Native = window.WebSocket;
  if (!Native || Native.__throughlineWrapped) return;
  const Wrapped = new Proxy(Native, {
    construct(target, args, newTarget) {
      const socket = Reflect.construct(target, args, newTarget);
      socket.addEventListener('close', (event) => {
        const report = window.__BINDING__;
        if (typeof report === 'function') {
          report({url: socket.url, code: event.code, reason: event.reason, wasClean: event.wasClean})
            .catch(() => {});
        }
      });
      return socket;
    },
  });
  Object.defineProperty(Wrapped, '__throughlineWrapped', {value: true});
  window.WebSocket = Wrapped;
})();
""".replace("__BINDING__", _BINDING)

NO_CODE_NOTE = "Playwright's WebSocket 'close' event carries no close code or reason"


@dataclass(frozen=True)
class Frame:
    """One frame, as the browser sent or received it."""

    index: int
    direction: Direction
    at: float  # time.monotonic() when Playwright reported it
    url: str
    connection: int
    data: Any = None  # parsed JSON, if the frame was JSON text
    text: str | None = None
    raw: bytes | None = None

    @property
    def type(self) -> str | None:
        return self.data.get("type") if isinstance(self.data, dict) else None

    def preview(self, width: int = 160) -> str:
        if self.data is not None:
            shown = json.dumps(redact_value(self.data), ensure_ascii=False, default=str)
        elif self.text is not None:
            shown = redact(self.text)
        else:
            shown = f"<{len(self.raw or b'')} bytes> {self.raw[:32]!r}" if self.raw is not None else ""
        return shown if len(shown) <= width else shown[: width - 1] + "…"

    def __repr__(self) -> str:
        return f"Frame(#{self.index} {self.direction} {self.type or '-'} {self.preview(120)})"


@dataclass
class Connection:
    """One WebSocket the page opened."""

    id: int
    url: str
    opened_at: float
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str | None = None
    was_clean: bool | None = None
    close_note: str | None = None
    error: str | None = None

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    def summary(self) -> str:
        state = "open" if self.is_open else f"closed code={self.close_code} reason={self.close_reason!r}"
        if not self.is_open and self.close_code is None and self.close_note:
            state += f" ({self.close_note})"
        if self.error:
            state += f" error={self.error!r}"
        return redact(f"#{self.id} {self.url} {state}")


class WsWaitTimeout(AssertionError):
    """The expected frame never arrived."""


class WsRecorder:
    """Records every frame of every WebSocket of a context (or page)."""

    def __init__(self, label: str = "page") -> None:
        self.label = label
        self._frames: list[Frame] = []
        self.connections: list[Connection] = []
        self._by_socket: dict[int, Connection] = {}
        self._changed = asyncio.Event()
        self._pages: set[int] = set()
        self.has_close_codes = False

    # -- attaching -----------------------------------------------------------
    async def attach_context(self, context: BrowserContext) -> None:
        """Record every page of `context`, present and future; also learn close codes page-side."""
        try:
            await context.expose_binding(_BINDING, self._on_page_close)
            await context.add_init_script(_CLOSE_LISTENER)
            self.has_close_codes = True
        except Exception:  # noqa: BLE001 - e.g. the binding exists already; frames still record
            self.has_close_codes = False
        context.on("page", self.attach_page)
        for page in context.pages:
            self.attach_page(page)

    def attach_page(self, page: Page) -> None:
        """Record the WebSockets of one page (idempotent)."""
        if id(page) in self._pages:
            return
        self._pages.add(id(page))
        page.on("websocket", self._on_websocket)

    # -- events --------------------------------------------------------------
    def _on_websocket(self, socket: WebSocket) -> None:
        conn = Connection(id=len(self.connections) + 1, url=socket.url, opened_at=time.monotonic())
        self.connections.append(conn)
        self._by_socket[id(socket)] = conn
        socket.on("framesent", lambda payload: self._on_frame(conn, "sent", payload))
        socket.on("framereceived", lambda payload: self._on_frame(conn, "received", payload))
        socket.on("close", lambda _ws: self._on_close(conn))
        socket.on("socketerror", lambda error: self._on_error(conn, error))
        self._notify()

    def _on_frame(self, conn: Connection, direction: Direction, payload: str | bytes) -> None:
        data: Any = None
        text: str | None = None
        raw: bytes | None = None
        if isinstance(payload, bytes | bytearray):
            raw = bytes(payload)
        else:
            text = payload
            try:
                data = json.loads(payload)
            except ValueError:
                data = None
        frame = Frame(len(self._frames), direction, time.monotonic(), conn.url, conn.id, data, text, raw)
        self._frames.append(frame)
        self._notify()

    def _on_close(self, conn: Connection) -> None:
        conn.closed_at = time.monotonic()
        if conn.close_code is None:
            conn.close_note = NO_CODE_NOTE + (
                "; waiting for the page-side close event" if self.has_close_codes else ""
            )
        self._notify()

    def _on_error(self, conn: Connection, error: str) -> None:
        conn.error = error
        self._notify()

    def _on_page_close(self, source: Any, info: dict[str, Any]) -> None:
        url = info.get("url", "")
        # The most recent connection to that URL still without a code.
        for conn in reversed(self.connections):
            if conn.url == url and conn.close_code is None:
                conn.close_code = int(info.get("code", 0))
                conn.close_reason = info.get("reason") or ""
                conn.was_clean = bool(info.get("wasClean"))
                conn.close_note = "code from the page's WebSocket close event"
                if conn.closed_at is None:
                    conn.closed_at = time.monotonic()
                break
        self._notify()

    def _notify(self) -> None:
        self._changed.set()

    async def wait_for_change(self, timeout: float) -> None:  # noqa: ASYNC109
        """Return when a frame, connection or close arrives, or after `timeout` seconds."""
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    # -- queries -------------------------------------------------------------
    def frames(self, type: str | None = None, direction: Direction | None = None) -> list[Frame]:
        """Frames so far, optionally only of one `type` and/or `direction`."""
        return [
            f
            for f in self._frames
            if (type is None or f.type == type) and (direction is None or f.direction == direction)
        ]

    @property
    def reconnects(self) -> int:
        """Connections opened again to an endpoint (URL without query) the page had connected to before."""
        seen: set[str] = set()
        count = 0
        for conn in self.connections:
            parts = urlsplit(conn.url)
            endpoint = f"{parts.scheme}://{parts.netloc}{parts.path}"
            count += endpoint in seen
            seen.add(endpoint)
        return count

    def closed_with(self, code: int) -> bool:
        """Whether any connection closed with `code` (needs the page-side close listener)."""
        return any(c.close_code == code for c in self.connections)

    async def wait_for(
        self,
        type: str | None = None,
        where: dict[str, Any] | Callable[[Any], bool] | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109 - the waiter's API, like Playwright's own
        after: int | Frame | None = None,
        direction: Direction | None = "received",
    ) -> Frame:
        """The first frame (index > `after`) of `type` matching `where`; fails showing what was seen."""
        __tracebackhide__ = True
        start_index = (after.index if isinstance(after, Frame) else after) if after is not None else -1
        deadline = time.monotonic() + timeout
        while True:
            for frame in self._frames[start_index + 1 :]:
                if direction is not None and frame.direction != direction:
                    continue
                if type is not None and frame.type != type:
                    continue
                if where is not None and not _matches(frame.data, where):
                    continue
                return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                break
        raise WsWaitTimeout(self._describe_miss(type, where, timeout, start_index, direction))

    async def wait_for_close(self, code: int | None = None, timeout: float = 10.0) -> Connection:  # noqa: ASYNC109
        """The first closed connection (with `code`, when given, which needs the page-side listener)."""
        __tracebackhide__ = True
        deadline = time.monotonic() + timeout
        while True:
            for conn in self.connections:
                if conn.closed_at is not None and (code is None or conn.close_code == code):
                    return conn
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                break
        wanted = f"with code {code}" if code is not None else ""
        raise WsWaitTimeout(
            f"no WebSocket closed {wanted} within {timeout:.1f} s; connections:\n"
            + "\n".join(c.summary() for c in self.connections)
        )

    def assert_order(self, types: Iterable[str], direction: Direction | None = "received") -> None:
        """Assert the frame types appear in this order (other frames may come between)."""
        __tracebackhide__ = True
        wanted = list(types)
        seen = [f.type for f in self.frames(direction=direction)]
        position = 0
        for t in seen:
            if position < len(wanted) and t == wanted[position]:
                position += 1
        if position < len(wanted):
            raise AssertionError(
                f"WebSocket frames did not arrive in the order {wanted}: "
                f"'{wanted[position]}' missing after {wanted[:position]}; "
                f"frame types seen ({direction or 'both directions'}): {seen}"
            )

    # -- display -------------------------------------------------------------
    def format_frames(self, last: int = 30) -> str:
        """The last `last` frames as a redacted plain-text table, with the connections."""
        rows = [
            f"WebSocket recorder '{self.label}': {len(self._frames)} frames, "
            f"{len(self.connections)} connection(s), {self.reconnects} reconnect(s)"
        ]
        rows += ["  " + c.summary() for c in self.connections]
        shown = self._frames[-last:]
        if len(self._frames) > len(shown):
            rows.append(f"  ... {len(self._frames) - len(shown)} earlier frame(s) not shown")
        t0 = self._frames[0].at if self._frames else 0.0
        for f in shown:
            arrow = "->" if f.direction == "sent" else "<-"
            rows.append(
                f"  #{f.index:<4} +{f.at - t0:7.3f}s c{f.connection} {arrow} {f.type or '-':<24} {f.preview()}"
            )
        return redact("\n".join(rows))

    def _describe_miss(
        self,
        type: str | None,
        where: Any,
        timeout: float,
        start_index: int,
        direction: Direction | None,
    ) -> str:
        what = f"a {direction or 'sent or received'} frame"
        what += f" of type {type!r}" if type else ""
        if where is not None:
            what += f" where {getattr(where, '__name__', None) or redact(repr(where))}"
        if start_index >= 0:
            what += f" after frame #{start_index}"
        return f"expected {what} within {timeout:.1f} s; last frames seen:\n{self.format_frames(last=15)}"

    def __repr__(self) -> str:
        last = self._frames[-3:]
        return redact(
            f"<WsRecorder {self.label!r} frames={len(self._frames)} connections={len(self.connections)} "
            f"last={last!r}>"
        )


def _lookup(data: Any, dotted: str) -> Any:
    current = data
    for part in dotted.split("."):
        if not isinstance(current, dict) or part not in current:
            return _MISSING
        current = current[part]
    return current


_MISSING = object()


def _matches(data: Any, where: dict[str, Any] | Callable[[Any], bool]) -> bool:
    if callable(where):
        try:
            return bool(where(data))
        except (KeyError, TypeError, AttributeError, IndexError):
            return False
    if not isinstance(data, dict):
        return False
    for key, expected in where.items():
        value = _lookup(data, key)
        if value is _MISSING and "." not in key:
            # {"agent": "data"} also matches the envelope's payload.
            value = _lookup(data, f"payload.{key}")
        if value is _MISSING or value != expected:
            return False
    return True
