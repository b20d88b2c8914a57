"""stack/backend, run for real: uvicorn in a subprocess against PostgreSQL (a scratch database)
and Redis from the `stores` fixture (tests/conftest.py), our ClickHouse HTTP server (chdb) and the LLM stand-in, with tokens minted
here from a test RSA key whose JWKS a tiny local HTTP server serves."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import asyncpg
import clickhouse_connect
import httpx
import jwt
import pytest
import redis.asyncio as aioredis
import websockets
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parents[1]
ISSUER, AUDIENCE = "throughline-auth", "throughline-api"
SECRET = "test-internal-secret"
WS_LIMIT, HTTP_LIMIT, AGENT_CONCURRENCY = 5, 25, 2
PRICE_P, PRICE_C = Decimal("0.000002"), Decimal("0.000004")

pytestmark = pytest.mark.asyncio(loop_scope="session")


# ------------------------------------------------------------------ helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, deadline_s: float = 15.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready")


async def eventually(check: Callable, deadline_s: float = 5.0, what: str = "condition"):
    """Poll an async/sync check until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} not reached within {deadline_s}s (last: {last!r})")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def spawn_backend(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen, dict]:
    """One more backend process on a free port (for tests that kill one); -> (process, urls)."""
    port = free_port()
    proc = spawn_service("stack.backend", port, env, log_path)
    return proc, {"url": f"http://127.0.0.1:{port}", "ws": f"ws://127.0.0.1:{port}/ws", "log": log_path}


def spawn_service(module: str, port: int, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """`python -m <module> --port <port>`, logging to log_path, once its /health answers."""
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
    except BaseException:
        stop(proc)
        raise
    return proc


class _JWKSHandler(BaseHTTPRequestHandler):
    jwks: dict = {}

    def do_GET(self):  # noqa: N802
        if self.path == "/.well-known/jwks.json":
            body = json.dumps(self.jwks).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args):
        pass


