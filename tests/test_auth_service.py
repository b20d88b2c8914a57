"""The auth service against real PostgreSQL and Redis (the dev stores), a real SMTP server
(aiosmtpd) and a stand-in backend receiver; OAuth against the OIDC stand-in process.

Stores: the `stores` fixture (tests/conftest.py: our own PostgreSQL and Redis, or TL_TEST_PG and
TL_TEST_REDIS) gives a scratch database per module, dropped at the end; Redis db 12 is cleaned
of the keys this module created.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import jwt
import pytest
import redis.asyncio as aioredis
from aiosmtpd.controller import Controller

from stack.auth_service import create_app
from stack.auth_service.db import apply_migrations
from stack.auth_service.sessions import Sessions, session_key
from stack.common.settings import Settings
from stack.common.signing import SIGNATURE_HEADER, verify_signature

if TYPE_CHECKING:
    from tests.conftest import Stores

ROOT = Path(__file__).resolve().parents[1]
REDIS_DB = 12
RUN = uuid.uuid4().hex[:8]
AUTH_URL = "http://127.0.0.1:18001"  # only a base URL: requests go through ASGITransport
FRONTEND = "http://127.0.0.1:18000"
SECRET = "internal-secret-" + RUN
PASSWORD = "correct horse 42"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def addr(tag: str) -> str:
    return f"{tag}-{RUN}-{uuid.uuid4().hex[:6]}@example.com"


async def eventually(check: Callable[[], Any], within: float = 10.0, what: str = "condition") -> Any:
    """Poll `check` (sync or async) until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------------------- collaborators


class MailSink:
    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd API)
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"

    def to(self, address: str) -> list[email.message.EmailMessage]:
        return [m for m in self.messages if m["To"] == address]


class BackendReceiver:
    """Stands in for the backend's POST /internal/users; can fail N times per email, or answer
    an email's announcement only after a delay (a slow backend)."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.fail_for: dict[str, int] = {}
        self.slow_for: dict[str, float] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                mail = json.loads(body).get("email", "")
                with receiver.lock:
                    receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    failing = receiver.fail_for.get(mail, 0) > 0
                    if failing:
                        receiver.fail_for[mail] -= 1
                    slow = receiver.slow_for.get(mail, 0.0)
                if slow:
                    threading.Event().wait(slow)  # the backend is slow to answer, not the test
                status = 503 if failing else (200 if self.path == "/internal/users" else 404)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def for_email(self, address: str) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [(h, b) for h, b in self.received if json.loads(b).get("email") == address]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TcpProxy:
    """A loopback TCP proxy to a store that a test can cut (every connection dropped) and restore."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()
        self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        if self.server is None or not self.server.is_serving():
            # Cut while this one connected upstream: it must not outlive the stop (a keep-alive
            # path through a stopped proxy makes an outage test flaky).
            up_writer.transport.abort()
            writer.transport.abort()
            return
        self.writers.update({writer, up_writer})

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers.difference_update({writer, up_writer})


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pg_base(stores: Stores) -> str:
    return stores.pg_base


@pytest.fixture(scope="module")
def redis_url(stores: Stores) -> str:
    return stores.redis_url(REDIS_DB)


@pytest.fixture(scope="module")
async def scratch_dsn(pg_base: str) -> AsyncIterator[str]:
    name = f"auth_test_{RUN}"
    admin = await asyncpg.connect(f"{pg_base}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"{pg_base}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="module")
async def rds(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url, decode_responses=True)
    yield client
    async for key in client.scan_iter("auth:*"):
        if RUN in key:
            await client.delete(key)
        elif key.startswith("auth:session:") and RUN in (await client.hget(key, "email") or ""):
            await client.delete(key)
    await client.aclose()


@pytest.fixture(scope="module")
def mail() -> Any:
    sink = MailSink(free_port())
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    yield sink
    controller.stop()


@pytest.fixture(scope="module")
def receiver() -> Any:
    r = BackendReceiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def oidc_standin() -> Any:
    """The OIDC provider stand-in as its own process (stack/externals/oidc.py)."""
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "TL_OIDC_ISSUER": issuer,
        "TL_OIDC_CLIENT_ID": "throughline-web",
        "TL_OIDC_CLIENT_SECRET": "oidc-secret-" + RUN,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "stack.externals.oidc", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while True:
        assert proc.poll() is None, "the OIDC stand-in exited"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{issuer}/health", timeout=1).status_code == 200:
                break
        assert time.monotonic() < deadline, "the OIDC stand-in did not become healthy"
        time.sleep(0.05)
    yield {"issuer": issuer, "client_id": "throughline-web", "client_secret": "oidc-secret-" + RUN}
    proc.terminate()
    proc.wait(10)


