"""What the third-party stand-ins share: a stderr line per event and an access line per HTTP request."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any


def log_line(service: str, line: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {service} {line}", file=sys.stderr, flush=True)


def _describe_error(exc: BaseException) -> str:
    return f" (error {type(exc).__name__})"


class AccessLog:
    """Pure ASGI middleware: exactly one stderr line per HTTP request, also for aborted streams.

    Logs the path only, never the query string: it carries authorization codes, state and tokens.
    """

    def __init__(
        self, app: Any, service: str, describe_error: Callable[[BaseException], str] = _describe_error
    ) -> None:
        self.app = app
        self.service = service
        self.describe_error = describe_error

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: list[int] = [0]

        async def _send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        outcome = ""
        try:
            await self.app(scope, receive, _send)
        except BaseException as exc:
            outcome = self.describe_error(exc)
            raise
        finally:
            headers = dict(scope.get("headers") or [])
            rid = headers.get(b"x-request-id", b"-").decode("latin-1")[:128]
            client = (scope.get("client") or ("-", 0))[0]
            ms = (time.perf_counter() - started) * 1000
            log_line(
                self.service,
                f"{client} {scope['method']} {scope['path']} {status[0] or 500} {ms:.1f}ms rid={rid}{outcome}",
            )
