"""Issue 14: each service's OpenAPI tells the truth about its answers, so the fuzzer can check them.

tests/test_fuzz_api.py checks every answer against what the schema declares; an answer the schema
leaves untyped (FastAPI's empty `{}` for a handler without a response model) or a status the route
never answers checks nothing. Here, on both real apps (never started: no store is touched): every
success status declares a typed body, or is a no-body status (204; a redirect, whose `Location`
is declared), a route shows a 200 only when it declared that 200 itself (not FastAPI's default
beside its real 201 / 303), and the backend's POST /internal/users declares the 422 body it answers.

Discriminates: the apps before this change (every success body `{}`; POST /internal/users and
GET /auth/verify beside their 201 / 303 carried FastAPI's default 200, and the 422 of
POST /internal/users was declared with the `errors` it never sends) turned all three red.
"""

# ruff: noqa: F811 - fixtures imported from tests/test_error_answers.py are used by name
from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema_rs
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from stack.backend.app import ANNOUNCE_BODY_INVALID
from stack.backend.app import create_app as create_backend_app
from stack.common.signing import SIGNATURE_HEADER, sign_body
from tests.test_error_answers import asgi_client, service_app  # noqa: F401 - fixtures

NO_BODY = {204, 301, 302, 303, 307, 308}


def is_success(status: str | int) -> bool:
    return str(status)[0] in "23"


def operations(app: FastAPI) -> list[tuple[str, APIRoute, dict[str, Any]]]:
    """(`METHOD /path`, route, its OpenAPI operation) for every HTTP route of `app`."""
    paths = app.openapi()["paths"]
    found = []
    for context in iter_route_contexts(app.routes):  # the routes of included routers too
        route = context.route
        if isinstance(route, APIRoute) and route.include_in_schema:
            for method in sorted(route.methods):
                found.append((f"{method} {context.path}", route, paths[context.path][method.lower()]))
    return found


def schema_of(app: FastAPI, operation: dict[str, Any], status: int) -> dict[str, Any]:
    """The JSON schema `operation` declares for `status`, with the app's components to resolve $refs."""
    body = operation["responses"][str(status)]["content"]["application/json"]["schema"]
    return {**body, "components": app.openapi()["components"]}


def declared_errors(schema: dict[str, Any], body: Any) -> list[str]:
    """Where `body` breaks `schema` (formats checked too), as messages; [] when it conforms."""
    validator = jsonschema_rs.Draft202012Validator(schema, validate_formats=True)
    return [error.message for error in validator.iter_errors(body)]


def test_should_declare_a_typed_body_for_every_success_answer(service_app: FastAPI) -> None:
    found = operations(service_app)
    assert len(found) >= 9, f"{service_app.title} has only {len(found)} operations"
    untyped = []
    for name, _, operation in found:
        for status, declared in operation["responses"].items():
            if not is_success(status):
                continue
            content = declared.get("content") or {}
            if int(status) in NO_BODY:
                if content:
                    untyped.append(f"{name} {status} declares a body it never sends: {sorted(content)}")
                if status.startswith("3") and "Location" not in (declared.get("headers") or {}):
                    untyped.append(f"{name} {status} does not declare where it redirects (Location)")
                continue
            schema = (content.get("application/json") or {}).get("schema")
            if not schema:
                untyped.append(f"{name} {status} declares no body schema: {declared}")
    assert not untyped, f"{service_app.title}: a client or fuzzer cannot check these answers:\n" + "\n".join(
        untyped
    )


def test_should_declare_200_only_where_the_route_declared_it(service_app: FastAPI) -> None:
    # FastAPI adds its default 200 to every route not given status_code=; a route that declares its
    # real 201 / 303 then also shows that 200. A 200 it does answer (an idempotent repeat, a JSON
    # client) it declares itself, with its body.
    spurious = []
    for name, route, operation in operations(service_app):
        if "200" not in operation["responses"] or 200 in route.responses:
            continue
        others = {int(s) for s in route.responses if is_success(s)}
        if route.status_code not in (None, 200):
            others.add(route.status_code)
        if others:
            spurious.append(f"{name} shows a default 200 beside its {sorted(others)}")
    assert not spurious, (
        f"{service_app.title}: these routes show FastAPI's default 200 (an untyped body), not one "
        "they declared:\n" + "\n".join(spurious)
    )


@pytest.mark.asyncio(loop_scope="session")
async def test_should_declare_the_422_post_internal_users_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "openapi-truth-secret"
    monkeypatch.setenv("TL_INTERNAL_SECRET", secret)
    app = create_backend_app()
    body = json.dumps({"user_id": "not-a-uuid", "email": "a@b.test"}).encode()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        resp = await client.post(
            "/internal/users", content=body, headers={SIGNATURE_HEADER: sign_body(body, secret)}
        )
    assert resp.status_code == 422, f"a signed announcement of a bad user answered {resp.text}"
    assert resp.json() == {"detail": ANNOUNCE_BODY_INVALID}, "the answer itself must not change"
    operation = app.openapi()["paths"]["/internal/users"]["post"]
    errors = declared_errors(schema_of(app, operation, 422), resp.json())
    assert not errors, f"POST /internal/users answers a 422 its OpenAPI says it cannot: {errors}"


HEALTH_BYTES = {
    "Throughline backend": b'{"status":"ok","service":"backend"}',
    "Throughline auth": b'{"status":"ok","service":"auth"}',
}


@pytest.mark.asyncio(loop_scope="session")
async def test_should_answer_the_same_bytes_once_the_body_is_declared(
    service_app: FastAPI, asgi_client: httpx.AsyncClient
) -> None:
    # the bodies are declared with responses=, not response_model=: nothing re-serialises them
    resp = await asgi_client.get("/health")
    assert resp.content == HEALTH_BYTES[service_app.title], (
        f"declaring its schema changed what {service_app.title} /health says: {resp.content!r}"
    )
    operation = service_app.openapi()["paths"]["/health"]["get"]
    errors = declared_errors(schema_of(service_app, operation, 200), resp.json())
    assert not errors, f"{service_app.title} /health answers what its OpenAPI says it cannot: {errors}"
