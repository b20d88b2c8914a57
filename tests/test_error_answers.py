"""Issue 14: every error is an answer the UI can show.

A 500 is JSON with the request id and the CORS headers (both services' real apps and middleware,
in-process, with one extra route that raises: nothing of the service is replaced), and an input
the store cannot hold (a NUL byte for PostgreSQL) is a 422 naming the field, never a 500 or a 503,
and writes nothing (the live backend of tests/test_backend.py).
"""

from __future__ import annotations

import uuid

import httpx
import pytest
from fastapi import FastAPI

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


def _with_crash_route(app: FastAPI) -> FastAPI:
    async def crash() -> None:
        raise RuntimeError("deliberate: an unexpected exception in a handler")

    app.add_api_route("/test-only/crash", crash)
    return app


@pytest.mark.parametrize("service", ["backend", "auth"])
async def test_should_answer_an_unexpected_exception_as_json_with_request_id_and_cors(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TL_FRONTEND_URL", FRONTEND)
    if service == "backend":
        app = create_backend_app()
    else:
        app = create_auth_app(Settings.from_env({"TL_FRONTEND_URL": FRONTEND}))
    transport = httpx.ASGITransport(app=_with_crash_route(app), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        resp = await client.get(
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


async def test_should_refuse_a_title_the_store_cannot_hold_naming_the_field(http, users, pg) -> None:  # noqa: F811
    user = await users.new()
    resp = await http.post("/api/threads", json={"title": "plan\x00b"}, headers=user["auth"])
    assert resp.status_code == 422, f"a NUL in a title answered {resp.status_code}: {resp.text}"
    assert [e["field"] for e in resp.json()["errors"]] == ["title"], resp.text
    rows = await pg.fetchval("SELECT count(*) FROM threads WHERE user_id = $1", uuid.UUID(user["id"]))
    assert rows == 0, "a refused title still made a thread"