def make_env(
    dsn: str,
    tmp: Path,
    mail_port: int,
    backend_url: str,
    redis_url: str,
    oidc: dict[str, str] | None = None,
) -> dict[str, str]:
    env = {
        "TL_AUTH_DSN": dsn,
        "TL_REDIS_URL": redis_url,
        "TL_AUTH_URL": AUTH_URL,
        "TL_BACKEND_URL": backend_url,
        "TL_FRONTEND_URL": FRONTEND,
        "TL_SMTP_HOST": "127.0.0.1",
        "TL_SMTP_PORT": str(mail_port),
        "TL_INTERNAL_SECRET": SECRET,
        "TL_JWT_PRIVATE_KEY_FILE": str(tmp / "jwt.pem"),
        "TL_LOGIN_ATTEMPT_LIMIT": "3",
        "TL_LOGIN_ATTEMPT_WINDOW": "60",
    }
    if oidc:
        env.update(
            TL_OIDC_ISSUER=oidc["issuer"],
            TL_OIDC_PROVIDER="acme",
            TL_OIDC_PROVIDER_NAME="Acme ID",
            TL_OIDC_CLIENT_ID=oidc["client_id"],
            TL_OIDC_CLIENT_SECRET=oidc["client_secret"],
        )
    return env


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=AUTH_URL) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest.fixture(scope="module")
async def client(
    scratch_dsn: str,
    mail: MailSink,
    receiver: BackendReceiver,
    oidc_standin: dict[str, str],
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[httpx.AsyncClient]:
    tmp = tmp_path_factory.mktemp("auth")
    env = make_env(scratch_dsn, tmp, mail.port, receiver.url, redis_url, oidc_standin)
    async with serve(Settings.from_env(env)) as c:
        yield c


# ------------------------------------------------------------------------------- helpers


async def signup(client: httpx.AsyncClient, address: str, **extra: str) -> httpx.Response:
    body = {"email": address, "password": PASSWORD, "full_name": "Test User", **extra}
    return await client.post("/auth/signup", json=body)


async def verification_link(mail: MailSink, address: str) -> str:
    msgs = await eventually(lambda: mail.to(address), what=f"mail to {address}")
    text = msgs[-1].get_body(("plain",)).get_content()
    match = re.search(r"(http\S+/auth/verify\?token=\S+)", text)
    assert match, text
    return match.group(1)


async def verified_user(client: httpx.AsyncClient, mail: MailSink, tag: str) -> str:
    address = addr(tag)
    assert (await signup(client, address)).status_code == 201
    link = await verification_link(mail, address)
    assert (await client.get(link)).status_code == 303
    return address


async def login(client: httpx.AsyncClient, address: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post("/auth/login", json={"email": address, "password": password})


async def decode_with_jwks(client: httpx.AsyncClient, token: str) -> dict[str, Any]:
    jwks = (await client.get("/.well-known/jwks.json")).json()
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwt.PyJWKSet.from_dict(jwks).keys if k.key_id == kid)
    return jwt.decode(
        token, key.key, algorithms=["RS256"], audience="throughline-api", issuer="throughline-auth"
    )


# ------------------------------------------------------------------------------- tests


async def test_signup_sends_verification_mail_and_announces_signed(
    client: httpx.AsyncClient, mail: MailSink, receiver: BackendReceiver
) -> None:
    address = addr("signup")
    rid = "req-" + uuid.uuid4().hex
    r = await client.post(
        "/auth/signup",
        json={"email": address, "password": PASSWORD, "full_name": " Ada  Lovelace "},
        headers={"X-Request-ID": rid},
    )
    assert r.status_code == 201, r.text
    assert r.headers["X-Request-ID"] == rid
    user_id = r.json()["user_id"]
    assert uuid.UUID(user_id)

    msg = (await eventually(lambda: mail.to(address), what="verification mail"))[-1]
    assert msg["Subject"] == "Verify your Throughline email"
    link = await verification_link(mail, address)
    assert link.startswith(f"{AUTH_URL}/auth/verify?token=")

    headers, body = (await eventually(lambda: receiver.for_email(address), what="announcement"))[0]
    assert verify_signature(body, headers[SIGNATURE_HEADER.lower()], SECRET)
    assert headers["x-request-id"] == rid
    payload = json.loads(body)
    assert payload["user_id"] == user_id
    assert payload["full_name"] == "Ada Lovelace"
    assert payload["created_at"]


async def test_duplicate_email_is_409_case_insensitive(client: httpx.AsyncClient) -> None:
    address = addr("dup")
    assert (await signup(client, address)).status_code == 201
    r = await signup(client, address.upper())
    assert r.status_code == 409
    assert "already exists" in r.json()["detail"]


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"email": "not-an-email", "password": PASSWORD, "full_name": "X"}, {"email"}),
        ({"email": "a@example.com", "password": "short1", "full_name": "X"}, {"password"}),
        ({"email": "a@example.com", "password": "onlyletters", "full_name": "X"}, {"password"}),
        ({"email": "a@example.com", "password": "1234567890", "full_name": "X"}, {"password"}),
        ({"email": "a@", "password": "weak", "full_name": " "}, {"email", "password", "full_name"}),
        ({"email": "a@example.com", "password": PASSWORD, "full_name": "x" * 101}, {"full_name"}),
        ({"email": "a@example.com"}, {"password", "full_name"}),
    ],
)
async def test_signup_validation_is_422_with_field_messages(
    client: httpx.AsyncClient, body: dict[str, str], fields: set[str]
) -> None:
    r = await client.post("/auth/signup", json=body)
    assert r.status_code == 422, r.text
    data = r.json()
    assert isinstance(data["detail"], str)
    assert {e["field"] for e in data["errors"]} == fields
    assert all(e["message"] for e in data["errors"])
    if "password" in fields and "password" in body:
        msg = next(e["message"] for e in data["errors"] if e["field"] == "password")
        assert "10 characters" in msg and "letter" in msg and "digit" in msg


