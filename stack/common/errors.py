"""One error shape for bad input across services.

422 bodies are `{"detail": "<summary>", "errors": [{"field": "email", "message": "..."}]}`:
pydantic's request validation errors are converted (field = the location without
`body`/`query`/..., dotted), and a handler can raise `FieldErrors` for its own checks::

    from stack.common.errors import FieldErrors, install_validation_handler
    install_validation_handler(app)
    ...
    raise FieldErrors([("password", "Password must be at least 10 characters.")])

Other errors keep FastAPI's `{"detail": ...}`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

__all__ = ["FieldErrors", "install_validation_handler", "validation_body"]

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
