"""Request ids end to end: accept `X-Request-ID` (or make one), echo it, log it on every line.

Usage in a service::

    from stack.common.request_id import RequestIdMiddleware, configure_logging, current_request_id

    configure_logging("backend")            # once, at start (idempotent)
    app.add_middleware(RequestIdMiddleware)  # add it LAST so it is the outermost middleware

- Every log record gets `record.request_id` (`-` outside a request), and the root handler
  installed by `configure_logging` prints it: `... INFO backend.chat [<rid>] message`.
- `current_request_id()` returns the id of the request being served (also on
  `request.state.request_id`); pass it on to other services / stores.
- `with bind_request_id(rid):` logs a background job under a stored request id.
- The middleware writes one access line per HTTP request WITHOUT the query string (a
  query may carry a token), so run uvicorn with `access_log=False`, `log_config=None`.
- An unhandled exception is logged with the id and answered `500 {"detail": "internal_error", "request_id": ...}`.
- WebSocket scopes get an id too (echoed in the accept headers).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

__all__ = [
    "REQUEST_ID_HEADER",
    "RequestIdFilter",
    "RequestIdMiddleware",
    "bind_request_id",
    "configure_logging",
    "current_request_id",
]

REQUEST_ID_HEADER = "X-Request-ID"
_HEADER_BYTES = REQUEST_ID_HEADER.lower().encode()
_VALID_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")  # fullmatch: `$` would let a final "\n" through
_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
_access_log = logging.getLogger("access")
_log = logging.getLogger(__name__)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def current_request_id() -> str | None:
    """The id of the request being served in this context, or None."""
    return _request_id.get()


def new_request_id() -> str:
    return uuid.uuid4().hex


@contextlib.contextmanager
def bind_request_id(rid: str | None) -> Iterator[str]:
    """Log under `rid` (a new id when None) outside a request, e.g. in a background job."""
    rid = rid or new_request_id()
    token = _request_id.set(rid)
    try:
        yield rid
    finally:
        _request_id.reset(token)


async def send_internal_error(
    send: Any, rid: str | None, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer an unhandled exception: `500 {"detail": "internal_error", "request_id": ...}` as JSON."""
    body = json.dumps({"detail": "internal_error", "request_id": rid}).encode()
    start_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 500, "headers": start_headers + (headers or [])})
    await send({"type": "http.response.body", "body": body})


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record (attach it to handlers, not loggers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get() or "-"
        return True


def configure_logging(service: str, level: int | str = logging.INFO) -> None:
    """One stream handler on the root logger printing the request id; quiets chatty libraries."""
    root = logging.getLogger()
    root.setLevel(level)
    for handler in root.handlers:
        if getattr(handler, "_throughline", False):
            return
    handler = logging.StreamHandler(sys.stdout)
    handler._throughline = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RequestIdFilter())
    root.addHandler(handler)
    for noisy in ("httpx", "httpcore", "uvicorn.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger(service).debug("logging configured")


def _incoming_id(scope: dict[str, Any]) -> str:
    for name, value in scope.get("headers") or ():
        if name == _HEADER_BYTES:
            candidate = value.decode("latin-1").strip()
            if _VALID_ID.fullmatch(candidate):
                return candidate
            break
    return new_request_id()


def _with_header(headers: Any, rid: str) -> list[tuple[bytes, bytes]]:
    out = [(k, v) for k, v in (headers or []) if k.lower() != _HEADER_BYTES]
    out.append((_HEADER_BYTES, rid.encode()))
    return out


class RequestIdMiddleware:
    """Pure ASGI middleware (works under any other middleware and for WebSockets)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = _incoming_id(scope)
        token = _request_id.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status = {"code": 0}

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                message = {**message, "headers": _with_header(message.get("headers"), rid)}
                status["code"] = message.get("status", 101)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            _log.exception("unhandled error in %s %s", scope.get("method", "WS"), scope.get("path"))
            if scope["type"] != "http" or status["code"]:
                raise
            status["code"] = 500
            await send_internal_error(send, rid, [(_HEADER_BYTES, rid.encode())])
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            if scope["type"] == "http":
                # path only: query strings may carry tokens (verification links, OAuth codes)
                _access_log.info(
                    "%s %s -> %s in %.1f ms",
                    scope.get("method"),
                    scope.get("path"),
                    status["code"],
                    elapsed_ms,
                )
            else:
                _access_log.info("WS %s closed after %.1f ms", scope.get("path"), elapsed_ms)
            _request_id.reset(token)