# ----------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def auth_url(rsa_key):
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    jwk.update(kid="test-kid", alg="RS256", use="sig")
    handler = type("H", (_JWKSHandler,), {"jwks": {"keys": [jwk]}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def redis_url(stores):
    return stores.redis_url(0)


@contextlib.contextmanager
def fresh_database(stores, prefix: str):
    """A new, empty PostgreSQL database (its DSN), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str):
        conn = await asyncpg.connect(f"{stores.pg_base}/postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{stores.pg_base}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def pg_dsn(stores):
    with fresh_database(stores, "backend_test") as dsn:
        yield dsn


@pytest.fixture(scope="module")
def outage_pg_dsn(stores):
    """The outage backend's own database: the main backend's usage flusher, which flushes every
    user's pending usage each second, must not flush what the outage backend keeps while its
    ClickHouse is away."""
    with fresh_database(stores, "backend_outage") as dsn:
        yield dsn


@pytest.fixture(scope="module")
def clickhouse_url(tmp_path_factory):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness.services.clickhouse_server",
            "--path",
            str(tmp_path_factory.mktemp("ch")),
            "--port",
            str(port),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/ping", proc, 30)
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def llm_url():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stack.externals.llm", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TL_LLM_API_KEY": "sk-standin"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc)
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def backend(pg_dsn, redis_url, clickhouse_url, llm_url, auth_url, tmp_path_factory):
    env = {
        **os.environ,
        "TL_BACKEND_DSN": pg_dsn,
        "TL_REDIS_URL": redis_url,
        "TL_CLICKHOUSE_URL": clickhouse_url,
        "TL_AUTH_URL": auth_url,
        "TL_FRONTEND_URL": "http://127.0.0.1:3999",
        "TL_LLM_BASE_URL": f"{llm_url}/v1",
        "TL_LLM_API_KEY": "sk-standin",
        "TL_LLM_MODEL": "standin-gpt",
        "TL_LLM_TIMEOUT": "2",
        "TL_INTERNAL_SECRET": SECRET,
        "TL_JWT_ISSUER": ISSUER,
        "TL_JWT_AUDIENCE": AUDIENCE,
        "TL_RATE_HTTP_LIMIT": str(HTTP_LIMIT),
        "TL_RATE_HTTP_WINDOW": "30",
        "TL_RATE_WS_LIMIT": str(WS_LIMIT),
        "TL_RATE_WS_WINDOW": "30",
        "TL_RATE_AGENT_CONCURRENCY": str(AGENT_CONCURRENCY),
    }
    proc, urls = spawn_backend(env, tmp_path_factory.mktemp("backend") / "backend.log")
    log_path = urls["log"]
    try:
        yield urls
    finally:
        stop(proc)
    log_text = log_path.read_text()
    assert "sk-standin" not in log_text
    assert "eyJ" not in log_text, "a token reached the backend log"


@pytest.fixture
async def pg(pg_dsn, backend):
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def rds(redis_url):
    client = aioredis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
def ch(clickhouse_url):
    port = int(clickhouse_url.rsplit(":", 1)[1])
    client = clickhouse_connect.get_client(host="127.0.0.1", port=port, autogenerate_session_id=False)
    yield client
    client.close()


@pytest.fixture
async def llm(llm_url):
    async with httpx.AsyncClient(base_url=llm_url, timeout=5) as client:
        await client.post("/control/reset")
        yield client
        await client.post("/control/reset")


@pytest.fixture
async def http(backend):
    async with httpx.AsyncClient(base_url=backend["url"], timeout=10) as client:
        yield client


class Users:
    def __init__(self, key, http: httpx.AsyncClient, rds):
        self.key, self.http, self.rds = key, http, rds

    def mint(self, sub: str, sid: str, *, exp_in: int = 900, aud: str = AUDIENCE, key=None) -> str:
        now = int(time.time())
        claims = {"sub": sub, "email": f"{sub[:8]}@example.test", "sid": sid, "iat": now, "exp": now + exp_in}
        claims.update(iss=ISSUER, aud=aud)
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": "test-kid"})

    async def new(self, announce: bool = True) -> dict:
        uid, sid = str(uuid.uuid4()), uuid.uuid4().hex
        await self.rds.hset(
            f"auth:session:{sid}",
            mapping={"user_id": uid, "email": "x", "created_at": "0", "refresh_jti": "j"},
        )
        await self.rds.expire(f"auth:session:{sid}", 600)
        if announce:
            body = json.dumps(
                {
                    "user_id": uid,
                    "email": f"{uid[:8]}@Example.test",
                    "full_name": "Ada Tester",
                    "created_at": "2025-01-02T03:04:05+00:00",
                }
            ).encode()
            resp = await self.http.post(
                "/internal/users", content=body, headers={"X-Throughline-Signature": sign(body)}
            )
            assert resp.status_code == 201, resp.text
        token = self.mint(uid, sid)
        return {"id": uid, "sid": sid, "token": token, "auth": {"Authorization": f"Bearer {token}"}}


@pytest.fixture
async def users(rsa_key, http, rds):
    return Users(rsa_key, http, rds)


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Chat:
    def __init__(self, ws):
        self.ws = ws

    async def recv(self, within: float = 5.0) -> dict:
        return json.loads(await asyncio.wait_for(self.ws.recv(), within))

    async def send(self, content: str, thread_id: str | None = None, request_id: str | None = None) -> str:
        rid = request_id or f"req-{uuid.uuid4().hex[:12]}"
        payload = {"content": content}
        if thread_id:
            payload["thread_id"] = thread_id
        await self.ws.send(json.dumps({"type": "user_message", "payload": payload, "request_id": rid}))
        return rid

    async def until(self, *types: str, within: float = 8.0) -> list[dict]:
        """Frames up to and including the first one whose type is in `types`."""
        frames = []
        deadline = time.monotonic() + within
        while True:
            frame = await self.recv(max(0.01, deadline - time.monotonic()))
            frames.append(frame)
            if frame["type"] in types:
                return frames

    async def turn(self, content: str, thread_id: str | None = None) -> tuple[str, list[dict]]:
        rid = await self.send(content, thread_id)
        return rid, await self.until("agent_completed", "error", "rate_limited")


class connect:  # noqa: N801 - used as `async with connect(backend, token) as chat`
    def __init__(self, backend, token: str):
        self.url, self.token = backend["ws"], token

    async def __aenter__(self) -> Chat:
        self.ws = await websockets.connect(self.url, subprotocols=[f"jwt.{self.token}"], open_timeout=5)
        self.chat = Chat(self.ws)
        self.hello = await self.chat.recv()
        assert self.hello["type"] == "connection_established", self.hello
        self.chat.hello = self.hello
        return self.chat

    async def __aexit__(self, *exc):
        await self.ws.close()


def ch_rows(ch, where: str, params: dict) -> list[dict]:
    res = ch.query(
        "SELECT toString(event_id), request_id, toString(user_id), toString(thread_id), toString(run_id), agent, model, "
        f"prompt_tokens, completion_tokens, cost_usd FROM analytics.usage_events WHERE {where}",
        parameters=params,
    )
    cols = [
        "event_id",
        "request_id",
        "user_id",
        "thread_id",
        "run_id",
        "agent",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
    ]
    return [dict(zip(cols, r, strict=True)) for r in res.result_rows]


# -------------------------------------------------------------------- tests
async def test_health_ready_request_id_and_cors(backend, http):
    resp = await http.get("/health", headers={"X-Request-ID": "rid-health-1"})
    assert resp.status_code == 200 and resp.headers["x-request-id"] == "rid-health-1"
    assert (await http.get("/health")).headers["x-request-id"]
    ready = await http.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"postgres": "ok", "redis": "ok", "clickhouse": "ok", "auth_jwks": "ok"}
    pre = await http.options(
        "/api/me", headers={"Origin": "http://127.0.0.1:3999", "Access-Control-Request-Method": "GET"}
    )
    assert pre.headers["access-control-allow-origin"] == "http://127.0.0.1:3999"
    bad = await http.options(
        "/api/me", headers={"Origin": "http://evil.test", "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in bad.headers


async def test_internal_announce_signature_and_idempotency(http, pg):
    uid = str(uuid.uuid4())
    body = json.dumps(
        {
            "user_id": uid,
            "email": "Grace@Example.test",
            "full_name": "Grace H",
            "created_at": "2025-03-04T05:06:07Z",
        }
    ).encode()
    bad = await http.post(
        "/internal/users", content=body, headers={"X-Throughline-Signature": sign(body, "wrong")}
    )
    assert bad.status_code == 401
    assert (await http.post("/internal/users", content=body)).status_code == 401
    tampered = body.replace(b"Grace H", b"Mallory")
    assert (
        await http.post("/internal/users", content=tampered, headers={"X-Throughline-Signature": sign(body)})
    ).status_code == 401
    assert await pg.fetchval("SELECT count(*) FROM profiles WHERE user_id = $1", uuid.UUID(uid)) == 0

    first = await http.post("/internal/users", content=body, headers={"X-Throughline-Signature": sign(body)})
    second = await http.post("/internal/users", content=body, headers={"X-Throughline-Signature": sign(body)})
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["created"] is True and second.json()["created"] is False
    row = await pg.fetchrow("SELECT * FROM profiles WHERE user_id = $1", uuid.UUID(uid))
    assert row["email"] == "grace@example.test" and row["full_name"] == "Grace H" and row["plan"] == "free"
    assert row["created_at"] == datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert await pg.fetchval("SELECT count(*) FROM profiles WHERE user_id = $1", uuid.UUID(uid)) == 1


async def test_internal_announce_declares_its_json_body() -> None:
    from stack.backend.app import create_app

    operation = create_app().openapi()["paths"]["/internal/users"]["post"]
    body = operation.get("requestBody", {})
    schema = body.get("content", {}).get("application/json", {}).get("schema", {})
    assert body.get("required") is True, f"POST /internal/users declares no required body: {operation}"
    assert set(schema.get("required", [])) == {"user_id", "email"}, schema
    assert set(schema.get("properties", {})) == {"user_id", "email", "full_name", "created_at"}, schema


# A fixed id: xdist workers must collect the same test ids (a refused body stores nothing).
REFUSED_USER_ID = "0b7d7a4e-5c1f-4d2e-9a6b-3f8e2c1d0a99"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'"a string"',
        json.dumps({"email": "a@example.test"}).encode(),
        json.dumps({"user_id": REFUSED_USER_ID}).encode(),
        json.dumps({"user_id": "not-a-uuid", "email": "a@example.test"}).encode(),
        json.dumps(
            {"user_id": REFUSED_USER_ID, "email": "a@example.test", "created_at": "yesterday"}
        ).encode(),
    ],
    ids=["not json", "a list", "a string", "no user_id", "no email", "bad uuid", "bad created_at"],
)
async def test_internal_announce_refuses_a_malformed_body_after_the_signature(http, body) -> None:
    unsigned = await http.post("/internal/users", content=body)
    assert unsigned.status_code == 401, f"an unsigned body is judged before its signature: {unsigned.text}"
    signed = await http.post("/internal/users", content=body, headers={"X-Throughline-Signature": sign(body)})
    assert (signed.status_code, signed.json()) == (
        422,
        {"detail": "body must be {user_id, email, full_name, created_at}"},
    ), signed.text


async def test_internal_announce_reads_a_body_as_it_always_did(http, pg) -> None:
    uid = uuid.uuid4()
    body = json.dumps(
        {
            "user_id": uid.hex,
            "email": "  Lin@Example.TEST ",
            "full_name": None,
            "created_at": "2025-06-07T08:09:10",
        }
    ).encode()
    resp = await http.post("/internal/users", content=body, headers={"X-Throughline-Signature": sign(body)})
    assert resp.status_code == 201, resp.text
    row = await pg.fetchrow("SELECT * FROM profiles WHERE user_id = $1", uid)
    assert (row["email"], row["full_name"]) == ("lin@example.test", ""), dict(row)
    assert row["created_at"] == datetime(2025, 6, 7, 8, 9, 10, tzinfo=UTC), "a naive created_at is UTC"


async def test_me_and_http_auth(http, users, rds):
    user = await users.new()
    me = await http.get("/api/me", headers=user["auth"])
    assert me.status_code == 200, me.text
    assert me.json() == {
        "user_id": user["id"],
        "email": f"{user['id'][:8]}@example.test",
        "full_name": "Ada Tester",
        "plan": "free",
        "created_at": "2025-01-02T03:04:05+00:00",
    }
    assert (await http.get("/api/me")).status_code == 401
    expired = users.mint(user["id"], user["sid"], exp_in=-60)
    assert (await http.get("/api/me", headers={"Authorization": f"Bearer {expired}"})).status_code == 401
    wrong_aud = users.mint(user["id"], user["sid"], aud="someone-else")
    assert (await http.get("/api/me", headers={"Authorization": f"Bearer {wrong_aud}"})).status_code == 401
    await rds.delete(f"auth:session:{user['sid']}")
    assert (await http.get("/api/me", headers=user["auth"])).status_code == 401


@pytest.mark.parametrize(
    ("content", "agent"),
    [
        ("hello there, who are you?", "general"),
        ("how many tokens did I use so far", "data"),
        ("please optimize my prompts", "optimization"),
    ],
)
async def test_ws_turn_per_agent(backend, users, pg, rds, ch, http, content, agent):
    user = await users.new()
    async with connect(backend, user["token"]) as chat:
        assert chat.hello["payload"]["user_id"] == user["id"]
        assert chat.hello["payload"]["active_thread_id"] is None
        rid, frames = await chat.turn(content)
    types = [f["type"] for f in frames]
    expected_head = ["agent_started", "agent_thinking"]
    if agent == "data":
        expected_head += ["tool_executing", "tool_completed"]
    assert types[: len(expected_head)] == expected_head, types
    streams = types[len(expected_head) : -1]
    assert streams and set(streams) == {"agent_stream"}, types
    assert types[-1] == "agent_completed", frames[-1]
    assert all(f["request_id"] == rid for f in frames)
    ids = [f["event_id"] for f in frames]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) and ids[0] > chat.hello["event_id"]

    started, done = frames[0]["payload"], frames[-1]["payload"]
    assert started["agent"] == agent and done["agent"] == agent
    assert done["thread_id"] == started["thread_id"] and done["run_id"] == started["run_id"]
    streamed = "".join(f["payload"]["chunk"] for f in frames if f["type"] == "agent_stream")
    assert done["content"] == streamed and streamed.startswith(f"Stand-in reply to: {content}")
    if agent == "data":
        tool = frames[2]["payload"]
        assert tool["tool"] == "get_my_usage"
        result = frames[3]["payload"]["result"]
        assert result["events"] == 0 and result["cost_usd"] == "0.000000"  # a new user's own usage
        assert "get_my_usage returned:" in streamed

    # usage: exactly one ClickHouse row per LLM call, summing to agent_completed's usage
    usage = done["usage"]
    calls = 2 if agent == "data" else 1
    rows = await eventually(
        lambda: (r := ch_rows(ch, "request_id = %(rid)s", {"rid": rid})) and len(r) >= calls and r,
        what="usage rows in ClickHouse",
    )
    assert len(rows) == calls
    assert {r["agent"] for r in rows} == {agent} and {r["user_id"] for r in rows} == {user["id"]}
    assert {r["thread_id"] for r in rows} == {done["thread_id"]} and {r["run_id"] for r in rows} == {
        done["run_id"]
    }
    assert sum(r["prompt_tokens"] for r in rows) == usage["prompt_tokens"]
    assert sum(r["completion_tokens"] for r in rows) == usage["completion_tokens"]
    cost = sum((r["cost_usd"] for r in rows), Decimal(0))
    assert f"{cost:.6f}" == usage["cost_usd"]
    assert cost == usage["prompt_tokens"] * PRICE_P + usage["completion_tokens"] * PRICE_C
    assert usage["completion_tokens"] >= len(streamed.split())

    # persisted messages, thread title, session state
    msgs = await pg.fetch(
        "SELECT * FROM messages WHERE thread_id = $1 ORDER BY created_at", uuid.UUID(done["thread_id"])
    )
    assert [(m["role"], m["content"]) for m in msgs] == [("user", content), ("assistant", streamed)]
    assert {m["request_id"] for m in msgs} == {rid}
    assert str(msgs[1]["id"]) == done["message_id"] and msgs[1]["agent"] == agent
    assert msgs[1]["prompt_tokens"] == usage["prompt_tokens"]
    title = await pg.fetchval("SELECT title FROM threads WHERE id = $1", uuid.UUID(done["thread_id"]))
    assert content.startswith(title.rstrip("…"))
    session = await rds.hgetall(f"chat:session:{user['id']}")
    assert session["active_thread_id"] == done["thread_id"]
    assert int(session["last_event_id"]) == frames[-1]["event_id"]

    api = await http.get(f"/api/threads/{done['thread_id']}/messages", headers=user["auth"])
    assert api.status_code == 200
    assert [m["role"] for m in api.json()["messages"]] == ["user", "assistant"]
    threads = (await http.get("/api/threads", headers=user["auth"])).json()["threads"]
    assert [t["id"] for t in threads] == [done["thread_id"]]
    # the session survives a reconnect (it lives in Redis)
    async with connect(backend, user["token"]) as chat:
        assert chat.hello["payload"]["active_thread_id"] == done["thread_id"]
        assert chat.hello["payload"]["last_event_id"] == frames[-1]["event_id"]


async def test_thread_continuation_and_isolation(backend, users, http, pg):
    alice, bob = await users.new(), await users.new()
    async with connect(backend, alice["token"]) as chat:
        _, frames = await chat.turn("first message in my thread")
        thread_id = frames[-1]["payload"]["thread_id"]
        _, frames = await chat.turn("second message here", thread_id=thread_id)
        assert frames[-1]["type"] == "agent_completed" and frames[-1]["payload"]["thread_id"] == thread_id
        # the second call carries the history: more prompt tokens than the message alone
        assert frames[-1]["payload"]["usage"]["prompt_tokens"] > 20
        _, frames = await chat.turn("hi", thread_id=str(uuid.uuid4()))
        assert frames[-1]["type"] == "error" and frames[-1]["payload"]["code"] == "thread_not_found"
    assert await pg.fetchval("SELECT count(*) FROM messages WHERE thread_id = $1", uuid.UUID(thread_id)) == 4

    async with connect(backend, bob["token"]) as chat:
        rid, frames = await chat.turn("let me in", thread_id=thread_id)
        assert [f["type"] for f in frames] == ["error"]
        assert (
            frames[0]["payload"]["code"] == "thread_not_found" and frames[0]["payload"]["recoverable"] is True
        )
    assert (await http.get(f"/api/threads/{thread_id}/messages", headers=bob["auth"])).status_code == 404
    assert (await http.get("/api/threads/not-a-uuid/messages", headers=bob["auth"])).status_code == 404
    assert (await http.get("/api/threads", headers=bob["auth"])).json() == {"threads": []}
    assert await pg.fetchval("SELECT count(*) FROM messages WHERE request_id = $1", rid) == 0
    created = await http.post("/api/threads", json={"title": "Planning"}, headers=bob["auth"])
    assert created.status_code == 201 and created.json()["title"] == "Planning"


async def test_data_agent_counts_the_turn_that_just_finished(backend, users):
    """get_my_usage right after a turn sees it, even while its usage is still in the outbox."""
    alice = await users.new()
    async with connect(backend, alice["token"]) as chat:
        _, first = await chat.turn("hello there")
        assert first[-1]["type"] == "agent_completed", first[-1]
        _, frames = await chat.turn("how many tokens did I use")
    tool = next(f for f in frames if f["type"] == "tool_completed")["payload"]["result"]
    usage = first[-1]["payload"]["usage"]
    assert tool["events"] == 1, f"the data agent missed the turn that had just finished: {tool}"
    assert tool["prompt_tokens"] == usage["prompt_tokens"]
    assert tool["completion_tokens"] == usage["completion_tokens"]


@pytest.mark.parametrize(
    "case", ["expired", "tampered", "wrong_aud", "revoked", "foreign_key", "garbage", "none"]
)
async def test_ws_rejects_bad_tokens_with_4401(backend, users, rds, case):
    user = await users.new(announce=False)
    token = user["token"]
    if case == "expired":
        token = users.mint(user["id"], user["sid"], exp_in=-5)
    elif case == "tampered":
        head, body, sig = token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(body + "=="))
        claims["sub"] = str(uuid.uuid4())
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        token = f"{head}.{body}.{sig}"
    elif case == "wrong_aud":
        token = users.mint(user["id"], user["sid"], aud="another-api")
    elif case == "revoked":
        await rds.delete(f"auth:session:{user['sid']}")
    elif case == "foreign_key":
        token = users.mint(
            user["id"], user["sid"], key=rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )
    elif case == "garbage":
        token = "not-a-jwt"
    protocols = [] if case == "none" else [f"jwt.{token}"]
    async with websockets.connect(backend["ws"], subprotocols=protocols or None, open_timeout=5) as ws:
        if protocols:
            assert ws.subprotocol == protocols[0]
        with pytest.raises(websockets.ConnectionClosed) as closed:
            frame = await asyncio.wait_for(ws.recv(), 5)
            pytest.fail(f"got a frame before the close: {frame}")
    assert closed.value.rcvd.code == 4401


@pytest.mark.parametrize("lapse", ["revoked", "expired"])
async def test_an_open_socket_does_not_outlive_its_session(backend, users, rds, pg, lapse):
    """A token good at the handshake: after a revocation (or its expiry) the next user_message
    closes the socket with 4401, before any rate-limit count, row or frame of a turn."""
    user = await users.new()
    token = users.mint(user["id"], user["sid"], exp_in=2) if lapse == "expired" else user["token"]
    async with connect(backend, token) as chat:  # accepted: connection_established arrived
        if lapse == "revoked":
            await rds.delete(f"auth:session:{user['sid']}")
        else:
            exp = jwt.decode(token, options={"verify_signature": False})["exp"]
            await eventually(lambda: time.time() >= exp, deadline_s=4, what="the token's exp to pass")
        rid = await chat.send("hello after the session ended")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            frame = await chat.recv()
            pytest.fail(f"got a frame instead of the close: {frame}")
    reason = "session revoked" if lapse == "revoked" else "token expired"
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4401, reason)
    assert await pg.fetchval("SELECT count(*) FROM messages WHERE request_id = $1", rid) == 0
    assert await rds.get(f"rl:ws:{user['id']}") is None, "the refused message counted against the rate limit"


async def test_bad_frames_and_ping(backend, users, pg):
    user = await users.new()
    async with connect(backend, user["token"]) as chat:
        for raw in [
            "{not json",
            "[1, 2]",
            json.dumps({"type": "dance"}),
            json.dumps({"type": "user_message", "payload": {}}),
            json.dumps({"type": "user_message", "payload": {"content": "   "}}),
        ]:
            await chat.ws.send(raw)
            frame = await chat.recv()
            assert frame["type"] == "error", frame
            assert frame["payload"]["code"] == "bad_frame" and frame["payload"]["recoverable"] is True
        await chat.ws.send(json.dumps({"type": "ping", "request_id": "p1"}))
        pong = await chat.recv()
        assert pong["type"] == "pong" and pong["request_id"] == "p1"
        _, frames = await chat.turn("still works after bad frames")
        assert frames[-1]["type"] == "agent_completed"
    assert await pg.fetchval("SELECT count(*) FROM messages WHERE user_id = $1", uuid.UUID(user["id"])) == 2


async def test_ws_rate_limit_writes_nothing(backend, users, pg, ch, llm):
    user = await users.new()
    async with connect(backend, user["token"]) as chat:
        for i in range(WS_LIMIT):
            _, frames = await chat.turn(f"message number {i}")
            assert frames[-1]["type"] == "agent_completed"
        await llm.delete("/requests")
        rid, frames = await chat.turn("one too many")
    assert [f["type"] for f in frames] == ["rate_limited"]
    assert frames[0]["payload"]["scope"] == "ws" and 1 <= frames[0]["payload"]["retry_after"] <= 30
    assert (await llm.get("/requests")).json() in ([], {"requests": []})
    assert await pg.fetchval("SELECT count(*) FROM messages WHERE request_id = $1", rid) == 0
    assert await pg.fetchval("SELECT count(*) FROM usage_outbox WHERE request_id = $1", rid) == 0
    await eventually(
        lambda: len(ch_rows(ch, "user_id = toUUID(%(u)s)", {"u": user["id"]})) == WS_LIMIT,
        what="all usage flushed",
    )
    assert ch_rows(ch, "request_id = %(rid)s", {"rid": rid}) == []


async def test_agent_concurrency_limit(backend, users, llm):
    user = await users.new()
    await llm.post("/control", json={"latency_ms": 40})
    async with connect(backend, user["token"]) as chat:
        rids = [await chat.send(f"parallel question {i}") for i in range(AGENT_CONCURRENCY + 1)]
        outcome: dict[str, str] = {}
        while len(outcome) < len(rids):
            frame = await chat.recv(8)
            if frame["type"] in ("agent_completed", "rate_limited", "error"):
                outcome[frame["request_id"]] = frame["type"]
                if frame["type"] == "rate_limited":
                    assert frame["payload"]["scope"] == "agent" and frame["payload"]["retry_after"] >= 1
    assert sorted(outcome.values()) == ["agent_completed"] * AGENT_CONCURRENCY + ["rate_limited"]
    assert outcome[rids[-1]] == "rate_limited"


SLOT_TTL = 6  # TL_RATE_AGENT_SLOT_TTL of the backends below: how long a dead turn's slot can last


async def test_a_crashed_turns_agent_slot_expires_while_the_user_keeps_sending(
    pg_dsn, redis_url, clickhouse_url, llm_url, auth_url, users, llm, tmp_path
):
    """A backend dies mid-turn: its agent slot is free again SLOT_TTL after it was taken, even
    while the user keeps sending (issue 14, item 3: each refused attempt reset the slot's TTL, so
    a person who kept trying stayed blocked for good)."""
    env = {
        **os.environ,
        "TL_BACKEND_DSN": pg_dsn,
        "TL_REDIS_URL": redis_url,
        "TL_CLICKHOUSE_URL": clickhouse_url,
        "TL_AUTH_URL": auth_url,
        "TL_LLM_BASE_URL": f"{llm_url}/v1",
        "TL_LLM_TIMEOUT": "10",
        "TL_INTERNAL_SECRET": SECRET,
        "TL_JWT_ISSUER": ISSUER,
        "TL_JWT_AUDIENCE": AUDIENCE,
        "TL_RATE_WS_LIMIT": "100000",
        "TL_RATE_AGENT_CONCURRENCY": "1",
        "TL_RATE_AGENT_SLOT_TTL": str(SLOT_TTL),
    }
    user = await users.new()
    # both backends run before the crash, so the user's next attempt is not delayed by a start
    doomed, doomed_urls = spawn_backend(env, tmp_path / "doomed.log")
    try:
        survivor, survivor_urls = spawn_backend(env, tmp_path / "survivor.log")
    except BaseException:
        stop(doomed)
        raise
    try:
        await llm.post("/control", json={"latency_ms": 8000})
        async with connect(survivor_urls, user["token"]) as chat:
            async with connect(doomed_urls, user["token"]) as dying:
                await dying.send("a question the crash cuts off")
                await dying.until("agent_started")  # the turn holds the user's only slot
                doomed.kill()
                doomed.wait(5)
            await llm.post("/control/reset")

            attempts: list[str] = []

            async def one_attempt() -> bool:
                _, frames = await chat.turn(f"attempt {len(attempts) + 1} after the crash")
                last = frames[-1]
                attempts.append(last["type"])
                if last["type"] == "rate_limited":
                    assert last["payload"]["scope"] == "agent", last
                    return False
                assert last["type"] == "agent_completed", f"attempt {len(attempts)} ended with {last}"
                return True

            assert not await one_attempt(), "the crashed turn's slot was free at once: nothing was tested"
            await eventually(
                one_attempt,
                deadline_s=SLOT_TTL + 8,
                what=f"an answer once the dead turn's {SLOT_TTL} s slot expired, the user trying all along",
            )
        assert attempts[0] == "rate_limited" and attempts[-1] == "agent_completed"
    finally:
        stop(doomed)
        stop(survivor)


async def test_http_rate_limit_429(http, users):
    user = await users.new()
    codes = [(await http.get("/api/threads", headers=user["auth"])) for _ in range(HTTP_LIMIT + 1)]
    assert [r.status_code for r in codes[:HTTP_LIMIT]] == [200] * HTTP_LIMIT
    assert codes[-1].status_code == 429
    assert 1 <= int(codes[-1].headers["retry-after"]) <= 30
    other = await users.new()
    assert (await http.get("/api/me", headers=other["auth"])).status_code == 200  # per user


async def test_simultaneous_burst_is_answered_429_not_503(backend, users):
    """Issue 14, item 6: requests over the limit are refused by the rate limiter even when they all
    arrive at once; none is answered 503 because a store's connection pool ran dry."""
    user = await users.new()
    burst = 8 * HTTP_LIMIT
    # a client of its own: httpx's default pool would let only 100 requests out at a time
    async with httpx.AsyncClient(
        base_url=backend["url"], timeout=30, limits=httpx.Limits(max_connections=None)
    ) as client:
        responses = await asyncio.gather(
            *(client.get("/api/threads", headers=user["auth"]) for _ in range(burst))
        )
    codes: dict[int, int] = {}
    for r in responses:
        codes[r.status_code] = codes.get(r.status_code, 0) + 1
    assert codes == {200: HTTP_LIMIT, 429: burst - HTTP_LIMIT}, (
        f"{burst} simultaneous requests (limit {HTTP_LIMIT}) were answered {codes}; "
        f"a 503 says: {next((r.text for r in responses if r.status_code == 503), None)}"
    )
    assert all(1 <= int(r.headers["retry-after"]) <= 30 for r in responses if r.status_code == 429)


async def test_usage_and_invoice_exact_and_idempotent(backend, users, http, ch, pg):
    user = await users.new()
    async with connect(backend, user["token"]) as chat:
        for text in ["hello world", "what did I spend on tokens", "make it cheaper and faster please"]:
            _, frames = await chat.turn(text)
            assert frames[-1]["type"] == "agent_completed"
    rows = await eventually(
        lambda: (r := ch_rows(ch, "user_id = toUUID(%(u)s)", {"u": user["id"]})) and len(r) == 4 and r,
        what="4 usage rows",
    )
    expected_total = sum((r["cost_usd"] for r in rows), Decimal(0))
    by_agent: dict[str, Decimal] = {}
    for r in rows:
        by_agent[r["agent"]] = by_agent.get(r["agent"], Decimal(0)) + r["cost_usd"]

    today = datetime.now(UTC).date()
    usage = await http.get(f"/api/usage?from={today.replace(day=1)}&to={today}", headers=user["auth"])
    assert usage.status_code == 200, usage.text
    body = usage.json()
    assert body["events"] == 4 and body["cost_usd"] == f"{expected_total:.6f}"
    assert body["prompt_tokens"] == sum(r["prompt_tokens"] for r in rows)
    assert {a["agent"]: a["cost_usd"] for a in body["by_agent"]} == {
        k: f"{v:.6f}" for k, v in by_agent.items()
    }
    assert (await http.get("/api/usage?from=2001-01-01&to=2001-01-31", headers=user["auth"])).json()[
        "events"
    ] == 0
    assert (await http.get("/api/usage?from=yesterday", headers=user["auth"])).status_code == 422

    period = today.strftime("%Y-%m")
    first = await http.post("/api/billing/invoices", json={"period": period}, headers=user["auth"])
    assert first.status_code == 201, first.text
    inv = first.json()
    assert inv["total_usd"] == f"{expected_total:.6f}" and inv["period"] == period
    assert {ln["agent"]: ln["amount_usd"] for ln in inv["lines"]} == {
        k: f"{v:.6f}" for k, v in by_agent.items()
    }
    assert sum(Decimal(ln["amount_usd"]) for ln in inv["lines"]) == Decimal(inv["total_usd"])
    assert (
        inv["prompt_tokens"] == body["prompt_tokens"]
        and inv["completion_tokens"] == body["completion_tokens"]
    )
    again = await http.post("/api/billing/invoices", json={"period": period}, headers=user["auth"])
    assert again.status_code == 200 and again.json() == inv
    assert await pg.fetchval("SELECT count(*) FROM invoices WHERE user_id = $1", uuid.UUID(user["id"])) == 1
    assert (
        await pg.fetchval("SELECT count(*) FROM invoice_lines WHERE invoice_id = $1", uuid.UUID(inv["id"]))
        == 3
    )
    assert (
        await pg.fetchval("SELECT total_usd FROM invoices WHERE id = $1", uuid.UUID(inv["id"]))
        == expected_total
    )

    empty = await http.post("/api/billing/invoices", json={"period": "2001-02"}, headers=user["auth"])
    assert (
        empty.status_code == 201 and empty.json()["total_usd"] == "0.000000" and empty.json()["lines"] == []
    )
    assert (
        await http.post("/api/billing/invoices", json={"period": "2001-13"}, headers=user["auth"])
    ).status_code == 422
    listed = (await http.get("/api/billing/invoices", headers=user["auth"])).json()["invoices"]
    assert [i["period"] for i in listed] == [period, "2001-02"]


@pytest.mark.parametrize(
    "period",
    [
        "2001-05\n",  # `$` matches before a final newline: this made a second May 2001 invoice
        "\u0662\u0660\u0660\u0661-05",  # Arabic-Indic digits: \d matches them and int() reads 2001
        "2001-05 ",
        " 2001-05",
        "2001-5",
        "2001-00",
        "0000-01",  # found by tests/test_fuzz_api.py: datetime(0, 1, 1) was a 500
        "9999-12",  # its month end is year 10000: a 500 too
    ],
)
async def test_invoice_period_must_be_exactly_yyyy_mm(http, users, pg, period):
    """Issue 14, item 4: only YYYY-MM in ASCII digits names a period; anything else is 422 and no
    second invoice for a month that already has one."""
    user = await users.new()
    first = await http.post("/api/billing/invoices", json={"period": "2001-05"}, headers=user["auth"])
    assert first.status_code == 201, first.text
    resp = await http.post("/api/billing/invoices", json={"period": period}, headers=user["auth"])
    assert resp.status_code == 422, f"period {period!r} answered {resp.status_code}: {resp.text}"
    periods = await pg.fetch("SELECT period FROM invoices WHERE user_id = $1", uuid.UUID(user["id"]))
    assert [r["period"] for r in periods] == ["2001-05"]


@pytest.mark.parametrize(
    "failure", [{"fail_next": 1, "status": 500}, {"fail_next": 1, "status": 429}, {"drop_next": 1}]
)
async def test_llm_failure_writes_nothing(backend, users, llm, pg, ch, rds, failure):
    user = await users.new()
    await llm.post("/control", json=failure)
    async with connect(backend, user["token"]) as chat:
        rid, frames = await chat.turn("this one will fail")
        assert frames[-1]["type"] == "error", frames
        assert (
            frames[-1]["payload"]["code"] == "llm_unavailable"
            and frames[-1]["payload"]["recoverable"] is True
        )
        assert "agent_completed" not in [f["type"] for f in frames]
        ok_rid, frames = await chat.turn("and this one works")
        assert frames[-1]["type"] == "agent_completed"
    uid = uuid.UUID(user["id"])
    assert await pg.fetchval("SELECT count(*) FROM messages WHERE request_id = $1", rid) == 0
    assert await pg.fetchval("SELECT count(*) FROM usage_outbox WHERE request_id = $1", rid) == 0
    assert await pg.fetchval("SELECT count(*) FROM threads WHERE user_id = $1", uid) == 1
    await eventually(lambda: ch_rows(ch, "request_id = %(r)s", {"r": ok_rid}), what="the good turn's usage")
    assert ch_rows(ch, "request_id = %(r)s", {"r": rid}) == []
    assert await rds.zcard(f"rl:agent:{user['id']}") == 0  # the run slot was released


# ------------------------------------------------------------ store outages
class TcpProxy:
    """A loopback TCP proxy that can be switched off (refuse + cut connections) and on again."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.serving = False
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.up()

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(5)

    async def _pipe(self, reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_r, client_w):
        # Tracked from the accept on: a connection still being set up when down() runs is cut
        # too (it used to survive, a keep-alive path through a "down" proxy: a flaky outage).
        if not self.serving:
            client_w.transport.abort()
            return
        self.writers.add(client_w)
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            self.writers.discard(client_w)
            client_w.close()
            return
        if not self.serving:  # switched off while this one connected upstream
            self.writers.discard(client_w)
            up_w.transport.abort()
            client_w.transport.abort()
            return
        self.writers.add(up_w)
        await asyncio.gather(self._pipe(client_r, up_w), self._pipe(up_r, client_w))
        self.writers.difference_update({client_w, up_w})

    def up(self):
        if self.server is not None and self.server.is_serving():
            return

        async def start():
            self.serving = True
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

        self._call(start())

    def down(self):
        async def stop_():
            self.serving = False
            self.server.close()
            for w in list(self.writers):
                w.transport.abort()
            self.writers.clear()

        self._call(stop_())


@pytest.fixture(scope="module")
def outage_backend(backend, outage_pg_dsn, redis_url, clickhouse_url, llm_url, auth_url, tmp_path_factory):
    """A second backend, over a database of its own, whose PostgreSQL, Redis and ClickHouse
    connections go through switchable proxies."""
    pg_dsn = outage_pg_dsn
    pg_host_port = pg_dsn.split("@", 1)[1].split("/", 1)[0]
    proxies = {
        "postgres": TcpProxy("127.0.0.1", int(pg_host_port.rsplit(":", 1)[1])),
        "redis": TcpProxy("127.0.0.1", int(redis_url.rsplit(":", 1)[1].split("/")[0])),
        "clickhouse": TcpProxy("127.0.0.1", int(clickhouse_url.rsplit(":", 1)[1])),
    }
    env = {
        **os.environ,
        "TL_BACKEND_DSN": pg_dsn.replace(pg_host_port, f"127.0.0.1:{proxies['postgres'].port}"),
        "TL_REDIS_URL": f"redis://127.0.0.1:{proxies['redis'].port}/0",
        "TL_CLICKHOUSE_URL": f"http://127.0.0.1:{proxies['clickhouse'].port}",
        "TL_AUTH_URL": auth_url,
        "TL_LLM_BASE_URL": f"{llm_url}/v1",
        "TL_LLM_TIMEOUT": "2",
        "TL_INTERNAL_SECRET": SECRET,
        "TL_JWT_ISSUER": ISSUER,
        "TL_JWT_AUDIENCE": AUDIENCE,
    }
    proc, urls = spawn_backend(env, tmp_path_factory.mktemp("outage") / "backend.log")
    try:
        yield {**urls, "proxies": proxies, "dsn": pg_dsn}
    finally:
        stop(proc)
        for p in proxies.values():
            p.up()


@pytest.fixture
async def outage_pg(outage_backend):
    """A connection to the outage backend's own database."""
    conn = await asyncpg.connect(outage_backend["dsn"])
    yield conn
    await conn.close()


@pytest.fixture
async def outage_users(outage_backend, rsa_key, rds):
    """Users announced to the outage backend (its own database holds their profiles)."""
    async with httpx.AsyncClient(base_url=outage_backend["url"], timeout=10) as client:
        yield Users(rsa_key, client, rds)


async def test_store_outages_degrade_and_recover(outage_backend, outage_users, ch, outage_pg):
    pg, users = outage_pg, outage_users
    proxies = outage_backend["proxies"]
    user = await users.new()
    auth = user["auth"]
    async with (
        httpx.AsyncClient(base_url=outage_backend["url"], timeout=10) as http,
        connect(outage_backend, user["token"]) as chat,
    ):
        _, frames = await chat.turn("warm up")
        assert frames[-1]["type"] == "agent_completed"

        # ClickHouse down: the turn completes, usage waits in the outbox and arrives when it is back
        proxies["clickhouse"].down()
        try:
            rid, frames = await chat.turn("while clickhouse is away")
            assert frames[-1]["type"] == "agent_completed", frames[-1]
            ready = await http.get("/ready")
            assert ready.status_code == 503 and ready.json()["failing"] == ["clickhouse"]
            assert (
                await pg.fetchval(
                    "SELECT count(*) FROM usage_outbox WHERE request_id = $1 AND flushed_at IS NULL", rid
                )
                == 1
            )
        finally:
            proxies["clickhouse"].up()
        rows = await eventually(
            lambda: ch_rows(ch, "request_id = %(r)s", {"r": rid}), deadline_s=8, what="usage after the outage"
        )
        assert len(rows) == 1

        # PostgreSQL down: store_unavailable on the socket, 503 on HTTP; back by itself afterwards
        proxies["postgres"].down()
        try:
            rid, frames = await chat.turn("while postgres is away")
            assert frames[-1]["type"] == "error" and frames[-1]["payload"]["code"] == "store_unavailable"
            resp = await http.get("/api/threads", headers=auth)
            assert resp.status_code == 503 and resp.json()["store"] == "postgres"
            assert (await http.get("/ready")).json()["failing"] == ["postgres"]
        finally:
            proxies["postgres"].up()
        assert (await http.get("/api/threads", headers=auth)).status_code == 200
        _, frames = await chat.turn("postgres is back")
        assert frames[-1]["type"] == "agent_completed"

        # Redis down: same, and recovery without a restart
        proxies["redis"].down()
        try:
            _, frames = await chat.turn("while redis is away")
            assert frames[-1]["type"] == "error" and frames[-1]["payload"]["code"] == "store_unavailable"
            assert (await http.get("/api/me", headers=auth)).status_code == 503
        finally:
            proxies["redis"].up()
        assert (await http.get("/api/me", headers=auth)).status_code == 200
        _, frames = await chat.turn("redis is back")
        assert frames[-1]["type"] == "agent_completed"
        ready = await http.get("/ready")
        assert ready.status_code == 200, ready.text
    assert await pg.fetchval("SELECT count(*) FROM messages WHERE user_id = $1", uuid.UUID(user["id"])) == 8


async def test_postgres_down_refuses_a_new_chat_before_any_llm_call(
    outage_backend, outage_users, llm, outage_pg
):
    """Issue 14, item 7: with PostgreSQL down the first message of a new conversation is refused
    with store_unavailable before the LLM is called (it used to stream a whole reply, spend its
    tokens, and fail only when saving it)."""
    proxies = outage_backend["proxies"]
    user = await outage_users.new()
    async with connect(outage_backend, user["token"]) as chat:
        proxies["postgres"].down()
        try:
            await llm.delete("/requests")
            rid, frames = await chat.turn("a new conversation while postgres is away")
            sent_to_llm = (await llm.get("/requests")).json()
        finally:
            proxies["postgres"].up()
        assert [f["type"] for f in frames] == ["error"], f"the refused message got frames {frames}"
        assert frames[0]["payload"]["code"] == "store_unavailable" and frames[0]["payload"]["recoverable"]
        assert sent_to_llm in ([], {"requests": []}), f"the LLM was called anyway: {sent_to_llm}"
        _, frames = await chat.turn("postgres is back")
        assert frames[-1]["type"] == "agent_completed", frames[-1]
    assert await outage_pg.fetchval("SELECT count(*) FROM messages WHERE request_id = $1", rid) == 0
