"""One error shape for bad input across services.

422 bodies are `{"detail": "<summary>", "errors": [{"field": "email", "message": "..."}]}`:
pydantic's request validation errors are converted (field = the location without
`body`/`query`/..., dotted), and a handler can raise `FieldErrors` for its own checks::

    from stack.common.errors import FieldErrors, install_validation_handler
    install_validation_handler(app)
    ...
    raise FieldErrors([("password", "Password must be at least 10 characters.")])

Other errors keep FastAPI's `{"detail": ...}`. `install_error_answers(app)` (call it before adding
CORS) installs the above and makes every other error an answer the UI can show:

- an unhandled exception is `500 {"detail": "internal_error", "request_id": ...}` as JSON, answered
  INSIDE the CORS middleware (Starlette's own 500 is text/plain, outside CORS: the browser shows a
  CORS error and the request id is lost);
- a value PostgreSQL refuses to hold (asyncpg `DataError`: a NUL byte, an out-of-range number) is a
  422, not a 500 and never a store outage (503). Handlers should refuse such input by field first
  (`SafeStr` below refuses NUL); this is the backstop;
- a 405 keeps its `{"detail": "Method Not Allowed"}` but its `Allow` lists every method the path
  answers: Starlette's names only the methods of the first route matching the path, so with
  `GET /api/threads` and `POST /api/threads` a `DELETE` was told `Allow: GET`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from stack.common.request_id import send_internal_error

__all__ = [
    "ERROR_RESPONSES",
    "NUL_FREE",
    "ErrorOut",
    "FieldErrors",
    "InternalErrorMiddleware",
    "SafeStr",
    "ValidationOut",
    "allowed_methods",
    "error_responses",
    "install_error_answers",
    "install_validation_handler",
    "validation_body",
]

_log = logging.getLogger(__name__)
NUL_FREE = r"^[^\x00]*$"
# text PostgreSQL can hold: no NUL character (asyncpg raises CharacterNotInRepertoireError)
SafeStr = Annotated[str, Field(pattern=NUL_FREE)]


class ErrorOut(BaseModel):
    """Any non-validation error: `{"detail": ...}` (some add fields, e.g. retry_after, store)."""

    model_config = {"extra": "allow"}
    detail: str


class FieldError(BaseModel):
    field: str
    message: str


class ValidationOut(BaseModel):
    """A 422: a summary and one message per field."""

    detail: str
    errors: list[FieldError]


class InternalErrorOut(BaseModel):
    detail: str
    request_id: str | None


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for these statuses with the bodies this module answers."""
    models: dict[int, type[BaseModel]] = {422: ValidationOut, 500: InternalErrorOut}
    return {s: {"model": models.get(s, ErrorOut)} for s in statuses}


ERROR_RESPONSES = error_responses(422, 500)

_LOCATIONS = {"body", "query", "path", "header", "cookie"}


class FieldErrors(Exception):
    """Raise from a handler to answer 422 with per-field messages."""

    def __init__(self, errors: Iterable[tuple[str, str]], detail: str = "validation failed") -> None:
        self.errors = list(errors)
        self.detail = detail
        super().__init__(detail)


def validation_body(errors: Iterable[tuple[str, str]], detail: str = "validation failed") -> dict[str, Any]:
    return {"detail": detail, "errors": [{"field": f, "message": m} for f, m in errors]}


def _field(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in _LOCATIONS:
        parts = parts[1:]
    return ".".join(parts) or "body"


def _message(err: dict[str, Any]) -> str:
    ctx = err.get("ctx") or {}
    if err.get("type") == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if err.get("type") == "string_pattern_mismatch" and ctx.get("pattern") == NUL_FREE:
        return "must not contain a NUL character"
    if err.get("type") == "missing":
        return "This field is required."
    return str(err.get("msg", "invalid value"))


def install_validation_handler(app: FastAPI) -> None:
    async def on_request_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        pairs = [
            ("body" if e.get("type") == "json_invalid" else _field(e.get("loc", ())), _message(e))
            for e in exc.errors()
        ]
        return JSONResponse(validation_body(pairs), status_code=422)

    async def on_field_errors(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, FieldErrors)
        return JSONResponse(validation_body(exc.errors, exc.detail), status_code=422)

    app.add_exception_handler(RequestValidationError, on_request_validation)
    app.add_exception_handler(FieldErrors, on_field_errors)


class InternalErrorMiddleware:
    """Pure ASGI: an exception nothing handled becomes a JSON 500 carrying the request id.

    Add it before CORSMiddleware (so it runs inside CORS and the answer gets its headers) and
    after nothing that must see the exception. The request id is the one the outer request-id
    middleware put on `scope["state"]`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            _log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:  # too late for a clean answer: let the server drop the connection
                raise
            await send_internal_error(send, (scope.get("state") or {}).get("request_id"))


def allowed_methods(app: FastAPI, path: str) -> set[str]:
    """Every method some HTTP route of `app` answers at `path` (routes of included routers too)."""
    methods: set[str] = set()
    for route in iter_route_contexts(app.routes):
        regex = getattr(route, "path_regex", None)
        if route.methods and regex is not None and regex.match(path):
            methods |= route.methods
    return methods


async def on_method_not_allowed(request: Request, exc: Exception) -> Response:
    """A 405 whose `Allow` names all the methods of its path, not only its first route's."""
    assert isinstance(exc, HTTPException)
    root, path = request.scope.get("root_path", ""), request.scope["path"]
    methods = allowed_methods(request.app, path.removeprefix(root) if root else path)
    headers = dict(exc.headers or {})
    if methods:  # else a handler raised its own 405: its headers stand
        headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
        headers["Allow"] = ", ".join(sorted(methods))
    return await http_exception_handler(request, HTTPException(405, exc.detail, headers))


def install_error_answers(app: FastAPI) -> None:
    """Validation bodies, store-refused values as 422, full 405 Allow headers, and JSON 500s.

    Call before adding CORS."""
    install_validation_handler(app)
    app.add_exception_handler(405, on_method_not_allowed)

    async def on_data_error(request: Request, exc: Exception) -> JSONResponse:
        _log.warning(
            "store refused a value on %s %s: %s: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
            exc,
        )
        column = getattr(exc, "column_name", None) or "body"
        return JSONResponse(
            validation_body([(column, "This value cannot be stored.")], "invalid value"), status_code=422
        )

    app.add_exception_handler(asyncpg.exceptions.DataError, on_data_error)
    app.add_middleware(InternalErrorMiddleware)
