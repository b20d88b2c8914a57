"""The JSON bodies and redirects the auth service answers, as OpenAPI schemas.

Declared with `responses={status: {"model": ...}}`, never as a `response_model` (which would
validate and re-serialise the handlers' own dicts): the schema says what is on the wire, the
handler alone decides it. Every field is required and no other field is allowed.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "HealthOut",
    "JWKSOut",
    "ProviderOut",
    "ReadyOut",
    "ResendOut",
    "SignupOut",
    "TokensOut",
    "UserOut",
    "VerifiedOut",
    "answer",
    "redirect",
]

Email = Annotated[str, Field(json_schema_extra={"format": "email"})]
Url = Annotated[str, Field(json_schema_extra={"format": "uri"})]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def answer(model: type[BaseModel], description: str) -> dict[str, Any]:
    """One `responses=` entry: this status answers `model` as JSON."""
    return {"model": model, "description": description}


def redirect(description: str) -> dict[str, Any]:
    """One `responses=` entry for a redirect: no body, and where to in `Location`."""
    return {
        "description": description,
        "headers": {
            "Location": {
                "description": "where the browser goes next",
                "required": True,
                "schema": {"type": "string", "format": "uri"},
            }
        },
    }


class UserOut(_Body):
    """The account as the API shows it (users.user_json)."""

    id: uuid.UUID
    email: Email
    full_name: str
    email_verified: bool


class SignupOut(_Body):
    user_id: uuid.UUID


class ResendOut(_Body):
    detail: str


class VerifiedOut(_Body):
    verified: Literal[True]
    user_id: uuid.UUID


class TokensOut(_Body):
    """POST /auth/login and /auth/refresh: a session's tokens and its user."""

    access_token: str
    refresh_token: str
    token_type: Literal["bearer"]
    expires_in: Annotated[int, Field(gt=0)]
    user: UserOut


class JWKOut(_Body):
    """The RS256 public key access tokens are signed with (PyJWT's JWK plus kid, use, alg)."""

    kty: Literal["RSA"]
    key_ops: list[str]
    n: str
    e: str
    kid: str
    use: Literal["sig"]
    alg: Literal["RS256"]


class JWKSOut(_Body):
    keys: list[JWKOut]


class ProviderOut(_Body):
    slug: str
    name: str
    start_url: Url


class HealthOut(_Body):
    status: Literal["ok"]
    service: Literal["auth"]


class ReadyOut(_Body):
    """GET /ready: each store's "ok" or "error: ...", and the failing ones (200: none)."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, str]
    failed: list[str]
