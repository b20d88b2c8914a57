"""Issue 14: schemathesis against the reference platform's own OpenAPI, as a new user would.

Both services run for real (uvicorn subprocesses over real PostgreSQL and Redis, the backend also
over our ClickHouse server and the LLM stand-in: the fixtures of tests/test_backend.py), and each
operation of each schema gets a fixed-seed, bounded run. Every response must not be a 5xx, must
have a status its operation declares, with its declared content type, headers (a redirect's
Location) and body schema, and a refused (4xx) request must leave every stored row as it was (a
checksum of each table before and after).

Every success body is declared with its type (tests/test_openapi_truth.py keeps it so), so the
schema check reads 2xx answers too, not only errors.

Discriminates: the backend before this issue's fix (an invoice period "0000-01" built
datetime(0, 1, 1): a 500) turned it red; so does any route that answers a status it does not declare,
and a success body its schema does not allow (tried: a required field added to the backend's
ThreadOut: "Response violates schema" on its thread answers).
"""

# ruff: noqa: F811 - fixtures imported from tests/test_backend.py are used by name
from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.test_auth_service import SECRET as AUTH_SECRET
from tests.test_auth_service import BackendReceiver, MailSink, make_env
from tests.test_backend import (  # noqa: F401 - fixtures: the live backend over real stores
    Users,
    auth_url,
    backend,
    clickhouse_url,
    free_port,
    fresh_database,
    llm_url,
    pg_dsn,
    redis_url,
    rsa_key,
    sign,
    spawn_service,
    stop,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
BACKEND_TABLES = ("profiles", "threads", "messages", "invoices", "invoice_lines", "usage_outbox")
AUTH_TABLES = ("users", "identities", "email_verifications", "announcements")
# what a request writes; the rest of a row is written in the background (the announcer marks an
# earlier signup's announcement delivered at any moment, also while a refused request runs)
REQUEST_COLUMNS = {"announcements": "id, user_id, body, request_id, created_at"}
FUZZ = settings(
    max_examples=int(os.environ.get("TL_FUZZ_EXAMPLES", "25")),
    derandomize=True,  # a fixed seed: the same requests every run, so a failure reproduces
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def table_checksums(dsn: str, tables: tuple[str, ...]) -> dict[str, str]:
    """One md5 per table over all its rows (in a stable order), of the columns a request writes."""

    async def read() -> dict[str, str]:
        conn = await asyncpg.connect(dsn)
        try:
            return {
                t: await conn.fetchval(
                    "SELECT md5(coalesce(string_agg(r::text, '|' ORDER BY r::text), ''))"
                    f" FROM (SELECT {REQUEST_COLUMNS.get(t, '*')} FROM {t}) r"
                )
                for t in tables
            }
        finally:
            await conn.close()

    return asyncio.run(read())


def call_and_check(case: Any, headers: dict[str, str], dsn: str, tables: tuple[str, ...]) -> None:
    before = table_checksums(dsn, tables)
    response = case.call(headers=headers, timeout=15)
    case.validate_response(response, checks=CHECKS)
    if 400 <= response.status_code < 500:
        after = table_checksums(dsn, tables)
        changed = [t for t in tables if before[t] != after[t]]
        assert not changed, (
            f"{case.method} {case.formatted_path} was refused {response.status_code} "
            f"but changed stored rows in {changed}"
        )


# ------------------------------------------------------------------------------------- backend
@pytest.fixture(scope="module")
def backend_schema(backend) -> Any:
    """The backend's own OpenAPI, as served."""
    return schemathesis.openapi.from_url(f"{backend['url']}/openapi.json")


@pytest.fixture(scope="module")
def new_user_headers(backend, rsa_key, redis_url) -> Iterator[Any]:
    """Makes a fresh announced user with a session for each case (the HTTP rate limit is per user)."""
    rds = redis.Redis.from_url(redis_url)
    minter = Users(rsa_key, None, None)

    def make() -> dict[str, str]:
        uid, sid = str(uuid.uuid4()), uuid.uuid4().hex
        rds.hset(
            f"auth:session:{sid}",
            mapping={"user_id": uid, "email": "x", "created_at": "0", "refresh_jti": "j"},
        )
        rds.expire(f"auth:session:{sid}", 600)
        body = json.dumps({"user_id": uid, "email": f"{uid[:8]}@fuzz.test", "full_name": "Fuzz"}).encode()
        resp = httpx.post(
            f"{backend['url']}/internal/users", content=body, headers={"X-Throughline-Signature": sign(body)}
        )
        assert resp.status_code == 201, resp.text
        return {"Authorization": f"Bearer {minter.mint(uid, sid)}"}

    yield make
    rds.close()


def fuzz_every_operation(schema: Any, headers: Any, dsn: str, tables: tuple[str, ...]) -> int:
    """Each operation of `schema` gets its own bounded, fixed-seed hypothesis run; -> operations."""
    # (schemathesis' own pytest loader fails on this pytest: `Function` has no `_nodeid`)
    count = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @FUZZ
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            call_and_check(case, headers(), dsn, tables)

        run()
        count += 1
    return count


def test_backend_api_answers_fuzzed_requests_within_its_schema(
    backend_schema, new_user_headers, pg_dsn
) -> None:
    assert fuzz_every_operation(backend_schema, new_user_headers, pg_dsn, BACKEND_TABLES) >= 9


# ---------------------------------------------------------------------------------------- auth
@pytest.fixture(scope="module")
def auth_service(stores, redis_url, tmp_path_factory) -> Iterator[dict[str, str]]:  # noqa: F811
    """The auth service as its own uvicorn process over a fresh database, mail sink and receiver."""
    from aiosmtpd.controller import Controller

    sink = MailSink(free_port())
    mail = Controller(sink, hostname="127.0.0.1", port=sink.port)
    mail.start()
    receiver = BackendReceiver()
    tmp = tmp_path_factory.mktemp("auth-fuzz")
    port = free_port()
    log_path = tmp / "auth.log"
    try:
        with fresh_database(stores, "auth_fuzz") as dsn:
            env = {
                **os.environ,
                **make_env(dsn, tmp, sink.port, receiver.url, redis_url),
                "TL_AUTH_URL": f"http://127.0.0.1:{port}",
                "TL_ARGON2_TIME_COST": "2",
                "TL_ARGON2_MEMORY_KIB": "19456",
                "TL_ARGON2_PARALLELISM": "1",
            }
            proc = spawn_service("stack.auth_service", port, env, log_path)
            try:
                yield {"url": f"http://127.0.0.1:{port}", "dsn": dsn}
            finally:
                stop(proc)
    finally:
        receiver.close()
        mail.stop()
    assert AUTH_SECRET not in Path(log_path).read_text()


@pytest.fixture(scope="module")
def auth_schema(auth_service) -> Any:
    """The auth service's own OpenAPI, as served."""
    return schemathesis.openapi.from_url(f"{auth_service['url']}/openapi.json")


def test_auth_api_answers_fuzzed_requests_within_its_schema(auth_schema, auth_service) -> None:
    assert fuzz_every_operation(auth_schema, dict, auth_service["dsn"], AUTH_TABLES) >= 12
