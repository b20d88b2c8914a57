"""Issue 14: every error is an answer the UI can show.

A 500 is JSON with the request id and the CORS headers (both services' real apps and middleware,
in-process, with one extra route that raises: nothing of the service is replaced), a 405 lists in
`Allow` every method its path answers (not only the first route's), and an input the store cannot
hold (a NUL byte for PostgreSQL) is a 422 naming the field, never a 500 or a 503, and writes
nothing (the live backend of tests/test_backend.py).

Discriminates (405): stack.common.errors without its 405 handler; the backend's `DELETE /api/threads`
then answers `Allow: GET` though the path answers POST too.
"""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts

from stack.auth_service import create_app as create_auth_app
from stack.backend.app import create_app as create_backend_app
from stack.common.settings import Settings
from tests.test_backend import (  # noqa: F401 - fixtures: the live backend over real stores
    auth_url,
    backend,
    clickhouse_url,
    http,
    llm_url,
    pg,
    pg_dsn,
    rds,
    redis_url,
    rsa_key,
    users,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")
FRONTEND = "http://127.0.0.1:3999"
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@pytest.fixture(params=["backend", "auth"])
def service_app(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    """The real app of one service, with all its middleware, never started (no store is touched)."""
    monkeypatch.setenv("TL_FRONTEND_URL", FRONTEND)
    if request.param == "backend":
        return create_backend_app()
    return create_auth_app(Settings.from_env({"TL_FRONTEND_URL": FRONTEND}))


@pytest.fixture
async def asgi_client(service_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to `service_app` in-process; an app exception becomes its 500 answer."""
    transport = httpx.ASGITransport(app=service_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        yield client


def _with_crash_route(app: FastAPI) -> FastAPI:
    async def crash() -> None:
        raise RuntimeError("deliberate: an unexpected exception in a handler")

    app.add_api_route("/test-only/crash", crash)
    return app


async def test_should_answer_an_unexpected_exception_as_json_with_request_id_and_cors(
    service_app: FastAPI, asgi_client: httpx.AsyncClient
) -> None:
    service = service_app.title
    _with_crash_route(service_app)
    resp = await asgi_client.get(
        "/test-only/crash", headers={"Origin": FRONTEND, "X-Request-ID": "rid-crash-1"}
    )
    assert resp.status_code == 500
    assert resp.headers["content-type"].startswith("application/json"), (
        f"{service} 500 is {resp.headers['content-type']!r} {resp.text!r}: the UI cannot show it"
    )
    assert resp.json() == {"detail": "internal_error", "request_id": "rid-crash-1"}
    assert resp.headers["x-request-id"] == "rid-crash-1", "no request id: no log line can be found"
    assert resp.headers.get("access-control-allow-origin") == FRONTEND, (
        f"{service} 500 has no CORS header: the browser shows a CORS error instead"
    )


def methods_by_path(app: FastAPI) -> dict[str, set[str]]:
    """The app's route table: each HTTP path with every method some route of it answers."""
    table: dict[str, set[str]] = defaultdict(set)
    for route in iter_route_contexts(app.routes):
        if route.path and route.methods:
            table[route.path] |= route.methods
    return table


async def test_should_list_every_method_a_path_answers_in_allow_on_405(
    service_app: FastAPI, asgi_client: httpx.AsyncClient
) -> None:
    table = methods_by_path(service_app)
    assert len(table) >= 10, f"{service_app.title} route table looks empty: {sorted(table)}"
    wrong = []
    for path, answered in sorted(table.items()):
        url = re.sub(r"\{[^}]+\}", "x", path)  # any value reaches the route: 405 comes before lookup
        for method in sorted(set(HTTP_METHODS) - answered):
            resp = await asgi_client.request(method, url)
            allow = {m.strip() for m in resp.headers.get("allow", "").split(",") if m.strip()}
            if resp.status_code != 405 or allow != answered:
                wrong.append(
                    f"{method} {url} -> {resp.status_code} Allow: {sorted(allow)}, answers {sorted(answered)}"
                )
            elif method != "HEAD":
                assert resp.json() == {"detail": "Method Not Allowed"}, f"{method} {url}: {resp.text}"
    assert not wrong, (
        f"{service_app.title}: a client told these methods in Allow would not try the others:\n"
        + "\n".join(wrong)
    )


async def test_should_refuse_a_title_the_store_cannot_hold_naming_the_field(http, users, pg) -> None:  # noqa: F811
    user = await users.new()
    resp = await http.post("/api/threads", json={"title": "plan\x00b"}, headers=user["auth"])
    assert resp.status_code == 422, f"a NUL in a title answered {resp.status_code}: {resp.text}"
    assert [e["field"] for e in resp.json()["errors"]] == ["title"], resp.text
    rows = await pg.fetchval("SELECT count(*) FROM threads WHERE user_id = $1", uuid.UUID(user["id"]))
    assert rows == 0, "a refused title still made a thread"