async def test_unverified_login_is_403_then_verify_link_redirects(
    client: httpx.AsyncClient, mail: MailSink
) -> None:
    address = addr("verify")
    assert (await signup(client, address)).status_code == 201
    r = await login(client, address)
    assert r.status_code == 403

    link = await verification_link(mail, address)
    r = await client.get(link)
    assert r.status_code == 303
    assert r.headers["location"] == f"{FRONTEND}/login?verified=1"
    assert (await login(client, address)).status_code == 200

    r = await client.get(link)  # used
    assert r.status_code == 303
    assert r.headers["location"] == f"{FRONTEND}/login?error=invalid_verification"
    r = await client.get("/auth/verify?token=bogus", headers={"Accept": "application/json"})
    assert r.status_code == 400 and r.json() == {"detail": "invalid_verification"}


async def test_login_returns_jwt_verifiable_with_jwks(
    client: httpx.AsyncClient, mail: MailSink, rds: aioredis.Redis
) -> None:
    address = await verified_user(client, mail, "login")
    r = await login(client, address.upper())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 900
    assert body["user"]["email"] == address and body["user"]["email_verified"] is True
    assert body["user"]["full_name"] == "Test User"

    claims = await decode_with_jwks(client, body["access_token"])
    assert {"sub", "email", "sid", "iat", "exp", "iss", "aud", "jti"} <= claims.keys()
    assert claims["sub"] == body["user"]["id"] and claims["email"] == address
    assert claims["exp"] - claims["iat"] == 900

    session = await rds.hgetall(f"auth:session:{claims['sid']}")
    assert session["user_id"] == claims["sub"] and session["email"] == address
    assert {"created_at", "refresh_jti"} <= session.keys()
    assert PASSWORD not in json.dumps(session) and body["refresh_token"] not in json.dumps(session)
    assert 2592000 - 60 < await rds.ttl(f"auth:session:{claims['sid']}") <= 2592000

    me = await client.get("/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200 and me.json() == body["user"]


async def test_wrong_password_and_unknown_email_are_401_alike(
    client: httpx.AsyncClient, mail: MailSink
) -> None:
    address = await verified_user(client, mail, "wrongpw")
    wrong = await login(client, address, "wrong password 1")
    unknown = await login(client, addr("nobody"))
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == {"detail": "Invalid email or password."}


async def test_login_attempt_limit_429_with_retry_after(
    client: httpx.AsyncClient, mail: MailSink, rds: aioredis.Redis
) -> None:
    address = await verified_user(client, mail, "limit")
    # a success clears the counter
    for _ in range(2):
        assert (await login(client, address, "wrong password 1")).status_code == 401
    assert await rds.get(f"auth:login_fail:{address}") == "2"
    assert (await login(client, address)).status_code == 200
    assert await rds.exists(f"auth:login_fail:{address}") == 0

    for _ in range(3):  # TL_LOGIN_ATTEMPT_LIMIT=3
        assert (await login(client, address, "wrong password 1")).status_code == 401
    r = await login(client, address)  # even the right password is refused now
    assert r.status_code == 429
    assert 0 < int(r.headers["Retry-After"]) <= 60
    assert 0 < await rds.ttl(f"auth:login_fail:{address}") <= 60

    await rds.delete(f"auth:login_fail:{address}")  # the window passes
    assert (await login(client, address)).status_code == 200


async def test_refresh_rotates_and_reuse_revokes_session(
    client: httpx.AsyncClient, mail: MailSink, rds: aioredis.Redis
) -> None:
    address = await verified_user(client, mail, "refresh")
    first = (await login(client, address)).json()
    sid = (await decode_with_jwks(client, first["access_token"]))["sid"]

    r = await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert (await decode_with_jwks(client, second["access_token"]))["sid"] == sid
    assert second["user"]["email"] == address

    third = (await client.post("/auth/refresh", json={"refresh_token": second["refresh_token"]})).json()
    assert await rds.exists(f"auth:session:{sid}") == 1

    # reuse of a rotated token: 401 and the whole session is gone
    r = await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 401
    assert await rds.exists(f"auth:session:{sid}") == 0
    r = await client.post("/auth/refresh", json={"refresh_token": third["refresh_token"]})
    assert r.status_code == 401
    me = await client.get("/auth/me", headers={"Authorization": f"Bearer {third['access_token']}"})
    assert me.status_code == 401

    assert (await client.post("/auth/refresh", json={"refresh_token": "garbage"})).status_code == 401


async def test_a_session_id_followed_by_a_newline_is_malformed(rds: aioredis.Redis) -> None:
    """`$` matches before a final newline: the session id of a refresh token must be the whole
    32 hex digits before the dot, not those plus a line break (issue 14, item 4's mistake)."""
    sessions = Sessions(rds, ttl=60)
    sid, token = await sessions.create(str(uuid.uuid4()), addr("newline"))
    secret = token.partition(".")[2]
    try:
        assert (await sessions.rotate(f"{sid}\n.{secret}")).status == "malformed"
        assert (await sessions.rotate(token)).status == "ok"
    finally:
        await rds.delete(session_key(sid))


async def test_a_burst_of_simultaneous_requests_is_answered_not_503(
    client: httpx.AsyncClient, mail: MailSink
) -> None:
    """200 simultaneous requests of one signed-in person are all answered: a request finding every
    Redis connection busy waits for one instead of failing as a store outage (issue 14, item 6)."""
    address = await verified_user(client, mail, "burst")
    token = (await login(client, address)).json()["access_token"]
    burst = 200
    responses = await asyncio.gather(
        *(client.get("/auth/me", headers={"Authorization": f"Bearer {token}"}) for _ in range(burst))
    )
    codes: dict[int, int] = {}
    for r in responses:
        codes[r.status_code] = codes.get(r.status_code, 0) + 1
    assert codes == {200: burst}, (
        f"{burst} simultaneous /auth/me were answered {codes}; "
        f"a 503 says: {next((r.text for r in responses if r.status_code == 503), None)}"
    )


async def test_logout_deletes_the_session(
    client: httpx.AsyncClient, mail: MailSink, rds: aioredis.Redis
) -> None:
    address = await verified_user(client, mail, "logout")
    tokens = (await login(client, address)).json()
    sid = (await decode_with_jwks(client, tokens["access_token"]))["sid"]
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert await rds.exists(f"auth:session:{sid}") == 1

    assert (await client.post("/auth/logout", headers=auth)).status_code == 204
    assert await rds.exists(f"auth:session:{sid}") == 0
    assert (await client.get("/auth/me", headers=auth)).status_code == 401
    assert (
        await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    ).status_code == 401
    assert (await client.post("/auth/logout")).status_code == 401


async def test_announcement_is_retried_until_the_backend_accepts(
    client: httpx.AsyncClient, receiver: BackendReceiver, scratch_dsn: str
) -> None:
    address = addr("retry")
    receiver.fail_for[address] = 2
    r = await signup(client, address)
    assert r.status_code == 201  # the failing backend does not fail the signup
    await eventually(lambda: len(receiver.for_email(address)) >= 3, within=15, what="third delivery attempt")

    async def delivered() -> bool:
        con = await asyncpg.connect(scratch_dsn)
        try:
            row = await con.fetchrow(
                "SELECT attempts, delivered_at FROM announcements WHERE user_id = $1",
                uuid.UUID(r.json()["user_id"]),
            )
        finally:
            await con.close()
        return row is not None and row["delivered_at"] is not None and row["attempts"] == 3

    await eventually(delivered, what="announcement marked delivered")


async def test_oauth_sign_up_is_announced_before_its_redirect_lands_in_the_app(
    client: httpx.AsyncClient, oidc_standin: dict[str, str], receiver: BackendReceiver, scratch_dsn: str
) -> None:
    """The OAuth callback's redirect lands on the dashboard, whose first GET /api/me needs the
    profile: the announcement is delivered before the redirect is answered, even from a backend
    that takes half a second. Caught by the OAuth sign-in journey under two workers (404)."""
    address = addr("oauth-first")
    receiver.slow_for[address] = 0.5
    r, _ = await _oauth_authorize(client, oidc_standin, email=address)
    assert r.status_code == 302 and "access_token=" in r.headers["location"], r.headers.get("location")
    con = await asyncpg.connect(scratch_dsn)
    try:
        row = await con.fetchrow(
            "SELECT a.attempts, a.delivered_at FROM announcements a JOIN users u ON u.id = a.user_id"
            " WHERE u.email = $1",
            address,
        )
    finally:
        await con.close()
    assert row is not None, f"no announcement for {address}"
    assert row["delivered_at"] is not None and row["attempts"] == 1, dict(row)
    assert len(receiver.for_email(address)) == 1


async def test_health_ready_request_id_and_cors(client: httpx.AsyncClient) -> None:
    r = await client.get("/health")
    assert r.status_code == 200 and len(r.headers["X-Request-ID"]) >= 16
    r = await client.get("/ready")
    assert r.status_code == 200 and r.json()["checks"] == {"postgres": "ok", "redis": "ok"}
    r = await client.options(
        "/auth/login",
        headers={
            "Origin": FRONTEND,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-request-id,authorization",
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == FRONTEND
    assert r.headers["access-control-allow-credentials"] == "true"
    r = await client.post(
        "/auth/login", json={"email": addr("cors"), "password": "y"}, headers={"Origin": FRONTEND}
    )
    exposed = r.headers["access-control-expose-headers"].lower()
    assert "x-request-id" in exposed and "retry-after" in exposed
    r = await client.options(
        "/auth/login", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in r.headers


async def test_providers_and_oauth_errors(client: httpx.AsyncClient) -> None:
    r = await client.get("/auth/providers")
    assert r.json() == [{"slug": "acme", "name": "Acme ID", "start_url": f"{AUTH_URL}/auth/oauth/acme/start"}]
    assert (await client.get("/auth/oauth/nope/start")).status_code == 404
    assert (await client.get("/auth/oauth/nope/callback?code=x&state=y")).status_code == 404
    r = await client.get("/auth/oauth/acme/callback?code=x&state=unknown")
    assert r.status_code == 302 and r.headers["location"] == f"{FRONTEND}/login?error=oauth_state"
    r = await client.get("/auth/oauth/acme/callback?error=access_denied&state=whatever")
    assert r.headers["location"] == f"{FRONTEND}/login?error=oauth_denied"


async def _oauth_authorize(
    client: httpx.AsyncClient, oidc: dict[str, str], *, email: str | None = None, decision: str = "allow"
) -> tuple[httpx.Response, str]:
    """Start at the auth service, answer the stand-in's consent form, return (callback response, callback URL)."""
    callback = await _oauth_consent(client, oidc, email=email, decision=decision)
    return await client.get(callback.removeprefix(AUTH_URL)), callback


async def _oauth_consent(
    client: httpx.AsyncClient, oidc: dict[str, str], *, email: str | None = None, decision: str = "allow"
) -> str:
    """Start at the auth service (its binding cookie lands in `client`), answer the stand-in's
    consent form; -> the callback URL the provider redirects to."""
    start = await client.get("/auth/oauth/acme/start")
    cookie = start.headers["set-cookie"]
    assert "tl_oauth_binding=" in cookie and "HttpOnly" in cookie and "Path=/auth/oauth" in cookie, cookie
    assert "samesite=lax" in cookie.lower(), cookie
    assert start.status_code == 302
    authorize_url = start.headers["location"]
    q = parse_qs(urlsplit(authorize_url).query)
    assert authorize_url.startswith(f"{oidc['issuer']}/authorize")
    assert q["code_challenge_method"] == ["S256"] and q["code_challenge"] and q["state"] and q["nonce"]
    assert q["redirect_uri"] == [f"{AUTH_URL}/auth/oauth/acme/callback"]
    async with httpx.AsyncClient() as browser:
        page = await browser.get(authorize_url)
        assert page.status_code == 200, page.text
        txn = re.search(r'name="txn" value="([^"]+)"', page.text)
        assert txn, page.text
        form = {"txn": txn.group(1), "decision": decision}
        if email:
            form.update(email=email, name="OAuth Person")
        else:
            form["identity"] = re.search(r'name="identity" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        answer = await browser.post(f"{oidc['issuer']}/authorize/decision", data=form)
    assert answer.status_code == 302
    callback = answer.headers["location"]
    assert callback.startswith(f"{AUTH_URL}/auth/oauth/acme/callback?")
    return str(callback)


def _fragment(location: str) -> dict[str, str]:
    assert location.startswith(f"{FRONTEND}/oauth/complete#"), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).fragment).items()}


async def test_oauth_code_flow_creates_user_then_logs_in_again(
    client: httpx.AsyncClient, oidc_standin: dict[str, str], receiver: BackendReceiver, rds: aioredis.Redis
) -> None:
    address = addr("oauth")
    r, callback = await _oauth_authorize(client, oidc_standin, email=address)
    assert r.status_code == 302
    tokens = _fragment(r.headers["location"])
    assert {"access_token", "refresh_token", "expires_in"} <= tokens.keys()
    claims = await decode_with_jwks(client, tokens["access_token"])
    assert claims["email"] == address
    assert await rds.exists(f"auth:session:{claims['sid']}") == 1
    me = (await client.get("/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})).json()
    assert me["email_verified"] is True and me["full_name"] == "OAuth Person"
    await eventually(lambda: receiver.for_email(address), what="announcement of the OAuth user")

    # replaying the callback (same state and code): no session
    replay = await client.get(callback.removeprefix(AUTH_URL))
    assert replay.headers["location"] == f"{FRONTEND}/login?error=oauth_state"

    # second sign-in: same identity, same user
    r, _ = await _oauth_authorize(client, oidc_standin, email=address)
    again = await decode_with_jwks(client, _fragment(r.headers["location"])["access_token"])
    assert again["sub"] == claims["sub"] and again["sid"] != claims["sid"]

    # password login is impossible for a password-less account
    assert (await login(client, address)).status_code == 401


async def test_oauth_callback_from_another_browser_is_refused(
    client: httpx.AsyncClient, oidc_standin: dict[str, str], rds: aioredis.Redis
) -> None:
    """Login CSRF: an attacker starts a sign-in, consents as themselves and sends the victim the
    callback link. The victim's browser lacks the binding cookie: no session, nothing created."""
    address = addr("csrf")
    transport = httpx.ASGITransport(app=client.app)  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=transport, base_url=AUTH_URL) as attacker:
        callback = await _oauth_consent(attacker, oidc_standin, email=address)
        victim = await client.get(callback.removeprefix(AUTH_URL))
        assert victim.status_code == 302
        assert victim.headers["location"] == f"{FRONTEND}/login?error=oauth_state"
        sessions = [k async for k in rds.scan_iter("auth:session:*") if await rds.hget(k, "email") == address]
        assert sessions == [], "a session was opened for the attacker's account"
        # the refused callback spent the state: not even the browser that started it can finish now
        late = await attacker.get(callback.removeprefix(AUTH_URL))
        assert late.headers["location"] == f"{FRONTEND}/login?error=oauth_state"


async def test_oauth_links_existing_user_by_verified_email(
    client: httpx.AsyncClient, oidc_standin: dict[str, str], mail: MailSink, scratch_dsn: str
) -> None:
    address = await verified_user(client, mail, "link")
    user_id = (await login(client, address)).json()["user"]["id"]
    r, _ = await _oauth_authorize(client, oidc_standin, email=address.upper())
    claims = await decode_with_jwks(client, _fragment(r.headers["location"])["access_token"])
    assert claims["sub"] == user_id
    con = await asyncpg.connect(scratch_dsn)
    try:
        rows = await con.fetch(
            "SELECT provider, email FROM identities WHERE user_id = $1", uuid.UUID(user_id)
        )
    finally:
        await con.close()
    assert [(row["provider"], row["email"]) for row in rows] == [("acme", address)]
    assert (await login(client, address)).status_code == 200  # the password still works


async def test_oauth_denied_redirects_with_error(
    client: httpx.AsyncClient, oidc_standin: dict[str, str]
) -> None:
    r, _ = await _oauth_authorize(client, oidc_standin, decision="deny")
    assert r.status_code == 302 and r.headers["location"] == f"{FRONTEND}/login?error=oauth_denied"


async def test_oauth_bad_code_is_oauth_failed(
    client: httpx.AsyncClient, oidc_standin: dict[str, str]
) -> None:
    start = await client.get("/auth/oauth/acme/start")
    state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
    r = await client.get(f"/auth/oauth/acme/callback?code=forged&state={state}")
    assert r.headers["location"] == f"{FRONTEND}/login?error=oauth_failed"


async def test_migrations_are_safe_under_concurrent_starts(scratch_dsn: str) -> None:
    pools = [await asyncpg.create_pool(scratch_dsn, min_size=1, max_size=1) for _ in range(3)]
    try:
        results = await asyncio.gather(*(apply_migrations(p) for p in pools))
        assert results == [[], [], []]  # the app already migrated this database
        versions = await pools[0].fetch("SELECT version FROM schema_migrations")
        assert [r["version"] for r in versions] == ["001_init"]
    finally:
        for p in pools:
            await p.close()


async def test_fresh_database_migrates_once_under_concurrency(pg_base: str) -> None:
    name = f"auth_test_{RUN}_mig"
    admin = await asyncpg.connect(f"{pg_base}/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        pools = [await asyncpg.create_pool(f"{pg_base}/{name}", min_size=1, max_size=1) for _ in range(3)]
        try:
            results = await asyncio.gather(*(apply_migrations(p) for p in pools))
            assert sorted(map(len, results)) == [0, 0, 1]
        finally:
            for p in pools:
                await p.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_dead_stores_give_503_and_recover_without_restart(
    scratch_dsn: str, redis_url: str, mail: MailSink, receiver: BackendReceiver, tmp_path: Path
) -> None:
    pg_url = urlsplit(scratch_dsn)
    pg_proxy, redis_proxy = TcpProxy(pg_url.port or 5432), TcpProxy(urlsplit(redis_url).port or 6379)
    await pg_proxy.start()
    await redis_proxy.start()
    dsn = f"postgresql://{pg_url.username}@127.0.0.1:{pg_proxy.port}{pg_url.path}"
    env = make_env(dsn, tmp_path, mail.port, receiver.url, f"redis://127.0.0.1:{redis_proxy.port}/{REDIS_DB}")
    body = {"email": addr("down"), "password": "wrong password 1"}
    async with serve(Settings.from_env(env)) as c:
        assert (await c.post("/auth/login", json=body)).status_code == 401

        await redis_proxy.stop()
        r = await c.post("/auth/login", json=body)
        assert r.status_code == 503 and r.json() == {"detail": "auth store unavailable"}
        ready = await c.get("/ready")
        assert ready.status_code == 503 and ready.json()["failed"] == ["redis"]
        await redis_proxy.start()
        await eventually(lambda: _status(c, "/auth/login", body, 401), what="redis recovery")

        await pg_proxy.stop()
        r = await c.post("/auth/login", json=body)
        assert r.status_code == 503 and r.json() == {"detail": "auth store unavailable"}
        assert (await c.get("/ready")).json()["failed"] == ["postgres"]
        await pg_proxy.start()
        await eventually(lambda: _status(c, "/auth/login", body, 401), what="postgres recovery")
        assert (await c.get("/ready")).status_code == 200
    await pg_proxy.stop()
    await redis_proxy.stop()


async def _status(c: httpx.AsyncClient, path: str, body: dict[str, str], expected: int) -> bool:
    return (await c.post(path, json=body)).status_code == expected


def test_module_entry_point_starts_and_writes_key(
    scratch_dsn: str, redis_url: str, tmp_path: Path, mail: MailSink, receiver: BackendReceiver
) -> None:
    port = free_port()
    env = {**os.environ, **make_env(scratch_dsn, tmp_path, mail.port, receiver.url, redis_url)}
    env["TL_AUTH_URL"] = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stack.auth_service", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(
                    f"http://127.0.0.1:{port}/health", headers={"X-Request-ID": "probe-1"}, timeout=1
                )
                if r.status_code == 200:
                    break
            assert time.monotonic() - started < 10, "auth did not become healthy"
            time.sleep(0.02)
        assert r.headers["X-Request-ID"] == "probe-1"
        key = tmp_path / "jwt.pem"
        assert key.stat().st_mode & 0o777 == 0o600
        assert httpx.get(f"http://127.0.0.1:{port}/auth/verify?token=SECRET-TOKEN-{RUN}").status_code == 303
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "[probe-1]" in out, out  # log lines carry the request id
    assert f"SECRET-TOKEN-{RUN}" not in out  # query strings never reach the log
    assert PASSWORD not in out


async def test_common_helpers_request_id_errors_and_signing() -> None:
    from fastapi import FastAPI

    from stack.common.errors import FieldErrors, install_validation_handler
    from stack.common.request_id import RequestIdMiddleware, current_request_id
    from stack.common.signing import sign_body

    app = FastAPI()
    install_validation_handler(app)
    app.add_middleware(RequestIdMiddleware)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    @app.get("/rid")
    async def rid() -> dict[str, str | None]:
        return {"rid": current_request_id()}

    @app.get("/fields")
    async def fields() -> None:
        raise FieldErrors([("email", "Enter a valid email address.")])

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.get("/boom", headers={"X-Request-ID": "abc-1"})
        assert r.status_code == 500 and r.json() == {"detail": "internal_error", "request_id": "abc-1"}
        assert r.headers["X-Request-ID"] == "abc-1"
        r = await c.get("/rid", headers={"X-Request-ID": "bad id\nwith newline"})
        assert r.json()["rid"] == r.headers["X-Request-ID"] != "bad id\nwith newline"
        r = await c.get("/fields")
        assert r.status_code == 422
        assert r.json() == {
            "detail": "validation failed",
            "errors": [{"field": "email", "message": "Enter a valid email address."}],
        }

    body = b'{"user_id": "u"}'
    header = sign_body(body, "k")
    assert header.startswith("sha256=") and len(header) == 7 + 64
    assert verify_signature(body, header, "k")
    assert not verify_signature(body + b" ", header, "k")
    assert not verify_signature(body, header, "other")
    assert not verify_signature(body, None, "k") and not verify_signature(body, header, "")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "/auth/signup",
            {"email": "nul@example.com", "password": "Secret1234x", "full_name": "A\x00B"},
            "full_name",
        ),
        ("/auth/login", {"email": "nul\x00@example.com", "password": "whatever123"}, "email"),
        ("/auth/verify/resend", {"email": "nul\x00@example.com"}, "email"),
    ],
)
async def test_should_refuse_a_nul_byte_the_store_cannot_hold_as_422_naming_the_field(
    client: httpx.AsyncClient, path: str, body: dict[str, str], field: str
) -> None:
    """Issue 14: PostgreSQL cannot hold a NUL in text; that is the caller's error, not a 500 or a 503."""
    resp = await client.post(path, json=body)
    assert resp.status_code == 422, f"{path} with a NUL in {field} answered {resp.status_code}: {resp.text}"
    assert [e["field"] for e in resp.json()["errors"]] == [field], resp.text
