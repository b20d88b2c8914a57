"""Redaction once, at the outputs: secrets planted in every channel, searched for in every output.

A real pytest run (pytester, real Chromium, a real loopback WebSocket server) of a journey-like
test that puts known secrets into a WebSocket frame, a probe value (report.record_data), a step
name, an assertion message and a service log shown in the report. Then report.html, junit.xml,
results.json and the terminal are searched for each secret: none may be found.
"""

from __future__ import annotations

import html
import json
import os

import pytest

from harness.redact import REDACTED, redact, redact_value
from tests.toy_project import CONFTEST, INI, ROOT, TOY

pytest_plugins = ["pytester"]

SECRETS = {
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.UExBTlRFRC1qd3Qtc2lnbmF0dXJl",
    "refresh": "rt-PLANTEDopaqueRefresh9f8e7d6c",
    "password": "PLANTED-hunter2-Passw0rd",
    "api_key": "sk-PLANTEDapikey0123456789",
    "oauth_code": "PLANTEDoauthCodeSplxlOBeZQQ",
    "oauth_state": "PLANTEDoauthStateAf0ifjsldkj",
    "cookie": "PLANTEDcookieSessionValue42",
    "basic": "UExBTlRFRDpiYXNpYy1jcmVkcw",
    "bare_api_key": "sk-proj-PLANTEDbareKey0123456789_ab-cd",
}
SIGNATURE = SECRETS["jwt"].rsplit(".", 1)[1]
JOURNEY = """
import json
import os

from websockets.asyncio.server import serve

from harness import report
from harness.journey import journey
from harness.steps import step

S = json.loads(os.environ["PLANTED"])

report.register_log_tail_provider(lambda: {"backend": (
    "POST /auth/refresh 200\\n"
    f"Cookie: tl_session={S['cookie']}; theme=dark\\n"
    f"Set-Cookie: tl_refresh={S['refresh']}; Path=/; HttpOnly\\n"
    f"X-Api-Key: {S['api_key']}\\n"
    f"Authorization: Basic {S['basic']}\\n"
    f"login failed for a@example.com password={S['password']}\\n"
    f"llm provider answered 401 for {S['bare_api_key']}\\n"
    "worker crashed")})


async def _server(conn):
    async for _message in conn:
        await conn.send(json.dumps({"type": "welcome", "payload": {"refresh": S["refresh"], "access": S["jwt"]}}))


@journey(name="Planted secrets", priority="P0", mrr=1_000, components=["frontend", "websocket"])
async def test_planted(page, ws_recorder):
    async with serve(_server, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        async with step("Open the page"):
            await page.set_content("<h1>Hello</h1>")
            await page.evaluate(
                "([url, s]) => { const ws = new WebSocket(url); ws.onopen = () => ws.send(JSON.stringify("
                "{type: 'auth', refreshToken: s.refresh, apiKey: s.api_key, password: s.password})); }",
                [url, S],
            )
            await ws_recorder.wait_for("welcome")
        report.record_data(
            "stored tokens", "SELECT refresh, access FROM sessions",
            {"Refresh-Token": S["refresh"], "access": S["jwt"], "x-api-key": S["api_key"]},
        )
        callback = f"/oauth/callback?code={S['oauth_code']}&state={S['oauth_state']}"
        async with step(f"Follow the OAuth redirect {callback}"):
            tokens = {"refresh": S["refresh"], "access": S["jwt"]}
            assert not tokens, (
                f"after {callback} the page kept stored tokens {tokens}; "
                f"Cookie: tl_session={S['cookie']} password: {S['password']}"
            )
"""


