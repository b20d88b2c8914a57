"""Request ids: an ASGI middleware that accepts/makes X-Request-ID, and a logging filter
that puts the current request id on every log line. Tokens are never logged."""

from __future__ import annotations

import contextvars
import logging
import sys
import uuid

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [request_id=%(request_id)s] %(message)s"


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


def setup_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if any(getattr(h, "_tl_backend", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._tl_backend = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    handler.addFilter(RequestIdFilter())
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    for noisy in ("httpx", "httpcore", "openai", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def new_request_id() -> str:
    return uuid.uuid4().hex


def clean_request_id(value: str | None) -> str | None:
    """Accept a caller's id if it is a sane printable token (no header/log injection)."""
    if not value:
        return None
    value = value.strip()
    if not value or len(value) > 128 or not all(c.isalnum() or c in "-_.:" for c in value):
        return None
    return value


class RequestIdMiddleware:
    """Pure ASGI (works for HTTP and WebSocket, keeps contextvars intact)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = None
        for key, value in scope.get("headers", []):
            if key == b"x-request-id":
                incoming = clean_request_id(value.decode("latin-1"))
                break
        rid = incoming or new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)
        try:
            if scope["type"] == "http":

                async def send_with_id(message):
                    if message["type"] == "http.response.start":
                        headers = [
                            (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                        ]
                        headers.append((b"x-request-id", rid.encode("latin-1")))
                        message = {**message, "headers": headers}
                    await send(message)

                await self.app(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send)
        finally:
            request_id_var.reset(token)