def test_no_planted_secret_reaches_any_output(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith(("THROUGHLINE_", "PYTEST_XDIST"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("PLANTED", json.dumps(SECRETS))
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_journey=JOURNEY)

    result = pytester.runpytest_subprocess(
        f"--target={TOY}", "--reports", str(pytester.path / "reports"), "--tb=long", "-rA"
    )

    terminal = result.stdout.str() + result.stderr.str()
    assert result.ret == 1, terminal
    run = (pytester.path / "reports" / "latest").resolve()
    outputs = {
        "terminal": terminal,
        "report.html": (run / "report.html").read_text(),
        "junit.xml": (run / "junit.xml").read_text(),
        "results.json": (run / "results.json").read_text(),
    }
    # The channels really reached the outputs (so "0 found" means redacted, not missing).
    page = html.unescape(outputs["report.html"])
    assert "Follow the OAuth redirect" in page and "kept stored tokens" in page, (
        "the step/assertion is missing"
    )
    assert "welcome" in page and "stored tokens" in page and "worker crashed" in page, "a channel is missing"
    assert "redacted" in page and REDACTED in outputs["junit.xml"] and REDACTED in terminal
    found = [
        f"{kind} in {where}"
        for where, text in outputs.items()
        for kind, secret in {**SECRETS, "jwt signature": SIGNATURE}.items()
        for shown in (text, html.unescape(text))
        if secret in shown
    ]
    assert found == [], f"planted secrets reached the outputs: {sorted(set(found))}"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ('{"refresh": "rt-opaque-abcdef"}', "rt-opaque-abcdef"),
        ("{'refreshToken': 'rt-opaque-abcdef'}", "rt-opaque-abcdef"),
        ('{"Refresh-Token": "rt-opaque-abcdef"}', "rt-opaque-abcdef"),
        ("refresh_token = rt-opaque-abcdef", "rt-opaque-abcdef"),
        ('{"api_key": "sk-123"}', "sk-123"),
        ('{"apikey": "sk-123"}', "sk-123"),
        ("X-Api-Key: sk-123", "sk-123"),
        ("GET /cb?code=SplxlOBeZQQYbYS6WxSbIA&state=af0ifjsldkj12", "SplxlOBeZQQYbYS6WxSbIA"),
        ("GET /cb?code=SplxlOBeZQQYbYS6WxSbIA&state=af0ifjsldkj12", "af0ifjsldkj12"),
        ('{"code": "SplxlOBeZQQYbYS6WxSbIA"}', "SplxlOBeZQQYbYS6WxSbIA"),
        ("GET /cb?code=PLANTEDoauthCodeSplxlOBeZQQ", "PLANTEDoauthCodeSplxlOBeZQQ"),
        ("Cookie: sid=abc123; csrftoken=def456", "abc123"),
        ("Set-Cookie: tl_refresh=xyz789; Path=/", "xyz789"),
        ("password: hunter2", "hunter2"),
        ("Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
    ],
)
def test_should_redact_every_spelling(text: str, secret: str) -> None:
    assert secret not in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "Cookie: sid=abc123; csrftoken=def456",
        "Set-Cookie: tl_refresh=xyz789; Path=/",
        "X-Api-Key: sk-123",
        'GET /cb?code=SplxlOBeZQQYbYS6WxSbIA&state=af0ifjsldkj12 {"refresh": "rt-opaque-abcdef"}',
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
    ],
)
def test_should_leave_redacted_text_as_it_is(text: str) -> None:
    """Text can pass redact() twice (a record, then its output file): the second pass changes nothing."""
    once = redact(text)
    assert redact(once) == once


@pytest.mark.parametrize(
    "key",
    [
        "sk-abcdefghij0123456789KLMN",
        "sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12_mn-op",
        "sk-ant-api03-Ab12Cd34Ef56Gh78Ij90Kl12-xyz_AA",
    ],
)
def test_should_redact_a_bare_provider_api_key_in_free_text(key: str) -> None:
    for text in (f"llm said 401 for {key}", f"key={key!r}", f"({key}).", f'"detail": "bad key {key}"'):
        shown = redact(text)
        assert key not in shown and REDACTED in shown, f"{text!r} was shown as {shown!r}"
        assert "sk-" not in shown, f"part of the key is still shown: {shown!r}"


def test_should_keep_words_that_merely_contain_sk_dash() -> None:
    text = (
        "pip install sk-learn scikit-learn; task-123 done; sk-short0123456789; "
        "risk-0123456789abcdefghijklmn desk-ABCDEFGHIJ0123456789xyz"
    )
    assert redact(text) == text


def test_should_keep_error_codes_and_connection_states_readable() -> None:
    frame = {"type": "error", "code": "rate_limited", "state": "open", "stateToken": 1}
    assert redact_value(frame) == frame
    assert redact('{"type": "error", "code": "rate_limited"}') == '{"type": "error", "code": "rate_limited"}'
    assert redact_value({"Refresh-Token": "x", "nested": [{"apiKey": "k"}]}) == {
        "Refresh-Token": REDACTED,
        "nested": [{"apiKey": REDACTED}],
    }
